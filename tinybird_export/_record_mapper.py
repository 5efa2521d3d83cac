"""Log records and plain dicts -> flat event dicts (the caller's-thread part of the pipeline).

Everything here runs inside ``logger.info(...)``, so it is written for cost: a cached call-site
fragment, one ``orjson.dumps`` per record, and no imports of optional packages.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Mapping
from itertools import islice
from typing import Any, Final

import orjson

from tinybird_export._context import MESSAGE_OVERRIDE, current_request
from tinybird_export._fields import HOST, current_trace_ids, event_ids, format_timestamp
from tinybird_export._line_encoder import OPTIONS, default, encode, encode_event, safe_str, to_text

# Keys every LogRecord has, derived from a real record (structlog's trick) plus the ones
# Formatter.format adds; anything else in record.__dict__ came from ``extra=``.
_RESERVED: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}

LOG_FIELDS: Final = (
    "timestamp",
    "event",
    "href",
    "request_id",
    "exception",
    "event_id",
    "trace_id",
    "span_id",
    "attributes",
    "level",
    "logger",
    "service",
    "module",
    "function",
    "file",
    "line",
    "process",
    "thread",
    "host",
)
"""The built-in fields of a log event, in the order they are sent; the record's extras go
between ``attributes`` and ``level`` and the static ``fields`` last. Built-ins win over extras.
"""

# Terminal escape sequences: CSI (colours, ``\x1b[31m``), OSC (``\x1b]8;;url\x07`` links)
# and the two-character ones (ECMA-48).
_ANSI_ESCAPE: Final = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])"
)
# uvicorn logs its own lines with a coloured copy of the message for its console.
_UVICORN_COLOURS: Final = "color_message"

_STANDARD_KEYS: Final = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_CALLSITE_CACHE_SIZE: Final = 4096
# What _head and _callsite read from a record's __dict__.
_HEAD_ATTRIBUTES: Final = frozenset(
    {"exc_info", "exc_text", "stack_info", "created"}
    | {"pathname", "lineno", "funcName", "module", "name", "levelname", "process", "threadName"}
)


class RecordMapper:
    """Turns a ``logging.LogRecord`` into the flat log event, as a dict or as a line.

    ``encode`` is the caller's-thread fast path: one orjson-encoded object of what varies,
    with a cached fragment of the fields that are constant per call site spliced in before its
    closing brace; it produces exactly the bytes that encoding the dict from ``__call__`` would
    (a test holds the two together).

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
        self._taken = frozenset(LOG_FIELDS) | frozenset(self._fields)
        self._flat = extras in ("both", "flat")
        self._attributes = extras in ("both", "attributes")
        self._callsites: dict[tuple[Any, ...], tuple[str, bytes]] = {}

    def __call__(self, record: logging.LogRecord) -> dict[str, Any]:
        """Build the event for ``record`` as a dict (for ``before_send`` and repairs)."""
        state = record.__dict__
        if not state.keys() >= _HEAD_ATTRIBUTES:  # a record built without LogRecord.__init__
            state = {**state, **{name: getattr(record, name, None) for name in _HEAD_ATTRIBUTES}}
        event = self._head(record, state)
        event.update(self._constant_fields(record))
        return event

    def encode(self, record: logging.LogRecord, max_bytes: int) -> tuple[bytes | None, int]:
        """The event for ``record`` as one NDJSON line (see ``encode_event``).

        One ``orjson.dumps`` of what varies, with the fields that are constant per call site
        spliced in place of its closing brace from a cache. The cache key holds every record
        attribute the fragment is made of, so two records share a fragment only when it is
        right for both: a QueueListener's records from several processes, or a forked
        child's, each get their own ``process``. ``module`` is a new string on every record
        (logging derives it from the path), so it is compared rather than hashed. Inlined:
        a call costs more than the lookup.
        """
        state = record.__dict__
        try:
            head = _dumps(self._head(record, state))
            key = (
                state["pathname"],
                state["lineno"],
                state["funcName"],
                state["name"],
                state["levelname"],
                state["process"],
                state["threadName"],
            )
            cached = self._callsites.get(key)
            if cached is not None and cached[0] == state["module"]:
                line = head[:-1] + cached[1]
            else:
                line = head[:-1] + self._new_callsite(key, record)
        except TypeError:  # orjson refused a value: the dict path repairs it
            return encode_event(self(record), max_bytes)
        except KeyError:  # a record without the standard attributes in its __dict__
            return encode_event(self(record), max_bytes)
        if len(line) <= max_bytes:
            return line, 0
        return encode_event(self(record), max_bytes)

    def _head(self, record: logging.LogRecord, state: dict[str, Any]) -> dict[str, Any]:
        """The fields that change with every record, then the extras, in wire order.

        The hottest code of the package: helpers are inlined where a call would cost more
        than the work (measured with ``bench/compare.py``), and the record's attributes are
        read from its ``__dict__`` (``state``): a subscript costs less than an attribute
        lookup on a record whose dict took extras.
        """
        extras = _extras(state)
        if state["exc_info"] or state["exc_text"] or state["stack_info"]:
            message, exception = _message_and_exception(record)
        else:
            message, exception = _message(record), ""
        if extras and (MESSAGE_OVERRIDE in extras or _UVICORN_COLOURS in extras):
            message = _framework_message(message, extras, state["name"])
        request = current_request.get()
        if request is not None and request.fields:  # a task's context: the record's extras win
            extras = {**request.fields, **extras}
        trace_id, span_id = current_trace_ids()
        attributes: dict[str, str] = {}
        href = extras.get("href")
        if href is None:
            href = request.href if request else ""
        elif type(href) is not str:
            href = safe_str(href)
        event = {
            "timestamp": format_timestamp(state["created"]),
            "event": message,
            "href": href,
            "request_id": request.request_id if request else "",
            "exception": exception,
            "event_id": event_ids.next(),
            "trace_id": trace_id,
            "span_id": span_id,
            "attributes": attributes,
        }
        if extras:
            if self._attributes:
                for key, value in extras.items():
                    attributes[key] = value if type(value) is str else to_text(value)
            if self._flat:
                taken = self._taken
                for key, value in extras.items():
                    if key not in taken:  # built-in and static fields win a collision
                        event[key] = value
        return event

    def _constant_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        return {
            "level": record.levelname,
            "logger": record.name or "",
            "service": self._service,
            # None where logging could not tell (logProcesses off, makeLogRecord): the
            # shipped schema's columns are not Nullable, so send their empty values.
            "module": record.module or "",
            "function": record.funcName or "",
            "file": record.pathname or "",
            "line": record.lineno or 0,
            "process": record.process or 0,
            "thread": record.threadName or "",
            "host": HOST,
            **self._fields,
        }

    def _new_callsite(self, key: tuple[Any, ...], record: logging.LogRecord) -> bytes:
        """Encode and cache the constant fields as ``,"level":...}``; the cache is cleared
        past ``_CALLSITE_CACHE_SIZE`` entries.
        """
        fragment = b"," + encode(self._constant_fields(record))[1:]
        if len(self._callsites) >= _CALLSITE_CACHE_SIZE:
            self._callsites.clear()
        self._callsites[key] = (record.module, fragment)
        return fragment


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=default, option=OPTIONS)


def _extras(state: dict[str, Any]) -> dict[str, Any]:
    """The record's extras; an extra named ``extra`` holding a dict (loguru's way of passing
    its bound values) is flattened into the others.
    """
    # ``LogRecord.__init__`` sets the standard attributes first and ``makeRecord`` adds the
    # extras after them, so only the keys past the standard ones need checking. A plain
    # loop, because a comprehension is a function call of its own on Python < 3.12.
    if len(state) <= _STANDARD_KEYS:
        return {}
    extras = {}
    for key in islice(state, _STANDARD_KEYS, None):
        if key not in _RESERVED:
            extras[key] = state[key]
    if "extra" in extras and type(extras["extra"]) is dict:
        extras.update(extras.pop("extra"))
    return extras


# loguru's StandardSink renders the traceback into the message and marks exc_text "\n".
_LOGURU_EXC_TEXT: Final = "\n"
_TRACEBACK_START: Final = "\nTraceback (most recent call last):"


def _message_and_exception(record: logging.LogRecord) -> tuple[str, str]:
    message = _message(record)
    if record.exc_text == _LOGURU_EXC_TEXT and record.exc_info:
        head, sep, tail = message.partition(_TRACEBACK_START)
        if sep:
            return head, (sep + tail).strip("\n")
    return message, _exception_text(record)


def _message(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not lose the record
        return f"{safe_str(record.msg)} (format failed; args: {safe_str(record.args)})"
    # Terminal colours (werkzeug's request lines) are for a console, not data. The check
    # scans the message once in C, about 20 ns; the rare coloured one is cleaned.
    return _ANSI_ESCAPE.sub("", message) if "\x1b" in message else message


def _framework_message(message: str, extras: dict[str, Any], logger: str) -> str:
    """The event of a framework's own line: an access line's message without its query
    string (set by ``_context``'s filter), and never uvicorn's coloured copy as an extra.
    """
    if logger.startswith("uvicorn"):
        extras.pop(_UVICORN_COLOURS, None)
    if MESSAGE_OVERRIDE not in extras:
        return message
    override = safe_str(extras.pop(MESSAGE_OVERRIDE))
    return _ANSI_ESCAPE.sub("", override) if "\x1b" in override else override


def _exception_text(record: logging.LogRecord) -> str:
    if not (record.exc_info or record.exc_text or record.stack_info):
        return ""
    text = (record.exc_text or "").strip("\n")
    if not text and record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text


def plain_event(event: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an application's own event with the static ``fields`` (the event's own
    keys win), and ``timestamp`` and ``event_id`` filled in when absent.
    """
    copy = {**fields, **event} if fields else dict(event)
    if "timestamp" not in copy:
        copy["timestamp"] = format_timestamp(time.time())
    if "event_id" not in copy:
        copy["event_id"] = event_ids.next()
    return copy
