"""``tinybird-export local``, both engines side by side: start-up, ingest rate and query time.

Usage: ``python bench/local_ingest.py [--seconds 10] [--batch 10000] [--rows 1000000]``.

For each engine (``sqlite``, ``clickhouse`` when chDB is installed) a server runs in its own
process (``python -m tinybird_export.local``, in memory) and one client:

- start-up: from launching the process to its banner (interpreter start-up included);
- ingest: posts pre-built NDJSON batches of ``--batch`` small events for ``--seconds``, raw
  then gzip, and counts the events the server answered as stored;
- query: loads ``--rows`` events, then times ``select count()`` and a ``group by`` through
  ``/v0/sql`` (the median of 5 runs each), and the engine's own ``statistics.elapsed``;
- functions: ClickHouse's ``countIf`` against the plain ``count() ... where`` it stands for,
  and ``quantile(0.9)``, ``toStartOfFiveMinutes``: on the SQLite engine these are Python
  functions (``tinybird_export/local/_sqlite_functions.py``), a row at a time.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time

import orjson
import urllib3

from tinybird_export.local import SpawnedServer, spawn
from tinybird_export.local._engine import clickhouse_available

EVENTS = ("page_view", "click", "add_to_cart", "checkout", "search")


def batch(size: int, offset: int = 0) -> bytes:
    rows = [
        {
            "timestamp": f"2026-01-01 00:{(i // 60) % 60:02d}:{i % 60:02d}.000000",
            "href": f"https://shop.example/p{i % 50}",
            "event": EVENTS[(i + offset) % len(EVENTS)],
        }
        for i in range(size)
    ]
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def ingest(local: SpawnedServer, raw: bytes, size: int, seconds: float) -> dict[str, float]:
    pool = urllib3.PoolManager()
    results = {}
    for encoding, body in (("raw", raw), ("gzip", gzip.compress(raw, 1))):
        headers = {"Authorization": f"Bearer {local.token}"}
        if encoding == "gzip":
            headers["Content-Encoding"] = "gzip"
        sent = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            response = pool.request(
                "POST", f"{local.url}/v0/events?name=bench_{encoding}", body=body, headers=headers
            )
            assert response.status == 202, response.data
            answer = orjson.loads(response.data)
            assert answer["quarantined_rows"] == 0, answer
            sent += answer["successful_rows"]
        results[encoding] = sent / (time.perf_counter() - started)
    assert sent >= size
    return results


QUERIES = (
    ("count", "select count() c from bench_query"),
    ("group by", "select event, count() c from bench_query group by event order by event"),
    ("count where", "select count() n from bench_query where event = 'click'"),
    ("countIf", "select countIf(event = 'click') n from bench_query"),
    ("quantile", "select quantile(0.9)(length(href)) q from bench_query"),
    (
        "5 minutes",
        "select toStartOfFiveMinutes(timestamp) t, count() n from bench_query group by t",
    ),
)


def queries(local: SpawnedServer, rows: int, size: int) -> dict[str, float]:
    pool = urllib3.PoolManager()
    headers = {"Authorization": f"Bearer {local.token}"}
    for start in range(0, rows, size):
        response = pool.request(
            "POST",
            f"{local.url}/v0/events?name=bench_query",
            body=batch(min(size, rows - start), start),
            headers=headers,
        )
        assert response.status == 202, response.data
    timings: dict[str, float] = {}
    for label, sql in QUERIES:
        runs, inside = [], []
        for _ in range(5):
            started = time.perf_counter()
            response = pool.request(
                "GET", f"{local.url}/v0/sql", fields={"q": f"{sql} FORMAT JSON"}, headers=headers
            )
            runs.append(time.perf_counter() - started)
            assert response.status == 200, response.data
            inside.append(orjson.loads(response.data)["statistics"]["elapsed"])
        if label == "count":
            assert orjson.loads(response.data)["data"] == [{"c": rows}], response.data
        timings[label] = statistics.median(runs)
        timings[f"{label} elapsed"] = statistics.median(inside)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per ingest measurement")
    parser.add_argument("--batch", type=int, default=10_000, help="events per request")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the queries")
    options = parser.parse_args()
    engines = ["sqlite", "clickhouse"] if clickhouse_available() else ["sqlite"]
    raw = batch(options.batch)
    results: dict[str, dict[str, float]] = {}
    for engine in engines:
        started = time.perf_counter()
        local = spawn(":memory:", "--engine", engine)
        startup = time.perf_counter() - started
        try:
            rates = ingest(local, raw, options.batch, options.seconds)
            timings = queries(local, options.rows, options.batch)
        finally:
            local.stop()
        results[engine] = {"startup": startup, **rates, **timings}
        print(f"{engine}: done", file=sys.stderr, flush=True)
    print(
        f"python {sys.version.split()[0]}, one client, batches of {options.batch:,} small events "
        f"({len(raw) / options.batch:.0f} bytes each), queries over {options.rows:,} rows, "
        "in memory\n"
    )
    print(
        "| engine | start-up | events/s stored (raw) | (gzip) | select count() | group by "
        "| count() elapsed | group by elapsed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for engine, r in results.items():
        print(
            f"| {engine} | {r['startup']:.2f} s | {r['raw']:,.0f} | {r['gzip']:,.0f} "
            f"| {r['count'] * 1000:.1f} ms | {r['group by'] * 1000:.1f} ms "
            f"| {r['count elapsed'] * 1000:.2f} ms | {r['group by elapsed'] * 1000:.2f} ms |"
        )
    print(
        "\nselect count() and group by: the median of 5 answers through /v0/sql, HTTP included; "
        "elapsed: the engine's own statistics.elapsed in those answers"
    )
    print(
        "\n| engine | count() where event = 'click' | countIf(event = 'click') "
        "| quantile(0.9)(length(href)) | toStartOfFiveMinutes group by |"
    )
    print("|---|---:|---:|---:|---:|")
    for engine, r in results.items():
        print(
            f"| {engine} | {r['count where'] * 1000:.1f} ms | {r['countIf'] * 1000:.1f} ms "
            f"| {r['quantile'] * 1000:.1f} ms | {r['5 minutes'] * 1000:.1f} ms |"
        )
    if len(results) == 2:
        sqlite, clickhouse = results["sqlite"], results["clickhouse"]
        print(
            f"\nClickHouse vs SQLite: ingest x{clickhouse['raw'] / sqlite['raw']:.2f} (raw), "
            f"x{clickhouse['gzip'] / sqlite['gzip']:.2f} (gzip); count() in "
            f"{clickhouse['count'] / sqlite['count']:.1%} of SQLite's time, group by in "
            f"{clickhouse['group by'] / sqlite['group by']:.1%}"
        )


if __name__ == "__main__":
    main()
