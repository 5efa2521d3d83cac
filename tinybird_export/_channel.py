"""One producer's queue and counters: the bounded buffer between ``emit`` and the worker.

A channel belongs to one handler, event sender or exporter. The caller's side copies each
encoded line into a growing NDJSON buffer under a short lock (no I/O, no waiting) and seals
the buffer as a batch when it reaches the row or byte limit; the worker takes the sealed
batches, and the partial one when it is due. One contiguous buffer rather than a list of
line objects: thousands of retained medium-sized objects cost the caller ~2 µs per line in
allocator work (measured with ``bench/compare.py``'s span row) and leave RSS well above what
the queue holds. Memory is bounded by events *and* bytes, counting every line from the
moment it is accepted until the server acknowledges it or it is dropped, so the in-flight
batch and a batch waiting for a retry count too.

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
    """NDJSON lines (each ending in a newline) sent as one request; kept whole across retries.

    Attributes:
        body: The request body before compression.
        count: How many lines (events) it holds.
        attempts: Requests made for it so far.
    """

    body: bytes | bytearray
    count: int
    attempts: int = 0

    @property
    def nbytes(self) -> int:
        """Raw bytes, newlines included."""
        return len(self.body)

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches split at the line boundary nearest the middle (for a 413); needs
        ``count > 1``.
        """
        body = self.body
        cut = body.find(b"\n", len(body) // 2)
        if cut == len(body) - 1:  # the middle fell inside the last line
            cut = body.rfind(b"\n", 0, len(body) // 2)
        first = body[: cut + 1]
        first_count = first.count(b"\n")
        return Batch(first, first_count), Batch(body[cut + 1 :], self.count - first_count)


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
        self._pending = bytearray()  # the partial batch
        self._pending_count = 0
        self._sealed: list[Batch] = []  # full batches the worker has not taken yet
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
            timer) or a batch was just sealed.
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
            sealed = False
            if self._pending_count and len(pending) + size >= self.batch_max_bytes:
                self._seal()  # this line would take the batch past its byte limit
                sealed, pending = True, self._pending
            pending += line
            pending += b"\n"
            count = self._pending_count = self._pending_count + 1
            if count >= self.batch_max_rows:
                self._seal()
                sealed = True
        if count == 1:  # a new partial batch (also right after a byte-limit seal)
            self.pending_since = time.monotonic()
            return True
        return sealed

    def _seal(self) -> None:
        """Move the partial batch to the sealed ones (caller holds ``lock``)."""
        self._sealed.append(Batch(self._pending, self._pending_count))
        self._pending = bytearray()
        self._pending_count = 0

    def accepted(self) -> int:
        """Events ever queued (caller holds ``lock``): the target of a flush."""
        return self.resolved + self.queued_events

    def refuse(self, reason: str) -> None:
        """Count an event dropped before it could be queued."""
        with self.lock:
            self.dropped[reason] += 1

    # -- the worker's side -------------------------------------------------------------

    def due(self, now: float, draining: bool) -> int:
        """How much of the queue to hand to the worker now.

        Returns:
            ``CUT_ALL`` (interval elapsed, flush, close or exit: the partial batch too),
            ``CUT_FULL`` (only sealed batches: under load, the partial one fills up) or 0.
        """
        if not self._pending_count:
            return CUT_FULL if self._sealed else 0
        if (
            draining
            or self.closed
            or self.resolved < self.flush_target
            or now - self.pending_since >= self.flush_interval
        ):
            return CUT_ALL
        return CUT_FULL if self._sealed else 0

    def cut(self, how: int = CUT_ALL) -> None:
        """Move the sealed batches, and with ``CUT_ALL`` the partial one, to ``batches``."""
        with self.lock:
            if how == CUT_ALL and self._pending_count:
                self._seal()
            sealed, self._sealed = self._sealed, []
        self.batches.extend(sealed)

    def pending_count(self) -> int:
        """Lines in the partial batch."""
        return self._pending_count

    def empty(self) -> bool:
        """Nothing queued or in flight."""
        return self.queued_events == 0

    def resolve(self, batch: Batch, *, sent: bool, reason: str = "", **counts: int) -> None:
        """Account for a batch that left the queue: acknowledged, or dropped for ``reason``."""
        count = batch.count
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
            count += batch.count
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
