"""The senders of one Events API host: a lane per data source, supervised threads.

One worker (up to ``MAX_SENDERS`` daemon threads, one connection pool) serves every channel
that sends to the same host with the same token and transport settings. Its channels are
grouped in *lanes*, one per data source: a lane has at most one request in flight, so each
data source's requests stay in order, and a lane that hangs or is paused for a retry holds
up no other. A second thread starts only when a lane has work while every thread is busy
with another lane, so a process with one data source runs one thread.

Threads sleep on a ``SimpleQueue`` (whose ``put`` is safe in a signal handler, unlike
``Event.set``) and wake when a channel's queue gets its first line (arming the interval
timer), when a batch fills, on ``flush()`` and at exit; they never poll. The loop is
supervised: an unexpected exception is reported once on stderr, its batch dropped and
counted as ``error``, and the loop goes on; a thread that dies anyway is replaced by the
next enqueue or flush. When no thread runs (``background=False``, or during exit) the same
code sends on the calling thread, within its deadline.

A failed batch stays at the head of its channel and its lane is paused (backoff, or the
server's ``Retry-After``); the policy itself is ``_retry``'s.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from tinybird_export import _diagnostics, _retry
from tinybird_export._channel import Batch, Channel
from tinybird_export._client import Attempt, EventsClient
from tinybird_export._config import TinybirdConfig
from tinybird_export._pacing import Pacing
from tinybird_export._spool import Spool, SpooledBatch

if TYPE_CHECKING:
    from tinybird_export._process import Process

THREAD_NAME: Final = "tinybird-export-worker"
MAX_SENDERS: Final = 4
"""Concurrent requests per host at most (each to a different data source)."""
_POLL: Final = 0.05
"""How often a waiting flush or drain re-checks for lines queued by a signal handler."""
_SPILL_WAIT: Final = 2.0
"""Seconds an exit or close spill waits for another one under way on the same channel."""


class _Spilling:
    """Held while one channel's batches move to the spool, and by which thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread = 0


class Lane:
    """The channels of one data source: one request in flight at a time, in order, paced
    by the server's rate-limit signals (``_pacing``).
    """

    def __init__(self, datasource: str, flush_interval: float, adaptive: bool) -> None:
        self.datasource = datasource
        self.channels: list[Channel] = []
        self.busy = False  # claimed by a sender
        self.paused_until = 0.0
        self.failing = False  # the last attempt failed retryably: an outage, for the spool
        self.failures = 0  # retryable failures in a row of the spool's files
        self.rotation = 0
        self.pacing = Pacing(flush_interval, adaptive)

    def reset(self) -> None:
        self.busy = False
        self.paused_until = 0.0
        self.failing = False
        self.pacing = Pacing(self.pacing.base, self.pacing.enabled)


@dataclasses.dataclass(frozen=True)
class _Claim:
    lane: Lane
    channel: Channel
    batch: Batch | None  # a channel's batch, or
    spooled: SpooledBatch | None = None  # a spool file (the channel is then its writer's)


class Worker:
    """Sends the lines of its channels to one Events API host.

    Args:
        config: The settings of the first producer (host, token and transport are shared
            by every producer on this worker).
        process: The owner of process-wide state (exit deadline, sending threads).
    """

    def __init__(self, config: TinybirdConfig, process: Process) -> None:
        self.host = config.host
        self.exit_timeout = config.exit_timeout
        self.background = config.background
        self._adaptive = config.adaptive
        self._config = config
        self._process = process
        self._lanes: dict[str, Lane] = {}
        self._rotation = 0  # which lane a claim looks at first: fairness between lanes
        self._reset()

    def __repr__(self) -> str:
        return f"<Worker {self.host} lanes={len(self._lanes)}>"

    def _reset(self) -> None:
        self._lock = threading.RLock()  # lanes, claims and the thread counts
        self._spilling: dict[int, _Spilling] = {}  # by channel serial: see _spill
        # Made at first use in this process, not here: a forked gunicorn gevent worker
        # patches threading and queue after the fork hook ran, and waits made before the
        # patch would block its whole event loop.
        self._waits: tuple[queue.SimpleQueue[None], threading.Condition] | None = None
        self._client = EventsClient(self._config)
        config = self._config
        self._spool = (
            self._process.spool(config.spool_dir, config.spool_max_bytes)
            if config.spool_dir
            else None
        )
        self._created = time.monotonic()
        self._orphans_reported = False
        self._failing_since: float | None = None
        self._senders = 0  # threads running _run
        self._idle = 0  # of which waiting for work
        self._starting = False
        self._stopping = False

    def after_fork_in_child(self) -> None:
        """New locks, pool and (lazily) threads; the parent's queues are forgotten."""
        self._reset()
        for lane in self._lanes.values():
            lane.reset()
            for channel in lane.channels:
                channel.after_fork_in_child()

    # -- channels (called by the process owner) -----------------------------------------

    def add(self, channel: Channel) -> None:
        """Serve ``channel`` in its data source's lane."""
        with self._lock:
            lane = self._lanes.get(channel.datasource)
            if lane is None:
                lane = Lane(channel.datasource, channel.limits.flush_interval, self._adaptive)
                self._lanes[channel.datasource] = lane
            lane.channels = [*lane.channels, channel]

    def remove(self, channel: Channel) -> bool:
        """Stop serving ``channel``; whether any channel is left."""
        with self._lock:
            self._spilling.pop(channel.serial, None)
            lane = self._lanes.get(channel.datasource)
            if lane is not None:
                lane.channels = [c for c in lane.channels if c is not channel]
                if not lane.channels:
                    del self._lanes[channel.datasource]  # a sender holding it finishes alone
            return bool(self._lanes)

    def send_interval(self, datasource: str, flush_interval: float) -> float:
        """How long a partial batch of ``datasource`` waits now: ``flush_interval``, or
        longer while the server's rate limit paces it.
        """
        lane = self._lanes.get(datasource)
        return flush_interval if lane is None else lane.pacing.interval(flush_interval)

    def channels(self) -> list[Channel]:
        """Every channel it serves."""
        with self._lock:
            return [c for lane in self._lanes.values() for c in lane.channels]

    def stop(self) -> None:
        """Let the threads end (the last one closes the pool)."""
        with self._lock:
            self._stopping = True
            senders = self._senders
        for _ in range(senders):
            self._wakeup_queue().put(None)
        if not senders:
            self._client.close()

    # -- waking and starting (the caller's thread) --------------------------------------

    def notify(self, channel: Channel) -> None:
        """Wake a thread for ``channel``, starting one if none can take its lane."""
        if not self.background:
            return  # flush() sends on the caller's thread
        self._wakeup_queue().put(None)
        if self._needs_sender(channel):
            self._start_sender()

    def _can_start(self) -> bool:
        return self.background and not self._stopping and not self._process.exiting()

    def _needs_sender(self, channel: Channel) -> bool:
        # Unlocked reads: a stale answer costs one thread more, or one enqueue later.
        if not self._can_start():
            return False
        if self._senders == 0:
            return True
        if self._idle or self._senders >= MAX_SENDERS:
            return False
        lane = self._lanes.get(channel.datasource)
        return lane is not None and not lane.busy

    def _start_sender(self) -> None:
        with self._lock:
            if self._starting or self._senders >= MAX_SENDERS:
                return  # _starting: a signal handler interrupted Thread.start on this thread
            self._starting = True
            self._senders += 1
        try:
            threading.Thread(target=self._run, name=THREAD_NAME, daemon=True).start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            with self._lock:
                self._senders -= 1
        finally:
            self._starting = False

    # -- the threads' loop ----------------------------------------------------------------

    def _run(self) -> None:
        ident = threading.get_ident()
        self._process.sending_threads.add(ident)
        try:
            while not self._stopping:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - supervised: report, go on
                    _report_internal_error(exc, "", self._client.redact)
        finally:
            self._process.sending_threads.discard(ident)
            with self._lock:
                self._senders -= 1
                last = self._stopping and self._senders == 0
            if last:
                self._client.close()

    def _step(self) -> None:
        claim = self._claim(time.monotonic())
        if isinstance(claim, _Claim):
            if self._idle:  # another lane may be due too: let an idle thread look
                self._wakeup_queue().put(None)
            self._send(claim, None)
            return
        with self._lock:
            self._idle += 1
        try:
            timeout = None if claim is None else max(claim - time.monotonic(), 0.001)
            try:
                self._wakeup_queue().get(timeout=timeout)
                while True:  # one wake-up is enough: the loop looks at every lane
                    self._wakeup_queue().get_nowait()
            except queue.Empty:
                pass
        finally:
            with self._lock:
                self._idle -= 1

    def _claim(self, now: float) -> _Claim | float | None:
        """The next due batch, claimed with its lane; else when one may be due.

        The worker's lock is never held while a channel's lock is taken: a signal handler
        that drains on a thread inside ``offer`` must not wait for a sender that waits for
        that channel.
        """
        finished: list[Channel] = []
        wait_until: float | None = None
        draining = self._process.exiting()
        with self._lock:
            lanes = list(self._lanes.values())
            start = self._rotation
        for offset in range(len(lanes)):
            lane = lanes[(start + offset) % len(lanes)]
            for channel in lane.channels:  # closed ones: done, given up, or their deadline
                deadline = channel.close_deadline()
                if deadline is not None and (channel.empty() or now >= deadline):
                    finished.append(channel)
                elif deadline is not None:
                    wait_until = _earliest(wait_until, deadline)
            with self._lock:
                if lane.busy:
                    continue
                lane.busy = True
            # Paused for a retry, or paced by the rate limit (not at exit: the budget is
            # short, and a 429 still pauses through Retry-After). A full batch is not paced,
            # only held while the server's window has no room left (_pacing).
            ready_at = paced_until = lane.paused_until
            if not draining:
                paced_until = max(ready_at, lane.pacing.not_before())
                full = any(channel.full_batch_ready() for channel in lane.channels)
                ready_at = max(ready_at, lane.pacing.not_before(full_batch=full))
            got: _Claim | float | None = None
            try:
                if self._spool is not None:
                    got = self._spool_step(self._spool, lane, draining, ready_at > now)
                if got is None and ready_at <= now:
                    got = self._take(lane, now, draining, finished, paced_until)
                elif got is None:
                    got = ready_at
            except BaseException:
                with self._lock:  # the supervisor reports it; the lane must not stay claimed
                    lane.busy = False
                raise
            if isinstance(got, _Claim):
                with self._lock:
                    self._rotation = (start + offset + 1) % len(lanes)  # fairness
                self._finish(finished)
                return got
            with self._lock:
                lane.busy = False
            if got is not None:
                wait_until = _earliest(wait_until, got)
        self._finish(finished)
        return wait_until

    def _spool_step(self, spool: Spool, lane: Lane, draining: bool, paused: bool) -> _Claim | None:
        """With a spool (the lane claimed): write the oldest batches to disk while the
        lane is failing and memory fills (everything at exit), and, once the lane may
        send, send the spool's files first, oldest first, so that the data source's order
        holds across memory and disk.
        """
        if not self._orphans_reported and time.monotonic() - self._created > 5:
            self._orphans_reported = True  # every producer of the app exists by now
            spool.report_unmatched(self._process.known_lanes())
        backlog = spool.has_pending(self.host, lane.datasource)
        if lane.failing or backlog:
            for channel in lane.channels:
                self._spill(spool, channel, everything=draining and lane.failing)
        if paused or not backlog:
            return None
        spooled = spool.claim(self.host, lane.datasource)
        if spooled is None:
            return None
        channels = list(lane.channels)  # its last channel may be detached meanwhile
        if not channels:
            spool.release(spooled)
            return None
        writer = next((c for c in channels if spooled.own(c.serial)), channels[0])
        return _Claim(lane, writer, None, spooled)

    def _spill(self, spool: Spool, channel: Channel, *, everything: bool) -> int:
        """Move the oldest batches of ``channel`` to the spool once it holds half its
        bound, down to a quarter (``everything``: all of them); the events written.
        """
        written = 0
        # Past half the bound, spill down to a quarter: the caller's next bursts find room.
        if not everything and channel.held_bytes() <= channel.spill_mark():
            return 0
        # One spill of a channel at a time: two (the exit drain and a sender, or two senders
        # finishing one closed channel) would each take the batch the other is writing, and
        # write it twice. A sender that finds one under way leaves the work to it;
        # "everything" (exit, a close deadline) waits for it, within a bound, then takes the
        # rest. On the thread that spills (a signal's exit drain interrupting it): skip.
        with self._lock:
            spilling = self._spilling.setdefault(channel.serial, _Spilling())
        if spilling.thread == threading.get_ident():
            return 0
        if not spilling.lock.acquire(timeout=_SPILL_WAIT if everything else 0):
            return 0
        spilling.thread = threading.get_ident()
        try:
            while everything or channel.held_bytes() > channel.spill_mark() // 2:
                batch = channel.take_for_spool(everything)
                if batch is None:
                    break
                owner = (os.getpid(), channel.serial)
                if not spool.write(batch.body, batch.count, self.host, channel.datasource, owner):
                    channel.unclaim(batch)  # full: memory's drop policy applies
                    break
                channel.spooled(batch)
                written += batch.count
        finally:
            spilling.thread = 0
            spilling.lock.release()
        return written

    def resume_spool(self, channel: Channel) -> None:
        """A new producer: if the spool holds files for its data source (a previous
        process's), start sending them now rather than at its first event.
        """
        if self._spool is not None and self._spool.has_pending(self.host, channel.datasource):
            self.notify(channel)

    def spool_directory(self) -> str:
        """The spool's directory ("" without one)."""
        return str(self._spool.directory) if self._spool is not None else ""

    def spool_counts(self) -> tuple[int, int]:
        """(bytes the spool holds, files that failed their check); zeros without one."""
        spool = self._spool
        return (spool.held_bytes(), spool.corrupt) if spool is not None else (0, 0)

    def spill_remaining(self) -> None:
        """At exit, after the drain: write whatever is still queued or in flight to the
        spool, if there is one.
        """
        spool = self._spool
        if spool is None:
            return
        for channel in self.channels():
            spool.failpoint("exit")  # killed during the exit drain (the tests)
            self._spill(spool, channel, everything=True)

    @staticmethod
    def _take(
        lane: Lane, now: float, draining: bool, skip: list[Channel], paced_until: float
    ) -> _Claim | float | None:
        """A batch from one of the lane's channels, in turn; else when one may be due.
        Until ``paced_until``, only a channel whose next batch is full may send.
        """
        wait_until: float | None = None
        channels = lane.channels
        for index in range(len(channels)):
            channel = channels[(lane.rotation + index) % len(channels)]
            if channel in skip:
                continue
            if now < paced_until and not channel.full_batch_ready():
                wait_until = _earliest(wait_until, paced_until)
                continue
            got = channel.take(now, lane.pacing.interval(channel.limits.flush_interval), draining)
            if isinstance(got, Batch):
                lane.rotation = (lane.rotation + index + 1) % len(channels)
                return _Claim(lane, channel, got)
            if got is not None:
                wait_until = _earliest(wait_until, got)
        return wait_until

    def _finish(self, channels: list[Channel]) -> None:
        """Detach closed channels that are empty, or past their close deadline (what they
        still hold goes to the spool if there is one, else is given up).
        """
        for channel in channels:
            if self._spool is not None and not channel.empty():
                self._spill(self._spool, channel, everything=True)
            lost = channel.abandon("close_timeout")
            if lost:
                _diagnostics.say(
                    f"{lost} event(s) of a closed producer for {channel.datasource!r} were not "
                    f"delivered by its close deadline ({channel.last_error() or 'no answer'}); "
                    "counted as 'close_timeout'."
                )
            self._process.detach(self, channel)
            self._notify_progress()

    # -- sending ---------------------------------------------------------------------------

    def _send(self, claim: _Claim, deadline: float | None) -> None:
        """One attempt for a claimed batch, on this thread; releases the claim."""
        lane, channel, batch, spooled = claim.lane, claim.channel, claim.batch, claim.spooled
        count = spooled.count if spooled is not None else batch.count  # type: ignore[union-attr]
        resolved = False
        try:
            # wait=true answers can take ~25 s (events-api docs): 60 s for those.
            timeout = max(self._config.timeout, 60.0) if channel.wait else self._config.timeout
            # The attempt's total deadline: its own budget, capped by the caller's (a
            # synchronous flush), the exit budget and a closed channel's deadline.
            limits = (deadline, self._process.exit_deadline(), channel.close_deadline())
            cap = time.monotonic() + self._config.connect_timeout + timeout
            cap = min([cap, *(d for d in limits if d is not None)])
            lane.pacing.started(time.monotonic())
            attempt = self._client.post(
                channel.datasource,
                batch.body if batch is not None else b"",
                wait=channel.wait,
                read_timeout=timeout,
                deadline=cap,
                gzipped=spooled.body if spooled is not None else None,
            )
            lane.pacing.answered(attempt.status, attempt.headers, time.monotonic())
            if spooled is None:
                self._apply(lane, channel, batch, attempt)  # type: ignore[arg-type]
            else:
                self._apply_spooled(self._spool, lane, channel, spooled, attempt)  # type: ignore[arg-type]
            resolved = True
        except Exception as exc:  # noqa: BLE001 - a bug is not a transport error: drop it
            error = self._client.redact(f"internal error: {exc!r}")
            if spooled is None:
                channel.dropped(batch, "error", error, requested=False)  # type: ignore[arg-type]
            else:
                self._spool.done(spooled)  # type: ignore[union-attr]
                own = spooled.own(channel.serial)
                channel.unspooled(count, own=own, sent=False, reason="error")
            resolved = True
            _report_internal_error(
                exc, f"{count} event(s) for {lane.datasource!r}", self._client.redact
            )
        finally:
            if batch is not None:
                channel.unclaim(batch)  # a no-op unless a BaseException ended the attempt
            elif not resolved:
                self._spool.release(spooled)  # type: ignore[union-attr,arg-type]
            with self._lock:
                lane.busy = False
            if channel.closed:
                self._process.budget.rebalance()
            self._notify_progress()

    def _apply_spooled(
        self, spool: Spool, lane: Lane, channel: Channel, spooled: SpooledBatch, attempt: Attempt
    ) -> None:
        own = spooled.own(channel.serial)
        outcome = _retry.classify(attempt.status)
        if outcome is _retry.Outcome.RETRY:
            self._say_failing(lane, attempt)
            spool.release(spooled)
            lane.paused_until = time.monotonic() + _retry.delay(
                attempt.status, attempt.headers, lane.failures
            )
            lane.failing, lane.failures = True, lane.failures + 1
            channel.note_error(_describe(self.host, attempt))
            return
        if outcome is _retry.Outcome.SPLIT and spool.split(spooled, self.host, lane.datasource):
            spool.done(spooled)  # as in memory: its halves are sent in its place
            return
        if outcome is _retry.Outcome.SENT:
            spool.failpoint("acked")  # killed after the answer, before the file is removed
        spool.done(spooled)
        lane.failing, lane.failures = False, 0
        if outcome is _retry.Outcome.SENT:
            self._say_recovered()
            channel.unspooled(spooled.count, own=own, sent=True)
            return
        status = attempt.status or 0
        channel.unspooled(spooled.count, own=own, sent=False, reason=f"http_{status}")
        _diagnostics.say_once(
            f"spool-drop:{lane.datasource}:{status}",
            f"{_describe(self.host, attempt)} for a spooled batch of {spooled.count} event(s) "
            f"for {lane.datasource!r}: {_retry.drop_hint(status, lane.datasource, self.host)}. "
            "Dropped without retrying.",
        )

    def _apply(self, lane: Lane, channel: Channel, batch: Batch, attempt: Attempt) -> None:
        outcome = _retry.classify(attempt.status)
        lane.failing = outcome is _retry.Outcome.RETRY
        if outcome is _retry.Outcome.RETRY:
            delay = _retry.delay(attempt.status, attempt.headers, batch.attempts)
            lane.paused_until = time.monotonic() + delay
            channel.retry(batch, _describe(self.host, attempt))
            self._say_failing(lane, attempt)
        elif outcome is _retry.Outcome.SENT:
            self._say_recovered()
            channel.sent(batch, quarantined=attempt.quarantined_rows, wire_bytes=attempt.wire_bytes)
            if attempt.quarantined_rows:
                _diagnostics.say_once(
                    f"quarantine:{channel.datasource}",
                    f"{attempt.quarantined_rows} row(s) sent to {channel.datasource!r} did not "
                    f"fit its schema and went to {channel.datasource}_quarantine; they are not "
                    "retried (stats().quarantined counts them).",
                )
        elif outcome is _retry.Outcome.SPLIT and batch.count > 1:
            channel.split(batch)
        else:
            self._drop(channel, batch, attempt)

    def _say_failing(self, lane: Lane, attempt: Attempt) -> None:
        """The first failure of a kind is said at once, then not again until the host
        answers (``_say_recovered``) and fails anew.
        """
        if self._process.exiting():
            return  # the exit report says what could not be delivered, and why
        kind = attempt.kind if attempt.status is None else f"http_{attempt.status}"
        where = "" if attempt.status is None else f":{lane.datasource}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        kept = "up to the memory bound" + (", then in the spool" if self._spool else "")
        _diagnostics.say_once(
            f"failing:{self.host}:{kind}{where}",
            f"{_describe(self.host, attempt)}: "
            f"{_retry.failure_hint(attempt.status, attempt.kind, self.host)}. Events are kept "
            f"({kept}) and retried; this is said again only after a recovery.",
        )

    def _say_recovered(self) -> None:
        since = self._failing_since
        if since is None:
            return
        self._failing_since = None
        if _diagnostics.forget(f"failing:{self.host}:"):
            _diagnostics.say(
                f"{self.host} answers again: delivering, after {time.monotonic() - since:.0f} s "
                "of failures."
            )

    def _drop(self, channel: Channel, batch: Batch, attempt: Attempt) -> None:
        status = attempt.status or 0
        reason = "too_large" if status == 413 else f"http_{status}"
        error = _describe(self.host, attempt)
        channel.dropped(batch, reason, error, requested=True)
        hint = (
            "a single event exceeds the request cap (lower max_event_bytes)"
            if status == 413
            else _retry.drop_hint(status, channel.datasource, self.host)
        )
        _diagnostics.say_once(
            f"drop:{channel.datasource}:{status}",
            f"{error} for data source {channel.datasource!r}: {hint}. "
            f"Dropped {batch.count} event(s) without retrying; later batches are "
            f"dropped the same way and counted in stats().dropped_by_reason[{reason!r}].",
        )

    def _wakeup_queue(self) -> queue.SimpleQueue[None]:
        return self._wait_primitives()[0]

    def _progress(self) -> threading.Condition:
        return self._wait_primitives()[1]

    def _wait_primitives(self) -> tuple[queue.SimpleQueue[None], threading.Condition]:
        waits = self._waits
        if waits is None:
            with self._lock:
                if self._waits is None:
                    self._waits = (queue.SimpleQueue(), threading.Condition(threading.RLock()))
                waits = self._waits
        return waits

    def _notify_progress(self) -> None:
        progress = self._progress()
        with progress:
            progress.notify_all()

    # -- flush and drain (the caller's or the exiting thread) ---------------------------

    def wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Have everything sent until ``done()`` or ``deadline``: by the threads when they
        run (a dead one is replaced first), else on this thread.
        """
        exit_deadline = self._process.exit_deadline()
        if exit_deadline is not None:
            deadline = min(deadline, exit_deadline)
        if self._senders == 0 and self._can_start():
            self._start_sender()
        if not self._senders:
            return self._send_here(done, deadline)
        self._wakeup_queue().put(None)
        progress = self._progress()
        with progress:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                progress.wait(min(remaining, _POLL))
        return True

    def hurry(self) -> None:
        """Make every queued event due now (a flush of every channel)."""
        for channel in self.channels():
            channel.request_flush()
        for _ in range(max(self._senders, 1)):
            self._wakeup_queue().put(None)

    def drain(self, deadline: float) -> None:
        """Send everything queued until ``deadline``, sending on this thread too when no
        thread can take a due lane (none runs, or every one is busy with another).
        """
        self._send_here(lambda: all(c.empty() for c in self.channels()), deadline)

    def _send_here(self, done: Callable[[], bool], deadline: float) -> bool:
        ident = threading.get_ident()
        sending = self._process.sending_threads
        outer = ident in sending  # a signal handler on a sending thread
        sending.add(ident)
        try:
            while not done():
                now = time.monotonic()
                if now >= deadline:
                    return False
                claim = self._claim(now)
                if isinstance(claim, _Claim):
                    self._send(claim, deadline)
                    continue
                wait = deadline - now if claim is None else min(claim, deadline) - now
                progress = self._progress()
                with progress:  # another thread's progress, or a queued line
                    progress.wait(min(max(wait, 0.001), _POLL))
            return True
        finally:
            if not outer:
                sending.discard(ident)


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


def _describe(host: str, attempt: Attempt) -> str:
    if attempt.status is None:
        return f"{host}: {attempt.error}"
    text = f": {attempt.error}" if attempt.error else ""
    return f"{host} answered {attempt.status}{text}"


def _report_internal_error(exc: Exception, lost: str, redact: Callable[[str], str] = str) -> None:
    """Say once per kind of error where it happened, and what to do; the loop goes on."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    dropped = f"; {lost} dropped, counted as 'error'" if lost else ""
    if isinstance(exc, RecursionError) and "gevent" in sys.modules:
        # gevent's ssl patching applied after ssl was imported (gunicorn --preload with
        # gevent workers) recurses in SSLContext: gevent's docs say patch first.
        advice = (
            " gevent monkey-patched ssl after it was imported: call "
            "gevent.monkey.patch_all() before anything else is imported (first line of "
            "gunicorn.conf.py, or drop --preload)."
        )
    else:
        advice = " Sending goes on; please report this."
    _diagnostics.say_once(
        f"internal:{type(exc).__name__}{where}",
        redact(f"internal error in the sender ({type(exc).__name__}: {exc}{where}){dropped}.")
        + advice,
    )
