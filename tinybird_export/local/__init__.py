"""An embedded, Events-API-compatible server on SQLite: the whole loop on one machine.

``tinybird-export local`` (or ``python -m tinybird_export.local``) serves ``POST /v0/events``
with Tinybird's semantics, ``GET/POST /v0/sql`` (read-only SQL, Tinybird's JSON shape) and
``GET /tokens``, storing data in SQLite so that it survives a restart. ``LocalServer`` runs
one in-process (tests, examples).
"""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import orjson

from tinybird_export import _ingest_body
from tinybird_export._fields import DATASOURCES_DIR
from tinybird_export.local._datafile import load_datasources
from tinybird_export.local._store import QueryError, Store, UnknownDataSource

__all__ = [
    "DATASOURCES_DIR",
    "DEFAULT_PORT",
    "LocalServer",
    "SpawnedServer",
    "default_data_path",
    "main",
    "spawn",
]

DEFAULT_PORT = 7181  # Tinybird Local's port
_MAX_BODY = 10 * 1000 * 1000


def default_data_path() -> Path:
    """Where data lives by default: the user's data directory, never a source checkout."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home()))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tinybird-export" / "local.sqlite3"


class LocalServer:
    """A local Events API on ``host:port`` (port 0 picks a free one).

    Args:
        data: SQLite file path, or ``":memory:"``.
        datasources: A directory of ``.datasource`` files to declare up front.
        strict: Refuse unknown data sources with 404 (Forward workspaces), instead of
            creating them with a guessed schema (Classic workspaces).
        max_body_bytes: Request cap; larger bodies get 413.
    """

    def __init__(
        self,
        data: str | Path = ":memory:",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        datasources: str | Path | None = None,
        strict: bool = False,
        max_body_bytes: int = _MAX_BODY,
    ) -> None:
        self.store = Store(str(data))
        self.token = self.store.token()
        self.strict = strict
        self.max_body_bytes = max_body_bytes
        if datasources is not None:
            for name, columns in load_datasources(Path(datasources)).items():
                self.store.declare(name, columns)
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.local = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to use as ``host``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def start(self) -> LocalServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the database."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self.store.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SpawnedServer:
    """A ``tinybird-export local`` running in its own process (its own GIL): see ``spawn``."""

    def __init__(self, process: subprocess.Popen[str], url: str, token: str) -> None:
        self.process = process
        self.url = url
        self.token = token

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``TINYBIRD_HOST`` and ``TINYBIRD_TOKEN`` for this server."""
        return {**os.environ, "TINYBIRD_HOST": self.url, "TINYBIRD_TOKEN": self.token}

    def stop(self) -> None:
        """Terminate the server process."""
        self.process.terminate()
        self.process.wait(10)

    def __enter__(self) -> SpawnedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def spawn(data: str = ":memory:", *extra_args: str) -> SpawnedServer:
    """Start ``python -m tinybird_export.local`` on a free port and return its URL and token.

    Args:
        data: The ``--data`` path (default in memory).
        *extra_args: More command-line options (``--strict``, ``--datasources``...).
    """
    # The command is this interpreter and this package: no untrusted input.
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "tinybird_export.local", "--port", "0", "--data", data, *extra_args],
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = process.stdout
    lines = [stdout.readline() for _ in range(3)] if stdout is not None else ["", "", ""]
    if not lines[2].strip().startswith("TINYBIRD_TOKEN="):
        process.kill()
        raise RuntimeError(f"tinybird-export local did not start: {lines!r}")
    return SpawnedServer(
        process, lines[1].strip().partition("=")[2], lines[2].strip().partition("=")[2]
    )


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a timed-out client, a reset)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    local: LocalServer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY the body waits for the
    # client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        local = self.server.local
        if parts.path == "/tokens":  # unauthenticated, as Tinybird Local's
            token = local.token
            self._answer(
                200, {"user_token": token, "admin_token": token, "workspace_admin_token": token}
            )
        elif parts.path == "/v0/sql":
            self._sql(query.get("q", ""), query)
        else:
            self._answer(404, {"error": f"unknown path {parts.path}"})

    def do_POST(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts.path == "/v0/events":
            self._events(query, raw)
        elif parts.path == "/v0/sql":
            form = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))
            is_form = "form-urlencoded" in (self.headers.get("Content-Type") or "")
            self._sql(form.get("q", "") if is_form else raw.decode("utf-8", "replace"), query)
        else:
            self._answer(404, {"error": f"unknown path {parts.path}"})

    def _authorized(self, query: dict[str, str]) -> bool:
        token = self.server.local.token
        header = self.headers.get("Authorization") or ""
        return header == f"Bearer {token}" or query.get("token") == token

    def _events(self, query: dict[str, str], raw: bytes) -> None:
        local = self.server.local
        name = query.get("name", "")
        if not self._authorized(query):
            self._answer(
                403,
                {"error": "Invalid token: use the token printed at start-up (also at GET /tokens)"},
            )
            return
        if not name:
            self._answer(400, {"error": "The 'name' parameter is required"})
            return
        try:
            body = _ingest_body.decode(
                raw, self.headers.get("Content-Encoding"), local.max_body_bytes
            )
            rows = _ingest_body.parse_rows(body)
            ok, quarantined = local.store.ingest(name, rows, create=not local.strict)
        except _ingest_body.BodyError as exc:
            self._answer(exc.status, {"error": str(exc)})
            return
        except ValueError as exc:
            self._answer(400, {"error": f"{exc}: use letters, digits and underscores"})
            return
        except UnknownDataSource:
            self._answer(
                404,
                {
                    "error": f"Data Source '{name}' not found: deploy it first "
                    "(strict mode refuses unknown data sources, as "
                    "Forward workspaces do)"
                },
            )
            return
        status = 200 if query.get("wait") == "true" else 202
        self._answer(status, {"successful_rows": ok, "quarantined_rows": quarantined})

    def _sql(self, sql: str, query: dict[str, str]) -> None:
        if not self._authorized(query):
            self._answer(403, {"error": "Invalid token"})
            return
        if not sql.strip():
            self._answer(400, {"error": "The 'q' parameter is required"})
            return
        try:
            self._answer(200, self.server.local.store.query(sql))
        except QueryError as exc:
            self._answer(400, {"error": f"[Error] {exc}"})

    def _answer(self, status: int, payload: Any) -> None:
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str] | None = None) -> int:
    """``tinybird-export local``: serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="tinybird-export local", description="A local Events API on SQLite."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--data", default=None, help=f"SQLite file or :memory: (default {default_data_path()})"
    )
    parser.add_argument(
        "--datasources",
        default=None,
        help="directory of .datasource files to declare; 'package' for the "
        "package's own (app_logs, simple_events)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse unknown data sources with 404, as Forward workspaces do",
    )
    options = parser.parse_args(argv)
    data = options.data or str(default_data_path())
    if options.datasources == "package":
        options.datasources = DATASOURCES_DIR
    server = LocalServer(
        data,
        host=options.host,
        port=options.port,
        datasources=options.datasources,
        strict=options.strict,
    )
    print(f"tinybird-export local: serving the Events API at {server.url}", flush=True)
    print(f"  TINYBIRD_HOST={server.url}", flush=True)
    print(f"  TINYBIRD_TOKEN={server.token}", flush=True)
    print(f"  data: {data}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
