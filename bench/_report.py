"""Tables, charts and docs from one ``compare.py`` run: every figure is the run's own.

A cell is the median over the rounds with the spread (min-max) in brackets; a run that hit
its cap, blocked or failed is spelled out in the cell rather than averaged in.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import _peers

README_BEGIN = "<!-- compare.py summary: generated, do not edit -->"
README_END = "<!-- end of compare.py summary -->"
EXIT_BUDGET = 5.0  # tinybird-export's default exit_timeout, as configured in _peers
DISTRIBUTIONS = (
    "tinybird-python-sdk",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "python-logstash-async",
    "logtail-python",
    "orjson",
    "urllib3",
)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "versions": versions,
    }


# -- figures ----------------------------------------------------------------------------------


def runs(results: dict[str, Any], peer: str, kind: str) -> list[dict[str, Any]]:
    return results.get(peer, {}).get(kind, [])  # type: ignore[no-any-return]


def spread(values: list[float], fmt: str = "{:,.2f}") -> str:
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def median_of(results: dict[str, Any], peer: str, kind: str, key: str) -> float | None:
    values = [r[key] for r in runs(results, peer, kind) if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def cell(
    results: dict[str, Any],
    peer: str,
    kind: str,
    key: str,
    fmt: str,
    caps: dict[str, Any],
    by_the_cap: bool = False,
) -> str:
    """The median (spread) of ``key``, with the runs that have no figure spelled out; with
    ``by_the_cap``, a killed run's figure (what it had done by the cap) is counted too.
    """
    done = runs(results, peer, kind)
    values = [
        r[key]
        for r in done
        if isinstance(r.get(key), int | float) and (by_the_cap or not r.get("capped"))
    ]
    notes = []
    capped = [r for r in done if r.get("capped")]
    if capped:
        what = ", figures by then" if by_the_cap else ""
        notes.append(f"{len(capped)}/{len(done)} runs killed at the {caps[kind]} s cap{what}")
    failed = [r for r in done if r.get("error") and not r.get("capped")]
    if failed:
        notes.append(f"failed: {failed[0]['error']}")
    text = spread(values, fmt) if values else ""
    return "; ".join(([text] if text else []) + notes) or "-"


def added_over_null(results: dict[str, Any], peer: str) -> list[float]:
    """µs per call over NullHandler, round by round (same round, same machine state)."""
    null = runs(results, "null", "caller")
    return [
        mine["median"] - floor["median"]
        for mine, floor in zip(runs(results, peer, "caller"), null, strict=False)
        if "median" in mine and "median" in floor
    ]


def exit_cell(results: dict[str, Any], peer: str, kind: str, caps: dict) -> str:
    done = runs(results, peer, kind)
    seconds = [r["exit_s"] for r in done if isinstance(r.get("exit_s"), int | float)]
    text = [spread(seconds)] if seconds else []
    blocked = sum(1 for r in done if r.get("blocked"))
    running = sum(1 for r in done if r.get("capped") and not r.get("blocked"))
    if blocked:
        text.append(f"logging blocked, killed at {caps[kind]} s ({blocked}/{len(done)} runs)")
    if running:
        text.append(f"still running, killed at {caps[kind]} s ({running}/{len(done)} runs)")
    return "; ".join(text) or "-"


def memory_cell(
    results: dict[str, Any], peer: str, kind: str, total: int, caps: dict[str, Any]
) -> str:
    done = runs(results, peer, kind)
    whole = [r["growth_mib"] for r in done if not r.get("capped") and "growth_mib" in r]
    text = [spread(whole, "{:,.1f}") + " MiB"] if whole else []
    capped = [r for r in done if r.get("capped")]
    if capped:
        growth = statistics.median(r.get("growth_mib", 0) for r in capped)
        logged = statistics.median(r.get("logged", 0) for r in capped)
        text.append(
            f"+{growth:,.1f} MiB after {logged:,.0f} of {total:,} records, killed at "
            f"{caps[kind]} s ({len(capped)}/{len(done)} runs; medians)"
        )
    text += [f"failed: {r['error']}" for r in done if r.get("error") and not r.get("capped")]
    return "; ".join(text) or "-"


# -- tables ---------------------------------------------------------------------------------


def render(run: dict[str, Any]) -> str:
    results, caps = run["results"], run["caps"]
    m = run["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, "
        f"Python {m['python']}; {run['rounds']} round(s){', quick' if run['quick'] else ''}; "
        f"{m['date']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        "Each cell: median over the rounds (min–max).",
        "",
        '### Caller cost: µs per `logger.info("user %s did %s", ..., extra={...})`, worker running',
        "",
        "| shipper | 1 thread: median | added over NullHandler | 1 thread: p99 | "
        "8 threads: median | 8 threads: p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    log_peers = [p for p in results if p not in _peers.SPAN_PEERS]
    for peer in log_peers:
        if "skipped" in results[peer]:
            lines.append(
                f"| {_peers.LABELS[peer]} | cannot run here: {results[peer]['skipped']} |"
                + " |" * 4
            )
            continue

        def c(key: str, peer: str = peer) -> str:
            return cell(results, peer, "caller", key, "{:,.2f}", caps)

        lines.append(
            f"| {_peers.LABELS[peer]} | {c('median')} | {spread(added_over_null(results, peer))} "
            f"| {c('p99')} | {c('median8')} | {c('p99_8')} |"
        )
    lines += [
        "",
        "### Delivery: throughput to the sink, exit, memory with the endpoint down",
        "",
        "| shipper | events/s delivered | MB/s raw | requests/s | delivered of logged "
        f"| delivered at exit (of {_peers.EXIT_RECORDS:,}) | exit s, healthy endpoint "
        "| exit s, hanging endpoint | RSS growth, 200,000 records | RSS growth, "
        f"{_peers.LARGE_RECORDS:,} × {_peers.LARGE_BYTES // 1000} kB records |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for peer in log_peers:
        if "skipped" in results[peer]:
            continue
        if peer in _peers.REFERENCES:
            sends = ["n/a (sends nothing)"] * 5
        else:
            done = runs(results, peer, "throughput")
            ratio = [r["delivered"] / r["logged"] * 100 for r in done if r.get("logged")]
            sends = [
                cell(results, peer, "throughput", "events_s", "{:,.0f}", caps, by_the_cap=True),
                spread([r["mb_s"] for r in done if "mb_s" in r]),
                spread([r["requests_s"] for r in done if "requests_s" in r], "{:,.1f}"),
                spread(ratio, "{:.1f}%"),
                spread(
                    [r["delivered"] for r in runs(results, peer, "exit") if "delivered" in r],
                    "{:,.0f}",
                ),
            ]
        lines.append(
            "| "
            + " | ".join(
                [
                    _peers.LABELS[peer],
                    *sends,
                    exit_cell(results, peer, "exit", caps),
                    exit_cell(results, peer, "hang", caps),
                    memory_cell(results, peer, "memory", _peers.MEMORY_RECORDS, caps),
                    memory_cell(results, peer, "memory-large", _peers.LARGE_RECORDS, caps),
                ]
            )
            + " |"
        )
    span_peers = [p for p in results if p in _peers.SPAN_PEERS]
    if span_peers:
        lines += [
            "",
            "### Spans: µs per span on the span-ending thread",
            "",
            "| pipeline | no processor | with the pipeline | added | delivered |",
            "|---|---:|---:|---:|---:|",
        ]
        for peer in span_peers:
            if "skipped" in results[peer]:
                lines.append(
                    f"| {_peers.LABELS[peer]} | cannot run here: {results[peer]['skipped']} | | | |"
                )
                continue
            done = runs(results, peer, "span")
            added = [r["cost"] - r["baseline"] for r in done if "cost" in r]
            delivered = ", ".join(f"{r.get('delivered', 0):,}" for r in done)
            total = done[0].get("spans", 0) if done else 0
            base = cell(results, peer, "span", "baseline", "{:,.2f}", caps)
            cost = cell(results, peer, "span", "cost", "{:,.2f}", caps)
            lines.append(
                f"| {_peers.LABELS[peer]} | {base} | {cost} | {spread(added)} | "
                f"{delivered} of {total:,} |"
            )
    lines += ["", *verdicts(run)]
    return "\n".join(lines)


def exit_safety(results: dict[str, Any], caps: dict[str, Any], peers: list[str]) -> str:
    """Exit safety is three figures at once: delivered at exit, and the exit time with a
    healthy and with a hanging endpoint (slowest round; a killed run counts as the cap).
    A peer matches us when it does at least as well on all three (0.1 s of slack).
    """

    def figures(peer: str) -> tuple[float, float, float]:
        delivered = [r.get("delivered", 0) for r in runs(results, peer, "exit")]
        seconds = {
            kind: max(
                (r["exit_s"] if "exit_s" in r and not r.get("capped") else caps[kind])
                for r in runs(results, peer, kind)
            )
            for kind in ("exit", "hang")
        }
        return min(delivered, default=0), seconds["exit"], seconds["hang"]

    mine = figures("tinybird-export")
    matched = [
        _peers.LABELS[p]
        for p in peers
        if runs(results, p, "hang")
        and (lambda f: f[0] >= mine[0] and f[1] <= mine[1] + 0.1 and f[2] <= mine[2] + 0.1)(
            figures(p)
        )
    ]
    verdict = "ahead of every peer" if not matched else "matched by " + ", ".join(matched)
    return (
        f"- Exit safety (fewest delivered at exit; slowest exit, healthy / hanging endpoint): "
        f"tinybird-export {mine[0]:,} of {_peers.EXIT_RECORDS:,}, {mine[1]:.2f} s / "
        f"{mine[2]:.2f} s, {verdict}."
    )


def verdicts(run: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against this run's medians."""
    results = run["results"]
    ours = "tinybird-export"
    if ours not in results or "skipped" in results[ours]:
        return []
    sending = [
        p
        for p in results
        if p not in (*_peers.REFERENCES, *_peers.SPAN_PEERS, ours) and "skipped" not in results[p]
    ]

    def compare(
        label: str,
        value: Callable[[str], float | None],
        lower: bool,
        fmt: str,
        rounds: Callable[[str], list[float]] | None = None,
    ) -> str:
        """Ours against each sending peer; with ``rounds``, a peer ahead of us by less than
        the overlap of the two per-round ranges is reported as level, not ahead.
        """
        mine = value(ours)
        if mine is None:
            return f"- {label}: no figure for tinybird-export"
        behind, level = [], []
        for peer in sending:
            theirs = value(peer)
            if theirs is None or not (theirs < mine if lower else theirs > mine):
                continue
            text = f"{_peers.LABELS[peer]} {fmt.format(theirs)}"
            a, b = (rounds(ours), rounds(peer)) if rounds else ([], [])
            overlap = a and b and min(a) <= max(b) and min(b) <= max(a)
            (level if overlap else behind).append(text)
        verdict = "ahead of every peer" if not behind and not level else ""
        if behind:
            verdict = "NOT ahead of " + ", ".join(behind)
        if level:
            verdict += ("; " if verdict else "") + "level with " + ", ".join(level)
            verdict += " (per-round ranges overlap)"
        return f"- {label}: tinybird-export {fmt.format(mine)}, {verdict}."

    added = added_over_null(results, ours)
    added_median = statistics.median(added) if added else None

    def added_of(peer: str) -> float | None:
        values = added_over_null(results, peer)
        return statistics.median(values) if values else None

    def memory(kind: str) -> Callable[[str], float | None]:
        def of(peer: str) -> float | None:
            done = runs(results, peer, kind)
            # a capped run has not logged everything yet: its growth is a floor, not a figure
            if not done or any(r.get("capped") for r in done):
                return None
            return statistics.median(r["growth_mib"] for r in done)

        return of

    delivered = [r.get("delivered", 0) for r in runs(results, ours, "exit")]
    lines = [
        "### Targets, checked against this run's medians",
        "",
        compare(
            "Caller cost, µs added over NullHandler",
            added_of,
            True,
            "+{:,.2f}",
            rounds=lambda p: added_over_null(results, p),
        ),
        "- Added cost at most 3 µs per single-threaded call: "
        + ("met" if added_median is not None and added_median <= 3 else "NOT met")
        + (f" (+{added_median:.2f} µs)." if added_median is not None else "."),
        compare(
            "Throughput, events/s",
            lambda p: median_of(results, p, "throughput", "events_s"),
            False,
            "{:,.0f}",
        ),
        f"- Delivered at exit: {', '.join(f'{d:,}' for d in delivered)} of "
        f"{_peers.EXIT_RECORDS:,} in each round"
        + (" (100%)." if delivered and min(delivered) == _peers.EXIT_RECORDS else " (NOT 100%)."),
        exit_safety(results, run["caps"], sending),
        compare(
            "RSS growth, 200,000 records, endpoint down, MiB", memory("memory"), True, "+{:,.1f}"
        ),
        compare(
            f"RSS growth, {_peers.LARGE_RECORDS:,} × {_peers.LARGE_BYTES // 1000} kB "
            "records, endpoint down, MiB",
            memory("memory-large"),
            True,
            "+{:,.1f}",
        ),
        "",
        "A peer whose run was killed at its cap has no figure for that row and is left out of "
        "its comparison (the table above says what it had done by the cap).",
    ]
    return lines


# -- charts and docs ------------------------------------------------------------------------


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


def readme_summary(run: dict[str, Any]) -> str:
    """The README's table: a few columns of the same run, with its command."""
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
    readme = root / "README.md"
    content = readme.read_text()
    start, end = content.index(README_BEGIN), content.index(README_END)
    readme.write_text(
        content[: start + len(README_BEGIN)] + "\n" + readme_summary(run) + "\n" + content[end:]
    )
