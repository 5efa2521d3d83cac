"""The claim of a closed handler's reopen: taken without waiting, and the records that come
meanwhile parked for the claimer to queue.

A reopen builds a new channel on a worker, maybe a new worker and its TLS context
(milliseconds). A record that comes meanwhile, from another thread, or from a signal handler
or ``__del__`` that interrupted the reopen on its own thread (which would wait for itself on
a lock), is parked in a deque (``append`` is atomic: no lock it could wait on) and queued
when the reopen ends: by the claimer, or by the parker itself when the claim was released
meanwhile (a claimer that already looked at the deque may have missed it).

Fork: a claim held by another thread of the parent would stay held in the child, whose
records would then park for a reopen that never ends there. The process's fork hook calls
``after_fork_in_child``: every claim is free again in the child, and the lines parked for
the parent's reopen are the parent's to queue.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable

Line = tuple[bytes, int, int]
"""An encoded line, ``encode_event``'s flags, and the record's logging level."""

Offer = Callable[[bytes, int, int], None]


class ReopenClaim:
    """One producer's reopen claim, and the lines parked while it is held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parked: collections.deque[Line] = collections.deque()
        _CLAIMS.add(self)

    def take(self) -> threading.Lock | None:
        """The claim, held now (give it to ``release``); ``None`` if a reopen is under way,
        on this thread or another: ``park`` the line then.
        """
        lock = self._lock  # this one: a forked child's is another
        return lock if lock.acquire(blocking=False) else None

    def park(self, line: Line, offer: Offer) -> None:
        """Keep ``line`` for the reopen under way to ``offer`` at its end."""
        self._parked.append(line)
        if not self._lock.locked():  # the reopen ended meanwhile: it may not have seen it
            self.queue(offer)

    def release(self, claim: threading.Lock, offer: Offer) -> None:
        """The reopen ended (reopened or not): free ``claim``, then ``offer`` every parked
        line (to the new channel, or to be counted as the producer counts them).
        """
        claim.release()
        self.queue(offer)

    def queue(self, offer: Offer) -> None:
        """``offer`` the parked lines, each once (another thread may be queuing them too)."""
        parked = self._parked
        while parked:
            try:
                line = parked.popleft()
            except IndexError:  # another thread took the last one
                return
            offer(*line)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._parked.clear()


_CLAIMS: weakref.WeakSet[ReopenClaim] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """Free every claim in a forked child (``Process``'s fork hook calls it)."""
    for claim in list(_CLAIMS):
        claim._after_fork_in_child()
