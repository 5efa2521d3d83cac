"""The SQLite engine's read side: read-only connections that run ``/v0/sql``, each bounded.

Each reader opens the database read-only (``mode=ro``: SQLite itself refuses writes) with an
authorizer that allows reading the data sources' tables and calling functions, nothing else:
no ``ATTACH``, no ``PRAGMA`` (nor the ``pragma_*`` tables), no catalog (which holds the token),
no ``load_extension`` or ``fts3_tokenizer``. A progress handler stops a query at the time
limit; ``interrupt()`` stops it when its client goes away or the server stops. Readers see
what the writer committed (WAL), so a query never blocks ingestion, nor ingestion a query.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from tinybird_export.local import _limits, _sqlite_functions
from tinybird_export.local._engine import QueryError

_READ_ACTIONS = frozenset(
    getattr(sqlite3, name, code)
    for name, code in (
        ("SQLITE_SELECT", 21),
        ("SQLITE_READ", 20),
        ("SQLITE_FUNCTION", 31),
        ("SQLITE_RECURSIVE", 33),
    )
)
_READ = getattr(sqlite3, "SQLITE_READ", 20)
_FUNCTION = getattr(sqlite3, "SQLITE_FUNCTION", 31)
# load_extension runs native code; fts3_tokenizer hands out (and takes) raw pointers;
# readfile/writefile/edit are the shell's file functions, should a build register them.
_DENIED_FUNCTIONS = frozenset(
    {"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "sqlite_dbpage"}
)
_PROGRESS_STEPS = 10_000  # SQLite VM instructions between two looks at the clock


def read_only(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
    """The readers' SQLite authorizer: read the data sources, call ordinary functions."""
    if action not in _READ_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == _READ and arg1 and arg1.lower().startswith(("_tb_", "sqlite_")):
        return sqlite3.SQLITE_DENY  # the catalog holds the token
    if action == _FUNCTION and arg2 and arg2.lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class Reader:
    """One read-only connection to ``path`` (a WAL database the writer created)."""

    def __init__(self, path: str) -> None:
        uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        _sqlite_functions.register(self.db)  # before the authorizer: nothing to authorize
        self.db.set_authorizer(read_only)
        self.deadline = float("inf")
        self.db.set_progress_handler(self._past_deadline, _PROGRESS_STEPS)
        if hasattr(self.db, "setlimit"):  # Python 3.11+: no single value over the cap
            self.db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _limits.RESULT_BYTES)

    def _past_deadline(self) -> int:
        return int(time.monotonic() > self.deadline)

    def run(
        self, sql: str, *, max_rows: int | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The column names and rows of ``sql``, within the time limit and the result limits
        (``max_rows``, by default ``RESULT_ROWS``; ``RESULT_BYTES``).

        Raises:
            QueryTimeout: Past ``QUERY_SECONDS``.
            QueryError: Interrupted otherwise (its client went away), over a result limit,
                or what SQLite says.
            sqlite3.DatabaseError: What the caller explains (not authorized, no such table).
        """
        self.deadline = time.monotonic() + _limits.QUERY_SECONDS
        most = _limits.RESULT_ROWS if max_rows is None else max_rows
        rows: list[tuple[Any, ...]] = []
        size = 0
        try:
            cursor = self.db.execute(sql)
            # A row at a time: a value may be 100 MB (SQLITE_LIMIT_LENGTH), and a batch of
            # such rows would be read whole before its size was counted.
            for row in cursor:
                rows.append(row)
                size += sum(_size(value) for value in row)
                if len(rows) > most or size > _limits.RESULT_BYTES:
                    cursor.close()
                    raise QueryError(
                        f"Limit for result exceeded, max rows: {most}, max bytes: "
                        f"{_limits.RESULT_BYTES} (TOO_MANY_ROWS_OR_BYTES): add a LIMIT"
                    )
        except MemoryError:  # SQLite's heap limit (bound_memory): SQLITE_NOMEM
            raise QueryError(
                f"Memory limit exceeded: the query needs over {_limits.QUERY_MEMORY_BYTES} "
                "bytes (MEMORY_LIMIT_EXCEEDED)"
            ) from None
        except sqlite3.OperationalError as exc:
            if str(exc) != "interrupted":
                raise
            if time.monotonic() > self.deadline:
                limit = _limits.QUERY_SECONDS
                raise _limits.QueryTimeout(
                    f"Timeout exceeded: elapsed {limit} s, maximum: {limit} s. "
                    f"(TIMEOUT_EXCEEDED) (Tinybird's limit too: {limit} s)"
                ) from None
            raise QueryError("the query was interrupted") from None
        finally:
            self.deadline = float("inf")
        return [d[0] for d in cursor.description or ()], rows

    def interrupt(self) -> None:
        """Stop the running query (thread-safe; nothing happens when none runs)."""
        self.db.interrupt()

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def bound_memory() -> None:
    """Cap SQLite's heap for this whole process (``PRAGMA hard_heap_limit``) at
    ``QUERY_MEMORY_BYTES``: one result row may hold 2000 columns of 100 MB each, which no
    per-row count can stop. For the command's own process only (an application running
    ``LocalServer`` in-process keeps its SQLite unbounded).
    """
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.execute(f"PRAGMA hard_heap_limit={_limits.QUERY_MEMORY_BYTES}")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 8
