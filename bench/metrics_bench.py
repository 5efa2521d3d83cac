"""An export of N metric data points: TinybirdMetricExporter against the SDK's OTLP/HTTP
metric exporter, in the same run, to the same local sink (``_sink``, in its own process).

Usage: ``python bench/metrics_bench.py [--points 10000] [--rounds 7]`` (needs the ``bench``
dependency group: ``opentelemetry-exporter-otlp-proto-http``).

One ``MetricsData`` of N points is collected once from the real SDK (``InMemoryMetricReader``;
N/2 counter points and N/2 histogram points with the default 16 buckets, 20 instruments of
N/20 attribute sets each), then each exporter exports that same object, round after round,
interleaved. Per 1,000 points it reports the SDK's own collection (the baseline: what
producing the points costs), ``export()`` on the reader's thread (ours converts and queues;
OTLP encodes, POSTs and waits for the answer), the time until the sink has every point, and
the bytes on the wire (what the sink read, before gunzip) and raw (after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sink

HERE = Path(__file__).resolve()


def collect(points: int) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "bench"}),
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("bench", "1.0")
    per_instrument = max(points // 20, 1)  # under the SDK's default cardinality limit (2,000)
    for index in range(10):
        counter = meter.create_counter(f"requests.{index}")
        histogram = meter.create_histogram(f"latency.{index}", "ms")
        for series in range(per_instrument):
            attributes = {"route": f"/route/{series}", "method": "GET", "status": 200}
            counter.add(series + 1, attributes)
            histogram.record(series % 300 + 0.5, attributes)
    started = time.perf_counter()
    data = reader.get_metrics_data()
    collect_seconds = time.perf_counter() - started
    provider.shutdown()
    return data, collect_seconds


def count_points(data: Any) -> int:
    return sum(
        len(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


def sink_counts(url: str) -> dict[str, float]:
    return json.loads(urllib3.request("GET", url, timeout=5).data)  # type: ignore[no-any-return]


def wait_for_records(url: str, target: float, cap: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + cap
    while True:
        counts = sink_counts(url)
        if (counts["records"] >= target and not counts["active"]) or time.monotonic() > deadline:
            return counts
        time.sleep(0.005)  # polling another process, with a deadline


def one_round(
    export: Callable[[Any], Any], flush: Callable[[], Any], data: Any, url: str, points: int
) -> dict[str, float]:
    before = sink_counts(url)
    started = time.perf_counter()
    export(data)
    exported = time.perf_counter() - started
    flush()
    after = wait_for_records(url, before["records"] + points)
    delivered = time.perf_counter() - started
    return {
        "export": exported,
        "delivered": delivered,
        "records": after["records"] - before["records"],
        "requests": after["requests"] - before["requests"],
        "wire_bytes": after["wire_bytes"] - before["wire_bytes"],
        "bytes": after["bytes"] - before["bytes"],
    }


def exporters(url: str) -> dict[str, tuple[Callable[[Any], Any], Callable[[], Any], Any]]:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    from tinybird_export import TinybirdMetricExporter

    ours = TinybirdMetricExporter(host=url, token="bench")
    otlp = OTLPMetricExporter(endpoint=f"{url}/v1/metrics")
    otlp_gzip = OTLPMetricExporter(endpoint=f"{url}/v1/metrics", compression=Compression.Gzip)
    return {
        "TinybirdMetricExporter (gzip level 1, the default)": (
            ours.export,
            lambda: ours.force_flush(60_000),
            ours,
        ),
        "OTLPMetricExporter, http/protobuf (no compression, the default)": (
            otlp.export,
            lambda: None,
            otlp,
        ),
        "OTLPMetricExporter, http/protobuf, gzip": (otlp_gzip.export, lambda: None, otlp_gzip),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.sink:
        _sink.serve(hang=False)
        return
    sink = subprocess.Popen(
        [sys.executable, str(HERE), "--sink"], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout is not None
    url = sink.stdout.readline().strip()
    try:
        data, _ = collect(options.points)
        points = count_points(data)
        collects = [collect(options.points)[1] for _ in range(3)]
        contenders = exporters(url)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        for export, flush, _ in contenders.values():  # warm-up: connections, imports
            one_round(export, flush, data, url, points)
        for _ in range(options.rounds):  # interleaved, so that drift hits every contender
            for name, (export, flush, _) in contenders.items():
                results[name].append(one_round(export, flush, data, url, points))
        for _, _, exporter in contenders.values():
            exporter.shutdown()
    finally:
        sink.terminate()
        sink.wait(10)
    report(options, points, collects, results)


def report(
    options: argparse.Namespace,
    points: int,
    collects: list[float],
    results: dict[str, list[dict[str, float]]],
) -> None:
    per_k = 1000 / points
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "orjson")
    )
    cpu = os.cpu_count()
    print(
        f"python {platform.python_version()}, {cpu} CPUs, {versions}; {points:,} points "
        f"(half counter, half 16-bucket histogram), medians of {options.rounds} interleaved "
        "rounds; the sink in its own process\n"
    )
    baseline = statistics.median(collects) * 1e3 * per_k
    print(f"SDK's own collection of the points (baseline): {baseline:.2f} ms per 1,000 points\n")
    print(
        "| per 1,000 points | export() on the reader thread, ms | until all arrived, ms "
        "| bytes on the wire | raw bytes | requests |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rounds in results.items():
        assert all(r["records"] == points for r in rounds), (name, rounds)
        median = _medians(rounds)
        print(
            f"| {name} | {median('export') * 1e3 * per_k:.2f} | "
            f"{median('delivered') * 1e3 * per_k:.2f} | {median('wire_bytes') * per_k:,.0f} | "
            f"{median('bytes') * per_k:,.0f} | {median('requests') * per_k:.2f} |"
        )


def _medians(rounds: list[dict[str, float]]) -> Callable[[str], float]:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    return median


if __name__ == "__main__":
    main()
