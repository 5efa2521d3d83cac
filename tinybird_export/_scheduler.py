"""Which batch goes next: a worker's lanes, their gates, and fairness, at a given time.

A worker's ``Scheduler`` groups its channels by lane and picks the next claim at the time
it is given (``claim(now, ...)``): no clock, no thread, no I/O of its own, so the order,
the gates and the close deadlines can be tested with a fake clock. Lanes take turns (the
one after the last claimed looks first), and so do the channels of one lane.

Locks: the ``LaneTable``'s lock guards whether a lane is claimed, the scheduler's guards
its groups; neither is held while a channel's lock is taken, so a signal handler that
drains on a thread inside ``offer`` never waits for a sender that waits for that channel.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Final, NamedTuple

from tinybird_export._channel import Channel
from tinybird_export._delivery import MemorySource, Source
from tinybird_export._lanes import Lane, LaneTable

BUSY: Final = "busy"
"""A lane's first source while the spill bridge works on it: its memory waits (order)."""

FirstSource = Callable[[Lane], "Source | str | None"]
"""Before memory: the lane's claimed spool file (a ``Source``), ``BUSY``, or ``None``."""


class Claim(NamedTuple):
    """A claimed lane and what its sender sends."""

    lane: Lane
    source: Source


class Pick(NamedTuple):
    """What ``Scheduler.claim`` found: a claim, else when one may be due (``None``: when
    woken); and the closed channels that are done (empty, or past their deadline).
    """

    claim: Claim | None
    due_at: float | None
    finished: list[Channel]


@dataclasses.dataclass
class _Group:
    lane: Lane
    channels: list[Channel]  # replaced, never mutated: read without the lock
    rotation: int = 0


class Scheduler:
    """One worker's channels by lane, and the choice of what it sends next.

    Args:
        host: The worker's host.
        table: The process's lanes.
        wake: Wakes the worker (when a lane it found claimed is released).
    """

    def __init__(self, host: str, table: LaneTable, wake: Callable[[], None]) -> None:
        self._host = host
        self._table = table
        self._wake = wake
        self._lock = threading.RLock()
        self._groups: dict[str, _Group] = {}
        self._rotation = 0  # which lane a claim looks at first

    def add(self, channel: Channel, adaptive: bool) -> None:
        """Serve ``channel`` in its data source's lane."""
        with self._lock:
            group = self._groups.get(channel.datasource)
            if group is None:
                lane = self._table.join(
                    self._host, channel.datasource, channel.limits.flush_interval, adaptive
                )
                group = self._groups[channel.datasource] = _Group(lane, [])
            group.channels = [*group.channels, channel]

    def remove(self, channel: Channel) -> bool:
        """Stop serving ``channel``; whether any channel is left."""
        with self._lock:
            group = self._groups.get(channel.datasource)
            if group is not None:
                group.channels = [c for c in group.channels if c is not channel]
                if not group.channels:
                    del self._groups[channel.datasource]
                    self._table.leave(group.lane)
            return bool(self._groups)

    def channels(self) -> list[Channel]:
        """Every channel it serves."""
        with self._lock:
            return [c for group in self._groups.values() for c in group.channels]

    def lanes(self) -> list[tuple[Lane, list[Channel]]]:
        """Each of its lanes with its channels here."""
        with self._lock:
            return [(group.lane, group.channels) for group in self._groups.values()]

    def all_paused_past(self, deadline: float) -> list[str]:
        """The data sources holding events, if every one is paused past ``deadline`` (a
        retryable failure's wait, the server's ``Retry-After``) with nothing in flight:
        nothing of theirs can be sent before it. Else empty.
        """
        holding = [
            (lane, channels)
            for lane, channels in self.lanes()
            if any(not channel.empty() for channel in channels)
        ]
        for lane, channels in holding:
            if not paused_past(lane, deadline) or any(c.in_flight() for c in channels):
                return []
        return [lane.datasource for lane, _ in holding]

    def lane(self, datasource: str) -> Lane | None:
        """The lane of one of its data sources."""
        group = self._groups.get(datasource)
        return None if group is None else group.lane

    def release(self, lane: Lane) -> None:
        """Its sender is done with ``lane``."""
        self._table.release(lane)

    def claim(
        self,
        now: float,
        draining: bool,
        first: FirstSource | None = None,
        *,
        give_up_closed: bool = False,
    ) -> Pick:
        """The next due source at ``now``, with its lane claimed.

        Args:
            now: ``time.monotonic()``, or a test's clock.
            draining: The exit drain: everything is due, and pacing does not hold.
            first: Asked before a lane's memory: its spool file, or ``BUSY``.
            give_up_closed: Closed channels are done now, whatever their deadline (nothing
                listens at the host). So is one whose lane is paused past its deadline by
                the server (``paused_past``), with nothing in flight.
        """
        finished: list[Channel] = []
        due_at: float | None = None
        with self._lock:
            groups = list(self._groups.values())
            start = self._rotation
        for offset in range(len(groups)):
            group = groups[(start + offset) % len(groups)]
            lane = group.lane
            for channel in group.channels:  # closed ones: done, given up, or their deadline
                deadline = channel.close_deadline
                if deadline is not None and (
                    channel.empty()
                    or now >= deadline
                    or give_up_closed
                    or (paused_past(lane, deadline) and not channel.in_flight())
                ):
                    finished.append(channel)
                elif deadline is not None:
                    due_at = _earliest(due_at, deadline)
            if not self._table.try_claim(group.lane, self._wake):
                continue
            got: Claim | float | None = None
            try:
                got = self._pick(group, now, draining, finished, first)
            finally:
                if not isinstance(got, Claim):
                    self._table.release(group.lane)
            if isinstance(got, Claim):
                with self._lock:
                    self._rotation = (start + offset + 1) % len(groups)
                return Pick(got, None, finished)
            if got is not None:
                due_at = _earliest(due_at, got)
        return Pick(None, due_at, finished)

    @staticmethod
    def _pick(
        group: _Group,
        now: float,
        draining: bool,
        skip: list[Channel],
        first: FirstSource | None,
    ) -> Claim | float | None:
        """In a claimed lane: its spool file first, else a batch of one of its channels, in
        turn; else when one may be due.
        """
        lane = group.lane
        channels = group.channels
        # Until the pacing's time, only a channel whose next batch is full may send.
        paced_until = lane.ready_at(draining)
        full = paced_until > now and any(c.full_batch_ready() for c in channels)
        ready_at = lane.ready_at(draining, full_batch=full) if full else paced_until
        if ready_at > now:
            return ready_at
        spooled = first(lane) if first is not None else None
        if isinstance(spooled, str):  # BUSY
            return None  # the bridge wakes the worker when it is done
        if spooled is not None:
            return Claim(lane, spooled)
        due_at: float | None = None
        for index in range(len(channels)):
            channel = channels[(group.rotation + index) % len(channels)]
            if channel in skip:
                continue
            if now < paced_until and not channel.full_batch_ready():
                due_at = _earliest(due_at, paced_until)
                continue
            got = channel.take(now, lane.pacing.interval(channel.limits.flush_interval), draining)
            if isinstance(got, float):
                due_at = _earliest(due_at, got)
            elif got is not None:
                group.rotation = (group.rotation + index + 1) % len(channels)
                return Claim(lane, MemorySource(channel, got))
        return due_at

    def after_fork_in_child(self) -> None:
        """A new lock (its lanes are reset by their table)."""
        self._lock = threading.RLock()


def paused_past(lane: Lane, deadline: float) -> bool:
    """Whether nothing can be sent on ``lane`` before ``deadline``: it is paused past it (a
    retryable answer's wait, the server's ``Retry-After``) and not sending. Not a refused
    lane: a wait retries those at once (``Delivery.wait_begins``).
    """
    return lane.paused_until > deadline and not lane.busy and not lane.refused


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)
