"""How often one process sends to one data source, adapted to the server's rate limit.

Tinybird limits the Events API per data source (100 requests/s on Forward workspaces), and
that limit is shared by every process of a fleet that writes to the data source (events-api
docs, "Rate limits"): fifty hosts of four workers, each flushing every second, ask for 200
requests/s. Each lane therefore keeps a *spacing*, the least time between the starts of two
of its requests, moved by additive increase / multiplicative decrease (AIMD) on the
server's signals:

- a 429 doubles it (at least ``flush_interval``);
- an acknowledged request whose ``X-RateLimit-Remaining`` is under a fifth of
  ``X-RateLimit-Limit`` grows it by half, before the fleet hits the limit;
- an acknowledged request with room to spare (more than half left, or no such headers)
  shrinks it by a tenth of ``flush_interval``, back to 0 (no pacing) for a small fleet.

A partial batch then waits ``max(flush_interval, spacing)``, so batches grow toward
``batch_max_rows`` / ``batch_max_bytes`` instead of requests multiplying; the caller is never
paused, and events are dropped only at the memory bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

MAX_SPACING: Final = 60.0
_LOW: Final = 0.2  # X-RateLimit-Remaining / Limit under which to slow down early
_ROOM: Final = 0.5  # above which to speed up again
_STEP: Final = 0.1  # of flush_interval, per acknowledged request


class Pacing:
    """One lane's spacing between requests.

    Args:
        base: The lane's ``flush_interval``: the first step of a backoff, and the unit of
            the recovery.
        enabled: ``False`` keeps the spacing at 0 (the ``adaptive`` setting).
    """

    def __init__(self, base: float, enabled: bool) -> None:
        self.base = base
        self.enabled = enabled
        self.spacing = 0.0
        self._last_start = -math.inf

    def not_before(self) -> float:
        """When the next request may start (``time.monotonic()``)."""
        return self._last_start + self.spacing

    def interval(self, flush_interval: float) -> float:
        """How long a partial batch may wait: its interval, or the spacing if longer."""
        return flush_interval if self.spacing < flush_interval else self.spacing

    def started(self, now: float) -> None:
        """A request starts now."""
        self._last_start = now

    def answered(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Adapt to an answer (header names in lower case)."""
        if not self.enabled or status is None:
            return
        if status == 429:
            self.spacing = min(max(self.spacing * 2, self.base), MAX_SPACING)
            return
        if status not in (200, 202):
            return
        share = _remaining_share(headers)
        if share is not None and share < _LOW:
            self.spacing = min(max(self.spacing * 1.5, self.base), MAX_SPACING)
        elif self.spacing and (share is None or share > _ROOM):
            self.spacing = max(self.spacing - self.base * _STEP, 0.0)


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
