"""Each setting's value: parsed from a Python value or a string, and checked.

Values may arrive as strings (``dictConfig``, ``fileConfig``, Django settings, env vars), so
every parser takes either, and every error names the setting and its env var with the fix
(``Setting.error``). What a setting is for, its default and which producers take it are
``_config``'s; checks that compare two settings are too.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import math
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final

MIB: Final = 1024 * 1024
DEFAULT_HOST: Final = "https://api.tinybird.co"
_EXTRAS_MODES: Final = ("both", "flat", "attributes", "none")
_COMPRESSIONS: Final = ("gzip", "none")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

BeforeSend = Callable[[dict[str, Any]], "dict[str, Any] | None"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """A setting as its errors name it: its argument and its environment variable."""

    name: str
    env: str

    def error(self, problem: str, fix: str) -> ValueError:
        """The error for ``problem``, saying the ``fix``."""
        return ValueError(
            f"tinybird-export: setting {self.name!r} (env {self.env}) {problem}: {fix}."
        )


def parse_str(raw: Any, setting: Setting) -> str:
    """Text, stripped."""
    if not isinstance(raw, str):
        raise setting.error(f"must be a string, got {type(raw).__name__}", "pass text")
    return raw.strip()


def parse_bool(raw: Any, setting: Setting) -> bool:
    """The package's one boolean parser (settings, integrations): true/false, 1/0,
    yes/no, on/off, or a bool.
    """
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise setting.error(f"is {raw!r}, not a boolean", "use true or false")


def _number(kind: type[int] | type[float], minimum: float) -> Callable[[Any, Setting], Any]:
    def parse(raw: Any, setting: Setting) -> int | float:
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


def _choice(options: tuple[str, ...]) -> Callable[[Any, Setting], str]:
    def parse(raw: Any, setting: Setting) -> str:
        value = parse_str(raw, setting).lower()
        if value not in options:
            raise setting.error(f"is {raw!r}", "use one of " + ", ".join(options))
        return value

    return parse


def _parse_fields(raw: Any, setting: Setting) -> Mapping[str, Any]:
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


def _parse_before_send(raw: Any, setting: Setting) -> BeforeSend:
    """A callable, or its dotted path (``pkg.module:function`` or ``pkg.module.function``)."""
    if callable(raw):
        return raw  # type: ignore[no-any-return]
    path = parse_str(raw, setting)
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


PARSERS: Final[dict[str, Callable[[Any, Setting], Any]]] = {
    "enabled": parse_bool,
    "wait": parse_bool,
    "background": parse_bool,
    "allow_http": parse_bool,
    "adaptive": parse_bool,
    "flush_interval": _number(float, 0.01),
    "batch_max_rows": _number(int, 1),
    "batch_max_bytes": _number(int, 1024),
    "queue_max_events": _number(int, 1),
    "queue_max_bytes": _number(int, 1024),
    "max_event_bytes": _number(int, 1024),
    "spool_max_bytes": _number(int, MIB),
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
"""Each setting's parser; a setting not named here is text (``parse_str``)."""


def check_token(token: str, setting: Setting) -> None:
    """Refuse a token that cannot be an HTTP header value, without echoing any of it: a
    line break would otherwise fail every request, with the token quoted in the error.
    """
    for position, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            raise setting.error(
                f"has a space, line break or other unexpected character at position {position}",
                "copy the token again, without quotes, spaces or line breaks",
            )


def check_host(host: str, allow_http: bool, setting: Setting) -> None:
    """Refuse a host that is not a base URL, or that would send the token unencrypted
    (plain http to anything but loopback, unless ``allow_http``).
    """
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
