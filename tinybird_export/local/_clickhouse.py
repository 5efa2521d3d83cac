"""The ClickHouse engine: embedded ClickHouse (chDB) behind the local server.

Data sources are real ClickHouse tables (the ``.datasource`` types, ``DEFAULT`` expressions
and ``ENGINE_*`` keys), so ``/v0/sql`` answers are ClickHouse's own: functions, formats,
``meta`` types and ``statistics``. Rows are checked per row before the insert (the checks of
``_schema.py``, shared with the SQLite engine); a row ClickHouse still refuses is found by
halving the batch, so a bad row never rejects its batch.

``/v0/sql`` runs on the read side (``_chread``): checked against an allowlist read from
ClickHouse's own parser, on read-only connections bounded in time, memory and result size.

The token and the catalog (JSONPaths, descriptions) live in ``tinybird-export.json`` beside
the data, which SQL cannot read.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from tinybird_export.local import _chcheck, _chcreate, _chsql, _limits, _rows
from tinybird_export.local._chread import Reads
from tinybird_export.local._datafile import DataFile, DatafileError
from tinybird_export.local._engine import (
    GUESS_SAMPLE,
    DataSourceInfo,
    QueryError,
    QueryResult,
    UnknownDataSource,
    check_name,
    now_text,
)
from tinybird_export.local._guess import guess_columns
from tinybird_export.local._limits import Cancel
from tinybird_export.local._schema import Column

_META = "tinybird-export.json"
_WRITE_SETTINGS = "date_time_input_format=best_effort&input_format_skip_unknown_fields=1"
_FLUSH_ROWS = 10_000
_FLUSH_SECONDS = 0.2
_open: dict[str, int] = {}  # chDB serves one data path per process: how many engines use it


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
        other = next((p for p in _open if p != path), None)
        if other is not None:
            raise RuntimeError(
                f"chDB already serves {other} in this process and can serve one data path at "
                f"a time: stop that server first, or use --engine sqlite for {data}"
            )
        self._meta_path: Path | None = None
        if not self._memory:
            os.makedirs(path, mode=0o700, exist_ok=True)  # a new one: its owner's only
            self._meta_path = Path(path) / _META
        self._writer = state.connect(f"{path}?{_chsql.SETTINGS}&{_WRITE_SETTINGS}")
        _open[path] = _open.get(path, 0) + 1
        self._path = path
        self._database = f"tb_local_{os.urandom(4).hex()}" if self._memory else "default"
        if self._memory:
            self._writer.query(f"CREATE DATABASE {self._database}")
        self._writer.query(f"USE {self._database}")
        self._lock = threading.Lock()
        self.infos: dict[str, DataSourceInfo] = {}
        self._reads = Reads(path, self._database, lambda: sorted(self.infos))
        self._pending: dict[str, list[tuple[list[list[Any]], list[dict[str, Any]]]]] = {}
        self._pending_rows = 0
        self._closing = threading.Event()
        self._closed = False  # under _lock: nothing is acknowledged after the last flush
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
        self.token, self.infos = _chsql.load_meta(self._meta_path)

    def _save(self) -> None:
        if self._meta_path is not None:
            _chsql.save_meta(self._meta_path, self.token, self.infos)

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
            # The text is the client's (a project's files, a token holder): only ClickHouse's
            # own spelling of one allowed CREATE TABLE runs (_chcreate).
            self._writer.query(_chcreate.checked_create(self._writer, datafile))
        except DatafileError:
            raise
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
                type_name = _chcheck.literal(column.type.name)
                self._writer.query(f"SELECT defaultValueOfTypeName({type_name})")
            except Exception as refused:  # noqa: BLE001 - chDB raises plain RuntimeErrors
                where = f"{source}:{column.line}" if column.line else source
                return DatafileError(
                    f"{where}: column {column.name!r} has type {column.type.name!r}, which "
                    f"ClickHouse refuses: {_chsql.reason(refused)}"
                )
        return DatafileError(f"{source}: ClickHouse refused the table: {_chsql.reason(exc)}")

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
            if self._closed:
                raise _limits.ServerStopping
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
            if not self._closed:
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
        return _rows.insert(self._writer, name, columns, rows, now)

    def _send(self, insert: str, fmt: str, payload: Any) -> None:
        _rows.send(self._writer, insert, fmt, payload)

    def _quarantine(self, name: str, columns: list[Column], rows: list[dict[str, Any]]) -> None:
        _rows.quarantine(self._writer, name, columns, rows)

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

    def delete_rows(
        self, name: str, condition: str, *, dry_run: bool = False, cancel: Cancel | None = None
    ) -> int:
        """Delete the rows where ``condition`` holds: counted first through the read-only
        path, then deleted with the condition as that check spelled it.

        Raises:
            QueryError: The condition is invalid, or reads files or the network.
        """
        if name not in self.infos:
            raise UnknownDataSource(name)
        count = f"SELECT count() FROM `{name}` WHERE {condition}"  # noqa: S608 - checked
        self.flush()
        counted, checked = self._reads.read(f"{count} FORMAT JSONCompact", cancel)
        matched = int(orjson.loads(counted.body)["data"][0][0])
        prefix = f"SELECT count() FROM {name} WHERE "  # noqa: S608 - not run
        if not checked.startswith(prefix):
            raise QueryError(f"invalid delete_condition: {condition!r}")
        if matched and not dry_run:
            with self._lock:
                self._writer.query(f"DELETE FROM `{name}` WHERE {checked[len(prefix) :]}")  # noqa: S608
                self.infos[name].updated_at = now_text()
        return matched

    def _drop(self, name: str) -> None:
        self._flush()
        self._writer.query(f"DROP TABLE IF EXISTS `{name}`")
        self._writer.query(f"DROP TABLE IF EXISTS `{name}_quarantine`")
        del self.infos[name]
        self._save()

    def query(self, sql: str, cancel: Cancel | None = None) -> QueryResult:
        """Run one read-only query, in ClickHouse's answer for the asked FORMAT.

        Args:
            sql: The query.
            cancel: Interrupts the query when it fires (its client went away).

        Raises:
            QueryError: ClickHouse refused the query (its message; unknown tables list the
                data sources that exist); 408 past the time limit, 429 when every reader is
                busy, 503 when the server stops.
            ReadOnlyError: The query would write, or read files or the network.
        """
        self.flush()  # a read sees every write answered before it
        return self._reads.read(sql, cancel)[0]

    def close(self) -> None:
        """Interrupt the queries running, insert what waits, close every connection (an
        in-memory database is dropped).
        """
        self._closing.set()
        self._flusher.join(10)
        self._reads.close()
        with self._lock:
            self._closed = True
            self._flush()
            if self._memory:
                self._writer.query(f"DROP DATABASE IF EXISTS {self._database}")
            self._writer.close()
            _open[self._path] -= 1
            if not _open[self._path]:
                del _open[self._path]
