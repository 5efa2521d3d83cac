"""Delivery counters: what each producer (handler, event sender, exporter) reports.

``handler.stats()``, ``events.stats()`` and the exporters' ``stats()`` return a
``DeliveryStats`` snapshot, taken under the producer's queue lock, so its counters are
consistent with each other::

    emitted == sent + dropped + queued + in_flight + spooled + unknown

``emitted`` is counted where an event enters (accepted or refused), independently of the
others, so an event lost between two counters breaks the equation instead of hiding in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["DeliveryStats"]


@dataclasses.dataclass(frozen=True)
class DeliveryStats:
    """A snapshot of one handler's (or sender's, or exporter's) delivery counters.

    Attributes:
        emitted: Events handed to the producer (records that passed the level and filters,
            events sent, spans and log records exported), counted as they enter, whether
            they were then queued or refused (a refusal is in ``dropped_by_reason`` too).
        sent: Rows the server acknowledged (202/200), quarantined rows included.
        dropped: Events given up, in total; ``dropped_by_reason`` breaks it down.
        dropped_by_reason: Drop counts by reason (``queue_full``, ``http_403``...).
        dropped_by_level: The ``queue_full`` drops of log records, by level name: the
            severity-aware policy drops lower levels first.
        queued: Events in memory waiting to be sent.
        in_flight: Events in the request under way.
        quarantined: Rows the server put in ``<datasource>_quarantine``.
        truncated: Events whose long strings (or containers) were cut to fit
            ``max_event_bytes``, with a marker.
        repaired: Events with values JSON cannot carry, replaced (placeholders naming the
            type, big integers as strings, escaped lone surrogates).
        requests: HTTP requests made for its batches in memory, retries included.
        retries: Requests that were retries of a failed batch.
        bytes_sent: Raw NDJSON bytes acknowledged.
        wire_bytes_sent: Bytes put on the wire for acknowledged batches (after gzip).
        queued_bytes: Raw bytes held in memory (queued and in flight).
        last_error: The last failure, as text ("" if none); never contains the token.
        send_interval: How long a partial batch waits now: ``flush_interval``, or longer
            while the server's rate limit paces this data source.
        spooled: Events of this producer held in the disk spool (``spool_dir``), to be
            sent when the endpoint recovers, by this process or the next.
        spool_bytes: Bytes the spool directory holds (every producer's).
        unspooled: Events sent from the spool by this producer's data source (its own,
            counted in ``sent`` too, and those another process left).
        spool_corrupt: Spool files that failed their checksum (moved aside, not sent).
        unknown: Events whose request was under way when the exit budget (or a closed
            producer's deadline) ran out: sent, but the answer did not come in time, so the
            server may have stored them or not (``event_id`` tells). Not counted as
            dropped; an answer that still comes moves them to ``sent`` or ``dropped``.

    Invariant: ``emitted == sent + dropped + queued + in_flight + spooled + unknown``.
    """

    emitted: int
    sent: int
    dropped: int
    dropped_by_reason: Mapping[str, int]
    dropped_by_level: Mapping[str, int]
    queued: int
    in_flight: int
    quarantined: int
    truncated: int
    repaired: int
    requests: int
    retries: int
    bytes_sent: int
    wire_bytes_sent: int
    queued_bytes: int
    last_error: str
    send_interval: float = 0.0
    spooled: int = 0
    spool_bytes: int = 0
    unspooled: int = 0
    spool_corrupt: int = 0
    unknown: int = 0

    def accounted(self) -> bool:
        """Whether every event emitted is sent, dropped, queued, in flight, spooled, or of
        unknown fate (sent without an answer in time).
        """
        return self.emitted == (
            self.sent + self.dropped + self.queued + self.in_flight + self.spooled + self.unknown
        )
