"""The current request (or task), in a context variable: set by the Django, Flask, ASGI and
Celery integrations, read by the record mapper. Context variables follow threads and asyncio
tasks, so concurrent requests (threads, async views, ASGI) never see each other's values.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Final

from tinybird_export._setting_parsers import Setting, parse_bool

MESSAGE_OVERRIDE: Final = "tinybird_event"
"""A record attribute that, when set, is the event's ``event`` instead of the message."""

# The request line in a framework's own access log ("GET /path?query HTTP/1.1"), and
# credentials in an absolute URL.
_QUERY = re.compile(r"([A-Z]+ [^ ?\"]*)\?[^ \"]*")
_CREDENTIALS = re.compile(r"(//)[^/@\s\"]+@")


def strip_query(text: str) -> str:
    """``text`` without the query strings of its request lines, nor URL credentials."""
    return _CREDENTIALS.sub(r"\1", _QUERY.sub(r"\1", text))


class StripQueryFromAccessLines(logging.Filter):
    """On a framework's access logger (``django.server``, ``werkzeug``, ``uvicorn.access``):
    the event of each line loses its query string (they carry reset tokens and OAuth
    codes), as ``href`` does. The record itself is left alone: other handlers, the console
    included, print it as they always did.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler repairs it
            return True
        stripped = strip_query(message)
        if stripped != message:
            setattr(record, MESSAGE_OVERRIDE, stripped)
        return True


def strip_access_lines(*logger_names: str) -> None:
    """Install ``StripQueryFromAccessLines`` on these loggers, once."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, StripQueryFromAccessLines) for f in logger.filters):
            logger.addFilter(StripQueryFromAccessLines())


ACCESS_LOGGER: Final = "tinybird_export.access"
"""Per-request access events are logged here (opt-in); it propagates like any logger."""


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """What every log event emitted while serving a request (or running a task) carries.

    ``fields`` are added to the event like the record's own extras (which win a clash):
    the Celery integration's ``task_name`` and ``task_id``. ``None`` for a request, so the
    caller's path pays one check.
    """

    href: str
    request_id: str
    fields: Mapping[str, str] | None = None


current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "tinybird_export_request", default=None
)


def request_id(incoming: str | None) -> str:
    """The incoming id when trusted and sane, else a new random one."""
    if incoming and len(incoming) <= 200 and incoming.isprintable():
        return incoming
    return os.urandom(16).hex()


def log_access(method: str, route: str, status: int, started: float, href: str) -> None:
    """One access event in the same data source and schema as the app's log events."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    logging.getLogger(ACCESS_LOGGER).info(
        "%s %s %s",
        method,
        route or href,
        status,
        extra={"method": method, "route": route, "status": status, "duration_ms": duration_ms},
    )


def env_flag(name: str, setting: Any) -> bool:
    """A boolean integration option: the explicit setting, else ``TINYBIRD_<name>``, else
    false; strings are parsed like every boolean setting (``"false"`` is false).

    Raises:
        ValueError: The value is not a boolean; the message names the option.
    """
    env = f"TINYBIRD_{name}"
    raw = setting if setting is not None else os.environ.get(env, "").strip() or False
    return parse_bool(raw, Setting(env, env))
