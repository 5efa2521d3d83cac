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

**A line is always one JSON object**, whatever the event holds: one value that cannot be
written must cost that value, never the event, and never its batch (the Events API refuses
a body with a line that is not an object). Subclasses of ``str``, ``int`` and ``float``
(``numpy.float64``, ``IntEnum``) are read for their value without calling their methods; a
value that raises even so, or a walk that fails, keeps each field as its text; an event
that is not a mapping at all is wrapped as ``{"value": ...}``. Nothing raises to the caller.
"""

from __future__ import annotations

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
    if isinstance(value, float):  # a subclass (numpy.float64): its value, still a number
        return float.__float__(value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = _bytes(value)
        if data is None:
            raise TypeError(type(value).__name__)
        return data.decode("utf-8", "backslashreplace")
    try:  # a set, or a Mapping or Sequence that is not a dict or list: encoded as one
        if isinstance(value, set | frozenset):
            return list(value)
        if isinstance(value, Mapping):
            return dict(value.items())
        if isinstance(value, Sequence) and not isinstance(value, str):
            return list(value)
    except Exception:  # noqa: BLE001 - a container that raises when read: repaired
        raise TypeError(type(value).__name__) from None
    text = _text(value)  # Decimal, and any other object: its str()
    if text is None:
        raise TypeError(type(value).__name__)
    return text


def _bytes(value: bytes | bytearray | memoryview) -> bytes | None:
    """The bytes of a bytes-like value, or ``None`` if they cannot be read (a released
    memoryview, a subclass whose ``__bytes__`` raises).
    """
    try:
        return bytes(value)
    except Exception:  # noqa: BLE001
        return None


def safe_str(value: Any) -> str:
    """``str(value)``, falling back to ``repr`` and then to the type name if those raise."""
    text = _text(value)
    return f"<unprintable {_type_name(value)}>" if text is None else text


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
    except Exception:  # noqa: BLE001 - orjson.JSONEncodeError is a TypeError; anything else too
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
    """Encode an event as one NDJSON line of at most ``max_bytes``: always a JSON object.

    Returns:
        ``(line, flags)``: ``TRUNCATED`` and ``REPAIRED`` as they apply; ``line`` is
        ``None`` when even shrinking could not make the event fit (the caller counts it
        as dropped, reason ``too_large``).
    """
    if issubclass(type(event), dict):  # orjson writes a dict (and a subclass) as an object
        try:
            line, flags = orjson.dumps(event, default=default, option=OPTIONS), 0
        except Exception:  # noqa: BLE001 - orjson refused a value: the walk repairs it
            line, flags = _repaired(event)
    else:
        line, flags = _repaired(event)
    if len(line) <= max_bytes:
        return line, flags
    return _shrink(event, max_bytes, len(line), flags)


def _repaired(event: Any, string_limit: int = 0, keep: float = 1.0) -> tuple[bytes, int]:
    """One walk over the event: its line (an object) and the walk's flags."""
    walk = _Walk(string_limit=string_limit, keep=keep)
    fields = walk.fields(event)
    try:
        line = orjson.dumps(fields, option=OPTIONS)
    except Exception:  # noqa: BLE001 - Defensive: a value changed since the walk looked (a
        walk.repaired = True  # thread): each field on its own, as text if orjson refuses it
        line = b"{%s}" % b",".join(
            b"%s:%s" % (orjson.dumps(k), _dumps(v)) for k, v in fields.items()
        )
    return line, walk.flags()


def _shrink(event: Any, max_bytes: int, size: int, flags: int) -> tuple[bytes | None, int]:
    """Cut the longest strings, then containers too, until the event fits: four passes."""
    ratio = max_bytes / size * 0.8
    passes = ((max_bytes // 2, 1.0), (max_bytes // 8, ratio), (1024, ratio / 4), (0, 0.0))
    for string_limit, keep in passes:
        line, cut = _repaired(event, max(string_limit, _MIN_FIELD_CHARS), keep)
        if len(line) <= max_bytes:
            return line, flags | cut
    return None, flags | TRUNCATED


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=OPTIONS)
    except Exception:  # noqa: BLE001 - Defensive: the walk missed a case; keep the value as text
        return orjson.dumps(_plain_text(value))


def _type_name(value: Any) -> str:
    try:
        return str(type(value).__qualname__)
    except Exception:  # noqa: BLE001 - a metaclass with a hostile __qualname__
        return "object"


def _plain_text(value: Any) -> str:
    """``safe_str(value)`` as a string JSON can carry (lone surrogates escaped)."""
    return safe_str(value).encode("utf-8", "backslashreplace").decode("utf-8")


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

    def fields(self, event: Any) -> dict[str, Any]:
        """The event as a JSON-safe dict: ``{"value": ...}`` for a mapping that cannot be
        read, or for something else (a ``before_send`` that returned a string).
        """
        copy = self.value(event, 0)
        if type(copy) is dict:
            return copy
        self.repaired = True
        return {"value": copy}

    def value(self, value: Any, depth: int) -> Any:
        self.budget -= 1
        kind = type(value)
        if kind is str:
            return self.text(value)
        if kind is int:
            return self.integer(value)
        if value is None or kind is bool or kind is float:
            return value
        try:
            return self.other(value, depth)
        except Exception:  # noqa: BLE001 - its type checks raise (a hostile __class__)
            return self.placeholder(value, "unreadable")

    def other(self, value: Any, depth: int) -> Any:
        # Subclasses (numpy.float64, IntEnum, a str with its own methods): their value,
        # read by the base type's own slot, so that no method of theirs runs or raises.
        if isinstance(value, str):
            return self.text(str.__str__(value))
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, int):
            return self.integer(int.__int__(value))
        if isinstance(value, bytes | bytearray | memoryview):
            data = _bytes(value)
            if data is None:
                return self.placeholder(value, "unreadable")
            return self.text(data.decode("utf-8", "backslashreplace"))
        if isinstance(value, Mapping | list | tuple | set | frozenset) or (
            isinstance(value, Sequence) and not isinstance(value, str)
        ):
            return self.container(value, depth)
        try:
            orjson.dumps(value, option=OPTIONS)  # datetimes, UUIDs, enums: orjson's own form
        except Exception:  # noqa: BLE001 - other objects (Decimal): their str()
            text = _text(value)
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
        return self.digits(value)

    def digits(self, value: int) -> str:
        if value.bit_length() <= _MAX_INT_BITS:
            return str(value)
        self.repaired = True  # str() refuses them
        return f"<int of {value.bit_length()} bits>"

    def placeholder(self, value: Any, what: str) -> str:
        self.repaired = True
        return f"<{what} {_type_name(value)}>"

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
        """A key as orjson's ``OPT_NON_STR_KEYS`` writes it (``null``, ``true``, ``1.5``, an
        enum's value, a long integer's digits); another object's text, as a repair.
        """
        if type(key) is str:
            return self.text(key)
        try:
            if isinstance(key, str):
                return self.text(str.__str__(key))
            if isinstance(key, bool) or key is None:
                return "true" if key is True else "false" if key is False else "null"
            if isinstance(key, int):
                return self.digits(int.__int__(key))
            if isinstance(key, float):
                return orjson.dumps(float.__float__(key)).decode()
            form = orjson.loads(orjson.dumps(key, option=OPTIONS))  # datetimes, UUIDs, enums
            if isinstance(form, str | bool | int | float) or form is None:
                return self.key(form)
        except Exception:  # noqa: BLE001, S110 - not a key orjson writes (or a hostile one)
            pass
        self.repaired = True
        return self.text(safe_str(key))
