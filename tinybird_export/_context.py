"""The current request (or task), in a context variable: set by the Django, Flask, ASGI and
Celery integrations, read by the record mapper. Context variables follow threads and asyncio
tasks, so concurrent requests (threads, async views, ASGI) never see each other's values.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Final

from tinybird_export._config import parse_bool

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
    return parse_bool(raw, env, env)
