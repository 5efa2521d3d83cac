"""The threads that send for one worker: started on demand, supervised, woken, never polling.

A worker runs up to ``MAX_SENDERS`` daemon threads, each looping over the worker's step
(claim the next due source, send it). A second thread starts only when a lane has work
while every thread is busy with another lane, so a process with one data source runs one
thread. Threads sleep on a ``SimpleQueue`` (whose ``put`` is safe in a signal handler,
unlike ``Event.set``) until woken: a channel's queue got its first line (arming the
interval timer), a batch filled, a flush, the exit, or the time the step said something
becomes due.

The loop is supervised: an unexpected exception is reported once on stderr and the loop
goes on; a thread that dies anyway is replaced by the next enqueue or flush. When no thread
runs (``background=False``, or during exit) the same step runs on the calling thread, within
its deadline (``run_here``).

``SendingThreads`` is the recursion guard: records created on a thread while it sends (or
runs ``before_send``) are dropped, so the package never feeds on its own logs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

THREAD_NAME: Final = "tinybird-export-worker"
MAX_SENDERS: Final = 4
"""Concurrent requests per worker at most (each to a different data source)."""
_POLL: Final = 0.05
"""How often a waiting flush or drain re-checks for lines queued by a signal handler."""

Step = Callable[[float | None], "bool | float | None"]
"""One step of a worker within a deadline: True if it sent something, else when something
may be due (``None``: not before it is woken)."""


class SendingThreads:
    """The threads sending right now (one instance, the process's).

    ``idents`` is read on every ``emit`` (a set lookup); it changes only through ``marked``.
    """

    def __init__(self) -> None:
        self.idents: set[int] = set()

    def marked(self) -> _Marked:
        """``with guard.marked():`` the current thread is sending (re-entrant)."""
        return _Marked(self.idents)

    def after_fork_in_child(self) -> None:
        """The parent's threads do not exist in the child."""
        self.idents.clear()


class _Marked:
    __slots__ = ("_ident", "_idents", "_outer")

    def __init__(self, idents: set[int]) -> None:
        self._idents = idents
        self._ident = threading.get_ident()
        self._outer = False

    def __enter__(self) -> None:
        self._outer = self._ident in self._idents  # a signal handler on a sending thread
        self._idents.add(self._ident)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._outer:
            self._idents.discard(self._ident)


class Senders:
    """One worker's sender threads, and its step on a caller's thread.

    Args:
        step: The worker's step.
        guard: The process's recursion guard.
        can_start: Whether a thread may start now (not at exit, nor with
            ``background=False``).
        report: Says an unexpected exception once.
        closed: Called by the last thread once stopped (the transport closes).
    """

    def __init__(
        self,
        step: Step,
        guard: SendingThreads,
        *,
        can_start: Callable[[], bool],
        report: Callable[[Exception], None],
        closed: Callable[[], None],
    ) -> None:
        self._step = step
        self._guard = guard
        self._can_start = can_start
        self._report = report
        self._closed = closed
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.RLock()  # the counts (re-entrant: a signal handler may log)
        # Made at first use in this process, not here: a forked gunicorn gevent worker
        # patches threading and queue after the fork hook ran, and waits made before the
        # patch would block its whole event loop.
        self._waits: tuple[queue.SimpleQueue[None], threading.Condition] | None = None
        self.running = 0  # threads running the loop
        self._idle = 0  # of which waiting for work
        self._starting = False
        self.stopping = False
        # Who waits without a thread (an awaited flush): checked at each progress.
        self._watchers: dict[object, tuple[Callable[[], bool], Callable[[], None]]] = {}

    def after_fork_in_child(self) -> None:
        """No thread of the parent runs here: new locks, waits made lazily."""
        self._reset()

    # -- waking and starting -------------------------------------------------------------

    def wake(self) -> None:
        """Wake a waiting thread (safe in a signal handler)."""
        self._wait_primitives()[0].put(None)

    def handoff(self) -> None:
        """A thread claimed work: another lane may be due too, so let an idle one look."""
        if self._idle:
            self.wake()

    def needed(self, lane_claimed: bool) -> bool:
        """Whether new work needs a thread: none runs, or the work's lane is free while
        every thread is busy (unlocked reads: a stale answer costs one thread more, or
        one enqueue later).
        """
        if not self._can_start() or self.stopping:
            return False
        if self.running == 0:
            return True
        return not (self._idle or self.running >= MAX_SENDERS or lane_claimed)

    def start(self) -> None:
        """Start one thread more, up to ``MAX_SENDERS``."""
        with self._lock:
            if self._starting or self.running >= MAX_SENDERS:
                return  # _starting: a signal handler interrupted Thread.start on this thread
            self._starting = True
            self.running += 1
        try:
            threading.Thread(target=self._run, name=THREAD_NAME, daemon=True).start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            with self._lock:
                self.running -= 1
        finally:
            self._starting = False

    def stop(self) -> None:
        """Let the threads end; the last one (or this call, if none runs) closes."""
        with self._lock:
            self.stopping = True
            running = self.running
        for _ in range(running):
            self.wake()
        if not running:
            self._closed()

    def progressed(self) -> None:
        """Something was sent or given up: wake the callers waiting for progress, and call
        the watchers whose condition now holds.
        """
        progress = self._wait_primitives()[1]
        with progress:
            progress.notify_all()
        if self._watchers:
            with self._lock:
                due = [(key, call) for key, (done, call) in self._watchers.items() if done()]
                for key, _ in due:
                    del self._watchers[key]
            for _, call in due:
                call()

    def watch(self, done: Callable[[], bool], call: Callable[[], None]) -> Callable[[], None]:
        """Call ``call()`` once ``done()`` holds, on the thread that made the progress (it
        must be quick and never raise: an event loop's ``call_soon_threadsafe``); how to
        stop watching. A caller waits so without a thread of its own (``aflush``).
        """
        key = object()
        with self._lock:
            self._watchers[key] = (done, call)

        def stop() -> None:
            with self._lock:
                self._watchers.pop(key, None)

        return stop

    # -- the threads' loop ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self._guard.marked():
                while not self.stopping:
                    try:
                        got = self._step(None)
                        if got is not True:
                            self._sleep(got)
                    except Exception as exc:  # noqa: BLE001 - supervised: report, go on
                        self._report(exc)
                        self._sleep(time.monotonic() + _POLL)  # a bug that repeats: no spin
        finally:
            with self._lock:
                self.running -= 1
                last = self.stopping and self.running == 0
            if last:
                self._closed()

    def _sleep(self, due_at: float | None) -> None:
        wakeups = self._wait_primitives()[0]
        with self._lock:
            self._idle += 1
        try:
            timeout = None if due_at is None else max(due_at - time.monotonic(), 0.001)
            wakeups.get(timeout=timeout)
            while True:  # one wake-up is enough: the step looks at every lane
                wakeups.get_nowait()
        except queue.Empty:
            pass
        finally:
            with self._lock:
                self._idle -= 1

    # -- the caller's thread ----------------------------------------------------------------

    def wait_until(
        self, done: Callable[[], bool], deadline: float, give_up: Callable[[], bool] = bool
    ) -> bool:
        """Have everything sent until ``done()`` or ``deadline`` (or ``give_up()``: False):
        by the threads when they run (a dead one is replaced first), else on this thread.
        """
        if self.running == 0 and self._can_start() and not self.stopping:
            self.start()
        if not self.running:
            return self.run_here(done, deadline, give_up)
        self.wake()
        progress = self._wait_primitives()[1]
        with progress:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or give_up():
                    return False
                progress.wait(min(remaining, _POLL))
        return True

    def run_here(
        self, done: Callable[[], bool], deadline: float, give_up: Callable[[], bool] = bool
    ) -> bool:
        """The step on this thread until ``done()`` or ``deadline`` (or ``give_up()``) (the
        exit drain, and ``background=False``): it sends too when no thread can take a due lane.
        """
        progress = self._wait_primitives()[1]
        with self._guard.marked():
            while not done():
                now = time.monotonic()
                if now >= deadline or give_up():
                    return False
                try:
                    got = self._step(deadline)
                except Exception as exc:  # noqa: BLE001 - supervised: report, go on
                    self._report(exc)
                    got = now + _POLL
                if got is True:
                    continue
                wait = deadline - now if got is None else min(got, deadline) - now
                with progress:  # another thread's progress, or a queued line
                    progress.wait(min(max(wait, 0.001), _POLL))
            return True

    def _wait_primitives(self) -> tuple[queue.SimpleQueue[None], threading.Condition]:
        waits = self._waits
        if waits is None:
            with self._lock:
                if self._waits is None:
                    self._waits = (queue.SimpleQueue(), threading.Condition(threading.RLock()))
                waits = self._waits
        return waits
