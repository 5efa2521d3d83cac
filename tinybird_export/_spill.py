"""The spill bridge: batches between memory and the disk spool, off the send path.

With ``spool_dir`` set, each worker has one bridge to its spool. Sender threads run a bridge
step before they look for something to send (``step``), and the exit drain and the close
deadline spill what is left (``spill``); so every listing, claim (a rename), gzip and fsync
happens here, never while a lane is claimed for a send. For each lane, the bridge:

- spills: while the lane is failing (or its spool holds older files) and a channel holds
  more than half its bound, its oldest batches go to disk, down to a quarter (everything
  at exit when the lane is failing, and at a close deadline);
- claims the lane's oldest spool files into its *slot* once the lane may send, as many
  consecutive ones as fit in one request (the batch limits of the lane's first channel):
  the scheduler sends a slot before any batch in memory, so the data source's order holds
  across memory and disk. A slot that fails retryably stays claimed; a 413 has its halves
  written here, in its place (a slot of several files is sent one file at a time instead);
- hands each channel the receipts other processes left for its files (``stats()`` follow
  its events wherever they were sent), and says once which files no producer here sends.

A flush and the exit drain wait for the files their lanes had on disk when they began
(``backlog``); while one waits, the senders look at the directory every second, so that
files another process sent count as resolved too.

One bridge step at a time per lane (the lane's work lock, never waited for by a sender):
two spills of one channel would each take the batch the other is writing.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Final

from tinybird_export import _diagnostics
from tinybird_export._channel import Channel
from tinybird_export._delivery import SpoolSource
from tinybird_export._lanes import Lane, LaneTable
from tinybird_export._scheduler import BUSY
from tinybird_export._spool import LISTING_TTL, Refusal, Spool, SpooledBatch

_SPILL_WAIT: Final = 2.0
"""Seconds an exit or close spill waits for a bridge step under way on the same lane."""
_REPORT_AFTER: Final = 5.0
"""Seconds after which every producer of the app exists: then unmatched files are said."""
_WATCH: Final = 2.0
"""Seconds a waiting flush keeps the senders looking at the directory after it last asked."""
_RECEIPTS_EVERY: Final = 5.0
"""How often a process whose events are on disk looks for receipts (another process may
send them meanwhile)."""

# The channels of this process that wrote spool files, by serial (unique in the process,
# and a file names its writer's): a channel no longer in its lane (a reopened handler's
# earlier opening; a closed producer's, whose worker stopped) still owns its files, and its
# counters move from spooled to sent (or dropped) when they are resolved. Weak: a channel
# nobody holds has no counters left to move. A plain dict of references, not a
# WeakValueDictionary: copied whole in one C call (``list(items())``) while senders of
# other workers add to it, where iterating a WeakValueDictionary runs Python code.
_WRITERS: dict[int, weakref.ref[Channel]] = {}


def _wrote(channel: Channel) -> None:
    serial = channel.serial
    if serial not in _WRITERS:
        _WRITERS[serial] = weakref.ref(channel, lambda _: _WRITERS.pop(serial, None))


def _written_by(serial: int) -> Channel | None:
    ref = _WRITERS.get(serial)
    return None if ref is None else ref()


class _LaneWork:
    """The bridge's state for one lane: who works on it, and its claimed file."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread = 0  # the thread at work (a signal handler on it must not wait)
        self.slot: SpoolSource | None = None
        self.max_bytes = 0  # after a 413 for several files: what fits in one request (0: any)
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
        self._host = self.host = host
        self._known_lanes = known_lanes
        self._wake = wake
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.RLock()  # the lanes' work states
        self._work: dict[str, _LaneWork] = {}
        self._created = time.monotonic()
        self._orphans_reported = False
        self._watched_until = 0.0
        self._refusals: dict[int, tuple[str, str]] = {}  # by channel: its last spill's

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
        lanes = list(lanes)
        self.spool.maintain()
        self._apply_receipts(lanes)
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
        if work.slot is None and backlog and channels and lane.ready_at(draining) <= now:
            work.slot = self._claim(work, lane.datasource, channels)

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

    def spill_all(self, channels: Iterable[Channel]) -> int:
        """Everything ``channels`` hold, to the spool now, outside exit (a function about
        to be frozen); the lanes' claimed files stay claimed. The events written.
        """
        return sum(self.spill(channel) for channel in channels)

    def at_exit(self, channels: Iterable[Channel], lanes: Iterable[Lane], table: LaneTable) -> int:
        """After the exit drain: what ``channels`` still hold goes to the spool (what the
        spool refuses is dropped, counted and said: ``give_up``), and the ``lanes``' claimed
        files go back for the next process; how many events were dropped.
        """
        refused = 0
        for channel in channels:
            self.spool.failpoint("exit")  # killed during the exit drain (the tests)
            refused += self.give_up(channel, "at exit")
        self.release_claims(lanes, table)
        self.spool.settle()
        return refused

    def release_claims(self, lanes: Iterable[Lane], table: LaneTable) -> None:
        """Give the ``lanes``' claimed files back (exit, or a lane left), each once no
        sender has them in flight: its lane claimed from ``table`` meanwhile (a lane busy
        sending keeps them).
        """
        for lane in lanes:
            if table.try_claim(lane, self._wake):
                self.release(lane)
                table.release(lane)

    def release(self, lane: Lane) -> None:
        """Give the lane's claimed files back: call with the lane claimed, so that no
        sender has them in flight.
        """
        work = self._work.get(lane.datasource)
        if work is not None and work.slot is not None:
            for batch in work.slot.batches:
                self.spool.release(batch)
            work.slot = None

    def give_up(self, channel: Channel, when: str) -> int:
        """Exit, or a close deadline: everything ``channel`` holds goes to the spool, and
        what the spool refuses is dropped for the reason it gave (``spool_full``,
        ``spool_error``) and said; how many events were dropped.
        """
        self.spill(channel)
        reason, why = self._refusals.get(channel.serial, ("", ""))
        lost = channel.abandon(reason).total if reason and not channel.empty() else 0
        if lost:
            _diagnostics.say(
                f"{lost} event(s) for {channel.datasource!r} could not be spooled {when} to "
                f"{self.spool.directory} ({why}): counted as {reason!r}."
            )
        return lost

    def backlog(self, lanes: Iterable[Lane], *, failing_settles: bool = False) -> Backlog:
        """What a flush (or, with ``failing_settles``, the exit drain) waits for on disk: the
        files its ``lanes`` have in the spool now. Lists the directory if the last listing
        is old (on the caller's thread: a flush blocks anyway).
        """
        marks = [(lane, self.spool.backlog(self._host, lane.datasource)) for lane in lanes]
        self.watched()
        return Backlog(self, [(lane, bases) for lane, bases in marks if bases], failing_settles)

    def watched(self) -> None:
        """A flush waits for the spool: the senders keep looking at the directory."""
        self._watched_until = time.monotonic() + _WATCH

    def next_look(self, now: float, channels: Iterable[Channel]) -> float | None:
        """When a sender should look at the directory again though nothing is due: soon
        while a flush waits for files, now and then while this process's events are on
        disk (another process may send them and leave receipts); else ``None``.
        """
        if now < self._watched_until:
            return now + LISTING_TTL
        if any(channel.spooled_count() for channel in channels):
            return now + _RECEIPTS_EVERY
        return None

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
        self._refusals.pop(channel.serial, None)
        if not everything and channel.held_bytes() <= channel.spill_mark():
            return 0
        while everything or channel.held_bytes() > channel.spill_mark() // 2:
            batch = channel.take_for_spool(everything)
            if batch is None:
                break
            owner = (self.spool.identity, channel.serial)
            stored = self.spool.write(
                batch.body, batch.count, self._host, channel.datasource, owner
            )
            if isinstance(stored, Refusal):  # this write's own: another lane may write now
                channel.unclaim(batch)  # full: memory's drop policy applies
                self._refusals[channel.serial] = stored
                break
            _wrote(channel)
            channel.spooled(batch)
            written += batch.count
        return written

    def _claim(
        self, work: _LaneWork, datasource: str, channels: list[Channel]
    ) -> SpoolSource | None:
        limits = channels[0].limits
        max_bytes = min(limits.batch_max_bytes, work.max_bytes or limits.batch_max_bytes)
        batches = self.spool.claim_many(self._host, datasource, limits.batch_max_rows, max_bytes)
        if not batches:
            return None
        writers = [self._writer(batch, channels) for batch in batches]
        sender = writers[0] if writers[0] in channels else channels[0]
        return SpoolSource(self.spool, batches, writers, self._resolved, sender)

    def _writer(self, batch: SpooledBatch, channels: list[Channel]) -> Channel:
        """The channel of this process that wrote ``batch``, in its lane or not; else (a
        file another process wrote) a channel of its lane, which counts it as unspooled.
        """
        for channel in channels:
            if self.spool.owns(batch, channel.serial):
                return channel
        writer = _written_by(batch.owner[1])
        if writer is not None and self.spool.owns(batch, writer.serial):
            return writer
        return channels[0]

    def _resolved(self, source: SpoolSource) -> None:
        work = self._work.get(source.channel.datasource)
        if work is not None and work.slot is source:
            work.slot = None

    def _split(self, work: _LaneWork, source: SpoolSource) -> None:
        """413 for the slot: several files are sent one at a time, one file's halves are
        written in its place, in the order (all or nothing); and from now on a request of
        the lane's files carries at most half what was refused.
        """
        work.max_bytes = max(sum(batch.raw_bytes for batch in source.batches) // 2, 1)
        if len(source.batches) > 1:
            for batch in source.batches[1:]:
                self.spool.release(batch)
            work.slot = SpoolSource(
                self.spool, source.batches[:1], source.writers[:1], self._resolved, source.channel
            )
            return
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

    def _apply_receipts(self, lanes: list[tuple[Lane, list[Channel]]]) -> None:
        """Another process sent (or dropped) files this process's channels wrote: their
        counters follow (from spooled to sent, or dropped).
        """
        channels: dict[int, Channel] = {}
        for serial, ref in list(_WRITERS.items()):  # one C call: no other thread's add in it
            writer = ref()
            if writer is not None and writer.host == self._host:
                channels[serial] = writer
        channels.update((channel.serial, channel) for _, group in lanes for channel in group)
        for receipt in self.spool.take_receipts(set(channels)):
            sent = receipt.outcome == "sent"
            channels[receipt.serial].unspooled(
                receipt.count,
                own=True,
                sent=sent,
                reason="" if sent else receipt.outcome,
                quarantined=receipt.quarantined,
                relayed=True,
            )


class Backlog:
    """The files a flush (or the exit drain) waits for: those its lanes had on disk when it
    began, until they are resolved, by this process or another (no disk access: the
    senders' listings and this process's removals say so).

    Args:
        bridge: The worker's bridge.
        marks: Each lane with the batches it had on disk.
        failing_settles: The exit drain: a lane that fails is not waited for (its files
            stay for the next process; the exit does not wait out its budget).
    """

    def __init__(
        self, bridge: SpillBridge, marks: list[tuple[Lane, frozenset[str]]], failing_settles: bool
    ) -> None:
        self._bridge = bridge
        self._marks = marks
        self._failing_settles = failing_settles

    def settled(self) -> bool:
        """Whether every file it waits for is resolved (or its lane fails, at exit)."""
        if not self._marks:
            return True
        self._bridge.watched()
        spool, host = self._bridge.spool, self._bridge.host
        return all(
            (self._failing_settles and lane.failing)
            or not spool.remaining(host, lane.datasource, bases)
            for lane, bases in self._marks
        )
