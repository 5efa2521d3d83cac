"""A scriptable, Events-API-compatible server on 127.0.0.1, for tests of logging setups.

``EventsServer`` answers ``POST /v0/events`` like Tinybird (``name`` required, bearer token
checked, gzip bodies, NDJSON validated, ``successful_rows``/``quarantined_rows`` bodies) and
records what arrives, decoded. It can be scripted to answer any status with any headers, to
delay, to hang until released, and to reset connections, so that every failure a shipper
meets can be reproduced on one machine. Like ``tinybird-export local`` it answers only
requests addressed to it (``127.0.0.1``, ``localhost``) and no page from another origin
(``_http_guard``), and checks the token and the size cap before it reads a body. The
``tinybird_server`` pytest fixture (installed with the package) yields a running one.

Example::

    with EventsServer(token="test-token") as server:
        handler = TinybirdHandler(datasource="app_logs", host=server.url, token=server.token)
        logging.getLogger().addHandler(handler)
        logging.warning("hello")
        handler.flush()
        assert server.events("app_logs")[0]["event"] == "hello"
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tinybird_export import _http_guard, _ingest_body
from tinybird_export._hostile import hostile_answer as _hostile_answer
from tinybird_export._rate_limit import TokenBuckets
from tinybird_export._server_exchange import ReceivedRequest, Reply

__all__ = ["EventsServer", "ReceivedRequest", "Reply"]


class EventsServer:
    """A threaded Events API server on ``127.0.0.1`` (port 0 picks a free one).

    Args:
        token: The token to require (403 otherwise); ``None`` accepts any.
        port: Port to listen on; 0 for a free one.
        max_body_bytes: Request cap; larger bodies get 413 (Tinybird Free: 10 MB).
        record: Keep each request (``False`` only counts, for benchmarks).
        tls: Serve HTTPS with this server-side context (``url`` is then
            ``https://localhost:port``).
        rate_limit: Accept this many requests per second per data source (a token bucket,
            bursts up to the same number), answering 429 with ``Retry-After`` beyond it;
            every answer carries the ``X-RateLimit-*`` headers. ``None``: no limit.
        bad_row: Rows it refuses as it refuses a line that is not a JSON object: the whole
            request gets 400, naming the first such line, and nothing is stored.
        name_bad_lines: Whether a 400 for a bad line names it (``line N``, as this server
            and the local one do); ``False``: it says only that the body is invalid.
    """

    def __init__(
        self,
        token: str | None = "test-token",  # noqa: S107 - a test server's well-known token
        port: int = 0,
        *,
        max_body_bytes: int = 10 * 1000 * 1000,
        record: bool = True,
        tls: ssl.SSLContext | None = None,
        rate_limit: float | None = None,
        bad_row: Callable[[dict[str, Any]], bool] | None = None,
        name_bad_lines: bool = True,
    ) -> None:
        self.token = token
        self.bad_row = bad_row
        self.name_bad_lines = name_bad_lines
        self.buckets = TokenBuckets(rate_limit) if rate_limit else None
        self.tls = tls
        self.stopping = threading.Event()
        self.max_body_bytes = max_body_bytes
        self.record = record
        self._lock = threading.Condition()
        self._script: list[Reply] = []
        self._default = Reply()
        self._released = threading.Event()
        self._requests: list[ReceivedRequest] = []
        self.arrivals = 0
        self.rows_accepted = 0
        self.bytes_accepted = 0
        self.request_count = 0
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.events_server = self
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to use as ``host``."""
        port = self._httpd.server_address[1]
        return f"https://localhost:{port}" if self.tls else f"http://127.0.0.1:{port}"

    def start(self) -> EventsServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close the socket."""
        self.stopping.set()
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> EventsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, then the default again."""
        with self._lock:
            self._script.extend(replies)
            if any(reply.hang for reply in replies):
                self._released.clear()

    def respond(self, reply: Reply) -> None:
        """Answer every request (after any scripted ones) with ``reply``."""
        with self._lock:
            self._default = reply
            if reply.hang:
                self._released.clear()

    def reset(self) -> None:
        """Forget scripted replies and answer 202 again (between scenarios)."""
        with self._lock:
            self._script = []
            self._default = Reply()
            self._released.set()

    def release(self) -> None:
        """Let hanging requests finish (they answer 202) and answer 202 from now on."""
        with self._lock:
            self._script = [r for r in self._script if not r.hang]
            self._default = Reply()
            self._released.set()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if self._script else self._default

    # -- what arrived ------------------------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, in order."""
        with self._lock:
            return list(self._requests)

    def events(self, datasource: str | None = None) -> list[dict[str, Any]]:
        """Rows of accepted (200/202) requests, optionally of one data source, in order."""
        return [
            row
            for request in self.requests
            if request.status in (200, 202)
            and (datasource is None or request.datasource == datasource)
            for row in request.rows
        ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every request), or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def wait_for_rows(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` rows were accepted."""
        return self.wait_for(lambda: self.rows_accepted >= count, timeout)

    def _checked_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows``, unless ``bad_row`` refuses one (a 400 naming its 1-based line)."""
        if self.bad_row is not None:
            for number, row in enumerate(rows, 1):
                if self.bad_row(row):
                    raise _ingest_body.BodyError(400, f"line {number} is not a valid event")
        return rows

    def _arrived(self) -> None:
        with self._lock:
            self.arrivals += 1
            self._lock.notify_all()

    def _store(self, request: ReceivedRequest, rows: int) -> None:
        with self._lock:
            self.request_count += 1
            if request.status in (200, 202):
                self.rows_accepted += rows
                self.bytes_accepted += len(request.body)
            if self.record:
                self._requests.append(request)
            self._lock.notify_all()


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a timed-out client, a reset, a TLS client
        that gave up).
        """
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)

    events_server: EventsServer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY the body waits for the
    # client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True  # keep-alive, as Tinybird's API
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the recorded requests instead."""

    def handle_expect_100(self) -> bool:
        """Refuse before the client sends its body, or let it send."""
        refused = self._guard() or self._before_body()[0]
        if refused is not None:
            self._answer(*refused, close=True)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        refused = self._guard()
        self._answer(*(refused or (404, {"error": "not found"})))

    def do_POST(self) -> None:
        owner = self.server.events_server
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        received_at = time.monotonic()
        guarded = self._guard()
        if guarded is not None:  # not addressed to it, or another origin: not Tinybird's
            self._record_refusal(owner, parts.path, query, received_at, guarded)
            return
        early, length = self._before_body()
        raw = b"" if early else self.rfile.read(length)
        if parts.path.startswith("/v1/") and early is None:  # an OTLP/HTTP sink (benchmarks)
            owner._store(
                ReceivedRequest(
                    "POST",
                    parts.path,
                    query,
                    dict(self.headers.items()),
                    raw,
                    raw,
                    200,
                    received_at,
                ),
                0,
            )
            self._answer(200, b"")
            return
        reply = owner._next_reply()
        owner._arrived()
        self.limit_headers: dict[str, str] = {}
        if early:
            status, payload, body, rows = (*early, raw, 0)
        else:
            status, payload, body, rows = self._evaluate(owner, parts.path, query, raw, reply)
        request = ReceivedRequest(
            "POST", parts.path, query, dict(self.headers.items()), raw, body, status, received_at
        )
        if reply.hang:
            owner._released.wait()
            status, payload = (202, {"successful_rows": rows, "quarantined_rows": 0})
        elif reply.delay:
            time.sleep(reply.delay)
        if reply.reset:
            owner._store(dataclasses.replace(request, status=0), 0)
            self._reset()
            return
        owner._store(request, rows)
        headers = {**self.limit_headers, **reply.headers}
        if reply.echo_headers:
            payload = {"error": f"rejected request with headers {dict(self.headers.items())}"}
        if reply.hostile:
            self.close_connection = True
            _hostile_answer(self, owner, status, reply)
        else:
            self._answer(status, payload, headers, close=early is not None)
        if early is not None:  # the body was not read: drop what still comes, then close
            _ingest_body.discard(self.rfile, self.connection, length)

    def _guard(self) -> tuple[int, Any] | None:
        owner = self.server.events_server
        reason = _http_guard.refusal(self.headers, scheme="https" if owner.tls else "http")
        return None if reason is None else (403, {"error": reason})

    def _before_body(self) -> tuple[tuple[int, Any] | None, int]:
        """The token, then the size cap, checked on the headers alone (an unauthenticated or
        oversized body is never read), and the body's announced length.
        """
        owner = self.server.events_server
        announced = self.headers.get("Content-Length") or "0"
        length = int(announced) if announced.isdigit() else 0
        on_events = urllib.parse.urlsplit(self.path).path == "/v0/events"
        token = self.headers.get("Authorization")
        if on_events and owner.token is not None and token != f"Bearer {owner.token}":
            return (403, {"error": "invalid authentication token"}), length
        try:
            return None, _ingest_body.declared_length(self.headers, owner.max_body_bytes)
        except _ingest_body.BodyError as exc:
            return (exc.status, {"error": str(exc)}), length if exc.status == 413 else 0

    def _record_refusal(
        self,
        owner: EventsServer,
        path: str,
        query: Mapping[str, str],
        received_at: float,
        refused: tuple[int, Any],
    ) -> None:
        headers = dict(self.headers.items())
        owner._store(
            ReceivedRequest("POST", path, query, headers, b"", b"", refused[0], received_at), 0
        )
        self._answer(*refused, close=True)
        _ingest_body.discard(self.rfile, self.connection, self._before_body()[1])

    def _evaluate(
        self, owner: EventsServer, path: str, query: Mapping[str, str], raw: bytes, reply: Reply
    ) -> tuple[int, Any, bytes, int]:
        """Status, response payload, decoded body and row count, as Tinybird would answer."""
        if path != "/v0/events":  # (the token was checked before the body was read)
            return 404, {"error": f"unknown path {path}"}, raw, 0
        if not query.get("name"):
            return 400, {"error": "name parameter is required"}, raw, 0
        try:
            body = _ingest_body.decode(
                raw, self.headers.get("Content-Encoding"), owner.max_body_bytes
            )
            rows = (
                len(owner._checked_rows(_ingest_body.parse_rows(body)))
                if owner.record
                else _ingest_body.count_rows(body)
            )
        except _ingest_body.BodyError as exc:
            if exc.status == 400 and "line " in str(exc) and not owner.name_bad_lines:
                return 400, {"error": "invalid NDJSON body: nothing was inserted"}, raw, 0
            return exc.status, {"error": str(exc)}, raw, 0
        if owner.buckets is not None:
            accepted, self.limit_headers = owner.buckets.take(query["name"])
            if not accepted:
                return 429, {"error": "too many requests"}, body, 0
        if reply.status not in (200, 202):
            return reply.status, reply.body or {"error": f"scripted {reply.status}"}, body, rows
        status = 200 if query.get("wait") == "true" else 202
        quarantined = min(reply.quarantine, rows)
        payload = {"successful_rows": rows - quarantined, "quarantined_rows": quarantined}
        return status, reply.body or payload, body, rows

    def _answer(
        self, status: int, payload: Any, headers: Mapping[str, str] = {}, *, close: bool = False
    ) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        if close:
            self.wfile.flush()

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m tinybird_export.testing``: serve until interrupted (for benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--no-record", action="store_true", help="count rows only")
    parser.add_argument(
        "--rate-limit", type=float, help="requests/s per data source (429 beyond it)"
    )
    options = parser.parse_args(argv)
    server = EventsServer(
        options.token, options.port, record=not options.no_record, rate_limit=options.rate_limit
    ).start()
    print(server.url, flush=True)
    print(f"token: {options.token}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
