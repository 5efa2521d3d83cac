"""What every event shares, whichever mapper builds it: timestamps, event ids, the host.

Everything here runs on the caller's thread for every event, so it is written for cost: a
cached timestamp prefix per second and a counter-based event id.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from pathlib import Path
from typing import Final

HOST: Final = socket.gethostname()
DATASOURCES_DIR: Final = Path(__file__).parent / "datasources"
"""The ``.datasource`` files for the event shapes this package emits."""


class EventIds:
    """Unique event ids: a random per-process prefix and a counter.

    Cheaper than uuid4 on the caller's thread; ``reset`` (run in a forked child by the
    process owner) redraws the prefix so that a child never reuses its parent's ids.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex() + "-"
        self.counter = itertools.count(1)  # next() on a C iterator is atomic under the GIL

    def next(self) -> str:
        return self.prefix + str(next(self.counter))


event_ids: Final = EventIds()

_second_cache: tuple[int, str] = (-1, "")


def second_prefix(second: int) -> str:
    """``"YYYY-MM-DD HH:MM:SS."`` (UTC) for an epoch second, cached for the current one."""
    global _second_cache  # noqa: PLW0603 - a one-entry cache; tuple assignment is atomic
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%d %H:%M:%S.", time.gmtime(second))
        _second_cache = (second, prefix)
    return prefix


def format_timestamp(created: float) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS.ffffff``, the Events API docs' DateTime64 form."""
    second = int(created)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = second_prefix(second)
    # Round half up (a float's .0005 is .000499999...), clamped below the next second;
    # int -> str and a slice beat "%06d" formatting (and an ``if`` beats ``min``) on the
    # caller's thread.
    micros = int((created - second) * 1_000_000 + 0.5)
    if micros > 999_999:  # noqa: PLR1730 - min() is a call, this is not
        micros = 999_999
    return prefix + str(1_000_000 + micros)[1:]


def utc_from_ns(nanos: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC) from epoch nanoseconds, in integer arithmetic."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = second_prefix(seconds)
    return prefix + str(1_000_000 + rest // 1000)[1:]


def current_trace_ids() -> tuple[str, str]:
    """The current OpenTelemetry span's ids, or empty strings.

    Looks only in ``sys.modules``: an application that never imported OpenTelemetry pays
    one dict lookup and imports nothing.
    """
    trace_api = sys.modules.get("opentelemetry.trace")
    if trace_api is None:
        return "", ""
    context = trace_api.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
