"""What the handler, the event sender and the exporters share: a channel on a shared worker.

``put`` is the caller's-thread half of the pipeline (hook, encode, queue: no I/O, no
waiting); ``flush``, ``close`` and ``stats`` are the per-producer controls. Every event a
producer is handed enters its channel's count (``emitted``), queued or refused.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

from tinybird_export import _diagnostics, _exit, _runtime_checks
from tinybird_export._async import run_blocking, until
from tinybird_export._batch import Limits
from tinybird_export._channel import Channel
from tinybird_export._config import TinybirdConfig
from tinybird_export._delivery_messages import give_up
from tinybird_export._flush_round import FlushRound
from tinybird_export._line_encoder import encode_event, safe_str
from tinybird_export._process import PROCESS, Process
from tinybird_export._reopen_claim import Line, ReopenClaim
from tinybird_export._tally import LossWatch
from tinybird_export._worker import Worker
from tinybird_export.stats import DeliveryStats, total


class Producer:
    """One handler's (or sender's, or exporter's) channel on the shared worker.

    Args:
        config: The resolved settings.
        label: What to call the owner in diagnostics ("TinybirdHandler").
        flushed_by_logging: Whether it is a ``logging`` handler: ``logging.shutdown``
            flushes it at exit, so that records queued after the exit drain go out in one
            batch (other producers send such late events on the calling thread); and a
            later logging configuration may close it while leaving it attached, so that it
            reopens when it still gets records, as ``logging.FileHandler`` does.
        process: The owner of process-wide state (``PROCESS``; another in unit tests).
    """

    def __init__(
        self,
        config: TinybirdConfig,
        label: str,
        *,
        flushed_by_logging: bool = False,
        process: Process = PROCESS,
    ) -> None:
        self._process = process
        self.config = config
        self.label = label
        self._sends_late = not flushed_by_logging
        self._reopens = flushed_by_logging
        self._reopening = ReopenClaim()  # never waited for
        self._losses = LossWatch()  # what flush() reports: drops of every opening
        self._retired: list[Channel] = []  # closed channels of earlier openings (stats)
        self.channel = self._new_channel()
        self.worker: Worker | None = None
        if config.enabled and not config.token:
            _diagnostics.say_once(
                "no-token",
                f"TINYBIRD_TOKEN is not set, so {label} is disabled and its events are "
                "dropped (counted as 'disabled'). Set TINYBIRD_TOKEN (or token=) to send "
                "them: to try it without an account, `tinybird-export local` serves a "
                "Tinybird on this machine and prints the TINYBIRD_HOST and TINYBIRD_TOKEN "
                "to export. Or set TINYBIRD_ENABLED=false to disable it quietly.",
            )
        elif config.enabled:
            self.worker = self._process.attach(config, self.channel, label)
            _exit.check_uwsgi()
            _runtime_checks.producer_started()
        if self.worker is None:
            self.channel.close(0.0)  # disabled: its channel refuses every line (counted)
        self._checks_pending = self.worker is not None  # at its first batches, not per record
        self._before_send = config.before_send
        self.has_before_send = config.before_send is not None
        self.max_event_bytes = config.max_event_bytes

    def _new_channel(self) -> Channel:
        config = self.config
        limits = Limits(
            queue_max_events=config.queue_max_events,
            queue_max_bytes=config.queue_max_bytes,
            batch_max_rows=config.batch_max_rows,
            batch_max_bytes=config.batch_max_bytes,
            flush_interval=config.flush_interval,
        )
        losses = (self._losses, self._process.losses)
        return Channel(
            config.datasource, config.host, wait=config.wait, limits=limits, losses=losses
        )

    def put(self, event: dict[str, Any], level: int = 0) -> None:
        """Queue one event on the caller's thread: hook, encode, append.

        Never blocks; bad data is repaired, truncated or dropped and counted, not raised.
        """
        if self._before_send is not None:
            hooked = self._run_before_send(event)
            if hooked is None:
                return
            event = hooked
        line, flags = encode_event(event, self.max_event_bytes)
        self.offer(line, flags, level)

    def offer(self, line: bytes | None, flags: int = 0, level: int = 0) -> None:
        """Queue one encoded line (``None``: too large even when truncated), with
        ``encode_event``'s flags and the record's logging level (0: none).

        Whether the producer is open is its channel's to say, under the channel's lock
        (``Channel.offer``): a line that finds it closed, even by a ``close()`` that ran
        after this call read ``self.channel``, is counted here, or offered again to the
        channel of a reopened handler; none is lost.
        """
        if line is None:
            self._refuse_too_large()
            return
        channel = self.channel
        while (wake := channel.offer(line, flags, level)) is None:
            reopened = self._unaccepted(channel, (line, flags, level))
            if reopened is None:
                return
            channel = reopened
        if wake:
            self._wake(channel)

    def _unaccepted(self, channel: Channel, line: Line) -> Channel | None:
        """A ``line`` ``channel`` refused because it is closed: counted (disabled, or
        closed), or the channel to offer it to (a handler reopened, or reopened meanwhile);
        or parked for a reopen under way to queue.
        """
        if self.worker is None:
            channel.refuse("disabled")
            return None
        if not self._reopens:
            self._refuse_closed(channel)
            return None
        return self._reopen(channel, line)

    def _refuse_too_large(self) -> None:
        """Count a line too large even when truncated: as too large, or as what a closed
        producer counts (a handler that gets it reopens first: it is in use).
        """
        channel = self.channel
        if self.worker is None:
            channel.refuse("disabled")
            return
        if channel.closed:
            if not self._reopens:
                self._refuse_closed(channel)
                return
            reopened = self._reopen(channel, None)
            if reopened is None:  # counted (after_exit, or as too large)
                return
            channel = reopened
        channel.refuse("too_large")

    def _reopen(self, closed: Channel, line: Line | None) -> Channel | None:
        """A closed handler still gets records: a later logging configuration closed it and
        left it attached (``dictConfig`` closes every existing handler, and leaves it on
        the loggers it does not configure: ``uvicorn.run()``'s default ``log_config``).
        It reopens, as ``logging.FileHandler`` does: a new channel on the same data source
        and worker, in the memory budget; the old one's queue goes on to its deadline. Not
        once the process is exiting (``logging.shutdown`` closed it): counted then.

        The reopen is claimed without waiting (``_reopen_claim``): a record that comes
        meanwhile is parked, and the reopen queues it at its end; ``None`` then (``line``
        ``None``: a line too large, counted at once).
        """
        if self.channel is not closed:  # another thread reopened it meanwhile
            return self.channel
        claim = self._reopening.take()
        if claim is None:  # a reopen is under way: this thread's (a signal) or another's
            if line is None:
                closed.refuse("too_large")
            else:
                self._reopening.park(line, self.offer)
            return None
        try:
            if self.channel is not closed:  # reopened between the look and the claim
                return self.channel
            if self._process.exiting():
                closed.refuse("after_exit")
                _diagnostics.say_once(
                    f"closed-at-exit:{id(self)}",
                    f"a record reached {self.label} for {closed.datasource!r} after it "
                    "was closed at exit (logging.shutdown): dropped, counted as 'after_exit'.",
                )
                return None
            channel = self._new_channel()
            worker = self._process.attach(self.config, channel, self.label)
            self._retired.append(self.channel)
            self.channel, self.worker = channel, worker
        finally:
            self._reopening.release(claim, self.offer)
        _diagnostics.say_once(
            f"reopened:{id(self)}",
            f"{self.label} for {channel.datasource!r} was closed but still gets records: a "
            "later logging configuration closed it and left it attached (a second "
            "dictConfig, or uvicorn.run()'s default log_config). It reopened, as "
            "logging.FileHandler does, and sends them. To keep one handler, add it in that "
            "configuration, or pass log_config=None to uvicorn.run().",
        )
        return channel

    def _wake(self, channel: Channel) -> None:
        worker = self.worker
        if worker is None:
            return
        worker.notify(channel)
        if self._checks_pending:
            self._checks_pending = not _runtime_checks.at_first_batches(self.label)
        if self._process.exiting():
            # After the exit drain (a later atexit hook or finalizer, a __del__) nothing
            # would send it any more: it is sent now, within what is left of the budget,
            # or counted and said.
            self._process.send_late(worker, channel, flushed_by_logging=not self._sends_late)

    def refuse(self, reason: str, count: int = 1) -> None:
        """Count ``count`` events handed to the producer and dropped before its queue (a
        handler's ``emit`` failed, an exporter's conversion raised...).
        """
        self.channel.refuse(reason, count)

    def _refuse_closed(self, channel: Channel) -> None:
        channel.refuse("closed")
        _diagnostics.say_once(
            f"closed:{id(self)}",
            f"a closed {self.label} for {channel.datasource!r} still gets events: they "
            "are dropped (counted as 'closed'). Close it only once nothing sends to it.",
        )

    def refuse_unreadable(self, event: object, exc: Exception) -> None:
        """Count an event that raised when read (its mapping, not a value inside)."""
        self.channel.refuse("unreadable")
        _diagnostics.say_once(
            f"unreadable:{type(event).__qualname__}",
            f"{self.label} could not read an event of type {type(event).__qualname__} "
            f"({type(exc).__name__}: {safe_str(exc)[:200]}); it was dropped (counted as "
            "'unreadable').",
        )

    def _run_before_send(self, event: dict[str, Any]) -> dict[str, Any] | None:
        # Records the hook logs are dropped (counted as 'recursion' by the handler that
        # gets them): a hook that logs would otherwise multiply every call.
        try:
            with self._process.sending.marked():
                result = self._before_send(event)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - drop rather than send unredacted
            self.channel.refuse("before_send_error")
            _diagnostics.say_once(
                "before_send_error",
                f"before_send raised {type(exc).__name__}: {safe_str(exc)[:200]}; the event "
                "was dropped (counted as 'before_send_error').",
            )
            return None
        if result is None:
            self.channel.refuse("before_send")
        return result

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before the call is acknowledged, and the spool files
        of its data source then on disk (a previous process's too) are delivered, or
        ``timeout``; whether everything handed to it since the previous ``flush()``
        returned (or since it started) was acknowledged: False if any of it was dropped
        (``stats()`` says why), or is still queued when the time is up.

        Never waits while the caller holds ``logging``'s module lock (``dictConfig``,
        ``logging.shutdown``): the worker is woken and the call returns at once, without
        ending the round (the next flush still reports what was dropped).
        """
        with self._process.entries as interrupted:
            # From a signal handler or a finalizer that interrupted the package on this
            # thread, waiting could last the whole timeout, or forever: not done yet.
            return False if interrupted else self._flush(timeout, spooled=True)

    def _flush(self, timeout: float | None, *, spooled: bool) -> bool:
        started = self._start_round(timeout, spooled=spooled)
        if isinstance(started, bool):
            return started
        worker, flush, deadline = started
        return flush.result(worker.wait_until(flush.reached, deadline), returning=spooled)

    async def aflush(self, timeout: float | None = None) -> bool:
        """``flush()`` for a coroutine, without a thread and without blocking the loop: the
        sender that completes the round wakes it (``_async.until``). With no sender
        threads (``background=False``, or at exit) the round is sent on the process's
        small shared pool instead.
        """
        return await self._aflush(timeout, spooled=True)

    async def _aflush(self, timeout: float | None, *, spooled: bool) -> bool:
        with self._process.entries as interrupted:  # not across the await (other code runs)
            started = False if interrupted else self._start_round(timeout, spooled=spooled)
        if isinstance(started, bool):
            return started
        worker, flush, deadline = started
        if worker.settings.background and not self._process.exiting():
            worker.notify(self.channel)  # a sender runs (started if none does)
            watch = functools.partial(worker.watch, flush.reached)
            reached = await until(flush.reached, watch, deadline - time.monotonic())
        else:
            reached = await run_blocking(lambda: worker.wait_until(flush.reached, deadline))
        return flush.result(reached, returning=spooled)

    def _start_round(
        self, timeout: float | None, *, spooled: bool
    ) -> tuple[Worker, FlushRound, float] | bool:
        """A flush round made due now, with its worker and deadline; or the flush's result
        at once (a disabled producer; the caller holds ``logging``'s lock). With
        ``spooled`` (a flush), the round waits for the spool files of its data source too;
        without (a close's round), for its own events only (the spool's are the worker's),
        and it ends no round: ``close()`` returns nothing, so what it saw dropped is the
        next flush's to report (``returning=spooled``).
        """
        worker, channel = self.worker, self.channel
        if worker is None:
            return channel.empty()
        # A reopened handler's earlier channels: what they still send (what they drop, the
        # producer's LossWatch sees).
        retired = [old for old in self._retired if not old.empty()]
        if _holds_logging_lock():  # (no disk work under logging's lock)
            flush = FlushRound([channel, *retired], self._losses)
            worker.notify(channel)
            return flush.result(flush.reached(), returning=False)
        backlog = worker.spool_backlog([channel]) if spooled else None
        flush = FlushRound([channel, *retired], self._losses, backlog)
        wait = self.config.flush_timeout if timeout is None else max(timeout, 0.0)
        return worker, flush, time.monotonic() + self._process.cap_at_exit(wait)

    def make_due(self) -> None:
        """Make everything queued due now and wake the worker, without waiting: a flush that
        does not end a round (``flush()``'s result is not consumed).
        """
        worker = self.worker
        if worker is not None:
            self.channel.request_flush()
            worker.notify(self.channel)

    def close(self, timeout: float | None = None) -> None:
        """Flush within ``timeout`` (default ``flush_timeout``) and detach; idempotent.

        What is still queued then is sent in the background until that deadline, and then
        given up (counted as ``close_timeout``).
        """
        with self._process.entries as interrupted:
            wait = self._begin_close(timeout)
            if wait is not None:
                if not interrupted:  # (else the worker sends it until the deadline)
                    self._flush(wait, spooled=False)
                self._end_close()

    async def aclose(self, timeout: float | None = None) -> None:
        """``close()`` for a coroutine: its flush awaited as ``aflush`` awaits."""
        wait = self._begin_close(timeout)
        if wait is not None:
            await self._aflush(wait, spooled=False)
            self._end_close()

    def _begin_close(self, timeout: float | None) -> float | None:
        """Refuse new events and give the queue its deadline; how long the close's flush
        waits (``None``: nothing to flush, or closed already).
        """
        worker, channel = self.worker, self.channel
        if channel.closed:
            return None
        wait = self.config.flush_timeout if timeout is None else max(timeout, 0.0)
        wait = self._process.cap_at_exit(wait)
        if worker is None:
            channel.close(time.monotonic() + wait)
            return None
        self._process.close(channel, time.monotonic() + wait)
        return wait

    def _end_close(self) -> None:
        """After the close's flush: detach the channel, or leave the rest to the worker
        until the deadline (at exit, and without threads, the deadline is now).
        """
        worker, channel = self.worker, self.channel
        if worker is None:
            return
        if channel.empty():
            self._process.detach(worker, channel)
        elif self._process.exiting():
            give_up([channel], "at exit (logged after the exit drain)")
            self._process.detach(worker, channel)
        elif not worker.settings.background:  # nothing sends between calls: its deadline is now
            give_up([channel], f"by {self.label}.close()", "close_timeout")
            self._process.detach(worker, channel)
        else:
            worker.notify(channel)  # the worker sends the rest, then detaches the channel

    def stats(self) -> DeliveryStats:
        """A snapshot of this producer's counters (a reopened handler's: every opening's)."""
        with self._process.entries:
            return self._stats()

    def _stats(self) -> DeliveryStats:
        stats = self.channel.stats()
        if self._retired:
            stats = total([*(old.stats() for old in self._retired), stats])
        if self.worker is None:
            return stats
        interval = self.worker.send_interval(self.channel.datasource, stats.send_interval)
        spool = self.worker.spool
        return dataclasses.replace(
            stats,
            send_interval=interval,
            spool_bytes=spool.held_bytes() if spool else 0,
            spool_corrupt=spool.corrupt if spool else 0,
        )


def _holds_logging_lock() -> bool:
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    return bool(is_owned is not None and is_owned())
