"""The package's own diagnostics: stderr, once per distinct problem, never through ``logging``.

Writing to stderr rather than a logger keeps the worker out of ``logging`` entirely: no
record of ours can reach our own handler (peers.md §3 rows 6-8), and no ``logging`` lock is
ever taken from the worker thread.
"""

from __future__ import annotations

import sys
import threading

_said: set[str] = set()
# Re-entrant: a signal handler that logs may interrupt this thread inside say_once.
_said_lock = threading.RLock()


def say(message: str) -> None:
    """Write one line to stderr; never raises (stderr may be closed at exit)."""
    stream = sys.stderr or sys.__stderr__
    try:
        if stream is not None:
            stream.write(f"tinybird-export: {message}\n")
            stream.flush()
    except Exception:  # noqa: BLE001, S110 - diagnostics must never hurt the application
        pass


def say_once(key: str, message: str) -> None:
    """Write ``message`` the first time ``key`` is seen in this process."""
    with _said_lock:
        if key in _said:
            return
        _said.add(key)
    say(message)


def forget(prefix: str) -> bool:
    """Let every message whose key starts with ``prefix`` be said again (the situation it
    described changed); whether there was one.
    """
    with _said_lock:
        keys = {key for key in _said if key.startswith(prefix)}
        _said.difference_update(keys)
    return bool(keys)


def after_fork_in_child() -> None:
    """A new lock: another thread of the parent may have held it at fork."""
    global _said_lock  # noqa: PLW0603 - the parent's lock object may be held forever
    _said_lock = threading.RLock()
