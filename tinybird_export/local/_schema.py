"""Column types, value checks, schema guessing and ``.datasource`` files for the local server.

Each ClickHouse type the local server supports becomes a ``ColumnType`` that checks a JSON
value and converts it to what SQLite stores. The rules follow how Tinybird ingests NDJSON
(events-api docs, "Schema"): a value of the wrong type sends the row to quarantine.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

_INT_RANGES = {
    f"{sign}Int{bits}": ((0, 2**bits - 1) if sign else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    for sign in ("", "U")
    for bits in (8, 16, 32, 64, 128, 256)
}
_DATETIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?\Z"
)
_DATE = re.compile(r"\d{4}-\d\d-\d\d\Z")
_valid_seconds: dict[str, str] = {}  # "YYYY-MM-DD HH:MM:SS" strings already validated


class CheckError(ValueError):
    """A value that does not fit its column."""


@dataclasses.dataclass(frozen=True)
class ColumnType:
    """A parsed ClickHouse type: its name, and how a JSON value becomes a stored value."""

    name: str
    convert: Callable[[Any], Any]
    nullable: bool = False
    zero: Any = None


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a data source: name, type, JSONPath and optional DEFAULT."""

    name: str
    type: ColumnType
    path: tuple[str, ...]
    default: Any = None
    has_default: bool = False

    def to_json(self) -> dict[str, Any]:
        """The column as stored in the server's catalog."""
        return {
            "name": self.name,
            "type": self.type.name,
            "jsonpath": "$." + ".".join(self.path),
            "default": self.default,
            "has_default": self.has_default,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Column:
        """Inverse of :meth:`to_json`."""
        return cls(
            data["name"],
            parse_type(data["type"]),
            tuple(data["jsonpath"][2:].split(".")),
            data["default"],
            data["has_default"],
        )


def parse_type(text: str) -> ColumnType:
    """A ``ColumnType`` for a ClickHouse type name such as ``Array(Nullable(Int32))``."""
    text = text.strip()
    outer, _, inner = text.partition("(")
    inner = inner[:-1] if inner.endswith(")") else inner
    if outer in _INT_RANGES:
        return ColumnType(text, _integer(*_INT_RANGES[outer]), zero=0)
    simple = {
        "String": ColumnType(text, _string, zero=""),
        "UUID": ColumnType(text, _string, zero="00000000-0000-0000-0000-000000000000"),
        "Float32": ColumnType(text, _float, zero=0.0),
        "Float64": ColumnType(text, _float, zero=0.0),
        "Bool": ColumnType(text, _bool, zero=0),
        "Date": ColumnType(text, _date, zero="1970-01-01"),
        "DateTime": ColumnType(text, _datetime(0), zero="1970-01-01 00:00:00"),
    }
    if outer in simple and (outer != "DateTime" or not inner):
        return simple[outer]
    if outer in ("DateTime", "DateTime64"):
        precision = int(inner.split(",")[0]) if inner.split(",")[0].strip().isdigit() else 3
        return ColumnType(text, _datetime(precision), zero="1970-01-01 00:00:00")
    if outer == "Nullable":
        base = parse_type(inner)
        return ColumnType(text, lambda v: None if v is None else base.convert(v), nullable=True)
    if outer == "LowCardinality":
        base = parse_type(inner)
        return ColumnType(text, base.convert, base.nullable, base.zero)
    if outer == "Array":
        return ColumnType(text, _array(parse_type(inner)), zero="[]")
    if outer == "Map":
        key, value = _split_args(inner)
        return ColumnType(text, _map(parse_type(key), parse_type(value)), zero="{}")
    raise ValueError(f"unsupported column type {text!r}")


def _split_args(inner: str) -> tuple[str, str]:
    depth = 0
    for index, char in enumerate(inner):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            return inner[:index].strip(), inner[index + 1 :].strip()
    raise ValueError(f"expected two type arguments in {inner!r}")


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise CheckError(f"expected a string, got {_kind(value)}")


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


def _bool(value: Any) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise CheckError(f"expected a boolean, got {_kind(value)}")


def _date(value: Any) -> str:
    if isinstance(value, str) and _DATE.match(value):
        return value
    raise CheckError(f"expected a date YYYY-MM-DD, got {_kind(value)}")


def _datetime(precision: int) -> Callable[[Any], str]:
    """Accepts ``YYYY-MM-DD HH:MM:SS[.f]`` and RFC 3339 (``T``, ``Z`` or offset), as
    ClickHouse's best-effort parsing does, and epoch seconds; stores UTC text.
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
            moment = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
            return _format(moment.replace(tzinfo=None), moment.microsecond * 1000, precision)
        match = _DATETIME.match(value) if isinstance(value, str) else None
        if match is None:
            raise CheckError(f"expected a DateTime string, got {_kind(value)}")
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        try:
            moment = datetime.datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second)
            )
        except ValueError as exc:
            raise CheckError(str(exc)) from None
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            hours, minutes = int(zone[1:3]), int(zone[-2:])
            moment -= sign * datetime.timedelta(hours=hours, minutes=minutes)
        nanos = int((fraction or "0").ljust(9, "0"))
        if not zone and value[10] == " " and len(_valid_seconds) < 100_000:
            _valid_seconds[value[:19]] = value[:19]
        return _format(moment, nanos, precision)

    return convert


def _format(moment: datetime.datetime, nanos: int, precision: int) -> str:
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{str(nanos).zfill(9)[:precision]}" if precision else text


def _array(item: ColumnType) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, list):
            raise CheckError(f"expected an array, got {_kind(value)}")
        return orjson.dumps([_nested(item, v) for v in value]).decode()

    return convert


def _map(key: ColumnType, value_type: ColumnType) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, dict):
            raise CheckError(f"expected an object, got {_kind(value)}")
        converted = {key.convert(k): _nested(value_type, v) for k, v in value.items()}
        return orjson.dumps(converted).decode()

    return convert


def _nested(column_type: ColumnType, value: Any) -> Any:
    """An element of a container: nested arrays and maps stay JSON values, not JSON text."""
    converted = column_type.convert(value)
    if column_type.name.startswith(("Array", "Map")):
        return orjson.loads(converted)
    return converted


def _kind(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


# -- schema guessing ---------------------------------------------------------------------


def guess_columns(rows: Iterable[Mapping[str, Any]]) -> list[Column]:
    """Columns for a new data source from its first rows (Classic workspaces' behaviour).

    One column per top-level key, in first-seen order: strings that parse as a DateTime are
    ``DateTime64(6)`` (``DateTime`` without fraction), other strings ``String``, booleans
    ``Bool``, integers ``Int64``, other numbers ``Float64``, arrays ``Array(T)`` of their first
    element's type, objects ``Map(String, String)`` when every value is a string, else
    ``String``. A key absent from some sampled rows, or null in one, makes the column
    ``Nullable``.
    """
    rows = list(rows)
    order: dict[str, str] = {}
    for row in rows:
        for key, value in row.items():
            if key not in order or order[key] == "null":
                order[key] = _guess(value)
    columns = []
    for key, guessed in order.items():
        present = all(key in row and row[key] is not None for row in rows)
        type_name = "String" if guessed == "null" else guessed
        if not present and not type_name.startswith(("Array", "Map")):
            type_name = f"Nullable({type_name})"
        columns.append(Column(_column_name(key), parse_type(type_name), (key,)))
    return columns


def _guess(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Int64"
    if isinstance(value, float):
        return "Float64"
    if isinstance(value, str):
        match = _DATETIME.match(value)
        if match:
            return "DateTime64(6)" if match.group(7) else "DateTime"
        return "String"
    if isinstance(value, list):
        inner = _guess(value[0]) if value else "String"
        return f"Array({'String' if inner in ('null', 'Map(String, String)') else inner})"
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return "Map(String, String)"
    return "String"


def _column_name(key: str) -> str:
    name = re.sub(r"\W", "_", key) or "_"
    return name if not name[0].isdigit() else "_" + name
