"""The ``tinybird-export`` command: ``local`` (serve a local Events API) and ``sql``."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

import orjson
import urllib3

from tinybird_export.local import DEFAULT_PORT
from tinybird_export.local import main as local_main

__all__ = ["main", "sql_main"]


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``tinybird-export local ...`` and ``tinybird-export sql ...``."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "local":
        return local_main(args[1:])
    if args and args[0] == "sql":
        return sql_main(args[1:])
    print("usage: tinybird-export {local,sql} ...  (--help on each)", file=sys.stderr)
    return 2


def sql_main(argv: list[str]) -> int:
    """``tinybird-export sql "select count() from simple_events"``, like ``tb sql``."""
    parser = argparse.ArgumentParser(prog="tinybird-export sql")
    parser.add_argument("query")
    parser.add_argument(
        "--host",
        default=os.environ.get("TINYBIRD_HOST"),
        help=f"default: TINYBIRD_HOST, else http://127.0.0.1:{DEFAULT_PORT}",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TINYBIRD_TOKEN"),
        help="default: TINYBIRD_TOKEN, else the local server's /tokens",
    )
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--rows-limit", type=int, default=100)
    options = parser.parse_args(argv)
    host = (options.host or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
    try:
        token = options.token or _local_token(host)
        result = query(host, token, options.query, options.rows_limit)
    except (urllib3.exceptions.HTTPError, RuntimeError) as exc:
        print(f"tinybird-export sql: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(result, options.format))
    return 0


def query(host: str, token: str, sql: str, rows_limit: int = 100) -> dict[str, object]:
    """Run ``sql`` through ``/v0/sql`` the way ``tb sql`` wraps it; the JSON result."""
    # The user's own query to their own server: wrapped as tb sql does, not an injection.
    inner = sql.strip().rstrip(";")
    wrapped = f"SELECT * FROM ({inner}) LIMIT {rows_limit} FORMAT JSON"  # noqa: S608
    response = urllib3.request(
        "POST",
        f"{host}/v0/sql",
        body=wrapped.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        timeout=30,
        retries=False,
    )
    body = orjson.loads(response.data or b"{}")
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body.get('error', body)}")
    return body  # type: ignore[no-any-return]


def _local_token(host: str) -> str:
    response = urllib3.request("GET", f"{host}/tokens", timeout=5, retries=False)
    if response.status != 200:
        raise RuntimeError(
            f"no token: set TINYBIRD_TOKEN (GET {host}/tokens answered {response.status})"
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
    cells = [[_cell(row[n]) for n in names] for row in data]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = "-" * (sum(widths) + 3 * len(widths) + 1)
    rows = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    header = " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    body = "\n".join(f"| {r} |" for r in rows)
    return f"{line}\n| {header} |\n{line}\n{body + chr(10) if body else ''}{line}\n"


def _cell(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


if __name__ == "__main__":
    sys.exit(main())
