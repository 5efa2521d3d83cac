"""``tinybird-export local``: options, the start-up banner and clear answers to bad input."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from types import FrameType

from tinybird_export.local import _sqlite_read
from tinybird_export.local._datafile import DatafileError
from tinybird_export.local._engine import (
    ENGINES,
    INSTALL_CLICKHOUSE,
    EngineUnavailable,
    resolve_engine,
)

_DESCRIPTION = """\
A local Tinybird on this machine, no account and no Docker: the Events API (POST /v0/events),
read-only SQL (/v0/sql), the workspace, Data Sources, jobs and Forward build/deploy routes
that Tinybird's CLIs and SDKs use, and a page to look at the data (the URL it prints). The
package's own data sources (app_logs, simple_events, traces, logs, otel_logs, otel_traces,
otel_metrics_*) are declared from the start. It prints one line per request."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show (flags, computed ones)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    """The ``tinybird-export local`` options, each with its default."""
    from tinybird_export.local import DEFAULT_PORT, default_data_path  # noqa: PLC0415

    options = argparse.ArgumentParser(
        prog="tinybird-export local",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    options.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface (or name) to listen on; any but loopback lets other machines read "
        "and write the workspace",
    )
    options.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to listen on (Tinybird Local's too); 0 picks a free one",
    )
    options.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help=f"storage and SQL: clickhouse (chDB: {INSTALL_CLICKHOUSE}), sqlite "
        "(no dependency), auto = clickhouse when chDB is installed",
    )
    options.add_argument(
        "--data",
        default=None,
        help="where data is kept: an SQLite file or a ClickHouse directory, or :memory: "
        f"(default {default_data_path('sqlite')} or {default_data_path('clickhouse')})",
    )
    options.add_argument(
        "--datasources",
        default=None,
        metavar="PATH",
        help="a directory (or one file) of .datasource files to declare, on top of the "
        "package's own (default: none)",
    )
    options.add_argument(
        "--no-package-datasources",
        action="store_true",
        help="do not declare the package's own data sources (app_logs, simple_events, ...); "
        "default: declared",
    )
    options.add_argument(
        "--strict",
        action="store_true",
        help="refuse unknown data sources with 404, as Forward workspaces do, instead of "
        "creating them with a guessed schema (Classic workspaces); default: off",
    )
    options.add_argument(
        "--allow-remote-tokens",
        action="store_true",
        help="answer GET /tokens (the token, unauthenticated, as Tinybird Local's) to other "
        "machines too, for tb --local from another machine or a container; default: this "
        "machine only",
    )
    options.add_argument(
        "--quiet",
        action="store_true",
        help="print no line per request (by default: method, path, status, rows and "
        "milliseconds, a path's repeats summed once a second)",
    )
    return options


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, start the server, print the banner and serve until interrupted."""
    from tinybird_export.local import LocalServer, default_data_path  # noqa: PLC0415

    options = parser().parse_args(argv)
    try:
        engine = resolve_engine(options.engine)
    except EngineUnavailable as exc:
        return _fail(str(exc))
    if options.datasources == "package":  # the older spelling: now always declared
        options.datasources = None
    data = options.data or str(default_data_path(engine))
    if engine == "sqlite":
        _sqlite_read.bound_memory()
    try:
        server = LocalServer(
            data,
            host=options.host,
            port=options.port,
            datasources=options.datasources,
            strict=options.strict,
            engine=engine,
            package_datasources=not options.no_package_datasources,
            allow_remote_tokens=options.allow_remote_tokens,
            request_log=None if options.quiet else sys.stdout,
        )
    except DatafileError as exc:
        return _fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail(
                f"port {options.port} on {options.host} is already in use: another "
                "tinybird-export local, or Tinybird Local (its Docker container also listens "
                "on 7181)? Stop it, or pick another port with --port (0 picks a free one)"
            )
        return _fail(f"cannot serve on {options.host}:{options.port}: {exc.strerror or exc}")
    except RuntimeError as exc:
        return _fail(str(exc))
    print(banner(server, data, log_requests=not options.quiet), flush=True)
    previous: dict[int, object] = {}
    try:
        previous = _stop_gracefully_on(signal.SIGTERM, getattr(signal, "SIGHUP", None))
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, nothing to restore
                signal.signal(signum, handler)  # type: ignore[arg-type]
    return 0


def _stop_gracefully_on(*signals: signal.Signals | None) -> dict[int, object]:
    """Stop on these signals as on Ctrl-C: the engine inserts the rows it has acknowledged
    but still holds (up to 0.2 s of them) before the process ends. ``docker stop``, systemd,
    ``kill`` and ``SpawnedServer.stop()`` send SIGTERM; closing the terminal sends SIGHUP.
    A second signal, of either kind, ends the process at once. Only the main thread may
    install handlers: elsewhere (``run`` called from a thread) nothing is installed.

    Returns:
        The handlers replaced, to restore.
    """
    installed = [signum for signum in signals if signum is not None]
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for signum in installed:
            signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, stop) for signum in installed}


def banner(server: object, data: str, *, log_requests: bool = False) -> str:
    """What the server prints on start: URL, the page's URL, engine, data, data sources,
    strict mode, the request log, and ``export`` lines to paste.
    """
    from tinybird_export.local import LocalServer  # noqa: PLC0415

    if not isinstance(server, LocalServer):
        raise TypeError("banner() takes a LocalServer")
    if server.engine_name == "clickhouse":
        engine = "ClickHouse (chDB): ClickHouse's own SQL"
    else:
        engine = (
            "SQLite: SQLite's SQL with ClickHouse's everyday functions (for ClickHouse's own "
            f"SQL: {INSTALL_CLICKHOUSE})"
        )
    strict = (
        "on: unknown data sources get 404, as in Forward workspaces"
        if server.strict
        else "off: an unknown data source is created with a guessed schema (--strict refuses)"
    )
    exposed = []
    if not server.loopback:
        tokens = (
            "and GET /tokens gives them the token (--allow-remote-tokens)"
            if server.allow_remote_tokens
            else "GET /tokens answers this machine only (--allow-remote-tokens for others)"
        )
        exposed = [
            f"  warning:      anyone who can reach {server.url} can read and write this "
            "workspace: the token travels unencrypted in every request;",
            f"                {tokens}",
        ]
    requests = (
        "one line each below (a path's repeats summed once a second; --quiet for none)"
        if log_requests
        else "not printed"
    )
    return "\n".join(
        [
            f"tinybird-export local: serving the Events API at {server.url}",
            *exposed,
            f"  page:         {server.page_url}",
            f"  engine:       {engine}",
            f"  data:         {data}",
            f"  data sources: {', '.join(server.declared) or 'none declared'}",
            f"  strict mode:  {strict}",
            f"  requests:     {requests}",
            "",
            f"export TINYBIRD_HOST={server.url}",
            f"export TINYBIRD_TOKEN={server.token}",
        ]
    )


def _fail(message: str) -> int:
    print(f"tinybird-export local: {message}", file=sys.stderr)
    return 2
