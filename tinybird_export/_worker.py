"""The worker of one host and token: what its producers share, behind one facade.

One worker per host and token in a process (``_process`` keeps the registry, and resolves
the runtime settings once: ``_runtime_settings``). It puts together, each in its module:

- the ``Scheduler`` of its channels' lanes (what goes next, when);
- ``Delivery``: one attempt and the one outcome table, over an injected ``Transport``
  (the HTTP client by default; a recording one in tests);
- the ``SpillBridge`` to its disk spool, if ``spool_dir`` is set;
- its ``Senders``: the supervised threads, and the same step on a caller's thread.

It never imports the process: what it needs from it (the lanes, the recursion guard, the
memory budget, the exit deadline, detaching a finished channel) is lent at construction
(``Shared``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable

from tinybird_export._budget import MemoryBudget
from tinybird_export._channel import Channel
from tinybird_export._client import EventsClient
from tinybird_export._delivery import Delivery, Transport
from tinybird_export._delivery_messages import give_up_at_close_deadline, report_internal_error
from tinybird_export._lanes import Lane, LaneTable
from tinybird_export._runtime_settings import RuntimeSettings
from tinybird_export._scheduler import Scheduler
from tinybird_export._senders import Senders, SendingThreads
from tinybird_export._spill import Backlog, SpillBridge
from tinybird_export._spool import Spool


@dataclasses.dataclass(frozen=True)
class Shared:
    """What the process lends each worker."""

    lanes: LaneTable
    guard: SendingThreads
    budget: MemoryBudget
    exit_deadline: Callable[[], float | None]
    detach: Callable[[Worker, Channel], None]
    known_lanes: Callable[[], set[tuple[str, str]]]
    signalled: Callable[[], bool]  # a signal waits for this thread's call to end (_reentry)


class Worker:
    """Sends the lines of its channels to one Events API host with one token.

    Args:
        settings: Its runtime settings (merged by the process as producers join).
        shared: What the process lends it.
        transport: What sends a request; default an ``EventsClient`` (rebuilt in a forked
            child; an injected one is kept).
        spool: The process's spool for ``settings.spool_dir``, if set.
    """

    def __init__(
        self,
        settings: RuntimeSettings,
        shared: Shared,
        *,
        transport: Transport | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self._shared = shared
        self._scheduler = Scheduler(self.host, shared.lanes, self._wake)
        self._bridge = (
            SpillBridge(spool, self.host, shared.known_lanes, self._wake) if spool else None
        )
        self._delivery = Delivery(
            self.host,
            transport or EventsClient.of(settings),
            lambda: (settings.connect_timeout, settings.timeout),
            shared.exit_deadline,
            spooling=spool is not None,
            rebuild=functools.partial(EventsClient.of, settings) if transport is None else None,
        )
        self._senders = Senders(
            self._step,
            shared.guard,
            can_start=self._can_start,
            report=self._report,
            closed=self._delivery.close,
        )

    def __repr__(self) -> str:
        return f"<Worker {self.host} lanes={len(self._scheduler.lanes())}>"

    def after_fork_in_child(self, spool: Spool | None) -> None:
        """New locks, pool and (lazily) threads; the parent's queues are forgotten."""
        self._delivery.after_fork_in_child()
        self._scheduler.after_fork_in_child()
        self._senders.after_fork_in_child()
        if self._bridge is not None and spool is not None:
            self._bridge.after_fork_in_child(spool)
        for channel in self.channels():
            channel.after_fork_in_child()

    # -- channels (the process owner) ------------------------------------------------------

    def add(self, channel: Channel) -> None:
        """Serve ``channel`` in its data source's lane."""
        self._scheduler.add(channel, self.settings.adaptive)

    def remove(self, channel: Channel) -> bool:
        """Stop serving ``channel``; whether any channel is left."""
        lane = self._scheduler.lane(channel.datasource)
        left = self._scheduler.remove(channel)
        if lane is not None and self._bridge and self._scheduler.lane(channel.datasource) is None:
            self._bridge.release_claims([lane], self._shared.lanes)
        return left

    def channels(self) -> list[Channel]:
        """Every channel it serves."""
        return self._scheduler.channels()

    def send_interval(self, datasource: str, flush_interval: float) -> float:
        """How long a partial batch of ``datasource`` waits now (the pacing may stretch it)."""
        lane = self._scheduler.lane(datasource)
        return flush_interval if lane is None else lane.pacing.interval(flush_interval)

    def stop(self) -> None:
        """Let the threads end (the last one closes the transport)."""
        self._senders.stop()

    # -- the caller's thread -----------------------------------------------------------------

    def notify(self, channel: Channel) -> None:
        """Wake a thread for ``channel``, starting one if none can take its lane."""
        if not self.settings.background:
            return  # flush() sends on the caller's thread
        senders = self._senders
        senders.wake()
        lane = self._scheduler.lane(channel.datasource)
        if senders.needed(lane_claimed=lane is None or lane.busy):
            senders.start()

    def wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Send until ``done()`` or ``deadline`` (at most the exit deadline): by the
        threads when they run, else on this thread. Sooner False when waiting is pointless
        (``_pointless``), or a signal handler waits for this thread's call to end (its exit
        drain will do what this wait would).
        """
        exit_deadline = self._shared.exit_deadline()
        deadline = deadline if exit_deadline is None else min(deadline, exit_deadline)
        signalled, pointless = self._shared.signalled, self._pointless(deadline)
        return self._senders.wait_until(done, deadline, lambda: signalled() or pointless())

    def watch(self, done: Callable[[], bool], call: Callable[[], None]) -> Callable[[], None]:
        """Call ``call()`` from a sender thread once ``done()`` holds after a send (an
        awaited flush: no thread waits); how to stop watching.
        """
        return self._senders.watch(done, call)

    def hurry(self) -> None:
        """Make every queued event due now (a flush of every channel)."""
        for channel in self.channels():
            channel.request_flush()
        for _ in range(max(self._senders.running, 1)):
            self._senders.wake()

    def can_send_here(self, channel: Channel) -> bool:
        """Whether this thread alone can send ``channel``'s queue: no request of its lane
        under way (during the interpreter's teardown the sender threads are gone, and a
        lane or batch they held stays held).
        """
        lane = self._scheduler.lane(channel.datasource)
        return lane is not None and not lane.busy and not channel.in_flight()

    def send_here(self, channel: Channel, deadline: float) -> bool:
        """Send ``channel``'s queue on this thread until it is empty or ``deadline``
        (after the exit drain: nothing else will); whether it was emptied.
        """
        channel.request_flush()
        return self._senders.run_here(channel.empty, deadline)

    def drain(self, deadline: float) -> None:
        """Send everything queued and the spool files of its data sources that do not fail,
        on this thread too, until ``deadline`` or waiting is pointless (the exit drain).
        """
        pointless = self._pointless(deadline)  # (a signal is held: the drain is what it wants)
        bridge = self._bridge
        backlog = bridge.backlog(self._lanes(), failing_settles=True) if bridge else None
        self._senders.run_here(
            lambda: (
                all(c.empty() for c in self.channels()) and (backlog is None or backlog.settled())
            ),
            deadline,
            pointless,
        )

    def _pointless(self, deadline: float) -> Callable[[], bool]:
        """For a wait until ``deadline``: whether to stop waiting, as nothing can be sent
        before it (nothing listens at the host; or every data source holding events is
        paused past it).
        """
        refused, scheduler = self._delivery.wait_begins(self._lanes()), self._scheduler
        return lambda: refused() or bool(scheduler.all_paused_past(deadline))

    def paused_past(self, deadline: float) -> list[str]:
        """``Scheduler.all_paused_past``: what the exit drain could not wait out."""
        return self._scheduler.all_paused_past(deadline)

    def refused_for(self) -> float | None:
        """How long the host has refused every connection, once waiting for it is pointless
        (``_retry.Refusals``); else ``None``.
        """
        return self._delivery.refusals.lasting()

    # -- the spool (the bridge's, if ``spool_dir`` is set) -------------------------------------

    @property
    def spool(self) -> Spool | None:
        """Its spool (``None`` without ``spool_dir``): its directory, bytes, corrupt files."""
        return self._bridge.spool if self._bridge is not None else None

    def spool_backlog(self, channels: Iterable[Channel]) -> Backlog | None:
        """The spool files a flush of ``channels`` waits for (``None`` without a spool); once
        the process exits, as the exit drain does: not those of a failing data source.
        """
        if self._bridge is None:
            return None
        lanes = [self._scheduler.lane(channel.datasource) for channel in channels]
        exiting = self._shared.exit_deadline() is not None
        return self._bridge.backlog([ln for ln in lanes if ln is not None], failing_settles=exiting)

    def spill_remaining(self) -> int:
        """At exit, after the drain: what is still held goes to the spool, if there is one
        (``SpillBridge.at_exit``); how many events it refused (dropped, and said).
        """
        if self._bridge is None:
            return 0
        return self._bridge.at_exit(self.channels(), self._lanes(), self._shared.lanes)

    def spill_queued(self) -> int:
        """What is still held goes to the spool now (a function about to be frozen); how many."""
        return self._bridge.spill_all(self.channels()) if self._bridge is not None else 0

    # -- the step (a sender thread, or a caller's) -------------------------------------------

    def _step(self, deadline: float | None) -> bool | float | None:
        """Bridge work, then the next claim, sent on this thread within ``deadline``:
        True if it sent, else when something may be due.
        """
        draining = self._shared.exit_deadline() is not None
        bridge = self._bridge
        if bridge is not None:
            bridge.step(self._scheduler.lanes(), time.monotonic(), draining)
        pick = self._scheduler.claim(
            time.monotonic(),
            draining,
            bridge.first if bridge is not None else None,
            give_up_closed=self.refused_for() is not None,
        )
        try:
            if pick.claim is None:
                look = bridge.next_look(time.monotonic(), self.channels()) if bridge else None
                return look if pick.due_at is None else min(pick.due_at, look or pick.due_at)
            lane, source = pick.claim
            try:
                self._senders.handoff()
                self._delivery.attempt(lane, source, deadline)
            finally:
                self._scheduler.release(lane)
                if source.channel.closed:
                    self._shared.budget.rebalance()
                self._senders.progressed()
            return True
        finally:
            self._finish(pick.finished)

    def _finish(self, channels: list[Channel]) -> None:
        """Detach closed channels that are empty, or past their close deadline (what they
        still hold goes to the spool if there is one, else is given up).
        """
        for channel in channels:
            if self._bridge is not None and not channel.empty():
                self._bridge.give_up(channel, "at its close deadline")
            give_up_at_close_deadline(channel, self.host, self.refused_for())
            self._shared.detach(self, channel)
            self._senders.progressed()

    def _lanes(self) -> list[Lane]:
        return [lane for lane, _ in self._scheduler.lanes()]

    def _wake(self) -> None:
        self._senders.wake()

    def _can_start(self) -> bool:
        return self.settings.background and self._shared.exit_deadline() is None

    def _report(self, exc: Exception) -> None:
        report_internal_error(exc, "", self._delivery.transport.redact)
