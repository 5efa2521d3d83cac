"""Event dict -> one NDJSON line, repairing what JSON cannot carry, in bounded time.

The line is encoded on the caller's thread so that the event reflects the record as it was
when logged (a mutable extra changed afterwards does not leak into it). The fast path is one
``orjson.dumps``. Anything it refuses (integers beyond 2^53, lone surrogates, cycles,
containers or objects that raise when read) goes through one walk that repairs the value
instead of losing the event: placeholders name the type that could not be read.

An event over ``max_event_bytes`` is shrunk by the same walk, in at most four passes, each
of which visits a bounded number of values (``_NODE_BUDGET``): the longest strings are cut,
then the containers, each cut marked. The cost of one call is bounded by its input's size
(one ``orjson.dumps`` of it) plus a constant, however large or deep the input is.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

# OPT_STRICT_INTEGER: integers beyond 2^53 lose precision in JSON readers, so they fail the
# fast path and are sent as strings (events-api docs, "Schema").
OPTIONS: Final = (
    orjson.OPT_STRICT_INTEGER | orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
)
TRUNCATED: Final = 1
"""``encode_event`` flag: long strings or containers were cut to fit."""
REPAIRED: Final = 2
"""``encode_event`` flag: values JSON cannot carry were replaced (placeholders, strings)."""
_SAFE_INT: Final = 2**53
_MAX_INT_BITS: Final = 14_000  # str() refuses ints past 4,300 digits (about 14,285 bits)
_MAX_DEPTH: Final = 64
_MIN_FIELD_CHARS: Final = 64
_NODE_BUDGET: Final = 200_000  # values one walk visits at most (~0.1 s of Python)
TRUNCATION_MARKER: Final = "…[truncated {} chars]"
_MORE_ITEMS: Final = "…[{} more items]"


def default(value: Any) -> Any:
    """Orjson's fallback for types it does not know: a faithful form, or ``TypeError`` so
    that the repairing walk takes over (and counts the repair).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    try:  # a Mapping or Sequence that is not a dict or list: encoded as one
        if isinstance(value, Mapping):
            return dict(value.items())
        if isinstance(value, Sequence) and not isinstance(value, str):
            return list(value)
    except Exception:  # noqa: BLE001 - a container that raises when read: repaired
        raise TypeError(type(value).__name__) from None
    text = _text(value)
    if text is None:
        raise TypeError(type(value).__name__)
    return text


def safe_str(value: Any) -> str:
    """``str(value)``, falling back to ``repr`` and then to the type name if those raise."""
    text = _text(value)
    return f"<unprintable {type(value).__qualname__}>" if text is None else text


def _text(value: Any) -> str | None:
    renders: tuple[Callable[[Any], str], ...] = (str, repr)
    for render in renders:
        try:
            text = render(value)
        except Exception:  # noqa: BLE001, S112 - a broken __str__ must not lose the event
            continue
        if isinstance(text, str):
            return text
    return None


def encode(value: Any) -> bytes:
    """Encode any value as JSON bytes; never raises."""
    try:
        return orjson.dumps(value, default=default, option=OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _dumps(_Walk().value(value, 0))


def to_text(value: Any) -> str:
    """The string form of a value for a ``Map(String, String)`` column: JSON unless a str."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:  # the JSON text of an int is its str, and str() is cheaper
        try:
            return str(value)
        except ValueError:  # more digits than str() will make
            return _Walk().value(value, 0)  # type: ignore[no-any-return]
    return encode(value).decode()


def encode_event(event: Mapping[str, Any], max_bytes: int) -> tuple[bytes | None, int]:
    """Encode an event as one NDJSON line of at most ``max_bytes``.

    Returns:
        ``(line, flags)``: ``TRUNCATED`` and ``REPAIRED`` as they apply; ``line`` is
        ``None`` when even shrinking could not make the event fit (the caller counts it
        as dropped, reason ``too_large``).
    """
    flags = 0
    try:
        line = orjson.dumps(event, default=default, option=OPTIONS)
    except TypeError:
        walk = _Walk()
        line = _dumps(walk.value(event, 0))
        flags = walk.flags()
    if len(line) <= max_bytes:
        return line, flags
    return _shrink(event, max_bytes, len(line), flags)


def _shrink(event: Any, max_bytes: int, size: int, flags: int) -> tuple[bytes | None, int]:
    """Cut the longest strings, then containers too, until the event fits: four passes."""
    ratio = max_bytes / size * 0.8
    passes = ((max_bytes // 2, 1.0), (max_bytes // 8, ratio), (1024, ratio / 4), (0, 0.0))
    for string_limit, keep in passes:
        walk = _Walk(string_limit=max(string_limit, _MIN_FIELD_CHARS), keep=keep)
        line = _dumps(walk.value(event, 0))
        if len(line) <= max_bytes:
            return line, flags | walk.flags()
    return None, flags | TRUNCATED


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=OPTIONS)
    except TypeError:  # Defensive: the walk missed a case; keep the value as text
        return orjson.dumps(safe_str(value).encode("utf-8", "backslashreplace").decode())


class _Walk:
    """One bounded pass over a value: a JSON-safe copy, repaired and, when asked, cut.

    Args:
        string_limit: Strings longer than this are cut with a marker (no limit if 0).
        keep: The share of each nested container's items to keep (1.0: all), at least one.
    """

    def __init__(self, *, string_limit: int = 0, keep: float = 1.0) -> None:
        self.string_limit = string_limit
        self.keep = keep
        self.budget = _NODE_BUDGET
        self.repaired = self.truncated = False
        self._active: set[int] = set()

    def flags(self) -> int:
        return (REPAIRED if self.repaired else 0) | (TRUNCATED if self.truncated else 0)

    def value(self, value: Any, depth: int) -> Any:
        self.budget -= 1
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            return self.integer(value)
        if isinstance(value, bytes | bytearray | memoryview | decimal.Decimal | set | frozenset):
            return self.value(default(value), depth)
        if isinstance(value, Mapping | list | tuple) or (
            isinstance(value, Sequence) and not isinstance(value, str)
        ):
            return self.container(value, depth)
        try:
            orjson.dumps(value, option=OPTIONS)  # datetimes, UUIDs, enums: orjson's own form
        except TypeError:
            text = _text(value)  # other objects: their str()
            return self.text(self.placeholder(value, "unprintable") if text is None else text)
        return value

    def text(self, text: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (from os.fsdecode or broken input): kept visible as escapes.
            self.repaired = True
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        limit = self.string_limit
        if limit and len(text) > limit:
            self.truncated = True
            return text[:limit] + TRUNCATION_MARKER.format(len(text) - limit)
        return text

    def integer(self, value: int) -> int | str:
        # orjson's strict limit is +-(2^53 - 1): 2^53 itself already loses precision.
        if -_SAFE_INT < value < _SAFE_INT:
            return value
        self.repaired = True
        if value.bit_length() > _MAX_INT_BITS:
            return f"<int of {value.bit_length()} bits>"
        return str(value)

    def placeholder(self, value: Any, what: str) -> str:
        self.repaired = True
        return f"<{what} {type(value).__qualname__}>"

    def container(self, value: Any, depth: int) -> Any:
        if id(value) in self._active:
            self.repaired = True
            return "<cycle>"
        if depth >= _MAX_DEPTH:
            self.repaired = True
            return self.text(safe_str(value)[:1024])
        try:
            items = list(value.items()) if isinstance(value, Mapping) else list(value)
        except Exception:  # noqa: BLE001 - a container that raises when read
            return self.placeholder(value, "unreadable")
        # The event's own fields (depth 0) are all kept: only what is inside them is cut.
        kept = len(items) if self.keep >= 1 or not depth else max(1, int(len(items) * self.keep))
        kept = max(min(kept, self.budget), 0)
        self._active.add(id(value))
        try:
            if isinstance(value, Mapping):
                copy: Any = {
                    self.key(key): self.value(item, depth + 1) for key, item in items[:kept]
                }
                if kept < len(items):
                    copy["…"] = _MORE_ITEMS.format(len(items) - kept)
            else:
                copy = [self.value(item, depth + 1) for item in items[:kept]]
                if kept < len(items):
                    copy.append(_MORE_ITEMS.format(len(items) - kept))
        finally:
            self._active.discard(id(value))
        if kept < len(items):
            self.truncated = True
        return copy

    def key(self, key: Any) -> str:
        if isinstance(key, str):
            return self.text(key)
        self.repaired = self.repaired or not isinstance(key, int | float | bool)
        return self.text(safe_str(key))
