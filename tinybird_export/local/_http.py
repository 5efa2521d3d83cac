"""The local server's HTTP layer: one handler thread per connection, in three steps.

1. Before a byte of the body is read (also for ``Expect: 100-continue``): who may talk to the
   server (``_http_guard``: Host against DNS rebinding, Origin and Sec-Fetch-Site against other
   pages), the token, and the size cap. A refused body is not kept; what the client still
   sends is read and dropped for a moment, then the connection closes.
2. The body, read whole (at most the cap), then the route that answers it (``_api``,
   ``_workspace``, ``_forward``).
3. While a query runs, a watcher notices when its client goes away and cancels it.

The page at ``/`` (``_page``) is public: its files hold no data. Tokens are compared, never
logged; the request log (``_requestlog``, when the server has one) prints a request's path,
never its query string (the CLIs put the token there). No answer carries a CORS header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import http.server
import ipaddress
import re
import select
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from typing import Any

from tinybird_export import _http_guard, _ingest_body
from tinybird_export.local import _api, _forward, _page, _workspace
from tinybird_export.local._api import State
from tinybird_export.local._datafile import DatafileError
from tinybird_export.local._engine import InvalidName, QueryError, UnknownDataSource
from tinybird_export.local._limits import Cancel
from tinybird_export.local._request import Request, Response
from tinybird_export.local._requestlog import RequestLog

_ROUTES = [*_workspace.ROUTES, *_api.ROUTES, *_forward.ROUTES]
# Answered without the token: as Tinybird Local, and the page's files (no data in them).
_OPEN = frozenset({"/tokens", "/v0/health", *_page.PATHS})
_QUERIES = re.compile(r"/v0/sql/?|/v[01]/datasources/\w+/delete/?")
_WATCH_SECONDS = 0.1
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and line feed


class HTTPServer(http.server.ThreadingHTTPServer):
    """The server; ``state`` is set once the engine is open (after the bind)."""

    daemon_threads = True
    state: State
    request_log: RequestLog | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a timed-out client, a reset)."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes each request to the Tinybird API route that answers it."""

    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY the body waits for the
    # client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True
    # A client that stops sending (slowloris) or idles on keep-alive frees its thread.
    timeout = 60
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines carry the CLIs' ?token=."""

    def handle_expect_100(self) -> bool:
        """Refuse before the client sends its body, or let it send."""
        started = time.perf_counter()
        refused, _ = self._before_body()
        if refused is not None:
            self._answer(refused, started, close=True)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        refused, length = self._before_body()
        if refused is not None:
            self._answer(refused, started, close=True)
            _ingest_body.discard(self.rfile, self.connection, length)
            return
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        request = Request(method, parts.path, query, self.headers, self.rfile.read(length))
        try:
            with self._watching(request):
                response = self._route(request)
        except UnknownDataSource as exc:
            response = Response.error(404, f"Data Source {exc} does not exist")
        except QueryError as exc:  # 429 busy, 503 stopping, from any route
            response = Response.error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: the client still gets an answer
            response = self._failed(exc)
        self._answer(response, started)

    def _failed(self, exc: Exception) -> Response:
        """A 500 for what no route foresaw (the traceback goes to stderr, as
        ``handle_error`` writes a dropped connection's; the token masked in both).
        """
        token = self.server.state.token
        trace = "".join(traceback.format_exception(exc)).replace(token, "<token>")
        path = self.path.split("?")[0]  # never the query: ?token=
        # The client's text (path, values in messages) is not the terminal's commands.
        trace = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", trace)
        sys.stderr.write(f"tinybird-export local: {self.command!r} {path!r}\n{trace}")
        reason = f"{type(exc).__name__}: {exc}".replace(token, "<token>")
        return Response.error(
            500, f"tinybird-export local failed on this request ({reason}): please report it"
        )

    def _before_body(self) -> tuple[Response | None, int]:
        """The refusal decided from the request line and headers alone, if any, and the
        body's announced length.
        """
        state = self.server.state
        error: Response | None = None
        try:
            length = _ingest_body.declared_length(self.headers, state.max_body_bytes)
        except _ingest_body.BodyError as exc:
            length = int(self.headers.get("Content-Length") or 0) if exc.status == 413 else 0
            error = Response.error(exc.status, str(exc))
        reason = _http_guard.refusal(self.headers, state.host_names)
        if reason is not None:
            return Response.error(403, reason), length
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        if path in _OPEN:
            if length and error is None:  # answered without the token: nothing to upload
                error = Response.error(403, f"{path} takes no body (it needs no token)")
            return error, length
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if not self._authorized(query):
            return Response.error(
                403, "Invalid token: use the token printed at start-up (also at GET /tokens)"
            ), length
        return error, length

    def _route(self, request: Request) -> Response:
        state = self.server.state
        path = request.path.rstrip("/") or "/"
        if path == "/tokens":
            return self._tokens()
        if path == "/v0/health":
            return Response.json(200, {"status": "ok"})
        if request.method == "GET" and path in _page.PATHS:
            return _page.answer(path)
        if path == "/v0/events" and request.method == "POST":
            return self._events(request)
        if request.method == "GET" and path in _api.EMPTY:
            return Response.json(200, _api.EMPTY[path])
        for method, pattern, route in _ROUTES:
            match = pattern.fullmatch(request.path)
            if method == request.method and match:
                return route(state, request, {k: v for k, v in match.groupdict().items() if v})
        return Response.error(
            404, f"unknown path {request.method} {request.path} (tinybird-export local)"
        )

    def _tokens(self) -> Response:
        """The token, unauthenticated as Tinybird Local answers it (``tb --local`` reads it),
        to Tinybird's clients only: never to a browser, and to other machines only with
        ``--allow-remote-tokens``.
        """
        state = self.server.state
        if _http_guard.from_browser(self.headers):
            return Response.error(
                403,
                "GET /tokens answers Tinybird's CLIs, not browsers: the token is printed "
                "at start-up",
            )
        if not state.allow_remote_tokens and not _loopback(self.client_address[0]):
            return Response.error(
                403,
                "GET /tokens answers this machine only: on the server's machine, read "
                "the token it printed at start-up (or start it with --allow-remote-tokens)",
            )
        token = state.token
        payload = {"user_token": token, "admin_token": token, "workspace_admin_token": token}
        return Response.json(200, payload)

    @contextlib.contextmanager
    def _watching(self, request: Request) -> Iterator[None]:
        """Cancel the request's query if its client goes away while it runs."""
        if not _QUERIES.fullmatch(request.path):
            yield
            return
        done = threading.Event()
        watcher = threading.Thread(
            target=_watch,
            args=(self.connection, request.cancel, done),
            name="tinybird-export-local-watch",
            daemon=True,
        )
        watcher.start()
        try:
            yield
        finally:
            done.set()

    def _authorized(self, query: dict[str, str]) -> bool:
        expected = self.server.state.token.encode()
        header = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        given = [header, query.get("token") or ""]
        return any(hmac.compare_digest(t.encode(), expected) for t in given)

    def _events(self, request: Request) -> Response:
        state = self.server.state
        name = request.query.get("name", "")
        if not name:
            return Response.error(400, "The 'name' parameter is required")
        try:
            body = _ingest_body.decode(
                request.body, self.headers.get("Content-Encoding"), state.max_body_bytes
            )
            rows = _ingest_body.parse_rows(body)
            wait = request.query.get("wait") == "true"
            ok, quarantined = state.engine.ingest(name, rows, create=not state.strict, wait=wait)
        except _ingest_body.BodyError as exc:
            return Response.error(exc.status, str(exc))
        except InvalidName as exc:
            return Response.error(400, f"{exc}: use letters, digits and underscores")
        except DatafileError as exc:
            return Response.error(400, str(exc))
        except UnknownDataSource:
            return Response.error(
                404,
                f"Data Source '{name}' not found: deploy it first (strict mode refuses unknown "
                "data sources, as Forward workspaces do)",
            )
        status = 200 if wait else 202
        answer = Response.json(status, {"successful_rows": ok, "quarantined_rows": quarantined})
        return dataclasses.replace(answer, rows=ok, quarantined=quarantined)

    def _answer(self, response: Response, started: float, *, close: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)
        self.wfile.flush()
        log = self.server.request_log
        if log is not None:
            path = re.split(r"[?#]", self.path, maxsplit=1)[0]  # never the query: ?token=
            seconds = time.perf_counter() - started
            log.record(
                self.command,
                path,
                response.status,
                rows=response.rows,
                quarantined=response.quarantined,
                seconds=seconds,
            )


def _watch(connection: socket.socket, cancel: Cancel, done: threading.Event) -> None:
    while not done.wait(_WATCH_SECONDS):
        if _gone(connection):
            cancel.cancel()
            return


def _gone(connection: socket.socket) -> bool:
    """Whether the client closed its end (a pipelined request does not count)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))
