"""Charts, ``docs/benchmarks.md`` and ``docs/performance.md``'s summary from one compare.py run.

Everything here renders figures ``_report`` already computed; nothing is measured.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import _peers
from _report import (
    added_over_null,
    cell,
    exit_cell,
    median_of,
    memory_cell,
    render,
    runs,
)

SUMMARY_BEGIN = "<!-- compare.py summary: generated, do not edit -->"
SUMMARY_END = "<!-- end of compare.py summary -->"
EXIT_BUDGET = 5.0  # tinybird-export's default exit_timeout, as configured in _peers


SHORT = {
    "null": "NullHandler",
    "queue": "QueueHandler",
    "tinybird-export": "tinybird-export",
    "tb-sdk-sync": "tb-sdk sync handler",
    "tb-sdk-queue": "tb-sdk queue handler",
    "otel": "OpenTelemetry OTLP/HTTP",
    "logstash-async": "python-logstash-async",
    "logtail": "logtail-python",
}


def short(peer: str) -> str:
    return SHORT.get(peer) or _peers.LABELS[peer]


def charts(run: dict[str, Any], directory: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    results, caps = run["results"], run["caps"]
    peers = [p for p in results if runs(results, p, "caller")]
    figure, axis = plt.subplots(figsize=(9, 5))
    for offset, (key, label, colour) in enumerate(
        [("median", "1 thread", "#3b82f6"), ("median8", "8 threads", "#94a3b8")]
    ):
        values = [[r[key] for r in runs(results, p, "caller") if key in r] for p in peers]
        middle = [statistics.median(v) if v else 0 for v in values]
        errors = [
            [m - min(v) if v else 0 for m, v in zip(middle, values, strict=True)],
            [max(v) - m if v else 0 for m, v in zip(middle, values, strict=True)],
        ]
        positions = [i + offset * 0.4 for i in range(len(peers))]
        axis.barh(positions, middle, height=0.4, xerr=errors, color=colour, label=label)
    axis.set_yticks([i + 0.2 for i in range(len(peers))], [short(p) for p in peers])
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("µs per call, log scale (median over rounds; whiskers: min–max)")
    axis.set_title("Caller cost of logger.info with extras, worker running")
    axis.legend()
    figure.tight_layout()
    figure.savefig(directory / "bench_caller.png", dpi=110)
    plt.close(figure)

    senders = [p for p in results if runs(results, p, "hang") and p not in _peers.REFERENCES]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    delivered = [
        statistics.median([r.get("delivered", 0) for r in runs(results, p, "exit")])
        / _peers.EXIT_RECORDS
        * 100
        for p in senders
    ]
    bars = left.barh(
        [short(p) for p in senders],
        delivered,
        color=["#10b981" if d >= 100 else "#f59e0b" for d in delivered],
    )
    left.bar_label(bars, labels=[f"{d:.1f}%" for d in delivered], padding=3, fontsize=8)
    left.set_xlim(0, 125)
    left.set_title(f"% of {_peers.EXIT_RECORDS:,} records delivered at exit", fontsize=10)
    left.set_xlabel("% (median over rounds)")
    left.invert_yaxis()
    seconds = []
    for p in senders:
        done = runs(results, p, "hang")
        seconds.append(
            max(
                r.get("exit_s", caps["hang"]) if not r.get("capped") else caps["hang"] for r in done
            )
        )
    bars = right.barh(
        [short(p) for p in senders],
        seconds,
        color=["#ef4444" if s >= caps["hang"] else "#10b981" for s in seconds],
    )
    right.bar_label(bars, labels=[f"{s:.1f} s" for s in seconds], padding=3, fontsize=8)
    right.set_xlim(0, caps["hang"] * 1.25)
    right.axvline(EXIT_BUDGET, color="#64748b", linestyle="--", linewidth=1)
    right.set_title("Seconds to exit, endpoint hanging", fontsize=10)
    right.set_xlabel(f"s, slowest round (dashed: 5 s budget; red: killed at {caps['hang']} s)")
    figure.suptitle("Exit behaviour")
    figure.tight_layout()
    figure.savefig(directory / "bench_exit.png", dpi=110)
    plt.close(figure)
    return ["bench_caller.png", "bench_exit.png"]


def throughput_summary(results: dict[str, Any], peer: str, caps: dict[str, Any]) -> str:
    rate = median_of(results, peer, "throughput", "events_s")
    if rate is None:
        return cell(results, peer, "throughput", "events_s", "{:,.0f}", caps)
    done = runs(results, peer, "throughput")
    capped = sum(1 for r in done if r.get("capped"))
    if not capped:
        return f"{rate:,.0f}"
    return f"{rate:,.0f} (flush killed at {caps['throughput']} s in {capped}/{len(done)} runs)"


def performance_summary(run: dict[str, Any]) -> str:
    """docs/performance.md's table: a few columns of the same run, with its command."""
    results, caps = run["results"], run["caps"]
    rows = [
        f"`{run['command']}`, {run['rounds']} rounds, {run['machine']['date']}, "
        f"{run['machine']['cores']}-core {run['machine']['cpu'] or 'machine'} "
        "(medians; the spread and the other figures are in docs/benchmarks.md):",
        "",
        "| shipper | µs added per call | events/s delivered | delivered at exit | "
        "exit s, hanging endpoint | RSS growth, endpoint down |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for peer, data in results.items():
        if peer in _peers.SPAN_PEERS or peer in _peers.REFERENCES:
            continue
        if "skipped" in data:
            rows.append(f"| {short(peer)} | cannot run here: {data['skipped']} | | | | |")
            continue
        added = added_over_null(results, peer)
        exit_runs = [r.get("delivered", 0) for r in runs(results, peer, "exit")]
        memory = memory_cell(results, peer, "memory", _peers.MEMORY_RECORDS, caps)
        growth = median_of(results, peer, "memory", "growth_mib")
        if growth is not None and not any(r.get("capped") for r in runs(results, peer, "memory")):
            memory = f"+{growth:,.1f} MiB"
        rows.append(
            f"| {short(peer)} | {f'+{statistics.median(added):,.2f}' if added else '-'} "
            f"| {throughput_summary(results, peer, caps)} "
            f"| {f'{statistics.median(exit_runs):,.0f}' if exit_runs else '-'} "
            f"of {_peers.EXIT_RECORDS:,} | {exit_cell(results, peer, 'hang', caps).split(' (')[0]} "
            f"| {memory} |"
        )
    spans = [
        f"{_peers.LABELS[p]} +{statistics.median(added):,.2f} µs "
        f"({min(r.get('delivered', 0) for r in runs(results, p, 'span')):,} of "
        f"{_peers.SPANS:,} delivered in the worst round)"
        for p in _peers.SPAN_PEERS
        if (added := [r["cost"] - r["baseline"] for r in runs(results, p, "span") if "cost" in r])
    ]
    if spans:
        rows += ["", "Added per span on the span-ending thread: " + "; ".join(spans) + "."]
    return "\n".join(rows)


READING = """## Reading it

Why the rows come out as they do (the figures are in the tables above):

- **Caller cost.** tinybird-export renders the message, collects the extras and encodes the
  NDJSON line inside `logger.info`, because the event must be frozen as it was when logged (a
  mutable extra changed afterwards must not leak into it) and because encoding is what lets the
  queue be bounded in bytes. `QueueHandler` and tinybird-python-sdk's
  `TinybirdLoggingQueueHandler` defer the record itself (the standard library's `prepare()` only
  formats the message), so they pay less on the caller's thread and everything later: the
  Tinybird queue handler then sends one request per record and delivers a small fraction of
  its records at exit. Both extras forms (top-level and `attributes`) are built by default;
  `extras="flat"` or `"attributes"` builds only one of them.
- **Throughput and requests.** One worker sends batches of up to 10,000 rows / 4 MiB, gzip
  level 1 (zlib releases the GIL while it compresses), so a tight loop is limited by the
  logging call, not by the pipeline; the Tinybird SDK handlers make one request per record.
- **Exit.** The exit drain sends what is queued within `exit_timeout` (5 s by default) and then
  says on stderr what it could not deliver; peers that retry inside their exit path (or whose
  logging call itself blocks on the network) run until they are killed.
- **Memory with the endpoint down.** tinybird-export keeps up to `queue_max_bytes` (16 MiB by
  default: tens of thousands of typical records, delivered when the endpoint recovers), in one
  contiguous buffer per batch, so RSS stays at the bound plus a small constant whatever the
  record size. OpenTelemetry (2,048 records) and logtail (1,000) bound by count: they use less
  with small records, drop the rest, and grow with the record size; python-logstash-async and
  tinybird-python-sdk's queue handler do not bound at all. tinybird-python-sdk's synchronous
  handler keeps nothing because each logging call waits for its own request.
- **Spans.** `SimpleSpanProcessor(TinybirdSpanExporter())` maps and encodes each span on the
  span-ending thread and queues it for the shared worker (no I/O there); OTLP's
  `BatchSpanProcessor` queues the span object and serialises on its own thread, dropping what
  does not fit its 2,048-span queue.
"""


def write_docs(run: dict[str, Any], root: Path) -> None:
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    images = charts(run, docs)
    (docs / "benchmarks.json").write_text(json.dumps(run, indent=1) + "\n")
    m = run["machine"]
    text = [
        "# Benchmarks against the peers",
        "",
        f"Command: `{run['command']}` (after `pip install -e . --group bench`), run on "
        f"{m['date']} on {m['cpu'] or 'this machine'} ({m['cores']} cores, {m['memory_gib']} "
        f"GiB, {m['platform']}, Python {m['python']}). Every figure below is what that run "
        "printed; `docs/benchmarks.json` holds the raw figures of every round.",
        "",
        "How each figure is measured (each measurement is its own process, with a hard cap):",
        "",
        "- *Caller cost*: each `logger.info` call timed on its own (`perf_counter_ns`), up to "
        "20,000 calls in one thread, then 2,500 from each of 8 threads, with the shipper's "
        "worker running and sending to the sink. *Added over NullHandler* is the difference "
        "from NullHandler in the same round.",
        "- *Throughput*: a tight logging loop for 5 s, then the shipper's flush; rate = records "
        "the sink counted / (last arrival − start). MB/s raw is the decompressed body in each "
        "shipper's own wire format (NDJSON, OTLP protobuf, JSON, msgpack).",
        f"- *Exit*: {_peers.EXIT_RECORDS:,} records logged, then a normal interpreter exit; "
        "delivered = records the sink counted. *Hanging endpoint*: the sink reads each request "
        f"and never answers; {_peers.HANG_RECORDS:,} records, seconds from the last log call to "
        "the end of the process.",
        "- *Memory*: RSS growth while logging to a closed port, after a warm-up.",
        "- *Spans*: µs per span with the pipeline minus a TracerProvider with no processor, in "
        "the same process.",
        "",
        render(run),
        "",
        *[f"![{image}]({image})\n" for image in images],
        READING,
    ]
    (docs / "benchmarks.md").write_text("\n".join(text))
    performance = docs / "performance.md"
    content = performance.read_text()
    start, end = content.index(SUMMARY_BEGIN), content.index(SUMMARY_END)
    performance.write_text(
        content[: start + len(SUMMARY_BEGIN)]
        + "\n"
        + performance_summary(run)
        + "\n"
        + content[end:]
    )
