"""One flush round: what a ``flush()`` waits for, and whether it is all acknowledged.

A round is made of each channel's flush mark (``Channel.request_flush``: the events queued
before it, resolved) and, with a spool, the files of those data sources on disk when it
began (``_spill.Backlog``). Its result also says whether anything was lost since the same
caller's previous round returned (its ``LossWatch``: channels retired or detached since
count too), so that a drop between two flushes is reported once.
"""

from __future__ import annotations

from collections.abc import Iterable

from tinybird_export._channel import Channel
from tinybird_export._spill import Backlog
from tinybird_export._tally import LossWatch


class FlushRound:
    """What one flush waits for: every event its channels accepted before it began (made
    due now), resolved, and the spool files of their data sources then on disk (``spooled``:
    a previous process's too), resolved. It is *all acknowledged* when, besides, nothing
    its caller was handed since the caller's previous round returned (or since it started)
    was dropped: a drop before the round began says False too, once.

    Args:
        channels: The channels it flushes.
        losses: The caller's drops (a producer's ``LossWatch``, every opening of it), each
            caller keeping its own "since the previous round returned"; ``None``: the
            caller looks at them itself (the process, whose flush makes several rounds).
        spooled: The spool files it waits for (``Worker.spool_backlog``), if any.
    """

    def __init__(
        self,
        channels: Iterable[Channel],
        losses: LossWatch | None,
        spooled: Backlog | None = None,
    ) -> None:
        self._losses = losses
        self._begun = losses.begin() if losses is not None else 0
        self._marks = [(channel, channel.request_flush()) for channel in channels]
        self._spooled = spooled

    def reached(self) -> bool:
        """Every event accepted before the round was sent or dropped, and every spool file
        of its data sources then on disk is resolved.
        """
        return all(channel.reached(mark) for channel, mark in self._marks) and (
            self._spooled is None or self._spooled.settled()
        )

    def result(self, reached: bool, *, returning: bool = True) -> bool:
        """Whether the round is all acknowledged, given whether it was ``reached``; with
        ``returning`` the round ends here (the next one looks at drops from now on).
        """
        losses = self._losses
        lost = losses is not None and losses.since(self._begun, returning=returning)
        return reached and not lost
