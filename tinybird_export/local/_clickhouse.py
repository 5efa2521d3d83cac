"""The ClickHouse engine: embedded ClickHouse (chDB) behind the local server.

Data sources are real ClickHouse tables (the ``.datasource`` types, ``DEFAULT`` expressions
and ``ENGINE_*`` keys), so ``/v0/sql`` answers are ClickHouse's own: functions, formats,
``meta`` types and ``statistics``. Rows are checked per row before the insert (the checks of
``_schema.py``, shared with the SQLite engine); a row ClickHouse still refuses is found by
halving the batch, so a bad row never rejects its batch.

Read-only SQL, twice over: user queries run on their own chDB connection opened with
``readonly=1`` (no writes, no DDL, no SYSTEM, no settings, no table function that reads a
file or the network), and before that ClickHouse's own parser (``EXPLAIN AST``) must show a
SELECT/SHOW/DESCRIBE/EXPLAIN/EXISTS whose table functions are on a short list of generators
and which calls no function that reads files (``file()``, which ``readonly`` allows).

The token and the catalog (JSONPaths, descriptions) live in ``tinybird-export.json`` beside
the data, which SQL cannot read.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from pathlib import Path
from typing import Any

import orjson

from tinybird_export.local import _rows
from tinybird_export.local._datafile import DataFile, DatafileError
from tinybird_export.local._engine import (
    CONTENT_TYPES,
    GUESS_SAMPLE,
    QUARANTINE_EXTRA,
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
from tinybird_export.local._schema import Column

_META = "tinybird-export.json"
_SETTINGS = "session_timezone=UTC&output_format_json_quote_64bit_integers=0"
_WRITE_SETTINGS = "date_time_input_format=best_effort&input_format_skip_unknown_fields=1"
_ROOTS = (
    "SelectWithUnionQuery",
    "SelectQuery",
    "ShowTables",
    "ShowColumns",
    "DescribeQuery",
    "Explain",
    "ExistsTableQuery",
    "ShowCreateTableQuery",
)
_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "generaterandom",
        "values",
        "view",
        "null",
        "merge",
        "generate_series",
        "generateseries",
        "zeros",
        "zeros_mt",
    }
)
_DENIED_FUNCTIONS = frozenset({"file", "catboostevaluate", "evalmlmodel"})
_FUNCTION = re.compile(r"^(\s*)Function (\w+)")
_CODE = re.compile(r"Code: (\d+)\.")
_CHECKED_MAX = 1024
_FLUSH_ROWS = 10_000
_FLUSH_SECONDS = 0.2
_open_path: list[str] = []  # chDB serves one data path per process


class ClickHouseEngine:
    """The chDB engine.

    Args:
        data: A directory for the data (created when missing), or ``:memory:``.
    """

    name = "clickhouse"

    def __init__(self, data: str) -> None:
        from chdb import state  # noqa: PLC0415 - the optional extra

        self._memory = data == ":memory:"
        path = ":memory:" if self._memory else str(Path(data).resolve())
        if _open_path and _open_path[0] != path:
            raise RuntimeError(
                f"chDB already serves {_open_path[0]} in this process and can serve one data "
                f"path at a time: stop that server first, or use --engine sqlite for {data}"
            )
        self._meta_path: Path | None = None
        if not self._memory:
            os.makedirs(path, exist_ok=True)
            self._meta_path = Path(path) / _META
        self._writer = state.connect(f"{path}?{_SETTINGS}&{_WRITE_SETTINGS}")
        self._reader = state.connect(f"{path}?readonly=1&{_SETTINGS}")
        _open_path[:] = [path]
        self._database = f"tb_local_{os.urandom(4).hex()}" if self._memory else "default"
        if self._memory:
            self._writer.query(f"CREATE DATABASE {self._database}")
        self._writer.query(f"USE {self._database}")
        self._reader.query(f"USE {self._database}")
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.infos: dict[str, DataSourceInfo] = {}
        self._checked: dict[str, None] = {}  # queries that passed the read-only check
        self._pending: dict[str, list[tuple[list[list[Any]], list[dict[str, Any]]]]] = {}
        self._pending_rows = 0
        self._closing = threading.Event()
        self.token = "p.local." + os.urandom(16).hex()
        self._load()
        self._flusher = threading.Thread(
            target=self._flush_loop, name="tinybird-export-local-flush", daemon=True
        )
        self._flusher.start()

    def _load(self) -> None:
        if self._meta_path is None or not self._meta_path.exists():
            self._save()
            return
        meta = orjson.loads(self._meta_path.read_bytes())
        self.token = meta["token"]
        for name, stored in meta["datasources"].items():
            columns = [Column.from_json(c, lenient=True) for c in stored["columns"]]
            datafile = DataFile(name, columns, stored["description"], stored["engine"])
            self.infos[name] = DataSourceInfo(datafile, stored["created_at"], stored["updated_at"])

    def _save(self) -> None:
        if self._meta_path is None:
            return
        meta = {
            "token": self.token,
            "datasources": {
                name: {
                    "columns": [c.to_json() for c in info.columns],
                    "description": info.datafile.description,
                    "engine": info.datafile.engine,
                    "created_at": info.created_at,
                    "updated_at": info.updated_at,
                }
                for name, info in self.infos.items()
            },
        }
        temporary = self._meta_path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        temporary.chmod(0o600)  # it holds the token
        temporary.replace(self._meta_path)

    def declare(self, datafile: DataFile, *, replace: bool = False) -> bool:
        """Create a data source's table (kept if it exists, unless ``replace``).

        Raises:
            DatafileError: ClickHouse refused the table (a type, a key), with its reason.
        """
        check_name(datafile.name)
        with self._lock:
            if datafile.name in self.infos and not replace:
                return False
            if datafile.name in self.infos:
                self._drop(datafile.name)
            self._create(datafile)
            return True

    def _create(self, datafile: DataFile) -> None:
        try:
            self._writer.query(_create_table(datafile))
        except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
            raise self._datafile_error(datafile, exc) from None
        now = now_text()
        self.infos[datafile.name] = DataSourceInfo(datafile, now, now)
        self._save()

    def _datafile_error(self, datafile: DataFile, exc: Exception) -> DatafileError:
        """Which column ClickHouse refused (file, line, type), else its whole reason."""
        source = datafile.source or f"data source {datafile.name!r}"
        for column in datafile.columns:
            try:
                self._writer.query(f"SELECT defaultValueOfTypeName('{column.type.name}')")
            except Exception as refused:  # noqa: BLE001 - chDB raises plain RuntimeErrors
                where = f"{source}:{column.line}" if column.line else source
                return DatafileError(
                    f"{where}: column {column.name!r} has type {column.type.name!r}, which "
                    f"ClickHouse refuses: {_reason(refused)}"
                )
        return DatafileError(f"{source}: ClickHouse refused the table: {_reason(exc)}")

    def ingest(
        self, name: str, rows: list[dict[str, Any]], *, create: bool, wait: bool = True
    ) -> tuple[int, int]:
        """Insert ``rows``; those that do not fit go to ``<name>_quarantine``.

        Args:
            name: The data source.
            rows: The rows.
            create: Create a missing data source with a guessed schema.
            wait: Insert before answering. Otherwise a batch whose rows all fit may wait in
                memory (at most ``_FLUSH_SECONDS``, or until ``_FLUSH_ROWS`` rows, or the next
                read, which always sees it): one ClickHouse insert costs milliseconds
                whatever its size, so small batches are merged as Tinybird's Events API does.

        Raises:
            UnknownDataSource: ``name`` does not exist and ``create`` is false.
        """
        check_name(name)
        if name not in self.infos and not create:
            raise UnknownDataSource(name)
        now = now_text()[:19]
        with self._lock:
            if name not in self.infos:
                self._create(DataFile(name, guess_columns(rows[:GUESS_SAMPLE], name)))
            columns = self.infos[name].columns
            if not wait:
                values = _rows.columnar(columns, rows)
                if values is not None:
                    self._pending.setdefault(name, []).append((values, rows))
                    self._pending_rows += len(rows)
                    if self._pending_rows >= _FLUSH_ROWS:
                        self._flush()
                    self.infos[name].updated_at = now_text()
                    return len(rows), 0
            ok, bad = self._insert_rows(name, columns, rows, now)
            if bad:
                self._quarantine(name, columns, bad)
            self.infos[name].updated_at = now_text()
        return ok, len(bad)

    def flush(self) -> None:
        """Insert the batches waiting in memory."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, {}, 0
        for name, chunks in pending.items():
            if name not in self.infos:
                continue
            columns = self.infos[name].columns
            merged = [
                list(itertools.chain.from_iterable(values[i] for values, _ in chunks))
                for i in range(len(columns))
            ]
            names = ", ".join(f"`{c.name}`" for c in columns)
            try:
                self._send(f"INSERT INTO `{name}` ({names})", "JSONCompactColumns", merged)
            except Exception:  # noqa: BLE001 - a row ClickHouse refuses: quarantine it alone
                now = now_text()[:19]
                for _, rows in chunks:
                    _, bad = self._insert_rows(name, columns, rows, now)
                    if bad:
                        self._quarantine(name, columns, bad)

    def _flush_loop(self) -> None:
        while not self._closing.wait(_FLUSH_SECONDS):
            self.flush()

    def _insert_rows(
        self, name: str, columns: list[Column], rows: list[dict[str, Any]], now: str
    ) -> tuple[int, list[dict[str, Any]]]:
        """Insert what fits; the quarantine rows for the rest."""
        values = _rows.columnar(columns, rows)
        if values is not None:
            names = ", ".join(f"`{c.name}`" for c in columns)
            try:
                self._send(f"INSERT INTO `{name}` ({names})", "JSONCompactColumns", values)
            except Exception:  # noqa: BLE001, S110 - ClickHouse refused a row: find it below
                pass
            else:
                return len(rows), []
        records: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        for row in rows:
            try:
                records.append(_rows.record(columns, row))
            except RowError as exc:
                bad.append(quarantine_row(columns, row, exc, now))
            else:
                kept.append(row)
        refused = self._insert(name, records)
        for index, reason in refused:
            bad.append(quarantine_row(columns, kept[index], reason, now))
        return len(records) - len(refused), bad

    def _send(self, insert: str, fmt: str, payload: Any) -> None:
        inserter = self._writer.send_insert(insert, fmt)
        with inserter:
            inserter.append(orjson.dumps(payload))
            inserter.finish()

    def _insert(
        self, table: str, records: list[dict[str, Any]], offset: int = 0
    ) -> list[tuple[int, RowError]]:
        """Insert ``records``; the ones ClickHouse refuses, found by halving."""
        if not records:
            return []
        try:
            self._send(f"INSERT INTO `{table}`", "JSONEachRow", records)
        except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
            if len(records) == 1:
                return [(offset, RowError(_column_of(exc), _reason(exc)))]
            half = len(records) // 2
            return self._insert(table, records[:half], offset) + self._insert(
                table, records[half:], offset + half
            )
        return []

    def _quarantine(self, name: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
        table = f"{name}_quarantine"
        kept = [f"`{c.name}` Nullable(String)" for c in columns if c.name not in QUARANTINE_EXTRA]
        self._writer.query(
            f"CREATE TABLE IF NOT EXISTS `{table}` ({', '.join(kept)}, "
            "`c__error_column` Array(String), `c__error` Array(String), "
            "`c__import_id` Nullable(String), `insertion_date` DateTime, `row` String) "
            "ENGINE = MergeTree ORDER BY tuple()"
        )
        self._send(f"INSERT INTO `{table}`", "JSONEachRow", rows)

    def datasources(self) -> list[DataSourceInfo]:
        """Every data source, with ClickHouse's row and byte counts."""
        with self._lock:
            self._flush()
            answer = self._writer.query(
                "SELECT name, total_rows, total_bytes FROM system.tables "
                "WHERE database = currentDatabase()",
                "JSONCompact",
            )
            sizes = {n: (r or 0, b or 0) for n, r, b in orjson.loads(answer.bytes())["data"]}
            for name, info in self.infos.items():
                info.row_count, info.bytes = (int(v) for v in sizes.get(name, (0, 0)))
                info.quarantine_rows = int(sizes.get(f"{name}_quarantine", (0, 0))[0])
            return list(self.infos.values())

    def truncate(self, name: str) -> None:
        """Delete every row of ``name`` and its quarantine."""
        with self._lock:
            if name not in self.infos:
                raise UnknownDataSource(name)
            self._flush()
            self._writer.query(f"TRUNCATE TABLE `{name}`")
            self._writer.query(f"DROP TABLE IF EXISTS `{name}_quarantine`")
            self.infos[name].updated_at = now_text()
            self._save()

    def drop(self, name: str) -> None:
        """Remove ``name`` and its quarantine."""
        with self._lock:
            if name not in self.infos:
                raise UnknownDataSource(name)
            self._drop(name)

    def delete_rows(self, name: str, condition: str, *, dry_run: bool = False) -> int:
        """Delete the rows where ``condition`` holds (checked as read-only SQL first).

        Raises:
            QueryError: The condition is invalid, or reads files or the network.
        """
        if name not in self.infos:
            raise UnknownDataSource(name)
        counted = self.query(f"SELECT count() FROM `{name}` WHERE {condition} FORMAT JSONCompact")  # noqa: S608
        matched = int(orjson.loads(counted.body)["data"][0][0])
        if matched and not dry_run:
            with self._lock:
                self._writer.query(f"DELETE FROM `{name}` WHERE {condition}")  # noqa: S608
                self.infos[name].updated_at = now_text()
        return matched

    def _drop(self, name: str) -> None:
        self._flush()
        self._writer.query(f"DROP TABLE IF EXISTS `{name}`")
        self._writer.query(f"DROP TABLE IF EXISTS `{name}_quarantine`")
        del self.infos[name]
        self._save()

    def query(self, sql: str) -> QueryResult:
        """Run one read-only query, in ClickHouse's answer for the asked FORMAT.

        Raises:
            QueryError: ClickHouse refused the query (its message; unknown tables list the
                data sources that exist).
            ReadOnlyError: The query would write, or read files or the network.
        """
        text, fmt = split_format(sql)
        self.flush()  # a read sees every write answered before it
        with self._read_lock:
            self._check_read_only(text)
            try:
                answer = self._reader.query(text, fmt)
            except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
                raise self._error(exc) from None
            return QueryResult(answer.bytes(), CONTENT_TYPES[fmt])

    def _check_read_only(self, text: str) -> None:
        # The verdict depends on the text alone: repeated queries (dashboards, tb sql's
        # retries) skip the extra round trip.
        if text in self._checked:
            return
        try:
            tree = self._reader.query(f"EXPLAIN AST {text}", "TSVRaw").bytes().decode()
        except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
            raise self._error(exc) from None
        lines = tree.splitlines()
        root = lines[0].split()[0] if lines else ""
        if root not in _ROOTS:
            raise ReadOnlyError(_READ_ONLY)
        for number, line in enumerate(lines):
            match = _FUNCTION.match(line)
            if match is None:
                continue
            function = match.group(2).lower()
            table_function = number > 0 and lines[number - 1].strip().startswith("TableExpression")
            if function in _DENIED_FUNCTIONS or (
                table_function and function not in _TABLE_FUNCTIONS
            ):
                raise ReadOnlyError(f"{_READ_ONLY}; {match.group(2)}() is not allowed")
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.pop(next(iter(self._checked)))
        self._checked[text] = None

    def _error(self, exc: Exception) -> QueryError:
        reason = _reason(exc)
        code = _CODE.search(str(exc))
        if code and code.group(1) == "164":
            return ReadOnlyError(_READ_ONLY)
        if code and code.group(1) == "60":
            existing = ", ".join(sorted(self.infos)) or "none yet (send events first)"
            return QueryError(f"{reason}. Data sources: {existing}")
        return QueryError(reason)

    def close(self) -> None:
        """Insert what waits, close both connections (an in-memory database is dropped)."""
        self._closing.set()
        self._flusher.join(10)
        with self._lock, self._read_lock:
            self._flush()
            if self._memory:
                self._writer.query(f"DROP DATABASE IF EXISTS {self._database}")
            self._reader.close()
            self._writer.close()
            _open_path.clear()


_READ_ONLY = (
    "the local server is read-only: /v0/sql runs SELECT queries only (send rows to "
    "/v0/events or the Data Sources API)"
)


def _create_table(datafile: DataFile) -> str:
    definitions = []
    for column in datafile.columns:
        default = f" DEFAULT {column.default_sql}" if column.default_sql else ""
        definitions.append(f"`{column.name}` {column.type.name}{default}")
    engine = datafile.engine
    name = engine.get("ENGINE", "MergeTree")
    arguments = engine.get("ENGINE_VER", "") if name == "ReplacingMergeTree" else ""
    clauses = [f"ENGINE = {name}({arguments})"]
    if engine.get("ENGINE_PARTITION_KEY"):
        clauses.append(f"PARTITION BY {engine['ENGINE_PARTITION_KEY']}")
    clauses.append(f"ORDER BY ({engine.get('ENGINE_SORTING_KEY') or 'tuple()'})")
    if engine.get("ENGINE_TTL"):
        clauses.append(f"TTL {engine['ENGINE_TTL']}")
    clauses.append("SETTINGS allow_nullable_key = 1")
    return f"CREATE TABLE `{datafile.name}` ({', '.join(definitions)}) {' '.join(clauses)}"


def _reason(exc: Exception) -> str:
    """ClickHouse's message without the ``Code: N. DB::Exception:`` prefix and version."""
    text = str(exc).strip()
    text = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", text)
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    return re.sub(r":? In scope .*?(?=\. \(|\Z)", "", text, flags=re.DOTALL).strip()


def _column_of(exc: Exception) -> str:
    match = re.search(r"column '?`?(\w+)`?'?", str(exc))
    return match.group(1) if match else ""
