"""The disk spool's figures: how fast a sender spills, and how long exit takes with the
endpoint down, with and without a spool.

Usage::

    python bench/spool_bench.py              # about a minute
    python bench/spool_bench.py --quick      # CI smoke

Each measurement runs in its own process against a closed loopback port (refused: the
lane fails at once) or a port that accepts and never answers (hanging).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

SPILL = textwrap.dedent("""
    import json, logging, sys, time
    from tinybird_export import TinybirdHandler
    log = logging.getLogger("bench"); log.propagate = False; log.setLevel(logging.INFO)
    handler = TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                              spool_dir=sys.argv[2], spool_max_bytes=4 << 30, exit_timeout=0)
    log.addHandler(handler)
    log.info("first"); handler.flush(2)  # the lane has failed once: it spills from now on
    seconds, n, started = float(sys.argv[3]), 0, time.monotonic()
    while time.monotonic() - started < seconds:
        for _ in range(1000):
            log.info("spilled %s", "x" * 300, extra={"n": n}); n += 1
        time.sleep(0.02)  # a steady producer: the sender thread needs the GIL too
    elapsed = time.monotonic() - started
    s = handler.stats()  # the sender keeps up to half the memory bound: the rest is spooled
    print(json.dumps({"logged": n, "spooled": s.spooled, "dropped": s.dropped,
                      "bytes": s.spool_bytes, "elapsed": elapsed}))
""")

EXIT = textwrap.dedent("""
    import logging, sys, time
    from tinybird_export import TinybirdHandler
    settings = {"spool_dir": sys.argv[2]} if sys.argv[2] != "-" else {}
    log = logging.getLogger("bench"); log.propagate = False; log.setLevel(logging.INFO)
    handler = TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                              flush_interval=60, timeout=30, **settings)
    log.addHandler(handler)
    for i in range(40_000):  # about 16 MiB: the memory bound's worth
        log.info("queued %s", "x" * 300, extra={"n": i})
    print(handler.stats().queued_bytes, flush=True)
    sys.stdout.flush()
    import os; os.write(1, b"exiting\\n")
""")


def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def run(code: str, *args: str, timeout: float = 120) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    return result.stdout + result.stderr, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    seconds = 2.0 if options.quick else 10.0
    scratch = tempfile.mkdtemp(prefix="spool-bench-")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, spool in {scratch}")
    try:
        out, _ = run(SPILL, closed_port(), os.path.join(scratch, "spill"), str(seconds))
        spill = json.loads(out.strip().splitlines()[0])
        raw = spill["spooled"] * 400 / 1e6  # about 400 bytes per event
        print(
            f"\nspilling, endpoint refusing: {spill['spooled'] / spill['elapsed']:,.0f} events/s "
            f"(about {raw / spill['elapsed']:.1f} MB/s raw, "
            f"{spill['bytes'] / 1e6 / spill['elapsed']:.1f} MB/s on disk, gzip) over "
            f"{spill['elapsed']:.1f} s; {spill['logged']:,} logged, {spill['dropped']:,} dropped"
        )
        hang = socket.socket()
        hang.bind(("127.0.0.1", 0))
        hang.listen(64)  # accepts, never answers
        hanging = f"http://127.0.0.1:{hang.getsockname()[1]}"
        print("\n| exit with 16 MiB queued | endpoint | seconds | what the exit said |")
        print("|---|---|---:|---|")
        for label, host in (("refused", closed_port()), ("hanging", hanging)):
            for spool in ("-", os.path.join(scratch, f"exit-{label}")):
                out, took = run(EXIT, host, spool)
                lines = [line for line in out.splitlines() if "at exit" in line] or [""]
                said = lines[-1]
                said = said.replace("tinybird-export: ", "")[:90]
                print(
                    f"| {'with' if spool != '-' else 'without'} spool | {label} | "
                    f"{took:.2f} | {said} |"
                )
        hang.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
