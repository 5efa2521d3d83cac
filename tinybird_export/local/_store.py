"""The SQLite engine: the no-dependency fallback behind the local server.

One table per data source (columns as declared or guessed), ``<name>_quarantine`` for rows
that do not fit, and a catalog that keeps schemas and the local token across restarts. The
SQL endpoint is read-only by construction: queries run on read-only connections whose
authorizer refuses every action but reading (``_sqlite_read``), so ``insert``/``drop``/
``pragma`` fail inside SQLite, whatever their spelling. Its SQL is SQLite's, with ClickHouse's
everyday functions (``_sqlite``'s spellings, ``_sqlite_functions``) and ``SHOW TABLES`` /
``DESCRIBE`` / ``EXISTS`` from the catalog; the ClickHouse engine (``_clickhouse.py``) answers
ClickHouse's own. The database is always a file in WAL mode, so that readers never block the
writer: ``:memory:`` is a private temporary file, deleted on close.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from typing import Any

import orjson

from tinybird_export.local import _limits, _render, _sqlite, _sqlite_functions
from tinybird_export.local._datafile import DataFile, DatafileError
from tinybird_export.local._engine import (
    GUESS_SAMPLE,
    INSTALL_CLICKHOUSE,
    DataSourceInfo,
    QueryError,
    QueryResult,
    ReadOnlyError,
    RowError,
    UnknownDataSource,
    check_name,
    now_text,
    quarantine_row,
    split_format,
)
from tinybird_export.local._guess import guess_columns
from tinybird_export.local._limits import Cancel
from tinybird_export.local._schema import Column
from tinybird_export.local._sqlite_read import Reader


class Store:
    """The SQLite engine. Thread-safe (one connection behind a lock).

    Args:
        path: SQLite file, or ``:memory:``.
    """

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self._temporary: str | None = None
        if path == ":memory:":
            self._temporary = tempfile.mkdtemp(prefix="tinybird-export-local-")
            path = os.path.join(self._temporary, "local.sqlite3")
        _private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._closed = False
        self.infos: dict[str, DataSourceInfo] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _tb_catalog (name TEXT PRIMARY KEY, columns TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _tb_meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            for name, stored in self._db.execute("SELECT name, columns FROM _tb_catalog"):
                if not name.endswith("_quarantine"):  # older catalogs listed them
                    self.infos[name] = _sqlite.info_from_json(name, orjson.loads(stored))
            self.token = self._token()
        self._readers = _limits.Readers(
            [Reader(path) for _ in range(_limits.READERS)], Reader.interrupt
        )

    @property
    def schemas(self) -> dict[str, list[Column]]:
        """Columns by data source."""
        return {name: info.columns for name, info in self.infos.items()}

    def _token(self) -> str:
        row = self._db.execute("SELECT value FROM _tb_meta WHERE key = 'token'").fetchone()
        if row:
            return str(row[0])
        token = "p.local." + os.urandom(16).hex()
        self._db.execute("INSERT INTO _tb_meta VALUES ('token', ?)", (token,))
        return token

    def declare(self, datafile: DataFile, *, replace: bool = False) -> bool:
        """Create a data source from a ``.datasource`` file (kept if it already exists)."""
        check_name(datafile.name)
        with self._lock:
            if datafile.name in self.infos and not replace:
                return False
            if datafile.name in self.infos:
                self._drop(datafile.name)
            self._create(datafile)
            return True

    def _create(self, datafile: DataFile) -> None:
        definition = ", ".join(f'"{c.name}" {_sqlite.affinity(c)}' for c in datafile.columns)
        try:
            self._db.execute(f'CREATE TABLE IF NOT EXISTS "{datafile.name}" ({definition})')
        except sqlite3.OperationalError as exc:  # over 2000 columns: an event's keys
            source = datafile.source or f"data source {datafile.name!r}"
            raise DatafileError(f"{source}: SQLite refused the table: {exc}") from None
        now = now_text()
        info = DataSourceInfo(datafile, now, now)
        self._db.execute(
            "INSERT OR REPLACE INTO _tb_catalog VALUES (?, ?)",
            (datafile.name, orjson.dumps(_sqlite.info_to_json(info)).decode()),
        )
        self.infos[datafile.name] = info

    def ingest(
        self, name: str, rows: list[dict[str, Any]], *, create: bool, wait: bool = True
    ) -> tuple[int, int]:
        """Insert ``rows`` (before answering, whatever ``wait``); those that do not fit go to
        quarantine.

        Returns:
            ``(successful_rows, quarantined_rows)``.

        Raises:
            UnknownDataSource: ``name`` does not exist and ``create`` is false.
        """
        check_name(name)  # names become SQL identifiers below
        if name not in self.infos and not create:
            raise UnknownDataSource(name)
        good: list[tuple[Any, ...]] = []
        bad: list[dict[str, Any]] = []
        now = now_text()[:19]
        with self._lock:
            if self._closed:
                raise _limits.ServerStopping
            if name not in self.infos:
                self._create(DataFile(name, guess_columns(rows[:GUESS_SAMPLE], name)))
            columns = self.infos[name].columns
            for row in rows:
                try:
                    good.append(tuple(_sqlite.value(column, row, now) for column in columns))
                except RowError as exc:
                    bad.append(quarantine_row(columns, row, exc, now))
            self._db.execute("BEGIN")
            try:
                if good:
                    marks = ", ".join("?" * len(columns))
                    insert = f'INSERT INTO "{name}" VALUES ({marks})'  # noqa: S608 - name checked
                    self._db.executemany(insert, good)
                if bad:
                    self._quarantine(name, columns, bad)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.infos[name].updated_at = now_text()
        return len(good), len(bad)

    def _quarantine(self, name: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
        table = f"{name}_quarantine"
        names = list(rows[0])
        quoted = ", ".join(f'"{n}"' for n in names)
        self._db.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({quoted})')
        insert = f'INSERT INTO "{table}" ({quoted}) VALUES ({", ".join("?" * len(names))})'  # noqa: S608
        self._db.executemany(
            insert,
            [
                tuple(orjson.dumps(v).decode() if isinstance(v, list) else v for v in r.values())
                for r in rows
            ],
        )

    def datasources(self) -> list[DataSourceInfo]:
        """Every data source, with its row count and its quarantine's."""
        with self._lock:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
            for name, info in self.infos.items():
                info.row_count = self._count(name)
                quarantine = f"{name}_quarantine"
                info.quarantine_rows = self._count(quarantine) if quarantine in tables else 0
            return list(self.infos.values())

    def _count(self, table: str) -> int:
        return int(self._db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])  # noqa: S608

    def truncate(self, name: str) -> None:
        """Delete every row of ``name`` and its quarantine."""
        with self._lock:
            if name not in self.infos:
                raise UnknownDataSource(name)
            self._db.execute(f'DELETE FROM "{name}"')  # noqa: S608 - a catalog name
            self._db.execute(f'DROP TABLE IF EXISTS "{name}_quarantine"')
            self.infos[name].updated_at = now_text()

    def drop(self, name: str) -> None:
        """Remove ``name`` and its quarantine."""
        with self._lock:
            if name not in self.infos:
                raise UnknownDataSource(name)
            self._drop(name)

    def delete_rows(
        self, name: str, condition: str, *, dry_run: bool = False, cancel: Cancel | None = None
    ) -> int:
        """Delete the rows where ``condition`` holds (read through the read-only path first).

        Raises:
            QueryError: The condition is invalid.
        """
        if name not in self.infos:
            raise UnknownDataSource(name)
        # The condition is the client's SQL, and may not be one (0 UNION ALL SELECT ...):
        # what it reads may not be more rows than the table has, nor over the bytes limit.
        total = self._read(f'SELECT count(*) FROM "{name}"', cancel)[1][0][0]  # noqa: S608
        select = f'SELECT rowid FROM "{name}" WHERE {condition}'  # noqa: S608 - read-only
        _, found = self._read(select, cancel, max_rows=total)
        rowids = [row[0] for row in found]
        if rowids and not dry_run:
            with self._lock:
                delete = f'DELETE FROM "{name}" WHERE rowid = ?'  # noqa: S608 - a catalog name
                self._db.executemany(delete, [(r,) for r in rowids])
                self.infos[name].updated_at = now_text()
        return len(rowids)

    def _drop(self, name: str) -> None:
        self._db.execute(f'DROP TABLE IF EXISTS "{name}"')
        self._db.execute(f'DROP TABLE IF EXISTS "{name}_quarantine"')
        self._db.execute("DELETE FROM _tb_catalog WHERE name = ?", (name,))
        del self.infos[name]

    def query(self, sql: str, cancel: Cancel | None = None) -> QueryResult:
        """Run one read-only query; the answer in the asked FORMAT (JSON by default).

        Args:
            sql: The query.
            cancel: Interrupts the query when it fires (its client went away).

        Raises:
            QueryError: The query is invalid or asks for a FORMAT this engine cannot write;
                408 past the time limit, 429 when every reader is busy, 503 on stop.
            ReadOnlyError: The query would write.
        """
        text, fmt = split_format(sql)
        if fmt not in _render.FORMATS:
            raise QueryError(
                f"FORMAT {fmt} needs the ClickHouse engine ({INSTALL_CLICKHOUSE}); the SQLite "
                f"engine writes {', '.join(_render.FORMATS)}"
            )
        started = time.perf_counter()
        try:
            catalog = _sqlite.catalog_answer(text, self.infos)
        except KeyError as exc:
            raise self._error(sqlite3.OperationalError(f"no such table: {exc.args[0]}")) from None
        if catalog is not None:
            return _render.render(fmt, *catalog, time.perf_counter() - started)
        for pattern, replacement in _sqlite.SPELLINGS:
            text = pattern.sub(replacement, text)
        text = _sqlite_functions.zero_if_empty(text)
        names, rows = self._read(text, cancel)
        # SQLite names a column by its (rewritten) expression; ClickHouse says count().
        names = [_sqlite_functions.column_name(n).replace("count(*)", "count()") for n in names]
        types = self._types(names, rows, text)
        data = [[_sqlite.output(v, t) for v, t in zip(row, types, strict=True)] for row in rows]
        return _render.render(fmt, names, types, data, time.perf_counter() - started)

    def _read(
        self, text: str, cancel: Cancel | None, *, max_rows: int | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._readers.reader(cancel) as reader:
            try:
                return reader.run(text, max_rows=max_rows)
            except QueryError:
                if self._readers.closed:
                    raise _limits.ServerStopping from None
                raise
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise QueryError(str(exc)) from None

    def _error(self, exc: sqlite3.DatabaseError) -> QueryError:
        message = str(exc)
        if "not authorized" in message:
            return ReadOnlyError(
                "the local server is read-only: /v0/sql runs SELECT queries only "
                "(send rows to /v0/events; the server's catalog cannot be read)"
            )
        table = re.match(r"no such table: (\S+)", message)
        if table:
            return QueryError(
                f"Unknown table {table.group(1)!r}. Data sources: "
                f"{', '.join(sorted(self.infos)) or 'none yet (send events first)'}"
            )
        return QueryError(_sqlite_functions.engine_note(message))

    def _types(self, names: list[str], rows: list[tuple[Any, ...]], sql: str) -> list[str]:
        """ClickHouse type names for the result columns: the column's declared type when
        the name is a column of a table the query reads, else from the values.
        """
        declared: dict[str, str] = {}
        for table, info in self.infos.items():
            if re.search(rf"\b{re.escape(table)}\b", sql):
                declared.update({c.name: c.type.name for c in info.columns})
        types = []
        for index, name in enumerate(names):
            if name in declared:
                types.append(declared[name])
            elif re.fullmatch(r"(count|countIf|uniq\w*)\(.*\)", name, re.I):
                types.append("UInt64")
            else:
                types.append(_sqlite.value_type(row[index] for row in rows))
        return types

    def close(self) -> None:
        """Interrupt the queries running, close the database (a temporary one is deleted)."""
        for reader in self._readers.close():
            reader.close()
        with self._lock:
            self._closed = True
            self._db.close()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)


def _private_file(path: str) -> None:
    """Make ``path`` (and its WAL files, which SQLite creates with its mode) readable by its
    owner only: it holds the token and the data. A new folder for it is private too.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # an empty database
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
