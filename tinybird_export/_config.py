"""Settings: one frozen object, one precedence rule.

Every setting resolves the same way: the explicit argument when it is not ``None``, else
its ``TINYBIRD_*`` environment variable, else the default, and is parsed and checked at
construction (``_setting_parsers``: values may arrive as strings), with an error that names
the setting and its env var. What depends on several settings is checked here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict

from tinybird_export._setting_parsers import (
    DEFAULT_HOST,
    MIB,
    PARSERS,
    BeforeSend,
    Setting,
    check_host,
    check_token,
    parse_str,
)

# Tinybird rejects requests over 10 MB on the Free plan, 100 MB on paid Forward plans, with
# 413 (events-api docs, "Limits"); whether raw or compressed bytes count is undocumented,
# so raw bytes stay under. The default batch (4 MiB) is safe for Free.
_REQUEST_CAP: Final = 100 * 1000 * 1000
_DATASOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
    batch_max_bytes: int = 4 * MIB
    queue_max_events: int = 200_000
    # 16 MiB: roughly 40,000 typical events, held per process; a pre-forking server runs
    # one per worker, so a larger default multiplies during an outage.
    queue_max_bytes: int = 16 * MIB
    max_event_bytes: int = MIB
    compression: str = "gzip"
    connect_timeout: float = 3.0
    timeout: float = 10.0
    flush_timeout: float = 5.0
    exit_timeout: float = 5.0
    background: bool = True
    ca_bundle: str | None = None
    spool_dir: str | None = None
    # 1 GiB: a day of a busy service's logs, compressed, on a disk that has room for it.
    spool_max_bytes: int = 1024 * MIB
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
            parse: Callable[[Any, Setting], Any] = PARSERS.get(field.name, parse_str)
            values[field.name] = parse(raw, Setting(field.name, env_names[field.name]))
        if "datasource" not in values and default_datasource is not None:
            values["datasource"] = default_datasource(values)
        config = cls(**{"datasource": "", **values})
        config._validate(Setting("datasource", datasource_env))
        return config

    def _validate(self, datasource: Setting) -> None:
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
        check_host(self.host, self.allow_http, _setting("host"))
        if self.token is not None:
            check_token(self.token, _setting("token"))


_EVERY_SETTING: Final = Kind(
    "TinybirdConfig", frozenset(f.name for f in dataclasses.fields(TinybirdConfig))
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


def _setting(name: str) -> Setting:
    return Setting(name, _ENV_NAMES[name])


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
