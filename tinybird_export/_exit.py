"""The ways a process stops that need more than ``atexit``: SIGTERM, and uWSGI's checks.

SIGTERM's default action ends the process without running ``atexit`` hooks, so the exit
drain would never run. Both ways the package takes SIGTERM are here, in one object the
process owns (``Sigterm``), given the process's exit drain:

- the application's choice, ``install_sigterm_handler()``: SIGTERM raises
  ``SystemExit(143)`` in the main thread, through the drain (after a previous handler);
- a multiprocessing child that left SIGTERM at its default (``Pool.terminate()``): drain,
  then die by the signal as before (same exit status for the parent).

A SIGTERM that lands while the thread is inside an offer (holding a channel's lock) is
delivered again 10 ms later, once the offer is done: draining there would wait out the
exit budget for that lock, and raising there would leave the offer half done.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from tinybird_export import _diagnostics

_REDELIVER_DELAY: Final = 0.01  # seconds: an offer takes microseconds
_REDELIVER_MAX: Final = 100  # then drain anyway (a thread stuck inside an offer)


class Sigterm:
    """SIGTERM's two paths to the exit drain (one instance, owned by the process).

    Args:
        drain: The process's exit drain.
        inside_offer: Whether this thread holds a channel's lock (a signal landed there).
        draining_here: Whether this thread is running the exit drain.
    """

    def __init__(
        self,
        drain: Callable[[], object],
        inside_offer: Callable[[], bool],
        draining_here: Callable[[], bool],
    ) -> None:
        self._drain = drain
        self._inside_offer = inside_offer
        self._draining_here = draining_here
        self._deferred = 0  # a signal that interrupted the drain: die by it after
        self._redelivered = 0  # consecutive re-deliveries of a signal
        self.installed = False
        """Whether ``install_sigterm_handler()`` installed its handler in this process."""

    def after_fork_in_child(self) -> None:
        """The parent's pending signal is not the child's."""
        self._deferred = self._redelivered = 0

    def install(self) -> None:
        """``install_sigterm_handler()``: see its docstring (``_process``)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "tinybird-export: install_sigterm_handler() must be called from the main thread"
            )
        previous = signal.getsignal(signal.SIGTERM)
        if getattr(previous, "_tinybird_export", False):
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> Any:
            if previous is signal.SIG_IGN or self.redeliver_if_inside_offer(signum):
                return None
            if callable(previous):
                self._drain()  # the previous handler may never return: deliver first
                previous(signum, frame)
            raise SystemExit(128 + signum)

        on_sigterm._tinybird_export = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, on_sigterm)
        self.installed = True

    def install_in_child(self) -> None:
        """Multiprocessing stops its children with SIGTERM (``Pool.terminate()``, which
        ``with Pool() as pool`` calls on exit), whose default action skips every hook: in a
        child that left SIGTERM at its default, drain first, then die by the signal.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may install a handler
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._in_child)

    def _in_child(self, signum: int, _frame: object) -> None:
        if self.redeliver_if_inside_offer(signum):
            return
        if self._draining_here():
            # The signal interrupted this thread's own exit drain (a finalizer): let it
            # finish, then die by the signal.
            self._deferred = signum
            return
        self._drain()
        die_by(signum)

    def after_exit(self) -> None:
        """The exit drain is over: die by a signal that interrupted it, if one did."""
        if self._deferred:
            die_by(self._deferred)

    def redeliver_if_inside_offer(self, signum: int) -> bool:
        """For a handler that would drain: if the signal interrupted this thread inside an
        offer, deliver it again in 10 ms and return True (the handler then returns, the
        offer completes, and the signal comes back). After a second of that, drain anyway.
        """
        if self._redelivered >= _REDELIVER_MAX or not self._inside_offer():
            self._redelivered = 0
            return False
        self._redelivered += 1
        pid = os.getpid()

        def again() -> None:
            time.sleep(_REDELIVER_DELAY)
            os.kill(pid, signum)

        try:
            threading.Thread(target=again, name="tinybird-export-signal", daemon=True).start()
        except RuntimeError:  # no thread to be had (shutdown, a pids limit): drain now
            self._redelivered = 0
            return False
        return True


def die_by(signum: int) -> None:
    """End the process by ``signum``'s default action, as if no handler had run."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def check_uwsgi() -> None:
    """Under uWSGI, warn once when the worker thread cannot run or forks would break it.

    uWSGI runs no threads without ``enable-threads``, and with a pre-forking master and no
    ``lazy-apps`` it may fork without Python's fork hooks (sentry's check, peers.md §3
    row 17).
    """
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return
    options = getattr(uwsgi, "opt", {}) or {}

    def enabled(name: str) -> bool:
        value = options.get(name)
        if isinstance(value, bytes):
            value = value.decode()
        return value not in (None, False, "", "0", "false", "False", 0)

    if not (enabled("enable-threads") or enabled("threads")):
        _diagnostics.say_once(
            "uwsgi-threads",
            "uWSGI is running without threads, so events are never sent in the background: "
            "add 'enable-threads = true' to the uWSGI config, or set background=False and "
            "call handler.flush() at the end of each request.",
        )
    elif enabled("master") and not (
        enabled("lazy-apps") or enabled("lazy") or enabled("py-call-osafterfork")
    ):
        _diagnostics.say_once(
            "uwsgi-fork",
            "uWSGI forks workers from a master that loaded the app: add 'lazy-apps = true' "
            "(or 'py-call-osafterfork = true') so each worker starts its own sender.",
        )
