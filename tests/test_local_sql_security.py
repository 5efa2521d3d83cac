"""``/v0/sql`` as an attacker uses it: writing files on the developer's machine, reading outside
the database, changing the bounds; and the queries Tinybird users write, which must still run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.local_helpers import EVENT, api, ndjson, needs_clickhouse, post, raw_sql, sql
from tinybird_export.local import LocalServer, _chcheck

# Every place and spelling of INTO OUTFILE that ClickHouse's parser takes ({f} is the target).
OUTFILE = [
    "SELECT 'echo pwned' INTO OUTFILE '{f}' APPEND FORMAT TSV",
    "select 1 into outfile '{f}'",
    "SeLeCt 1 InTo OuTfIlE '{f}' TRUNCATE",
    "select 1 /* c */ INTO /* c */ OUTFILE /* c */ '{f}'",
    "select 1 -- c\n INTO\n-- c\nOUTFILE\n'{f}'",
    "select 1 into outfile '{f}' and stdout",
    "select 1 into outfile '{f}' compression 'gzip' level 3",
    "select 1 into outfile $${f}$$",
    "(select 1) into outfile '{f}'",
    "select 1 union all select 2 into outfile '{f}'",
    "select 1 intersect select 1 into outfile '{f}'",
    "with 1 as a select a into outfile '{f}'",
    "select * from (select 1) into outfile '{f}' format CSV",
    "select count() from app_logs into outfile '{f}' format JSON settings max_threads = 1",
    "explain select 1 into outfile '{f}'",
    "explain ast select 1 into outfile '{f}'",
    "show tables into outfile '{f}'",
    "describe table app_logs into outfile '{f}'",
    "exists table app_logs into outfile '{f}'",
    "show create table app_logs into outfile '{f}'",
    "select 1; select 2 into outfile '{f}'",
    "select 1;\nselect 2 into outfile '{f}'",
    "select 2 into outfile '{f}';",
    "select 1 into outfile '{f}' format TSV;;",
]
OUTSIDE = [
    # table functions that read files, the network, processes, other tables
    "select * from filesystem('/')",
    "select * from merge(REGEXP('.*'), '.*')",
    "select * from merge('system', '^users$')",
    "select * from sqlite('/etc/passwd', 't')",
    "select * from loop(numbers(1)) limit 1",
    "select * from urlCluster('c', 'http://127.0.0.1:9/x')",
    "select * from fileCluster('c', '/etc/passwd')",
    "select * from iceberg('http://127.0.0.1:9/x')",
    "select * from dictionary('d')",
    "select * from input('a Int8')",
    "select * from python('os')",
    "select * from view(select * from file('/etc/passwd', 'LineAsString'))",
    "select * from numbers(1) join file('/etc/passwd', 'LineAsString') on 1",
    "describe file('/etc/passwd')",
    # functions that reach outside the query's tables
    "select dictGet('d', 'a', 1)",
    "select dictGetString('d', 'a', toUInt64(1))",
    "select joinGet('j', 'a', 1)",
    "select filesystemAvailable()",
    "select FILE('/etc/passwd')",
    "select `file`('/etc/passwd')",
    "select addressToSymbol(1)",
    # tables beyond this workspace's and the listed system ones
    "select * from system.processes",
    "select * from system.users",
    "select * from system.disks",
    "select * from system.settings",
    "select * from INFORMATION_SCHEMA.tables",
    "select * from `system`.`processes`",
    "select 1 in system.processes",
    "select * from numbers(1) where 1 in (select 1 from system.query_log)",
    # settings that would undo the bounds
    "select 1 settings readonly = 0",
    "select 1 settings max_execution_time = 0",
    "select * from (select 1 settings max_memory_usage = 0)",
    "SET max_execution_time = 0",
    # SHOW that is not SHOW TABLES, and what reads the server's state
    "show processlist",
    "show settings like '%'",
    "show merges",
    "show grants",
    "use system",
    # anything that is not a read
    "KILL QUERY WHERE 1",
    "SYSTEM SHUTDOWN",
    "select 1; drop table app_logs",
    "insert into app_logs (event) values ('x')",
    "insert into app_logs from infile '/etc/passwd' format LineAsString",
    "exit",
    "quit",
]
ROW = {
    "timestamp": "2024-01-01 00:00:00",
    "event": "click",
    "level": "INFO",
    "logger": "shop",
    "event_id": "1",
    "href": "/p",
}
# What Tinybird users write: it must keep running.
ALLOWED = [
    "select count() from app_logs",
    "SELECT * FROM (select event, line from app_logs) LIMIT 100 FORMAT JSON",
    "with x as (select event from app_logs) select count() from x",
    "select event, count() c from app_logs group by event order by c desc limit 1 by event",
    "select a.event from app_logs a join simple_events b on a.event = b.event",
    "select 1 union all select 2 union distinct select 3",
    "select number from numbers(3) array join [1, 2] as x",
    "select count() over (partition by event order by timestamp) from app_logs",
    "select * from generateRandom('a Int8', 1) limit 2",
    "select * from values('a Int8', 1, 2)",
    "select * from view(select 1)",
    "select * from (values (1), (2))",
    "select number from system.numbers limit 3",
    "select * from system.one",
    "select name from system.functions where name = 'count'",
    "select name, type from system.columns where table = 'app_logs'",
    "select formatReadableSize(sum(total_bytes)) from system.tables where database = currentDatabase()",
    "describe table app_logs",
    "describe (select 1)",
    "show tables",
    "show databases",
    "show columns from app_logs",
    "exists table app_logs",
    "show create table app_logs",
    "explain select 1",
    "explain ast select count() from app_logs",
    "select 'INTO OUTFILE', 'outfile' as outfile",
    "select 1 in (1, 2), 'x' in ('x')",
    "select event from app_logs where event in (select event from simple_events)",
    "select count() -- a comment\nfrom app_logs /* another */",
    "select count() from app_logs;",
    "select count() from app_logs FORMAT JSON;",
    "select 1 format TSV -- trailing comment",
    "select map('a', 1)['a'] as m",
]


@pytest.fixture(scope="module")
def clickhouse() -> Iterator[LocalServer]:
    with LocalServer(engine="clickhouse") as server:
        post(
            server,
            "app_logs",
            ndjson(ROW),
        )
        post(server, "simple_events", ndjson(EVENT))
        yield server


@needs_clickhouse
class TestClickHouse:
    @pytest.mark.parametrize("query", OUTFILE)
    def test_into_outfile_writes_nothing(
        self, clickhouse: LocalServer, query: str, tmp_path: Path
    ) -> None:
        """Every spelling and place of INTO OUTFILE is refused, and no file is written."""
        target = tmp_path / "out"
        response = raw_sql(clickhouse, query.format(f=target), method="POST")
        assert response.status in (400, 403), response.data
        assert not target.exists()
        assert not list(tmp_path.iterdir())

    def test_delete_condition_writes_nothing(self, clickhouse: LocalServer, tmp_path: Path) -> None:
        """A delete condition with INTO OUTFILE or a second statement is refused; none deleted."""
        target = tmp_path / "out"
        for condition in (f"1 into outfile '{target}'", f"1; select 1 into outfile '{target}'"):
            response = api(
                clickhouse,
                "POST",
                "/v0/datasources/simple_events/delete",
                fields={"delete_condition": condition},
            )
            assert response.status in (400, 403), response.data
        assert not target.exists()
        assert sql(clickhouse, "select count() n from simple_events")["data"] == [{"n": 1}]

    @pytest.mark.parametrize("query", OUTSIDE)
    def test_nothing_reaches_outside(self, clickhouse: LocalServer, query: str) -> None:
        """Functions that read files, the network, processes or other tables are refused."""
        response = raw_sql(clickhouse, query, method="POST")
        assert response.status in (400, 403), response.data
        assert b"root:" not in response.data and clickhouse.token.encode() not in response.data

    @pytest.mark.parametrize("query", ALLOWED)
    def test_tinybird_queries_still_run(self, clickhouse: LocalServer, query: str) -> None:
        """The queries Tinybird users write still run under the allowlist."""
        response = raw_sql(clickhouse, query, method="POST")
        assert response.status == 200, response.data

    def test_the_refusals_say_why(self, clickhouse: LocalServer, tmp_path: Path) -> None:
        """Each refusal names what was refused and, for system tables, what may be read instead."""

        def error(query: str) -> str:
            return str(orjson.loads(raw_sql(clickhouse, query, method="POST").data)["error"])

        assert "INTO OUTFILE would write a file" in error(f"select 1 into outfile '{tmp_path}/x'")
        assert "Multi-statements are not allowed" in error("select 1; select 2")
        assert "filesystem() is not allowed" in error("select * from filesystem('/')")
        assert "system.processes cannot be read" in error("select * from system.processes")
        assert "system.numbers" in error("select * from system.processes")
        assert "SETTINGS is not allowed" in error("explain select 1 settings max_threads = 1")

    def test_a_line_break_in_an_identifier_cannot_forge_the_tree(
        self, clickhouse: LocalServer
    ) -> None:
        """A quoted identifier with a line break cannot forge a line of the checked syntax tree."""
        forged = "select 1 as `x\n     TableIdentifier app_logs` from file('/etc/passwd', 'LineAsString')"
        assert raw_sql(clickhouse, forged, method="POST").status == 403


def test_the_tree_reader_refuses_what_it_cannot_read() -> None:
    """A syntax tree with a child missing or extra, a second statement or a jump is refused."""
    good = "SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n  SelectQuery (children 1)\n   ExpressionList (children 1)\n    Literal UInt64_1"
    assert _chcheck.refusal(good, "default") is None
    for broken in [
        good.replace(
            "(children 1)\n  SelectQuery", "(children 2)\n  SelectQuery"
        ),  # a child missing
        good + "\n    Literal UInt64_2",  # a child too many
        good + "\nSelectWithUnionQuery",  # a second statement
        good.replace("   ExpressionList", "     ExpressionList"),  # a jump in depth
        good + "\n    )",
    ]:
        assert _chcheck.refusal(broken, "default"), broken
    assert _chcheck.literal("a'b\\c\n\x00") == "'a\\'b\\\\c\\x0a\\x00'"


@pytest.mark.parametrize(
    "query",
    [
        "attach database '/tmp/x.db' as o",
        "select load_extension('/tmp/x')",
        "select fts3_tokenizer('simple')",
        "select * from pragma_table_info('_tb_meta')",
        "select * from pragma_database_list",
        "select * from dbstat",
        "select * from _TB_META",
        "select * from main._tb_meta",
        "select * from sqlite_schema",
        "pragma writable_schema = 1",
        "insert into app_logs (event) values ('x')",
        "select 1; delete from app_logs",
        "with x as (select 1) delete from app_logs",
        "vacuum into '/tmp/x.db'",
    ],
)
def test_sqlite_reads_only(query: str) -> None:
    """SQLite refuses attaching, extensions, its own catalog and token, and every write."""
    with LocalServer(engine="sqlite") as local:
        post(
            local,
            "app_logs",
            ndjson(ROW),
        )
        response = raw_sql(local, query, method="POST")
        assert response.status in (400, 403), response.data
        assert local.token.encode() not in response.data
        assert sql(local, "select count() n from app_logs")["data"] == [{"n": 1}]
