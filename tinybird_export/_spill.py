"""The spill bridge: batches between memory and the disk spool, off the send path.

With ``spool_dir`` set, each worker has one bridge to its spool. Sender threads run a bridge
step before they look for something to send (``step``), and the exit drain and the close
deadline spill what is left (``spill``); so every listing, claim (a rename), gzip and fsync
happens here, never while a lane is claimed for a send. For each lane, the bridge:

- spills: while the lane is failing (or its spool holds older files) and a channel holds
  more than half its bound, its oldest batches go to disk, down to a quarter (everything
  at exit when the lane is failing, and at a close deadline);
- claims the lane's oldest spool file into its *slot* once the lane may send: the
  scheduler sends a slot's file before any batch in memory, so the data source's order
  holds across memory and disk. A file that fails retryably stays claimed in its slot,
  and a 413 has its halves written here, in its place;
- says once which files no producer of this process will send.

One bridge step at a time per lane (the lane's work lock, never waited for by a sender):
two spills of one channel would each take the batch the other is writing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

from tinybird_export import _diagnostics
from tinybird_export._channel import Channel
from tinybird_export._delivery import SpoolSource
from tinybird_export._lanes import Lane
from tinybird_export._scheduler import BUSY
from tinybird_export._spool import Spool

_SPILL_WAIT: Final = 2.0
"""Seconds an exit or close spill waits for a bridge step under way on the same lane."""
_REPORT_AFTER: Final = 5.0
"""Seconds after which every producer of the app exists: then unmatched files are said."""
_KEEP_CLAIM: Final = 60.0
"""How often a claim held across retries is renewed (other processes release old ones)."""


class _LaneWork:
    """The bridge's state for one lane: who works on it, and its claimed file."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread = 0  # the thread at work (a signal handler on it must not wait)
        self.slot: SpoolSource | None = None
        self.kept_at = 0.0
        self.skipped = False  # the scheduler found it busy: wake the worker after


class SpillBridge:
    """One worker's way to its spool.

    Args:
        spool: The process's spool for the worker's ``spool_dir``.
        host: The worker's host.
        known_lanes: Every (host, data source) a producer of the process sends to.
        wake: Wakes the worker's senders (a lane it skipped is free again).
    """

    def __init__(
        self,
        spool: Spool,
        host: str,
        known_lanes: Callable[[], set[tuple[str, str]]],
        wake: Callable[[], None],
    ) -> None:
        self.spool = spool
        self._host = host
        self._known_lanes = known_lanes
        self._wake = wake
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.RLock()  # the lanes' work states
        self._work: dict[str, _LaneWork] = {}
        self._created = time.monotonic()
        self._orphans_reported = False

    def after_fork_in_child(self, spool: Spool) -> None:
        """The child's own spool object; the parent's claims are the parent's."""
        self.spool = spool
        self._reset()

    # -- the scheduler's view (no I/O) ------------------------------------------------------

    def first(self, lane: Lane) -> SpoolSource | str | None:
        """The lane's claimed file to send before its memory; ``BUSY`` while the bridge
        works on the lane (or has a split to write); else ``None``.
        """
        work = self._work.get(lane.datasource)
        if work is None:
            return None
        if (work.thread and work.thread != threading.get_ident()) or (
            work.slot is not None and work.slot.split_requested
        ):
            work.skipped = True
            return BUSY
        return work.slot

    # -- the steps (a sender, or the exit drain; never with a lane claimed) ----------------

    def step(self, lanes: Iterable[tuple[Lane, list[Channel]]], now: float, draining: bool) -> None:
        """Spill, split and claim for each lane that needs it (see the module docstring)."""
        if not self._orphans_reported and now - self._created > _REPORT_AFTER:
            self._orphans_reported = True
            self.spool.report_unmatched(self._known_lanes())
        for lane, channels in lanes:
            work = self._enter(lane.datasource, 0)
            if work is None:
                continue
            try:
                self._step(work, lane, channels, now, draining)
            finally:
                self._leave(work)

    def _step(
        self, work: _LaneWork, lane: Lane, channels: list[Channel], now: float, draining: bool
    ) -> None:
        if work.slot is not None and work.slot.split_requested:
            self._split(work, work.slot)
        backlog = self.spool.has_pending(self._host, lane.datasource)
        if lane.failing or backlog:
            for channel in channels:
                self._spill(channel, everything=draining and lane.failing)
        if work.slot is None and backlog and lane.ready_at(draining) <= now:
            work.slot = self._claim(lane.datasource, channels)
            work.kept_at = now
        elif work.slot is not None and now - work.kept_at > _KEEP_CLAIM:
            self.spool.keep_claimed(work.slot.batch)
            work.kept_at = now

    def spill(self, channel: Channel) -> int:
        """Everything ``channel`` holds, to the spool (exit, a close deadline); the events
        written. Waits a little for a step under way on its lane.
        """
        work = self._enter(channel.datasource, _SPILL_WAIT)
        if work is None:
            return 0
        try:
            return self._spill(channel, everything=True)
        finally:
            self._leave(work)

    def release(self, lane: Lane) -> None:
        """Give the lane's claimed file back (exit, or the lane left): call with the lane
        claimed, so that no sender has it in flight.
        """
        work = self._work.get(lane.datasource)
        if work is not None and work.slot is not None:
            self.spool.release(work.slot.batch)
            work.slot = None

    def pending(self, datasource: str) -> bool:
        """Whether files wait for ``datasource`` (a previous process's, say)."""
        return self.spool.has_pending(self._host, datasource)

    # -- helpers ---------------------------------------------------------------------------

    def _enter(self, datasource: str, wait: float) -> _LaneWork | None:
        with self._lock:
            work = self._work.setdefault(datasource, _LaneWork())
        if work.thread == threading.get_ident():
            return None  # a signal's exit drain interrupted this thread's own step
        if not work.lock.acquire(timeout=wait) if wait else not work.lock.acquire(False):
            return None
        work.thread = threading.get_ident()
        return work

    def _leave(self, work: _LaneWork) -> None:
        work.thread = 0
        work.lock.release()
        if work.skipped:
            work.skipped = False
            self._wake()

    def _spill(self, channel: Channel, *, everything: bool) -> int:
        """Move the oldest batches of ``channel`` to the spool once it holds half its
        bound, down to a quarter (``everything``: all of them); the events written.
        """
        written = 0
        if not everything and channel.held_bytes() <= channel.spill_mark():
            return 0
        while everything or channel.held_bytes() > channel.spill_mark() // 2:
            batch = channel.take_for_spool(everything)
            if batch is None:
                break
            owner = (os.getpid(), channel.serial)
            if not self.spool.write(batch.body, batch.count, self._host, channel.datasource, owner):
                channel.unclaim(batch)  # full: memory's drop policy applies
                break
            channel.spooled(batch)
            written += batch.count
        return written

    def _claim(self, datasource: str, channels: list[Channel]) -> SpoolSource | None:
        batch = self.spool.claim(self._host, datasource)
        if batch is None:
            return None
        if not channels:  # its last channel was detached meanwhile
            self.spool.release(batch)
            return None
        writer = next((c for c in channels if batch.own(c.serial)), channels[0])
        return SpoolSource(self.spool, batch, writer, self._resolved)

    def _resolved(self, source: SpoolSource) -> None:
        work = self._work.get(source.channel.datasource)
        if work is not None and work.slot is source:
            work.slot = None

    def _split(self, work: _LaneWork, source: SpoolSource) -> None:
        """413 for the slot's file: its halves in its place, in the order (all or nothing)."""
        datasource = source.channel.datasource
        if self.spool.split(source.batch, self._host, datasource):
            self.spool.done(source.batch)
            work.slot = None
            return
        source.drop("too_large", "", requested=False)
        _diagnostics.say_once(
            f"spool-split:{datasource}",
            f"a spooled batch of {source.count} event(s) for {datasource!r} was too large for "
            f"the server (413) and its halves could not be written to {self.spool.directory}; "
            "dropped, counted as 'too_large'.",
        )
