"""What one query may cost on the local server, and the pool of read connections that bounds
how many run at once.

A query runs on a reader of its own (a chDB connection, an SQLite connection), so it never
waits behind another query nor blocks ingestion. It is stopped when it passes Tinybird's
time limit (10 s), when its client goes away (``Cancel``, set by the HTTP layer) and when the
server stops (``Readers.close``). When every reader is busy for ``SLOT_WAIT`` seconds, the
answer is 429, as Tinybird answers a workspace over its concurrency.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tinybird_export.local._engine import QueryError

QUERY_SECONDS = 10
"""Tinybird's default query time limit (TIMEOUT_EXCEEDED, code 159, after 10 s)."""
QUERY_MEMORY_BYTES = 2 * 1024**3
"""ClickHouse's ``max_memory_usage`` for one query."""
QUERIES_MEMORY_BYTES = 3 * 1024**3
"""ClickHouse's ``max_memory_usage_for_user``: every query running at once (they all run as
chDB's one user)."""
RESULT_ROWS = 1_000_000
RESULT_BYTES = 100 * 1000 * 1000
"""``max_result_rows`` / ``max_result_bytes``: the answer is built in memory, and written as
JSON it is several times larger than ClickHouse's own count."""
READERS = 3
SLOT_WAIT = 1.0
STOP_GRACE = 2.0
"""How long ``close`` waits for interrupted queries to hand their readers back."""

Conn = TypeVar("Conn")


class QueryBusy(QueryError):
    """Every reader is running a query: try again in a moment."""

    status = 429


class QueryTimeout(QueryError):
    """The query ran past the time limit (Tinybird answers 408)."""

    status = 408


class ServerStopping(QueryError):
    """The server is stopping: the query was interrupted, or not started."""

    status = 503

    def __init__(self) -> None:
        super().__init__("the local server is stopping: the query was interrupted")


class Cancel:
    """One request's cancellation: whoever runs its query registers how to interrupt it, and
    ``cancel()`` (the client went away) calls that, once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interrupt: Callable[[], None] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Interrupt the query, now or as soon as it starts."""
        with self._lock:
            self.cancelled = True
            interrupt = self._interrupt
        if interrupt is not None:
            interrupt()

    @contextlib.contextmanager
    def interrupting(self, interrupt: Callable[[], None]) -> Iterator[None]:
        """While inside, ``cancel()`` calls ``interrupt`` (at once if already cancelled)."""
        with self._lock:
            self._interrupt = interrupt
            cancelled = self.cancelled
        if cancelled:
            interrupt()
        try:
            yield
        finally:
            with self._lock:
                self._interrupt = None


class _Slot(Generic[Conn]):
    def __init__(self, connection: Conn) -> None:
        self.connection = connection
        self.generation = 0  # bumped on each hand-back: a late interrupt must miss the next query


class Readers(Generic[Conn]):
    """A fixed pool of read connections, one query each at a time.

    Args:
        connections: The readers.
        interrupt: Stops the query running on a reader (thread-safe, returns quickly).
        renew: Replaces a reader whose query failed (chDB hands the next query of a
            connection the partial output of a query that failed while writing it).
    """

    def __init__(
        self,
        connections: list[Conn],
        interrupt: Callable[[Conn], None],
        renew: Callable[[Conn], Conn] | None = None,
    ) -> None:
        self._free = [_Slot(c) for c in connections]
        self._all = list(self._free)
        self._interrupt = interrupt
        self._renew = renew
        self._ready = threading.Condition()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (queries then get ``ServerStopping``)."""
        return self._closed

    @contextlib.contextmanager
    def reader(self, cancel: Cancel | None = None) -> Iterator[Conn]:
        """A free reader for one query, interrupted if ``cancel`` fires or the server stops.

        Raises:
            QueryBusy: No reader came free within ``SLOT_WAIT`` seconds.
            ServerStopping: The pool is closed.
        """
        deadline = time.monotonic() + SLOT_WAIT
        with self._ready:
            while not self._free and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueryBusy(
                        f"{len(self._all)} queries are already running, the most the local "
                        "server runs at once: try again when one ends"
                    )
                self._ready.wait(remaining)
            if self._closed:
                raise ServerStopping
            slot = self._free.pop()
            generation = slot.generation
        try:
            with (cancel or Cancel()).interrupting(lambda: self._stop(slot, generation)):
                yield slot.connection
        except BaseException:
            if self._renew is not None and not self._closed:
                # If renewing fails too, the old one stays: its next answer may be off.
                with contextlib.suppress(Exception):
                    slot.connection = self._renew(slot.connection)
            raise
        finally:
            with self._ready:
                slot.generation += 1
                self._free.append(slot)
                self._ready.notify_all()

    def _stop(self, slot: _Slot[Conn], generation: int) -> None:
        # Under the pool's lock: the reader cannot be handed back, and then to another
        # query, while its interrupt is on the way.
        with self._ready:
            if slot.generation == generation and slot not in self._free:
                self._interrupt(slot.connection)

    def close(self, grace: float = STOP_GRACE) -> list[Conn]:
        """Refuse new queries, interrupt those running and wait (up to ``grace`` seconds) for
        them to hand their readers back.

        Returns:
            The readers, to close (all of them, even one still busy after ``grace``).
        """
        deadline = time.monotonic() + grace
        with self._ready:
            self._closed = True
            for slot in self._all:
                if slot not in self._free:
                    self._interrupt(slot.connection)
            while len(self._free) < len(self._all):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            self._ready.notify_all()
        return [slot.connection for slot in self._all]
