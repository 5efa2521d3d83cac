"""``/v0/sql`` of the local server: ClickHouse's own answers on the ClickHouse engine, the
SQLite fallback's subset, and the read-only rule on both.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.local_helpers import ENGINES, ndjson, needs_clickhouse, post, raw_sql, sql
from tinybird_export.local import LocalServer

ROWS = [
    {
        "timestamp": f"2024-01-0{1 + i % 2} 00:00:0{i}",
        "event": "click" if i % 2 else "view",
        "level": "INFO",
        "logger": "shop",
        "event_id": str(i),
        "href": f"/p{i % 3}",
        "attributes": {"k": str(i), "cart": "c1" if i < 3 else "c2"},
    }
    for i in range(6)
]


def _filled(engine: str) -> Iterator[LocalServer]:
    with LocalServer(engine=engine) as server:
        assert post(server, "app_logs", ndjson(*ROWS))[1]["quarantined_rows"] == 0
        yield server


@pytest.fixture(params=ENGINES)
def filled(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    yield from _filled(str(request.param))


@pytest.fixture
def clickhouse() -> Iterator[LocalServer]:
    yield from _filled("clickhouse")


class TestBothEngines:
    def test_common_queries(self, filled: LocalServer) -> None:
        """Counting, grouping and limits answer as ClickHouse would."""
        assert sql(filled, "select count() from app_logs")["data"] == [{"count()": 6}]
        assert len(sql(filled, "select * from app_logs limit 2")["data"]) == 2
        grouped = sql(filled, "select event, count() c from app_logs group by event order by event")
        assert grouped["data"] == [{"event": "click", "c": 3}, {"event": "view", "c": 3}]
        assert sql(filled, "select uniq(href) u from app_logs")["data"] == [{"u": 3}]

    def test_tb_sql_shape(self, filled: LocalServer) -> None:
        """The answer has tb sql's shape: meta, data, rows, statistics."""
        query = "SELECT * FROM (select event, line from app_logs) LIMIT 100 FORMAT JSON"
        body = orjson.loads(raw_sql(filled, query).data)
        assert {"meta", "data", "rows", "statistics"} <= set(body)
        assert body["meta"] == [
            {"name": "event", "type": "String"},
            {"name": "line", "type": "UInt32"},
        ]
        assert body["rows"] == 6
        assert set(body["statistics"]) == {"elapsed", "rows_read", "bytes_read"}

    @pytest.mark.parametrize(
        ("fmt", "content_type", "first_line"),
        [
            ("CSV", "text/csv", '"click",3'),
            ("CSVWithNames", "text/csv", '"event","c"'),
            ("TSV", "text/plain", "click\t3"),
            ("TSVWithNames", "text/plain", "event\tc"),
            ("JSONEachRow", "application/x-ndjson", '{"event":"click","c":3}'),
        ],
    )
    def test_formats(
        self, filled: LocalServer, fmt: str, content_type: str, first_line: str
    ) -> None:
        """Each FORMAT answers with its content type."""
        query = f"select event, count() c from app_logs group by event order by event FORMAT {fmt}"
        response = raw_sql(filled, query)
        assert response.status == 200 and response.headers["Content-Type"] == content_type
        assert response.data.decode().splitlines()[0] == first_line

    @pytest.mark.parametrize(
        "statement",
        [
            "insert into app_logs (event) values ('x')",
            "delete from app_logs where 1",
            "drop table app_logs",
            "create table t (a int)",
            "select 1; drop table app_logs",
        ],
    )
    def test_writes_are_refused_as_read_only(self, filled: LocalServer, statement: str) -> None:
        """Writes through the SQL endpoint are refused as read-only."""
        response = raw_sql(filled, statement, method="POST")
        assert response.status in (400, 403), response.data
        if response.status == 403:
            assert "read-only" in orjson.loads(response.data)["error"]
        assert sql(filled, "select count() from app_logs")["data"] == [{"count()": 6}]

    def test_unknown_table_lists_the_data_sources(self, filled: LocalServer) -> None:
        """An unknown table's error lists the data sources."""
        response = raw_sql(filled, "select * from nope FORMAT JSON")
        assert response.status == 400
        error = orjson.loads(response.data)["error"]
        assert "nope" in error and "app_logs" in error and "simple_events" in error
        assert "_quarantine" not in error

    def test_curl_form_body_without_q(self, filled: LocalServer) -> None:
        """The docs' ``curl --data "SELECT ... FORMAT JSON" /v0/sql``."""
        import urllib3

        response = urllib3.request(
            "POST",
            f"{filled.url}/v0/sql",
            body=b"SELECT count() c FROM app_logs FORMAT JSON",
            headers={
                "Authorization": f"Bearer {filled.token}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert orjson.loads(response.data)["data"] == [{"c": 6}]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("select x'ff41' b", "\ufffdA"),  # a blob: text, as a ClickHouse String
        ("select zeroblob(2) b", "\x00\x00"),
        ("select 'not json' as attributes from app_logs limit 1", "not json"),
        ("select attributes['k'] as attributes from app_logs order by event_id limit 1", "0"),
    ],
)
def test_sqlite_answers_any_value_it_returns(query: str, expected: str) -> None:
    """A blob, or text under a Map or Array column's name, is answered as text: the answer
    could not be written, and the server dropped the connection without one.
    """
    with LocalServer(engine="sqlite") as local:
        post(local, "app_logs", ndjson(*ROWS), wait="true")
        for fmt in ("JSON", "CSV", "JSONEachRow"):
            response = raw_sql(local, f"{query} FORMAT {fmt}", method="POST")
            assert response.status == 200, response.data
        assert list(sql(local, query)["data"][0].values()) == [expected]


def test_sqlite_refuses_its_catalog_and_pragmas() -> None:
    """SQLite's catalog and pragmas are refused."""
    with LocalServer(engine="sqlite") as local:
        for statement in [
            "select * from _tb_meta",
            "pragma writable_schema = 1",
            "attach database ':memory:' as o",
        ]:
            response = raw_sql(local, statement)
            assert response.status in (400, 403) and local.token.encode() not in response.data


@needs_clickhouse
class TestClickHouse:
    def test_tinybird_queries_run_as_clickhouse(self, clickhouse: LocalServer) -> None:
        """ClickHouse functions Tinybird queries use run on the ClickHouse engine."""
        query = (
            "select toStartOfDay(timestamp) day, countIf(event = 'click') clicks, "
            "quantile(0.5)(line) p50, uniqExact(attributes['cart']) carts, "
            "count(DISTINCT event) events, arrayJoin([1]) one "
            "from app_logs group by day order by day"
        )
        answer = sql(clickhouse, query)
        assert answer["data"] == [
            {
                "day": "2024-01-01 00:00:00",
                "clicks": 0,
                "p50": 0,
                "carts": 2,
                "events": 1,
                "one": 1,
            },
            {
                "day": "2024-01-02 00:00:00",
                "clicks": 3,
                "p50": 0,
                "carts": 2,
                "events": 1,
                "one": 1,
            },
        ]
        types = {c["name"]: c["type"] for c in answer["meta"]}
        assert types["day"] == "DateTime" and types["clicks"] == "UInt64"
        assert types["p50"] == "Float64" and types["events"] == "UInt64"

    def test_column_names_are_clickhouses(self, clickhouse: LocalServer) -> None:
        """Column names in answers are ClickHouse's own."""
        answer = sql(
            clickhouse,
            "select count(), count(DISTINCT event), toDate(timestamp) from app_logs group by 3 order by 3 limit 1",
        )
        assert [c["name"] for c in answer["meta"]] == [
            "count()",
            "countDistinct(event)",
            "toDate(timestamp)",
        ]

    def test_statistics_are_clickhouses(self, clickhouse: LocalServer) -> None:
        """statistics are ClickHouse's rows and bytes read."""
        body = orjson.loads(raw_sql(clickhouse, "select count() from app_logs FORMAT JSON").data)
        assert body["statistics"]["rows_read"] >= 1 and body["statistics"]["bytes_read"] > 0

    def test_parquet(self, clickhouse: LocalServer) -> None:
        """FORMAT Parquet answers a Parquet file."""
        response = raw_sql(
            clickhouse, "select event, line from app_logs order by event_id FORMAT Parquet"
        )
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.data[:4] == b"PAR1"
        pyarrow = pytest.importorskip("pyarrow.parquet")
        table = pyarrow.read_table(io.BytesIO(response.data))
        assert table.column("event").to_pylist()[:2] == ["view", "click"]

    def test_real_types_defaults_lowcardinality(self, clickhouse: LocalServer) -> None:
        """Tables have the schema's real types, defaults and LowCardinality."""
        answer = sql(
            clickhouse,
            "select toTypeName(timestamp) t, toTypeName(level) l, toTypeName(attributes) m, "
            "any(host) h, any(line) n from app_logs group by t, l, m",
        )
        assert answer["data"] == [
            {
                "t": "DateTime64(6)",
                "l": "LowCardinality(String)",
                "m": "Map(String, String)",
                "h": "",
                "n": 0,
            }
        ]

    @pytest.mark.parametrize(
        "statement",
        [
            "SYSTEM DROP DNS CACHE",
            "SYSTEM SHUTDOWN",
            "KILL QUERY WHERE 1",
            "OPTIMIZE TABLE app_logs FINAL",
            "TRUNCATE TABLE app_logs",
            "ALTER TABLE app_logs DELETE WHERE 1",
            "SET readonly = 0",
            "select 1 settings readonly = 0",
            "select * from file('/etc/hostname', 'LineAsString')",
            "select file('/etc/hostname')",
            "select * from url('http://127.0.0.1:9/x', 'LineAsString')",
            "select * from s3('http://127.0.0.1:9/bucket/x.csv', 'CSV', 'a String')",
            "select * from executable('ls', 'TSV', 'a String')",
            "select * from python('os')",
            "select * from remote('127.0.0.1:9', system.one)",
            "select * from mysql('127.0.0.1:9', 'd', 't', 'u', 'p')",
            "select * from (select * from file('tinybird-export.json', 'RawBLOB'))",
            "insert into function file('x.csv') select 1",
            "create temporary table t (a Int8)",
        ],
    )
    def test_nothing_writes_or_reads_outside(self, clickhouse: LocalServer, statement: str) -> None:
        """No statement reads or writes outside the server's tables."""
        response = raw_sql(clickhouse, statement)
        assert response.status in (400, 403), response.data
        assert clickhouse.token.encode() not in response.data
        assert sql(clickhouse, "select count() from app_logs")["data"] == [{"count()": 6}]

    def test_generators_and_system_tables_are_allowed(self, clickhouse: LocalServer) -> None:
        """Table functions like numbers() and system tables are allowed."""
        assert sql(clickhouse, "select sum(number) s from numbers(10)")["data"] == [{"s": 45}]
        tables = sql(
            clickhouse,
            "select name from system.tables where database = currentDatabase() order by name",
        )
        assert "app_logs" in [row["name"] for row in tables["data"]]
        assert raw_sql(clickhouse, "DESCRIBE TABLE app_logs").status == 200
        assert raw_sql(clickhouse, "SHOW TABLES").status == 200

    def test_the_token_file_cannot_be_read(self, tmp_path: Path) -> None:
        """The token file cannot be read through SQL."""
        with LocalServer(tmp_path / "ch", engine="clickhouse") as local:
            for statement in [
                f"select * from file('{tmp_path}/ch/tinybird-export.json', 'RawBLOB')",
                f"select file('{tmp_path}/ch/tinybird-export.json')",
            ]:
                response = raw_sql(local, statement)
                assert response.status == 403 and local.token.encode() not in response.data


# Each ClickHouse function the SQLite engine implements, over the same rows on both engines:
# the same answer (ClickHouse's is the reference). ``line`` is the number 0..5.
SAME_ON_BOTH = [
    "select countIf(level = 'INFO') c, countIf(event = 'click') k from app_logs",
    "select countIf(event = 'nothing') c, sumIf(line, event = 'nothing') s from app_logs",
    "select sumIf(line, event = 'click') s, avgIf(line, event = 'view') a from app_logs",
    "select minIf(line, event = 'click') lo, maxIf(line, event = 'view') hi from app_logs",
    "select uniqIf(href, event = 'click') u, uniqExactIf(href, line > 2) x from app_logs",
    "select quantile(0.5)(line) q, quantile(0.9)(line) q9, median(line) m from app_logs",
    "select quantileExact(0.5)(line) q, quantileExact(0.99)(line) q99 from app_logs",
    "select argMax(href, line) a, argMin(event, line) b from app_logs",
    "select event, any(event) a, anyLast(level) l from app_logs group by event order by event",
    "select toStartOfFiveMinutes(timestamp) t, toStartOfFifteenMinutes(timestamp) f,"
    " toStartOfDay(timestamp) d, count() c from app_logs group by t, f, d order by t",
    "select toStartOfMonth(timestamp) m, count() c from app_logs group by m",
    "select if(line > 2, 'high', 'low') h, count() c from app_logs group by h order by h",
    "select toString(line) s, toFloat64(attributes['k']) fl, toInt64(attributes['k']) i"
    " from app_logs order by line limit 2",
    "select empty(exception) e, notEmpty(href) n, startsWith(href, '/p1') s,"
    " endsWith(href, '2') x from app_logs order by line limit 3",
]


@needs_clickhouse
@pytest.mark.parametrize("query", SAME_ON_BOTH)
def test_sqlite_answers_clickhouses_common_functions_as_clickhouse(query: str) -> None:
    """Each ClickHouse function the SQLite engine implements answers what ClickHouse answers."""
    answers = []
    rows = [{**row, "line": number} for number, row in enumerate(ROWS)]
    for engine in ("sqlite", "clickhouse"):
        with LocalServer(engine=engine) as server:
            assert post(server, "app_logs", ndjson(*rows))[1]["quarantined_rows"] == 0
            answers.append(sql(server, query)["data"])
    sqlite, clickhouse = answers
    assert _comparable(sqlite) == _comparable(clickhouse)


DATES = {"t", "f", "d", "m"}


def _comparable(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Booleans as 0/1 and date-times as text, as both engines' JSON spell them."""
    return [
        {k: int(v) if isinstance(v, bool) else str(v) if k in DATES else v for k, v in r.items()}
        for r in rows
    ]


class TestSQLiteSaysItsEngine:
    def test_a_clickhouse_only_function_names_the_engine_and_the_fix(self) -> None:
        """On SQLite, an unknown function, ClickHouse's syntax or an array names the engine and the fix."""
        with LocalServer(engine="sqlite") as server:
            for query in (
                "select arrayJoin(tags) x from app_logs",  # no such function
                "select quantiles(0.5)(line) from app_logs",  # syntax error
                "select [1, 2] x",  # a quoted name in SQLite: no such column
            ):
                response = raw_sql(server, query)
                error = orjson.loads(response.data)["error"]
                assert response.status == 400
                assert "SQLite engine" in error and "pip install -e '.[local]'" in error, error
                if "column" not in error:
                    assert "countIf" in error  # what it does answer

    @pytest.mark.parametrize("engine", ENGINES)
    def test_show_tables_describe_and_exists(self, engine: str) -> None:
        """SHOW TABLES, DESCRIBE and EXISTS answer in ClickHouse's columns on both engines."""
        with LocalServer(engine=engine) as server:
            tables = orjson.loads(raw_sql(server, "show tables FORMAT JSON").data)
            assert {"name": "app_logs"} in tables["data"]
            assert all(not t["name"].endswith("_quarantine") for t in tables["data"])
            for statement in ("describe simple_events", "DESC TABLE simple_events"):
                described = orjson.loads(raw_sql(server, f"{statement} FORMAT JSON").data)
                assert [c["name"] for c in described["meta"]][:4] == [
                    "name",
                    "type",
                    "default_type",
                    "default_expression",
                ]
                session = next(r for r in described["data"] if r["name"] == "session_id")
                assert session["type"] == "String" and session["default_type"] == "DEFAULT"
                assert session["default_expression"] == "''"
            exists = orjson.loads(raw_sql(server, "exists app_logs FORMAT JSON").data)
            assert exists["data"] == [{"result": 1}]
            missing = raw_sql(server, "describe nothing_here FORMAT JSON")
            assert missing.status == 400 and b"app_logs" in missing.data
