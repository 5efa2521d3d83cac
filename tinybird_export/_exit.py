"""The ways a process stops that need more than ``atexit``: SIGTERM, and uWSGI's checks.

SIGTERM's default action ends the process without running ``atexit`` hooks, so the exit
drain would never run. Both ways the package takes SIGTERM are here, in one object the
process owns (``Sigterm``), given the process's exit drain:

- the application's choice, ``install_sigterm_handler()``: SIGTERM raises
  ``SystemExit(143)`` in the main thread, whose exit drains; or, when a handler was there
  before (a server's graceful stop), what is queued is delivered, that handler is called,
  and the process stops as it decides;
- a multiprocessing child that left SIGTERM at its default (``Pool.terminate()``): drain,
  then die by the signal as before (same exit status for the parent).

A SIGTERM that lands while the main thread is inside the package waits for it to be out:
draining there could wait forever for a lock the interrupted frame holds (the spool's
listing: a plain lock), and raising there would leave its work half done. Inside a public
call (``flush``, ``close``, the exit drain itself...), the handler runs again at the end of
the outermost one (``_reentry``); inside an offer (holding a channel's lock: the hot path
has no end hook), the signal is delivered again 10 ms later. During the exit drain itself,
SIGINT and SIGTERM (at their default actions or the package's handlers) are held until it
has spooled and reported, then end the process (``Sigterm.held``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Final

from tinybird_export import _diagnostics
from tinybird_export._reentry import Entries
from tinybird_export._signal_watch import SignalWatch

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_REDELIVER_DELAY: Final = 0.01  # seconds: an offer takes microseconds
_REDELIVER_MAX: Final = 100  # then drain anyway (a thread stuck inside an offer)


class Sigterm:
    """SIGTERM's two paths to the exit drain (one instance, owned by the process).

    Args:
        drain: The process's exit drain.
        flush: The process-wide flush, within the exit budget.
        inside_offer: Whether this thread holds a channel's lock (a signal landed there).
        entries: Whether this thread is inside a public call of the package, and the work
            deferred to its end (``_reentry``).
        exiting: Whether the interpreter is exiting (its ``atexit`` drain began).
    """

    def __init__(
        self,
        drain: Callable[[], object],
        flush: Callable[[], object],
        inside_offer: Callable[[], bool],
        entries: Entries,
        exiting: Callable[[], bool],
    ) -> None:
        self._drain = drain
        self._flush = flush
        self._inside_offer = inside_offer
        self._entries = entries
        self._exiting = exiting
        self._redelivered = 0  # consecutive re-deliveries of a signal
        self._holding = False  # the exit drain holds SIGINT and SIGTERM (main thread only)
        self._held: list[int] = []  # what arrived meanwhile
        self._watch = SignalWatch(signal.SIGTERM)  # the child's: a SIGTERM the main thread missed
        self.installed = False
        """Whether ``install_sigterm_handler()`` installed its handler in this process."""

    def after_fork_in_child(self) -> None:
        """The parent's pending signal is not the child's."""
        self._redelivered = 0
        self._held = []
        self._watch.after_fork_in_child()

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
            if previous is signal.SIG_IGN or self._not_now(signum, on_sigterm):
                return None
            if self._exiting():  # the interpreter's exit: its drain ran, nothing to stop
                return previous(signum, frame) if callable(previous) else None
            if callable(previous):
                # It owns the stop (gunicorn's and uvicorn's stop gracefully: raising here
                # would cut the request being served): deliver first, in case it ends the
                # process at once (a hard stop's os._exit), then let it be; atexit drains.
                self._flush()
                previous(signum, frame)
                return None
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
        current = signal.getsignal(signal.SIGTERM)
        if current is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._in_child)
        elif current != self._in_child:  # the application's (or inherited: watched again)
            return
        # Python may mark the signal without ever running the handler (the main thread
        # waits on in a lock the parent holds): see _signal_watch.
        self._watch.start(self._in_child)

    def _in_child(self, signum: int, frame: FrameType | None) -> None:
        self._watch.began = True
        if self._not_now(signum, self._in_child):
            return
        self._drain()
        die_by(signum)

    def _not_now(self, signum: int, handler: Callable[[int, FrameType | None], object]) -> bool:
        """For a handler that would drain or raise: whether the signal interrupted this
        thread inside the package, where it must neither wait for what the interrupted
        frame holds nor raise into its half-done state. Inside a public call (the exit
        drain included), the handler runs again at the end of the outermost one; inside an
        offer, the signal is delivered again.
        """
        if self._entries.inside_call():
            self._entries.defer(f"signal {signum}", lambda: handler(signum, None))
            return True
        return self.redeliver_if_inside_offer(signum)

    @contextlib.contextmanager
    def held(self, *, process_ending: bool) -> Iterator[None]:
        """Around the exit drain on the main thread: a SIGTERM or Ctrl-C that would stop it
        (their default actions, Python's ``KeyboardInterrupt``, the package's handlers) waits
        for it to spool and report what it could not send, bounded by the exit budget; then
        the process ends by it. A second signal used to raise inside the drain (a traceback,
        nothing spooled). Other handlers (the application's) are left alone.

        Args:
            process_ending: The interpreter is exiting anyway (its ``atexit``): a held
                signal with a Python handler has nothing left to stop. One at its default
                action still ends the process by it.
        """
        if threading.current_thread() is not threading.main_thread() or self._holding:
            yield
            return
        self._held = []  # before _hold is installed: what it keeps from then on counts
        saved: dict[int, _Handler] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if (
                current is signal.SIG_DFL
                or current is signal.default_int_handler
                or getattr(current, "_tinybird_export", False)
                or current == self._in_child
            ):
                try:
                    signal.signal(signum, self._hold)
                except (ValueError, OSError):  # not this interpreter's to set: leave it
                    continue
                saved[signum] = current
        self._holding = True
        try:
            yield
        finally:
            for number, handler in saved.items():
                signal.signal(number, handler)
            held, self._held, self._holding = self._held, [], False
        if held:
            first = held[0]
            if saved[first] is signal.SIG_DFL:
                die_by(first)
            elif not process_ending:
                signal.raise_signal(first)  # its handler, now: SystemExit, KeyboardInterrupt

    def _hold(self, signum: int, _frame: FrameType | None) -> None:
        self._watch.began = True
        self._held.append(signum)

    def redeliver_if_inside_offer(self, signum: int) -> bool:
        """For a handler that would drain: if the signal interrupted this thread inside an
        offer, deliver it again in 10 ms and return True (the handler then returns, the
        offer completes, and the signal comes back). After a second of that, drain anyway.
        """
        if self._redelivered >= _REDELIVER_MAX or not self._inside_offer():
            self._redelivered = 0
            return False
        self._redelivered += 1
        self._watch.began = False  # the signal comes back: watched again
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
