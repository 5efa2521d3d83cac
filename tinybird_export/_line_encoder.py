"""Event dict -> one NDJSON line, repairing what JSON cannot carry.

The line is encoded on the caller's thread so that the event reflects the record as it was
when logged (a mutable extra changed afterwards does not leak into it). The fast path is one
``orjson.dumps``; anything it refuses (integers beyond 2^53, lone surrogates, cycles, objects
whose ``__str__`` raises) goes through a slow path that repairs the value instead of losing
the event.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

# OPT_STRICT_INTEGER: integers beyond 2^53 lose precision in JSON readers, so they fail the
# fast path and are sent as strings (events-api docs, "Schema").
OPTIONS: Final = (
    orjson.OPT_STRICT_INTEGER | orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
)
_SAFE_INT: Final = 2**53
_MAX_DEPTH: Final = 64
_MIN_FIELD_CHARS: Final = 64
TRUNCATION_MARKER: Final = "…[truncated {} chars]"


def default(value: Any) -> Any:
    """Orjson's fallback for types it does not know: a faithful text form, never an error."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    return safe_str(value)


def safe_str(value: Any) -> str:
    """``str(value)``, falling back to ``repr`` and then to the type name if those raise."""
    renders: tuple[Callable[[Any], str], ...] = (str, repr)
    for render in renders:
        try:
            text = render(value)
        except Exception:  # noqa: BLE001, S112 - a broken __str__ must not lose the event
            continue
        if isinstance(text, str):
            return text
    return f"<unprintable {type(value).__qualname__}>"


def encode(value: Any) -> bytes:
    """Encode any value as JSON bytes; never raises."""
    try:
        return orjson.dumps(value, default=default, option=OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    try:
        return orjson.dumps(_repair(value, set(), 0), default=default, option=OPTIONS)
    except TypeError:  # Defensive: _repair missed a case; keep the value as text
        return orjson.dumps(_repair_str(safe_str(value)))


def to_text(value: Any) -> str:
    """The string form of a value for a ``Map(String, String)`` column: JSON unless a str."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:  # the JSON text of an int is its str, and str() is cheaper
        return str(value)
    return encode(value).decode()


def encode_event(event: Mapping[str, Any], max_bytes: int) -> tuple[bytes | None, bool]:
    """Encode an event as one NDJSON line of at most ``max_bytes``.

    Returns:
        ``(line, truncated)``; ``line`` is ``None`` when even truncation could not make the
        event fit (the caller counts it as dropped, reason ``too_large``).
    """
    line = encode(event)
    if len(line) <= max_bytes:
        return line, False
    return _shrink(event, max_bytes), True


def _shrink(event: Mapping[str, Any], max_bytes: int) -> bytes | None:
    """Shorten the longest strings (with a marker) until the event fits, or give up."""
    limit = max_bytes // 2
    while limit >= _MIN_FIELD_CHARS:
        line = encode(_truncate(_repair(event, set(), 0), limit))
        if len(line) <= max_bytes:
            return line
        limit //= 2
    return None


def _truncate(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return value[:limit] + TRUNCATION_MARKER.format(len(value) - limit)
    if isinstance(value, dict):
        return {key: _truncate(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_truncate(item, limit) for item in value]
    return value


def _repair(value: Any, active: set[int], depth: int) -> Any:
    """A JSON-safe copy: string keys, big ints as strings, no cycles or lone surrogates."""
    if isinstance(value, str):
        return _repair_str(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        # orjson's strict limit is +-(2^53 - 1): 2^53 itself already loses precision.
        return value if -_SAFE_INT < value < _SAFE_INT else str(value)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if id(value) in active:
            return "<cycle>"
        if depth >= _MAX_DEPTH:
            return _repair_str(safe_str(value)[:1024])
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {
                    _repair_str(k if isinstance(k, str) else safe_str(k)): _repair(
                        v, active, depth + 1
                    )
                    for k, v in list(value.items())
                }
            return [_repair(item, active, depth + 1) for item in list(value)]
        finally:
            active.discard(id(value))
    try:
        orjson.dumps(value, option=OPTIONS)  # datetimes, UUIDs, enums: orjson's own form
    except TypeError:
        return _repair(default(value), active, depth + 1)
    return value


def _repair_str(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from os.fsdecode or broken input): keep them visible as escapes.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
