"""Whether this thread is inside one of the package's calls, for code that runs between two
of its bytecodes: a signal handler (Python runs it on the main thread, in the middle of
whatever that thread was doing) or a finalizer.

Such code must not wait for a lock of the package, nor raise into its half-done state: the
frame it interrupted may hold the lock (the spool's listing, its receipts, a first connect:
plain locks), on this same thread, and never gets to release it while the handler waits.
So the public calls that take them (``flush``, ``close``, ``shutdown``...) enter the
process's ``Entries``: a handler that finds this thread inside defers its work to the end
of the outermost call (``defer``), and a public call made from inside one (the app's own
signal handler calling ``flush()``) learns it at entry, and returns at once.

A record's offer (the hot path) does not enter: it holds only its channel's lock, which the
channel reports (``Channel.held_by_this_thread``), and counts as inside too.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType


class Entries:
    """The depth of each thread inside the package's public calls, and the work deferred
    to the end of its outermost one (one instance, the process's).

    Use as a context manager around a public call: ``with entries as interrupted``, where
    ``interrupted`` says that this thread was inside the package already (the call was made
    from a signal handler or a finalizer that interrupted it).

    Args:
        inside_offer: Whether this thread holds a channel's lock.
    """

    def __init__(self, inside_offer: Callable[[], bool]) -> None:
        self._inside_offer = inside_offer
        self._local = threading.local()  # depth: int; deferred: list of callables

    def __enter__(self) -> bool:
        local = self._local
        depth = self._depth()
        interrupted = depth > 0 or self._inside_offer()
        if depth == 0:
            local.outer = sys._getframe(1)  # the outermost public call's frame
        local.depth = depth + 1  # the last step: a KeyboardInterrupt before it counts nothing
        return interrupted

    def __exit__(self, *_: object) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0:
            local.outer = None
            deferred = getattr(local, "deferred", None)
            if deferred:
                local.deferred = []
                try:
                    for action in deferred:
                        action()  # a signal's exit raises from here: the outermost call's end
                except BaseException:
                    local.keys = set()  # the rest will not run: the next signal must act
                    raise

    def _depth(self) -> int:
        """This thread's depth, healed: a KeyboardInterrupt raised as ``__exit__`` began
        (before its count) left a call counted whose frame is gone; it is over, and so is
        any work deferred to its end (the process is told so by the signal's own exit).
        """
        local = self._local
        depth: int = getattr(local, "depth", 0)
        if depth and not _on_this_stack(getattr(local, "outer", None)):
            local.depth = depth = 0
            local.outer, local.deferred, local.keys = None, [], set()
        return depth

    def inside(self) -> bool:
        """Whether this thread is inside the package (a public call, or an offer)."""
        return self._depth() > 0 or self._inside_offer()

    def inside_call(self) -> bool:
        """Whether this thread is inside a public call (whose end runs deferred work)."""
        return self._depth() > 0

    def deferring(self) -> bool:
        """Whether work waits for the end of this thread's outermost call (a signal): a
        wait inside that call stops, so that the signal acts now rather than at its timeout.
        """
        return bool(getattr(self._local, "deferred", None))

    def defer(self, key: str, action: Callable[[], object]) -> None:
        """Run ``action`` at the end of this thread's outermost call, once per ``key`` (a
        signal delivered twice meanwhile acts once).
        """
        local = self._local
        keys: set[str] = getattr(local, "keys", set())
        local.keys = keys
        if key in keys:
            return
        keys.add(key)
        deferred: list[Callable[[], object]] = getattr(local, "deferred", [])

        def once() -> None:
            keys.discard(key)
            action()

        local.deferred = [*deferred, once]


def _on_this_stack(frame: object) -> bool:
    """Whether ``frame`` is still executing on this thread's stack (a signal handler's
    stack includes the frames it interrupted).
    """
    current: FrameType | None = sys._getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False
