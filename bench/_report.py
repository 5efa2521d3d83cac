"""Tables, charts and docs from one ``compare.py`` run: every figure is the run's own.

A cell is the median over the rounds with the spread (min-max) in brackets; a run that hit
its cap, blocked or failed is spelled out in the cell rather than averaged in.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Callable
from importlib import metadata
from typing import Any

import _peers

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
