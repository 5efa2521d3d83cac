"""The embedded local server (tinybird-export local) through HTTP, on both engines: the
Events API, schemas, quarantine, guessing and persistence.
"""

from __future__ import annotations

import gzip
import logging
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.local_helpers import ENGINES, EVENT, ndjson, needs_clickhouse, post, sql
from tinybird_export import TinybirdEvents, TinybirdHandler
from tinybird_export.local import LocalServer


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def local(engine: str) -> Iterator[LocalServer]:
    with LocalServer(engine=engine) as server:
        yield server


class TestEventsEndpoint:
    def test_accepts_ndjson_202_and_wait_200(self, local: LocalServer) -> None:
        """NDJSON is accepted with 202, and with wait=true with 200."""
        assert post(local, "simple_events", ndjson(EVENT, EVENT)) == (
            202,
            {"successful_rows": 2, "quarantined_rows": 0},
        )
        status, body = post(local, "simple_events", ndjson(EVENT), wait="true")
        assert (status, body["successful_rows"]) == (200, 1)
        assert sql(local, "select count() from simple_events")["data"] == [{"count()": 3}]

    def test_name_is_required(self, local: LocalServer) -> None:
        """A request without a data source name is a 400 that says so."""
        status, body = post(local, None, ndjson(EVENT))
        assert status == 400 and "name" in body["error"]

    def test_token_is_checked(self, local: LocalServer) -> None:
        """A wrong token is a 403, and a token in the URL is accepted as Tinybird does."""
        assert post(local, "x", ndjson(EVENT), token="wrong")[0] == 403
        response = urllib3.request(
            "POST", f"{local.url}/v0/events?name=x&token={local.token}", body=ndjson(EVENT)
        )
        assert response.status == 202

    def test_gzip_body(self, local: LocalServer) -> None:
        """A gzip-encoded body is accepted."""
        assert post(local, "zipped", gzip.compress(ndjson(EVENT)))[0] == 202

    def test_request_cap_is_413(self, engine: str) -> None:
        """A body over the request cap is a 413."""
        with LocalServer(max_body_bytes=1000, engine=engine) as small:
            assert post(small, "big", ndjson(*[EVENT] * 50))[0] == 413

    @pytest.mark.parametrize("name", ['x"; drop table y; --', "1abc", "a-b", "a.b", "x`y"])
    def test_invalid_names_are_refused_before_sql(self, local: LocalServer, name: str) -> None:
        """An invalid data source name is refused before any SQL."""
        status, body = post(local, urllib.parse.quote(name), ndjson(EVENT))
        assert status == 400 and "invalid data source name" in body["error"]

    @pytest.mark.parametrize("bad", [b"{not json}", b'{"a":1},{"b":2}', b"[1]", b'{"a":1}{"b":2}'])
    def test_malformed_ndjson_names_the_line(self, local: LocalServer, bad: bytes) -> None:
        """Malformed NDJSON is a 400 that names the line."""
        status, body = post(local, "bad", ndjson(EVENT) + bad + b"\n" + ndjson(EVENT))
        assert status == 400 and "line 2" in body["error"]

    def test_tokens_endpoint_needs_no_auth(self, local: LocalServer) -> None:
        """/tokens answers the admin token, as Tinybird Local does."""
        import orjson

        response = urllib3.request("GET", f"{local.url}/tokens")
        assert orjson.loads(response.data)["workspace_admin_token"] == local.token
        assert local.token not in repr(local)


class TestGuessing:
    """A guessed schema accepts every row it was guessed from."""

    def test_types_from_every_sampled_value(self, local: LocalServer) -> None:
        """A new data source's column types are guessed from every sampled value."""
        rows = [
            {
                "ts": "2024-01-01 00:00:00.123",
                "day": "2024-01-01 00:00:00",
                "date": "2024-01-01",
                "s": "text",
                "i": 1,
                "f": 1.5,
                "b": True,
                "arr": [1, 2],
                "mixed_arr": [1, 2.5],
                "obj": {"k": 1, "deep": {"x": "y"}},
                "big": 2**64 - 1,
                "num_or_text": 1,
                "sometimes": "x",
            },
            {
                "ts": "2024-01-01T00:00:01Z",
                "day": "2024-01-02 00:00:00",
                "date": "2024-01-02",
                "s": "t",
                "i": 2,
                "f": 2,
                "b": False,
                "arr": [],
                "mixed_arr": [3],
                "obj": {"k": 2},
                "big": 0,
                "num_or_text": "one",
            },
        ]
        assert post(local, "guessed", ndjson(*rows))[1] == {
            "successful_rows": 2,
            "quarantined_rows": 0,
        }
        meta = {c["name"]: c["type"] for c in sql(local, "select * from guessed")["meta"]}
        assert meta == {
            "ts": "DateTime64(6)",
            "day": "DateTime",
            "date": "Date",
            "s": "String",
            "i": "Int64",
            "f": "Float64",
            "b": "Bool",
            "arr": "Array(Int64)",
            "mixed_arr": "Array(Float64)",
            "obj_k": "Int64",
            "obj_deep_x": "Nullable(String)",
            "big": "UInt64",
            "num_or_text": "String",
            "sometimes": "Nullable(String)",
        }
        rows_back = sql(local, "select ts, big, obj_k, num_or_text from guessed order by i")
        assert rows_back["data"] == [
            {"ts": "2024-01-01 00:00:00.123000", "big": 2**64 - 1, "obj_k": 1, "num_or_text": "1"},
            {"ts": "2024-01-01 00:00:01.000000", "big": 0, "obj_k": 2, "num_or_text": "one"},
        ]

    def test_issue_examples_are_kept(self, local: LocalServer) -> None:
        """Nested, mixed, huge and null values of a first row are kept."""
        for name, row in [
            ("nested", {"obj": {"k": 1}}),
            ("mixed", {"arr": [1, 2.5]}),
            ("uint64", {"n": 18446744073709551615}),
            ("negative_and_huge", {"n": [-1, 2**64]}),
            ("array_of_objects", {"items": [{"a": 1}, {"b": "x"}]}),
            ("nulls", {"a": None, "arr": [None, 1]}),
            ("empty_object", {"e": {}, "x": 1}),
        ]:
            assert post(local, name, ndjson(row))[1] == {
                "successful_rows": 1,
                "quarantined_rows": 0,
            }

    def test_rows_without_fields_get_a_clear_answer(self, local: LocalServer) -> None:
        """A row without fields gets a 400 that says so."""
        status, body = post(local, "nothing", ndjson({}))
        assert status == 400 and "without fields" in body["error"]

    def test_keys_missing_from_some_rows_are_never_required(self, local: LocalServer) -> None:
        """Log lines whose extras vary, as tinybird-python-sdk's handler sends them."""
        lines = [
            {"message": "a", "extra": {"cart_id": 1}, "exc_info": None},
            {"message": "b", "extra": {"user": "u"}},
            {"message": "c", "args": [1, "x"], "extra": {}},
        ]
        assert post(local, "tb_logs", ndjson(*lines))[1]["quarantined_rows"] == 0
        later = [{"message": "d"}, {"message": "e", "extra": {"cart_id": "not a number"}}]
        _, body = post(local, "tb_logs", ndjson(*later))
        assert body["successful_rows"] == 1  # a key seen later with another kind: quarantine

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.lists(
            st.dictionaries(
                st.sampled_from(["a", "b", "c", "d"]),
                st.recursive(
                    st.none()
                    | st.booleans()
                    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                    | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=5)
                    | st.sampled_from(["2024-01-01 00:00:00", "2024-01-01T00:00:00.5Z"]),
                    lambda inner: (
                        st.lists(inner, max_size=3)
                        | st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2)
                    ),
                    max_leaves=6,
                ),
                min_size=1,
            ),
            min_size=1,
            max_size=5,
        )
    )
    def test_any_sample_is_accepted_whole(self, local: LocalServer, rows: list[Any]) -> None:
        """Any generated first sample is accepted whole."""
        name = f"prop_{abs(hash(repr(rows))) % 10**12}"
        status, body = post(local, name, ndjson(*rows))
        assert status == 202 and body == {"successful_rows": len(rows), "quarantined_rows": 0}


class TestSchemas:
    def test_wrong_type_and_missing_column_go_to_quarantine(self, local: LocalServer) -> None:
        """Rows of the wrong type or missing a column go to quarantine."""
        post(local, "q", ndjson({"n": 1, "s": "a"}))
        status, body = post(
            local, "q", ndjson({"n": "x", "s": "b"}, {"s": "c"}, {"n": 3, "s": "d"})
        )
        assert (status, body) == (202, {"successful_rows": 1, "quarantined_rows": 2})
        errors = sql(local, "select n, c__error_column, c__error, row from q_quarantine")["data"]
        assert [e["c__error_column"] for e in errors] in (['["n"]', '["n"]'], [["n"], ["n"]])
        assert "expected an integer" in str(errors[0]["c__error"])
        assert "missing" in str(errors[1]["c__error"])
        assert errors[0]["n"] == "x" and '"s":"b"' in errors[0]["row"]

    def test_new_fields_in_later_rows_are_ignored(self, local: LocalServer) -> None:
        """Fields a data source does not have are ignored in later rows."""
        post(local, "fixed", ndjson({"a": "1"}))
        assert post(local, "fixed", ndjson({"a": "2", "b": "new"}))[1]["successful_rows"] == 1
        assert [c["name"] for c in sql(local, "select * from fixed")["meta"]] == ["a"]

    def test_package_datasources_take_every_handler_event(self, engine: str) -> None:
        """Declared by default: a fresh server quarantines nothing the package sends."""
        with LocalServer(strict=True, engine=engine) as local:
            handler = TinybirdHandler(
                datasource="app_logs", host=local.url, token=local.token, wait=True
            )
            events = TinybirdEvents(datasource="simple_events", host=local.url, token=local.token)
            log = logging.getLogger(f"shipped.{engine}")
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
                log.removeHandler(handler)

    def test_strict_mode_refuses_unknown_data_sources(self, engine: str) -> None:
        """Strict mode refuses undeclared data sources with a 404."""
        with LocalServer(strict=True, engine=engine) as local:
            status, body = post(local, "undeclared", ndjson(EVENT))
            assert status == 404 and "not found" in body["error"]
            assert post(local, "simple_events", ndjson(EVENT))[0] == 202

    @pytest.mark.parametrize(
        ("type_name", "good", "bad"),
        [
            ("UInt8", [0, 255, "7"], [256, -1, "x", 1.5, True]),
            ("Int32", [-5, 2**31 - 1], [2**31, "1.0"]),
            ("UInt64", [0, 2**64 - 1, "18446744073709551615"], [2**64, -1]),
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
            ("LowCardinality(String)", ["a", 1], [None]),
            ("Array(UInt8)", [[], [1, 2]], [[300], "x"]),
            ("Map(String, UInt8)", [{}, {"a": 1}], [{"a": "x"}, []]),
            # ClickHouse reads a number or an object into String as its JSON text.
            ("String", ["", "x", 1, {"a": 1}], [None]),
        ],
    )
    def test_column_type_checks(
        self, engine: str, tmp_path: Path, type_name: str, good: list[Any], bad: list[Any]
    ) -> None:
        """Each column type takes its values and quarantines the others."""
        (tmp_path / "typed.datasource").write_text(f"SCHEMA >\n    `v` {type_name} `json:$.v`\n")
        with LocalServer(datasources=tmp_path, engine=engine) as local:
            body = post(local, "typed", ndjson(*({"v": v} for v in good + bad)))[1]
            assert body == {"successful_rows": len(good), "quarantined_rows": len(bad)}
            assert sql(local, "select count() c from typed")["data"] == [{"c": len(good)}]

    def test_defaults_and_nullable(self, engine: str, tmp_path: Path) -> None:
        """DEFAULT and Nullable columns fill in what a row lacks."""
        (tmp_path / "d.datasource").write_text(
            "SCHEMA >\n"
            "    `a` String `json:$.a`,\n"
            "    `b` String `json:$.b` DEFAULT 'none',\n"
            "    `n` Nullable(Int32) `json:$.n`,\n"
            "    `tags` Array(String) `json:$.tags[:]` DEFAULT [],\n"
            "    `m` Map(String, String) `json:$.m` DEFAULT map(),\n"
            "    `deep` String `json:$.x.y` DEFAULT ''\n"
        )
        with LocalServer(datasources=tmp_path, engine=engine) as local:
            rows = [
                {"a": "1"},
                {"a": "2", "b": "x", "n": 5, "tags": ["t"], "m": {"k": "v"}, "x": {"y": "z"}},
            ]
            assert post(local, "d", ndjson(*rows))[1]["quarantined_rows"] == 0
            data = sql(local, "select b, n, tags, m, deep from d order by a")["data"]
            assert data == [
                {"b": "none", "n": None, "tags": [], "m": {}, "deep": ""},
                {"b": "x", "n": 5, "tags": ["t"], "m": {"k": "v"}, "deep": "z"},
            ]

    def test_datetime_values_are_stored_in_utc(self, engine: str, tmp_path: Path) -> None:
        """DateTime values with an offset are stored in UTC."""
        (tmp_path / "t.datasource").write_text("SCHEMA >\n    `v` DateTime64(3) `json:$.v`\n")
        with LocalServer(datasources=tmp_path, engine=engine) as local:
            post(local, "t", ndjson({"v": "2024-01-01T01:00:00.5+01:00"}))
            assert sql(local, "select v from t")["data"] == [{"v": "2024-01-01 00:00:00.500"}]


class TestPersistence:
    def test_data_and_token_survive_a_restart(self, engine: str, tmp_path: Path) -> None:
        """Data and token survive a restart of the server."""
        path = tmp_path / ("local.sqlite3" if engine == "sqlite" else "clickhouse")
        with LocalServer(path, engine=engine) as first:
            token = first.token
            post(first, "kept", ndjson(EVENT))
        with LocalServer(path, engine=engine) as second:
            assert second.token == token
            assert sql(second, "select count() from kept")["data"] == [{"count()": 1}]
            post(second, "kept", ndjson(EVENT))
            assert sql(second, "select count() from kept")["data"] == [{"count()": 2}]
        if engine == "clickhouse":
            meta = path / "tinybird-export.json"
            assert meta.stat().st_mode & 0o077 == 0 or sys.platform == "win32"


@needs_clickhouse
@pytest.mark.parametrize("wait", ["true", "false"])
def test_a_row_clickhouse_refuses_is_quarantined_alone(tmp_path: Path, wait: str) -> None:
    """A type the local checks do not know (Enum8) is ClickHouse's to check: the batch is
    halved until the refused row is alone, whether inserted at once or deferred (wait=false).
    """
    (tmp_path / "e.datasource").write_text(
        "SCHEMA >\n    `v` Enum8('a' = 1, 'b' = 2) `json:$.v`,\n    `n` Int32 `json:$.n`\n"
    )
    with LocalServer(datasources=tmp_path, engine="clickhouse") as local:
        rows = [{"v": "a", "n": i} for i in range(10)] + [{"v": "zzz", "n": 99}]
        status, body = post(local, "e", ndjson(*rows), wait=wait)
        if wait == "true":
            assert (status, body) == (200, {"successful_rows": 10, "quarantined_rows": 1})
        assert sql(local, "select count() c from e")["data"] == [{"c": 10}]
        quarantined = sql(local, "select n, c__error from e_quarantine")["data"]
        assert [q["n"] for q in quarantined] == ["99"] and "zzz" in str(quarantined[0])


@needs_clickhouse
def test_engine_settings_make_real_clickhouse_tables(tmp_path: Path) -> None:
    """ENGINE, ENGINE_VER, ENGINE_SORTING_KEY and ENGINE_SETTINGS behave as in Tinybird."""
    (tmp_path / "users.datasource").write_text(
        "SCHEMA >\n"
        "    `id` UInt32 `json:$.id`,\n"
        "    `name` String `json:$.name`,\n"
        "    `v` UInt64 `json:$.v`\n\n"
        'ENGINE "ReplacingMergeTree"\n'
        'ENGINE_SORTING_KEY "id"\n'
        'ENGINE_VER "v"\n'
        'ENGINE_SETTINGS "index_granularity = 1024"\n'
    )
    with LocalServer(datasources=tmp_path, engine="clickhouse") as local:
        rows = [{"id": 1, "name": "old", "v": 1}, {"id": 1, "name": "new", "v": 2}]
        assert post(local, "users", ndjson(*rows), wait="true")[1]["quarantined_rows"] == 0
        assert sql(local, "select name from users FINAL")["data"] == [{"name": "new"}]
        engine = sql(
            local,
            "select engine, sorting_key from system.tables "
            "where database = currentDatabase() and name = 'users'",
        )
        assert engine["data"] == [{"engine": "ReplacingMergeTree", "sorting_key": "(id)"}]


@pytest.mark.parametrize("engine", ENGINES)
def test_wide_integers_sort_as_numbers(engine: str, tmp_path: Path) -> None:
    """UInt64 values up to 2**64 - 1 are stored and sorted as numbers."""
    (tmp_path / "n.datasource").write_text("SCHEMA >\n    `d` UInt64 `json:$.d`\n")
    with LocalServer(datasources=tmp_path, engine=engine) as local:
        post(local, "n", ndjson({"d": 1200000}, {"d": 950000}, {"d": 2**64 - 1}))
        assert sql(local, "select d from n order by d")["data"] == [
            {"d": 950000},
            {"d": 1200000},
            {"d": 2**64 - 1},
        ]
