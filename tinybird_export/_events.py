"""Log records and plain dicts -> flat event dicts (the caller's-thread part of the pipeline).

Everything here runs inside ``logger.info(...)``, so it is written for cost: a cached
timestamp prefix per second, a counter-based event id, and no imports of optional packages.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, Final

from tinybird_export._encoding import safe_str, to_text

# Keys every LogRecord has, derived from a real record (structlog's trick) plus the ones
# Formatter.format adds; anything else in record.__dict__ came from ``extra=``.
_RESERVED: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime"}

LOG_FIELDS: Final = (
    "timestamp",
    "event",
    "href",
    "level",
    "logger",
    "service",
    "exception",
    "event_id",
    "trace_id",
    "span_id",
    "module",
    "function",
    "file",
    "line",
    "process",
    "thread",
    "host",
    "attributes",
)
"""The built-in fields of a log event, in the order they are sent. Built-ins win over extras."""

_HOST: Final = socket.gethostname()


class _EventIds:
    """Unique event ids: a random per-process prefix and a counter.

    Cheaper than uuid4 on the caller's thread; the prefix is redrawn after fork so that
    a child never reuses its parent's ids.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex() + "-"
        self.counter = itertools.count(1)  # next() on a C iterator is atomic under the GIL

    def next(self) -> str:
        return self.prefix + str(next(self.counter))


event_ids: Final = _EventIds()
os.register_at_fork(after_in_child=event_ids.reset)

_second_cache: tuple[int, str] = (-1, "")


def format_timestamp(created: float) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS.ffffff``, the Events API docs' DateTime64 form."""
    global _second_cache  # noqa: PLW0603 - a one-entry cache; tuple assignment is atomic
    second = int(created)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)
    return f"{prefix}.{int((created - second) * 1_000_000):06d}"


def current_trace_ids() -> tuple[str, str]:
    """The current OpenTelemetry span's ids, or empty strings.

    Looks only in ``sys.modules``: an application that never imported OpenTelemetry pays
    one dict lookup and imports nothing.
    """
    trace_api = sys.modules.get("opentelemetry.trace")
    if trace_api is None:
        return "", ""
    context = trace_api.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class RecordMapper:
    """Turns a ``logging.LogRecord`` into the flat log event.

    Args:
        service: The ``service`` field.
        fields: Static fields added to every event (environment, release, ...).
        extras: ``both`` (top-level and under ``attributes``), ``flat``, ``attributes`` or
            ``none``.
    """

    def __init__(self, service: str, fields: Mapping[str, Any], extras: str) -> None:
        clashes = set(fields) & set(LOG_FIELDS)
        if clashes:
            raise ValueError(
                f"tinybird-export: setting 'fields' (env TINYBIRD_FIELDS) names built-in "
                f"field(s) {', '.join(sorted(clashes))}: rename them."
            )
        self._service = service
        self._fields = dict(fields)
        self._flat = extras in ("both", "flat")
        self._attributes = extras in ("both", "attributes")

    def __call__(self, record: logging.LogRecord) -> dict[str, Any]:
        """Build the event for ``record``."""
        state = record.__dict__
        extra_keys = state.keys() - _RESERVED
        trace_id, span_id = current_trace_ids()
        event: dict[str, Any] = {
            "timestamp": format_timestamp(record.created),
            "event": _message(record),
            "href": "",
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "exception": _exception_text(record),
            "event_id": event_ids.next(),
            "trace_id": trace_id,
            "span_id": span_id,
            "module": record.module,
            "function": record.funcName,
            "file": record.pathname,
            "line": record.lineno,
            "process": record.process,
            "thread": record.threadName,
            "host": _HOST,
            "attributes": {},
        }
        if self._fields:
            event.update(self._fields)
        if extra_keys:
            self._add_extras(event, state, extra_keys)
        return event

    def _add_extras(self, event: dict[str, Any], state: dict[str, Any], keys: set[str]) -> None:
        href = state.get("href")
        if href is not None:
            event["href"] = href if type(href) is str else safe_str(href)
        if self._flat:
            for key in keys:
                if key not in event:  # built-in and static fields win a collision
                    event[key] = state[key]
        if self._attributes:
            event["attributes"] = {key: to_text(state[key]) for key in keys}


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not lose the record
        return f"{safe_str(record.msg)} (format failed; args: {safe_str(record.args)})"


def _exception_text(record: logging.LogRecord) -> str:
    text = record.exc_text or ""
    if not text and record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text


def plain_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an application's own event with ``timestamp`` and ``event_id`` filled in."""
    copy = dict(event)
    if "timestamp" not in copy:
        copy["timestamp"] = format_timestamp(time.time())
    if "event_id" not in copy:
        copy["event_id"] = event_ids.next()
    return copy
