"""Hostile bodies for the local server's routes, from a client holding the token (a test
harness, a script, a CLI fed a hostile project): each gets a clear answer naming what is
wrong, never a dropped connection or a traceback, and none grows the server's memory for good.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from tests.local_helpers import ENGINES, api, sql
from tinybird_export.local import LocalServer, _api

BOUNDARY = "b0und4ry"


def multipart(name: str, filename: str, content: bytes) -> bytes:
    """One file part, as Tinybird's CLIs upload a project file or a CSV."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
BIG_FIELD = b'"' + b"a" * 200_000 + b'",[]\n'  # over the csv module's 128 KiB field limit
# (method, path, body, headers, what the error says)
HOSTILE = [
    (
        "POST",
        "/v1/deploy",
        multipart("data_project://", "x.datasource", b"SCHEMA >\n    `a` String\xff\n"),
        MULTIPART,
        "UTF-8",
    ),
    (
        "POST",
        "/v1/build",
        multipart("data_project://", "x.datasource", b"\xff\xfe"),
        MULTIPART,
        "UTF-8",
    ),
    (
        "POST",
        "/v0/datasources?name=target&mode=append&format=csv",
        multipart("csv", "x.csv", BIG_FIELD),
        MULTIPART,
        "CSV",
    ),
    (
        "POST",
        "/v1/datasources/target/append?format=csv",
        BIG_FIELD,
        {"Content-Type": "text/csv"},
        "CSV",
    ),
    (
        "POST",
        "/v0/datasources",
        b"name=deep&schema=%60a%60+" + b"Array(" * 5000 + b"String" + b")" * 5000,
        {"Content-Type": "application/x-www-form-urlencoded"},
        "nested",
    ),
]


@pytest.fixture(params=ENGINES)
def local(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    with LocalServer(engine=str(request.param)) as server:
        schema = {"name": "target", "schema": "`a` String, `tags` Array(String)"}
        assert api(server, "POST", "/v0/datasources", fields=schema).status == 200
        yield server


@pytest.mark.parametrize(("method", "path", "body", "headers", "says"), HOSTILE)
def test_a_hostile_body_gets_a_clear_400(
    local: LocalServer,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    says: str,
) -> None:
    """Bad UTF-8 in a project file, a CSV field over the csv module's limit, a type nested
    thousands deep: a 400 that says so (each dropped the connection before).
    """
    response = api(local, method, path, body=body, headers=headers)
    assert response.status == 400, response.data[:300]
    assert says in response.data.decode(), response.data[:300]
    assert sql(local, "select count() n from target")["data"] == [{"n": 0}]


def test_an_event_with_thousands_of_keys_gets_an_answer(local: LocalServer) -> None:
    """A new data source's schema is guessed from its first events: 5000 keys are over
    SQLite's 2000 columns, a 400 that says so (the connection was dropped); ClickHouse takes
    them.
    """
    wide = orjson.dumps({f"k{number}": "v" for number in range(5000)})
    response = api(local, "POST", "/v0/events?name=wide&wait=true", body=wide)
    if local.engine_name == "sqlite":
        assert response.status == 400 and b"too many columns" in response.data, response.data
    else:
        assert response.status == 200, response.data
    assert sql(local, "select 1 n")["data"] == [{"n": 1}]


@pytest.mark.parametrize("schema", ["`a` String{} x", "`a` String CODEC({} x"])
def test_a_schema_line_is_read_in_linear_time(local: LocalServer, schema: str) -> None:
    """A column line with a long run of spaces is a 400 at once (reading it backtracked
    through the run: about three minutes for 200 KB, holding the GIL, so the whole server
    stopped answering).
    """
    fields = {"name": "spaced", "schema": schema.format(" " * 200_000)}
    started = time.monotonic()
    response = api(local, "POST", "/v0/datasources", fields=fields)
    assert response.status == 400, response.data[:300]
    assert time.monotonic() - started < 20


def test_workspace_names_are_bounded(local: LocalServer) -> None:
    """Workspaces created by name (``tb --local`` makes one per project) are names for the one
    workspace, kept in memory: a name is at most 128 characters, and there are at most 1000
    (each request kept up to 10 MB, for as long as the server ran).
    """
    huge = api(local, "POST", "/v1/workspaces", fields={"name": "x" * 100_000})
    assert huge.status == 400 and b"x" * 200 not in huge.data, huge.data[:300]
    for number in range(1000):
        api(local, "POST", "/v1/workspaces", fields={"name": f"w{number}"})
    refused = api(local, "POST", "/v1/workspaces", fields={"name": "one_too_many"})
    assert refused.status == 400, refused.data
    listed = orjson.loads(api(local, "GET", "/v1/user/workspaces").data)["workspaces"]
    assert len(listed) <= 1001


def test_an_unexpected_failure_is_a_500_not_a_dropped_connection(
    local: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a route did not foresee gets an answer (500, naming the failure, never the
    token) instead of a closed connection, and the server goes on.
    """

    def failing() -> None:
        raise RuntimeError(f"unforeseen, near {local.token}")

    monkeypatch.setattr(local.store, "datasources", failing)
    response = api(local, "GET", "/v0/datasources")
    assert response.status == 500, response.data
    error = orjson.loads(response.data)["error"]
    assert "RuntimeError" in error and local.token not in error
    monkeypatch.undo()
    assert sql(local, "select 1 n")["data"] == [{"n": 1}]


def test_jobs_kept_are_the_newest_thousand(
    local: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Data Sources append or delete is a job, kept in memory and listed whole by
    ``GET /v0/jobs``: only the newest are kept (1000; 5 here, the mechanism is the same), so
    a script appending all day grows neither the server nor the listing.
    """
    monkeypatch.setattr(_api, "JOBS_KEPT", 5)
    ids = []
    for number in range(8):
        body = orjson.dumps({"a": str(number), "tags": []})
        response = api(
            local,
            "POST",
            "/v0/datasources?name=target&mode=append&format=ndjson",
            body=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert response.status == 200, response.data
        ids.append(orjson.loads(response.data)["id"])
    listed = [job["id"] for job in orjson.loads(api(local, "GET", "/v0/jobs").data)["jobs"]]
    assert listed == list(reversed(ids[-5:]))
    assert api(local, "GET", f"/v0/jobs/{ids[-1]}").status == 200


def test_a_quarantine_is_not_a_data_source_name(local: LocalServer) -> None:
    """``<name>_quarantine`` is the quarantine table of ``<name>``: an event sent to it (which
    creates a data source, in Classic mode) is a 400, and neither is touched (SQLite listed a
    data source over the quarantine and dropped the connection; ClickHouse said the table
    existed).
    """
    bad = orjson.dumps({"a": "x", "tags": 1})  # quarantined: tags is an Array
    assert api(local, "POST", "/v0/events?name=target&wait=true", body=bad).status == 200
    response = api(local, "POST", "/v0/events?name=target_quarantine&wait=true", body=b'{"b":1}')
    assert response.status == 400 and b"quarantine of 'target'" in response.data, response.data
    listed = orjson.loads(api(local, "GET", "/v0/datasources").data)["datasources"]
    assert "target_quarantine" not in [d["name"] for d in listed]
    assert [d["quarantine_rows"] for d in listed if d["name"] == "target"] == [1]
    assert sql(local, "select count() n from target_quarantine")["data"] == [{"n": 1}]
