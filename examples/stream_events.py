"""Stream web-analytics events to the Tinybird Events API, as Tinybird's screencast does.

The screencast's script, rebuilt on tinybird-export's plain-event API::

    python examples/stream_events.py --duration 10            # embedded local server
    TINYBIRD_TOKEN=... TINYBIRD_HOST=https://api.us-east.tinybird.co \\
        python examples/stream_events.py --sample-size 100 --wait

With TINYBIRD_TOKEN set it streams to TINYBIRD_HOST (default https://api.tinybird.co);
without one it starts an embedded local Events API on 127.0.0.1 (tinybird-export local, in
its own session, so that Ctrl-C reaches only this script) and streams there. It shows its
progress (events/s, requests/s, kB/s, the last error) as a live line on a terminal and as
one line every few seconds otherwise, and on Ctrl-C or after --duration prints the final
throughput and the data source's row count, then stops the server it started.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time

from tinybird_export import TinybirdEvents
from tinybird_export.cli import query
from tinybird_export.local import SpawnedServer, spawn

PAGES = ("/", "/pricing", "/docs", "/blog/events-api", "/signup", "/cart", "/checkout")
EVENTS = ("page_view", "page_view", "page_view", "click", "scroll", "signup")
_LOG_EVERY = 5.0  # seconds between progress lines when not on a terminal


def make_event(rng: random.Random) -> dict[str, str]:
    """One web-analytics event; ``timestamp`` is filled in by ``TinybirdEvents.send``."""
    return {
        "href": "https://shop.example" + rng.choice(PAGES),
        "event": rng.choice(EVENTS),
        "session_id": f"s{rng.randrange(10_000):05d}",
    }


def count_rows(host: str, token: str, datasource: str) -> str:
    """``select count() from <datasource>`` through ``/v0/sql``, as ``tb sql`` does."""
    try:
        result = query(host, token, f"select count() as c from {datasource}")
    except Exception as exc:  # noqa: BLE001 - a token without read scope, for instance
        return f"unavailable ({exc})"
    return str(result["data"][0]["c"])  # type: ignore[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample-size", type=int, default=100, help="rows per request")
    parser.add_argument("--wait", action="store_true", help="ask for acknowledged writes")
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: Ctrl-C)")
    parser.add_argument("--datasource", default="simple_events")
    options = parser.parse_args(argv)

    token = os.environ.get("TINYBIRD_TOKEN")
    local: SpawnedServer | None = None
    if token:
        host = os.environ.get("TINYBIRD_HOST", "https://api.tinybird.co").rstrip("/")
        print(f"streaming to {host} (data source {options.datasource})")
    else:
        local = spawn()
        host, token = local.url, local.token
        print(f"TINYBIRD_TOKEN not set: streaming to an embedded local Events API at {host}")
    try:
        return stream(options, host, token)
    finally:
        if local is not None:
            local.stop()


def stream(options: argparse.Namespace, host: str, token: str) -> int:
    events = TinybirdEvents(
        datasource=options.datasource,
        host=host,
        token=token,
        wait=options.wait,
        batch_max_rows=options.sample_size,
        flush_interval=0.2,
    )
    live = sys.stdout.isatty()
    rng = random.Random(7)
    started = last = time.monotonic()
    deadline = None if options.duration is None else started + options.duration
    interrupted = False
    try:
        while deadline is None or time.monotonic() < deadline:
            for _ in range(options.sample_size):
                events.send(make_event(rng))
            if events.stats().queued > 50 * options.sample_size:
                events.flush(1)  # keep the demo's backlog small rather than dropping
            now = time.monotonic()
            if now - last >= (1.0 if live else _LOG_EVERY):
                last = now
                print(progress(events, now - started), end="\r" if live else "\n", flush=True)
    except KeyboardInterrupt:
        interrupted = True
    # A second Ctrl-C while the summary is printed ends the script at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # After Ctrl-C the summary comes within 2 s: a short last flush, then the count.
    # flush() is False if anything sent since the previous flush was dropped; the drops
    # before that (the backlog flushes above) are in stats().dropped.
    delivered = events.flush(1.5 if interrupted else 30)
    elapsed = time.monotonic() - started
    if live:
        print()
    print(progress(events, elapsed))
    stats = events.stats()
    delivered = delivered and not stats.dropped
    print(
        f"sent {stats.sent:,} events in {stats.requests:,} requests over {elapsed:.1f} s "
        f"(dropped {stats.dropped:,}, all acknowledged: {delivered})"
    )
    print(
        f"select count() from {options.datasource}: {count_rows(host, token, options.datasource)}"
    )
    events.close(0.2 if interrupted else None)
    return 0 if delivered or interrupted else 1


def progress(events: TinybirdEvents, elapsed: float) -> str:
    stats = events.stats()
    line = (
        f"{stats.sent / elapsed:10,.0f} events/s  {stats.requests / elapsed:7.1f} requests/s  "
        f"{stats.wire_bytes_sent / elapsed / 1000:9.1f} kB/s  ({stats.sent:,} sent)"
    )
    return f"{line}  last error: {stats.last_error[:80]}" if stats.last_error else line


if __name__ == "__main__":
    sys.exit(main())
