"""Caller cost and end-to-end rate of TinybirdHandler, against NullHandler in the same run.

Usage::

    python bench/handler_bench.py            # full run (about a minute)
    python bench/handler_bench.py --quick    # smaller, for CI smoke
    python bench/handler_bench.py --spool /tmp/spool   # the same with a disk spool set

The Events API test server runs in another process (``python -m tinybird_export.testing``)
so that it does not share this process's GIL. Prints a table; every figure is measured in
this run, and the caller cost is reported as the difference from ``NullHandler``.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import queue as queue_module
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import TOKEN, bench_logger, log_call

from tinybird_export import TinybirdHandler


@contextmanager
def server_process() -> Iterator[str]:
    """A test server in its own process, counting rows without keeping them."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinybird_export.testing", "--no-record", "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def per_call_costs(call: Callable[[], None], rounds: int, loop: int) -> list[float]:
    """Microseconds per call, one figure per round (wall time of ``loop`` calls / loop)."""
    costs = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(loop):
            call()
        costs.append((time.perf_counter() - start) / loop * 1e6)
    return costs


def per_call_p99(call: Callable[[], None], count: int) -> float:
    """p99 of single calls timed one by one (includes the timer's own cost)."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
    samples.sort()
    return samples[int(len(samples) * 0.99)] / 1000


SETTINGS: dict[str, str] = {}  # --spool sets spool_dir for every TinybirdHandler here


def caller_cost(url: str, rounds: int, loop: int) -> dict[str, float]:
    """Interleave NullHandler and TinybirdHandler rounds so drift hits both alike."""
    null_logger = logging.getLogger("bench.null")
    null_logger.handlers[:] = [logging.NullHandler()]
    null_logger.propagate = False
    null_logger.setLevel(logging.INFO)
    queue_logger = logging.getLogger("bench.queue")
    queue: queue_module.SimpleQueue[logging.LogRecord] = queue_module.SimpleQueue()
    queue_logger.handlers[:] = [logging.handlers.QueueHandler(queue)]
    queue_logger.propagate = False
    queue_logger.setLevel(logging.INFO)
    listener = logging.handlers.QueueListener(queue, logging.NullHandler())
    listener.start()
    handler = TinybirdHandler(datasource="bench", host=url, token=TOKEN, **SETTINGS)
    tb_logger = bench_logger(handler)
    loggers = {"null": null_logger, "queue": queue_logger, "tb": tb_logger}
    costs: dict[str, list[float]] = {name: [] for name in loggers}
    for _ in range(rounds):
        for name, logger in loggers.items():
            costs[name] += per_call_costs(lambda logger=logger: log_call(logger), 1, loop)
    result = {f"{name}_median": statistics.median(values) for name, values in costs.items()}
    for name, logger in loggers.items():
        result[f"{name}_p99"] = per_call_p99(lambda logger=logger: log_call(logger), loop)
    listener.stop()
    handler.flush(30)
    stats = handler.stats()
    result["delivered"] = float(stats.sent == stats.emitted)
    handler.close()
    return result


def end_to_end(url: str, seconds: float, rate: float | None) -> dict[str, float]:
    """Log in a loop (tight, or paced at ``rate``/s) and measure acknowledged events."""
    handler = TinybirdHandler(datasource="bench_e2e", host=url, token=TOKEN, **SETTINGS)
    logger = bench_logger(handler)
    start = time.perf_counter()
    count = 0
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            log_call(logger)
        count += 1000
        if rate is not None:
            ahead = count / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)  # pacing the producer, not synchronising a test
    ok = handler.flush(60)
    elapsed = time.perf_counter() - start
    stats = handler.stats()
    handler.close()
    return {
        "logged": count,
        "elapsed": elapsed,
        "events_per_s": stats.sent / elapsed,
        "mb_per_s": stats.bytes_sent / elapsed / 1e6,
        "requests_per_s": stats.requests / elapsed,
        "dropped": stats.dropped,
        "all_acknowledged": float(ok and stats.sent == count),
        "bytes_per_event": stats.bytes_sent / max(stats.sent, 1),
    }


def server_capacity(url: str, seconds: float) -> float:
    """Events/s the server acknowledges from pre-built batches sent by 2 threads."""
    import urllib3

    line = b'{"timestamp":"2026-01-01 00:00:00.000000","event":"x","href":"/a","n":1}' + b" " * 200
    body = b"\n".join([line] * 10_000) + b"\n"
    pool = urllib3.PoolManager(maxsize=4)
    sent = [0, 0]
    stop = time.perf_counter() + seconds

    def post(slot: int) -> None:
        while time.perf_counter() < stop:
            response = pool.request(
                "POST",
                f"{url}/v0/events?name=capacity",
                body=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            if response.status == 202:
                sent[slot] += 10_000

    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(sent) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI")
    parser.add_argument("--spool", help="a spool_dir for the handlers (healthy endpoint)")
    options = parser.parse_args()
    if options.spool:
        SETTINGS["spool_dir"] = options.spool
    rounds, loop, seconds = (5, 5_000, 2.0) if options.quick else (21, 20_000, 10.0)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, quick={options.quick}, "
        f"spool={options.spool or 'none'}"
    )
    with server_process() as url:
        cost = caller_cost(url, rounds, loop)
        added = cost["tb_median"] - cost["null_median"]
        print("\n| caller cost per logger.info with extras | median µs | p99 µs |")
        print("|---|---:|---:|")
        print(f"| NullHandler (baseline) | {cost['null_median']:.2f} | {cost['null_p99']:.2f} |")
        print(
            f"| QueueHandler + QueueListener(NullHandler) | {cost['queue_median']:.2f} | "
            f"{cost['queue_p99']:.2f} |"
        )
        print(f"| TinybirdHandler | {cost['tb_median']:.2f} | {cost['tb_p99']:.2f} |")
        print(
            f"| **added by TinybirdHandler** | **{added:.2f}** | "
            f"{cost['tb_p99'] - cost['null_p99']:.2f} |"
        )
        print(
            f"| added by QueueHandler (reference) | "
            f"{cost['queue_median'] - cost['null_median']:.2f} | "
            f"{cost['queue_p99'] - cost['null_p99']:.2f} |"
        )
        tight = end_to_end(url, seconds, None)
        paced = end_to_end(url, seconds, 100_000)
        capacity = server_capacity(url, min(seconds, 5.0))
    print("\n| end to end | events/s acked | MB/s raw | requests/s | dropped | all acked |")
    print("|---|---:|---:|---:|---:|---|")
    # Labels say what was achieved: a loaded machine may log slower than the pace asked for.
    for name, run in (("tight loop", tight), ("paced, asked for 100,000/s", paced)):
        print(
            f"| {name}: {run['logged']:,} logged in {run['elapsed']:.1f} s "
            f"({run['logged'] / run['elapsed']:,.0f}/s) "
            f"| {run['events_per_s']:,.0f} | {run['mb_per_s']:.1f} | "
            f"{run['requests_per_s']:.1f} | {run['dropped']:,.0f} | "
            f"{'yes' if run['all_acknowledged'] else 'NO'} |"
        )
    print(
        f"\ntest server capacity (pre-built 10,000-row batches, 2 threads): "
        f"{capacity:,.0f} events/s ({capacity / max(tight['events_per_s'], 1):.1f}x the "
        f"tight loop's rate)"
    )


if __name__ == "__main__":
    main()
