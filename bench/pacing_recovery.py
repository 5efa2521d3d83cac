"""How fast one process's pacing recovers when the endpoint does (issue 24): a default
TinybirdHandler logging R records/s against the test server on loopback, which answers as
each scenario scripts for T seconds, then 202 (no rate-limit headers) from then on.

Usage::

    python bench/pacing_recovery.py                  # R = 1,000/s, every scenario
    python bench/pacing_recovery.py --only 429-15s --after 20

Scenarios: ``429-15s`` and ``429-60s`` (429 with ``Retry-After: 1``), ``alternating``
(429 and 202 in turn for 60 s), ``spent-window`` (202 with ``X-RateLimit-Remaining: 0``
and ``X-RateLimit-Reset: 1`` for 60 s), ``reset-epoch`` and ``retry-after-1e308`` (three
429s with that header, then 202). Reported per scenario: the highest send interval, how
long after the recovery the interval is back to ``flush_interval`` (and what it is
``--after`` seconds after the recovery), how long until the last record logged before the
recovery arrived, and the records dropped of those logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tinybird_export import TinybirdHandler
from tinybird_export.testing import EventsServer, Reply

SPENT = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}


def _respond(reply: Reply) -> Callable[[EventsServer], None]:
    return lambda server: server.respond(reply)


def _script(*replies: Reply) -> Callable[[EventsServer], None]:
    return lambda server: server.script(*replies)


# name -> (seconds of the scripted answers, how to script them)
SCENARIOS: dict[str, tuple[float, Callable[[EventsServer], None]]] = {
    "429-15s": (15.0, _respond(Reply(status=429, headers={"Retry-After": "1"}))),
    "429-60s": (60.0, _respond(Reply(status=429, headers={"Retry-After": "1"}))),
    "alternating": (60.0, _script(*[Reply(status=429), Reply()] * 5000)),
    "spent-window": (60.0, _respond(Reply(headers=SPENT))),
    "reset-epoch": (0.0, _script(*[Reply(status=429, headers={"X-RateLimit-Reset": "1e9"})] * 3)),
    "retry-after-1e308": (0.0, _script(*[Reply(status=429, headers={"Retry-After": "1e308"})] * 3)),
}


def run(name: str, rate: float, after: float, flush_interval: float = 1.0) -> dict[str, Any]:
    seconds, script = SCENARIOS[name]
    with EventsServer() as server:
        handler = TinybirdHandler(
            datasource="recovery_" + name.replace("-", "_"),
            host=server.url,
            token=server.token,
            flush_interval=flush_interval,
        )
        log = logging.getLogger(f"recovery.{name}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        samples: list[tuple[float, float]] = []  # (time, send interval)
        stop = threading.Event()
        start = time.monotonic()
        logged = logged_before = 0

        def sample() -> None:
            while not stop.wait(0.1):
                samples.append((time.monotonic() - start, handler.stats().send_interval))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        script(server)
        recovered: float | None = None
        while (elapsed := time.monotonic() - start) < (recovered or seconds + after) + after:
            if recovered is None and seconds and elapsed >= seconds:
                server.reset()  # 202 from now on
                recovered, logged_before = elapsed, logged
            elif recovered is None and not seconds and server.rows_accepted:
                recovered, logged_before = elapsed, logged  # scripted by count: the first 202
            while logged < elapsed * rate:
                log.info("recovery record", extra={"seq": logged})
                logged += 1
            time.sleep(0.01)  # pacing the producer, not synchronising
        stop.set()
        sampler.join()
        stats = handler.stats()
        log.removeHandler(handler)
        handler.flush(30)
        handler.close()
        accepted = [r for r in server.requests if r.status in (200, 202)]
    if recovered is None:  # scripted by count, and never acknowledged while watched
        return {
            "scenario": name,
            "silent": True,
            "peak_interval": max(iv for _, iv in samples),
            "back_after": None,
            "interval_after": samples[-1][1],
            "backlog_after": None,
            "logged": logged,
            "dropped": stats.dropped,
        }
    arrivals = [(r.received_at - start, row["seq"]) for r in accepted for row in r.rows]
    before = [at for at, seq in arrivals if seq < logged_before]
    back = next((at for at, iv in samples if at >= recovered and iv <= flush_interval), None)
    at_end = next((iv for at, iv in reversed(samples) if at <= recovered + after), None)
    return {
        "scenario": name,
        "seconds": seconds,
        "peak_interval": max(iv for _, iv in samples),
        "back_after": None if back is None else back - recovered,
        "interval_after": at_end,
        "backlog_after": max(before) - recovered if before else None,
        "logged": logged,
        "dropped": stats.dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s")
    parser.add_argument("--after", type=float, default=40.0, help="seconds watched after")
    parser.add_argument("--only", help="scenarios, comma-separated")
    options = parser.parse_args()
    names = options.only.split(",") if options.only else list(SCENARIOS)
    print(
        f"python bench/pacing_recovery.py: R = {options.rate:g} records/s, watched "
        f"{options.after:g} s after the recovery, {os.cpu_count()} cores\n"
    )
    print(
        "| scenario | peak interval | back to flush_interval | interval after "
        f"{options.after:g} s | last earlier record arrived | dropped |"
    )
    print("|---|---:|---:|---:|---:|---:|")

    def f(value: float | None, unit: str = " s") -> str:
        return f"not within {options.after:g} s" if value is None else f"{value:.1f}{unit}"

    for name in names:
        r = run(name, options.rate, options.after)
        if r.get("silent"):  # no request was accepted while watched
            r["scenario"] += f" (none accepted in {2 * options.after:g} s)"
        print(
            f"| {r['scenario']} | {r['peak_interval']:.1f} s | {f(r['back_after'])} | "
            f"{r['interval_after']:.1f} s | {f(r['backlog_after'])} | "
            f"{r['dropped']:,} of {r['logged']:,} ({100 * r['dropped'] / r['logged']:.0f}%) |",
            flush=True,
        )
        print(f"{name}: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
