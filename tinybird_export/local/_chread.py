"""The ClickHouse engine's read side: ``/v0/sql`` on bounded, read-only chDB connections.

Read-only SQL, twice over: ClickHouse's own parser must show a query on ``_chcheck``'s
allowlist (one SELECT of known clauses, generator table functions, no ``INTO OUTFILE``, no
``file()``), and it runs on a reader opened with ``readonly=1`` (no writes, DDL, SYSTEM,
settings, or table functions that touch files or the network) and ``_limits``' bounds:
ClickHouse's own ``max_execution_time``, ``max_memory_usage`` (and ``_for_user``, for all
queries together) and ``max_result_rows/bytes``.

Readers are a pool (``_limits.Readers``): queries run side by side, never behind the writer.
A query is killed (``KILL QUERY``, from a connection of its own, matched by the reader's
``log_comment``) when its client goes away or the server stops. A reader whose query failed
is replaced: chDB hands the next query of a connection the partial output of a query that
failed while writing it (a timeout, a result limit), which would be another client's data.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any

from tinybird_export.local import _chcheck, _chsql, _limits
from tinybird_export.local._engine import (
    CONTENT_TYPES,
    QueryError,
    QueryResult,
    ReadOnlyError,
    split_format,
)
from tinybird_export.local._limits import Cancel

_CHECKED_MAX = 1024
_ROWS = re.compile(rb'"rows":\s*(\d+)')
_LINE_FORMATS = {"CSV": 0, "CSVWithNames": 1, "TSV": 0, "TSVWithNames": 1, "TabSeparated": 0}
_LINE_FORMATS |= {"TabSeparatedWithNames": 1, "JSONEachRow": 0, "JSONCompactEachRow": 0}
Reader = tuple[Any, str]  # a chDB connection and its log_comment


def _read_settings() -> str:
    """The bounds of one user query (``_limits``'); ``readonly=1`` also freezes them."""
    return (
        "readonly=1&allow_introspection_functions=0"
        f"&max_execution_time={_limits.QUERY_SECONDS}&timeout_overflow_mode=throw"
        f"&max_memory_usage={_limits.QUERY_MEMORY_BYTES}"
        f"&max_memory_usage_for_user={_limits.QUERIES_MEMORY_BYTES}"
        f"&max_result_rows={_limits.RESULT_ROWS}&max_result_bytes={_limits.RESULT_BYTES}"
        "&result_overflow_mode=throw&function_sleep_max_microseconds_per_block=500000"
    )


class Reads:
    """The read connections of one ClickHouse engine.

    Args:
        path: chDB's data path.
        database: The workspace's database.
        datasources: The data sources' names (an unknown table's answer lists them).
    """

    def __init__(self, path: str, database: str, datasources: Callable[[], list[str]]) -> None:
        from chdb import state  # noqa: PLC0415 - the optional extra

        self._path = path
        self._database = database
        self._datasources = datasources
        self._checked: dict[str, tuple[str, str]] = {}  # text -> canonical text and format
        # KILL QUERY, on a connection of its own: every reader may be busy.
        self._control = state.connect(path)
        self._control_lock = threading.Lock()
        tag = f"tb-local-{os.urandom(4).hex()}"  # this engine's readers, among any other
        readers = [self._open(f"{tag}-{number}") for number in range(_limits.READERS)]
        self._pool = _limits.Readers(readers, self._kill, self._renew)

    def read(self, sql: str, cancel: Cancel | None) -> tuple[QueryResult, str]:
        """Run one read-only query; its answer, and the text that ran (ClickHouse's spelling).

        Raises:
            QueryError: ClickHouse refused it; 408 past the time limit, 429 when every
                reader is busy, 503 when the server stops.
            ReadOnlyError: It would write, or read files or the network.
        """
        with self._pool.reader(cancel) as (reader, _):
            text, fmt = self._checked_text(reader, sql.strip().rstrip(";"))
            try:
                answer = reader.query(text, fmt)
            except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
                raise self._error(exc) from None
            body = answer.bytes()
            return QueryResult(body, CONTENT_TYPES[fmt], answer_rows(fmt, body)), text

    def _checked_text(self, reader: Any, sql: str) -> tuple[str, str]:
        """The query as ClickHouse spells it (what runs), and its FORMAT, once allowed.

        The verdict depends on the text alone: repeated queries (dashboards, tb sql's
        retries) skip the two extra round trips.
        """
        known = self._checked.get(sql)
        if known is not None:
            return known
        try:
            spelled = reader.query(_chcheck.canonical_query(sql), "TSVRaw").bytes().decode()
            _chcheck.check_text(spelled.strip())
            text, fmt = split_format(spelled.strip())
            tree = reader.query(f"EXPLAIN AST {text}", "TSVRaw").bytes().decode()
        except QueryError:
            raise
        except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
            raise self._error(exc) from None
        refusal = _chcheck.refusal(tree, self._database, text)
        if refusal:
            raise ReadOnlyError(refusal)
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.pop(next(iter(self._checked)), None)
        self._checked[sql] = (text, fmt)
        return text, fmt

    def _open(self, tag: str) -> Reader:
        """A read-only connection with the query bounds; ``log_comment`` names it in
        ``system.processes``, for KILL QUERY.
        """
        from chdb import state  # noqa: PLC0415 - the optional extra

        settings = f"{_read_settings()}&log_comment={tag}&{_chsql.SETTINGS}"
        reader = state.connect(f"{self._path}?{settings}")
        reader.query(f"USE {self._database}")
        return reader, tag

    def _renew(self, reader: Reader) -> Reader:
        reader[0].close()
        return self._open(reader[1])

    def _kill(self, reader: Reader) -> None:
        # ASYNC: returns once the query is marked cancelled, which it notices within ~0.3 s.
        with self._control_lock:
            self._control.query(f"KILL QUERY WHERE Settings['log_comment'] = '{reader[1]}' ASYNC")

    def _error(self, exc: Exception) -> QueryError:
        return _chsql.query_error(exc, self._datasources(), stopping=self._pool.closed)

    def close(self) -> None:
        """Interrupt the queries running (waiting a moment for them), close the connections."""
        for reader, _ in self._pool.close():
            reader.close()
        with self._control_lock:
            self._control.close()


def answer_rows(fmt: str, body: bytes) -> int | None:
    """How many rows ClickHouse's answer holds, for the request log: the ``rows`` its JSON
    formats end with, the lines of the line formats; None for the others.
    """
    if fmt.startswith("JSON") and not fmt.endswith("EachRow"):
        found = _ROWS.findall(body[-512:])  # after the data: a value's quotes are escaped
        return int(found[-1]) if found else None
    if fmt in _LINE_FORMATS:
        return max(body.count(b"\n") - _LINE_FORMATS[fmt], 0)
    return None
