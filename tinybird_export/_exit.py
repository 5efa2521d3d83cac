"""The ways a process stops that need more than ``atexit``: SIGTERM, and uWSGI's checks.

The exit drain itself, and every hook into the interpreter, belong to ``_process``.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from tinybird_export import _diagnostics
from tinybird_export._process import PROCESS


def install_sigterm_handler() -> None:
    """Make SIGTERM take the normal exit path, so the exit drain runs within its budget.

    SIGTERM's default action ends the process without running ``atexit`` hooks. After this
    call, SIGTERM raises ``SystemExit(143)`` in the main thread, through the exit drain. If
    another handler was installed before (a framework's hard stop, which may end the
    process with ``os._exit``), the drain runs first, within the exit budget, then that
    handler is called, then ``SystemExit(143)`` is raised if it returned. A previous
    ``SIG_IGN`` is respected. Calling it twice installs it once.

    gunicorn and celery install their own SIGTERM handling and exit normally: there, this
    is not needed. For uvicorn, see the README.

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
        if previous is signal.SIG_IGN or PROCESS.redeliver_if_inside_offer(signum):
            return None
        if callable(previous):
            PROCESS.exit()  # the previous handler may never return: deliver first
            previous(signum, frame)
        raise SystemExit(128 + signum)

    on_sigterm._tinybird_export = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


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
