"""Outcome of each fault: events sent, dropped, duplicated, exit time, memory growth.

Usage: ``python bench/faults.py``. Every scenario logs through a real TinybirdHandler to the
test server scripted with the fault (or to a closed port), and counts what arrived by
``event_id``, so duplicates from retries after a timeout are visible.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from tinybird_export import TinybirdHandler
from tinybird_export.testing import EventsServer, Reply

N = 1_000


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def in_process(name: str, script: Callable[[EventsServer], None], **settings: object) -> list[str]:
    with EventsServer(token="t") as server:
        script(server)
        handler = TinybirdHandler(datasource="faults", host=server.url, token="t", **settings)
        log = logging.getLogger(f"faults.{name}")
        log.propagate = False
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        started = time.monotonic()
        for i in range(N):
            log.info("n %d", i)
        handler.flush(60)
        elapsed = time.monotonic() - started
        # A request answered after the client gave up is stored late: wait for it.
        server.wait_for(lambda: server.request_count >= server.arrivals, 10)
        rows = server.events("faults")
        ids = [row["event_id"] for row in rows]
        stats = handler.stats()
        handler.close()
        return [
            name,
            f"{N:,}",
            f"{len(set(ids)):,}",
            f"{stats.dropped:,}",
            f"{len(ids) - len(set(ids)):,}",
            f"{elapsed:.2f} s to deliver",
            "-",
        ]


def at_exit(
    name: str, host: str, count: int, budget: float, server: EventsServer | None
) -> list[str]:
    code = textwrap.dedent(f"""
        import logging
        from tinybird_export import TinybirdHandler
        log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
        log.addHandler(TinybirdHandler(exit_timeout={budget}, timeout=30))
        for i in range({count}):
            log.info("n %d", i)
    """)
    env = {
        **os.environ,
        "TINYBIRD_HOST": host,
        "TINYBIRD_TOKEN": "t",
        "TINYBIRD_DATASOURCE": "faults",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    arrived = len({r["event_id"] for r in server.events("faults")}) if server else 0
    lost = result.stderr.strip().partition(" event(s)")[0].rpartition(" ")[2] or "0"
    return [
        name,
        f"{count:,}",
        f"{arrived:,}",
        lost,
        "0",
        f"process exited in {elapsed:.2f} s (budget {budget:g} s + start-up)",
        "-",
    ]


def outage_memory() -> list[str]:
    code = textwrap.dedent("""
        import logging, resource
        from tinybird_export import TinybirdHandler
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
        log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
        handler = TinybirdHandler(queue_max_bytes=8 * 1024 * 1024, exit_timeout=0)
        log.addHandler(handler)
        for i in range(2000):
            log.info("warm %s", "x" * 900)
        before = rss()
        for i in range(200_000):
            log.info("%s", "x" * 900, extra={"n": i})
        s = handler.stats()
        print(rss() - before, s.sent, s.dropped, s.queued + s.in_flight)
    """)
    env = {
        **os.environ,
        "TINYBIRD_HOST": closed_port(),
        "TINYBIRD_TOKEN": "t",
        "TINYBIRD_DATASOURCE": "faults",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    growth, sent, dropped, queued = map(int, out)
    return [
        "endpoint refusing for 200,000 ~1 KB records (bound 8 MiB)",
        "202,000",
        f"{sent:,}",
        f"{dropped:,} (queued {queued:,})",
        "0",
        "-",
        f"{growth / 2**20:.1f} MiB RSS",
    ]


def main() -> None:
    rows = [
        in_process("healthy endpoint", lambda s: None),
        in_process("503 x6 then healthy", lambda s: s.script(*[Reply(status=503)] * 6)),
        in_process(
            "429 Retry-After: 1, then healthy",
            lambda s: s.script(Reply(status=429, headers={"Retry-After": "1"})),
        ),
        in_process("connection reset once", lambda s: s.script(Reply(reset=True))),
        in_process(
            "answer after 1 s, read timeout 0.3 s (rows taken)",
            lambda s: s.script(Reply(delay=1.0)),
            timeout=0.3,
        ),
        in_process(
            "413 over a 3 kB cap (splits)",
            lambda s: setattr(s, "max_body_bytes", 3_000),
            compression="none",
            batch_max_rows=64,
        ),
        in_process("403 invalid token", lambda s: s.respond(Reply(status=403))),
    ]
    with EventsServer(token="t") as healthy:
        rows.append(at_exit("exit right after logging, healthy", healthy.url, 10_000, 5, healthy))
    with EventsServer(token="t") as hanging:
        hanging.respond(Reply(hang=True))
        rows.append(at_exit("exit with a hanging endpoint", hanging.url, 1_000, 2, hanging))
        hanging.release()
    rows.append(at_exit("exit with a refusing endpoint", closed_port(), 1_000, 2, None))
    rows.append(outage_memory())
    print("| fault | logged | delivered (unique) | dropped | duplicated | time | memory |")
    print("|---|---:|---:|---:|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
