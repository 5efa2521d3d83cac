"""Per-span cost on the span-ending thread: TinybirdSpanExporter vs. the OTLP pipeline.

Usage: ``python bench/span_bench.py`` (needs the ``bench`` dependency group for the OTLP
exporter: ``pip install --group bench``). Both pipelines send to the same test server
(``/v0/events`` for ours, ``/v1/traces`` for OTLP/HTTP protobuf) running in another process;
the baseline is a TracerProvider with no span processor, measured in the same run. Also
reports the cost of trace correlation in the logging handler (a log call inside a span).
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from tinybird_export import TinybirdHandler, TinybirdSpanExporter

TOKEN = "bench-token"
SPANS = 20_000
ROUNDS = 7


def one_round(tracer_provider: TracerProvider) -> float:
    """Microseconds per span over one round of spans."""
    tracer = tracer_provider.get_tracer("bench")
    count = SPANS // ROUNDS
    started = time.perf_counter()
    for i in range(count):
        with tracer.start_as_current_span("GET /cart", attributes={"http.route": "/cart", "n": i}):
            pass
    return (time.perf_counter() - started) / count * 1e6


def log_cost(logger: logging.Logger, inside: Callable[[], object] | None) -> float:
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(5_000):
            logger.info("user %s did %s", "u1", "x", extra={"href": "/a", "n": 1})
        rounds.append((time.perf_counter() - started) / 5_000 * 1e6)
    return statistics.median(rounds)


def measure(pipeline: str, url: str) -> dict[str, float]:
    """In this process: the baseline first (no span processor), then ``pipeline``."""
    baseline = statistics.median(
        one_round(TracerProvider(shutdown_on_exit=False)) for _ in range(ROUNDS)
    )
    provider = TracerProvider(shutdown_on_exit=False)
    if pipeline == "tinybird":
        exporter = TinybirdSpanExporter(host=url, token=TOKEN)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        cost = statistics.median(one_round(provider) for _ in range(ROUNDS))
        exporter.force_flush(60_000)
        delivered = exporter.stats().sent
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exported = [0]

        class CountingOTLP(OTLPSpanExporter):
            def export(self, spans):  # type: ignore[no-untyped-def]
                result = super().export(spans)
                if result.name == "SUCCESS":
                    exported[0] += len(spans)
                return result

        processor = BatchSpanProcessor(CountingOTLP(endpoint=f"{url}/v1/traces"))
        provider.add_span_processor(processor)
        cost = statistics.median(one_round(provider) for _ in range(ROUNDS))
        processor.force_flush(60_000)
        delivered = exported[0]
    return {"baseline": baseline, "cost": cost, "delivered": delivered}


def correlation(url: str) -> tuple[float, float]:
    """A handler log call outside and inside an active span, µs."""
    provider = TracerProvider(shutdown_on_exit=False)
    handler = TinybirdHandler(datasource="bench_logs", host=url, token=TOKEN)
    logger = logging.getLogger("bench.correlation")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    outside = log_cost(logger, None)
    with provider.get_tracer("bench").start_as_current_span("request"):
        inside = log_cost(logger, None)
    handler.close()
    return outside, inside


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        result = measure(sys.argv[2], sys.argv[3])
        print(orjson.dumps(result).decode())
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinybird_export.testing", "--no-record", "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    runs: dict[str, list[dict[str, float]]] = {"tinybird": [], "otlp": []}
    try:
        for _ in range(3):
            for pipeline in runs:
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", pipeline, url],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                ).stdout
                runs[pipeline].append(orjson.loads(out.strip().splitlines()[-1]))
        outside, inside = correlation(url)
    finally:
        proc.terminate()
        proc.wait(10)
    total = SPANS // ROUNDS * ROUNDS
    print(
        f"python {sys.version.split()[0]}; each pipeline measured in its own process, 3 "
        f"processes each, {total:,} spans per process; medians\n"
    )
    print("| pipeline | baseline µs/span | pipeline µs/span | added µs/span | delivered |")
    print("|---|---:|---:|---:|---|")
    names = {
        "tinybird": "SimpleSpanProcessor(TinybirdSpanExporter())",
        "otlp": "BatchSpanProcessor(OTLPSpanExporter())",
    }
    for pipeline, results in runs.items():
        base = statistics.median(r["baseline"] for r in results)
        cost = statistics.median(r["cost"] for r in results)
        added = statistics.median(r["cost"] - r["baseline"] for r in results)
        delivered = ", ".join(f"{int(r['delivered']):,}" for r in results)
        print(
            f"| {names[pipeline]} | {base:.2f} | {cost:.2f} | {added:.2f} | "
            f"{delivered} of {total:,} each |"
        )
    print("\n| TinybirdHandler log call | µs per call (median) |")
    print("|---|---:|")
    print(f"| outside any span | {outside:.2f} |")
    print(f"| inside a span (trace_id/span_id added) | {inside:.2f} |")


if __name__ == "__main__":
    main()
