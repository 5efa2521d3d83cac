"""Shared by the local-server tests: the engines to run on, and HTTP helpers."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import urllib3

from tinybird_export.cli import query
from tinybird_export.local import LocalServer, SpawnedServer
from tinybird_export.local._engine import clickhouse_available

ENGINES = [
    "sqlite",
    pytest.param(
        "clickhouse",
        marks=pytest.mark.skipif(
            not clickhouse_available(), reason="chDB not installed (pip install -e '.[local]')"
        ),
    ),
]
needs_clickhouse = pytest.mark.skipif(
    not clickhouse_available(), reason="chDB not installed (pip install -e '.[local]')"
)
EVENT = {"timestamp": "2024-06-23 16:00:00.000", "href": "https://x/", "event": "page_view"}


def post(
    server: LocalServer | SpawnedServer,
    name: str | None,
    body: bytes,
    token: str | None = None,
    **params: str,
) -> tuple[int, dict[str, Any]]:
    """POST /v0/events; the status and the JSON answer."""
    fields = {"name": name, **params} if name is not None else dict(params)
    query_string = "&".join(f"{k}={v}" for k, v in fields.items())
    headers = {"Authorization": f"Bearer {token or server.token}"}
    if body[:2] == b"\x1f\x8b":
        headers["Content-Encoding"] = "gzip"
    response = urllib3.request(
        "POST", f"{server.url}/v0/events?{query_string}", body=body, headers=headers, retries=False
    )
    return response.status, orjson.loads(response.data)


def ndjson(*rows: object) -> bytes:
    """Rows as an NDJSON body (integers of any size)."""
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def sql(server: LocalServer, text: str) -> dict[str, Any]:
    """The JSON answer of ``text``, wrapped as ``tb sql`` wraps it."""
    return query(server.url, server.token, text)


def datasource_names(server: LocalServer) -> list[str]:
    """The data sources the server's engine holds, as its Data Sources API lists them."""
    return sorted(info.name for info in server.store.datasources())


# urllib3.request() gives up after 3 s by default: on a loaded machine a query's first use of
# a chDB feature, or a 408 at the 2 s limit, can take longer than that to answer. The tests
# assert how long answers take where it matters; the client just waits for them.
_ANSWER_TIMEOUT = 30


def raw_sql(server: LocalServer, text: str, method: str = "GET") -> urllib3.BaseHTTPResponse:
    """``/v0/sql`` with ``text`` as is (no wrapping)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/v0/sql"
    if method == "GET":
        return urllib3.request(
            "GET", url, fields={"q": text}, headers=headers, retries=False, timeout=_ANSWER_TIMEOUT
        )
    return urllib3.request(
        "POST", url, body=text.encode(), headers=headers, retries=False, timeout=_ANSWER_TIMEOUT
    )


def api(server: LocalServer, method: str, path: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    """A Tinybird API call with the server's token as a Bearer header."""
    headers = {"Authorization": f"Bearer {server.token}", **kwargs.pop("headers", {})}
    kwargs.setdefault("timeout", _ANSWER_TIMEOUT)
    return urllib3.request(method, f"{server.url}{path}", headers=headers, retries=False, **kwargs)
