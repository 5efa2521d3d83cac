"""What the local server's page costs the server while it refreshes, on a large workspace.

Usage: ``python bench/page_refresh.py [--rows 1000000] [--minutes 60] [--budget 40]``.

For each engine (``sqlite``, ``clickhouse`` when chDB is installed) an in-process server
(in memory) gets ``--rows`` events in ``simple_events`` spread over the last ``--minutes``
minutes; then Debian's ``chromium`` (headless) opens the page the server prints, for
``--budget`` seconds of virtual time (its 2-second refreshes then follow each other without
waiting: every query is timed under back-to-back load). Each query the page sent is timed
inside the server (``Engine.query``, parsing and answer included; not the HTTP round trip)
and sorted by what it is, by its text: the chart's first query (every row grouped by
minute), the chart's later ones (only the window's rows), the newest events' first query
and later ones, and the data sources' counts (``/v0/datasources``). The median of each.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from typing import Any

import orjson
import urllib3

from tinybird_export.local import LocalServer
from tinybird_export.local._engine import clickhouse_available

EVENTS = ("page_view", "click", "scroll", "signup")


def fill(server: LocalServer, rows: int, minutes: int) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    step = minutes * 60 / rows
    for start in range(0, rows, 50_000):
        lines = []
        for i in range(start, min(start + 50_000, rows)):
            moment = now - datetime.timedelta(seconds=(rows - i) * step)
            event = {"timestamp": moment.strftime("%Y-%m-%d %H:%M:%S.%f"), "href": "/"}
            lines.append(orjson.dumps({**event, "event": EVENTS[i % 4], "session_id": "s"}))
        answer = urllib3.request(
            "POST",
            f"{server.url}/v0/events?name=simple_events&wait=true",
            body=b"\n".join(lines) + b"\n",
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=120,
        )
        assert answer.status == 200, answer.data


def kind(sql: str) -> str:
    if "toStartOfMinute" in sql:
        return "chart, later (the window)" if " >= " in sql else "chart, first (all rows)"
    if "order by" in sql:
        return "newest, later (since the last)" if " >= " in sql else "newest, first"
    return "other"


def measure(engine: str, rows: int, minutes: int, budget: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = defaultdict(list)
    with LocalServer(engine=engine) as server:
        fill(server, rows, minutes)
        store: Any = server.store
        query, datasources = store.query, store.datasources

        def timed_query(sql: str, cancel: Any = None) -> Any:
            started = time.perf_counter()
            try:
                return query(sql, cancel)
            finally:
                timings[kind(sql)].append(time.perf_counter() - started)

        def timed_datasources() -> Any:
            started = time.perf_counter()
            try:
                return datasources()
            finally:
                timings["data sources' counts"].append(time.perf_counter() - started)

        store.query, store.datasources = timed_query, timed_datasources
        profile = tempfile.mkdtemp(prefix="page-bench-")
        try:
            subprocess.run(
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    f"--virtual-time-budget={budget * 1000}",
                    "--dump-dom",
                    server.page_url,
                ],
                capture_output=True,
                timeout=600,
                check=True,
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--budget", type=int, default=40, help="seconds of virtual time")
    options = parser.parse_args()
    engines = ["sqlite", *(["clickhouse"] if clickhouse_available() else [])]
    results = {e: measure(e, options.rows, options.minutes, options.budget) for e in engines}
    kinds = sorted({k for timings in results.values() for k in timings})
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{options.rows:,} rows over {options.minutes} minutes, {options.budget} s of virtual "
        f"time; {os.cpu_count()} cores, load average {load}; median ms (queries timed)"
    )
    print(f"| query | {' | '.join(engines)} |")
    print(f"|---|{'---:|' * len(engines)}")
    for name in kinds:
        cells = []
        for engine in engines:
            seen = results[engine].get(name, [])
            cells.append(f"{statistics.median(seen) * 1000:.1f} ({len(seen)})" if seen else "")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
