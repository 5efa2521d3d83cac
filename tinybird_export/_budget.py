"""The process's memory budget: what every channel may hold, open or closed.

Each producer's ``queue_max_bytes`` bounds its own channel, and the process as a whole
holds at most the sum of its *open* producers' ``queue_max_bytes``. A closed producer (a
handler replaced by a second ``dictConfig``, say) adds nothing to that sum, yet what it
still holds counts: it is taken from the open channels' allowances, in proportion to their
``queue_max_bytes``, until the closed channel is sent or given up at its close deadline.

The budget is rebalanced when a channel opens, closes or is released, and when a closed
channel's held bytes fall; the caller's side only reads its channel's allowance.
"""

from __future__ import annotations

import threading

from tinybird_export._channel import Channel


class MemoryBudget:
    """Splits the process's memory bound among its channels (owned by ``_process``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._channels: list[Channel] = []

    def add(self, channel: Channel) -> None:
        """Count ``channel`` in the budget."""
        with self._lock:
            self._channels.append(channel)
            self._rebalance()

    def remove(self, channel: Channel) -> None:
        """Stop counting ``channel`` (it was detached: empty, or given up)."""
        with self._lock:
            self._channels = [c for c in self._channels if c is not channel]
            self._rebalance()

    def rebalance(self) -> None:
        """Recompute the allowances (a channel closed, or a closed one released bytes)."""
        with self._lock:
            self._rebalance()

    def _rebalance(self) -> None:
        open_channels = [c for c in self._channels if not c.closed]
        total = sum(c.limits.queue_max_bytes for c in open_channels)
        held_by_closed = sum(c.held_bytes() for c in self._channels if c.closed)
        for channel in open_channels:
            share = channel.limits.queue_max_bytes
            channel.set_allowance(max(share - held_by_closed * share // total, 0))

    def limit(self) -> int:
        """The process's bound: the sum of the open channels' ``queue_max_bytes``."""
        with self._lock:
            return sum(c.limits.queue_max_bytes for c in self._channels if not c.closed)

    def after_fork_in_child(self) -> None:
        """A fresh lock; the channels themselves are reset by their workers."""
        self._lock = threading.RLock()
