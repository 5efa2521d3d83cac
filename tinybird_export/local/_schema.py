"""Column types and value checks for the local server, shared by both engines.

Each ClickHouse type the local server checks becomes a ``ColumnType`` whose ``convert`` turns
a JSON value into its canonical form (UTC text for date-times, lists and dicts for arrays and
maps) or raises ``CheckError``, which sends the row to quarantine as Tinybird does. The
engines then store the canonical value (SQLite as text/JSON; ClickHouse parses it with its own
types). A type this module does not know is still accepted by the ClickHouse engine, which
then checks values itself (``ColumnType.checked`` is false).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

_INT_RANGES = {
    f"{sign}Int{bits}": ((0, 2**bits - 1) if sign else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    for sign in ("", "U")
    for bits in (8, 16, 32, 64, 128, 256)
}
DATETIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?\Z"
)
DATE = re.compile(r"\d{4}-\d\d-\d\d\Z")
_valid_seconds: dict[str, str] = {}  # "YYYY-MM-DD HH:MM:SS" strings already validated


class CheckError(ValueError):
    """A value that does not fit its column."""


class UnsupportedType(ValueError):
    """A column type the engine cannot store."""


@dataclasses.dataclass(frozen=True)
class ColumnType:
    """A parsed ClickHouse type: its name, and how a JSON value becomes a stored value."""

    name: str
    convert: Callable[[Any], Any]
    nullable: bool = False
    zero: Any = None
    checked: bool = True
    container: bool = False  # Array or Map: SQLite stores it as JSON text


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a data source: name, type, JSONPath and optional DEFAULT.

    ``default`` is the DEFAULT's value as the SQLite engine stores it (``"now"`` for
    ``now()``); ``default_sql`` the expression itself, which the ClickHouse engine evaluates.
    """

    name: str
    type: ColumnType
    path: tuple[str, ...]
    default: Any = None
    has_default: bool = False
    default_sql: str = ""
    jsonpath: str = ""
    line: int = 0  # where a .datasource file declares it, for error messages

    @property
    def json_path(self) -> str:
        """The JSONPath as a datafile writes it (``$.tags[:]`` for arrays)."""
        return self.jsonpath or "$." + ".".join(self.path)

    def to_json(self) -> dict[str, Any]:
        """The column as stored in the server's catalog."""
        return {
            "name": self.name,
            "type": self.type.name,
            "jsonpath": self.json_path,
            "default": self.default,
            "has_default": self.has_default,
            "default_sql": self.default_sql,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, lenient: bool = False) -> Column:
        """Inverse of :meth:`to_json`."""
        jsonpath = data["jsonpath"]
        return cls(
            data["name"],
            parse_type(data["type"], lenient=lenient),
            path_of(jsonpath),
            data["default"],
            data["has_default"],
            data.get("default_sql", ""),
            jsonpath,
        )


def path_of(jsonpath: str) -> tuple[str, ...]:
    """``$.a.b[:]`` → ``("a", "b")``."""
    return tuple(jsonpath.removeprefix("$").lstrip(".").replace("[:]", "").split("."))


def parse_type(text: str, *, lenient: bool = False) -> ColumnType:
    """A ``ColumnType`` for a ClickHouse type name such as ``Array(Nullable(Int32))``.

    Args:
        text: The type.
        lenient: Accept types this module cannot check (the ClickHouse engine checks them).

    Raises:
        UnsupportedType: An unknown type, unless ``lenient``.
    """
    text = text.strip()
    outer, _, inner = text.partition("(")
    inner = inner[:-1] if inner.endswith(")") else inner
    if outer in _INT_RANGES and not inner:
        return ColumnType(text, _integer(*_INT_RANGES[outer]), zero=0)
    simple = {
        "String": ColumnType(text, convert_string, zero=""),
        "UUID": ColumnType(text, convert_string, zero="00000000-0000-0000-0000-000000000000"),
        "Float32": ColumnType(text, _float, zero=0.0),
        "Float64": ColumnType(text, _float, zero=0.0),
        "Bool": ColumnType(text, _bool, zero=False),
        "Date": ColumnType(text, _date, zero="1970-01-01"),
        "DateTime": ColumnType(text, _datetime(0), zero="1970-01-01 00:00:00"),
    }
    if outer in simple and not inner:
        return simple[outer]
    try:
        if outer in ("DateTime", "DateTime64"):
            first = inner.split(",")[0].strip()
            precision = int(first) if first.isdigit() else (3 if outer == "DateTime64" else 0)
            if outer == "DateTime" and first and not first.startswith("'"):
                raise UnsupportedType(f"unsupported column type {text!r}")
            return ColumnType(text, _datetime(precision), zero="1970-01-01 00:00:00")
        if outer == "Nullable":
            base = parse_type(inner, lenient=lenient)
            return ColumnType(
                text,
                lambda v: None if v is None else base.convert(v),
                nullable=True,
                checked=base.checked,
            )
        if outer == "LowCardinality":
            base = parse_type(inner, lenient=lenient)
            return dataclasses.replace(base, name=text)
        if outer == "Array":
            item = parse_type(inner, lenient=lenient)
            return ColumnType(text, _array(item), zero=[], checked=item.checked, container=True)
        if outer == "Map":
            key, value = split_args(inner)
            key_type, value_type = (
                parse_type(key, lenient=lenient),
                parse_type(value, lenient=lenient),
            )
            return ColumnType(
                text,
                _map(key_type, value_type),
                zero={},
                checked=key_type.checked and value_type.checked,
                container=True,
            )
    except UnsupportedType:
        if not lenient:
            raise
    if lenient:
        return ColumnType(text, _unchecked, checked=False)
    raise UnsupportedType(f"unsupported column type {text!r}")


def split_args(inner: str) -> tuple[str, str]:
    """``String, Array(UInt8)`` → ``("String", "Array(UInt8)")``."""
    depth = 0
    for index, char in enumerate(inner):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            return inner[:index].strip(), inner[index + 1 :].strip()
    raise UnsupportedType(f"expected two type arguments in {inner!r}")


def _unchecked(value: Any) -> Any:
    if value is None:
        raise CheckError("null in a column that is not Nullable")
    return value


def convert_string(value: Any) -> str:
    # ClickHouse reads a JSON number, boolean, object or array into a String column as its
    # JSON text (input_format_json_read_{numbers,bools,objects,arrays}_as_strings, on by
    # default); only null needs a Nullable column.
    if type(value) is str:
        return value
    if value is None:
        raise CheckError("null in a String column that is not Nullable")
    return json_text(value)


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckError(f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise CheckError(f"{value} is out of range [{low}, {high}]")
        return value if -(2**63) <= value < 2**63 else str(value)  # type: ignore[return-value]

    return convert


def _float(value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckError(f"expected a number, got {_kind(value)}")
    return float(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise CheckError(f"expected a boolean, got {_kind(value)}")


def _date(value: Any) -> str:
    if isinstance(value, str) and DATE.match(value):
        return value
    raise CheckError(f"expected a date YYYY-MM-DD, got {_kind(value)}")


def _datetime(precision: int) -> Callable[[Any], str]:
    """Accepts ``YYYY-MM-DD HH:MM:SS[.f]`` and RFC 3339 (``T``, ``Z`` or offset), as
    ClickHouse's best-effort parsing does, and epoch seconds; returns UTC text.
    """

    def convert(value: Any) -> str:
        # Fast path for the common UTC "YYYY-MM-DD HH:MM:SS[.fff]" form: the seconds part
        # is validated once per distinct second, only the fraction per value.
        if type(value) is str and len(value) >= 19:
            prefix = _valid_seconds.get(value[:19])
            rest = value[19:]
            if prefix is not None and (
                not rest or (rest[0] == "." and 1 < len(rest) <= 10 and rest[1:].isdigit())
            ):
                return f"{prefix}.{rest[1:].ljust(9, '0')[:precision]}" if precision else prefix
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                moment = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
            except (OverflowError, OSError, ValueError) as exc:
                raise CheckError(f"epoch {value} is out of range: {exc}") from None
            return _format(moment.replace(tzinfo=None), moment.microsecond * 1000, precision)
        match = DATETIME.match(value) if isinstance(value, str) else None
        if match is None:
            raise CheckError(f"expected a DateTime string, got {_kind(value)}")
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        try:
            moment = datetime.datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second)
            )
            if zone and zone != "Z":
                sign = 1 if zone[0] == "+" else -1
                hours, minutes = int(zone[1:3]), int(zone[-2:])
                moment -= sign * datetime.timedelta(hours=hours, minutes=minutes)
        except (ValueError, OverflowError) as exc:
            raise CheckError(str(exc)) from None
        nanos = int((fraction or "0").ljust(9, "0"))
        if not zone and value[10] == " " and len(_valid_seconds) < 100_000:
            _valid_seconds[value[:19]] = value[:19]
        return _format(moment, nanos, precision)

    return convert


def _format(moment: datetime.datetime, nanos: int, precision: int) -> str:
    text = f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}"
    return f"{text}.{str(nanos).zfill(9)[:precision]}" if precision else text


def _array(item: ColumnType) -> Callable[[Any], list[Any]]:
    convert_item = item.convert

    def convert(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise CheckError(f"expected an array, got {_kind(value)}")
        return [convert_item(v) for v in value]

    return convert


def _map(key: ColumnType, value_type: ColumnType) -> Callable[[Any], dict[Any, Any]]:
    def convert(value: Any) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise CheckError(f"expected an object, got {_kind(value)}")
        return {key.convert(k): value_type.convert(v) for k, v in value.items()}

    return convert


def json_text(value: Any) -> str:
    """Compact JSON text of a parsed JSON value (integers of any size)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _kind(value: Any) -> str:
    text = json_text(value)
    return text if len(text) <= 40 else text[:37] + "..."
