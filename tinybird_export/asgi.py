"""ASGI integration (FastAPI, Starlette, any ASGI app): request context on every log event,
optional access events, and delivery at lifespan shutdown.

Pure ASGI: it imports no framework, so it wraps any ASGI 3 application::

    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, request_id_header="X-Request-ID")
    # or, for any ASGI app: app = RequestContextMiddleware(app)

Options are arguments, else environment variables of the Django and Flask integrations:

- ``request_id_header`` (``TINYBIRD_REQUEST_ID_HEADER``): trust this incoming header for the
  request id; unset, every request gets a new random id.
- ``access_events`` (``TINYBIRD_ACCESS_EVENTS``): one access event per HTTP request (method,
  route, status, duration_ms) through the ``tinybird_export.access`` logger.
- ``keep_query_string`` (``TINYBIRD_HREF_QUERY``): keep the query string in ``href`` (off by
  default: query strings carry reset tokens and OAuth codes).
- ``shutdown_timeout``: how long lifespan shutdown may wait for delivery; default the exit
  budget (the longest ``exit_timeout`` of the producers, 5 s unless configured).

**Lifespan shutdown delivers.** When the application has run its shutdown handlers (it
sends ``lifespan.shutdown.complete``, or ``.failed``), everything queued is sent within
``shutdown_timeout`` before the server is told, on a thread, so the loop keeps running.
This matters under uvicorn: after its graceful shutdown it restores SIGTERM's default
action and re-raises the signal, so the process dies by it and the exit drain (``atexit``)
never runs. Records logged after lifespan shutdown (uvicorn's own last lines) are lost
there; see the README.

**Apps without lifespan.** An application that does not speak the lifespan protocol
(Django's ASGI handler raises on it; a bare app returns) gets it answered by the
middleware: ``startup.complete``, then delivery and ``shutdown.complete``. An app that
received a lifespan message and then failed keeps its failure (the server decides). When
no lifespan scope arrives at all (``uvicorn --lifespan off``), the first request finds the
uvicorn server serving the process and delivers at the end of its graceful shutdown
(``_uvicorn``); under another server that leaves SIGTERM at its default, it says once on
stderr what to do.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from tinybird_export import _diagnostics, _uvicorn, flush
from tinybird_export._async import run_blocking
from tinybird_export._context import (
    RequestContext,
    current_request,
    env_flag,
    log_access,
    request_id,
    strip_access_lines,
)

__all__ = ["RequestContextMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A Host header we repeat as it came: a name or an IP literal, an optional port. Anything
# else (userinfo before an "@", spaces, a path) falls back to the server's own address.
_HOST: Final = re.compile(r"(?:[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SHUTDOWN_DONE: Final = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})


class RequestContextMiddleware:
    """Puts ``href`` and ``request_id`` of the current request on every log event, and
    delivers what is queued at lifespan shutdown.

    Args:
        app: The ASGI application to wrap.
        request_id_header: Trust this incoming header (e.g. ``"X-Request-ID"``) for the
            request id; default ``TINYBIRD_REQUEST_ID_HEADER``, else a new random id.
        access_events: Also log one access event per HTTP request; default
            ``TINYBIRD_ACCESS_EVENTS``, else off.
        keep_query_string: Keep the query string in ``href``; default
            ``TINYBIRD_HREF_QUERY``, else off.
        shutdown_timeout: Seconds lifespan shutdown waits at most for delivery; default
            the longest ``exit_timeout`` of the producers. ``0`` does not wait.

    Raises:
        ValueError: An option's value is invalid; the message names it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str | None = None,
        access_events: bool | None = None,
        keep_query_string: bool | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        if shutdown_timeout is not None and not shutdown_timeout >= 0:
            raise ValueError(
                f"tinybird-export: shutdown_timeout must be >= 0 seconds, not {shutdown_timeout!r}"
            )
        self.app = app
        header = request_id_header or os.environ.get("TINYBIRD_REQUEST_ID_HEADER", "").strip()
        self.request_id_header = header or None
        self._header = header.lower().encode("latin-1") if header else None
        self.access = env_flag("ACCESS_EVENTS", access_events)
        self.keep_query = env_flag("HREF_QUERY", keep_query_string)
        if not self.keep_query:
            strip_access_lines("uvicorn.access")  # uvicorn's own request lines
        self.shutdown_timeout = shutdown_timeout
        self._lifespan_seen = False
        self._first_request = True
        _uvicorn.note_middleware()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: a request with its context, or the lifespan."""
        kind = scope.get("type")
        if kind in ("http", "websocket"):
            if self._first_request:
                self._first_request = False
                self._without_lifespan()
            await self._serve(scope, receive, send)
        elif kind == "lifespan":
            self._lifespan_seen = True
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = self._context(scope)
        token = current_request.set(context)
        try:
            if not self.access or scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            started = time.perf_counter()
            root_path = scope.get("root_path", "")
            status = 500  # what the server answers if the app raises before responding

            async def send_and_note_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_note_status)
            finally:
                method = scope.get("method", "")
                log_access(method, _route(scope, root_path), status, started, context.href)
        finally:
            current_request.reset(token)

    def _context(self, scope: Scope) -> RequestContext:
        incoming = None
        href = ""
        try:  # never raise into the app: a scope we cannot read gets an empty href
            href = _href(scope, self.keep_query)
            if self._header is not None:
                incoming = _header(scope, self._header)
        except Exception:  # noqa: BLE001, S110 - odd scopes from odd servers
            pass
        return RequestContext(href, request_id(incoming))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the lifespan through; deliver before the server hears that shutdown is
        done (so records of the app's shutdown handlers are delivered too), and also when
        the app ends after ``lifespan.shutdown`` without saying so. An app that ends
        before it received or sent any lifespan message does not speak the protocol:
        the middleware answers it instead (``_answer_lifespan``).
        """
        state = {"spoke": False, "shutting_down": False, "delivered": False}

        async def receive_and_watch() -> Message:
            state["spoke"] = True
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                state["shutting_down"] = True
            return message

        async def deliver_then_send(message: Message) -> None:
            state["spoke"] = True
            if message.get("type") in _SHUTDOWN_DONE and not state["delivered"]:
                state["delivered"] = True
                await self._deliver()
            await send(message)

        try:
            await self.app(scope, receive_and_watch, deliver_then_send)
        except Exception:
            if state["spoke"]:
                raise  # a lifespan app that failed: the server decides what that means
            # The ASGI spec lets an app refuse the lifespan scope by raising (Django's
            # handler does: "Django can only handle ASGI/HTTP connections").
            await self._answer_lifespan(receive, send)
            return
        finally:
            if state["shutting_down"] and not state["delivered"]:
                state["delivered"] = True
                await self._deliver()
        if not state["spoke"]:  # returned at once: it does not speak lifespan either
            await self._answer_lifespan(receive, send)

    async def _answer_lifespan(self, receive: Receive, send: Send) -> None:
        """The lifespan of an app that does not speak it: startup completes at once, and
        shutdown completes once what is queued is delivered.
        """
        while True:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await self._deliver()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _without_lifespan(self) -> None:
        """At the first request: if no lifespan scope came, deliver at the end of
        uvicorn's graceful shutdown, or say what to do where nothing would deliver.
        """
        if self._lifespan_seen:
            return
        try:
            if _uvicorn.deliver_at_shutdown(self._deliver):
                return
            if _uvicorn.serving_server() is not None:  # a uvicorn unlike the ones we know
                _diagnostics.say_once(
                    "asgi-no-lifespan",
                    "no ASGI lifespan reached RequestContextMiddleware, and this uvicorn's "
                    "shutdown could not be hooked: on SIGTERM the events still queued would "
                    "be lost. Run uvicorn with its lifespan on (drop --lifespan off).",
                )
                return
            if threading.current_thread() is not threading.main_thread():
                return  # not the server's main loop: we cannot tell what SIGTERM does
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return  # the server handles SIGTERM (and, we trust, exits normally)
        except Exception:  # noqa: BLE001 - a check must never fail a request
            return
        _diagnostics.say_once(
            "asgi-no-lifespan",
            "no ASGI lifespan reached RequestContextMiddleware and SIGTERM is left at its "
            "default action, which ends the process without the exit drain: events still "
            "queued then would be lost. Enable the server's lifespan support, or call "
            "tinybird_export.install_sigterm_handler() at start-up.",
        )

    async def _deliver(self) -> None:
        timeout = self.shutdown_timeout
        try:
            await run_blocking(lambda: flush(timeout))
        except Exception as exc:  # noqa: BLE001 - shutdown goes on whatever happens here
            _diagnostics.say_once(
                "asgi-lifespan",
                f"delivering at lifespan shutdown failed ({type(exc).__name__}: {exc}); "
                "what is queued is left to the exit drain.",
            )


def _href(scope: Scope, keep_query: bool) -> str:
    """The request's absolute URL, as Starlette's ``request.url`` builds it, without the
    query string (unless kept) and never with credentials.
    """
    scheme = scope.get("scheme") or ("ws" if scope.get("type") == "websocket" else "http")
    path = scope.get("path", "").replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    netloc = _header(scope, b"host")
    if netloc is None or not _HOST.fullmatch(netloc):
        server = scope.get("server")
        if server and server[1] is not None:  # (host, port); a Unix socket has no port
            host, port = server[0], server[1]
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            netloc = host if port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
        else:
            netloc = None
    href = f"{scheme}://{netloc}{path}" if netloc else path
    query = scope.get("query_string") if keep_query else None
    if query:
        href = f"{href}?{query.decode('latin-1')}"
    return href


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI servers give names)."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _route(scope: Scope, root_path: str) -> str:
    """The matched route's template (Starlette and FastAPI put the route in the scope),
    with the paths of the mounts it is under; ``""`` when none matched.
    """
    try:
        path = getattr(scope.get("route"), "path", None)
        if not isinstance(path, str):
            return ""
        mounted = scope.get("root_path", "")  # each Mount extends it with its own path
        if isinstance(mounted, str) and mounted.startswith(root_path):
            path = mounted[len(root_path) :] + path
        return path
    except Exception:  # noqa: BLE001 - an odd route object must not fail the request
        return ""
