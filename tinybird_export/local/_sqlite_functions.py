"""ClickHouse's everyday functions as SQLite functions, for the SQLite engine's readers.

What people write first on logs and events (``countIf``, ``sumIf``, ``quantile``, ``argMax``,
``toStartOfFiveMinutes``, ``if``...) works on the SQLite engine too, so that the queries of
the README and the docs run on the engine a plain install gets. Only the common ones earn
their place: each is a few lines of Python, registered on the read-only connections (the
authorizer allows calling functions); anything else gets an error that names the engine and
how to get ClickHouse's own SQL (``UNKNOWN``). They run in Python, a row at a time: about a
microsecond a row, where the ClickHouse engine is hundreds of times faster.

Values are what the SQLite engine stores: numbers, and date-times as text
(``YYYY-MM-DD HH:MM:SS[.ffffff]``), which the ``toStartOf*`` functions cut and round.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Callable
from typing import Any, Final

from tinybird_export.local._engine import INSTALL_CLICKHOUSE

CLICKHOUSE_SQL: Final = (
    f"for ClickHouse's own SQL, install the ClickHouse engine ({INSTALL_CLICKHOUSE}; chDB is "
    "about 890 MB with the pyarrow, pandas and numpy it needs) and restart tinybird-export local"
)


_DIGEST_OVER = 32  # characters or bytes: a longer distinct value is kept as its digest


class _Conditional:
    """``sumIf(x, cond)`` and its kin: the aggregate of ``x`` over the rows where ``cond``.

    Each keeps a running answer, not the values: a query's rows may be a generator's billions
    of blobs (SQLite bounds its own aggregates' memory; these are Python's).
    """

    def __init__(self) -> None:
        self.total: Any = 0
        self.count = 0
        self.best: Any = None

    def step(self, value: Any, condition: Any) -> None:
        if condition and value is not None:
            self.total += value
            self.count += 1


class _SumIf(_Conditional):
    def finalize(self) -> Any:
        return self.total


class _AvgIf(_Conditional):
    def finalize(self) -> Any:
        return self.total / self.count if self.count else math.nan


class _MinIf(_Conditional):
    def step(self, value: Any, condition: Any) -> None:
        if condition and value is not None and (self.best is None or value < self.best):
            self.best = value

    def finalize(self) -> Any:
        return self.best


class _MaxIf(_MinIf):
    def step(self, value: Any, condition: Any) -> None:
        if condition and value is not None and (self.best is None or value > self.best):
            self.best = value


class _CountIf:
    def __init__(self) -> None:
        self.count = 0

    def step(self, condition: Any) -> None:
        self.count += bool(condition)

    def finalize(self) -> int:
        return self.count


class _UniqIf:
    """Distinct values, a long text or blob kept as its 128-bit digest (a bounded size for
    each, whatever the values' sizes).
    """

    def __init__(self) -> None:
        self.seen: set[Any] = set()

    def step(self, value: Any, condition: Any) -> None:
        if condition and value is not None:
            self.seen.add(_distinct_key(value))

    def finalize(self) -> int:
        return len(self.seen)


def _distinct_key(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _DIGEST_OVER:
        return ("s", hashlib.blake2b(value.encode(), digest_size=16).digest())
    if isinstance(value, bytes) and len(value) > _DIGEST_OVER:
        return ("b", hashlib.blake2b(value, digest_size=16).digest())
    return value


class _Quantile:
    """``quantile(level)(x)`` (rewritten ``quantile(level, x)``): interpolated between the
    two nearest values, as ClickHouse's ``quantile`` is while its sample holds every value.
    """

    def __init__(self) -> None:
        self.level = 0.5
        self.values: list[float] = []

    def step(self, level: Any, value: Any) -> None:
        self.level = float(level)
        if isinstance(value, int | float):
            self.values.append(value)

    def finalize(self) -> float:
        if not self.values:
            return math.nan
        ordered = sorted(self.values)
        position = min(max(self.level, 0.0), 1.0) * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _QuantileExact(_Quantile):
    """``quantileExact(level)(x)``: the value at ``level * n`` of the sorted values."""

    def finalize(self) -> float:
        if not self.values:
            return math.nan
        ordered = sorted(self.values)
        index = int(self.level * len(ordered)) if self.level < 1 else len(ordered) - 1
        return ordered[min(max(index, 0), len(ordered) - 1)]


class _Median(_Quantile):
    def step(self, value: Any) -> None:  # type: ignore[override]
        super().step(0.5, value)


class _ArgMax:
    """``argMax(arg, val)``: ``arg`` of the row with the largest ``val`` (the first one)."""

    better: Callable[[Any, Any], bool] = staticmethod(lambda new, old: new > old)

    def __init__(self) -> None:
        self.best: Any = None
        self.arg: Any = None

    def step(self, arg: Any, value: Any) -> None:
        if value is not None and (self.best is None or self.better(value, self.best)):
            self.best, self.arg = value, arg

    def finalize(self) -> Any:
        return self.arg


class _ArgMin(_ArgMax):
    better = staticmethod(lambda new, old: new < old)


class _Any:
    """``any(x)``: the first value that is not NULL (ClickHouse's is any one)."""

    def __init__(self) -> None:
        self.value: Any = None

    def step(self, value: Any) -> None:
        if self.value is None:
            self.value = value

    def finalize(self) -> Any:
        return self.value


class _AnyLast(_Any):
    def step(self, value: Any) -> None:
        if value is not None:
            self.value = value


AGGREGATES: Final[dict[str, tuple[int, type]]] = {
    "countIf": (1, _CountIf),
    "sumIf": (2, _SumIf),
    "avgIf": (2, _AvgIf),
    "minIf": (2, _MinIf),
    "maxIf": (2, _MaxIf),
    "uniqIf": (2, _UniqIf),
    "uniqExactIf": (2, _UniqIf),
    "quantile": (2, _Quantile),
    "quantileExact": (2, _QuantileExact),
    "median": (1, _Median),
    "argMax": (2, _ArgMax),
    "argMin": (2, _ArgMin),
    "any": (1, _Any),
    "anyLast": (1, _AnyLast),
}


def _start_of(minutes: int) -> Callable[[Any], Any]:
    def start(value: Any) -> Any:
        if not isinstance(value, str) or len(value) < 16:
            return value
        minute = int(value[14:16]) // minutes * minutes
        return f"{value[:14]}{minute:02d}:00"

    return start


def _day(value: Any) -> Any:
    return f"{value[:10]} 00:00:00" if isinstance(value, str) and len(value) >= 10 else value


def _month(value: Any) -> Any:
    return f"{value[:8]}01" if isinstance(value, str) and len(value) >= 10 else value


def _number(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return kind(float(value)) if kind is int else float(value)
        except (TypeError, ValueError):
            return None

    return convert


SCALARS: Final[dict[str, tuple[int, Callable[..., Any]]]] = {
    "if": (3, lambda condition, then, otherwise: then if condition else otherwise),
    "toStartOfFiveMinutes": (1, _start_of(5)),
    "toStartOfFifteenMinutes": (1, _start_of(15)),
    "toStartOfDay": (1, _day),
    "toStartOfMonth": (1, _month),
    "toString": (1, lambda value: None if value is None else str(value)),
    "toFloat64": (1, _number(float)),
    "toInt64": (1, _number(int)),
    "empty": (1, lambda value: int(not value)),
    "notEmpty": (1, lambda value: int(bool(value))),
    "startsWith": (2, lambda text, prefix: int(str(text).startswith(str(prefix)))),
    "endsWith": (2, lambda text, suffix: int(str(text).endswith(str(suffix)))),
}

# Rewritten to SQLite's own by ``_sqlite.SPELLINGS`` (native, so faster than the above).
REWRITTEN: Final = (
    "count()",
    "uniq",
    "uniqExact",
    "toDate",
    "now()",
    "toStartOfMinute",
    "toStartOfHour",
    "map['key']",
)


# Aggregates whose answer over no rows is 0 in ClickHouse, and NULL from a Python aggregate
# in SQLite (its finalize is not called then): wrapped in ifnull(..., 0) by ``zero_if_empty``.
_ZERO_WHEN_EMPTY: Final = re.compile(r"\b(countIf|sumIf|uniqIf|uniqExactIf)\s*\(", re.I)
_WRAP: Final = ("ifnull(", ", 0)")


def zero_if_empty(text: str) -> str:
    """``text`` with each call of a counting aggregate wrapped in ``ifnull(..., 0)`` (its
    parentheses matched, string literals and quoted names skipped).
    """
    out, index = [], 0
    quote, scanned = "", 0  # the quote open at ``scanned``: one pass, whatever the matches
    for match in _ZERO_WHEN_EMPTY.finditer(text):
        quote = _quote_at(text, scanned, match.start(), quote)
        scanned = match.start()
        if match.start() < index or quote:
            continue
        end = _closing(text, match.end())
        if end is None:
            break  # unbalanced: SQLite says what is wrong
        out += [text[index : match.start()], _WRAP[0], text[match.start() : end + 1], _WRAP[1]]
        index = end + 1
    return "".join(out) + text[index:]


def column_name(name: str) -> str:
    """A result column's name as written, without ``zero_if_empty``'s wrapping."""
    if name.startswith(_WRAP[0]) and name.endswith(_WRAP[1]):
        inner = name[len(_WRAP[0]) : -len(_WRAP[1])]
        if _ZERO_WHEN_EMPTY.match(inner):
            return inner
    return name


def _quote_at(text: str, start: int, end: int, quote: str) -> str:
    """The quote open at ``end``, given the one open at ``start`` (empty: none)."""
    for char in text[start:end]:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
    return quote


def _closing(text: str, start: int) -> int | None:
    """Where the parenthesis opened just before ``start`` closes."""
    depth, quote = 1, ""
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
    return None


def register(db: sqlite3.Connection) -> None:
    """Make the functions callable on ``db`` (deterministic ones, so SQLite may reuse them)."""
    for name, (arguments, aggregate) in AGGREGATES.items():
        db.create_aggregate(name, arguments, aggregate)
    for name, (arguments, function) in SCALARS.items():
        db.create_function(name, arguments, function, deterministic=True)


def supported() -> str:
    """The ClickHouse functions the SQLite engine answers, for messages and the docs."""
    return ", ".join([*REWRITTEN, *AGGREGATES, *SCALARS])


def engine_note(message: str) -> str:
    """SQLite's error, saying that the engine may be the cause: in full for an unknown
    function or a syntax error (ClickHouse's ``f(p)(x)``, ``x -> y``), briefly otherwise
    (``[1, 2]`` is a quoted name in SQLite: "no such column: 1, 2").
    """
    if message.startswith("no such function") or message.endswith("syntax error"):
        return (
            f"{message}. This local server runs the SQLite engine (the default when chDB is "
            f"not installed), whose SQL is SQLite's with these ClickHouse functions: "
            f"{supported()}; {CLICKHOUSE_SQL}"
        )
    return (
        f"{message} (this local server runs the SQLite engine: for ClickHouse's own SQL, "
        f"{INSTALL_CLICKHOUSE}, and restart it)"
    )
