"""Schema guessing for data sources created by their first request (Classic workspaces).

The rule that matters: a guessed schema accepts every row it was guessed from. So a type is
chosen from *all* the values seen at a path in the sample, never from the first one, and a
path missing (or null) in any sampled row is never a required column.

Nested objects become one column per leaf, read with a JSONPath (``obj.k`` → column
``obj_k`` with ``json:$.obj.k``), as Tinybird's NDJSON guide maps nested records to columns
(https://www.tinybird.co/docs/guides/ingest/ingest-ndjson-data, its ``event_name`` column read
from ``$.event.name``). Tinybird documents no rule for numbers and arrays, so those follow
ClickHouse's own JSON schema inference, which Tinybird runs on
(https://clickhouse.com/docs/integrations/data-formats/json/inference): integers are
``Int64``, a float among them makes ``Float64``, an array's type unifies all its items
(``[1, 2.5]`` is ``Array(Float64)``). Where neither says anything (mixed kinds at one path),
the column is ``String``, which takes any value as its JSON text, as ClickHouse's JSON input
does; a wider integer type is chosen when the values need it (``UInt64``, then ``Int256``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tinybird_export.local._datafile import DatafileError
from tinybird_export.local._schema import DATE, DATETIME, Column, parse_type

_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1
_INT256 = (-(2**255), 2**255 - 1)
_MAX_DEPTH = 4  # deeper objects are kept whole, as JSON text in a String column


def guess_columns(rows: Iterable[Mapping[str, Any]], name: str = "") -> list[Column]:
    """Columns for a new data source from its first rows.

    Args:
        rows: The sample (the first request's first rows).
        name: The data source, for the error message.

    Returns:
        One column per leaf path, in first-seen order.

    Raises:
        DatafileError: No sampled row has a field (a table needs a column).
    """
    rows = list(rows)
    values: dict[tuple[str, ...], list[Any]] = {}
    present: dict[tuple[str, ...], int] = {}
    for row in rows:
        _collect(row, (), values, present)
    columns: list[Column] = []
    names: set[str] = set()
    for path, seen in values.items():
        if _expanded(path, values) or not all(
            _expanded(path[:i], values) for i in range(1, len(path))
        ):
            continue  # an object: its leaves are the columns (or an ancestor is kept whole)
        type_name = _unify(seen)
        required = present[path] == len(rows) and all(v is not None for v in seen)
        if not required and not type_name.startswith(("Array", "Map", "Nullable")):
            type_name = f"Nullable({type_name})"
        default_sql, default = "", None
        if not required and type_name.startswith(("Array", "Map")):
            empty: Any = [] if type_name.startswith("Array") else {}
            default_sql, default = ("[]" if empty == [] else "map()"), empty
        columns.append(
            Column(
                _unique(_column_name("_".join(path)), names),
                parse_type(type_name),
                path,
                default,
                bool(default_sql),
                default_sql,
            )
        )
    if not columns:
        raise DatafileError(
            f"cannot create data source {name!r} from rows without fields: send rows with at "
            "least one field, or declare it in a .datasource file (--datasources)"
        )
    return columns


def _collect(
    obj: Mapping[str, Any],
    prefix: tuple[str, ...],
    values: dict[tuple[str, ...], list[Any]],
    present: dict[tuple[str, ...], int],
) -> None:
    for key, value in obj.items():
        path = (*prefix, key)
        values.setdefault(path, []).append(value)
        present[path] = present.get(path, 0) + 1
        if isinstance(value, dict) and value and len(path) < _MAX_DEPTH:
            _collect(value, path, values, present)


def _expanded(path: tuple[str, ...], values: Mapping[tuple[str, ...], list[Any]]) -> bool:
    """Whether ``path`` is an object in every row that has it (and not always empty): then
    its leaves are columns. Otherwise (mixed kinds) the path is one column, kept whole.
    """
    seen = values[path]
    return (
        len(path) < _MAX_DEPTH and all(isinstance(v, dict) for v in seen) and any(v for v in seen)
    )


def _unify(values: list[Any]) -> str:
    """The narrowest type that accepts every non-null value of ``values``."""
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:
        return "String"
    if kinds == {"bool"}:
        return "Bool"
    if kinds <= {"int", "float"}:
        numbers = [v for v in values if v is not None]
        return _number_type(numbers)
    if kinds == {"datetime"}:
        matches = [DATETIME.match(v) for v in values if v is not None]
        longest = max((len(m.group(7) or "") for m in matches if m), default=0)
        return "DateTime" if not longest else f"DateTime64({6 if longest <= 6 else 9})"
    if kinds == {"date"}:
        return "Date"
    if kinds == {"array"}:
        items = [item for v in values if v is not None for item in v]
        inner = _unify(items)
        if any(item is None for item in items):
            # ClickHouse has no Nullable(Array) or Nullable(Map): such items become text.
            nested = inner.startswith(("Array", "Map"))
            inner = "Nullable(String)" if nested else f"Nullable({inner})"
        return f"Array({inner})"
    if kinds == {"object"} and all(v == {} for v in values if v is not None):
        return "Map(String, String)"
    return "String"  # strings, or mixed kinds: String takes any value as JSON text


def _number_type(numbers: list[Any]) -> str:
    if any(isinstance(n, float) for n in numbers):
        return "Float64"
    low, high = min(numbers), max(numbers)
    if _INT64[0] <= low and high <= _INT64[1]:
        return "Int64"
    if low >= 0 and high <= _UINT64_MAX:
        return "UInt64"
    if _INT256[0] <= low and high <= _INT256[1]:
        return "Int256"
    return "Float64"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        if DATETIME.match(value):
            return "datetime"
        return "date" if DATE.match(value) else "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _column_name(key: str) -> str:
    name = re.sub(r"\W", "_", key) or "_"
    return name if not name[0].isdigit() else "_" + name


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate.lower())
    return candidate
