"""Settings: one frozen object, one precedence rule.

Every setting resolves the same way: the explicit argument when it is not ``None``, else
its ``TINYBIRD_*`` environment variable, else the default. Values may arrive as strings
(``dictConfig``, ``fileConfig``, Django settings, env vars), so each is parsed and
validated here, at construction, with an error that names the setting and its env var.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict

DEFAULT_HOST: Final = "https://api.tinybird.co"
_MIB: Final = 1024 * 1024
# Tinybird rejects requests over 10 MB on the Free plan, 100 MB on paid Forward plans, with
# 413 (events-api docs, "Limits"); whether raw or compressed bytes count is undocumented,
# so raw bytes stay under. The default batch (4 MiB) is safe for Free.
_REQUEST_CAP: Final = 100 * 1000 * 1000
_EXTRAS_MODES: Final = ("both", "flat", "attributes", "none")
_COMPRESSIONS: Final = ("gzip", "none")
_DATASOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

BeforeSend = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class CommonSettings(TypedDict, total=False):
    """The settings every producer takes (the README's table); strings are parsed."""

    token: str | None
    host: str | None
    enabled: bool | str | None
    wait: bool | str | None
    flush_interval: float | str | None
    adaptive: bool | str | None
    batch_max_rows: int | str | None
    batch_max_bytes: int | str | None
    queue_max_events: int | str | None
    queue_max_bytes: int | str | None
    max_event_bytes: int | str | None
    compression: str | None
    connect_timeout: float | str | None
    timeout: float | str | None
    flush_timeout: float | str | None
    exit_timeout: float | str | None
    background: bool | str | None
    ca_bundle: str | None
    spool_dir: str | None
    spool_max_bytes: int | str | None
    allow_http: bool | str | None
    before_send: BeforeSend | str | None


class HandlerSettings(CommonSettings, total=False):
    """``TinybirdHandler``'s settings: the common ones and how log records are mapped."""

    service: str | None
    fields: Mapping[str, Any] | str | None
    extras: str | None


class EventsSettings(CommonSettings, total=False):
    """``TinybirdEvents``' settings: the common ones and static ``fields``."""

    fields: Mapping[str, Any] | str | None


class ExporterSettings(CommonSettings, total=False):
    """The OpenTelemetry exporters' settings: the common ones and the ``shape``."""

    shape: str | None


class MetricExporterSettings(CommonSettings, total=False):
    """The metric exporter's settings: the common ones (metrics have one shape, the
    template's; their four data sources are arguments of their own).
    """


METRICS_DATASOURCE_ENV: Final = {
    kind: f"TINYBIRD_METRICS_{kind.upper()}_DATASOURCE"
    for kind in ("gauge", "sum", "histogram", "exponential_histogram")
}
"""The metric exporter's data sources: an env var per kind of data point, default
``otel_metrics_<kind>`` (the template's names)."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """What takes the settings: its name in errors and the settings that apply to it."""

    label: str
    settings: frozenset[str]


def kind(label: str, settings: type[CommonSettings]) -> Kind:
    """The ``Kind`` whose settings are the keys of a settings TypedDict."""
    return Kind(label, frozenset(settings.__optional_keys__) | {"datasource"})  # type: ignore[attr-defined]


# Why a setting that exists elsewhere does not apply, for the error that refuses it.
_NOT_HERE: Final = {
    "service": "set it on the OpenTelemetry resource (OTEL_SERVICE_NAME), or in fields",
    "fields": "it only applies to TinybirdHandler and TinybirdEvents",
    "extras": "it only applies to log records: other events are sent as given",
    "shape": "it only applies to the span and log exporters (metrics have the template's)",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinybirdConfig:
    """Resolved, validated settings shared by the handler, the event sender and exporters.

    Build it with :meth:`TinybirdConfig.resolve`; the README's configuration table lists
    every field with its environment variable and default.
    """

    datasource: str
    token: str | None = dataclasses.field(default=None, repr=False)
    host: str = DEFAULT_HOST
    enabled: bool = True
    wait: bool = False
    flush_interval: float = 1.0
    adaptive: bool = True
    service: str = ""
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extras: str = "both"
    batch_max_rows: int = 10_000
    batch_max_bytes: int = 4 * _MIB
    queue_max_events: int = 200_000
    # 16 MiB: roughly 40,000 typical events, held per process; a pre-forking server runs
    # one per worker, so a larger default multiplies during an outage.
    queue_max_bytes: int = 16 * _MIB
    max_event_bytes: int = _MIB
    compression: str = "gzip"
    connect_timeout: float = 3.0
    timeout: float = 10.0
    flush_timeout: float = 5.0
    exit_timeout: float = 5.0
    background: bool = True
    ca_bundle: str | None = None
    spool_dir: str | None = None
    # 1 GiB: a day of a busy service's logs, compressed, on a disk that has room for it.
    spool_max_bytes: int = 1024 * _MIB
    allow_http: bool = False
    before_send: BeforeSend | None = None
    shape: str = "flat"

    @classmethod
    def resolve(
        cls,
        arguments: Mapping[str, Any] | None = None,
        *,
        kind: Kind | None = None,
        datasource_env: str = "TINYBIRD_DATASOURCE",
        default_datasource: Callable[[Mapping[str, Any]], str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TinybirdConfig:
        """Resolve every setting that applies to ``kind``: argument, then environment
        variable, then default.

        Args:
            arguments: Setting values, as Python values or strings; ``None`` means unset.
            kind: What takes the settings (the others are refused as arguments and their
                environment variables ignored); every setting when omitted.
            datasource_env: The env var that names the data source (the span exporter
                reads its own so that shapes never mix in one data source).
            default_datasource: The data source when neither argument nor env var names
                one, from the other resolved values.
            environ: The environment to read; ``os.environ`` when omitted.

        Raises:
            ValueError: A value is missing or invalid; the message names the setting, its
                environment variable and the fix.
            TypeError: An argument is not a setting of ``kind``; the message suggests the
                nearest name, or says why it does not apply.
        """
        kind = kind or _EVERY_SETTING
        arguments = arguments or {}
        _check_names(kind, arguments)
        env = os.environ if environ is None else environ
        env_names = {**_ENV_NAMES, "datasource": datasource_env}
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in kind.settings:
                continue
            raw = arguments.get(field.name)
            if raw is None:
                raw = env.get(env_names[field.name]) or None
            if raw is None:
                continue
            parse: Callable[[Any, _Setting], Any] = _PARSERS.get(field.name, _parse_str)
            values[field.name] = parse(raw, _Setting(field.name, env_names[field.name]))
        if "datasource" not in values and default_datasource is not None:
            values["datasource"] = default_datasource(values)
        config = cls(**{"datasource": "", **values})
        config._validate(_Setting("datasource", datasource_env))
        return config

    def _validate(self, datasource: _Setting) -> None:
        if not self.datasource:
            raise datasource.error("is required", "name the data source events go to")
        if not _DATASOURCE_NAME.match(self.datasource):
            raise datasource.error(
                f"{self.datasource!r} is not a valid data source name",
                "use letters, digits and underscores, not starting with a digit",
            )
        if self.batch_max_bytes > _REQUEST_CAP:
            raise _setting("batch_max_bytes").error(
                f"{self.batch_max_bytes} exceeds the Events API's request cap (100 MB on paid "
                "plans, 10 MB on Free)",
                "use at most 100000000 (10000000 on the Free plan)",
            )
        if self.max_event_bytes > self.batch_max_bytes:
            raise _setting("max_event_bytes").error(
                "is larger than batch_max_bytes", "an event must fit in one batch"
            )
        if self.queue_max_bytes < self.batch_max_bytes:
            raise _setting("queue_max_bytes").error(
                "is smaller than batch_max_bytes", "the queue must hold at least one batch"
            )
        _check_host(self.host, self.allow_http)
        if self.token is not None:
            _check_token(self.token)


_EVERY_SETTING: Final = Kind(
    "TinybirdConfig", frozenset(f.name for f in dataclasses.fields(TinybirdConfig))
)


@dataclasses.dataclass(frozen=True)
class _Setting:
    name: str
    env: str

    def error(self, problem: str, fix: str) -> ValueError:
        return ValueError(
            f"tinybird-export: setting {self.name!r} (env {self.env}) {problem}: {fix}."
        )


_ENV_NAMES: Final = {
    "token": "TINYBIRD_TOKEN",
    "host": "TINYBIRD_HOST",
    "enabled": "TINYBIRD_ENABLED",
    "wait": "TINYBIRD_WAIT",
    "flush_interval": "TINYBIRD_FLUSH_INTERVAL",
    "adaptive": "TINYBIRD_ADAPTIVE",
    "service": "OTEL_SERVICE_NAME",
    "fields": "TINYBIRD_FIELDS",
    "extras": "TINYBIRD_EXTRAS",
    "batch_max_rows": "TINYBIRD_BATCH_MAX_ROWS",
    "batch_max_bytes": "TINYBIRD_BATCH_MAX_BYTES",
    "queue_max_events": "TINYBIRD_QUEUE_MAX_EVENTS",
    "queue_max_bytes": "TINYBIRD_QUEUE_MAX_BYTES",
    "max_event_bytes": "TINYBIRD_MAX_EVENT_BYTES",
    "compression": "TINYBIRD_COMPRESSION",
    "connect_timeout": "TINYBIRD_CONNECT_TIMEOUT",
    "timeout": "TINYBIRD_TIMEOUT",
    "flush_timeout": "TINYBIRD_FLUSH_TIMEOUT",
    "exit_timeout": "TINYBIRD_EXIT_TIMEOUT",
    "background": "TINYBIRD_BACKGROUND",
    "ca_bundle": "TINYBIRD_CA_BUNDLE",
    "spool_dir": "TINYBIRD_SPOOL_DIR",
    "spool_max_bytes": "TINYBIRD_SPOOL_MAX_BYTES",
    "allow_http": "TINYBIRD_ALLOW_HTTP",
    "before_send": "TINYBIRD_BEFORE_SEND",
    "shape": "TINYBIRD_OTEL_SHAPE",
}


def _setting(name: str) -> _Setting:
    return _Setting(name, _ENV_NAMES[name])


def _check_names(kind: Kind, arguments: Mapping[str, Any]) -> None:
    known = {field.name for field in dataclasses.fields(TinybirdConfig)}
    for name in sorted(arguments):
        if name in kind.settings or (name in known and arguments[name] is None):
            continue
        if name in known:
            raise TypeError(
                f"tinybird-export: setting {name!r} does not apply to {kind.label}: "
                f"{_NOT_HERE.get(name, 'remove it')}."
            )
        close = difflib.get_close_matches(name, sorted(kind.settings), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see the README's table"
        raise TypeError(f"tinybird-export: {kind.label} has no setting {name!r}: {hint}")


def _parse_str(raw: Any, setting: _Setting) -> str:
    if not isinstance(raw, str):
        raise setting.error(f"must be a string, got {type(raw).__name__}", "pass text")
    return raw.strip()


def parse_bool(raw: Any, name: str, env: str) -> bool:
    """The package's one boolean parser (settings, integrations): true/false, 1/0,
    yes/no, on/off, or a bool.

    Raises:
        ValueError: Naming ``name`` and ``env``.
    """
    return _parse_bool(raw, _Setting(name, env))


def _parse_bool(raw: Any, setting: _Setting) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise setting.error(f"is {raw!r}, not a boolean", "use true or false")


def _number(kind: type[int] | type[float], minimum: float) -> Callable[[Any, _Setting], Any]:
    def parse(raw: Any, setting: _Setting) -> int | float:
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = kind(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise setting.error(f"is {raw!r}, not a number", f"use a {kind.__name__}") from None
        if not (math.isfinite(value) and value >= minimum):
            raise setting.error(f"is {value!r}", f"use a finite value of at least {minimum}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[Any, _Setting], str]:
    def parse(raw: Any, setting: _Setting) -> str:
        value = _parse_str(raw, setting).lower()
        if value not in options:
            raise setting.error(f"is {raw!r}", "use one of " + ", ".join(options))
        return value

    return parse


def _parse_fields(raw: Any, setting: _Setting) -> Mapping[str, Any]:
    """Static fields: a mapping, or ``"environment=prod,release=1.2"`` from an env var."""
    if isinstance(raw, Mapping):
        fields = dict(raw)
    elif isinstance(raw, str):
        fields = {}
        for pair in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise setting.error(f"has {pair!r}", "write key=value pairs separated by commas")
            fields[key.strip()] = value.strip()
    else:
        raise setting.error(f"is a {type(raw).__name__}", "pass a mapping of field to value")
    if not all(isinstance(key, str) for key in fields):
        raise setting.error("has a non-string key", "name every field with a string")
    return fields


def _parse_before_send(raw: Any, setting: _Setting) -> BeforeSend:
    """A callable, or its dotted path (``pkg.module:function`` or ``pkg.module.function``)."""
    if callable(raw):
        return raw  # type: ignore[no-any-return]
    path = _parse_str(raw, setting)
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        problem = f"{path!r} cannot be imported ({exc})"
        raise setting.error(problem, "give module:function") from None
    if not callable(target):
        raise setting.error(f"{path!r} is not callable", "point it at a function")
    return target  # type: ignore[no-any-return]


_PARSERS: Final[dict[str, Callable[[Any, _Setting], Any]]] = {
    "enabled": _parse_bool,
    "wait": _parse_bool,
    "background": _parse_bool,
    "allow_http": _parse_bool,
    "adaptive": _parse_bool,
    "flush_interval": _number(float, 0.01),
    "batch_max_rows": _number(int, 1),
    "batch_max_bytes": _number(int, 1024),
    "queue_max_events": _number(int, 1),
    "queue_max_bytes": _number(int, 1024),
    "max_event_bytes": _number(int, 1024),
    "spool_max_bytes": _number(int, _MIB),
    "connect_timeout": _number(float, 0.001),
    "timeout": _number(float, 0.001),
    "flush_timeout": _number(float, 0),
    "exit_timeout": _number(float, 0),
    "extras": _choice(_EXTRAS_MODES),
    "compression": _choice(_COMPRESSIONS),
    "fields": _parse_fields,
    "before_send": _parse_before_send,
    "shape": _choice(("flat", "otel")),
}


def _check_token(token: str) -> None:
    """Refuse a token that cannot be an HTTP header value, without echoing any of it: a
    line break would otherwise fail every request, with the token quoted in the error.
    """
    for position, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            raise _setting("token").error(
                f"has a space, line break or other unexpected character at position {position}",
                "copy the token again, without quotes, spaces or line breaks",
            )


def _check_host(host: str, allow_http: bool) -> None:
    setting = _setting("host")
    parts = urllib.parse.urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise setting.error(f"{host!r} is not a URL", f"use a base URL such as {DEFAULT_HOST}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise setting.error(
            "has a query, fragment or credentials",
            "give only scheme://host[:port]; the token goes in the token setting",
        )
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise setting.error(f"{host!r} has an invalid port", "use scheme://host:port") from None
    if parts.path.rstrip("/"):
        base = f"{parts.scheme}://{parts.netloc}"
        raise setting.error(
            f"{host!r} has a path ({parts.path})",
            f"use {base!r}: the package adds /v0/events itself",
        )
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        raise setting.error(
            f"{host!r} sends the token unencrypted",
            "use https, or set allow_http (TINYBIRD_ALLOW_HTTP=true) for a trusted network",
        )


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
