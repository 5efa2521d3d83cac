"""Rows into ClickHouse tables, fast: one JSON document per batch, never one per row.

The common batch (every row fits) is converted column by column, one list comprehension per
column, and sent as ``JSONCompactColumns``; a missing value is filled from a constant DEFAULT
or NULL. Any other batch (a bad row, a DEFAULT expression to evaluate) is converted row by
row into records, without the missing keys so that ClickHouse evaluates their DEFAULT, and
sent as one ``JSONEachRow`` array. Rows ClickHouse itself refuses are found by halving the
batch, so a bad row never rejects its batch.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tinybird_export.local import _chsql
from tinybird_export.local._engine import (
    MISSING,
    QUARANTINE_EXTRA,
    RowError,
    lookup,
    quarantine_row,
)
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


def insert(
    writer: Any, name: str, columns: list[Column], rows: list[dict[str, Any]], now: str
) -> tuple[int, list[dict[str, Any]]]:
    """Insert the rows of ``rows`` that fit into ``name``.

    Returns:
        How many were stored, and the quarantine rows for the others.
    """
    values = columnar(columns, rows)
    if values is not None:
        names = ", ".join(f"`{c.name}`" for c in columns)
        try:
            send(writer, f"INSERT INTO `{name}` ({names})", "JSONCompactColumns", values)
        except Exception:  # noqa: BLE001, S110 - ClickHouse refused a row: find it below
            pass
        else:
            return len(rows), []
    records: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for row in rows:
        try:
            records.append(record(columns, row))
        except RowError as exc:
            bad.append(quarantine_row(columns, row, exc, now))
        else:
            kept.append(row)
    refused = _halving(writer, name, records)
    for index, reason in refused:
        bad.append(quarantine_row(columns, kept[index], reason, now))
    return len(records) - len(refused), bad


def send(writer: Any, insert: str, fmt: str, payload: Any) -> None:
    """One streaming insert of ``payload`` as JSON in ``fmt``."""
    inserter = writer.send_insert(insert, fmt)
    with inserter:
        inserter.append(orjson.dumps(payload))
        inserter.finish()


def _halving(
    writer: Any, table: str, records: list[dict[str, Any]], offset: int = 0
) -> list[tuple[int, RowError]]:
    """Insert ``records``; the ones ClickHouse refuses (index and reason), found by halving."""
    if not records:
        return []
    try:
        send(writer, f"INSERT INTO `{table}`", "JSONEachRow", records)
    except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
        if len(records) == 1:
            return [(offset, RowError(_chsql.column_of(exc), _chsql.reason(exc)))]
        half = len(records) // 2
        return _halving(writer, table, records[:half], offset) + _halving(
            writer, table, records[half:], offset + half
        )
    return []


def quarantine(writer: Any, name: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to ``<name>_quarantine``, creating it on first use."""
    table = f"{name}_quarantine"
    kept = [f"`{c.name}` Nullable(String)" for c in columns if c.name not in QUARANTINE_EXTRA]
    writer.query(
        f"CREATE TABLE IF NOT EXISTS `{table}` ({', '.join(kept)}, "
        "`c__error_column` Array(String), `c__error` Array(String), "
        "`c__import_id` Nullable(String), `insertion_date` DateTime, `row` String) "
        "ENGINE = MergeTree ORDER BY tuple()"
    )
    send(writer, f"INSERT INTO `{table}`", "JSONEachRow", rows)
