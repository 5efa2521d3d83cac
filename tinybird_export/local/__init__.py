"""An embedded, Tinybird-compatible server: the whole loop on one machine, no Docker.

``tinybird-export local`` (or ``python -m tinybird_export.local``) serves ``POST /v0/events``
with Tinybird's semantics, ``/v0/sql`` (read-only, ClickHouse's own SQL on the ClickHouse
engine), the workspace, Data Sources, jobs and Forward build/deploy routes that Tinybird's
CLIs and SDKs call, and a page at ``/`` to look at the data. Data is stored by the ClickHouse
engine (chDB, ``tinybird-export[local]``) or the SQLite engine (no dependency).
``LocalServer`` runs one in-process (tests, examples); ``spawn`` starts one in its own process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TextIO

from tinybird_export._fields import DATASOURCES_DIR
from tinybird_export.local._api import State
from tinybird_export.local._datafile import DataFile, load_datasources
from tinybird_export.local._engine import Engine, open_engine, resolve_engine
from tinybird_export.local._http import Handler, HTTPServer
from tinybird_export.local._requestlog import RequestLog

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


def default_data_path(engine: str = "sqlite") -> Path:
    """Where data lives by default: the user's data directory, never a source checkout.

    Args:
        engine: ``sqlite`` (a file, ``local.sqlite3``) or ``clickhouse`` (a directory).
    """
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home()))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tinybird-export" / ("clickhouse" if engine == "clickhouse" else "local.sqlite3")


def declared_datafiles(
    datasources: str | Path | None, *, package: bool, engine: str
) -> dict[str, DataFile]:
    """The data sources to declare: the package's own (unless ``package`` is false), then
    those of ``datasources`` (a directory or a file), which win on a name clash.

    Raises:
        DatafileError: A missing path, no files there, a file that cannot be read.
    """
    lenient = engine == "clickhouse"
    declared = load_datasources(DATASOURCES_DIR, lenient=lenient) if package else {}
    if datasources is not None:
        declared.update(load_datasources(Path(datasources), lenient=lenient))
    return declared


class LocalServer:
    """A local Tinybird on ``host:port`` (port 0 picks a free one).

    The socket is bound before any data file is created, so a port in use leaves nothing
    behind.

    Args:
        data: The data: an SQLite file, a chDB directory, or ``":memory:"``.
        datasources: A directory (or file) of ``.datasource`` files to declare up front, on
            top of the package's own.
        strict: Refuse unknown data sources with 404 (Forward workspaces), instead of
            creating them with a guessed schema (Classic workspaces).
        max_body_bytes: Request cap; larger bodies get 413.
        engine: ``sqlite`` (the default in-process: rows come back in arrival order), or
            ``clickhouse``, or ``auto`` (ClickHouse when chDB is installed, as the command's
            ``--engine`` default).
        package_datasources: Declare the package's own data sources (``app_logs``,
            ``simple_events``, ``traces``, ``logs``, ``otel_*``).
        allow_remote_tokens: Answer ``GET /tokens`` to other machines too (by default only
            clients on this machine get the token from it).
        request_log: Print one line per request there (method, path, status, rows,
            milliseconds; repeats summed per second), as the command does on stdout; by
            default nothing is printed.
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
        engine: str = "sqlite",
        package_datasources: bool = True,
        allow_remote_tokens: bool = False,
        request_log: TextIO | None = None,
    ) -> None:
        self.engine_name = resolve_engine(engine)
        declared = declared_datafiles(
            datasources, package=package_datasources, engine=self.engine_name
        )
        self._httpd = HTTPServer((host, port), Handler)
        try:
            self.store: Engine = open_engine(self.engine_name, str(data))
        except BaseException:
            self._httpd.server_close()
            raise
        try:
            for datafile in declared.values():
                self.store.declare(datafile)
        except BaseException:
            self.store.close()
            self._httpd.server_close()
            raise
        self.declared = sorted(declared)
        self.token = self.store.token
        self.strict = strict
        self.allow_remote_tokens = allow_remote_tokens
        # The name it was told to serve is its own (DNS rebinding checks the Host header).
        names = frozenset() if host in ("", "0.0.0.0", "::") else {host.lower()}  # noqa: S104
        self._httpd.state = State(
            self.store,
            strict,
            max_body_bytes,
            host_names=frozenset(names),
            allow_remote_tokens=allow_remote_tokens,
        )
        self._url = _base_url(self._httpd.server_address[0], self._httpd.server_address[1])
        if request_log is not None:
            self._httpd.request_log = RequestLog(request_log, hide=[self.token])
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        host = str(self._httpd.server_address[0])
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    @property
    def url(self) -> str:
        """The base URL to use as ``host``: ``http://localhost:PORT`` on loopback, the name
        Tinybird's ``tb`` CLI takes for a local server.
        """
        return self._url

    @property
    def page_url(self) -> str:
        """The page's URL, with the token in its fragment (which browsers never send)."""
        return _page_url(self.url, self.token)

    def start(self) -> LocalServer:
        """Serve in a background thread."""
        # A short poll interval: stop() waits for the loop to notice (0.5 s by default).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the database (once: later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
        self._httpd.server_close()
        self.store.close()
        if self._httpd.request_log is not None:
            self._httpd.request_log.close()

    def __repr__(self) -> str:
        return f"LocalServer(url={self.url!r}, engine={self.engine_name!r})"  # no token

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

    def __repr__(self) -> str:
        return f"SpawnedServer(url={self.url!r}, pid={self.process.pid})"  # no token

    @property
    def page_url(self) -> str:
        """The page's URL, with the token in its fragment (which browsers never send)."""
        return _page_url(self.url, self.token)

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``TINYBIRD_HOST`` and ``TINYBIRD_TOKEN`` for this server."""
        return {**os.environ, "TINYBIRD_HOST": self.url, "TINYBIRD_TOKEN": self.token}

    def stop(self) -> None:
        """Stop the server process (SIGTERM, which it takes as Ctrl-C: what it acknowledged is
        stored before it ends), or kill it after 10 s.
        """
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> SpawnedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def spawn(data: str = ":memory:", *extra_args: str) -> SpawnedServer:
    """Start ``python -m tinybird_export.local`` on a free port and return its URL and token.

    It runs with ``--quiet``: no request lines (its stdout is a pipe that nobody reads after
    the banner, and the terminal is its caller's).

    Args:
        data: The ``--data`` path (default in memory).
        *extra_args: More command-line options (``--strict``, ``--engine sqlite``...).

    Raises:
        RuntimeError: The server did not start (with what it printed).
    """
    # The command is this interpreter and this package: no untrusted input.
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "tinybird_export.local",
            "--port",
            "0",
            "--data",
            data,
            "--quiet",
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        text=True,
        # Its own session: a terminal's Ctrl-C (SIGINT to the whole foreground process
        # group) reaches only the script, which stops the server itself when it is done.
        start_new_session=True,
    )
    found: dict[str, str] = {}
    lines = []
    stdout = process.stdout
    while stdout is not None and "TINYBIRD_TOKEN" not in found:
        line = stdout.readline()
        if not line:
            break
        lines.append(line)
        key, _, value = line.strip().removeprefix("export ").partition("=")
        if key in ("TINYBIRD_HOST", "TINYBIRD_TOKEN"):
            found[key] = value
    if "TINYBIRD_TOKEN" not in found or "TINYBIRD_HOST" not in found:
        process.kill()
        process.communicate(timeout=10)
        raise RuntimeError(f"tinybird-export local did not start (see its stderr): {lines!r}")
    return SpawnedServer(process, found["TINYBIRD_HOST"], found["TINYBIRD_TOKEN"])


def _page_url(url: str, token: str) -> str:
    """The page of the server at ``url``, opened with ``token`` (in the fragment only)."""
    return f"{url}/#token={token}"


def _base_url(host: str | bytes | bytearray, port: int) -> str:
    """``http://localhost:PORT`` when bound to 127.0.0.1 (Tinybird's ``tb`` CLI takes a host
    for local when its name has ``localhost``), else the address it is bound to.
    """
    name = host if isinstance(host, str) else bytes(host).decode()
    if name == "127.0.0.1" and _localhost_is_127(port):
        return f"http://localhost:{port}"
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def _localhost_is_127(port: int) -> bool:
    """Whether ``localhost`` reaches 127.0.0.1 here (it does, but for odd hosts files)."""
    try:
        found = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return any(address[4][0] == "127.0.0.1" for address in found)


def main(argv: list[str] | None = None) -> int:
    """``tinybird-export local``: serve until interrupted."""
    from tinybird_export.local._main import run  # noqa: PLC0415

    return run(argv)
