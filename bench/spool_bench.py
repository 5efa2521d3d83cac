"""The disk spool's figures: how fast a sender spills, how long exit takes with the endpoint
down, with and without a spool, and the scenarios of issue 24: how long many small files
take to drain, how far concurrent writers pass ``spool_max_bytes``, and what a read-only
blip of the directory during a drain does.

Usage::

    python bench/spool_bench.py              # everything (a few minutes)
    python bench/spool_bench.py --quick      # CI smoke
    python bench/spool_bench.py --only drain,writers,blip
    PYTHONPATH=<a checkout of another commit> python bench/spool_bench.py --only drain

Each measurement runs in its own process against a closed loopback port (refused: the
lane fails at once), a port that accepts and never answers (hanging), or the package's own
test server (``tinybird_export.testing.EventsServer``), whichever version is imported.
The blip needs root (``chattr +i``) or a normal user (``chmod``) to make a directory
refuse changes; it is skipped otherwise.
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
from typing import Any

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
    parser.add_argument("--only", default="spill,exit,drain,writers,blip")
    options = parser.parse_args()
    only = set(options.only.split(","))
    seconds = 2.0 if options.quick else 10.0
    scratch = tempfile.mkdtemp(prefix="spool-bench-")
    import tinybird_export

    where = os.path.dirname(os.path.dirname(tinybird_export.__file__))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, spool in {scratch}")
    print(f"tinybird_export from {where} ({_commit(where)})")
    try:
        if "drain" in only:
            drain_small_files(scratch, 1_000 if options.quick else 10_000)
        if "writers" in only:
            racing_writers(scratch, 3 if options.quick else 5)
        if "blip" in only:
            read_only_blip(scratch)
        if not only & {"spill", "exit"}:
            return
        out, _ = run(SPILL, closed_port(), os.path.join(scratch, "spill"), str(seconds))
        spill = json.loads(out.strip().splitlines()[0])
        if "spill" not in only:
            return
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


WRITE_FILES = textwrap.dedent("""
    import os, sys
    os.fsync = lambda fd: None  # the set-up only: the drain is what is measured
    from tinybird_export._spool import Spool
    spool = Spool(sys.argv[1], 4 << 30)
    owner = (getattr(spool, "identity", None) or os.getpid(), 0)  # older versions: the pid
    for i in range(int(sys.argv[3])):
        line = b'{"event":"old %d","n":%d}\\n' % (i, i)
        assert spool.write(line, 1, sys.argv[2], "bench", owner)
""")

DRAIN = textwrap.dedent("""
    import sys, time
    from tinybird_export import TinybirdHandler
    handler = TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                              spool_dir=sys.argv[2], allow_http=True)
    deadline = time.monotonic() + float(sys.argv[3])
    while handler.stats().unspooled < int(sys.argv[4]) and time.monotonic() < deadline:
        handler.flush(1)
    print(handler.stats().unspooled)
""")


def drain_small_files(scratch: str, count: int) -> None:
    """N one-event files left by earlier processes: how long until a new process has sent
    them all, and in how many requests."""
    from tinybird_export.testing import EventsServer

    directory = os.path.join(scratch, "drain")
    with EventsServer(token=None, record=False) as server:
        run(WRITE_FILES, directory, server.url, str(count), timeout=600)
        before = server.request_count
        out, took = run(DRAIN, server.url, directory, "300", str(count), timeout=600)
        requests = server.request_count - before
        arrived = server.rows_accepted
    print(
        f"\ndraining {count:,} one-event spool files: {took:.1f} s (process start-up "
        f"included), {requests:,} requests, {arrived:,} events arrived, {out.split()[-1]} "
        "counted unspooled"
    )


RACER = textwrap.dedent("""
    import logging, os, sys
    from tinybird_export import TinybirdHandler
    log = logging.getLogger("bench"); log.propagate = False; log.setLevel(logging.INFO)
    log.addHandler(TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                                   spool_dir=sys.argv[2], spool_max_bytes=int(sys.argv[3]),
                                   batch_max_rows=200, allow_http=True, exit_timeout=2))
    for i in range(6000):  # about 0.7 MiB once gzipped: barely compressible
        log.info("racing %d %s", i, os.urandom(100).hex())
""")


def racing_writers(scratch: str, rounds: int) -> None:
    """Eight processes spill at exit into one directory at once: how far past
    ``spool_max_bytes`` the directory ends up."""
    bound = 1 << 20
    ratios = []
    for attempt in range(rounds):
        directory = os.path.join(scratch, f"race-{attempt}")
        host = closed_port()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, host, directory, str(bound)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(8)
        ]
        for proc in procs:
            proc.wait(timeout=300)
        held = sum(
            entry.stat().st_size for entry in os.scandir(directory) if ".tbspool" in entry.name
        )
        ratios.append(held / bound)
    print(
        f"\n8 writers spilling ~0.7 MiB each at once, spool_max_bytes 1 MiB, {rounds} rounds: "
        f"directory at {', '.join(f'{r:.2f}' for r in ratios)} x the bound (max {max(ratios):.2f})"
    )


BLIP = textwrap.dedent("""
    import json, logging, sys, time
    from tinybird_export import TinybirdHandler
    log = logging.getLogger("bench"); log.propagate = False; log.setLevel(logging.INFO)
    handler = TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                              spool_dir=sys.argv[2], batch_max_rows=50, flush_interval=0.05,
                              allow_http=True, exit_timeout=3)
    log.addHandler(handler)
    print("ready", flush=True)
    sys.stdin.readline()  # the directory turned read-only, the first file was acknowledged
    deadline = time.monotonic() + 10
    while handler.stats().unspooled < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    print("acknowledged", flush=True)
    sys.stdin.readline()  # writable again
    for i in range(1000):
        log.info("new %d", i)
    flushed = handler.flush(10)
    s = handler.stats()
    print(json.dumps({"flushed": flushed, "dropped": s.dropped_by_reason}), flush=True)
""")


def read_only_blip(scratch: str) -> None:
    """Issue 24's read-only blip: 500 events spooled in 10 files; a new process sends the
    first one; the directory refuses changes before its answer arrives, then is writable
    again; 1,000 new events are logged; then a restart sends what is left."""
    from tinybird_export.testing import EventsServer, Reply

    directory = os.path.join(scratch, "blip")
    freeze, thaw = _refuse_changes(directory)
    if freeze is None:
        print("\nread-only blip: skipped (cannot make a directory refuse changes here)")
        return
    with EventsServer(token=None) as server:
        server.respond(Reply(status=503))
        run(BLIP_WRITER, server.url, directory)
        server.reset()
        server.respond(Reply(hang=True))
        proc = subprocess.Popen(
            [sys.executable, "-c", BLIP, server.url, directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdout.readline()
            # The first file's request held (the writer's 503s count as arrivals too).
            server.wait_for(lambda: server.arrivals > len(server.requests), 20)
            freeze()
            server.release()
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.stdout.readline()
            thaw()
            proc.stdin.write("\n")
            proc.stdin.flush()
            result = json.loads(proc.stdout.readline() or "{}")
            err = proc.communicate(timeout=60)[1]
        finally:
            thaw()
            proc.kill()
        new = sum(1 for e in server.events() if e["event"].startswith("new "))
        run(BLIP_RESTART, server.url, directory)
        old = [e["event"] for e in server.events() if e["event"].startswith("old ")]
    print(
        f"\nread-only blip during a drain: {new:,} of 1,000 new events delivered, flush(10) "
        f"{result.get('flushed')}, dropped {result.get('dropped')}, exit "
        f"{'with a traceback' if 'Traceback' in err else 'clean'}; after a restart "
        f"{len(set(old))} of 500 spooled events delivered, {len(old) - len(set(old))} duplicated"
    )


BLIP_WRITER = textwrap.dedent("""
    import logging, sys
    from tinybird_export import TinybirdHandler
    log = logging.getLogger("bench"); log.propagate = False
    log.addHandler(TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                                   spool_dir=sys.argv[2], batch_max_rows=50,
                                   allow_http=True))
    for i in range(500):
        log.warning("old %d", i)
""")

BLIP_RESTART = textwrap.dedent("""
    import sys, time
    from tinybird_export import TinybirdHandler
    handler = TinybirdHandler(datasource="bench", token="t", host=sys.argv[1],
                              spool_dir=sys.argv[2], allow_http=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not handler.flush(1):
        pass
    time.sleep(2)  # an older version sends the spool in the background only
""")


def _refuse_changes(directory: str) -> tuple[Any, Any]:
    """Ways to make ``directory`` refuse changes and take them again (None if not here)."""
    os.makedirs(directory, exist_ok=True)
    if os.geteuid() != 0:
        return (lambda: os.chmod(directory, 0o500)), (lambda: os.chmod(directory, 0o700))

    def chattr(flag: str) -> None:
        subprocess.run(["chattr", flag, directory], capture_output=True, check=False)

    chattr("+i")
    try:
        open(os.path.join(directory, "probe"), "w").close()
    except OSError:
        chattr("-i")
        return (lambda: chattr("+i")), (lambda: chattr("-i"))
    os.unlink(os.path.join(directory, "probe"))
    return None, None


def _commit(where: str) -> str:
    done = subprocess.run(
        ["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "not a git checkout"


if __name__ == "__main__":
    main()
