"""Stream web-analytics events to the Tinybird Events API, as Tinybird's screencast does.

The screencast's script, rebuilt on tinybird-export's plain-event API::

    python examples/stream_events.py --duration 10            # embedded local server
    TINYBIRD_TOKEN=... TINYBIRD_HOST=https://api.us-east.tinybird.co \\
        python examples/stream_events.py --sample-size 100 --wait

With TINYBIRD_TOKEN set it streams to TINYBIRD_HOST (default https://api.tinybird.co);
without one it starts an embedded local Events API on localhost (tinybird-export local, in
its own session, so that Ctrl-C reaches only this script; quiet: no request lines) and
streams there, printing the URL of its page to watch the events arrive. It shows its
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
import threading
import time
from typing import Any, TextIO

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


class LiveLine:
    """The progress line on a terminal, rewritten in place. The package's diagnostics go to
    stderr from its sender thread, at any moment: they are printed above the line, which is
    drawn again below them, rather than in its middle.
    """

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err = out, err
        self._lock = threading.Lock()
        self._text = ""

    def show(self, text: str) -> None:
        with self._lock:
            self._out.write(f"\r{text}{' ' * (len(self._text) - len(text))}")
            self._out.flush()
            self._text = text

    def end(self) -> None:
        """Leave the line as it is and go to the next one."""
        with self._lock:
            if self._text:
                self._out.write("\n")
                self._out.flush()
            self._text = ""

    def stderr(self) -> Any:
        """A stand-in for ``sys.stderr`` that writes above the line."""
        line = self

        class _AboveTheLine:
            def write(self, text: str) -> int:
                with line._lock:
                    if line._text:
                        line._out.write(f"\r{' ' * len(line._text)}\r")
                        line._out.flush()
                    written = line._err.write(text)
                    line._err.flush()
                    if line._text and text.endswith("\n"):
                        line._out.write(line._text)
                        line._out.flush()
                    return written

            def __getattr__(self, name: str) -> Any:
                return getattr(line._err, name)

        return _AboveTheLine()


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
        print(f"watch the events arrive: {local.page_url}")
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
    live = LiveLine(sys.stdout, sys.stderr) if sys.stdout.isatty() else None
    if live is not None:
        sys.stderr = live.stderr()
    rng = random.Random(7)
    progress = Progress(events)
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
            if now - last >= (_LOG_EVERY if live is None else 1.0):
                last = now
                if live is not None:
                    live.show(progress.line(now - started))
                else:
                    print(progress.line(now - started), flush=True)
    except KeyboardInterrupt:
        interrupted = True
    # A second Ctrl-C while the summary is printed ends the script at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # After Ctrl-C the summary comes within 2 s: a short last flush, then the count.
    # flush() is False if anything sent since the previous flush was dropped; the drops
    # before that (the backlog flushes above) are in stats().dropped.
    delivered = events.flush(1.5 if interrupted else 30)
    elapsed = time.monotonic() - started
    if live is not None:
        live.end()
        sys.stderr = sys.__stderr__
    print(progress.line(elapsed))
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


class Progress:
    """The progress line: rates so far, and the last error while sending fails (a retry or a
    drop since the previous line, or nothing delivered meanwhile), not after a recovery.
    """

    def __init__(self, events: TinybirdEvents) -> None:
        self._events = events
        self._sent = self._failures = 0

    def line(self, elapsed: float) -> str:
        stats = self._events.stats()
        line = (
            f"{stats.sent / elapsed:10,.0f} events/s  {stats.requests / elapsed:7.1f} "
            f"requests/s  {stats.wire_bytes_sent / elapsed / 1000:9.1f} kB/s  "
            f"({stats.sent:,} sent)"
        )
        failures = stats.retries + stats.dropped
        failing = failures > self._failures or (stats.sent == self._sent and stats.queued > 0)
        self._sent, self._failures = stats.sent, failures
        if failing and stats.last_error:
            return f"{line}  last error: {stats.last_error[:80]}"
        return line


if __name__ == "__main__":
    sys.exit(main())
