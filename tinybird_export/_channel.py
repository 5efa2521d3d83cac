"""One producer's queue and counters: the bounded buffer between ``emit`` and the worker.

A channel belongs to one handler, event sender or exporter, and owns its lock and its
protocol: producers ``offer`` lines; a sender takes the next due batch (``take``; it is then
*in flight*, claimed by that sender alone) and reports how it went with ``sent``,
``dropped``, ``retry`` or ``split``; the exit drain and the close deadline ``abandon`` what
is left. Each batch is resolved exactly once: an answer that arrives for a batch already
abandoned is ignored. No other module reads or writes a channel's state.

The caller's side copies each encoded line into a growing NDJSON buffer (no I/O, no
waiting) and seals it as a batch at the row or byte limit. One contiguous buffer rather
than a list of line objects: thousands of retained medium-sized objects cost the caller
~2 µs per line in allocator work (``bench/compare.py``'s span row) and leave RSS well above
what the queue holds. Memory is bounded by events *and* bytes, counting every line from the
moment it is accepted until it is acknowledged or dropped (in-flight and retrying batches
included); the byte allowance is set by the process's memory budget (``_budget``).

``offer`` is safe to call from a signal handler or a ``__del__`` that interrupts the same
thread inside ``offer``: the lock is re-entrant, and a call that finds it already held by
its own thread parks its line in a deque (``append`` is atomic) that the sender's next
``take`` moves into the queue, instead of changing state that the interrupted call is
half-way through (or deadlocking on a plain lock, as ``Event.set`` would).

Drop policy when the bound is reached: the newest event is refused (``queue_full``), so
what is already queued keeps its order and goes out first when the endpoint recovers.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Mapping
from typing import NamedTuple

from tinybird_export._backpressure import DISPLACES_FROM, shortfall_below, thin
from tinybird_export._line_encoder import REPAIRED, TRUNCATED


@dataclasses.dataclass(frozen=True)
class DeliveryStats:
    """A snapshot of one handler's (or sender's, or exporter's) delivery counters.

    Attributes:
        emitted: Events handed to the pipeline (records that passed the level and filters).
        sent: Rows the server acknowledged (202/200), quarantined rows included.
        dropped: Events given up, in total; ``dropped_by_reason`` breaks it down.
        dropped_by_reason: Drop counts by reason (``queue_full``, ``http_403``...).
        dropped_by_level: The ``queue_full`` drops of log records, by level name: the
            severity-aware policy drops lower levels first (``_backpressure``).
        queued: Events in memory waiting to be sent.
        in_flight: Events in the request under way.
        quarantined: Rows the server put in ``<datasource>_quarantine``.
        truncated: Events whose long strings (or containers) were cut to fit
            ``max_event_bytes``, with a marker.
        repaired: Events with values JSON cannot carry, replaced (placeholders naming the
            type, big integers as strings, escaped lone surrogates).
        requests: HTTP requests made, retries included.
        retries: Requests that were retries of a failed batch.
        bytes_sent: Raw NDJSON bytes acknowledged.
        wire_bytes_sent: Bytes put on the wire for acknowledged batches (after gzip).
        queued_bytes: Raw bytes held in memory (queued and in flight).
        last_error: The last failure, as text ("" if none); never contains the token.
        send_interval: How long a partial batch waits now: ``flush_interval``, or longer
            while the server's rate limit paces this data source (``_pacing``).
        spooled: Events of this producer held in the disk spool (``spool_dir``), to be
            sent when the endpoint recovers, by this process or the next.
        spool_bytes: Bytes the spool directory holds (every producer's).
        unspooled: Events sent from the spool by this producer's data source (its own,
            counted in ``sent`` too, and those another process left).
        spool_corrupt: Spool files that failed their checksum (moved aside, not sent).

    Invariant: ``emitted == sent + dropped + queued + in_flight + spooled``.
    """

    emitted: int
    sent: int
    dropped: int
    dropped_by_reason: Mapping[str, int]
    dropped_by_level: Mapping[str, int]
    queued: int
    in_flight: int
    quarantined: int
    truncated: int
    repaired: int
    requests: int
    retries: int
    bytes_sent: int
    wire_bytes_sent: int
    queued_bytes: int
    last_error: str
    send_interval: float = 0.0
    spooled: int = 0
    spool_bytes: int = 0
    unspooled: int = 0
    spool_corrupt: int = 0


class Limits(NamedTuple):
    """A channel's bounds, from its producer's settings."""

    queue_max_events: int
    queue_max_bytes: int
    batch_max_rows: int
    batch_max_bytes: int
    flush_interval: float


@dataclasses.dataclass(eq=False)
class Batch:
    """NDJSON lines (each ending in a newline) sent as one request; kept whole across retries.

    Attributes:
        body: The request body before compression.
        count: How many lines (events) it holds.
        levels: Each line's logging level (one byte per line, 0 for unlevelled events),
            for the severity-aware drop policy.
        attempts: Requests made for it so far.
        full: Sealed at its row or byte limit (the next line did not fit), not because
            its interval passed: it need not wait for the lane's pacing.
    """

    body: bytes | bytearray
    count: int
    levels: bytes | bytearray = b""
    attempts: int = 0
    full: bool = False

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
        n = first.count(b"\n")
        levels = self.levels
        second = Batch(body[cut + 1 :], self.count - n, levels[n:], self.attempts)
        return Batch(first, n, levels[:n], self.attempts), second


class FlushMark(NamedTuple):
    """What a flush waits for: every event accepted before it resolved, none dropped."""

    target: int
    drops: int


def _level_byte(level: object) -> int:
    """A record's level as one byte: 0 when it has none (``makeLogRecord``), at most 255."""
    if isinstance(level, int) and not isinstance(level, bool):
        return min(max(level, 0), 255)
    return 0


_serials = itertools.count(1)


class Channel:
    """The queue and counters of one producer (see the module docstring for the protocol).

    Args:
        datasource: The data source its events go to.
        host: The API host (for reports).
        wait: Whether its requests ask for ``wait=true``.
        limits: Its bounds.
    """

    def __init__(self, datasource: str, host: str, *, wait: bool, limits: Limits) -> None:
        self.datasource = datasource
        self.host = host
        self.wait = wait
        self.limits = limits
        # Plain attributes: read on every offer, and cheaper than a NamedTuple's fields.
        self._max_events = limits.queue_max_events
        self._batch_rows = limits.batch_max_rows
        self._batch_bytes = limits.batch_max_bytes
        self.serial = next(_serials)
        """Unique in this process, unlike ``id()``, which a later channel may reuse: the
        spool's files name the channel that wrote them."""
        self._reset()

    def __repr__(self) -> str:
        return f"<Channel {self.datasource} {self.host}>"

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent sends its own)."""
        self._lock = threading.RLock()
        self._deferred: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self._allowance = self.limits.queue_max_bytes
        self._pending = bytearray()  # the partial batch
        self._pending_levels = bytearray()  # its lines' levels
        self._pending_count = 0
        self._pending_since = 0.0
        self._ready: collections.deque[Batch] = collections.deque()  # sealed, not yet sent
        self._in_flight: Batch | None = None
        self._queued_events = self._queued_bytes = 0
        self._resolved = self._dropped_after_queue = self._flush_target = 0
        self._dropped: collections.Counter[str] = collections.Counter()
        self._dropped_levels: collections.Counter[int] = collections.Counter()
        self._sent = self._quarantined = self._truncated = self._repaired = 0
        self._requests = self._retries = self._bytes_sent = self._wire_bytes_sent = 0
        self._spooled = self._unspooled = 0
        self._no_room_below: tuple[tuple[int, int, int], int, int, int] | None = None
        self._last_error = ""
        self.closed = False
        """Whether the producer was closed (read on every offer: a plain attribute, which
        only ``close`` sets)."""
        self._close_deadline: float | None = None

    # -- the caller's side -------------------------------------------------------------

    def offer(self, line: bytes, flags: int = 0, level: int = 0) -> bool:
        """Queue one encoded line, or drop it as ``queue_full`` (see ``_make_room`` for
        the lines that a record of ``level`` WARNING or higher may displace instead).

        Args:
            line: The encoded event.
            flags: ``encode_event``'s flags (truncated, repaired), counted.
            level: The record's logging level (0 for unlevelled events).

        Returns:
            True when the worker should be woken: the queue had no partial batch (this
            line arms its interval timer), a batch was just sealed, or the call re-entered
            one in progress on this thread.
        """
        lock = self._lock
        if lock._is_owned():  # type: ignore[attr-defined]  # re-entered: see the docstring
            self._deferred.append((line, flags, level))
            return True
        with lock:
            # The same steps as _append, inlined: this is the caller's hot path. Nothing
            # below may raise once the counters start to change.
            size = len(line)
            if flags:
                self._count_flags(flags)
            if (
                self._queued_events >= self._max_events
                or self._queued_bytes + size > self._allowance
            ) and not self._make_room(size, _level_byte(level)):
                return False
            wake = False
            if self._pending_count and len(self._pending) + size >= self._batch_bytes:
                self._seal(full=True)  # this line would take the batch past its byte limit
                wake = True
            try:  # first: if the level is not a byte, nothing has changed yet
                self._pending_levels.append(level)
            except (TypeError, ValueError):  # None (makeLogRecord), or past 255
                self._pending_levels.append(_level_byte(level))
            self._queued_events += 1
            self._queued_bytes += size
            pending = self._pending
            pending += line
            pending += b"\n"
            count = self._pending_count = self._pending_count + 1
            if count == 1:  # a new partial batch (also right after a byte-limit seal)
                self._pending_since = time.monotonic()
                wake = True
            if count >= self._batch_rows:
                self._seal(full=True)
                wake = True
            return wake

    def _append_deferred(self) -> None:
        """Queue the lines that re-entered calls parked (caller holds the lock)."""
        while self._deferred:
            self._append(*self._deferred.popleft())

    def _count_flags(self, flags: int) -> None:
        if flags & TRUNCATED:
            self._truncated += 1
        if flags & REPAIRED:
            self._repaired += 1

    def _append(self, line: bytes, flags: int, level: int) -> bool:
        """``offer``'s body, for parked lines (caller holds the lock)."""
        size = len(line)
        if level.__class__ is not int or not 0 <= level <= 255:
            level = _level_byte(level)
        if flags:
            self._count_flags(flags)
        if (
            self._queued_events >= self._max_events or self._queued_bytes + size > self._allowance
        ) and not self._make_room(size, level):
            return False
        self._queued_events += 1
        self._queued_bytes += size
        sealed = False
        if self._pending_count and len(self._pending) + size >= self._batch_bytes:
            self._seal(full=True)
            sealed = True
        pending = self._pending
        pending += line
        pending += b"\n"
        self._pending_levels.append(level)
        count = self._pending_count = self._pending_count + 1
        if count == 1:
            self._pending_since = time.monotonic()
            sealed = True
        if count >= self._batch_rows:
            self._seal(full=True)
            sealed = True
        return sealed

    def _seal(self, *, full: bool = False) -> None:
        self._ready.append(
            Batch(self._pending, self._pending_count, self._pending_levels, full=full)
        )
        self._pending = bytearray()
        self._pending_levels = bytearray()
        self._pending_count = 0

    def _make_room(self, size: int, level: int) -> bool:
        """At the bound: a WARNING-or-higher line displaces queued lines of lower levels,
        oldest first, never the batch in flight; else it is dropped as ``queue_full``.
        Each dropped line is counted by its level (caller holds the lock).
        """
        if level >= DISPLACES_FROM:
            need_events = self._queued_events + 1 - self._max_events
            need_bytes = self._queued_bytes + size - self._allowance
            freed = self._displace(level, need_bytes, need_events)
            if freed is not None:
                return True
        self._dropped["queue_full"] += 1
        if level:
            self._dropped_levels[level] += 1
        return False

    def _displace(self, level: int, need_bytes: int, need_events: int) -> int | None:
        """Drop lines below ``level`` until the needs are met (with slack, so that the next
        warnings find room too); the events freed, or ``None`` if there are not enough.
        """
        need_bytes, need_events = max(need_bytes, 0), max(need_events, 0)
        # During an outage that fills the bound with warnings and errors only, every new
        # one would scan the whole queue again (milliseconds on the caller's thread). What
        # the last scan found below its level holds until lines join or leave the queue
        # (or a batch comes back from flight: _back_from_flight forgets it).
        state = (self._resolved, self._queued_events, self._spooled)
        seen = self._no_room_below
        if (
            seen is not None
            and seen[0] == state
            and level <= seen[1]
            and (need_events > seen[2] or need_bytes > seen[3])
        ):
            return None
        batches: list[Batch] = list(self._ready)
        if self._pending_count:
            batches.append(Batch(self._pending, self._pending_count, self._pending_levels))
        # Slack (1/64 of the bound that is reached): the next warnings find room without
        # thinning a batch each (a pass over its lines, on the caller's thread).
        want_bytes = need_bytes + self._allowance // 64 if need_bytes > 0 else 0
        want_events = need_events + self._max_events // 64 if need_events > 0 else 0
        short = shortfall_below(batches, level, need_bytes, need_events)
        if short is not None:
            self._no_room_below = (state, level, *short)
            return None
        freed_events = 0
        for index, batch in enumerate(batches):
            if want_bytes <= 0 and want_events <= 0:
                break
            thinned = thin(batch, level, want_bytes, want_events)
            if thinned is None:
                continue
            kept, dropped_levels, freed_bytes = thinned
            count = batch.count - kept.count
            want_bytes -= freed_bytes
            want_events -= count
            freed_events += count
            self._queued_events -= count
            self._queued_bytes -= freed_bytes
            self._resolved += count
            self._dropped["queue_full"] += count
            self._dropped_after_queue += count
            dropped_levels.pop(0, None)  # unlevelled events: counted by reason only
            self._dropped_levels.update(dropped_levels)
            if index < len(self._ready):
                self._ready[index] = kept
            else:
                self._pending, self._pending_levels = bytearray(kept.body), bytearray(kept.levels)
                self._pending_count = kept.count
        self._ready = collections.deque(b for b in self._ready if b.count)
        return freed_events

    def refuse(self, reason: str) -> None:
        """Count an event dropped before it could be queued."""
        with self._lock:
            self._dropped[reason] += 1

    def request_flush(self) -> FlushMark:
        """Make everything accepted so far due now; the mark a flush waits for."""
        with self._lock:
            target = self._resolved + self._queued_events + len(self._deferred)
            self._flush_target = max(self._flush_target, target)
            return FlushMark(target, self._dropped_after_queue)

    def reached(self, mark: FlushMark) -> bool:
        """Every event accepted before ``mark`` was resolved (sent or dropped)."""
        return self._resolved >= mark.target

    def lost_since(self, mark: FlushMark) -> bool:
        """Whether queued events were dropped since ``mark``."""
        return self._dropped_after_queue != mark.drops

    # -- the sender's side -------------------------------------------------------------

    def take(self, now: float, interval: float, draining: bool) -> Batch | float | None:
        """Claim the next batch to send, sealing the partial one when it is due.

        Args:
            now: ``time.monotonic()``.
            interval: How long a partial batch may wait (the lane's send interval).
            draining: Exit: everything is due.

        Returns:
            The claimed batch (now in flight); else the time at which the partial batch
            becomes due; else ``None`` (nothing queued, or a batch is already in flight).
        """
        if self._lock._is_owned():  # type: ignore[attr-defined]  # in a signal handler
            return now + 0.01  # on a thread inside offer: try again later
        with self._lock:
            self._append_deferred()
            if self._in_flight is not None:
                return None
            if not self._ready and self._pending_count:
                due_at = self._pending_since + interval
                if not (
                    draining or self.closed or now >= due_at or self._resolved < self._flush_target
                ):
                    return due_at
                self._seal()
            if not self._ready:
                return None
            batch = self._in_flight = self._ready.popleft()
            return batch

    def full_batch_ready(self) -> bool:
        """Whether the next batch to send is full (``Batch.full``). Unlocked: a hint for the
        lane's pacing, which ``take`` then serves in order.
        """
        try:
            return self._ready[0].full
        except IndexError:
            return False

    def sent(self, batch: Batch, *, quarantined: int, wire_bytes: int) -> bool:
        """The server acknowledged ``batch``; False if it had been abandoned meanwhile."""
        with self._lock:
            if not self._finish(batch):
                return False
            self._sent += batch.count
            self._bytes_sent += batch.nbytes
            self._quarantined += quarantined
            self._wire_bytes_sent += wire_bytes
            return True

    def dropped(self, batch: Batch, reason: str, error: str = "", *, requested: bool) -> None:
        """``batch`` is given up for ``reason`` (after a request, when ``requested``)."""
        with self._lock:
            if error:
                self._last_error = error
            if requested:
                self._count_request(batch)
            if self._in_flight is batch:
                self._in_flight = None
                self._drop(batch, reason)

    def retry(self, batch: Batch, error: str) -> None:
        """``batch`` failed retryably: it goes back to the head of the queue, in order."""
        with self._lock:
            self._last_error = error
            self._count_request(batch)
            if self._in_flight is batch:
                self._back_from_flight(batch)

    def unclaim(self, batch: Batch) -> None:
        """Give ``batch`` back without a request (its sender stopped before sending it)."""
        with self._lock:
            if self._in_flight is batch:
                self._back_from_flight(batch)

    def split(self, batch: Batch) -> None:
        """413: ``batch`` is replaced at the head by its two halves."""
        with self._lock:
            self._count_request(batch)
            if self._in_flight is batch:
                self._back_from_flight(*batch.halves())

    def _back_from_flight(self, *batches: Batch) -> None:
        """The batch in flight returns to the head of the queue, as ``batches`` (itself, its
        halves, or a copy), in order. Its lines may be displaced again, so what
        ``_displace`` remembered finding below a level no longer holds (caller holds the lock).
        """
        self._in_flight = None
        self._ready.extendleft(reversed(batches))
        self._no_room_below = None

    def _count_request(self, batch: Batch) -> None:
        self._requests += 1
        self._retries += int(batch.attempts > 0)
        batch.attempts += 1

    def _finish(self, batch: Batch) -> bool:
        if self._in_flight is not batch:
            return False
        self._in_flight = None
        self._count_request(batch)
        self._release(batch)
        return True

    def _release(self, batch: Batch) -> None:
        self._queued_events -= batch.count
        self._queued_bytes -= batch.nbytes - batch.count  # nbytes counts the newlines too
        self._resolved += batch.count

    def _drop(self, batch: Batch, reason: str) -> None:
        self._release(batch)
        self._dropped[reason] += batch.count
        self._dropped_after_queue += batch.count

    def abandon(self, reason: str) -> int:
        """Drop everything still queued or in flight; returns how many events.

        An answer that arrives later for the in-flight batch is ignored (``sent`` returns
        False), so every event is counted exactly once.
        """
        with self._lock:
            self._append_deferred()  # lines a signal handler logged count too
            if self._pending_count:
                self._seal()
            batches = [*self._ready, *([self._in_flight] if self._in_flight else [])]
            self._ready.clear()
            self._in_flight = None
            for batch in batches:
                self._drop(batch, reason)
            return sum(batch.count for batch in batches)

    # -- the disk spool (a sender, or the exit drain) -------------------------------------

    def take_for_spool(self, everything: bool) -> Batch | None:
        """Claim the oldest sealed batch to write to the spool (with ``everything``, the
        partial one too, and the one in flight, whose late answer is then ignored).
        """
        with self._lock:
            self._append_deferred()
            if self._in_flight is not None:
                if not everything:
                    return None
                # Given up: the spool resends it. A copy, so that whatever its sender
                # reports later concerns a batch that is no longer in flight (ignored).
                old = self._in_flight
                self._back_from_flight(Batch(old.body, old.count, old.levels, old.attempts))
            if everything and self._pending_count:
                self._seal()
            batch = self._in_flight = self._ready.popleft() if self._ready else None
            return batch

    def spooled(self, batch: Batch) -> None:
        """``batch`` is on disk: it leaves memory, counted as spooled."""
        with self._lock:
            if self._in_flight is not batch:
                return
            self._in_flight = None
            self._queued_events -= batch.count
            self._queued_bytes -= batch.nbytes - batch.count
            self._spooled += batch.count

    def unspooled(self, count: int, *, own: bool, sent: bool, reason: str = "") -> None:
        """``count`` events were sent from the spool (or refused for ``reason``); ``own``:
        this channel wrote them, so they move from spooled to sent (or dropped).
        """
        with self._lock:
            if sent:
                self._unspooled += count
            if not own:
                return
            self._spooled -= count
            self._resolved += count
            if sent:
                self._sent += count
            else:
                self._dropped[reason] += count
                self._dropped_after_queue += count

    def spooled_count(self) -> int:
        """Events of this channel held in the spool."""
        return self._spooled

    def spill_mark(self) -> int:
        """Above how many held bytes a failing lane spills to the spool: half the bound."""
        return self._allowance // 2

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, deadline: float) -> None:
        """No more events (they are refused as ``closed``); what is queued may be sent until
        ``deadline``, then it is given up as ``close_timeout``.
        """
        with self._lock:
            self.closed = True
            self._close_deadline = deadline

    def close_deadline(self) -> float | None:
        """Until when a closed channel may send what it holds (``None`` while open)."""
        return self._close_deadline

    def held_by_this_thread(self) -> bool:
        """Whether this thread is inside one of its methods: a signal handler that
        interrupted an offer (the lock cannot be released until the handler returns).
        """
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def empty(self) -> bool:
        """Nothing queued or in flight."""
        return self._queued_events == 0 and not self._deferred

    def held_bytes(self) -> int:
        """Bytes of memory it holds (queued and in flight)."""
        return self._queued_bytes

    def set_allowance(self, max_bytes: int) -> None:
        """The bytes it may hold, set by the process's memory budget."""
        self._allowance = max_bytes  # an int store: atomic, read once per offer

    def note_error(self, error: str) -> None:
        """Remember a failure that is not about one batch."""
        with self._lock:
            self._last_error = error

    def last_error(self) -> str:
        """The last failure's text."""
        return self._last_error

    def after_fork_in_child(self) -> None:
        """Forget the parent's queue and counters (the parent still sends its events), and
        the lock, which another thread of the parent may have held at fork. A channel
        closed in the parent stays closed.
        """
        closed, deadline = self.closed, self._close_deadline
        self._reset()
        self.closed, self._close_deadline = closed, deadline  # detached once seen empty

    def stats(self) -> DeliveryStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            dropped = dict(self._dropped)
            in_flight = self._in_flight.count if self._in_flight else 0
            queued = self._queued_events + len(self._deferred)
            return DeliveryStats(
                emitted=self._sent + sum(dropped.values()) + queued + self._spooled,
                sent=self._sent,
                dropped=sum(dropped.values()),
                dropped_by_reason=dropped,
                dropped_by_level={
                    logging.getLevelName(level): count
                    for level, count in sorted(self._dropped_levels.items())
                },
                queued=queued - in_flight,
                in_flight=in_flight,
                quarantined=self._quarantined,
                truncated=self._truncated,
                repaired=self._repaired,
                requests=self._requests,
                retries=self._retries,
                bytes_sent=self._bytes_sent,
                wire_bytes_sent=self._wire_bytes_sent,
                queued_bytes=self._queued_bytes,
                last_error=self._last_error,
                send_interval=self.limits.flush_interval,
                spooled=self._spooled,
                unspooled=self._unspooled,
            )
