"""How often one process sends to one data source, adapted to the server's rate limit.

Tinybird limits the Events API per data source (100 requests/s on Forward workspaces), and
that limit is shared by every process of a fleet that writes to the data source (events-api
docs, "Rate limits"): fifty hosts of four workers, each flushing every second, ask for 200
requests/s. Each lane therefore keeps a *spacing*, the least time between the starts of two
of its requests, moved by the server's signals:

- a 429 doubles it (at least ``flush_interval``, at most a minute);
- an acknowledged request whose ``X-RateLimit-Remaining`` is under a fifth of
  ``X-RateLimit-Limit`` grows it by half, before the fleet hits the limit, but never past
  four flush intervals: an acknowledgement is not a refusal, only 429s slow a lane further.
  When ``X-RateLimit-Reset`` says the window ends within a second (Tinybird's window is
  one second), the lane also *holds* until then: no request, full or not, starts in a
  window that has no room left (a server that answers ``Remaining: 0`` on every 202 costs
  one request per window, not a minute's pause);
- an acknowledged request with room to spare (more than half left, or no such headers)
  halves it back down to where it was before the refusals began (the *steady* spacing),
  as fast as the refusals doubled it; from there it shrinks by a tenth of
  ``flush_interval`` per such answer, to 0 (no pacing). A fleet near the limit sees
  few answers with that much room in a row, so it probes gently; a lane recovering from
  an outage halves at every answer. A 429 then room again (a server that alternates)
  undoes that 429 instead of climbing.

A *partial* batch waits ``max(flush_interval, spacing)`` from its first event, and until
``spacing`` after the previous request started, so that batches grow toward
``batch_max_rows`` / ``batch_max_bytes`` instead of requests multiplying. A *full* batch
waits only for the hold: pacing exists to make batches fuller, and delaying a full one
would only fill the memory bound and drop events. The caller is never paused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from tinybird_export import _retry

MAX_SPACING: Final = 60.0
_LOW: Final = 0.2  # X-RateLimit-Remaining / Limit under which to slow down early
_ROOM: Final = 0.5  # above which to speed up again
_STEP: Final = 0.1  # of flush_interval, per answer with room, below the steady spacing
_LOW_CAP: Final = 4.0  # flush intervals: how far answers with little room may slow a lane
_HOLD_MAX: Final = 1.0  # seconds: a window reset beyond this is left to the 429 path


class Pacing:
    """One lane's spacing between requests; pure given the clock it is called with.

    Args:
        base: The lane's ``flush_interval``: the first step of a backoff, and the unit of
            the recovery.
        enabled: ``False`` keeps the spacing at 0 (the ``adaptive`` setting).
    """

    def __init__(self, base: float, enabled: bool) -> None:
        self.base = base
        self.enabled = enabled
        self.spacing = 0.0
        self._steady = 0.0  # the spacing before the current run of refusals
        self._last_start = -math.inf
        self._hold_until = -math.inf

    def not_before(self, full_batch: bool = False) -> float:
        """When the lane's next request may start (``time.monotonic()``).

        Args:
            full_batch: The next batch is full (its row or byte limit): it waits only for
                a window that has no room left, never for the spacing.
        """
        if full_batch:
            return self._hold_until
        return max(self._last_start + self.spacing, self._hold_until)

    def interval(self, flush_interval: float) -> float:
        """How long a partial batch may wait: its interval, or the spacing if longer."""
        return flush_interval if self.spacing < flush_interval else self.spacing

    def started(self, now: float) -> None:
        """A request starts now."""
        self._last_start = now

    def answered(self, status: int | None, headers: Mapping[str, str], now: float) -> None:
        """Adapt to an answer that arrived at ``now`` (header names in lower case)."""
        if not self.enabled or status is None:
            return
        if status == 429:
            self.spacing = min(max(self.spacing * 2, self.base), MAX_SPACING)
            return
        if status not in (200, 202):
            return
        share = _remaining_share(headers)
        if share is not None and share < _LOW:
            self._little_room(headers, now)
        elif share is None or share > _ROOM:
            self._room()
        else:  # between a fifth and a half left: hold the pace, and remember it
            self._steady = self.spacing

    def _little_room(self, headers: Mapping[str, str], now: float) -> None:
        reset = _retry.rate_limit_reset(headers)
        if reset is not None and reset <= _HOLD_MAX:
            self._hold_until = max(self._hold_until, now + reset)
        cap = min(self.base * _LOW_CAP, MAX_SPACING)
        if self.spacing < cap:
            self.spacing = min(max(self.spacing * 1.5, self.base), cap)

    def _room(self) -> None:
        steady = max(self._steady, self.base)
        if self.spacing > steady:  # after refusals: back as fast as they came
            self.spacing = max(self.spacing / 2, steady)
        else:
            self.spacing = max(self.spacing - self.base * _STEP, 0.0)
            self._steady = self.spacing


def _remaining_share(headers: Mapping[str, str]) -> float | None:
    """``X-RateLimit-Remaining / X-RateLimit-Limit``, if both are sane numbers."""
    try:
        limit = float(headers["x-ratelimit-limit"])
        remaining = float(headers["x-ratelimit-remaining"])
    except (KeyError, ValueError):
        return None
    if not (math.isfinite(limit) and math.isfinite(remaining)) or limit <= 0:
        return None
    return min(max(remaining / limit, 0.0), 1.0)
