"""A fleet under one rate limit: N real processes, each logging R records/s for T seconds
through a default TinybirdHandler, against a rate-limiting Events API fake on loopback.

Usage::

    python bench/fleet.py                     # N = 50 and 200, R = 50/s, 120 s, limit 100/s
    python bench/fleet.py --n 20 --seconds 20 --quick   # a smoke run

The fake is a token bucket per data source (``tinybird_export._rate_limit``: bursts up to
the limit, 429 with ``Retry-After`` and the three ``X-RateLimit-*`` headers), in this
process. Every record carries its process, a sequence number and the wall-clock time of
its log call, so each one's delivery latency (log call -> acknowledged) and duplicates are
measured. Each N runs twice, with the adaptive pacing on and off (``adaptive=False``: the
behaviour before it), and reports requests/s accepted and refused, the 429 share after
convergence, the time to converge, p50/p99/max latency, and dropped / duplicated /
delivered against logged. Children that do not finish within T + 90 s are killed, and
counted as such.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.server
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, ClassVar

import orjson

from tinybird_export._rate_limit import TokenBuckets

TOKEN = "fleet-token"
WINDOW = 5.0  # seconds per bucket of the 429-share timeline

CHILD = textwrap.dedent("""
    import json, logging, sys, time
    from tinybird_export import TinybirdHandler
    proc, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    adaptive = sys.argv[4]
    handler = TinybirdHandler(datasource="fleet", adaptive=adaptive)
    log = logging.getLogger("fleet"); log.propagate = False; log.setLevel(logging.INFO)
    log.addHandler(handler)
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts at once: the worst case for the limit
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while n < elapsed * rate:
            log.info("fleet record", extra={"proc": proc, "seq": n, "t0": time.time()})
            n += 1
        # Pacing the producer in bursts of a tenth of a second: hundreds of processes
        # waking more often would spend the machine's two cores on the benchmark itself.
        time.sleep(0.1)
    handler.flush(60)
    s = handler.stats()
    print(json.dumps({"logged": n, "emitted": s.emitted, "sent": s.sent, "dropped": s.dropped,
                      "interval": s.send_interval}), flush=True)
""")


class FleetSink(http.server.BaseHTTPRequestHandler):
    """The rate-limited Events API: counts requests by second and outcome, and records
    every accepted row's latency and whether it was seen before."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    state: ClassVar[dict[str, Any]] = {}
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up
            super().handle()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state, now = self.state, time.time()
        accepted, headers = state["buckets"].take("fleet")
        rows = []
        if accepted:
            body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            rows = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        with self.lock:
            state["requests"].append((now - state["start"], accepted))
            for row in rows:
                seen = state["seen"].setdefault(row["proc"], set())
                if row["seq"] in seen:
                    state["duplicates"] += 1
                else:
                    seen.add(row["seq"])
                    state["latencies"].append(now - row["t0"])
        status, payload = (202, {"successful_rows": len(rows)}) if accepted else (429, {})
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run(n: int, rate: float, seconds: float, limit: float, adaptive: bool) -> dict[str, Any]:
    FleetSink.state.clear()
    FleetSink.state.update(
        {
            "buckets": TokenBuckets(limit),
            "requests": [],
            "seen": {},
            "latencies": [],
            "duplicates": 0,
            "start": time.time(),
        }
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FleetSink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "TINYBIRD_HOST": f"http://127.0.0.1:{server.server_address[1]}",
        "TINYBIRD_TOKEN": TOKEN,
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(i), str(rate), str(seconds), str(adaptive)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    FleetSink.state["start"] = time.time()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results, killed = [], 0
    deadline = time.monotonic() + seconds + 90
    for child in children:
        try:
            out, _ = child.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            child.kill()
            child.communicate()
            killed += 1
    server.shutdown()
    server.server_close()
    return summarize(n, seconds, limit, adaptive, results, killed)


def summarize(
    n: int, seconds: float, limit: float, adaptive: bool, results: list[dict[str, Any]], killed: int
) -> dict[str, Any]:
    state = FleetSink.state
    requests = state["requests"]
    end = max((at for at, _ in requests), default=seconds)
    windows: dict[int, list[bool]] = {}
    for at, accepted in requests:
        windows.setdefault(int(at // WINDOW), []).append(accepted)
    shares = {w: 1 - sum(v) / len(v) for w, v in sorted(windows.items())}
    converged_at = next(
        (
            w * WINDOW
            for w in shares
            if all(shares[x] <= 0.01 for x in shares if x >= w and x * WINDOW < seconds)
        ),
        None,
    )
    after = [ok for at, ok in requests if 60 <= at < seconds] or [ok for _, ok in requests]
    latencies = sorted(state["latencies"])
    logged = sum(r["logged"] for r in results)
    delivered = sum(len(s) for s in state["seen"].values())
    return {
        "n": n,
        "adaptive": adaptive,
        "seconds": seconds,
        "accepted_per_s": sum(ok for _, ok in requests) / end,
        "refused_per_s": sum(not ok for _, ok in requests) / end,
        "share_429_after_60s": 1 - sum(after) / max(len(after), 1),
        "converged_at_s": converged_at,
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "max_s": latencies[-1] if latencies else None,
        "logged": logged,
        "delivered": delivered,
        "dropped": sum(r["dropped"] for r in results),
        "duplicated": state["duplicates"],
        "lost": logged - delivered - sum(r["dropped"] for r in results),
        "killed": killed,
        "limit": limit,
        "max_interval_s": max((r["interval"] for r in results), default=None),
    }


def table(rows: list[dict[str, Any]]) -> str:
    def f(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = [
        "| N | pacing | accepted/s | 429/s | 429 share after 60 s | converged at | "
        "p50 / p99 / max latency | logged | delivered | dropped | duplicated | lost |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        converged = "-" if r["converged_at_s"] is None else f"{r['converged_at_s']:.0f} s"
        killed = f" ({r['killed']} killed)" if r["killed"] else ""
        lines.append(
            f"| {r['n']} | {'adaptive' if r['adaptive'] else 'fixed'} | "
            f"{f(r['accepted_per_s'], 1)} | {f(r['refused_per_s'], 1)} | "
            f"{f(100 * r['share_429_after_60s'], 2)}% | "
            f"{converged} | "
            f"{f(r['p50_s'])} / {f(r['p99_s'])} / {f(r['max_s'])} s | {r['logged']:,} | "
            f"{r['delivered']:,} | {r['dropped']:,} | {r['duplicated']:,} | "
            f"{r['lost']:,}{killed} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="50,200", help="fleet sizes, comma-separated")
    parser.add_argument("--rate", type=float, default=50.0, help="records/s per process")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--limit", type=float, default=100.0, help="requests/s per data source")
    parser.add_argument("--modes", default="adaptive,fixed")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="N=10, 10 s, both modes (CI)")
    options = parser.parse_args()
    sizes = [10] if options.quick else [int(x) for x in options.n.split(",")]
    seconds = 10.0 if options.quick else options.seconds
    rows = []
    for n in sizes:
        for mode in options.modes.split(","):
            started = time.monotonic()
            rows.append(run(n, options.rate, seconds, options.limit, mode == "adaptive"))
            print(f"N={n} {mode}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(
        f"python bench/fleet.py: R = {options.rate:g} records/s per process, T = {seconds:g} s, "
        f"limit {options.limit:g} requests/s, {os.cpu_count()} cores\n"
    )
    print(table(rows))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
