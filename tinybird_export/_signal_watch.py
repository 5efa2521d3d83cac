"""A pool child's SIGTERM reaches its Python handler even when the main thread missed it.

Python runs a signal's handler on the main thread only, between two bytecodes: the C-level
handler just marks the signal, and counts on it interrupting what the main thread waits in
(``EINTR``). When that C handler runs while the main thread is in user space (a pool worker
in glibc's ``sem_wait``, woken by a sibling freeing the task queue's lock but beaten to it by
the parent's ``terminate()``, which then holds it for good), or on another thread, nothing
interrupts the main thread: it waits on, the mark is never acted on, and ``terminate()``
joins the worker forever (SIGTERM's default action would have ended it). Seen as a hang of
``with Pool(2) as pool`` in about 1 run in 20 on a loaded 2-core machine.

So the child's handler comes with a watch (``SignalWatch``): the C handler also writes the
signal's number to a wakeup fd (``signal.set_wakeup_fd``), a daemon thread reads it, and
until the Python handler has begun, sends the signal to the main thread itself
(``pthread_kill``), which interrupts its wait. If that fails for ``GIVE_UP_AFTER`` seconds
(the main thread stuck in code that retries on ``EINTR``), the process ends as the default
action would have (``os._exit(128 + signum)``), and says so: never a worker that outlives
its SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Final

from tinybird_export import _diagnostics

NUDGE_INTERVAL: Final = 0.05
"""Seconds the main thread has to begin the handler before it is sent the signal again."""
GIVE_UP_AFTER: Final = 5.0
"""Seconds of sending it in vain before the process ends without its handler."""


class SignalWatch:
    """Sees that a signal's Python handler begins on the main thread (one instance, owned by
    the process's ``Sigterm``, started in a multiprocessing child with its handler).

    Args:
        signum: The signal watched.
    """

    def __init__(self, signum: int) -> None:
        self._signum = signum
        self._handler: object = None  # the package's handler it watches for
        self._pipe: tuple[int, int] | None = None  # (read, write): this process's wakeup fd
        self.began = False
        """Set by the handler as it begins (a bool store: safe in a signal handler)."""

    def start(self, handler: object) -> None:
        """Watch from now on, on the main thread, while ``handler`` (the package's) is the
        signal's handler; a no-op when already watching, or when the wakeup fd is another's
        (an event loop's signal handling).
        """
        self._handler = handler
        if self._pipe is not None or threading.current_thread() is not threading.main_thread():
            return
        read, write = os.pipe()  # not inherited by exec'd programs
        os.set_blocking(write, False)  # the C handler must never block on it
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        if previous != -1:  # another's: leave it as it was
            signal.set_wakeup_fd(previous)
            _close(read, write)
            return
        self._pipe = (read, write)
        main = threading.main_thread().ident
        try:
            threading.Thread(
                target=self._watch,
                args=(read, main),
                name="tinybird-export-signal-watch",
                daemon=True,
            ).start()
        except RuntimeError:  # no thread to be had: no watch, as before
            self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        """The watching thread is the parent's: stop sharing its pipe (a signal here would
        nudge the parent's main thread), and watch again if this child installs a handler.
        """
        self.began = False
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        try:
            current = signal.set_wakeup_fd(-1)
        except ValueError:  # not the main thread: the C handler may still write to it
            return
        if current not in (-1, pipe[1]):
            signal.set_wakeup_fd(current)  # set since by another: theirs
        _close(*pipe)

    def _watch(self, read: int, main: int | None) -> None:
        while True:
            try:
                numbers = os.read(read, 64)
            except OSError:  # closed
                return
            if not numbers:
                return
            if self._signum in numbers and not self.began and main is not None:
                self._nudge(main)

    def _nudge(self, main: int) -> None:
        give_up_at = time.monotonic() + GIVE_UP_AFTER
        while time.monotonic() < give_up_at:
            time.sleep(NUDGE_INTERVAL)  # its chance to begin first (the usual case)
            # Begun; or the handler is another's now (the application's own, or one that
            # install_sigterm_handler() chains in front): theirs to run, and never ended here.
            if self.began or signal.getsignal(self._signum) != self._handler:
                return
            try:
                signal.pthread_kill(main, self._signum)
            except (OSError, ValueError):  # the main thread is gone: the process is ending
                return
        if signal.getsignal(self._signum) != self._handler:
            return
        _diagnostics.say(
            f"signal {self._signum} reached this process but its main thread never ran the "
            f"handler in {GIVE_UP_AFTER:g} s (stuck in code that does not return to Python): "
            "the process ends without its exit drain."
        )
        os._exit(128 + self._signum)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
