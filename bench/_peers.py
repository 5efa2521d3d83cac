"""The peers and the measurements that run inside one child process of ``compare.py``.

A child reports on stdout, one JSON object per line: ``{"progress": {...}}`` as it goes (so
that a child killed at its cap still says what it had done), ``{"mark": "logged"}`` when its
last log call returned (exit timing), and ``{"result": {...}}`` at the end.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

TOKEN = "bench-token"
LOG_PEERS = (
    "null",
    "queue",
    "tinybird-export",
    "tb-sdk-sync",
    "tb-sdk-queue",
    "otel",
    "logstash-async",
    "logtail",
)
SPAN_PEERS = ("span-tinybird", "span-tinybird-batch", "span-otlp")
LABELS = {
    "null": "NullHandler (floor)",
    "queue": "QueueHandler + QueueListener (do-nothing listener)",
    "tinybird-export": "tinybird-export TinybirdHandler",
    "tb-sdk-sync": "tinybird-python-sdk TinybirdLoggingHandler",
    "tb-sdk-queue": "tinybird-python-sdk TinybirdLoggingQueueHandler",
    "otel": "OpenTelemetry LoggingHandler + BatchLogRecordProcessor + OTLP/HTTP",
    "logstash-async": "python-logstash-async (HttpTransport)",
    "logtail": "logtail-python",
    "span-tinybird": "SimpleSpanProcessor(TinybirdSpanExporter())",
    "span-tinybird-batch": "BatchSpanProcessor(TinybirdSpanExporter())",
    "span-otlp": "BatchSpanProcessor(OTLPSpanExporter())",
}
REFERENCES = ("null", "queue")  # they send nothing
MODULES = {  # what each peer needs installed (the ``bench`` dependency group)
    "tb-sdk-sync": "tb.logger",
    "tb-sdk-queue": "tb.logger",
    "otel": "opentelemetry.exporter.otlp.proto.http",
    "logstash-async": "logstash_async",
    "logtail": "logtail",
    "span-tinybird": "opentelemetry.sdk.trace",
    "span-tinybird-batch": "opentelemetry.sdk.trace",
    "span-otlp": "opentelemetry.exporter.otlp.proto.http",
}
EXIT_RECORDS = 10_000
HANG_RECORDS = 1_000
MEMORY_RECORDS = 200_000
LARGE_RECORDS, LARGE_BYTES = 2_000, 100_000
SPANS = 20_000


def report(**message: Any) -> None:
    print(json.dumps(message), flush=True)


def unavailable(peer: str) -> str:
    """Why ``peer`` cannot run here, or ``""``."""
    module = MODULES.get(peer)
    if module is None:
        return ""
    try:
        __import__(module)
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install -e . --group bench"
    except Exception as exc:  # a peer that breaks on import is reported, not skipped
        return f"fails to import: {type(exc).__name__}: {exc}"[:200]
    return ""


def make_handler(peer: str, url: str) -> tuple[logging.Handler, Callable[[], Any]]:
    """The peer's handler pointed at ``url``, and a function that flushes it."""
    host, port = url.rsplit(":", 1)[0][len("http://") :], int(url.rsplit(":", 1)[1])
    if peer == "null":
        return logging.NullHandler(), lambda: None
    if peer == "queue":
        import queue

        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        listener = logging.handlers.QueueListener(records, logging.NullHandler())
        listener.start()
        return logging.handlers.QueueHandler(records), listener.stop
    if peer == "tinybird-export":
        from tinybird_export import TinybirdHandler

        ours = TinybirdHandler(datasource="bench", host=url, token=TOKEN, exit_timeout=5)
        return ours, lambda: ours.flush(120)
    if peer == "tb-sdk-sync":
        from tb.logger import TinybirdLoggingHandler

        return TinybirdLoggingHandler(TOKEN, url, "bench"), lambda: None
    if peer == "tb-sdk-queue":
        from queue import Queue

        from tb.logger import TinybirdLoggingQueueHandler

        queued = TinybirdLoggingQueueHandler(Queue(), TOKEN, url, "bench")
        return queued, queued.listener.stop
    if peer == "otel":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
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
        stash = AsynchronousLogstashHandler(host, port, transport=transport, database_path=None)
        return stash, stash.flush
    if peer == "logtail":
        from logtail import LogtailHandler

        tail = LogtailHandler(source_token=TOKEN, host=url)
        return tail, tail.flush
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


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


# -- the measurements, one per child process ----------------------------------------------


def measure(kind: str, peer: str, url: str, quick: bool) -> None:
    if kind == "span":
        report(result=spans(peer, url, SPANS // (10 if quick else 1)))
        return
    handler, flush = make_handler(peer, url)
    logger = bench_logger(handler)
    if kind == "caller":
        report(result=caller(logger, quick))
    elif kind == "throughput":
        report(result=throughput(logger, flush, 1.0 if quick else 5.0))
    elif kind in ("exit", "hang"):
        count = EXIT_RECORDS if kind == "exit" else HANG_RECORDS
        for i in range(count):
            log_call(logger, i)
            if i % 500 == 0:
                report(progress={"logged": i})
        report(mark="logged", result={"logged": count})
        # ... and the interpreter exits: each shipper's own exit path runs now.
    elif kind == "memory":
        report(result=memory(logger, MEMORY_RECORDS // (10 if quick else 1), None))
    elif kind == "memory-large":
        report(result=memory(logger, LARGE_RECORDS // (10 if quick else 1), "x" * LARGE_BYTES))
    else:
        raise ValueError(kind)


def caller(logger: logging.Logger, quick: bool) -> dict[str, Any]:
    """µs per ``logger.info`` (each call timed), single-threaded, then from 8 threads."""
    limit = 2_000 if quick else 20_000
    single: list[float] = []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + (1 if quick else 6)
    while len(single) < limit and (time.perf_counter() < deadline or len(single) < 200):
        start = clock()
        log_call(logger)
        single.append((clock() - start) / 1000)
        if len(single) % 2_000 == 0:
            report(progress={"calls": len(single), "median": statistics.median(single)})
    threaded: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        mine = []
        stop = time.perf_counter() + (1 if quick else 4)
        while time.perf_counter() < stop and len(mine) < limit // 8:
            start = clock()
            log_call(logger)
            mine.append((clock() - start) / 1000)
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
        "calls8": len(threaded),
    }


def throughput(logger: logging.Logger, flush: Callable[[], Any], seconds: float) -> dict[str, Any]:
    """Log in a tight loop for ``seconds``, then flush; the sink measures what arrives."""
    started = time.time()  # wall clock: the sink, in another process, stamps arrivals with it
    count = 0
    next_report = time.perf_counter() + 0.5
    while time.time() - started < seconds:
        for _ in range(200):
            log_call(logger, count)
            count += 1
        if time.perf_counter() >= next_report:
            report(progress={"logged": count, "started": started})
            next_report += 0.5
    report(progress={"logged": count, "started": started, "flushing": True})
    flush()
    return {"logged": count, "started": started}


def memory(logger: logging.Logger, count: int, payload: str | None) -> dict[str, Any]:
    """RSS growth while logging ``count`` records to an endpoint that refuses connections."""
    for i in range(min(2_000, count // 10)):  # warm up: imports, caches, first allocations
        log_call(logger, i)
    before = rss()
    for i in range(count):
        if payload is None:
            log_call(logger, i)
        else:
            # A payload of its own per record, as in life (one shared string would let a
            # shipper that keeps references look free).
            body = f"{i:08d}{payload[8:]}"
            logger.info("upload", extra={"href": "/a", "n": i, "body": body})
        if i % 2_000 == 0:
            report(progress={"logged": i, "growth_mib": (rss() - before) / 2**20})
    return {"logged": count, "growth_mib": (rss() - before) / 2**20}


def spans(peer: str, url: str, count: int) -> dict[str, Any]:
    """µs per span on the span-ending thread: no processor first, then the pipeline."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    def per_span(provider: TracerProvider) -> float:
        tracer = provider.get_tracer("bench")
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for i in range(count // 5):
                with tracer.start_as_current_span(
                    "GET /cart", attributes={"http.route": "/cart", "n": i}
                ):
                    pass
            rounds.append((time.perf_counter() - started) / (count // 5) * 1e6)
        return statistics.median(rounds)

    baseline = per_span(TracerProvider(shutdown_on_exit=False))
    provider = TracerProvider(shutdown_on_exit=False)
    if peer in ("span-tinybird", "span-tinybird-batch"):
        from tinybird_export import TinybirdSpanExporter

        exporter = TinybirdSpanExporter(host=url, token=TOKEN)
        simple = peer == "span-tinybird"
        processor = SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
        cost = per_span(provider)
        processor.force_flush(60_000)
        exporter.force_flush(60_000)
        delivered = exporter.stats().sent
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exported = [0]

        class CountingOTLP(OTLPSpanExporter):  # type: ignore[misc]
            def export(self, batch: Any) -> Any:
                result = super().export(batch)
                if result.name == "SUCCESS":
                    exported[0] += len(batch)
                return result

        processor = BatchSpanProcessor(CountingOTLP(endpoint=f"{url}/v1/traces"))
        provider.add_span_processor(processor)
        cost = per_span(provider)
        processor.force_flush(60_000)
        delivered = exported[0]
    spans_made = count // 5 * 5
    return {"baseline": baseline, "cost": cost, "delivered": delivered, "spans": spans_made}
