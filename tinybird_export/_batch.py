"""The values a producer's queue holds and hands over: its bounds, its batches, and what
it gave up.

Plain values with no lock and no behaviour beyond their own arithmetic, so that the queue
(``_channel``), the backpressure plan (``_backpressure``) and delivery (``_delivery``) can
share them without importing each other; the channel's lock guards the ones it holds. Its
counters are ``_tally``'s.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


class Limits(NamedTuple):
    """A channel's bounds, from its producer's settings."""

    queue_max_events: int
    queue_max_bytes: int
    batch_max_rows: int
    batch_max_bytes: int
    flush_interval: float


@dataclasses.dataclass(eq=False)
class Probe:
    """The search for the bad line(s) of a batch the server refused with a 400 that did
    not say which line (``_bad_line``), shared by the batch's pieces.

    Attributes:
        budget: Requests the search may still make (then a refused piece is dropped whole).
        error: The server's answer, quoted when a piece is dropped without a request.
        confirmed: A piece was accepted, or the server named a line: the 400 is about
            lines, not about the request.
        failures: Pieces refused before that.
        aborted: Two pieces were refused with nothing accepted: the 400 is about the
            request (its data source name...), and the remaining pieces are dropped unsent.
    """

    budget: int
    error: str = ""
    confirmed: bool = False
    failures: int = 0
    aborted: bool = False


@dataclasses.dataclass(eq=False)
class Batch:
    """NDJSON lines (each ending in a newline) sent as one request; kept whole across retries.

    Attributes:
        body: The request body before compression.
        count: How many lines (events) it holds.
        levels: Each line's logging level (one byte per line, 0 for unlevelled events),
            for the severity-aware drop policy.
        attempts: Requests made for it so far.
        full: Sealed at its row or byte limit (the next line did not fit), not because
            its interval passed: it need not wait for the lane's pacing (``_pacing``).
        maybe_stored: Its last request was sent whole and got no answer (a read timeout):
            the server may have stored it, so giving it up is not "not delivered".
        probe: The search for a bad line it is a piece of, if any.
        parked: Refused while its search was unconfirmed, and sent back behind the other
            half: that half's answer tells whether it holds a bad line.
    """

    body: bytes | bytearray
    count: int
    levels: bytes | bytearray = b""
    attempts: int = 0
    full: bool = False
    maybe_stored: bool = False
    probe: Probe | None = None
    parked: bool = False

    @property
    def nbytes(self) -> int:
        """Raw bytes, newlines included."""
        return len(self.body)

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches split at the line boundary nearest the middle (for a 413); needs
        ``count > 1``.
        """
        body = self.body
        cut = body.find(b"\n", len(body) // 2)
        if cut == len(body) - 1:  # the middle fell inside the last line
            cut = body.rfind(b"\n", 0, len(body) // 2)
        first = body[: cut + 1]
        n = first.count(b"\n")
        levels, probe = self.levels, self.probe
        second = Batch(body[cut + 1 :], self.count - n, levels[n:], self.attempts, probe=probe)
        return Batch(first, n, levels[:n], self.attempts, probe=probe), second

    def line_apart(self, index: int) -> tuple[Batch, Batch]:
        """Its line ``index`` (0-based) as a batch of its own, and the batch without it (its
        search for a bad line goes on with it); needs ``count > 1``.
        """
        body = self.body
        start = 0
        for _ in range(index):
            start = body.index(b"\n", start) + 1
        end = body.index(b"\n", start)
        levels = self.levels
        rest = Batch(
            body[:start] + body[end + 1 :],
            self.count - 1,
            levels[:index] + levels[index + 1 :],
            self.attempts,
            probe=self.probe,
        )
        return Batch(body[start : end + 1], 1, levels[index : index + 1], self.attempts), rest


class Abandoned(NamedTuple):
    """What ``Channel.abandon`` gave up: events dropped unsent, and events whose request
    was under way (sent, no answer yet: of unknown fate).
    """

    dropped: int
    unknown: int

    @property
    def total(self) -> int:
        """Both."""
        return self.dropped + self.unknown


def level_byte(level: object) -> int:
    """A record's level as one byte: 0 when it has none (``makeLogRecord``), at most 255."""
    if isinstance(level, int) and not isinstance(level, bool):
        return min(max(level, 0), 255)
    return 0
