"""One producer's queue and counters: the bounded buffer between ``emit`` and the worker.

A channel belongs to one producer and owns its lock and its protocol: producers ``offer``
lines; a sender takes the next due batch (``take``: it is then *in flight*, its sender's
alone) and reports with ``sent``, ``dropped``, ``retry`` or ``split``; the exit drain and
the close deadline ``abandon`` what is left. Each batch is resolved once: an answer for a
batch already abandoned is ignored. No other module reads or writes a channel's state.

The caller's side copies each line into one growing NDJSON buffer (no I/O, no waiting;
retained line objects would cost ~2 µs each in allocator work), sealed as a batch at the
row or byte limit. Memory is bounded by events *and* bytes until a line is acknowledged or
dropped; the byte allowance is the memory budget's (``_budget``). At the bound the newest
event is refused (``queue_full``) unless ``_backpressure`` plans room for it.

Signals. A signal handler or ``__del__`` that re-enters ``offer`` on the same thread parks
its line in a deque (``append`` is atomic) that the next ``take`` queues. And a handler
(``KeyboardInterrupt`` too) runs only at calls and loops' backward jumps, so each change of
state is one straight run of assignments with no call in it ("the change"), after what it
computes with calls: the counters always agree (``stats()`` checks that they do).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Final

from tinybird_export import _diagnostics
from tinybird_export._backpressure import DISPLACES_FROM, Planner
from tinybird_export._batch import Abandoned, Batch, Limits, level_byte
from tinybird_export._line_encoder import REPAIRED, TRUNCATED
from tinybird_export._tally import CHOSEN, FlushMark, LossWatch, Tally
from tinybird_export.stats import DeliveryStats

_serials = itertools.count(1)
_LEVEL_BYTES: Final = {level: bytes((level,)) for level in range(256)}


class Channel:
    """The queue and counters of one producer (see the module docstring for the protocol).

    Args:
        datasource: The data source its events go to.
        host: The API host (for reports).
        wait: Whether its requests ask for ``wait=true``.
        limits: Its bounds.
        losses: Whom to tell of its drops (its producer's and its process's watches).
    """

    def __init__(
        self,
        datasource: str,
        host: str,
        *,
        wait: bool,
        limits: Limits,
        losses: tuple[LossWatch, ...] = (),
    ) -> None:
        self.datasource = datasource
        self._losses = losses
        self.host = host
        self.wait = wait
        self.limits = limits
        self._max_events = limits.queue_max_events
        self._batch_rows = limits.batch_max_rows
        self._batch_bytes = limits.batch_max_bytes
        self.serial = next(_serials)  # unlike id(), never reused: spool files name it
        self._reset()

    def __repr__(self) -> str:
        return f"<Channel {self.datasource} {self.host}>"

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent sends its own)."""
        self._lock = threading.RLock()
        self._deferred: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self._replaying = False  # _append_deferred is offering a parked line
        self._allowance = self.limits.queue_max_bytes
        self._pending = bytearray()  # the partial batch
        self._pending_levels = bytearray()  # its lines' levels
        self._pending_count = 0
        self._pending_since = 0.0
        self._ready: collections.deque[Batch] = collections.deque()  # sealed, not yet sent
        self._in_flight: Batch | None = None
        self._unanswered: Batch | None = None  # given up in flight (abandon): unknown
        self._queued_events = self._queued_bytes = 0
        self._emitted = 0  # every event that entered, queued or refused
        self._tally = Tally(watches=self._losses)  # where they went, what flushes see
        self._planner = Planner()  # backpressure, with its memory of the last shortfall
        self.closed = False  # read on every offer; only close() sets it
        self.close_deadline: float | None = None  # until when a closed channel may send

    # -- the caller's side -------------------------------------------------------------

    def offer(self, line: bytes, flags: int = 0, level: int = 0) -> bool | None:
        """Queue one line with ``encode_event``'s ``flags`` and its logging ``level`` (0:
        none), or drop it (``_make_room``); whether to wake the worker (a new partial
        batch arms its timer, a batch was sealed, or the call re-entered another).
        ``None``: the channel is closed, and the line neither entered nor was counted (its
        producer counts it as closed, or reopens and offers it to its new channel). Checked
        under the lock that ``close`` takes, so a line is either queued before the close
        (its flush waits for it) or refused: none lands in a channel detached meanwhile.
        """
        lock = self._lock
        replaying = False
        if lock._is_owned():  # type: ignore[attr-defined]  # re-entered: see the docstring
            if not self._replaying:
                if self.closed:  # this thread holds the lock: close() is not halfway
                    return None
                self._deferred.append((line, flags, level))
                return True
            self._replaying = False  # _append_deferred's own call: go on, under its lock
            replaying = True  # parked while open: it entered then, closed or not now
        with lock:
            if self.closed and not replaying:
                return None
            size = len(line)
            if flags:  # not in the invariant: counted whatever happens next
                self._tally.truncated += flags & TRUNCATED != 0
                self._tally.repaired += flags & REPAIRED != 0
            if (
                self._queued_events >= self._max_events
                or self._queued_bytes + size > self._allowance
            ) and not self._make_room(size, level_byte(level)):
                return False  # counted as entered and dropped
            try:
                level_bytes = _LEVEL_BYTES[level]
            except (KeyError, TypeError):  # None (makeLogRecord), past 255, not a number
                level_bytes = _LEVEL_BYTES[level_byte(level)]
            wake = False
            if self._pending_count and len(self._pending) + size >= self._batch_bytes:
                self._seal(full=True)  # this line would take the batch past its byte limit
            if not self._pending_count:  # a new partial batch: its interval timer starts
                self._pending_since = time.monotonic()
                wake = True
            # The change (no call from here: see the module docstring).
            self._emitted += 1
            self._queued_events += 1
            self._queued_bytes += size
            pending = self._pending
            pending += line
            pending += b"\n"
            self._pending_levels += level_bytes
            count = self._pending_count = self._pending_count + 1
            if count >= self._batch_rows:
                self._seal(full=True)
                wake = True
            return wake

    def _append_deferred(self) -> None:
        """Queue the lines that re-entered calls parked (caller holds the lock): each is
        offered again, as its call would have, had it not interrupted another.
        """
        while self._deferred:
            line, flags, level = self._deferred.popleft()
            self._replaying = True  # one call may proceed though this thread holds the lock
            self.offer(line, flags, level)

    def _seal(self, *, full: bool = False) -> None:
        batch = Batch(self._pending, self._pending_count, self._pending_levels, full=full)
        pending, levels = bytearray(), bytearray()
        # The change (no call from here).
        ready = self._ready
        ready += (batch,)
        self._pending, self._pending_levels, self._pending_count = pending, levels, 0

    def _make_room(self, size: int, level: int) -> bool:
        """At the bound: a WARNING-or-higher line displaces lower levels (``_backpressure``'s
        plan), never the batch in flight; else it is counted, dropped as ``queue_full``.
        """
        plan = None
        if level >= DISPLACES_FROM:
            plan = self._planner.plan(
                (self._tally.resolved, self._queued_events, self._tally.spooled),
                self._queued_batches,
                level,
                self._queued_bytes + size - self._allowance,
                self._queued_events + 1 - self._max_events,
                bound_bytes=self._allowance,
                bound_events=self._max_events,
            )
        tally = self._tally
        dropped, by_level = tally.dropped, tally.dropped_levels
        if plan is None:
            total, at_level = dropped.get("queue_full", 0) + 1, by_level.get(level, 0) + 1
            # The change (no call from here).
            self._emitted += 1
            dropped["queue_full"] = total
            if level:
                by_level[level] = at_level
            tally.report_loss()  # not in the invariant: last
            return False
        thinned, pending = collections.deque(plan.ready), plan.pending
        body, levels = (
            (bytearray(pending.body), bytearray(pending.levels)) if pending else (None, None)
        )
        total = dropped.get("queue_full", 0) + plan.events
        plan.levels.pop(0, None)  # unlevelled events: counted by reason only
        at_levels = {lvl: by_level.get(lvl, 0) + n for lvl, n in plan.levels.items()}
        # The change (no call from here but the last).
        self._ready = thinned
        if pending is not None:
            self._pending, self._pending_levels = body, levels  # type: ignore[assignment]
            self._pending_count = pending.count
        self._queued_events -= plan.events
        self._queued_bytes -= plan.nbytes
        tally.resolved += plan.events
        dropped["queue_full"] = total
        by_level.update(at_levels)  # not in the invariant: last
        tally.report_loss()
        return True

    def _queued_batches(self) -> tuple[list[Batch], bool]:
        """The queue but the batch in flight, oldest first; whether the last is partial."""
        if not self._pending_count:
            return list(self._ready), False
        return [*self._ready, Batch(self._pending, self._pending_count, self._pending_levels)], True

    def refuse(self, reason: str, count: int = 1) -> None:
        """Count ``count`` events that entered and were dropped before they could be queued."""
        if count < 1:
            return
        lost = reason not in CHOSEN
        with self._lock:
            tally = self._tally
            total = tally.dropped.get(reason, 0) + count
            # The change (no call from here).
            self._emitted += count
            tally.dropped[reason] = total
            if lost:
                tally.report_loss()  # after the change

    def request_flush(self) -> FlushMark:
        """Make everything queued so far due now; the mark a flush waits for: those events
        resolved (sent or dropped), from memory or, if they are spilled meanwhile, from the
        spool. What the channel had spooled before is not in it (the spool's backlog is).
        """
        with self._lock:
            mark = self._tally.mark(self._queued_events + len(self._deferred))
            self._tally.flush_due = mark
            return mark

    def reached(self, mark: FlushMark) -> bool:
        """Every event queued before ``mark`` was resolved (``Tally.reached``; unlocked)."""
        return self._tally.reached(mark)

    # -- the sender's side -------------------------------------------------------------

    def take(self, now: float, interval: float, draining: bool) -> Batch | float | None:
        """The next batch at ``now``, now in flight (the partial one sealed after waiting
        ``interval``, at once when ``draining``, closed or flushed); else when it is due;
        else ``None`` (nothing queued, or a batch already in flight).
        """
        if self._lock._is_owned():  # type: ignore[attr-defined]  # in a signal handler
            return now + 0.01  # on a thread inside offer: try again later
        with self._lock:
            self._append_deferred()
            if self._in_flight is not None:
                return None
            if not self._ready and self._pending_count:
                due_at = self._pending_since + interval
                flushing = not self._tally.reached(self._tally.flush_due)
                if not (draining or self.closed or now >= due_at or flushing):
                    return due_at
                self._seal()
            return self._claim_head()

    def full_batch_ready(self) -> bool:
        """Whether the next batch to send is full (``Batch.full``). Unlocked: a hint for the
        lane's pacing, which ``take`` then serves in order.
        """
        try:
            return self._ready[0].full
        except IndexError:
            return False

    def _claim_head(self) -> Batch | None:
        if not self._ready:
            return None
        batch = self._ready[0]
        # The change (no call from here).
        self._in_flight = batch
        del self._ready[0]
        return batch

    def sent(self, batch: Batch, *, quarantined: int, wire_bytes: int) -> bool:
        """The server acknowledged ``batch``; False if it had been abandoned meanwhile."""
        with self._lock:
            if self._in_flight is not batch:
                self._answered_late(batch, "sent", quarantined)
                return False
            self._count_request(batch)
            self._leave([batch], "sent", quarantined=quarantined, wire_bytes=wire_bytes)
            return True

    def dropped(self, batch: Batch, reason: str, error: str = "", *, requested: bool) -> None:
        """``batch`` is given up for ``reason`` (after a request, when ``requested``)."""
        with self._lock:
            if error:
                self._tally.last_error = error
            if requested:
                self._count_request(batch)
            if self._in_flight is batch:
                self._leave([batch], reason)
            elif requested:
                self._answered_late(batch, reason)

    def retry(self, batch: Batch, error: str, *, maybe_stored: bool = False) -> None:
        """``batch`` failed retryably: it goes back to the head of the queue, in order;
        ``maybe_stored``: its request was sent whole and got no answer.
        """
        with self._lock:
            self._tally.last_error = error
            self._count_request(batch)
            if self._in_flight is batch:
                batch.maybe_stored = maybe_stored
                self._back_from_flight(batch)

    def unclaim(self, batch: Batch) -> None:
        """Give ``batch`` back without a request (its sender stopped before sending it)."""
        with self._lock:
            if self._in_flight is batch:
                self._back_from_flight(batch)

    def split(self, batch: Batch, *, requested: bool = True) -> None:
        """413, or the search for a bad line: ``batch`` is replaced at the head by its two
        halves (after a request, when ``requested``).
        """
        with self._lock:
            if requested:
                self._count_request(batch)
            if self._in_flight is batch:
                self._back_from_flight(*batch.halves())

    def park(self, batch: Batch, error: str) -> None:
        """A 400 for a piece of an unconfirmed search (``_bad_line``): it goes back second,
        behind the other half, whose answer tells whether it holds a bad line.
        """
        with self._lock:
            self._tally.last_error = error
            self._count_request(batch)
            if self._in_flight is batch:
                batch.parked = True
                self._back_from_flight(batch, second=True)

    def drop_line(self, batch: Batch, index: int, reason: str, error: str) -> None:
        """The server refused line ``index`` of ``batch`` (and so the request): that line
        is dropped for ``reason``, the rest goes back to the head, in order. Three changes,
        each whole: the batch comes back as the line and the rest, the line is taken, and
        leaves (the counters agree between them too).
        """
        with self._lock:
            self._tally.last_error = error
            self._count_request(batch)
            if self._in_flight is batch:
                line, rest = batch.line_apart(index)
                self._back_from_flight(line, rest)
                self._claim_head()
                self._leave([line], reason)

    def _back_from_flight(self, *batches: Batch, second: bool = False) -> None:
        """The batch in flight returns to the head as ``batches`` (itself, its halves, a
        copy, or a line and the rest), or ``second``: behind the batch now first (a parked
        piece). The planner's memory no longer holds (its lines may be displaced again).
        """
        self._planner.forget()
        ready = collections.deque(batches)
        ready += self._ready
        if second and len(ready) > 1:
            ready[0], ready[1] = ready[1], ready[0]
        # The change (no call from here).
        self._ready = ready
        self._in_flight = None

    def _count_request(self, batch: Batch) -> None:
        self._tally.requests += 1
        self._tally.retries += batch.attempts > 0
        batch.attempts += 1

    def _leave(
        self,
        batches: list[Batch],
        to: str,
        *,
        quarantined: int = 0,
        wire_bytes: int = 0,
        ready: collections.deque[Batch] | None = None,
    ) -> int:
        """``batches`` (the one in flight among them) leave memory ``to`` "sent", "spool"
        or a drop reason, and ``ready`` becomes the queue if given; how many events.
        """
        count = sum(batch.count for batch in batches)
        raw = sum(batch.nbytes for batch in batches)  # newlines included
        tally, leaving = self._tally, to not in ("sent", "spool")
        total = tally.dropped.get(to, 0) + count if leaving and count else 0
        # The change (no call from here).
        if ready is not None:
            self._ready = ready
        self._in_flight = None
        self._queued_events -= count
        self._queued_bytes -= raw - count
        if to == "spool":
            tally.spooled += count
            return count
        tally.resolved += count
        if to == "sent":
            tally.sent, tally.bytes_sent = tally.sent + count, tally.bytes_sent + raw
            tally.quarantined += quarantined
            tally.wire_bytes_sent += wire_bytes
            return count
        if to == "unknown":  # not acknowledged, as far as anyone can tell: a loss too
            tally.unknown += count
        elif count:
            tally.dropped[to] = total
        if count:
            tally.report_loss()  # after the change
        return count

    def abandon(self, reason: str) -> Abandoned:
        """Give up everything queued, dropped for ``reason``, but the batch in flight and
        the batches whose last request got no answer: of unknown fate (the server may
        have stored them); how many events of each. Each event is counted once: a later
        answer for the batch in flight only moves it from unknown to sent or dropped.
        """
        with self._lock:
            self._append_deferred()  # lines a signal handler logged count too
            if self._pending_count:
                self._seal()
            in_flight = self._in_flight
            unsent = [batch for batch in self._ready if not batch.maybe_stored]
            unanswered = [batch for batch in self._ready if batch.maybe_stored]
            if in_flight is not None:
                unanswered.append(in_flight)
                self._unanswered = in_flight
            # Two changes, each whole: the counters agree between them too.
            dropped = self._leave(unsent, reason, ready=collections.deque())
            unknown = self._leave(unanswered, "unknown") if unanswered else 0
            return Abandoned(dropped, unknown)

    def _answered_late(self, batch: Batch, to: str, quarantined: int = 0) -> None:
        """The answer for the batch in flight that ``abandon`` gave up, if ``batch`` is that
        one: it leaves unknown for ``to`` (``Tally.answered_late``), once.
        """
        if self._unanswered is batch:
            self._tally.answered_late(batch.count, batch.nbytes, to, quarantined)
            self._unanswered = None  # after: no second answer comes for one request

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
            return self._claim_head()

    def spooled(self, batch: Batch) -> None:
        """``batch`` is on disk: it leaves memory, counted as spooled."""
        with self._lock:
            if self._in_flight is batch:
                self._leave([batch], "spool")

    def unspooled(
        self,
        count: int,
        *,
        own: bool,
        sent: bool,
        reason: str = "",
        quarantined: int = 0,
        relayed: bool = False,
    ) -> None:
        """``count`` events were sent from the spool, or refused for ``reason``; ``own``:
        this channel wrote them, so they move from spooled to sent (or dropped). ``relayed``:
        another process sent them (its receipt says so), not this one.
        """
        with self._lock:
            self._tally.unspool(
                count, own=own, sent=sent, reason=reason, quarantined=quarantined, relayed=relayed
            )

    def spooled_count(self) -> int:
        """Events of this channel held in the spool (no lock, no check: the exit path)."""
        return self._tally.spooled

    def spill_mark(self) -> int:
        """Above how many held bytes a failing lane spills to the spool: half the bound."""
        return self._allowance // 2

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, deadline: float) -> None:
        """No more events (refused as ``closed``); what is queued may go until ``deadline``."""
        with self._lock:
            self.closed = True
            self.close_deadline = deadline

    def held_by_this_thread(self) -> bool:
        """Whether this thread is inside one of its methods (a signal landed in an offer)."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def in_flight(self) -> bool:
        """A batch of it is being sent."""
        return self._in_flight is not None

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
        self._tally.last_error = error  # one store: atomic

    def last_error(self) -> str:
        """The last failure's text."""
        return self._tally.last_error

    def after_fork_in_child(self) -> None:
        """Forget the parent's queue, counters (the parent sends its events) and lock (held
        at fork, maybe); a channel closed in the parent stays closed.
        """
        closed, deadline = self.closed, self.close_deadline
        self._reset()
        self.closed, self.close_deadline = closed, deadline  # detached once seen empty

    def stats(self) -> DeliveryStats:
        """A consistent snapshot. ``emitted`` is counted apart from where events went, so
        the invariant is a real check (``DeliveryStats.accounted``), made here: a broken
        one is a bug of the package, said once on stderr, and the snapshot is returned all
        the same (a monitoring endpoint calling ``stats()`` must not get an exception).
        """
        with self._lock:
            in_flight = self._in_flight.count if self._in_flight else 0
            parked = len(self._deferred)  # entered, queued at the next take
            stats = self._tally.snapshot(
                emitted=self._emitted + parked,
                queued=self._queued_events + parked - in_flight,
                in_flight=in_flight,
                queued_bytes=self._queued_bytes,
                interval=self.limits.flush_interval,
            )
        if not stats.accounted():
            _diagnostics.say_once(
                "uncounted",
                f"an event went uncounted (a bug in tinybird-export; please report it): "
                f"emitted={stats.emitted} but sent={stats.sent} dropped={stats.dropped} "
                f"queued={stats.queued} in_flight={stats.in_flight} spooled={stats.spooled} "
                f"unknown={stats.unknown}",
            )
        return stats
