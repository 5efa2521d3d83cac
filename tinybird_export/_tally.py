"""A channel's counters, apart from its queue: where its events went, and what flushes see.

``Tally`` is a plain value owned by one channel and changed only under the channel's lock:
by the channel's own changes (those that move events out of its queue touch both), and by
the two changes below that touch the counters alone (an answer for events of unknown fate,
and the spool's answer for the channel's spooled events). Each change is one straight run
of assignments, as the channel's are (``_channel``: a signal handler runs only at calls).

The flush arithmetic lives here too: a flush's mark (``FlushMark``) counts the events then
queued, and is reached once as many more are resolved, not counting the resolutions of the
events the channel had already spooled (the spool's backlog is what waits for those).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import weakref
from typing import Final, NamedTuple

from tinybird_export.stats import DeliveryStats

CHOSEN: Final = frozenset({"before_send", "disabled", "recursion"})
"""Drop reasons the application chose (its ``before_send`` filter, a disabled producer, its
own records logged while sending): not a delivery failure, so ``flush()`` is not False."""


class FlushMark(NamedTuple):
    """What a flush waits for: every event queued before it, resolved (sent or dropped).

    Attributes:
        target: How many events the channel must have resolved, not counting those it had
            spooled at the mark.
        spilled: How many events the channel had spooled (ever) at the mark: their
            resolutions, which come first, do not count towards ``target``.
    """

    target: int
    spilled: int


_NO_FLUSH: Final = FlushMark(0, 0)
_LOSS_IDS: Final = itertools.count(1)


class LossWatch:
    """Whether events were dropped (for a reason the application did not choose) since
    its owner's previous flush returned: a producer's (every opening of it), or the
    process's (every producer, closed ones too). Not a count on a live channel, which a
    round would miss once the channel is retired or detached.

    Channels of several threads report to one watch, each under its own lock: a loss
    stores a new id (``next`` on an ``itertools.count`` is atomic), so a report that
    lands after a flush read the watch always differs from what that flush saw, even
    when two reports race (a sum could be written back to the value it had).
    """

    def __init__(self) -> None:
        self._last = 0  # the last loss's id
        self._seen = 0  # the id the previous flush that returned saw
        _WATCHES.add(self)

    def lost(self) -> None:
        """Events were dropped just now."""
        self._last = next(_LOSS_IDS)

    def begin(self) -> int:
        """Where a round starts from: what the previous flush that returned saw."""
        return self._seen

    def since(self, begun: int, *, returning: bool) -> bool:
        """Whether events were dropped since ``begun`` (``begin`` at the round's start: a
        round that overlaps another's return still sees what that one saw); with
        ``returning`` this flush returns: the next one starts from here.
        """
        last = self._last  # one read: a loss after it is the next round's
        lost = last != begun
        if returning:
            self._seen = last
        return lost

    def _forget(self) -> None:
        self._seen = self._last


_WATCHES: weakref.WeakSet[LossWatch] = weakref.WeakSet()


def forget_losses_in_child() -> None:
    """A forked child: the parent's losses are the parent's flushes' to report, as its
    channels' counters are (``Process``'s fork hook calls it).
    """
    for watch in list(_WATCHES):
        watch._forget()


@dataclasses.dataclass
class Tally:
    """Where a channel's events went, and how: its counters. The counters of the queue
    itself (emitted, queued) stay on the channel, read on every offer.
    """

    sent: int = 0
    quarantined: int = 0
    truncated: int = 0
    repaired: int = 0
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    wire_bytes_sent: int = 0
    spooled: int = 0
    unspooled: int = 0
    unknown: int = 0  # given up while its request was under way: maybe stored
    last_error: str = ""
    # Plain dicts, not Counters: a Counter's missing key runs Python code (__missing__),
    # where a signal handler may run in the middle of the channel's change.
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped_levels: dict[int, int] = dataclasses.field(default_factory=dict)
    # What flushes see (not in the public snapshot).
    resolved: int = 0  # events that left the queue for good: from memory or the spool
    unspooled_own: int = 0  # of which: the channel's own spooled events
    flush_due: FlushMark = _NO_FLUSH  # the last flush's: its partial batch is due
    # Told of each drop but for a reason the application chose (CHOSEN): its producer's
    # watch and its process's.
    watches: tuple[LossWatch, ...] = ()

    def report_loss(self) -> None:
        """Events were dropped: tell the watches (after the change that dropped them)."""
        for watch in self.watches:
            watch.lost()

    def mark(self, queued: int) -> FlushMark:
        """The mark of a flush of the ``queued`` events (the spooled ones are not in it)."""
        own = self.unspooled_own
        return FlushMark(self.resolved - own + queued, self.spooled + own)

    def reached(self, mark: FlushMark) -> bool:
        """Every event queued before ``mark`` was resolved. Events leave in order (memory
        and spool alike), so they are counted: all resolutions, less those of the events
        already spooled at the mark (the first ``mark.spilled`` the channel ever spooled,
        resolved before the later ones). Read without the lock: ``unspool`` counts its
        events as the channel's own before it counts them as resolved, so a read between
        the two sees less.
        """
        return self.resolved - min(self.unspooled_own, mark.spilled) >= mark.target

    def unspool(
        self, count: int, *, own: bool, sent: bool, reason: str, quarantined: int, relayed: bool
    ) -> None:
        """``count`` events were sent from the spool, or refused for ``reason`` (see
        ``Channel.unspooled``). One change.
        """
        total = 0 if sent else self.dropped.get(reason, 0) + count
        # The change (no call from here).
        if sent and not relayed:
            self.unspooled += count
        if not own:
            return
        self.spooled -= count
        self.unspooled_own += count  # before resolved: see reached()
        self.resolved += count
        if sent:
            self.sent += count
            self.quarantined += quarantined
        else:
            self.dropped[reason] = total
            self.report_loss()  # after the change

    def answered_late(self, count: int, nbytes: int, to: str, quarantined: int) -> None:
        """``count`` events of unknown fate (``nbytes`` bytes) got their answer: they leave
        unknown for ``to`` ("sent" or a drop reason). ``flush()`` said they were not
        acknowledged meanwhile, and is not told otherwise (no loss reported). One change.
        """
        total = self.dropped.get(to, 0) + count
        # The change (no call from here).
        self.unknown -= count
        if to == "sent":
            self.sent, self.bytes_sent = self.sent + count, self.bytes_sent + nbytes
            self.quarantined += quarantined
        else:
            self.dropped[to] = total

    def snapshot(
        self, *, emitted: int, queued: int, in_flight: int, queued_bytes: int, interval: float
    ) -> DeliveryStats:
        """The public snapshot, with the queue's own counters."""
        return DeliveryStats(
            emitted=emitted,
            sent=self.sent,
            dropped=sum(self.dropped.values()),
            dropped_by_reason=dict(self.dropped),
            dropped_by_level={
                logging.getLevelName(level): count
                for level, count in sorted(self.dropped_levels.items())
            },
            queued=queued,
            in_flight=in_flight,
            quarantined=self.quarantined,
            truncated=self.truncated,
            repaired=self.repaired,
            requests=self.requests,
            retries=self.retries,
            bytes_sent=self.bytes_sent,
            wire_bytes_sent=self.wire_bytes_sent,
            queued_bytes=queued_bytes,
            last_error=self.last_error,
            send_interval=interval,
            spooled=self.spooled,
            unspooled=self.unspooled,
            unknown=self.unknown,
        )
