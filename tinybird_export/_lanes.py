"""Lanes: one host and data source of this process, shared by every producer sending there.

A lane has at most one request in flight, so the data source's requests stay in order, and
a lane that hangs or is paused for a retry holds up no other. Its gates: the pause after a
retryable failure (``paused_until``, set by delivery) and the pacing of the server's rate
limit (``_pacing``; not at exit, where the budget is short and a 429 still pauses through
``Retry-After``). Lanes are keyed by host and data source across the process, so that
producers on two tokens pace one data source together, under its one rate limit.

The ``LaneTable`` (the process's) owns whether a lane is claimed, under its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tinybird_export._pacing import Pacing


class Lane:
    """One host and data source of this process: its claim and its gates.

    Args:
        host: The API host.
        datasource: The data source.
        flush_interval: Its first producer's, the base of its pacing.
        adaptive: Whether the rate limit paces it.
    """

    def __init__(self, host: str, datasource: str, flush_interval: float, adaptive: bool) -> None:
        self.key = (host, datasource)
        self.datasource = datasource
        self.busy = False  # claimed by a sender (the table's lock)
        self.paused_until = 0.0  # after a retryable failure
        self.failing = False  # the last attempt failed retryably: an outage, for the spool
        self.refused = False  # the last attempt's connection was refused: nothing listens
        self.search_400 = True  # a 400 naming no line is searched for its bad line (_bad_line)
        self.pacing = Pacing(flush_interval, adaptive)
        self._users = 0  # schedulers serving it (the table's lock)
        self._waiting: list[Callable[[], None]] = []  # who found it claimed

    def __repr__(self) -> str:
        return f"<Lane {self.datasource} busy={self.busy}>"

    def ready_at(self, draining: bool, full_batch: bool = False) -> float:
        """When it may send next (``time.monotonic()``); at exit, pacing does not hold, and
        a full batch is not paced, only held while the server's window has no room
        (``_pacing``).
        """
        if draining:
            return self.paused_until
        return max(self.paused_until, self.pacing.not_before(full_batch=full_batch))

    def reset(self) -> None:
        """As new (a forked child)."""
        self.busy, self.paused_until, self.failing, self.refused = False, 0.0, False, False
        self.search_400 = True
        self.pacing = Pacing(self.pacing.base, self.pacing.enabled)
        self._waiting = []


class LaneTable:
    """Every lane of the process, by host and data source (one instance, the process's)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._lanes: dict[tuple[str, str], Lane] = {}

    def join(self, host: str, datasource: str, flush_interval: float, adaptive: bool) -> Lane:
        """The lane of ``host`` and ``datasource`` (made by its first user)."""
        with self._lock:
            lane = self._lanes.get((host, datasource))
            if lane is None:
                lane = self._lanes[(host, datasource)] = Lane(
                    host, datasource, flush_interval, adaptive
                )
            lane._users += 1
            return lane

    def leave(self, lane: Lane) -> None:
        """One user fewer; the last one forgets it (a sender holding it finishes alone)."""
        with self._lock:
            lane._users -= 1
            if lane._users <= 0 and self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]

    def try_claim(self, lane: Lane, wake: Callable[[], None]) -> bool:
        """Claim ``lane``; if it is claimed already, ``wake`` is called when it is free."""
        with self._lock:
            if lane.busy:
                if wake not in lane._waiting:
                    lane._waiting.append(wake)
                return False
            lane.busy = True
            return True

    def release(self, lane: Lane) -> None:
        """Free ``lane``, and wake whoever found it claimed meanwhile."""
        with self._lock:
            lane.busy = False
            waiting, lane._waiting = lane._waiting, []
        for wake in waiting:
            wake()

    def after_fork_in_child(self) -> None:
        """A new lock (the parent's may have been held at fork), every lane as new."""
        self._lock = threading.RLock()
        for lane in self._lanes.values():
            lane.reset()
