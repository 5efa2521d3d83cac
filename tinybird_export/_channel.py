"""One producer's queue and counters: the bounded buffer between ``emit`` and the worker.

A channel belongs to one handler, event sender or exporter. The caller's side appends an
encoded line under a short lock (no I/O, no waiting); the worker takes the whole pending
list at once and cuts it into batches. Memory is bounded by events *and* bytes, counting
every line from the moment it is accepted until the server acknowledges it or it is
dropped, so the in-flight batch and a batch waiting for a retry count too.

Drop policy when the bound is reached: the newest event is refused (``queue_full``), so
what is already queued keeps its order and goes out first when the endpoint recovers.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class DeliveryStats:
    """A snapshot of one handler's (or sender's, or exporter's) delivery counters.

    Invariant: ``emitted == sent + dropped + queued + in_flight``.

    Attributes:
        emitted: Events handed to the pipeline (records that passed the level and filters).
        sent: Rows the server acknowledged (202/200), quarantined rows included.
        dropped: Events given up, in total; ``dropped_by_reason`` breaks it down.
        queued: Events in memory waiting to be sent.
        in_flight: Events in the request under way.
        quarantined: Rows the server put in ``<datasource>_quarantine``.
        truncated: Events whose long strings were shortened to fit ``max_event_bytes``.
        requests: HTTP requests made, retries included.
        retries: Requests that were retries of a failed batch.
        bytes_sent: Raw NDJSON bytes acknowledged.
        wire_bytes_sent: Bytes put on the wire for acknowledged batches (after gzip).
        queued_bytes: Raw bytes held in memory (queued and in flight).
        last_error: The last failure, as text ("" if none); never contains the token.
    """

    emitted: int
    sent: int
    dropped: int
    dropped_by_reason: Mapping[str, int]
    queued: int
    in_flight: int
    quarantined: int
    truncated: int
    requests: int
    retries: int
    bytes_sent: int
    wire_bytes_sent: int
    queued_bytes: int
    last_error: str


CUT_FULL = 1
CUT_ALL = 2


@dataclasses.dataclass(eq=False)
class Batch:
    """Lines cut from a channel, sent as one request; kept whole across retries."""

    lines: list[bytes]
    nbytes: int
    attempts: int = 0


class Channel:
    """The queue and counters of one producer. Thread-safe; the caller's side never blocks
    for longer than a list append.
    """

    def __init__(self, datasource: str, *, wait: bool, limits: Mapping[str, Any]) -> None:
        self.datasource = datasource
        self.wait = wait
        self._max_events: int = limits["queue_max_events"]
        self._max_bytes: int = limits["queue_max_bytes"]
        self.batch_max_rows: int = limits["batch_max_rows"]
        self.batch_max_bytes: int = limits["batch_max_bytes"]
        self.flush_interval: float = limits["flush_interval"]
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        """Fresh state; also the child's state after fork (the parent sends its own queue)."""
        self.lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.pending_since = 0.0
        self.batches: collections.deque[Batch] = collections.deque()
        self.queued_events = 0
        self.queued_bytes = 0
        self.in_flight = 0
        self.resolved = 0
        self.dropped_after_queue = 0
        self.flush_target = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sent = self.quarantined = self.truncated = 0
        self.requests = self.retries = self.bytes_sent = self.wire_bytes_sent = 0
        self.last_error = ""

    # -- the caller's side -------------------------------------------------------------

    def offer(self, line: bytes, *, truncated: bool = False) -> bool:
        """Queue one encoded line, or drop it as ``queue_full``.

        Returns:
            True when the worker should be woken: the queue was empty (arms the interval
            timer) or a batch just filled.
        """
        size = len(line)
        with self.lock:
            if truncated:
                self.truncated += 1
            if self.queued_events >= self._max_events or self.queued_bytes + size > self._max_bytes:
                self.dropped["queue_full"] += 1
                return False
            self.queued_events += 1
            self.queued_bytes += size
            pending = self._pending
            pending.append(line)
            pending_bytes = self._pending_bytes = self._pending_bytes + size
            count = len(pending)
        if count == 1:
            self.pending_since = time.monotonic()
            return True
        return count == self.batch_max_rows or (
            pending_bytes >= self.batch_max_bytes > pending_bytes - size
        )

    def accepted(self) -> int:
        """Events ever queued (caller holds ``lock``): the target of a flush."""
        return self.resolved + self.queued_events

    def refuse(self, reason: str) -> None:
        """Count an event dropped before it could be queued."""
        with self.lock:
            self.dropped[reason] += 1

    # -- the worker's side -------------------------------------------------------------

    def due(self, now: float, draining: bool) -> int:
        """How much of the pending lines to cut into batches now.

        Returns:
            ``CUT_ALL`` (interval elapsed, flush, close or exit), ``CUT_FULL`` (only whole
            batches: under load, the remainder waits to fill the next one) or 0.
        """
        pending = self._pending
        if not pending:
            return 0
        if (
            draining
            or self.closed
            or self.resolved < self.flush_target
            or now - self.pending_since >= self.flush_interval
        ):
            return CUT_ALL
        if len(pending) >= self.batch_max_rows or self._pending_bytes >= self.batch_max_bytes:
            return CUT_FULL
        return 0

    def cut(self, how: int = 2) -> None:
        """Move pending lines into batches of at most the row and byte limits."""
        with self.lock:
            lines, self._pending = self._pending, []
            nbytes, self._pending_bytes = self._pending_bytes + len(lines), 0
        if not lines:
            return
        if len(lines) <= self.batch_max_rows and nbytes <= self.batch_max_bytes:
            # The usual case: no per-line work on the worker thread, which would take the
            # GIL from the application's threads.
            self.batches.append(Batch(lines, nbytes))
            return
        batch: list[bytes] = []
        nbytes = 0
        for line in lines:
            if batch and (
                len(batch) >= self.batch_max_rows or nbytes + len(line) > self.batch_max_bytes
            ):
                self.batches.append(Batch(batch, nbytes))
                batch, nbytes = [], 0
            batch.append(line)
            nbytes += len(line) + 1
        if how == CUT_FULL:
            with self.lock:  # the partial remainder goes back in front, to fill up
                self._pending[:0] = batch
                self._pending_bytes += nbytes - len(batch)
        else:
            self.batches.append(Batch(batch, nbytes))

    def pending_count(self) -> int:
        """Lines not yet cut into batches."""
        return len(self._pending)

    def empty(self) -> bool:
        """Nothing queued or in flight."""
        return self.queued_events == 0

    def resolve(self, batch: Batch, *, sent: bool, reason: str = "", **counts: int) -> None:
        """Account for a batch that left the queue: acknowledged, or dropped for ``reason``."""
        count = len(batch.lines)
        with self.lock:
            self.queued_events -= count
            self.queued_bytes -= batch.nbytes - count  # nbytes counts the newlines too
            self.resolved += count
            if sent:
                self.sent += count
                self.bytes_sent += batch.nbytes
            else:
                self.dropped[reason] += count
                self.dropped_after_queue += count
            self._add(counts)

    def note(self, error: str = "", **counts: int) -> None:
        """Add to the request counters, and remember the last error."""
        with self.lock:
            if error:
                self.last_error = error
            self._add(counts)

    def _add(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)

    def abandon(self, reason: str) -> int:
        """Drop everything still queued (at exit, when the budget ran out); return the count."""
        self.cut()
        count = 0
        while self.batches:
            batch = self.batches.popleft()
            count += len(batch.lines)
            self.resolve(batch, sent=False, reason=reason)
        self.in_flight = 0
        return count

    def after_fork_in_child(self) -> None:
        """Forget the parent's queue and counters: the parent still sends its events."""
        self._reset()

    def stats(self) -> DeliveryStats:
        """A consistent snapshot of the counters."""
        with self.lock:
            dropped = dict(self.dropped)
            return DeliveryStats(
                emitted=self.sent + sum(dropped.values()) + self.queued_events,
                sent=self.sent,
                dropped=sum(dropped.values()),
                dropped_by_reason=dropped,
                queued=self.queued_events - self.in_flight,
                in_flight=self.in_flight,
                quarantined=self.quarantined,
                truncated=self.truncated,
                requests=self.requests,
                retries=self.retries,
                bytes_sent=self.bytes_sent,
                wire_bytes_sent=self.wire_bytes_sent,
                queued_bytes=self.queued_bytes,
                last_error=self.last_error,
            )
