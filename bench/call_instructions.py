"""Instructions a logging call costs on the caller's thread, counted by valgrind (callgrind).

Usage::

    python bench/call_instructions.py            # 20,000 calls per handler
    python bench/call_instructions.py --calls 5000

Instruction counts do not drift with the machine's load the way the clock does: for each
handler (NullHandler, QueueHandler with its listener, TinybirdHandler with
``background=False``, so that no sender thread runs and nothing is sent), a child process
makes ``--calls`` calls under callgrind, and another makes none; the difference divided by
the calls is the cost of one call, and NullHandler's is subtracted from the others. Needs
``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import queue
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import bench_logger, log_call

KINDS = ("null", "queue", "tb")


def child(kind: str, calls: int) -> None:
    """Make ``calls`` logging calls through a handler of ``kind``."""
    listener = None
    if kind == "null":
        handler: logging.Handler = logging.NullHandler()
    elif kind == "queue":
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.handlers.QueueHandler(records)
        listener = logging.handlers.QueueListener(records, logging.NullHandler())
        listener.start()
    else:
        from tinybird_export import TinybirdHandler

        handler = TinybirdHandler(
            datasource="bench",
            host="http://127.0.0.1:9",
            token="bench-token",
            background=False,  # no sender thread: only the caller's work is counted
            exit_timeout=0,
            queue_max_events=10**7,
            queue_max_bytes=1 << 30,
        )
    logger = bench_logger(handler)
    log_call(logger)  # warm: the first call fills caches (call-site fields, imports)
    for i in range(calls):
        log_call(logger, i)
    if listener is not None:
        listener.stop()
    os._exit(0)  # no exit drain: both children end alike, whatever they queued


def instructions(kind: str, calls: int) -> int:
    """Instructions executed by a child making ``calls`` calls (the whole process)."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            kind,
            "--calls",
            str(calls),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    assert found, done.stderr
    return int(found.group(1))


def main() -> None:
    """Count, and print a table of instructions per call."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--child", choices=KINDS)
    options = parser.parse_args()
    if options.child:
        child(options.child, options.calls)
        return
    per_call = {}
    for kind in KINDS:
        per_call[kind] = (instructions(kind, options.calls) - instructions(kind, 0)) / (
            options.calls
        )
    print(f"python {sys.version.split()[0]}, {options.calls} calls, callgrind instructions")
    print("\n| per logger.info with extras | instructions | added over NullHandler |")
    print("|---|---:|---:|")
    for kind, label in zip(KINDS, ("NullHandler", "QueueHandler", "TinybirdHandler"), strict=True):
        print(f"| {label} | {per_call[kind]:,.0f} | {per_call[kind] - per_call['null']:,.0f} |")
    added = (per_call["tb"] - per_call["null"]) / (per_call["queue"] - per_call["null"])
    print(f"\nTinybirdHandler adds {added:.3f}x what QueueHandler adds.")


if __name__ == "__main__":
    main()
