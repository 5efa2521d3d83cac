"""The SQLite engine's helpers: ClickHouse spellings, how values are stored and read back,
and the catalog's JSON (the read-only side is ``_sqlite_read``).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson

from tinybird_export.local._datafile import DataFile
from tinybird_export.local._engine import MISSING, DataSourceInfo, RowError, lookup, now_text
from tinybird_export.local._schema import CheckError, Column

# ClickHouse spellings used in Tinybird's docs, rewritten to SQLite's.
SPELLINGS = (
    (re.compile(r"\bcount\(\s*\)", re.I), "count(*)"),
    (re.compile(r"\buniq(Exact)?\(", re.I), "count(DISTINCT "),
    (re.compile(r"\btoDate\(", re.I), "date("),
    (re.compile(r"\bnow\(\s*\)", re.I), "datetime('now')"),
    (re.compile(r"\btoStartOfMinute\(", re.I), "strftime('%Y-%m-%d %H:%M:00', "),
    (re.compile(r"\btoStartOfHour\(", re.I), "strftime('%Y-%m-%d %H:00:00', "),
    # Parametric aggregates, quantile(0.95)(x): SQLite functions take one argument list.
    (
        re.compile(r"\bquantile(Exact)?(?:Timing|TDigest)?\(\s*([0-9.]+)\s*\)\s*\(", re.I),
        r"quantile\1(\2, ",
    ),
    # A Map column's value by key (``attributes['cart_id']``): maps are stored as JSON text.
    (
        re.compile(r"\b([A-Za-z_]\w*)\[\s*'([^'\"\\]*)'\s*\]"),
        "json_extract(\\1, '$.\"\\2\"')",
    ),
)


_SHOW_TABLES = re.compile(r"SHOW\s+TABLES\Z", re.I)
_DESCRIBE = re.compile(r"(?:DESCRIBE|DESC)\s+(?:TABLE\s+)?[`\"]?(\w+)[`\"]?\Z", re.I)
_EXISTS = re.compile(r"EXISTS\s+(?:TABLE\s+)?[`\"]?(\w+)[`\"]?\Z", re.I)
_DESCRIBE_COLUMNS = (
    "name",
    "type",
    "default_type",
    "default_expression",
    "comment",
    "codec_expression",
    "ttl_expression",
)


def catalog_answer(
    text: str, infos: dict[str, DataSourceInfo]
) -> tuple[list[str], list[str], list[list[Any]]] | None:
    """``SHOW TABLES``, ``DESCRIBE [TABLE] x`` and ``EXISTS [TABLE] x``, answered from the
    catalog in ClickHouse's columns (SQLite has no such statements); ``None`` for any other
    query. The data sources' names and types only, which the Data Sources API gives too.

    Raises:
        KeyError: ``DESCRIBE`` of a data source that does not exist (its name).
    """
    text = text.strip()
    if _SHOW_TABLES.match(text):
        return ["name"], ["String"], [[name] for name in sorted(infos)]
    described = _DESCRIBE.match(text)
    if described:
        info = infos[described.group(1)]
        rows = [
            [c.name, c.type.name, "DEFAULT" if c.has_default else "", c.default_sql, "", "", ""]
            for c in info.columns
        ]
        return list(_DESCRIBE_COLUMNS), ["String"] * len(_DESCRIBE_COLUMNS), rows
    exists = _EXISTS.match(text)
    if exists:
        return ["result"], ["UInt8"], [[int(exists.group(1) in infos)]]
    return None


def info_to_json(info: DataSourceInfo) -> dict[str, Any]:
    return {
        "columns": [c.to_json() for c in info.columns],
        "description": info.datafile.description,
        "engine": info.datafile.engine,
        "created_at": info.created_at,
    }


def info_from_json(name: str, stored: Any) -> DataSourceInfo:
    if isinstance(stored, list):  # the first catalog format: the columns alone
        stored = {"columns": stored}
    created = stored.get("created_at") or now_text()
    columns = [Column.from_json(c) for c in stored["columns"]]
    datafile = DataFile(name, columns, stored.get("description", ""), stored.get("engine", {}))
    return DataSourceInfo(datafile, created, created)


def value(column: Column, row: dict[str, Any], now: str) -> Any:
    value = lookup(column, row)
    if value is MISSING or (value is None and column.has_default):
        if column.has_default:
            value = now if column.default == "now" else column.default
            return orjson.dumps(value).decode() if column.type.container else value
        if column.type.nullable:
            return None
        raise RowError(column.name, "missing, and the column has no DEFAULT")
    try:
        converted = column.type.convert(value)
    except CheckError as exc:
        raise RowError(column.name, str(exc)) from None
    if column.type.container:
        return orjson.dumps(converted, default=str).decode()
    return converted


def affinity(column: Column) -> str:
    base = re.sub(r"^(Nullable|LowCardinality)\((.*)\)$", r"\2", column.type.name)
    base = re.sub(r"^(Nullable|LowCardinality)\((.*)\)$", r"\2", base)
    if re.match(r"U?Int(8|16|32)$|Int64$|Bool$", base):
        return "INTEGER"
    if re.match(r"U?Int(64|128|256)$", base):
        # Values past SQLite's 64-bit integers arrive as text: no affinity keeps the others
        # integers (so they sort as numbers) and those text (INTEGER would make them REAL).
        return "BLOB"
    if base.startswith("Float"):
        return "REAL"
    return "TEXT"


def output(value: Any, type_name: str) -> Any:
    if isinstance(value, bytes):  # a blob (x'00', randomblob()): text, as a ClickHouse String
        return value.decode("utf-8", "replace")
    if isinstance(value, str) and type_name.startswith(("Array", "Map", "Nullable(Array")):
        # Another value may come under the column's name (an alias): then it is text.
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(value)
            if isinstance(parsed, list | dict):
                return parsed
        return value
    if type_name == "Bool" and isinstance(value, int):
        return bool(value)
    if isinstance(value, str) and re.match(r"(Nullable\()?U?Int\d+", type_name):
        return int(value) if re.fullmatch(r"-?\d+", value) else value
    return value


def value_type(values: Any) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int}:
        return "Int64"
    if kinds <= {int, float} and kinds:
        return "Float64"
    return "String"
