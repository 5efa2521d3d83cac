"""The embedded local Events API (tinybird-export local), through HTTP."""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3

from tinybird_export import TinybirdEvents, TinybirdHandler
from tinybird_export.cli import main as cli_main
from tinybird_export.cli import query
from tinybird_export.local import DATASOURCES_DIR, LocalServer


@pytest.fixture
def local() -> Iterator[LocalServer]:
    with LocalServer() as server:
        yield server


def post(
    server: LocalServer, name: str | None, body: bytes, token: str | None = None, **params: str
) -> tuple[int, dict[str, Any]]:
    fields = {"name": name, **params} if name is not None else dict(params)
    query_string = "&".join(f"{k}={v}" for k, v in fields.items())
    headers = {"Authorization": f"Bearer {token or server.token}"}
    if body[:2] == b"\x1f\x8b":
        headers["Content-Encoding"] = "gzip"
    response = urllib3.request(
        "POST", f"{server.url}/v0/events?{query_string}", body=body, headers=headers, retries=False
    )
    return response.status, orjson.loads(response.data)


def ndjson(*rows: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def sql(server: LocalServer, text: str) -> dict[str, Any]:
    return query(server.url, server.token, text)


EVENT = {"timestamp": "2024-06-23 16:00:00.000", "href": "https://x/", "event": "page_view"}


class TestEventsEndpoint:
    def test_accepts_ndjson_202_and_wait_200(self, local: LocalServer) -> None:
        assert post(local, "simple_events", ndjson(EVENT, EVENT)) == (
            202,
            {"successful_rows": 2, "quarantined_rows": 0},
        )
        status, body = post(local, "simple_events", ndjson(EVENT), wait="true")
        assert (status, body["successful_rows"]) == (200, 1)
        assert sql(local, "select count() from simple_events")["data"] == [{"count()": 3}]

    def test_name_is_required(self, local: LocalServer) -> None:
        status, body = post(local, None, ndjson(EVENT))
        assert status == 400 and "name" in body["error"]

    def test_token_is_checked(self, local: LocalServer) -> None:
        assert post(local, "x", ndjson(EVENT), token="wrong")[0] == 403
        response = urllib3.request(
            "POST", f"{local.url}/v0/events?name=x&token={local.token}", body=ndjson(EVENT)
        )
        assert response.status == 202

    def test_gzip_body(self, local: LocalServer) -> None:
        assert post(local, "zipped", gzip.compress(ndjson(EVENT)))[0] == 202

    def test_request_cap_is_413(self) -> None:
        with LocalServer(max_body_bytes=1000) as small:
            assert post(small, "big", ndjson(*[EVENT] * 50))[0] == 413

    @pytest.mark.parametrize("name", ['x"; drop table y; --', "1abc", "a-b", "a.b"])
    def test_invalid_names_are_refused_before_sql(self, local: LocalServer, name: str) -> None:
        status, body = post(local, urllib.parse.quote(name), ndjson(EVENT))
        assert status == 400 and "invalid data source name" in body["error"]

    @pytest.mark.parametrize("bad", [b"{not json}", b'{"a":1},{"b":2}', b"[1]", b'{"a":1}{"b":2}'])
    def test_malformed_ndjson_names_the_line(self, local: LocalServer, bad: bytes) -> None:
        status, body = post(local, "bad", ndjson(EVENT) + bad + b"\n" + ndjson(EVENT))
        assert status == 400 and "line 2" in body["error"]

    def test_tokens_endpoint_needs_no_auth(self, local: LocalServer) -> None:
        response = urllib3.request("GET", f"{local.url}/tokens")
        assert orjson.loads(response.data)["workspace_admin_token"] == local.token


class TestSchemas:
    def test_guessing_rules(self, local: LocalServer) -> None:
        post(
            local,
            "guessed",
            ndjson(
                {
                    "ts": "2024-01-01 00:00:00.123",
                    "day": "2024-01-01 00:00:00",
                    "s": "text",
                    "i": 1,
                    "f": 1.5,
                    "b": True,
                    "arr": [1, 2],
                    "m": {"k": "v"},
                    "sometimes": "x",
                },
                {
                    "ts": "2024-01-01T00:00:01Z",
                    "day": "2024-01-02 00:00:00",
                    "s": "t",
                    "i": 2,
                    "f": 2,
                    "b": False,
                    "arr": [],
                    "m": {},
                },
            ),
        )
        meta = {c["name"]: c["type"] for c in sql(local, "select * from guessed")["meta"]}
        assert meta == {
            "ts": "DateTime64(6)",
            "day": "DateTime",
            "s": "String",
            "i": "Int64",
            "f": "Float64",
            "b": "Bool",
            "arr": "Array(Int64)",
            "m": "Map(String, String)",
            "sometimes": "Nullable(String)",
        }
        rows = sql(local, "select ts, arr, m, sometimes from guessed order by i")["data"]
        assert rows[0] == {
            "ts": "2024-01-01 00:00:00.123000",
            "arr": [1, 2],
            "m": {"k": "v"},
            "sometimes": "x",
        }
        assert rows[1]["ts"] == "2024-01-01 00:00:01.000000" and rows[1]["sometimes"] is None

    def test_wrong_type_and_missing_column_go_to_quarantine(self, local: LocalServer) -> None:
        post(local, "q", ndjson({"n": 1, "s": "a"}))
        status, body = post(
            local, "q", ndjson({"n": "x", "s": "b"}, {"s": "c"}, {"n": 3, "s": "d"})
        )
        assert (status, body) == (202, {"successful_rows": 1, "quarantined_rows": 2})
        errors = sql(local, "select c__error_column, c__error from q_quarantine")["data"]
        assert [e["c__error_column"] for e in errors] == ["n", "n"]
        assert "expected an integer" in errors[0]["c__error"]
        assert "missing" in errors[1]["c__error"]

    def test_new_fields_in_later_rows_are_ignored(self, local: LocalServer) -> None:
        post(local, "fixed", ndjson({"a": "1"}))
        assert post(local, "fixed", ndjson({"a": "2", "b": "new"}))[1]["successful_rows"] == 1
        assert [c["name"] for c in sql(local, "select * from fixed")["meta"]] == ["a"]

    def test_shipped_datasource_files_take_every_handler_event(self) -> None:
        """The contract between the event mappers and the shipped schemas: nothing is
        quarantined, whatever the record."""
        with LocalServer(datasources=DATASOURCES_DIR, strict=True) as local:
            handler = TinybirdHandler(
                datasource="app_logs", host=local.url, token=local.token, wait=True
            )
            events = TinybirdEvents(datasource="simple_events", host=local.url, token=local.token)
            log = logging.getLogger("shipped")
            log.propagate = False
            log.setLevel(logging.DEBUG)
            log.addHandler(handler)
            try:
                log.info("plain")
                log.warning("with extras", extra={"href": "/a", "n": 2**60, "d": {"x": [1]}})
                try:
                    1 / 0
                except ZeroDivisionError:
                    log.exception("boom")
                handler.handle(logging.makeLogRecord({"msg": "bare record"}))
                events.send({"href": "/", "event": "page_view", "session_id": "s1"})
                assert handler.flush(10) and events.flush(10)
                assert handler.stats().quarantined == events.stats().quarantined == 0
                rows = sql(local, "select level, attributes, line from app_logs order by timestamp")
                assert len(rows["data"]) == 4
                assert rows["data"][1]["attributes"] == {
                    "href": "/a",
                    "n": str(2**60),
                    "d": '{"x":[1]}',
                }
                assert {c["name"]: c["type"] for c in rows["meta"]}["line"] == "UInt32"
            finally:
                handler.close()
                events.close()

    def test_strict_mode_refuses_unknown_data_sources(self) -> None:
        with LocalServer(datasources=DATASOURCES_DIR, strict=True) as local:
            status, body = post(local, "undeclared", ndjson(EVENT))
            assert status == 404 and "not found" in body["error"]
            assert post(local, "simple_events", ndjson(EVENT))[0] == 202

    @pytest.mark.parametrize(
        ("type_name", "good", "bad"),
        [
            ("UInt8", [0, 255, "7"], [256, -1, "x", 1.5, True]),
            ("Int32", [-5, 2**31 - 1], [2**31, "1.0"]),
            ("Float32", [1, 1.5, "2.5"], ["x", None, [1]]),
            ("Bool", [True, False, 0, 1], ["true", 2]),
            (
                "DateTime",
                ["2024-01-01 00:00:00", "2024-01-01T00:00:00Z", 1700000000],
                ["2024-13-01 00:00:00", "yesterday"],
            ),
            ("DateTime64(3)", ["2024-01-01 00:00:00.123456", "2024-01-01T01:00:00+01:00"], ["x"]),
            ("Date", ["2024-01-01"], ["2024-01-01 00:00:00", 5]),
            ("Nullable(Int64)", [None, 1], ["x"]),
            ("LowCardinality(String)", ["a"], [1]),
            ("Array(UInt8)", [[], [1, 2]], [[300], "x"]),
            ("Map(String, UInt8)", [{}, {"a": 1}], [{"a": "x"}, []]),
            ("String", ["", "x"], [1, None, {}]),
        ],
    )
    def test_column_type_checks(
        self, tmp_path: Path, type_name: str, good: list[Any], bad: list[Any]
    ) -> None:
        (tmp_path / "typed.datasource").write_text(f"SCHEMA >\n    `v` {type_name} `json:$.v`\n")
        with LocalServer(datasources=tmp_path) as local:
            body = post(local, "typed", ndjson(*({"v": v} for v in good + bad)))[1]
            assert body == {"successful_rows": len(good), "quarantined_rows": len(bad)}

    def test_datetime_values_are_stored_in_utc(self, tmp_path: Path) -> None:
        (tmp_path / "t.datasource").write_text("SCHEMA >\n    `v` DateTime64(3) `json:$.v`\n")
        with LocalServer(datasources=tmp_path) as local:
            post(local, "t", ndjson({"v": "2024-01-01T01:00:00.5+01:00"}))
            assert sql(local, "select v from t")["data"] == [{"v": "2024-01-01 00:00:00.500"}]


class TestSQL:
    @pytest.fixture
    def filled(self, local: LocalServer) -> LocalServer:
        rows = [
            {
                "timestamp": f"2024-01-01 00:00:0{i}",
                "href": f"/p{i % 3}",
                "event": "click" if i % 2 else "view",
                "n": i,
            }
            for i in range(6)
        ]
        post(local, "simple_events", ndjson(*rows))
        return local

    def test_common_clickhouse_spellings(self, filled: LocalServer) -> None:
        assert sql(filled, "select count() from simple_events")["data"] == [{"count()": 6}]
        assert len(sql(filled, "select * from simple_events limit 2")["data"]) == 2
        assert sql(filled, "select count() c from simple_events where event = 'click'")["data"] == [
            {"c": 3}
        ]
        grouped = sql(
            filled, "select event, count() c from simple_events group by event order by event"
        )
        assert grouped["data"] == [{"event": "click", "c": 3}, {"event": "view", "c": 3}]
        assert sql(filled, "select uniq(href) u from simple_events")["data"] == [{"u": 3}]
        top = sql(filled, "select n from simple_events order by n desc limit 1")
        assert top["data"] == [{"n": 5}]

    def test_tb_sql_shape_with_format_json(self, filled: LocalServer) -> None:
        response = urllib3.request(
            "GET",
            f"{filled.url}/v0/sql",
            fields={
                "q": "SELECT * FROM (select event, n from simple_events) LIMIT 100 FORMAT JSON"
            },
            headers={"Authorization": f"Bearer {filled.token}"},
        )
        body = orjson.loads(response.data)
        assert set(body) == {"meta", "data", "rows", "statistics"}
        assert body["meta"] == [{"name": "event", "type": "String"}, {"name": "n", "type": "Int64"}]
        assert body["rows"] == 6
        assert set(body["statistics"]) == {"elapsed", "rows_read", "bytes_read"}

    @pytest.mark.parametrize(
        "statement",
        [
            "insert into simple_events (event) values ('x')",
            "delete from simple_events",
            "drop table simple_events",
            "create table t (a int)",
            "pragma writable_schema = 1",
            "attach database ':memory:' as other",
            "select 1; drop table simple_events",
            "select * from _tb_meta",
            "select 1 FORMAT CSV",
        ],
    )
    def test_writes_and_internals_are_refused(self, filled: LocalServer, statement: str) -> None:
        response = urllib3.request(
            "POST",
            f"{filled.url}/v0/sql",
            body=statement.encode(),
            headers={"Authorization": f"Bearer {filled.token}"},
        )
        assert response.status == 400
        assert sql(filled, "select count() from simple_events")["data"] == [{"count()": 6}]


class TestPersistenceAndCLI:
    def test_data_and_token_survive_a_restart(self, tmp_path: Path) -> None:
        path = tmp_path / "local.sqlite3"
        with LocalServer(path) as first:
            token = first.token
            post(first, "kept", ndjson(EVENT))
        with LocalServer(path) as second:
            assert second.token == token
            assert sql(second, "select count() from kept")["data"] == [{"count()": 1}]
            post(second, "kept", ndjson(EVENT))
            assert sql(second, "select count() from kept")["data"] == [{"count()": 2}]

    def test_sql_command_formats(
        self, local: LocalServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        post(local, "simple_events", ndjson(EVENT))
        args = [
            "sql",
            "select event, count() c from simple_events group by event",
            "--host",
            local.url,
        ]
        assert cli_main([*args, "--token", local.token]) == 0
        table = capsys.readouterr().out
        assert "| event     | c |" in table and "| page_view | 1 |" in table
        assert cli_main([*args, "--format", "json"]) == 0  # token from GET /tokens
        assert capsys.readouterr().out == '{"event":"page_view","c":1}\n'
        assert cli_main([*args, "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines() == ["event,c", "page_view,1"]

    def test_console_script_starts_fast_and_serves(self, tmp_path: Path) -> None:
        started = time.monotonic()
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tinybird_export.local",
                "--port",
                "0",
                "--data",
                str(tmp_path / "d.sqlite3"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stdout is not None
                first = proc.stdout.readline()
                assert "serving the Events API at http://127.0.0.1:" in first
                startup = time.monotonic() - started
                host = proc.stdout.readline().strip().partition("=")[2]
                token = proc.stdout.readline().strip().partition("=")[2]
                assert token.startswith("p.local.")
                response = urllib3.request(
                    "POST",
                    f"{host}/v0/events?name=e",
                    body=ndjson(EVENT),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status == 202
                assert startup < 5  # includes interpreter start-up on a loaded machine
            finally:
                proc.terminate()
