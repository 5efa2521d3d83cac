"""What a ``logger.error`` costs once an outage has filled the memory bound with errors.

Usage: ``python bench/full_bound.py``. The endpoint is a closed port (an outage), so the
queue fills to its default 16 MiB bound with ERROR lines; then 2,000 more are logged, each
of which looks for lower-level lines to displace and finds none (it is dropped and counted
as ``queue_full``). The baseline is the same call through a ``NullHandler``, in the same
process; the ratio is what reaching the bound costs the caller.
"""

from __future__ import annotations

import logging
import socket
import time

from tinybird_export import TinybirdHandler

CALLS = 2000


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def per_call(logger: logging.Logger) -> float:
    """Microseconds per ``logger.error``, the best of 3 runs of ``CALLS`` calls."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(CALLS):
            logger.error("boom %d %s", i, "x" * 300)
        runs.append((time.perf_counter() - started) / CALLS * 1e6)
    return min(runs)


def main() -> int:
    handler = TinybirdHandler(
        datasource="bench",
        host=f"http://127.0.0.1:{closed_port()}",
        token="t",
        exit_timeout=0.1,
        flush_timeout=0.1,
    )
    full = logging.getLogger("bench.full_bound")
    full.propagate = False
    full.setLevel(logging.INFO)
    full.addHandler(handler)
    filled = 0
    while not handler.stats().dropped_by_reason.get("queue_full"):
        full.error("boom %d %s", filled, "x" * 300)
        filled += 1
    null = logging.getLogger("bench.null")
    null.propagate = False
    null.addHandler(logging.NullHandler())
    baseline, at_bound = per_call(null), per_call(full)
    print(f"bound reached after {filled:,} errors ({handler.stats().queued_bytes:,} bytes queued)")
    print(f"NullHandler:                  {baseline:8.1f} us per logger.error")
    print(f"TinybirdHandler at the bound: {at_bound:8.1f} us per logger.error")
    print(f"ratio: {at_bound / baseline:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
