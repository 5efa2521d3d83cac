"""Backpressure that keeps what matters: the plan of which queued lines a record displaces.

When a channel reaches its memory bound, the newest event is dropped (``queue_full``) so
that what is queued keeps its order. A record of level WARNING or higher is the exception:
it displaces queued lines of *lower* level, oldest first (never the batch in flight),
which are dropped and counted by level instead. So during an outage that overflows the
bound, every ERROR logged survives as long as lower-severity lines remain to displace.
Events without a level (``TinybirdEvents``, spans) neither displace nor are displaced
unless sent with one.

This module only plans: ``plan_room`` is a pure function of the queued batches, and the
channel applies the plan under its lock. Its ``Planner`` remembers a shortfall, so that a
bound full of errors is not searched again on every call.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from tinybird_export._batch import Batch

DISPLACES_FROM: Final = logging.WARNING
SLACK: Final = 64
"""A plan frees 1/64 of the bound beyond the need, so that the next warnings find room
without thinning a batch each (a pass over its lines, on the caller's thread)."""


class Plan(NamedTuple):
    """What to drop to make room: the queue as it becomes, and what it loses.

    Attributes:
        ready: The sealed batches, thinned (empty ones left out), oldest first.
        pending: The partial batch, thinned; ``None`` if it is unchanged.
        events: Events dropped.
        nbytes: Bytes freed (newlines not counted, as the channel's byte bound does not
            count them).
        levels: Events dropped by logging level (0 for unlevelled events).
    """

    ready: list[Batch]
    pending: Batch | None
    events: int
    nbytes: int
    levels: collections.Counter[int]


class Shortfall(NamedTuple):
    """Not enough below the level: how many events and bytes the lines below it hold."""

    events: int
    nbytes: int


class Planner:
    """``plan_room`` with a memory of the last shortfall, owned by one channel (which
    calls it under its lock).

    During an outage that fills the bound with warnings and errors only, every new one
    would scan the whole queue again (milliseconds on the caller's thread). What the last
    scan found below its level holds until lines join or leave the queue (the channel's
    ``state`` changes) or a batch comes back from flight (``forget``).
    """

    def __init__(self) -> None:
        self._short: tuple[object, int, Shortfall] | None = None

    def forget(self) -> None:
        """The queue changed in a way ``state`` does not show."""
        self._short = None

    def plan(
        self,
        state: object,
        batches: Callable[[], tuple[Sequence[Batch], bool]],
        level: int,
        need_bytes: int,
        need_events: int,
        *,
        bound_bytes: int,
        bound_events: int,
    ) -> Plan | None:
        """``plan_room`` for the queue ``batches()`` (and whether its last is the partial
        batch) in ``state``; ``None`` when the lines below ``level`` are too few (known from
        the last scan in the same state, or found).
        """
        short = self._short
        if (
            short is not None
            and short[0] == state
            and level <= short[1]
            and (need_events > short[2].events or need_bytes > short[2].nbytes)
        ):
            return None
        queue, has_pending = batches()
        plan = plan_room(
            queue,
            level,
            need_bytes,
            need_events,
            bound_bytes=bound_bytes,
            bound_events=bound_events,
            has_pending=has_pending,
        )
        if isinstance(plan, Shortfall):
            self._short = (state, level, plan)
            return None
        return plan


def plan_room(
    batches: Sequence[Batch],
    level: int,
    need_bytes: int,
    need_events: int,
    *,
    bound_bytes: int,
    bound_events: int,
    has_pending: bool = False,
) -> Plan | Shortfall:
    """The lines below ``level`` to drop, oldest first, to free ``need_bytes`` and
    ``need_events`` (plus the slack, when the lines are there); a ``Shortfall`` if all
    the lines below ``level`` would not meet the needs.

    Args:
        batches: The queue, oldest first (the batch in flight excluded), the partial batch
            last when ``has_pending``.
        level: The new record's level.
        need_bytes: Bytes to free at least (0 or less: none).
        need_events: Events to free at least (0 or less: none).
        bound_bytes: The byte bound reached, for the slack.
        bound_events: The event bound, for the slack.
        has_pending: Whether the last of ``batches`` is the partial batch.
    """
    need_bytes, need_events = max(need_bytes, 0), max(need_events, 0)
    short = _shortfall_below(batches, level, need_bytes, need_events)
    if short is not None:
        return short
    want_bytes = need_bytes + bound_bytes // SLACK if need_bytes > 0 else 0
    want_events = need_events + bound_events // SLACK if need_events > 0 else 0
    queue, events, nbytes, dropped = list(batches), 0, 0, collections.Counter[int]()
    for index, batch in enumerate(batches):
        if want_bytes <= 0 and want_events <= 0:
            break
        thinned = _thin(batch, level, want_bytes, want_events)
        if thinned is None:
            continue
        kept, levels, freed = thinned
        count = batch.count - kept.count
        want_bytes -= freed
        want_events -= count
        queue[index] = kept
        dropped.update(levels)
        events, nbytes = events + count, nbytes + freed
    pending = queue.pop() if has_pending else None
    return Plan([b for b in queue if b.count], pending, events, nbytes, dropped)


def _shortfall_below(
    batches: Sequence[Batch], level: int, need_bytes: int, need_events: int
) -> Shortfall | None:
    """``None`` when the lines below ``level`` would meet the needs; else what they hold
    (all of them: the scan went through the queue).
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
    return Shortfall(events, nbytes)


def _thin(
    batch: Batch, level: int, want_bytes: int, want_events: int
) -> tuple[Batch, collections.Counter[int], int] | None:
    """``batch`` without its oldest lines below ``level``, until ``want_bytes`` and
    ``want_events`` are freed (or it has none left); ``None`` if it has none.

    Returns:
        The thinned batch, the levels of the lines dropped, and the bytes freed.
    """
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
    return Batch(body, len(kept_lines), kept_levels, batch.attempts), dropped, freed
