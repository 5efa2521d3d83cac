"""tinybird-export against the peers, side by side, on the same machine and the same sink.

Usage::

    pip install -e . --group bench      # the peers, the OTLP exporter, matplotlib
    python bench/compare.py             # prints the tables
    python bench/compare.py --write-docs  # also writes docs/benchmarks.md and the charts

Every measurement runs in its own process with a hard time cap; a peer that cannot finish
is reported with what it had done by the cap, and a peer that cannot run here is reported
with the reason. The sink (its own process) accepts each peer's wire format and counts
records: NDJSON (tinybird-export, tinybird-python-sdk), OTLP/HTTP protobuf (OpenTelemetry),
JSON arrays (python-logstash-async) and msgpack (logtail-python).
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import logging
import logging.handlers
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

TOKEN = "bench-token"
HERE = Path(__file__).resolve()
PEERS = (
    "null",
    "queue",
    "tinybird-export",
    "tb-sdk-sync",
    "tb-sdk-queue",
    "otel",
    "logstash-async",
    "logtail",
)
LABELS = {
    "null": "NullHandler (floor)",
    "queue": "QueueHandler + QueueListener (do-nothing listener)",
    "tinybird-export": "tinybird-export TinybirdHandler",
    "tb-sdk-sync": "tinybird-python-sdk TinybirdLoggingHandler",
    "tb-sdk-queue": "tinybird-python-sdk TinybirdLoggingQueueHandler",
    "otel": "OpenTelemetry LoggingHandler + BatchLogRecordProcessor + OTLP/HTTP",
    "logstash-async": "python-logstash-async (HttpTransport)",
    "logtail": "logtail-python",
}
CAPS = {"caller": 90, "throughput": 90, "exit": 60, "hang": 60, "memory": 150}


# -- the sink ------------------------------------------------------------------------------


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    counts: ClassVar[dict[str, float]] = {"records": 0, "requests": 0, "bytes": 0, "last": 0.0}
    lock = threading.Lock()
    hang = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.lock:
            body = json.dumps(self.counts).encode()
        self._reply(200, body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.hang:
            threading.Event().wait()
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        records = count_records(self.path, self.headers.get("Content-Type") or "", raw)
        with self.lock:
            self.counts["records"] += records
            self.counts["requests"] += 1
            self.counts["bytes"] += len(raw)
            self.counts["last"] = time.monotonic()
        body = json.dumps({"successful_rows": records, "quarantined_rows": 0}).encode()
        self._reply(202 if self.path.startswith("/v0/events") else 200, body)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def count_records(path: str, content_type: str, body: bytes) -> int:
    if path.startswith("/v1/logs"):
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )

        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        return sum(
            len(scope.log_records) for rl in request.resource_logs for scope in rl.scope_logs
        )
    if "msgpack" in content_type:
        import msgpack

        data = msgpack.unpackb(body, raw=False)
        return len(data) if isinstance(data, list) else 1
    if path.startswith("/v0/events"):
        return sum(1 for line in body.splitlines() if line.strip())
    data = json.loads(body or b"null")
    return len(data) if isinstance(data, list) else 1


def serve_sink(hang: bool) -> None:
    Sink.hang = hang
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


# -- the peers -----------------------------------------------------------------------------


def make_handler(peer: str, url: str) -> tuple[logging.Handler, Any]:
    """The peer's handler pointed at ``url``, and a function that flushes it."""
    host, port = url.rsplit(":", 1)[0][7:], int(url.rsplit(":", 1)[1])
    if peer == "null":
        handler: Any = logging.NullHandler()
        return handler, lambda: None
    if peer == "queue":
        import queue

        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        listener = logging.handlers.QueueListener(q, logging.NullHandler())
        listener.start()
        handler = logging.handlers.QueueHandler(q)
        return handler, listener.stop
    if peer == "tinybird-export":
        from tinybird_export import TinybirdHandler

        handler = TinybirdHandler(datasource="bench", host=url, token=TOKEN, exit_timeout=5)
        return handler, lambda: handler.flush(60)
    if peer in ("tb-sdk-sync", "tb-sdk-queue"):
        from tb.logger import TinybirdLoggingHandler, TinybirdLoggingQueueHandler

        if peer == "tb-sdk-sync":
            handler = TinybirdLoggingHandler(TOKEN, url, "bench")
            return handler, lambda: None
        from queue import Queue

        handler = TinybirdLoggingQueueHandler(Queue(), TOKEN, url, "bench")
        return handler, handler.listener.stop
    if peer == "otel":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter,
        )
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider = LoggerProvider()
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs"))
        )
        return LoggingHandler(logger_provider=provider), provider.force_flush
    if peer == "logstash-async":
        from logstash_async.handler import AsynchronousLogstashHandler
        from logstash_async.transport import HttpTransport

        transport = HttpTransport(host, port, ssl_enable=False, timeout=5.0)
        handler = AsynchronousLogstashHandler(host, port, transport=transport, database_path=None)
        return handler, handler.flush
    if peer == "logtail":
        from logtail import LogtailHandler

        handler = LogtailHandler(source_token=TOKEN, host=url)
        return handler, handler.flush
    raise ValueError(peer)


def bench_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("app")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def log_call(logger: logging.Logger, i: int = 0) -> None:
    logger.info("user %s did %s", "u1", "x", extra={"href": "/a", "n": i})


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- measurements (each in its own process) -------------------------------------------------


def measure(kind: str, peer: str, url: str) -> dict[str, Any]:
    handler, flush = make_handler(peer, url)
    logger = bench_logger(handler)
    if kind == "caller":
        return caller(logger)
    if kind == "throughput":
        started = time.perf_counter()
        count = 0
        while time.perf_counter() - started < 5.0:
            for _ in range(200):
                log_call(logger, count)
                count += 1
        flush()
        return {"logged": count, "started": started}
    if kind in ("exit", "hang"):
        count = 10_000 if kind == "exit" else 1_000
        for i in range(count):
            log_call(logger, i)
        print("logged", flush=True)
        return {"logged": count}
    if kind == "memory":
        for i in range(2_000):
            log_call(logger, i)
        before = rss()
        for i in range(200_000):
            log_call(logger, i)
        return {"growth_mib": (rss() - before) / 2**20}
    raise ValueError(kind)


def caller(logger: logging.Logger) -> dict[str, Any]:
    """Single thread: median and p99 µs per call; 8 threads: the same, per call."""
    single: list[float] = []
    deadline = time.perf_counter() + 6
    while time.perf_counter() < deadline or len(single) < 200:
        start = time.perf_counter_ns()
        log_call(logger)
        single.append((time.perf_counter_ns() - start) / 1000)
        if len(single) >= 20_000:
            break
    threaded: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        mine = []
        stop = time.perf_counter() + 4
        while time.perf_counter() < stop and len(mine) < 2_500:
            start = time.perf_counter_ns()
            log_call(logger)
            mine.append((time.perf_counter_ns() - start) / 1000)
        with lock:
            threaded.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "median": statistics.median(single),
        "p99": percentile(single, 99),
        "median8": statistics.median(threaded),
        "p99_8": percentile(threaded, 99),
        "calls": len(single),
    }


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


# -- orchestration ---------------------------------------------------------------------------


def start_sink(hang: bool) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--sink", *(["--hang"] if hang else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def sink_counts(url: str) -> dict[str, Any]:
    import urllib3

    return json.loads(urllib3.request("GET", url, timeout=5).data)


def run_child(kind: str, peer: str, url: str) -> tuple[dict[str, Any] | None, str, float]:
    """(result, error, seconds): the child's JSON result, or why it has none."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(HERE), "--measure", kind, peer, url],
            capture_output=True,
            text=True,
            timeout=CAPS[kind],
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"did not finish within the {CAPS[kind]} s cap", time.monotonic() - started
    elapsed = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 and not lines:
        last = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
        return None, last[:160], elapsed
    return (json.loads(lines[-1]) if lines else {}), "", elapsed


def exit_child(kind: str, peer: str, url: str) -> dict[str, Any]:
    """Seconds from the last log call to the end of the process (capped)."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--measure", kind, peer, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + CAPS[kind]
    try:
        while True:  # the last log call may itself block (a synchronous shipper)
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return {
                    "exit_s": None,
                    "error": f"logging blocked: not done after {CAPS[kind]} s (killed)",
                }
            line = proc.stdout.readline()
            if line.strip() == "logged":
                break
            if not line:
                return {"error": "failed before logging"}
        logged_at = time.monotonic()
        try:
            proc.wait(CAPS[kind])
            return {"exit_s": time.monotonic() - logged_at}
        except subprocess.TimeoutExpired:
            return {"exit_s": None, "error": f"still running after {CAPS[kind]} s (killed)"}
    finally:
        proc.kill()
        proc.wait()


def wait_quiet(url: str, expect: int, cap: float = 30) -> dict[str, Any]:
    """Poll the sink until it has ``expect`` records or nothing arrived for 2 s."""
    deadline = time.monotonic() + cap
    while True:
        counts = sink_counts(url)
        idle = time.monotonic() - counts["last"] if counts["last"] else 0
        if counts["records"] >= expect or idle > 2 or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)  # polling a sink in another process, with a deadline


def peer_available(peer: str) -> str:
    modules = {
        "tb-sdk-sync": "tb.logger",
        "tb-sdk-queue": "tb.logger",
        "otel": "opentelemetry.exporter.otlp.proto.http",
        "logstash-async": "logstash_async",
        "logtail": "logtail",
    }
    if peer not in modules:
        return ""
    try:
        __import__(modules[peer])
    except ImportError as exc:
        return f"not installed ({exc.name}); pip install --group bench"
    return ""


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def orchestrate(peers: list[str]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for peer in peers:
        row: dict[str, Any] = {}
        results[peer] = row
        reason = peer_available(peer)
        if reason:
            row["skipped"] = reason
            continue
        fast, url = start_sink(hang=False)
        try:
            result, error, _ = run_child("caller", peer, url)
            row["caller"] = result or {"error": error}
            before = sink_counts(url)["records"]
            result, error, _ = run_child("throughput", peer, url)
            if result is not None:
                counts = wait_quiet(url, before + result["logged"])
                seconds = max(counts["last"] - result["started"], 1e-9) if counts["last"] else 0
                row["throughput"] = {
                    "logged": result["logged"],
                    "delivered": counts["records"] - before,
                    "seconds": seconds,
                }
            else:
                row["throughput"] = {"error": error}
            reference = sink_counts(url)
            row["exit"] = exit_child("exit", peer, url)
            row["exit"]["delivered"] = (
                wait_quiet(url, reference["records"] + 10_000, 5)["records"] - reference["records"]
            )
        finally:
            fast.kill()
            fast.wait()
        hang, hang_url = start_sink(hang=True)
        try:
            row["hang"] = exit_child("hang", peer, hang_url)
        finally:
            hang.kill()
            hang.wait()
        result, error, _ = run_child("memory", peer, closed_port_url())
        row["memory"] = result or {"error": error}
        print(f"  measured {peer}", file=sys.stderr, flush=True)
    return results


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}.",
        "",
    ]
    null = results.get("null", {}).get("caller", {}).get("median")
    lines += [
        "| shipper | µs/call median | added over NullHandler | p99 | 8 threads median | "
        "8 threads p99 | events/s delivered | delivered at exit (of 10,000) | exit s, "
        "fast | exit s, hanging endpoint | RSS growth, 200k records, endpoint down |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for peer, row in results.items():
        if "skipped" in row:
            lines.append(f"| {LABELS[peer]} | skipped: {row['skipped']} |" + " |" * 9)
            continue
        c = row.get("caller", {})
        t = row.get("throughput", {})
        ex = row.get("exit", {})
        hg = row.get("hang", {})
        mem = row.get("memory", {})

        def num(value: Any, fmt: str = "{:.2f}") -> str:
            return fmt.format(value) if isinstance(value, int | float) else "-"

        added = num(c.get("median") - null) if null is not None and "median" in c else "-"
        rate = (t["delivered"] / t["seconds"]) if t.get("seconds") else None
        lines.append(
            " | ".join(
                [
                    f"| {LABELS[peer]}",
                    num(c.get("median")) if "median" in c else c.get("error", "-"),
                    added,
                    num(c.get("p99")),
                    num(c.get("median8")),
                    num(c.get("p99_8")),
                    "n/a"
                    if peer in ("null", "queue")
                    else (num(rate, "{:,.0f}") if rate else t.get("error", "-")),
                    "n/a (sends nothing)"
                    if peer in ("null", "queue")
                    else num(ex.get("delivered"), "{:,}"),
                    num(ex.get("exit_s")) if ex.get("exit_s") is not None else ex.get("error", "-"),
                    num(hg.get("exit_s")) if hg.get("exit_s") is not None else hg.get("error", "-"),
                    (
                        num(mem.get("growth_mib"), "{:.1f} MiB")
                        if "growth_mib" in mem
                        else mem.get("error", "-")
                    )
                    + " |",
                ]
            )
        )
    return "\n".join(lines)


def charts(results: dict[str, dict[str, Any]], directory: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    measured = {p: r for p, r in results.items() if "median" in r.get("caller", {})}
    names = [LABELS[p].split(" (")[0].replace("tinybird-python-sdk ", "tb-sdk ") for p in measured]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    axis.barh(names, [r["caller"]["median"] for r in measured.values()], color="#3b82f6")
    axis.set_xscale("log")
    axis.set_xlabel("µs per call (median, 1 thread, log scale)")
    axis.set_title("Caller cost")
    figure.tight_layout()
    figure.savefig(directory / "bench_caller.png", dpi=110)
    exits = {p: r for p, r in results.items() if "hang" in r}
    figure, axis = plt.subplots(figsize=(10, 4.5))
    values = [r["hang"].get("exit_s") or CAPS["hang"] for r in exits.values()]
    axis.barh(
        [LABELS[p].split(" (")[0].replace("tinybird-python-sdk ", "tb-sdk ") for p in exits],
        values,
        color=["#ef4444" if r["hang"].get("exit_s") is None else "#10b981" for r in exits.values()],
    )
    axis.set_xlabel(f"s to exit, hanging endpoint (red: killed at {CAPS['hang']} s)")
    axis.set_title("Exit behaviour")
    figure.tight_layout()
    figure.savefig(directory / "bench_exit.png", dpi=110)
    return ["bench_caller.png", "bench_exit.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--write-docs", action="store_true")
    options = parser.parse_args()
    if options.sink:
        serve_sink(options.hang)
        return
    if options.measure:
        print(json.dumps(measure(*options.measure)), flush=True)
        return
    results = orchestrate(options.peers.split(","))
    table = render(results)
    print(table)
    if options.write_docs:
        docs = HERE.parent.parent / "docs"
        docs.mkdir(exist_ok=True)
        images = charts(results, docs)
        (docs / "benchmarks.json").write_text(json.dumps(results, indent=1))
        command = "python bench/compare.py --write-docs"
        text = (
            f"# Benchmarks against the peers\n\nCommand: `{command}` (after "
            f"`pip install -e . --group bench`). Every figure below is what that run "
            f"printed.\n\n{table}\n\n" + "".join(f"![{i}]({i})\n\n" for i in images)
        )
        (docs / "benchmarks.md").write_text(text)


if __name__ == "__main__":
    main()
