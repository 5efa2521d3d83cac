"""Trace correlation in the logging handler: a log call inside an active span vs. outside.

Usage: ``python bench/span_bench.py`` (needs ``opentelemetry-sdk``, in the ``tests`` and
``bench`` dependency groups). The span pipelines themselves (our exporter against OTLP's) are
compared by ``bench/compare.py``. The Events API test server runs in another process.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import TOKEN, bench_logger, log_call

from tinybird_export import TinybirdHandler

ROUNDS = 7


def log_cost(logger: logging.Logger) -> float:
    """Median over rounds of µs per log call."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(5_000):
            log_call(logger)
        rounds.append((time.perf_counter() - started) / 5_000 * 1e6)
    return statistics.median(rounds)


def main() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinybird_export.testing", "--no-record", "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        handler = TinybirdHandler(datasource="bench_logs", host=url, token=TOKEN)
        logger = bench_logger(handler)
        outside = log_cost(logger)
        provider = TracerProvider(shutdown_on_exit=False)
        with provider.get_tracer("bench").start_as_current_span("request"):
            inside = log_cost(logger)
        handler.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"python {sys.version.split()[0]}; medians of {ROUNDS} rounds of 5,000 calls\n")
    print("| TinybirdHandler log call | µs per call (median) |")
    print("|---|---:|")
    print(f"| outside any span | {outside:.2f} |")
    print(f"| inside a span (trace_id/span_id added) | {inside:.2f} |")


if __name__ == "__main__":
    main()
