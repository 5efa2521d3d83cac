"""One flush round: what a ``flush()`` waits for, and whether it is all acknowledged.

A round is made of each channel's flush mark (``Channel.request_flush``: the events queued
before it, resolved) and, with a spool, the files of those data sources on disk when it
began (``_spill.Backlog``). Its result also says whether anything was lost since the same
caller's previous round returned, so that a drop between two flushes is reported once.
"""

from __future__ import annotations

from collections.abc import Iterable

from tinybird_export._channel import Channel
from tinybird_export._spill import Backlog


class FlushRound:
    """What one flush waits for: every event its channels accepted before it began (made
    due now), resolved, and the spool files of their data sources then on disk (``spooled``:
    a previous process's too), resolved. It is *all acknowledged* when, besides, nothing
    its channels were handed since the same caller's previous round returned (or since
    they started) was dropped: a drop before the round began says False too, once.

    Args:
        channels: The channels it flushes.
        by: Whose rounds (``"producer"``, ``"process"``): each caller keeps its own
            "since the previous round returned".
        spooled: The spool files it waits for (``Worker.spool_backlog``), if any.
    """

    def __init__(
        self, channels: Iterable[Channel], by: str, spooled: Backlog | None = None
    ) -> None:
        self._by = by
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
        by = self._by
        lost = [channel.lost_since_flush(by, returning=returning) for channel, _ in self._marks]
        return reached and not any(lost)
