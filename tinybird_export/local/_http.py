"""The local server's HTTP layer: one handler thread per connection, routing to ``_api``.

Tokens are compared, never logged; requests are not logged at all (the CLIs put the token in
the query string).
"""

from __future__ import annotations

import http.server
import sys
import urllib.parse
from typing import Any

from tinybird_export import _ingest_body
from tinybird_export.local import _api, _forward, _workspace
from tinybird_export.local._api import State
from tinybird_export.local._datafile import DatafileError
from tinybird_export.local._engine import InvalidName, UnknownDataSource
from tinybird_export.local._request import Request, Response

_ROUTES = [*_workspace.ROUTES, *_api.ROUTES, *_forward.ROUTES]


class HTTPServer(http.server.ThreadingHTTPServer):
    """The server; ``state`` is set once the engine is open (after the bind)."""

    daemon_threads = True
    state: State

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a timed-out client, a reset)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes each request to the Tinybird API route that answers it."""

    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY the body waits for the
    # client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: request lines carry the CLIs' ?token=."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(method, parts.path, query, self.headers, self.rfile.read(length))
        try:
            response = self._route(request)
        except UnknownDataSource as exc:
            response = Response.error(404, f"Data Source {exc} does not exist")
        self._answer(response)

    def _route(self, request: Request) -> Response:
        state = self.server.state
        path = request.path.rstrip("/") or "/"
        if path == "/tokens":  # unauthenticated, as Tinybird Local's
            token = state.token
            payload = {"user_token": token, "admin_token": token, "workspace_admin_token": token}
            return Response.json(200, payload)
        if path == "/v0/health":
            return Response.json(200, {"status": "ok"})
        if not self._authorized(request.query):
            return Response.error(
                403, "Invalid token: use the token printed at start-up (also at GET /tokens)"
            )
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

    def _authorized(self, query: dict[str, str]) -> bool:
        token = self.server.state.token
        header = self.headers.get("Authorization") or ""
        return header == f"Bearer {token}" or query.get("token") == token

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
        return Response.json(status, {"successful_rows": ok, "quarantined_rows": quarantined})

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)
