"""Process lifecycle: the bounded drain at exit, multiprocessing children, opt-in SIGTERM.

``atexit`` runs hooks last-registered-first; this module registers after ``logging`` was
imported, so the drain runs before ``logging.shutdown`` closes handlers. The drain runs on
the exiting thread (the worker thread, if alive, keeps sending meanwhile) and never starts a
thread (peers.md §3 row 5: OpenTelemetry's thread-at-shutdown bug).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from tinybird_export import _diagnostics, _worker
from tinybird_export._channel import Channel


def drain_at_exit() -> None:
    """Send what is queued within the exit budget, then report what could not be sent."""
    workers = [w for w in list(_worker.workers.values()) if w.exit_deadline is None]
    if not workers:
        return
    budget = max(w._config.exit_timeout for w in workers)
    deadline = time.monotonic() + budget
    for worker in workers:
        worker.exit_deadline = deadline
        worker.draining = True
        worker.wake.set()
    for worker in workers:
        worker.drain(deadline)
    channels = [channel for worker in workers for channel in worker.channels]
    report_undelivered(channels, f"at exit (exit budget {budget:g} s)")


def report_undelivered(channels: list[Channel], when: str) -> None:
    """Count what is still queued as dropped (``exit_timeout``) and say so in one line."""
    total = 0
    reasons: list[str] = []
    for channel in channels:
        lost = channel.abandon("exit_timeout")
        if lost:
            total += lost
            why = channel.last_error or "the endpoint did not answer in time"
            reasons.append(f"{lost} for {channel.datasource!r} ({why})")
    if total:
        _diagnostics.say(f"{total} event(s) not delivered {when}: " + "; ".join(reasons))


atexit.register(drain_at_exit)


class _AfterForkToken:
    """A weakly referenced key for multiprocessing's after-fork registry."""


_after_fork_token = _AfterForkToken()
_multiprocessing_hooked = False


def _before_fork() -> None:
    """Children of ``multiprocessing`` end with ``os._exit``, skipping ``atexit``: drain in
    a multiprocessing finalizer there instead (registered only when it is in use).
    """
    global _multiprocessing_hooked  # noqa: PLW0603
    util = sys.modules.get("multiprocessing.util")
    if util is not None and not _multiprocessing_hooked:
        _multiprocessing_hooked = True
        util.register_after_fork(_after_fork_token, _register_finalizer)


def _register_finalizer(_token: object) -> None:
    util = sys.modules["multiprocessing.util"]
    util.Finalize(None, drain_at_exit, exitpriority=100)


os.register_at_fork(before=_before_fork)


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


def install_sigterm_handler() -> None:
    """Make SIGTERM take the normal exit path, so the exit drain runs within its budget.

    SIGTERM's default action ends the process without running ``atexit`` hooks. After this
    call, SIGTERM first calls the handler that was installed before (if any), then raises
    ``SystemExit(143)`` in the main thread. A previous ``SIG_IGN`` is respected. Calling it
    twice installs it once.

    gunicorn, uvicorn and celery install their own SIGTERM handling and exit normally:
    there, this is not needed.

    Raises:
        RuntimeError: Called from a thread other than the main thread (Python only lets
            the main thread install signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "tinybird-export: install_sigterm_handler() must be called from the main thread"
        )
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_tinybird_export", False):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> Any:
        if previous is signal.SIG_IGN:
            return None
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    on_sigterm._tinybird_export = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)
