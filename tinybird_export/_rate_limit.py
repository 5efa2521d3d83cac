"""The test server's rate limit: a token bucket per data source, as Tinybird limits the
Events API (events-api docs, "Rate limits": requests per second per data source, 429 with
``Retry-After`` in whole seconds and ``X-RateLimit-Limit/-Remaining/-Reset``, Reset in
seconds from now).
"""

from __future__ import annotations

import math
import threading
import time


class TokenBuckets:
    """``limit`` requests per second per data source, in bursts of up to ``limit``.

    Args:
        limit: Requests per second each data source accepts.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def take(self, datasource: str) -> tuple[bool, dict[str, str]]:
        """Whether a request to ``datasource`` is accepted now, and the headers to send."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(datasource, (self.limit, now))
            tokens = min(self.limit, tokens + (now - at) * self.limit)
            accepted = tokens >= 1
            if accepted:
                tokens -= 1
            self._buckets[datasource] = (tokens, now)
        headers = {
            "X-RateLimit-Limit": str(int(self.limit)),
            "X-RateLimit-Remaining": str(int(tokens)),
            "X-RateLimit-Reset": str(math.ceil((self.limit - tokens) / self.limit)),
        }
        if not accepted:
            headers["Retry-After"] = str(max(1, math.ceil((1 - tokens) / self.limit)))
        return accepted, headers
