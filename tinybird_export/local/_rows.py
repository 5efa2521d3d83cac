"""Rows to ClickHouse insert bodies, fast: one JSON document per batch, never one per row.

The common batch (every row fits) is converted column by column, one list comprehension per
column, and sent as ``JSONCompactColumns``; a missing value is filled from a constant DEFAULT
or NULL. Any other batch (a bad row, a DEFAULT expression to evaluate) is converted row by
row into records, without the missing keys so that ClickHouse evaluates their DEFAULT, and
sent as one ``JSONEachRow`` array.
"""

from __future__ import annotations

import re
from typing import Any

from tinybird_export.local._engine import MISSING, RowError, lookup
from tinybird_export.local._schema import CheckError, Column, convert_string

_CONSTANT = re.compile(r"'[^']*'|-?\d+(\.\d+)?|\[\]|map\(\)|\{\}|true|false")


def columnar(columns: list[Column], rows: list[dict[str, Any]]) -> list[list[Any]] | None:
    """The batch as one list of values per column, or None when a row needs row-by-row
    handling (it does not fit, or a DEFAULT expression must be evaluated).
    """
    out: list[list[Any]] = []
    for column in columns:
        if len(column.path) == 1:
            key = column.path[0]
            values = [row.get(key, MISSING) for row in rows]
        else:
            values = [lookup(column, row) for row in rows]
        if MISSING in values or None in values:
            if column.has_default and _CONSTANT.fullmatch(column.default_sql):
                fill = column.default
                values = [fill if v is MISSING or v is None else v for v in values]
            elif column.type.nullable:
                values = [None if v is MISSING else v for v in values]
            else:
                return None
        convert = column.type.convert
        if convert is convert_string and all(type(v) is str for v in values):
            out.append(values)
            continue
        try:
            out.append([convert(v) for v in values])
        except CheckError:
            return None
    return out


def record(columns: list[Column], row: dict[str, Any]) -> dict[str, Any]:
    """One row as a ClickHouse record (missing defaulted columns left out).

    Raises:
        RowError: The row does not fit: the column and why.
    """
    result: dict[str, Any] = {}
    for column in columns:
        value = lookup(column, row)
        if value is MISSING or (value is None and column.has_default):
            if column.has_default:
                continue  # ClickHouse evaluates the DEFAULT expression
            if column.type.nullable:
                result[column.name] = None
                continue
            raise RowError(column.name, "missing, and the column has no DEFAULT")
        try:
            result[column.name] = column.type.convert(value)
        except CheckError as exc:
            raise RowError(column.name, str(exc)) from None
    return result
