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
