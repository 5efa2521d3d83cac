"""What the package knows of uvicorn, which it never imports: the server serving this process,
delivery at its shutdown for an app that gets no lifespan, and the warning for an app run
without the ASGI middleware.

uvicorn stops on SIGTERM gracefully (its ``Server.handle_exit`` only asks the loop to stop),
then restores the handler it found and raises the signal again (``Server.capture_signals``,
uvicorn >= 0.29): under its command line that is SIGTERM's default action, so the process
dies by the signal and ``atexit`` (the exit drain) never runs. What the package can still
use, read in uvicorn 0.30 and 0.55 (``server.py``):

- while it serves, SIGTERM's handler is the bound method ``Server.handle_exit``, so
  ``signal.getsignal`` (from any thread) finds the ``Server``;
- its graceful shutdown waits for open connections and background tasks, then awaits
  ``server.lifespan.shutdown()`` (``LifespanOff.shutdown`` does nothing with
  ``--lifespan off``) and only then logs ``Finished server process`` and re-raises.

So an app that gets no lifespan scope has its delivery appended to that ``shutdown``: after
every request has ended, before the signal is raised again. The ``Server`` object is not
ours: this adds one awaited call to one of its attributes, and if it is not what it was
(another server, a later uvicorn), nothing is changed and the caller says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

from tinybird_export import _diagnostics

_MARK: Final = "_tinybird_export_delivers"
_state = {"middleware": False, "watching": False}


def serving_server() -> Any | None:
    """The uvicorn ``Server`` serving this process (whose SIGTERM handler is installed),
    else ``None``; never imports uvicorn.
    """
    if "uvicorn" not in sys.modules:
        return None
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):  # pragma: no cover - platforms without SIGTERM
        return None
    server = getattr(handler, "__self__", None)
    if server is None or not type(server).__module__.startswith("uvicorn."):
        return None
    return server


def deliver_at_shutdown(deliver: Callable[[], Awaitable[None]]) -> bool:
    """Have the serving uvicorn await ``deliver()`` at the end of its graceful shutdown
    (after its lifespan shutdown, before it re-raises SIGTERM); whether it will. Once per
    server, whoever asks.
    """
    lifespan = getattr(serving_server(), "lifespan", None)
    shutdown = getattr(lifespan, "shutdown", None)
    if lifespan is None or not callable(shutdown):
        return False
    if getattr(lifespan, _MARK, False):
        return True

    async def shutdown_then_deliver() -> None:
        try:
            await shutdown()
        finally:
            await deliver()

    try:
        lifespan.shutdown = shutdown_then_deliver
        setattr(lifespan, _MARK, True)
    except (AttributeError, TypeError):  # a slotted or frozen object: not the one we know
        return False
    return True


def note_middleware() -> None:
    """An ASGI ``RequestContextMiddleware`` exists in this process."""
    _state["middleware"] = True


def watch_for_missing_middleware() -> None:
    """Once uvicorn is imported: watch its first request line (and its ``Shutting down``
    line, for ``--no-access-log``) for an app served without the middleware. A logger
    filter, so the check costs nothing on the records of the app.
    """
    if _state["watching"] or "uvicorn" not in sys.modules:
        return
    _state["watching"] = True
    watch = _MissingMiddleware()
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(watch)


class _MissingMiddleware(logging.Filter):
    """Checks once, at uvicorn's first request line or its ``Shutting down`` line, whether
    SIGTERM will lose what is queued; never changes a record.
    """

    def __init__(self) -> None:
        super().__init__()
        self.done = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.done or (record.name == "uvicorn.error" and record.msg != "Shutting down"):
            return True
        self.done = True
        with contextlib.suppress(Exception):  # a diagnostic must never hurt the app
            _check_middleware()
        return True


def _check_middleware() -> None:
    from tinybird_export._process import PROCESS  # noqa: PLC0415 - it imports the producers

    if (
        _state["middleware"]
        or "gunicorn" in sys.modules  # gunicorn's worker exits normally, through atexit
        or PROCESS.sigterm.installed  # uvicorn re-raises SIGTERM into our handler
        or serving_server() is None
        or not PROCESS.workers()
    ):
        return
    _diagnostics.say_once(
        "uvicorn-no-middleware",
        "uvicorn serves this app without tinybird_export.asgi.RequestContextMiddleware: on "
        "SIGTERM it ends the process by the signal after its graceful shutdown, without the "
        "exit drain, so the events still queued then are lost. Wrap the app: "
        "app.add_middleware(RequestContextMiddleware) (FastAPI, Starlette) or "
        "app = RequestContextMiddleware(app) (any ASGI app); it delivers at shutdown. With "
        "uvicorn.run() from your own code, tinybird_export.install_sigterm_handler() before "
        "it works too.",
    )
