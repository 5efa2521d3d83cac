"""The values a producer's queue holds and hands to its sender: bounds, batches, flush
marks, counters.

Plain values with no lock and no behaviour beyond their own arithmetic, so that the queue
(``_channel``), the backpressure plan (``_backpressure``) and delivery (``_delivery``) can
share them without importing each other; the channel's lock guards the ones it holds.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple

from tinybird_export.stats import DeliveryStats


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

    def without_line(self, index: int) -> tuple[Batch, int]:
        """The batch without its line ``index`` (0-based), and that line's length (without
        its newline); needs ``count > 1``.
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
        return rest, end - start


class FlushMark(NamedTuple):
    """What a flush waits for: every event queued before it, resolved (sent or dropped).

    Attributes:
        target: How many events the channel must have resolved, not counting those it had
            spooled at the mark.
        spilled: How many events the channel had spooled (ever) at the mark: their
            resolutions, which come first, do not count towards ``target``.
    """

    target: int
    spilled: int


def level_byte(level: object) -> int:
    """A record's level as one byte: 0 when it has none (``makeLogRecord``), at most 255."""
    if isinstance(level, int) and not isinstance(level, bool):
        return min(max(level, 0), 255)
    return 0


@dataclasses.dataclass
class Tally:
    """Where a channel's events went, and how: its counters (changed only by the channel,
    under its lock). The counters of the queue itself (emitted, queued) stay on the
    channel, read on every offer.
    """

    sent: int = 0
    quarantined: int = 0
    truncated: int = 0
    repaired: int = 0
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    wire_bytes_sent: int = 0
    spooled: int = 0
    unspooled: int = 0
    unknown: int = 0  # given up while its request was under way: maybe stored
    last_error: str = ""
    # Plain dicts, not Counters: a Counter's missing key runs Python code (__missing__),
    # where a signal handler may run in the middle of the channel's change.
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped_levels: dict[int, int] = dataclasses.field(default_factory=dict)

    def snapshot(
        self, *, emitted: int, queued: int, in_flight: int, queued_bytes: int, interval: float
    ) -> DeliveryStats:
        """The public snapshot, with the queue's own counters."""
        return DeliveryStats(
            emitted=emitted,
            sent=self.sent,
            dropped=sum(self.dropped.values()),
            dropped_by_reason=dict(self.dropped),
            dropped_by_level={
                logging.getLevelName(level): count
                for level, count in sorted(self.dropped_levels.items())
            },
            queued=queued,
            in_flight=in_flight,
            quarantined=self.quarantined,
            truncated=self.truncated,
            repaired=self.repaired,
            requests=self.requests,
            retries=self.retries,
            bytes_sent=self.bytes_sent,
            wire_bytes_sent=self.wire_bytes_sent,
            queued_bytes=queued_bytes,
            last_error=self.last_error,
            send_interval=interval,
            spooled=self.spooled,
            unspooled=self.unspooled,
            unknown=self.unknown,
        )
