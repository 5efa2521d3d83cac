"""The retry policy, written once: what each answer means and how long to wait.

urllib3's own retries and redirects are off (see ``_client``); every decision about an
Events API answer is made here. Status meanings follow Tinybird's Events API docs
("Response codes", "Rate limits"): 429 carries ``Retry-After`` (seconds) and
``X-RateLimit-Reset`` (seconds from now, not an epoch), and Tinybird's rate-limit window
is one second. A gateway in front may send an epoch there instead, or garbage: a wait
longer than an hour is not taken for one (the backoff schedule applies, so the first
answer after the endpoint recovers ends the pause), and a plausible one is honoured up to
a minute.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import ipaddress
import math
import random
import time
import urllib.parse
from collections.abc import Mapping
from typing import Final

# 520-524 are what a CDN in front of an API answers when it could not get an answer from
# the origin (Cloudflare's "5xx errors" troubleshooting pages: unknown error, web server
# down, connection timed out, origin unreachable, a timeout after connecting): transient,
# and at worst a 524 duplicates rows the origin took, as a read timeout does (event_id).
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
_BACKOFF_BASE: Final = 0.5
_BACKOFF_CAP: Final = 30.0
# A bogus header must not park a data source (Tinybird's window is a second), nor make a
# tight loop of a retry ("0", a date in the past): a wait is kept between these two...
_RATE_LIMIT_CAP: Final = 60.0
_RATE_LIMIT_FLOOR: Final = _BACKOFF_BASE
# ...and one beyond this is not a wait at all: an epoch (X-RateLimit-Reset: 1e9, as
# gateways send, and as tinybird-python-sdk reads it), a unit error, 1e308.
_PLAUSIBLE_WAIT: Final = 3600.0

REGION_HOSTS: Final = (
    "https://api.tinybird.co, https://api.us-east.tinybird.co, "
    "https://api.europe-west2.gcp.tinybird.co, "
    "https://api.northamerica-northeast2.gcp.tinybird.co, "
    "https://api.us-east.aws.tinybird.co, https://api.us-west-2.aws.tinybird.co, "
    "https://api.eu-central-1.aws.tinybird.co, https://api.eu-west-1.aws.tinybird.co, "
    "https://api.ap-east.aws.tinybird.co, https://api.ap-southeast-2.aws.tinybird.co"
)


REFUSED_GIVE_UP: Final = 0.75
"""Seconds of refused connections after which waiting for a host stops (three attempts
with the backoff below: 0, 0.25-0.5 and 0.75-1.5 s)."""


class Refusals:
    """Whether nothing listens at a host: its attempts refused, in a row, for at least
    ``REFUSED_GIVE_UP`` seconds.

    A flush, a close and the exit drain then stop waiting once a refusal comes during the
    wait, rather than spend their whole timeout: a wrong port, or a local server that is
    not running, would otherwise hold a short script for each of them in turn. (A refused
    connection costs the host nothing, so a wait first retries at once: ``Worker``.) Any
    answer, or any other kind of failure (a timeout may be an overloaded server), starts
    the count again. Nothing is dropped by this: a flush returns False and the events stay
    queued; a close or the exit gives them up (or spools them) as its deadline would have.
    """

    def __init__(self) -> None:
        self._first: float | None = None
        self._last = 0.0

    def note(self, status: int | None, kind: str, at: float) -> None:
        """Count one attempt's outcome (its start time ``at``, monotonic)."""
        if status is None and kind == "refused":
            if self._first is None:
                self._first = at
            self._last = at
        else:
            self._first = None

    def lasting(self, since: float = 0.0) -> float | None:
        """How long the host has refused every connection, once that is past
        ``REFUSED_GIVE_UP`` and the last refusal came at ``since`` or later; else ``None``.
        """
        first, last = self._first, self._last
        if first is None or last - first < REFUSED_GIVE_UP or last < since:
            return None
        return last - first


class Outcome(enum.Enum):
    """What the worker does with a batch after one attempt."""

    SENT = "sent"
    RETRY = "retry"
    SPLIT = "split"
    DROP = "drop"


def classify(status: int | None) -> Outcome:
    """``None`` is a transport failure (refused, reset, timed out): retryable."""
    if status is None or status in RETRYABLE_STATUSES:
        return Outcome.RETRY
    if status in (200, 202):
        return Outcome.SENT
    if status == 413:
        return Outcome.SPLIT
    return Outcome.DROP


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... capped at 30 s, times 0.5-1.

    The jitter keeps a minimum so that a failing endpoint never sees a tight loop.
    """
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * float(2 ** min(attempt, 16)))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


def delay(status: int | None, headers: Mapping[str, str], failures: int) -> float:
    """How long a data source pauses after a retryable answer, its ``failures``-th in a row
    (counting from 0): the server's ``Retry-After`` for 429 and 503, else ``backoff``.
    """
    wait = server_delay(headers) if status in (429, 503) else None
    return backoff(failures) if wait is None else wait


def server_delay(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a 429/503 asks for: ``Retry-After`` (seconds or HTTP-date), else
    ``X-RateLimit-Reset`` (seconds from now), kept between half a second and a minute;
    ``None`` if neither is a plausible wait (absent, not a finite number or a date, or
    more than an hour away), so that the caller's backoff applies.

    Args:
        headers: The answer's headers, names in lower case (HTTP/2 proxies send them so).
        now: The epoch time that an HTTP-date is relative to.
    """
    for name in ("retry-after", "x-ratelimit-reset"):
        value = headers.get(name)
        if value is None:
            continue
        delay = _parse_delay(value.strip(), time.time() if now is None else now)
        if delay is not None:
            return min(max(delay, _RATE_LIMIT_FLOOR), _RATE_LIMIT_CAP)
    return None


def rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """``X-RateLimit-Reset`` of any answer: the seconds until the rate-limit window resets
    (at least 0), or ``None`` if absent or not a plausible number of seconds.
    """
    value = headers.get("x-ratelimit-reset")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if _plausible(seconds) else None


def _parse_delay(value: str, now: float) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # float() also takes "nan" and "inf": neither is a wait
        return seconds if _plausible(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is always GMT (RFC 9110, 5.6.7)
        when = when.replace(tzinfo=datetime.timezone.utc)
    seconds = when.timestamp() - now
    return seconds if _plausible(seconds) else None


def _plausible(seconds: float) -> bool:
    """A finite wait of at most an hour (a past date or a negative one counts: floored)."""
    return math.isfinite(seconds) and seconds <= _PLAUSIBLE_WAIT


def failure_hint(status: int | None, kind: str, host: str) -> str:
    """What a retryable failure most likely means, and what to fix."""
    if status == 429:
        return "rate limited: this data source is paced (stats().send_interval)"
    if status is not None:
        return "the server is unavailable; retrying with backoff"
    local = _is_loopback(host)
    return {
        "dns": "the host name does not resolve: check TINYBIRD_HOST's spelling (the region "
        "hosts are listed in the README) and this machine's DNS",
        "refused": "nothing accepts connections there: check TINYBIRD_HOST's scheme and port"
        + (", and that the local server runs (tinybird-export local)" if local else ""),
        "tls": "the TLS handshake failed: check that the host serves https with a certificate "
        "this machine trusts (ca_bundle / TINYBIRD_CA_BUNDLE for a private CA)",
        "timeout": "no answer in time: a firewall or proxy may block the host (HTTPS_PROXY, "
        "NO_PROXY), or it is overloaded",
    }.get(kind, "the connection failed; retrying with backoff")


def _is_loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def drop_hint(status: int, datasource: str, host: str) -> str:
    """What a non-retryable answer most likely means, and what to fix."""
    if 300 <= status < 400:
        return "the host is wrong (a redirect): set TINYBIRD_HOST to your region's API host"
    hints = {
        400: "the request was invalid",
        401: "the token is missing or malformed (TINYBIRD_TOKEN)",
        403: "the token is invalid or lacks DATASOURCE:APPEND on "
        f"{datasource!r} (or DATASOURCE:CREATE for a new data source)",
        404: (
            f"the data source {datasource!r} does not exist on this server (a local server "
            "in strict mode takes only declared data sources: --datasources)"
            if _is_loopback(host)
            else f"the token's workspace is not on {host} (wrong region: the hosts are "
            f"{REGION_HOSTS}) or the data source {datasource!r} is not deployed"
        ),
        411: "the request had no Content-Length",
        422: "rows were partially written (a materialized view failed); not retried to "
        "avoid duplicates",
    }
    return hints.get(status, "the server refused the batch")
