"""No request can stop the local server: each query is bounded in time, memory and result
size, queries run side by side (or get a clear busy answer), a query stops when its client
goes away, and SIGTERM during a query stops the server at once with every acknowledged row
stored.
"""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import urllib3

from tests.local_helpers import ENGINES, EVENT, ndjson, needs_clickhouse, post, raw_sql, sql
from tinybird_export.cli import query
from tinybird_export.local import LocalServer, _limits, spawn

# A query that never ends on its own, in each engine's SQL.
ENDLESS = {
    "clickhouse": "SELECT count() FROM numbers(1e12)",
    "sqlite": "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c",
}


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 s time limit (Tinybird's 10 s is a constant; the mechanism is the same)."""
    monkeypatch.setattr(_limits, "QUERY_SECONDS", 2)


@pytest.fixture(params=ENGINES)
def local(request: pytest.FixtureRequest, bounded: None) -> Iterator[LocalServer]:
    with LocalServer(engine=str(request.param)) as server:
        yield server


def timed_sql(server: LocalServer, text: str) -> tuple[int, dict[str, object], float]:
    started = time.monotonic()
    response = raw_sql(server, text, method="POST")
    return response.status, orjson.loads(response.data or b"{}"), time.monotonic() - started


class TestTimeLimit:
    def test_a_query_past_the_limit_gets_tinybirds_408(self, local: LocalServer) -> None:
        """A query past the time limit stops there with Tinybird's 408 TIMEOUT_EXCEEDED."""
        status, body, took = timed_sql(local, ENDLESS[local.engine_name])
        assert status == 408, body
        assert "TIMEOUT_EXCEEDED" in str(body["error"]) and "Tinybird" in str(body["error"])
        assert 1.5 < took < 5

    @needs_clickhouse
    @pytest.mark.timeout(60)
    def test_the_limit_is_tinybirds_10_s(self) -> None:
        """Unpatched, a spawned server stops an endless query at Tinybird's 10 s, not before."""
        with spawn(":memory:", "--engine", "clickhouse") as server:
            started = time.monotonic()
            response = urllib3.request(
                "POST",
                f"{server.url}/v0/sql",
                body=ENDLESS["clickhouse"].encode(),
                headers={"Authorization": f"Bearer {server.token}"},
                timeout=30,
                retries=False,
            )
            took = time.monotonic() - started
        assert response.status == 408 and 9.5 < took < 15, (response.data, took)


@needs_clickhouse
class TestMemoryAndResultSize:
    def test_a_query_over_the_memory_limit_is_refused(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A query past its memory limit is a 400 MEMORY_LIMIT_EXCEEDED; the server serves on."""
        monkeypatch.setattr(_limits, "QUERY_MEMORY_BYTES", 300 * 1024**2)
        with LocalServer(engine="clickhouse") as server:
            status, body, _ = timed_sql(
                server, "select length(groupArray(number)) from numbers(2e9)"
            )
            assert status == 400 and "MEMORY_LIMIT_EXCEEDED" in str(body["error"]), body
            assert sql(server, "select 1 x")["data"] == [{"x": 1}]  # still serving

    def test_queries_together_have_a_memory_limit_too(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """max_memory_usage_for_user: what all queries hold at once (here, one is enough)."""
        monkeypatch.setattr(_limits, "QUERIES_MEMORY_BYTES", 200 * 1024**2)
        with LocalServer(engine="clickhouse") as server:
            status, body, _ = timed_sql(
                server, "select length(groupArray(number)) from numbers(1e8)"
            )
            assert status == 400 and "User memory limit exceeded" in str(body["error"]), body

    def test_a_huge_result_is_refused(self, bounded: None) -> None:
        """A result past the size limit is a 400 TOO_MANY_ROWS_OR_BYTES, within 2 s."""
        with LocalServer(engine="clickhouse") as server:
            status, body, took = timed_sql(server, "select number from numbers(3e8) format JSON")
            assert status == 400 and "TOO_MANY_ROWS_OR_BYTES" in str(body["error"]), body
            assert took < 2


@needs_clickhouse
def test_a_failed_answer_never_reaches_the_next_query(
    monkeypatch: pytest.MonkeyPatch, bounded: None
) -> None:
    """chDB hands a connection's next query the partial output of a query that failed while
    writing it: another client's data, unless the reader is replaced."""
    monkeypatch.setattr(_limits, "READERS", 1)
    with LocalServer(engine="clickhouse") as server:
        for failing in ("select number from numbers(3e8) format JSON", ENDLESS["clickhouse"]):
            assert timed_sql(server, failing)[0] in (400, 408)
            assert sql(server, "select 1 AS x")["data"] == [{"x": 1}]


def test_sqlite_results_are_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's answers have the same bounds: too many rows, or one value too big, is a 400."""
    # A row limit of 10,000 (Tinybird's 1,000,000 is a constant; the mechanism is the same),
    # under the 10 s time limit: a million rows under a 2 s limit raced the two on a loaded
    # machine, and the time limit answered first (408).
    monkeypatch.setattr(_limits, "RESULT_ROWS", 10_000)
    with LocalServer(engine="sqlite") as server:
        many = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000) select x from c"
        status, body, _ = timed_sql(server, many)
        assert status == 400 and "TOO_MANY_ROWS_OR_BYTES" in str(body["error"]), body
        status, body, _ = timed_sql(server, "select length(zeroblob(900000000)) n")
        assert status == 400 and "too big" in str(body["error"]), body


def test_sqlite_rewrites_a_long_query_in_linear_time() -> None:
    """The SQLite engine's rewrite of ClickHouse spellings (``countIf`` wrapped for empty
    tables) runs before the time limit applies: a 400 KB query of them answers at once (it took
    minutes, a thread busy and the server slow, growing with the square of the length).
    """
    text = "select '" + "countIf(" * 50_000 + "' x, countIf(1) + countIf(0) n where 0"
    with LocalServer(engine="sqlite") as server:
        started = time.monotonic()
        response = raw_sql(server, text, method="POST")
        assert response.status == 200, response.data[:300]
        assert orjson.loads(response.data)["data"][0]["n"] == 0
        assert time.monotonic() - started < 20


@pytest.mark.parametrize("engine", ENGINES)
def test_a_long_run_of_spaces_is_read_in_linear_time(engine: str) -> None:
    """Finding a query's FORMAT clause runs before the time limit applies, on both engines
    (ClickHouse's spelling keeps a literal's spaces): a 200 KB run of spaces answers at once
    (it took minutes, holding the GIL, so the whole server stopped answering), and so does
    an error quoting it.
    """
    text = "select '" + " " * 200_000 + "' x FORMAT JSON"
    with LocalServer(engine=engine) as server:
        started = time.monotonic()
        response = raw_sql(server, text, method="POST")
        assert response.status == 200, response.data[:300]
        if engine == "clickhouse":  # its error quotes the query: cut to the reason as fast
            refused = raw_sql(server, text.replace("' x", "' + 1 x"), method="POST")
            assert refused.status == 400, refused.data[:300]
            assert b"In scope" not in refused.data
        assert time.monotonic() - started < 20


def test_sqlite_aggregates_keep_no_values() -> None:
    """The SQLite engine's Python aggregates (no memory limit of SQLite's own) hold a running
    answer, or a bounded key per distinct value: 300 MB of generated blobs cost no 300 MB.
    """
    blobs = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 300) "
    queries = [
        f"{blobs}select uniqIf(randomblob(1000000), 1) n from c",
        f"{blobs}select length(minIf(randomblob(1000000), 1)) n from c",
        f"{blobs}select length(maxIf(randomblob(1000000), x > 0)) n from c",
    ]
    with spawn(":memory:", "--engine", "sqlite") as server:
        status = Path(f"/proc/{server.process.pid}/status")
        if not status.exists():
            pytest.skip("reads the server's peak memory from /proc")

        def peak() -> int:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
            return int(line.split()[1]) * 1024

        assert query(server.url, server.token, "select 1 n")["data"] == [{"n": 1}]
        before = peak()
        for text in queries:
            answer = query(server.url, server.token, text)["data"]
            assert answer in ([{"n": 300}], [{"n": 1_000_000}]), answer
        assert peak() - before < 150 * 1024 * 1024, (before, peak())


def _peak_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("reads the server's peak memory from /proc")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


BLOB_ROWS = (
    "SELECT zeroblob(50000000) b FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
    "SELECT x + 1 FROM c WHERE x < 30) SELECT x FROM c)"
)


def test_sqlite_result_bytes_are_counted_a_row_at_a_time() -> None:
    """30 rows of 50 MB are refused at the 100 MB result limit, having read little more (the
    rows were fetched 1000 at a time and counted after: 1.5 GB here, 100 GB for 1000 rows of
    SQLite's 100 MB values). Through /v0/sql, and through a delete condition that is not one
    (its rowids were read with no limit at all).
    """
    with spawn(":memory:", "--engine", "sqlite") as server:
        assert query(server.url, server.token, "select 1 n")["data"] == [{"n": 1}]
        post(server, "simple_events", ndjson(EVENT))
        before = _peak_bytes(server.process.pid)
        bearer = {"Authorization": f"Bearer {server.token}"}
        response = urllib3.request(
            "POST", f"{server.url}/v0/sql", body=BLOB_ROWS, headers=bearer, timeout=30
        )
        assert response.status == 400 and b"TOO_MANY_ROWS_OR_BYTES" in response.data
        form = {"delete_condition": f"0 UNION ALL {BLOB_ROWS}", "dry_run": "true"}
        response = urllib3.request(
            "POST",
            f"{server.url}/v0/datasources/simple_events/delete",
            body=urllib.parse.urlencode(form),
            headers={**bearer, "Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert response.status == 400, response.data
        assert _peak_bytes(server.process.pid) - before < 400 * 1024 * 1024
        assert query(server.url, server.token, "select count() n from simple_events")["data"] == [
            {"n": 1}
        ]


def test_the_command_bounds_sqlites_memory() -> None:
    """One row may hold 2000 columns of 100 MB: the command caps SQLite's heap (200 MB here,
    the query memory limit), and such a row is a 400 saying so, not gigabytes.
    """
    script = (
        "import resource, sys, urllib3\n"
        "from tinybird_export.local import LocalServer, _limits, _sqlite_read\n"
        "_limits.QUERY_MEMORY_BYTES = 200_000_000\n"
        "_sqlite_read.bound_memory()\n"
        "def peak():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "with LocalServer(engine='sqlite') as local:\n"
        "    before = peak()  # the server up (with the local extra, chDB's library mapped)\n"
        "    wide = 'select ' + ', '.join(['zeroblob(50000000)'] * 60)\n"
        "    answer = urllib3.request('POST', local.url + '/v0/sql', body=wide,\n"
        "        headers={'Authorization': 'Bearer ' + local.token}, timeout=30)\n"
        "    print(answer.status, answer.data.decode()[:200])\n"
        "print(peak() - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("400 "), (done.stdout, done.stderr[-2000:])
    assert "MEMORY_LIMIT_EXCEEDED" in lines[0]
    # MiB the peak grew by: 143 with the cap, 5,722 without (the row alone is 3,000 MB); a
    # CI run once peaked at 1,113 MiB with the cap, so the line is drawn between the two.
    assert int(lines[1]) < 2048, lines


class TestSideBySide:
    def test_queries_do_not_wait_behind_each_other(self, local: LocalServer) -> None:
        """Two endless queries run side by side while a quick query and an ingest answer at once."""
        endless = ENDLESS[local.engine_name]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            slow = [pool.submit(timed_sql, local, endless) for _ in range(2)]
            time.sleep(0.3)  # both running (not synchronisation: a later start only shortens it)
            quick = timed_sql(local, "select 1 AS x")
            ingest_started = time.monotonic()
            accepted = post(local, "during", ndjson(EVENT), wait="true")
            ingest_took = time.monotonic() - ingest_started
            statuses = [f.result()[0] for f in slow]
            both_took = time.monotonic() - started
        assert quick[0] == 200 and quick[2] < 1, quick
        assert accepted[0] == 200 and ingest_took < 1, (accepted, ingest_took)
        assert statuses == [408, 408]
        assert both_took < 2 * _limits.QUERY_SECONDS, both_took  # side by side, not in turn

    def test_past_the_readers_the_answer_is_busy(
        self, monkeypatch: pytest.MonkeyPatch, bounded: None
    ) -> None:
        """With every reader busy, a query gets a 429 saying why within the slot wait."""
        monkeypatch.setattr(_limits, "READERS", 1)
        monkeypatch.setattr(_limits, "SLOT_WAIT", 0.2)
        with (
            LocalServer(engine="sqlite") as server,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            running = pool.submit(timed_sql, server, ENDLESS["sqlite"])
            time.sleep(0.3)
            status, body, took = timed_sql(server, "select 1")
            assert status == 429 and "already running" in str(body["error"]) and took < 1
            assert running.result()[0] == 408


class TestClientGone:
    def test_a_query_stops_when_its_client_leaves(
        self, monkeypatch: pytest.MonkeyPatch, local: LocalServer
    ) -> None:
        """One reader, a 30 s limit: only the cancellation can free the reader in time."""
        monkeypatch.setattr(_limits, "QUERY_SECONDS", 30)
        monkeypatch.setattr(_limits, "SLOT_WAIT", 3)
        monkeypatch.setattr(_limits, "READERS", 1)
        with LocalServer(engine=local.engine_name) as server:
            parts = urllib.parse.urlsplit(server.url)
            body = ENDLESS[server.engine_name].encode()
            with socket.create_connection((parts.hostname, parts.port)) as leaving:
                leaving.sendall(
                    f"POST /v0/sql HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer "
                    f"{server.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                time.sleep(0.5)  # it runs (a shorter wait only makes the test weaker)
            started = time.monotonic()
            status, body_json, _ = timed_sql(server, "select 1 AS x")
            assert status == 200, body_json
            assert time.monotonic() - started < 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_during_a_query_stops_at_once_and_keeps_the_acknowledged(
    engine: str, tmp_path: Path
) -> None:
    """SIGTERM mid-query stops the server within 2.5 s, and the 1,000 acknowledged rows stay."""
    data = str(tmp_path / "data")
    server = spawn(data, "--engine", engine)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(
                urllib3.request,
                "POST",
                f"{server.url}/v0/sql",
                body=ENDLESS[engine].encode(),
                headers={"Authorization": f"Bearer {server.token}"},
                retries=False,
                timeout=30,
            )
            time.sleep(0.5)
            rows = [{**EVENT, "event": f"e{i}"} for i in range(1000)]
            assert post(server, "kept", ndjson(*rows))[0] == 202
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(10) == 0
            stopped_in = time.monotonic() - started
            try:
                answer = running.result(10)
                assert answer.status == 503, answer.data
            except urllib3.exceptions.HTTPError:
                pass  # or the connection closed as the process ended
    finally:
        server.stop()
    assert stopped_in < 2.5, stopped_in
    with spawn(data, "--engine", engine) as again:
        assert query(again.url, again.token, "select count() n from kept")["data"] == [{"n": 1000}]
