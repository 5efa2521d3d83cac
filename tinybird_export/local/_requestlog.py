"""The local server's request log: one line per request (time, method, path, status, rows,
milliseconds), as Tinybird Local prints its requests, without flooding the terminal or
slowing a request down.

A client that sends hundreds of requests a second (the streaming example) would scroll the
terminal past reading. So once a path has been answered with the same status more than once
in a second, its requests are summed: one line a second says how many, their rows and the
slowest, until the path calms down. A few distinct lines a second at most; the rest are
counted together.

Lines are written by a thread of their own, from a bounded queue: a terminal that stops
reading (paused, a full pipe) never holds a request, and the lines that did not fit are
counted and said. A line holds the path only, never the query string (Tinybird's CLIs put
``?token=`` there), with the token masked should a client put it in the path, and control
characters escaped (a method and a path are the client's text, not the terminal's commands).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from collections.abc import Iterable
from typing import TextIO

WINDOW = 1.0
"""Seconds over which a path's repeated requests are summed."""
_DISTINCT = 20  # lines a window for different requests; beyond, counted together
_PENDING = 1000  # lines waiting for a slow stream; beyond, counted as not shown
_PATH_CHARS = 120
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_Key = tuple[str, str, int]


@dataclasses.dataclass
class _Sum:
    """The requests of one method, path and status in the current window, but for the one
    already printed as a line of its own (``printed``).
    """

    printed: bool = False
    count: int = 0
    rows: int = 0
    quarantined: int = 0
    counted_rows: bool = False
    slowest: float = 0.0

    def add(self, rows: int | None, quarantined: int, seconds: float) -> None:
        self.count += 1
        if rows is not None:
            self.rows += rows
            self.counted_rows = True
        self.quarantined += quarantined
        self.slowest = max(self.slowest, seconds)


class RequestLog:
    """Where the server's request lines go.

    Args:
        stream: Written by this log's own thread (``sys.stdout`` for the command).
        hide: Texts never to print (the token), masked as ``<token>``.
    """

    def __init__(self, stream: TextIO, *, hide: Iterable[str] = ()) -> None:
        self._stream = stream
        self._hide = tuple(text for text in hide if text)
        self._ready = threading.Condition()
        self._lines: collections.deque[str] = collections.deque()
        self._not_shown = 0
        self._window_end = 0.0
        self._sums: dict[_Key, _Sum] = {}
        self._busy: set[_Key] = set()  # summed from their first request in this window
        self._others = _Sum()
        self._closed = False
        self._thread = threading.Thread(
            target=self._write_loop, name="tinybird-export-local-log", daemon=True
        )
        self._thread.start()

    def record(
        self,
        method: str,
        path: str,
        status: int,
        *,
        rows: int | None = None,
        quarantined: int = 0,
        seconds: float = 0.0,
    ) -> None:
        """Log one answered request (never blocks on the stream)."""
        key = (self._clean(method), self._clean(path), status)  # both the client's text
        now = time.monotonic()
        with self._ready:
            if self._closed:
                return
            if now >= self._window_end:
                self._roll(now)
            summed = self._sums.get(key)
            if summed is None and len(self._sums) >= _DISTINCT:
                self._others.add(rows, quarantined, seconds)
            elif summed is None and key not in self._busy:
                self._sums[key] = _Sum(printed=True)
                self._put(_line(key, _outcome(rows, quarantined, seconds)))
            else:
                self._sums.setdefault(key, _Sum()).add(rows, quarantined, seconds)
            self._ready.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Write the sums still open and what waits (for at most ``timeout`` seconds)."""
        with self._ready:
            if not self._closed:
                self._roll(float("inf"))
                self._closed = True
                self._ready.notify()
        self._thread.join(timeout)

    def _clean(self, path: str) -> str:
        for text in self._hide:
            path = path.replace(text, "<token>")
        path = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path)
        return path if len(path) <= _PATH_CHARS else path[: _PATH_CHARS - 1] + "…"

    def _roll(self, now: float) -> None:
        """End the window: a line for each request summed in it; the requests seen twice or
        more are summed from the start of the next window too.
        """
        busy = set()
        for key, summed in self._sums.items():
            rows = summed.rows if summed.counted_rows else None
            if summed.count == 1:  # one request: its own line, a moment late
                self._put(_line(key, _outcome(rows, summed.quarantined, summed.slowest)))
            elif summed.count:
                more = " more" if summed.printed else ""
                outcome = _outcome(
                    rows,
                    summed.quarantined,
                    summed.slowest,
                    prefix=f"×{summed.count}{more} in {WINDOW:.0f} s: ",
                    slowest=True,
                )
                self._put(_line(key, outcome))
            if summed.count + summed.printed >= 2:
                busy.add(key)
        if self._others.count:
            self._put(
                f"{_clock()}  … and {self._others.count:,} requests to other paths in "
                f"{WINDOW:.0f} s"
            )
        quiet = now - self._window_end > WINDOW  # a whole window passed without a request
        self._busy = set() if quiet else busy
        self._sums, self._others = {}, _Sum()
        self._window_end = now + WINDOW

    def _put(self, line: str) -> None:
        if len(self._lines) >= _PENDING:
            self._not_shown += 1
        else:
            self._lines.append(line)

    def _write_loop(self) -> None:
        while True:
            with self._ready:
                while not self._lines and not self._closed:
                    if not (self._sums or self._busy or self._others.count):
                        self._ready.wait()
                        continue
                    remaining = self._window_end - time.monotonic()
                    if remaining <= 0:
                        self._roll(time.monotonic())
                    else:
                        self._ready.wait(remaining)
                lines = list(self._lines)
                self._lines.clear()
                not_shown, self._not_shown = self._not_shown, 0
                closed = self._closed
            if not_shown:
                lines.append(
                    f"{_clock()}  ({not_shown:,} request lines not shown: the terminal did "
                    "not keep up)"
                )
            try:
                self._stream.write("".join(f"{line}\n" for line in lines))
                self._stream.flush()
            except (OSError, ValueError):  # a closed terminal or pipe: nothing more to say
                with self._ready:
                    self._closed = True
                return
            if closed:
                return


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _line(key: _Key, outcome: str) -> str:
    method, path, status = key
    return f"{_clock()}  {method:<6} {path:<24} {status}  {outcome}"


def _outcome(
    rows: int | None,
    quarantined: int,
    seconds: float,
    *,
    prefix: str = "",
    slowest: bool = False,
) -> str:
    parts = []
    if rows is not None:
        counted = f"{rows:,} row{'' if rows == 1 else 's'}"
        parts.append(counted + (f" ({quarantined:,} quarantined)" if quarantined else ""))
    parts.append(f"{'slowest ' if slowest else ''}{seconds * 1000:.1f} ms")
    return prefix + ", ".join(parts)
