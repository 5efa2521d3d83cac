"""Backpressure that keeps what matters: which queued lines a new record may displace.

When a channel reaches its memory bound, the newest event is dropped (``queue_full``) so
that what is queued keeps its order. A record of level WARNING or higher is the exception:
it displaces queued lines of *lower* level, oldest first (never the batch in flight),
which are dropped and counted by level instead. So during an outage that overflows the
bound, every ERROR logged survives as long as lower-severity lines remain to displace.
Events without a level (``TinybirdEvents``, spans) neither displace nor are displaced
unless sent with one.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tinybird_export._channel import Batch

DISPLACES_FROM: Final = logging.WARNING


def shortfall_below(
    batches: Sequence[Batch], level: int, need_bytes: int, need_events: int
) -> tuple[int, int] | None:
    """``None`` when the lines below ``level`` in ``batches`` would meet the needs; else
    how many events and bytes they hold (all of them: the scan went through the queue).
    """
    events = nbytes = 0
    for batch in batches:
        if min(batch.levels, default=255) >= level:
            continue  # nothing below: skip it at C speed, without splitting its lines
        lines = batch.body.split(b"\n")
        for line, line_level in zip(lines, batch.levels, strict=False):
            if line_level < level:
                events += 1
                nbytes += len(line)
                if events >= need_events and nbytes >= need_bytes:
                    return None
    return events, nbytes


def thin(
    batch: Batch, level: int, want_bytes: int, want_events: int
) -> tuple[Batch, collections.Counter[int], int] | None:
    """``batch`` without its oldest lines below ``level``, until ``want_bytes`` and
    ``want_events`` are freed (or it has none left); ``None`` if it has none.

    Returns:
        The thinned batch, the levels of the lines dropped, and the bytes freed (newlines
        not counted, as the channel's byte bound does not count them).
    """
    from tinybird_export._channel import Batch  # noqa: PLC0415 - the channel imports us

    if min(batch.levels, default=255) >= level:
        return None
    kept_lines: list[bytes | bytearray] = []
    kept_levels = bytearray()
    dropped: collections.Counter[int] = collections.Counter()
    freed = freed_events = 0
    lines: list[bytes | bytearray] = list(batch.body.split(b"\n"))
    for line, line_level in zip(lines, batch.levels, strict=False):
        if line_level < level and (freed < want_bytes or freed_events < want_events):
            dropped[line_level] += 1
            freed += len(line)
            freed_events += 1
        else:
            kept_lines.append(line)
            kept_levels.append(line_level)
    body = bytearray(b"\n".join(kept_lines) + b"\n") if kept_lines else bytearray()
    kept = Batch(body, len(kept_lines), kept_levels, batch.attempts)
    return kept, dropped, freed
