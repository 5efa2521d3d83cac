"""The ``tinybird-export`` command: ``local`` (serve a local Tinybird), ``sql`` and
``datasources`` (the package's data sources as a project folder, for deploying).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import os
import re
import sys

import orjson
import urllib3

from tinybird_export.local import DEFAULT_PORT
from tinybird_export.local._main import HelpFormatter

__all__ = ["main", "query", "render", "sql_main"]

_DESCRIPTION = """\
Stream Python logs, events and traces to the Tinybird Events API. This command runs a local
Tinybird (local), queries one or Tinybird itself (sql), and writes the package's data sources
as a project folder to deploy to Tinybird (datasources)."""


# Statements that are not a SELECT: ``describe x`` cannot be wrapped as a subquery.
_NOT_A_SELECT = re.compile(r"(DESCRIBE|DESC|SHOW|EXISTS|EXPLAIN)\b", re.IGNORECASE)


class SQLError(RuntimeError):
    """A query that the server refused, or no server to ask."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``tinybird-export local ...`` and ``tinybird-export sql ...``."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "local":
        from tinybird_export.local import main as local_main  # noqa: PLC0415

        return local_main(args[1:])
    if args and args[0] == "sql":
        return sql_main(args[1:])
    if args and args[0] == "datasources":
        from tinybird_export._project import main as datasources_main  # noqa: PLC0415

        return datasources_main(args[1:])
    parser = argparse.ArgumentParser(prog="tinybird-export", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="{local,sql,datasources}")
    commands.add_parser("local", help="serve a local Tinybird (Events API, SQL, Data Sources)")
    commands.add_parser("sql", help="run a query, like tb sql (--help for its options)")
    commands.add_parser(
        "datasources", help="write the package's .datasource files into a folder to deploy"
    )
    if not args:
        parser.print_help(sys.stderr)
        return 2
    parser.parse_args(args)  # --help, --version, or an error naming the unknown command
    return 2


def _version() -> str:
    try:
        return importlib.metadata.version("tinybird-export")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sql_main(argv: list[str]) -> int:
    """``tinybird-export sql "select count() from simple_events"``, like ``tb sql``."""
    parser = argparse.ArgumentParser(
        prog="tinybird-export sql",
        description="Run a query through /v0/sql, wrapped as tb sql wraps it.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("query", help='the SQL, e.g. "select count() from simple_events"')
    parser.add_argument(
        "--host",
        default=os.environ.get("TINYBIRD_HOST"),
        help=f"the server (default: TINYBIRD_HOST, else http://127.0.0.1:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="a token with read access (default: TINYBIRD_TOKEN, else the local server's "
        "GET /tokens)",
    )
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    parser.add_argument(
        "--rows-limit", type=int, default=100, help="most rows to print (as tb sql's)"
    )
    options = parser.parse_args(argv)
    host = (options.host or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
    try:
        token = options.token or os.environ.get("TINYBIRD_TOKEN") or _local_token(host)
        result = query(host, token, options.query, options.rows_limit + 1)
    except SQLError as exc:
        print(f"tinybird-export sql: {exc}", file=sys.stderr)
        return 1
    data = result.get("data")
    if isinstance(data, list) and len(data) > options.rows_limit:
        result["data"] = data[: options.rows_limit]
        print(
            f"tinybird-export sql: showing the first {options.rows_limit} rows; more matched "
            "(raise --rows-limit to see more)",
            file=sys.stderr,
        )
    sys.stdout.write(render(result, options.format))
    return 0


def query(host: str, token: str, sql: str, rows_limit: int = 100) -> dict[str, object]:
    """Run ``sql`` through ``/v0/sql`` the way ``tb sql`` wraps it; the JSON result.

    Raises:
        SQLError: No server at ``host`` (with how to start one), or the server refused the
            query (with its message).
    """
    # The user's own query to their own server: wrapped as tb sql does, not an injection.
    inner = sql.strip().rstrip(";").strip()
    if _NOT_A_SELECT.match(inner):  # no subquery can hold these: sent as they are
        wrapped = f"{inner} FORMAT JSON"
    else:
        wrapped = f"SELECT * FROM ({inner}) LIMIT {rows_limit} FORMAT JSON"  # noqa: S608
    response = _request(
        host,
        "POST",
        "/v0/sql",
        body=wrapped.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        timeout=30,
    )
    try:
        body = orjson.loads(response.data or b"{}")
    except orjson.JSONDecodeError:
        body = {"error": response.data.decode("utf-8", "replace")[:500]}
    if response.status != 200:
        message = body.get("error", body) if isinstance(body, dict) else body
        raise SQLError(f"HTTP {response.status}: {message}")
    return body  # type: ignore[no-any-return]


def _request(host: str, method: str, path: str, **kwargs: object) -> urllib3.BaseHTTPResponse:
    try:
        return urllib3.request(method, f"{host}{path}", retries=False, **kwargs)  # type: ignore[arg-type]
    except urllib3.exceptions.HTTPError as exc:
        raise SQLError(
            f"no server answers at {host} ({type(exc).__name__}). Start one with "
            "`tinybird-export local` (in another terminal), or set TINYBIRD_HOST (and "
            "TINYBIRD_TOKEN) to your Tinybird host, or pass --host"
        ) from None


def _local_token(host: str) -> str:
    response = _request(host, "GET", "/tokens", timeout=5)
    if response.status != 200:
        raise SQLError(
            f"no token: set TINYBIRD_TOKEN or pass --token (GET {host}/tokens answered "
            f"{response.status}, so this is not a local server)"
        )
    return str(orjson.loads(response.data)["workspace_admin_token"])


def render(result: dict[str, object], fmt: str) -> str:
    """The rows as a text table, JSON lines or CSV."""
    meta = result.get("meta") or []
    names = [column["name"] for column in meta]  # type: ignore[attr-defined]
    data: list[dict[str, object]] = result.get("data") or []  # type: ignore[assignment]
    if fmt == "json":
        return "".join(orjson.dumps(row).decode() + "\n" for row in data)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(names)
        writer.writerows([[_cell(row[n]) for n in names] for row in data])
        return out.getvalue()
    # A cell is a list of lines: a traceback or a CREATE statement spans several, each in
    # its column, and rows are then ruled apart.
    cells = [[_cell(row[n]).split("\n") for n in names] for row in data]
    widths = [
        max([len(n)] + [len(part) for c in cells for part in c[i]]) for i, n in enumerate(names)
    ]
    line = "-" * (sum(widths) + 3 * len(widths) + 1)
    header = " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    rows = []
    for row in cells:
        height = max((len(c) for c in row), default=1)
        rows.append(
            "\n".join(
                "| "
                + " | ".join(
                    (c[k] if k < len(c) else "").ljust(w) for c, w in zip(row, widths, strict=True)
                )
                + " |"
                for k in range(height)
            )
        )
    tall = any(len(c) > 1 for row in cells for c in row)
    body = f"\n{line}\n".join(rows) if tall else "\n".join(rows)
    return f"{line}\n| {header} |\n{line}\n{body + chr(10) if body else ''}{line}\n"


def _cell(value: object) -> str:
    """A value as one line or several: tabs and other control characters, which would move
    the cursor and break the columns, are shown escaped; line breaks make lines.
    """
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


if __name__ == "__main__":
    sys.exit(main())
