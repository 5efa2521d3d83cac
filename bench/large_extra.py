"""What one log call costs when ``extra`` holds a huge value, against encoding it alone.

Usage: ``python bench/large_extra.py``. A list of N small dicts goes into ``extra`` of one
``logger.warning`` through a ``TinybirdHandler`` (``background=False``, so nothing is sent
and the call's own cost is what is timed); the baseline is one ``orjson.dumps`` of the same
list, in the same process, and the ratio is what the bounded walk and truncation add.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time

import orjson

from tinybird_export import TinybirdHandler

ROUNDS = 5


def main() -> int:
    handler = TinybirdHandler(
        datasource="bench", host="http://127.0.0.1:9", token="t", background=False, exit_timeout=0
    )
    log = logging.getLogger("bench.large_extra")
    log.propagate = False
    log.addHandler(handler)
    print(f"python {sys.version.split()[0]}, medians of {ROUNDS} calls each\n")
    print("| items in extra | orjson.dumps alone | log call | ratio | delivered as |")
    print("|---:|---:|---:|---:|---|")
    for n in (10_000, 50_000, 100_000):
        items = [{"id": i, "name": "x"} for i in range(n)]
        dumps, calls = [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            orjson.dumps(items)
            dumps.append(time.perf_counter() - started)
            started = time.perf_counter()
            log.warning("huge", extra={"items": items})
            calls.append(time.perf_counter() - started)
        stats = handler.stats()
        outcome = "truncated" if stats.truncated else "whole"
        if stats.dropped:
            outcome = f"dropped {stats.dropped_by_reason}"
        dump, call = statistics.median(dumps), statistics.median(calls)
        times = f"{dump * 1e3:.1f} ms | {call * 1e3:.1f} ms | {call / dump:.1f}x"
        print(f"| {n:,} | {times} | {outcome} |")
    sys.stdout.flush()
    # Nothing is meant to be delivered (a closed port): skip the exit drain's report.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
