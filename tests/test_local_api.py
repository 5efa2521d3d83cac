"""The Tinybird API routes of the local server, with the exact shapes Tinybird's clients
read (see the README's local section): workspaces, Data Sources, jobs, build and deploy.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import orjson
import pytest
import urllib3

from tests.local_helpers import ENGINES, api, ndjson, post, sql
from tinybird_export.local import LocalServer

SHOP = (
    "SCHEMA >\n"
    "    `ts` DateTime64(3) `json:$.ts`,\n"
    "    `user` String `json:$.user`,\n"
    "    `tags` Array(String) `json:$.tags[:]` DEFAULT []\n\n"
    'ENGINE "MergeTree"\nENGINE_SORTING_KEY "user, ts"\n'
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(params=ENGINES)
def local(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    with LocalServer(engine=str(request.param)) as server:
        yield server


def multipart(fields: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    body, content_type = urllib3.encode_multipart_formdata(
        [(name, (filename, content, "text/plain")) for name, filename, content in fields]
    )
    return body, content_type


def test_workspace_routes(local: LocalServer) -> None:
    """The workspace routes answer what Tinybird's clients read."""
    workspace = orjson.loads(api(local, "GET", "/v0/workspace").data)
    assert {"id", "name", "user_email", "user_id", "scope"} <= set(workspace)
    created = orjson.loads(api(local, "POST", "/v1/workspaces?name=Build_0123456789abcdef").data)
    assert set(created) == {"id", "name", "token"}
    listed = orjson.loads(api(local, "GET", "/v1/user/workspaces?with_organization=true").data)
    assert listed["organization_id"] is None
    assert all(set(w) == {"id", "name", "token"} for w in listed["workspaces"])
    assert "Build_0123456789abcdef" in [w["name"] for w in listed["workspaces"]]
    classic = orjson.loads(api(local, "GET", "/v0/user/workspaces/?with_environments=true").data)
    assert classic["id"] and all(
        {"id", "name", "role", "plan"} <= set(w) for w in classic["workspaces"]
    )
    assert (
        api(local, "GET", "/v0/workspace", headers={"Authorization": "Bearer nope"}).status == 403
    )
    assert orjson.loads(api(local, "GET", "/v0/regions").data) == {"regions": []}
    assert orjson.loads(api(local, "GET", "/v0/pipes").data) == {"pipes": []}
    assert orjson.loads(api(local, "GET", "/v0/variables").data) == {"variables": []}
    tokens = orjson.loads(api(local, "GET", "/v0/tokens").data)["tokens"]
    assert tokens[0]["scopes"] == [{"type": "ADMIN"}]
    assert api(local, "GET", "/v0/health", headers={"Authorization": ""}).status == 200


def test_datasources_list_and_datafile(local: LocalServer) -> None:
    """Data sources are listed, quarantine tables not, with their datafile."""
    post(local, "simple_events", ndjson({"event": 1}))  # quarantined: timestamp missing
    listed = orjson.loads(api(local, "GET", "/v0/datasources?attrs=used_by").data)["datasources"]
    names = [d["name"] for d in listed]
    assert "simple_events" in names and not [n for n in names if n.endswith("_quarantine")]
    entry = next(d for d in listed if d["name"] == "simple_events")
    assert len(entry["created_at"]) == len("2024-01-01 00:00:00.000000")
    assert set(entry["statistics"]) >= {"row_count", "bytes"}
    one = orjson.loads(api(local, "GET", "/v0/datasources/simple_events").data)
    assert "`event` LowCardinality(String) `json:$.event`" in one["schema"]["sql_schema"]
    assert isinstance(one["engine"], dict)
    datafile = api(local, "GET", "/v0/datasources/otel_traces.datasource")
    assert datafile.headers["Content-Type"] == "text/plain"  # exactly: tb pull needs it
    assert "`json:$.events_timestamp[:]`" in datafile.data.decode()
    missing = api(local, "GET", "/v0/datasources/nope")
    assert missing.status == 404 and "error" in orjson.loads(missing.data)


def test_create_append_truncate_delete(local: LocalServer) -> None:
    """A data source can be created, appended to, truncated and deleted."""
    created = api(
        local,
        "POST",
        "/v0/datasources",
        body=urllib.parse.urlencode(
            {
                "name": "shop",
                "schema": "`ts` DateTime64(3) `json:$.ts`, `user` String `json:$.user`, "
                "`tags` Array(String) `json:$.tags[:]` DEFAULT []",
                "engine_sorting_key": "user, ts",
                "format": "ndjson",
            }
        ),
        headers=FORM,
    )
    assert created.status == 200, created.data
    assert orjson.loads(created.data)["datasource"]["name"] == "shop"
    rows = b'{"ts":"2024-01-01 00:00:00","user":"a","tags":["x"]}\n{"ts":"bad","user":"b"}\n'
    body, content_type = multipart([("ndjson", "rows.ndjson", rows)])
    appended = api(
        local,
        "POST",
        "/v0/datasources?name=shop&mode=append&format=ndjson",
        body=body,
        headers={"Content-Type": content_type},
    )
    job = orjson.loads(appended.data)
    assert job["datasource"]["name"] == "shop" and job["quarantine_rows"] == 1
    assert job["blocks"][0]["process_return"][0]["lines"] == 1
    body, content_type = multipart([("csv", "rows.csv", b'2024-01-02 00:00:00,c,"[""y""]"\n')])
    api(
        local,
        "POST",
        "/v0/datasources?name=shop&mode=append&format=csv",
        body=body,
        headers={"Content-Type": content_type},
    )
    raw = api(
        local,
        "POST",
        "/v0/datasources?name=shop&mode=append&format=ndjson",
        body=b'{"ts":"2024-01-03 00:00:00","user":"d"}\n',
        headers={"Content-Type": "application/x-ndjson; charset=utf-8"},
    )
    assert raw.status == 200
    data = sql(local, "select user, tags from shop order by ts")["data"]
    assert data == [
        {"user": "a", "tags": ["x"]},
        {"user": "c", "tags": ["y"]},
        {"user": "d", "tags": []},
    ]
    jobs = orjson.loads(api(local, "GET", "/v0/jobs").data)["jobs"]
    assert orjson.loads(api(local, "GET", f"/v0/jobs/{jobs[0]['id']}").data)["status"] == "done"
    deleted = api(
        local,
        "POST",
        "/v0/datasources/shop/delete",
        body="delete_condition=user+%3D+%27a%27",
        headers=FORM,
    )
    assert deleted.status == 200, deleted.data
    assert sql(local, "select count() c from shop")["data"] == [{"c": 2}]
    assert api(local, "POST", "/v0/datasources/shop/truncate").status == 200
    assert sql(local, "select count() c from shop")["data"] == [{"c": 0}]
    assert api(local, "POST", "/v0/datasources/nope/truncate").status == 404
    assert api(local, "DELETE", "/v0/datasources/shop").status == 204
    assert "shop" not in [
        d["name"] for d in orjson.loads(api(local, "GET", "/v0/datasources").data)["datasources"]
    ]


def test_build_deploy_and_append_v1(local: LocalServer) -> None:
    """A project is built, deployed and appended to through /v1."""
    fields = [
        ("context://", "cli-version", b"1.0.0"),
        ("data_project://", "datasources/orders.datasource", SHOP.encode()),
    ]
    body, content_type = multipart(fields)
    built = orjson.loads(
        api(local, "POST", "/v1/build", body=body, headers={"Content-Type": content_type}).data
    )
    assert built["result"] == "success" and built["build"]["new_datasource_names"] == ["orders"]
    deployed = api(
        local,
        "POST",
        "/v1/deploy?auto_promote=true",
        body=body,
        headers={"Content-Type": content_type},
    )
    deployment = orjson.loads(deployed.data)["deployment"]
    assert deployment["status"] == "data_ready" and deployment["live"] is True
    assert deployment["new_datasource_names"] == []  # unchanged since the build
    got = orjson.loads(api(local, "GET", f"/v1/deployments/{deployment['id']}").data)
    assert got["deployment"]["live"] is True
    assert (
        orjson.loads(api(local, "GET", "/v1/deployments").data)["deployments"][0]["id"]
        == deployment["id"]
    )
    appended = orjson.loads(
        api(
            local,
            "POST",
            "/v1/datasources/orders/append?format=ndjson",
            body=b'{"ts":"2024-01-01 00:00:00","user":"z"}',
        ).data
    )
    job = orjson.loads(api(local, "GET", f"/v0/jobs/{appended['id']}?debug=blocks,block_log").data)
    assert job["status"] == "done" and job["blocks"][0]["process_return"][0]["lines"] == 1
    assert sql(local, "select user from orders")["data"] == [{"user": "z"}]


def test_a_project_with_a_pipe_fails_naming_it(local: LocalServer) -> None:
    """A project with a pipe fails, naming the pipe."""
    body, content_type = multipart(
        [
            ("data_project://", "datasources/orders.datasource", SHOP.encode()),
            ("data_project://", "pipes/top.pipe", b"NODE n\nSQL >\n    select 1\n"),
        ]
    )
    for path in ("/v1/build", "/v1/deploy"):
        answer = orjson.loads(
            api(local, "POST", path, body=body, headers={"Content-Type": content_type}).data
        )
        assert answer["result"] == "failed"
        errors = answer.get("errors") or answer["deployment"]["errors"]
        assert errors[0]["filename"] == "pipes/top.pipe" and "not supported" in errors[0]["error"]
    assert "orders" not in [
        d["name"] for d in orjson.loads(api(local, "GET", "/v0/datasources").data)["datasources"]
    ]


def test_a_bad_datafile_in_a_build_names_file_and_line(local: LocalServer) -> None:
    """A bad datafile in a build names its file and line."""
    body, content_type = multipart(
        [
            (
                "data_project://",
                "datasources/bad.datasource",
                b"SCHEMA >\n    `a` String `json:$.a`,\n    `b` Strng\n",
            )
        ]
    )
    answer = orjson.loads(
        api(local, "POST", "/v1/build", body=body, headers={"Content-Type": content_type}).data
    )
    assert answer["result"] == "failed"
    error = answer["errors"][0]["error"]
    assert "bad.datasource" in error and ("3" in error or "Strng" in error)


def test_tokens_created_by_name_are_the_one_token() -> None:
    """What Classic ``tb push`` does for a ``TOKEN "name" APPEND`` line: list, create by name,
    add a scope (PUT), and ``tb token copy`` reads it back."""
    with LocalServer(engine="sqlite") as local:
        scope = "scope=DATASOURCES:APPEND:app_logs"
        created = api(local, "POST", f"/v0/tokens?name=appender&origin=DS&{scope}", body=b"")
        assert created.status == 200
        assert orjson.loads(created.data)["token"] == local.token
        listed = orjson.loads(api(local, "GET", "/v0/tokens").data)["tokens"]
        assert [t["name"] for t in listed] == ["admin token", "appender"]
        assert all(t["token"] == local.token and t["scopes"] == [{"type": "ADMIN"}] for t in listed)
        assert api(local, "PUT", f"/v0/tokens/appender?{scope}", body=b"").status == 200
        again = api(local, "POST", f"/v0/tokens?name=appender&{scope}", body=b"")
        assert again.status == 200
        assert len(orjson.loads(api(local, "GET", "/v0/tokens").data)["tokens"]) == 2
        by_id = orjson.loads(api(local, "GET", "/v0/tokens/appender").data)["id"]
        assert orjson.loads(api(local, "GET", f"/v0/tokens/{by_id}").data)["name"] == "appender"
        assert api(local, "GET", "/v0/tokens/nobody").status == 404
        assert api(local, "POST", "/v0/tokens?name=a%0Ab", body=b"").status == 400
        unauthenticated = urllib3.request(
            "POST", f"{local.url}/v0/tokens?name=x", body=b"", retries=False
        )
        assert unauthenticated.status == 403
