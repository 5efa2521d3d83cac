"""Query results in Tinybird's /v0/sql formats, for the SQLite engine (ClickHouse writes its
own): ``JSON`` in ClickHouse's shape, ``CSV``/``TSV`` (with or without names), ``JSONEachRow``.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from tinybird_export.local._engine import CONTENT_TYPES, QueryResult

FORMATS = ("JSON", "CSV", "CSVWithNames", "TSV", "TSVWithNames", "JSONEachRow")


def render(
    fmt: str, names: list[str], types: list[str], rows: list[list[Any]], elapsed: float
) -> QueryResult:
    """``rows`` (with their column ``names`` and ClickHouse ``types``) in ``fmt``."""
    if fmt == "JSON":
        body = orjson.dumps(
            {
                "meta": [{"name": n, "type": t} for n, t in zip(names, types, strict=True)],
                "data": [dict(zip(names, row, strict=True)) for row in rows],
                "rows": len(rows),
                "statistics": {"elapsed": elapsed, "rows_read": len(rows), "bytes_read": 0},
            }
        )
    elif fmt == "JSONEachRow":
        body = b"".join(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n" for row in rows)
    else:
        out = io.StringIO()
        if fmt.startswith("CSV"):
            writer: Any = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
        else:
            writer = csv.writer(
                out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\"
            )
        if fmt.endswith("WithNames"):
            writer.writerow(names)
        writer.writerows([[_cell(v) for v in row] for row in rows])
        body = out.getvalue().encode()
    return QueryResult(body, CONTENT_TYPES[fmt], len(rows))


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value
