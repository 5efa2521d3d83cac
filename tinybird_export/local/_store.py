"""SQLite storage for the local Events API: data sources, quarantine and read-only SQL.

One table per data source (columns as declared or guessed), ``<name>_quarantine`` for rows
that do not fit, and a catalog that keeps schemas and the local token across restarts. The
SQL endpoint is read-only by construction: an SQLite authorizer refuses every action but
reading (so ``insert``/``drop``/``pragma`` fail inside SQLite, whatever their spelling).
"""

from __future__ import annotations

import datetime
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from tinybird_export.local._schema import CheckError, Column, guess_columns, parse_type

_GUESS_SAMPLE = 1000
VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
"""Data source names, as Tinybird accepts them; anything else is refused before SQL."""
_QUARANTINE_COLUMNS = ("c__error_column", "c__error", "insertion_date", "row")
_READ_ACTIONS = frozenset(
    getattr(sqlite3, name, code)
    for name, code in (
        ("SQLITE_SELECT", 21),
        ("SQLITE_READ", 20),
        ("SQLITE_FUNCTION", 31),
        ("SQLITE_RECURSIVE", 33),
    )
)
# ClickHouse spellings used in Tinybird's docs, rewritten to SQLite's.
_SPELLINGS = (
    (re.compile(r"\bcount\(\s*\)", re.I), "count(*)"),
    (re.compile(r"\buniq(Exact)?\(", re.I), "count(DISTINCT "),
    (re.compile(r"\btoDate\(", re.I), "date("),
    (re.compile(r"\bnow\(\s*\)", re.I), "datetime('now')"),
    (re.compile(r"\btoStartOfMinute\(", re.I), "strftime('%Y-%m-%d %H:%M:00', "),
    (re.compile(r"\btoStartOfHour\(", re.I), "strftime('%Y-%m-%d %H:00:00', "),
)
_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*\Z", re.I)


class UnknownDataSource(KeyError):
    """The data source does not exist and may not be created (strict mode)."""


class QueryError(ValueError):
    """A query that is invalid, or that would write."""


class Store:
    """The local server's database. Thread-safe (one connection behind a lock).

    Args:
        path: SQLite file, or ``:memory:``.
    """

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _tb_catalog (name TEXT PRIMARY KEY, columns TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _tb_meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            self.schemas: dict[str, list[Column]] = {
                name: [Column.from_json(c) for c in orjson.loads(columns)]
                for name, columns in self._db.execute("SELECT name, columns FROM _tb_catalog")
            }

    def token(self) -> str:
        """The local admin token: made once, kept with the data."""
        with self._lock:
            row = self._db.execute("SELECT value FROM _tb_meta WHERE key = 'token'").fetchone()
            if row:
                return str(row[0])
            token = "p.local." + os.urandom(16).hex()
            self._db.execute("INSERT INTO _tb_meta VALUES ('token', ?)", (token,))
            return token

    def declare(self, name: str, columns: list[Column]) -> None:
        """Create a data source from a ``.datasource`` file (kept if it already exists)."""
        with self._lock:
            if name not in self.schemas:
                self._create(name, columns)

    def _create(self, name: str, columns: Sequence[Column]) -> None:
        definition = ", ".join(f'"{c.name}" {_affinity(c)}' for c in columns)
        self._db.execute(f'CREATE TABLE IF NOT EXISTS "{name}" ({definition})')
        catalog = orjson.dumps([c.to_json() for c in columns]).decode()
        self._db.execute("INSERT OR REPLACE INTO _tb_catalog VALUES (?, ?)", (name, catalog))
        self.schemas[name] = list(columns)

    def ingest(self, name: str, rows: list[dict[str, Any]], *, create: bool) -> tuple[int, int]:
        """Insert ``rows``; those that do not fit go to quarantine.

        Returns:
            ``(successful_rows, quarantined_rows)``.

        Raises:
            UnknownDataSource: ``name`` does not exist and ``create`` is false.
        """
        if not VALID_NAME.match(name):  # names become SQL identifiers below
            raise ValueError(f"invalid data source name {name!r}")
        columns = self.schemas.get(name)
        if columns is None and not create:
            raise UnknownDataSource(name)
        good: list[tuple[Any, ...]] = []
        bad: list[tuple[str, str, str, str]] = []
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            if columns is None:
                columns = self.schemas.get(name)
                if columns is None:
                    columns = guess_columns(rows[:_GUESS_SAMPLE])
                    self._create(name, columns)
            for row in rows:
                try:
                    good.append(tuple(_value(column, row, now) for column in columns))
                except _RowError as exc:
                    bad.append((exc.column, str(exc), now, orjson.dumps(row).decode()))
            self._db.execute("BEGIN")
            try:
                if good:
                    marks = ", ".join("?" * len(columns))
                    insert = f'INSERT INTO "{name}" VALUES ({marks})'  # noqa: S608 - name checked
                    self._db.executemany(insert, good)
                if bad:
                    self._quarantine(name, bad)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(good), len(bad)

    def _quarantine(self, name: str, rows: list[tuple[str, str, str, str]]) -> None:
        table = f"{name}_quarantine"
        if table not in self.schemas:
            self._create(
                table, [Column(c, parse_type("String"), (c,)) for c in _QUARANTINE_COLUMNS]
            )
        insert = f'INSERT INTO "{table}" VALUES (?, ?, ?, ?)'  # noqa: S608 - name checked
        self._db.executemany(insert, rows)

    def query(self, sql: str) -> dict[str, Any]:
        """Run one read-only query; the result in Tinybird's ``FORMAT JSON`` shape.

        Raises:
            QueryError: The query is invalid, writes, or asks for an unsupported FORMAT.
        """
        text = sql.strip().rstrip(";")
        match = _FORMAT.search(text)
        if match:
            if match.group(1).upper() != "JSON":
                raise QueryError(f"FORMAT {match.group(1)} is not supported; use FORMAT JSON")
            text = text[: match.start()]
        for pattern, replacement in _SPELLINGS:
            text = pattern.sub(replacement, text)
        started = time.perf_counter()
        with self._lock:
            self._db.set_authorizer(_read_only)
            try:
                cursor = self._db.execute(text)
                rows = cursor.fetchall()
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise QueryError(str(exc)) from None
            finally:
                self._db.set_authorizer(None)
        # SQLite names a column by its (rewritten) expression; ClickHouse says count().
        names = [d[0].replace("count(*)", "count()") for d in cursor.description or ()]
        types = self._types(names, rows, text)
        data = [
            {n: _output(v, t) for n, v, t in zip(names, row, types, strict=True)} for row in rows
        ]
        return {
            "meta": [{"name": n, "type": t} for n, t in zip(names, types, strict=True)],
            "data": data,
            "rows": len(data),
            "statistics": {
                "elapsed": time.perf_counter() - started,
                "rows_read": len(data),
                "bytes_read": 0,
            },
        }

    def _types(self, names: list[str], rows: list[tuple[Any, ...]], sql: str) -> list[str]:
        """ClickHouse type names for the result columns: the column's declared type when
        the name is a column of a table the query reads, else from the values.
        """
        declared: dict[str, str] = {}
        for table, columns in self.schemas.items():
            if re.search(rf"\b{re.escape(table)}\b", sql):
                declared.update({c.name: c.type.name for c in columns})
        types = []
        for index, name in enumerate(names):
            if name in declared:
                types.append(declared[name])
            elif re.fullmatch(r"count\(.*\)", name, re.I):
                types.append("UInt64")
            else:
                types.append(_value_type(row[index] for row in rows))
        return types

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class _RowError(CheckError):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"column {column!r}: {message}")
        self.column = column


_MISSING = object()


def _value(column: Column, row: Mapping[str, Any], now: str) -> Any:
    path = column.path
    if len(path) == 1:  # the usual $.field, without the loop
        value: Any = row.get(path[0], _MISSING)
        if value is _MISSING:
            return _missing(column, now)
    else:
        value = row
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return _missing(column, now)
            value = value[key]
    try:
        return column.type.convert(value)
    except CheckError as exc:
        raise _RowError(column.name, str(exc)) from None


def _missing(column: Column, now: str) -> Any:
    if column.has_default:
        return now if column.default == "now" else column.default
    if column.type.nullable:
        return None
    raise _RowError(column.name, "missing, and the column has no DEFAULT")


def _affinity(column: Column) -> str:
    name = column.type.name
    base = re.sub(r"^(Nullable|LowCardinality)\((.*)\)$", r"\2", name)
    if re.match(r"U?Int\d+$|Bool$", base):
        return "INTEGER"
    if base.startswith("Float"):
        return "REAL"
    return "TEXT"


def _output(value: Any, type_name: str) -> Any:
    if isinstance(value, str) and type_name.startswith(("Array", "Map")):
        return orjson.loads(value)
    if type_name == "Bool" and isinstance(value, int):
        return bool(value)
    return value


def _value_type(values: Any) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int}:
        return "Int64"
    if kinds <= {int, float} and kinds:
        return "Float64"
    return "String"


def _read_only(action: int, arg1: str | None, *_: Any) -> int:
    if action not in _READ_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == _READ_ACTIONS_READ and arg1 and arg1.startswith(("_tb_", "sqlite_")):
        return sqlite3.SQLITE_DENY  # the catalog holds the token
    return sqlite3.SQLITE_OK


_READ_ACTIONS_READ = getattr(sqlite3, "SQLITE_READ", 20)
