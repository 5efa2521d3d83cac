"""tinybird-export against the peers, side by side, on the same machine and the same sink.

Usage::

    pip install -e . --group bench          # the peers, the OTLP exporters, matplotlib
    python bench/compare.py                 # 3 rounds of everything; prints the tables
    python bench/compare.py --write-docs    # also docs/benchmarks.md, its charts and the
                                            # summary in docs/performance.md, from the same figures
    python bench/compare.py --quick --rounds 1 --peers null,tinybird-export   # smoke (CI)

Every measurement runs in its own process with a hard time cap, and the rounds interleave
the peers so that the machine's drift hits them alike; each figure is the median over the
rounds, with the spread (min-max). A child killed at its cap is reported with what it had
done by then; a peer that cannot run here is reported with the reason.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _docs
import _peers
import _report
import _sink

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
CAPS = {
    "caller": 60,
    "throughput": 60,
    "exit": 60,
    "hang": 30,
    "memory": 60,
    "memory-large": 60,
    "span": 120,
}
KINDS = ("caller", "throughput", "exit", "hang", "memory", "memory-large")


@dataclass
class Child:
    """What one measurement process said and did."""

    result: dict[str, Any] | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    error: str = ""
    capped: bool = False
    ended: float = 0.0


def run_child(
    kind: str,
    peer: str,
    url: str,
    cap: float,
    quick: bool,
    linger: Callable[[dict[str, Any], float], None] | None = None,
) -> Child:
    """Run one measurement in its own process, reading its reports until it ends or ``cap``.

    ``linger(result, deadline)`` runs once the child has reported, before it is killed: a
    shipper may still be sending what its flush handed to its own threads.
    """
    child = Child()
    command = [sys.executable, str(HERE), "--measure", kind, peer, url]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [*command, *(["--quick"] if quick else [])],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + cap
        try:
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
                if not ready:
                    child.capped = True
                    break
                line = proc.stdout.readline()
                if not line:  # stdout closed: the interpreter is finishing
                    proc.wait(max(deadline - time.monotonic(), 0))
                    child.ended = time.monotonic()
                    break
                if line.startswith("{"):
                    message = json.loads(line)
                    child.progress = message.get("progress", child.progress)
                    child.result = message.get("result", child.result)
                    if "mark" in message:
                        child.marks[message["mark"]] = time.monotonic()
                    if child.result is not None and kind not in ("exit", "hang"):
                        if linger is not None:
                            linger(child.result, deadline)
                        break  # measured; how it exits is the exit rows' business
        except subprocess.TimeoutExpired:
            child.capped = True
        finally:
            proc.kill()
            proc.wait()
        if not child.capped and child.result is None:
            stderr.seek(0)
            lines = stderr.read().decode("utf-8", "replace").strip().splitlines()
            child.error = (lines or [f"exit status {proc.returncode}"])[-1][:200]
    return child


def start_sink(hang: bool) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--sink", *(["--hang"] if hang else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def sink_counts(url: str) -> dict[str, float]:
    import urllib3

    return json.loads(urllib3.request("GET", url, timeout=5).data)  # type: ignore[no-any-return]


def idle_counts(url: str, cap: float = 10) -> dict[str, float]:
    """The sink's counters once it is counting nothing and nothing arrived for 0.3 s: a
    request of the previous (killed) child must not count for the next measurement.
    """
    deadline = time.monotonic() + cap
    while True:
        counts = sink_counts(url)
        idle = not counts["active"] and time.time() - counts["last"] > 0.3
        if idle or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)  # polling another process, with a deadline


def settle(url: str, before: dict[str, float], expect: float, cap: float) -> dict[str, float]:
    """The sink's counters once ``expect`` more records arrived, or nothing did for 3 s
    (counted from the later of the last arrival and this call), or ``cap`` seconds passed.
    """
    deadline = time.monotonic() + cap
    since = time.time()
    while True:
        counts = sink_counts(url)
        quiet = time.time() - max(counts["last"], since) > 3
        if counts["records"] - before["records"] >= expect or quiet or time.monotonic() > deadline:
            return {key: counts[key] - before[key] for key in ("records", "requests", "bytes")} | {
                "last": counts["last"]
            }
        time.sleep(0.2)  # polling another process, with a deadline


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def measure_once(kind: str, peer: str, sinks: dict[str, str], quick: bool) -> dict[str, Any]:
    """One run of one measurement, as a flat dict of figures (or ``error``/``capped``)."""
    cap = CAPS[kind] / (3 if quick else 1)
    if kind in ("memory", "memory-large"):
        child = run_child(kind, peer, closed_port_url(), cap, quick)
        outcome = child.result or child.progress
        return {**outcome, "capped": child.capped, "error": child.error}
    url = sinks["hang" if kind == "hang" else "fast"]
    before = idle_counts(sinks["fast"])
    if kind == "throughput":
        return measure_throughput(peer, url, before, cap, quick)
    child = run_child(kind, peer, url, cap, quick)
    outcome: dict[str, Any] = {"capped": child.capped, "error": child.error}
    if kind in ("caller", "span"):
        return {**(child.result or child.progress), **outcome}
    logged_at = child.marks.get("logged")  # exit, hang
    outcome["logged"] = (child.result or child.progress).get("logged", 0)
    outcome["blocked"] = logged_at is None  # its last log call never returned
    if logged_at is not None and not child.capped:
        outcome["exit_s"] = child.ended - logged_at
    if kind == "exit":
        outcome["delivered"] = settle(url, before, _peers.EXIT_RECORDS, 10)["records"]
    return outcome


def measure_throughput(
    peer: str, url: str, before: dict[str, float], cap: float, quick: bool
) -> dict[str, Any]:
    """Rates of what reached the sink; the child lingers while the sink still receives."""
    child = run_child(
        "throughput",
        peer,
        url,
        cap,
        quick,
        linger=lambda result, deadline: settle(
            url, before, result.get("logged", 0), max(deadline - time.monotonic(), 0)
        ),
    )
    done = child.result or child.progress
    arrived = settle(url, before, done.get("logged", 0), 5)
    seconds = arrived["last"] - done["started"] if arrived["records"] else 0
    return {
        "capped": child.capped,
        "error": child.error,
        "logged": done.get("logged", 0),
        "delivered": arrived["records"],
        "seconds": seconds,
        "events_s": arrived["records"] / seconds if seconds > 0 else 0.0,
        "mb_s": arrived["bytes"] / seconds / 1e6 if seconds > 0 else 0.0,
        "requests_s": arrived["requests"] / seconds if seconds > 0 else 0.0,
    }


def orchestrate(peers: list[str], rounds: int, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for peer in peers:
        reason = _peers.unavailable(peer)
        results[peer] = {"skipped": reason} if reason else {}
    runnable = [peer for peer in peers if "skipped" not in results[peer]]
    fast, fast_url = start_sink(hang=False)
    hang, hang_url = start_sink(hang=True)
    sinks = {"fast": fast_url, "hang": hang_url}
    started = time.monotonic()
    try:
        for number in range(1, rounds + 1):
            for peer in runnable:
                kinds = ("span",) if peer in _peers.SPAN_PEERS else KINDS
                for kind in kinds:
                    outcome = measure_once(kind, peer, sinks, quick)
                    results[peer].setdefault(kind, []).append(outcome)
                print(
                    f"  round {number}/{rounds}: {peer} ({time.monotonic() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for proc in (fast, hang):
            proc.kill()
            proc.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--peers", default=",".join(_peers.LOG_PEERS + _peers.SPAN_PEERS), help="comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="docs/benchmarks.md, docs/performance.md's summary",
    )
    parser.add_argument(
        "--from-json", metavar="PATH", help="render a recorded run (docs/benchmarks.json) again"
    )
    options = parser.parse_args()
    if options.sink:
        _sink.serve(options.hang)
        return
    if options.measure:
        _peers.measure(*options.measure, quick=options.quick)
        return
    if options.from_json:  # the same figures, rendered again: no measuring
        recorded = json.loads(Path(options.from_json).read_text())
        print(_report.render(recorded))
        if options.write_docs:
            _docs.write_docs(recorded, ROOT)
        return
    peers = options.peers.split(",")
    unknown = sorted(set(peers) - set(_peers.LABELS))
    if unknown:
        parser.error(
            f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(_peers.LABELS)}"
        )
    command = "python bench/compare.py " + " ".join(sys.argv[1:])
    run = {
        "command": command.strip(),
        "machine": _report.machine(),
        "rounds": options.rounds,
        "quick": options.quick,
        "caps": CAPS,
        "results": orchestrate(peers, options.rounds, options.quick),
    }
    print(_report.render(run))
    if options.write_docs:
        _docs.write_docs(run, ROOT)
        print(f"\nwrote {ROOT / 'docs'}", file=sys.stderr)


if __name__ == "__main__":
    main()
