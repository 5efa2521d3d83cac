"""Delivery counters: what each producer (handler, event sender, exporter) reports.

``handler.stats()``, ``events.stats()`` and the exporters' ``stats()`` return a
``DeliveryStats`` snapshot, taken under the producer's queue lock, so its counters are
consistent with each other::

    emitted == sent + dropped + queued + in_flight + spooled + unknown

``emitted`` is counted where an event enters (accepted or refused), independently of the
others, so an event lost between two counters breaks the equation instead of hiding in it.
``total`` adds several snapshots up (the equation holds for the sum too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["DeliveryStats", "total"]

# The spool directory's counters are the same in each producer's snapshot (one directory),
# and a send interval is a duration: neither adds up.
_LARGEST: Final = frozenset({"send_interval", "spool_bytes", "spool_corrupt"})


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


def total(parts: Iterable[DeliveryStats]) -> DeliveryStats:
    """Several snapshots as one: the counts added up, ``dropped_by_reason`` and
    ``dropped_by_level`` merged, ``send_interval`` and the spool directory's counters
    (``spool_bytes``, ``spool_corrupt``) at their largest, and the last non-empty
    ``last_error``.

    For the counters of several producers (a handler and an event sender, say), or of one
    producer across its openings (a reopened handler).
    """
    parts = list(parts)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(DeliveryStats):
        items = [getattr(part, field.name) for part in parts]
        if field.name in _LARGEST:
            values[field.name] = max(items, default=0)
        elif field.name == "last_error":
            values[field.name] = next((item for item in reversed(items) if item), "")
        elif field.name in ("dropped_by_reason", "dropped_by_level"):
            merged: dict[str, int] = {}
            for item in items:
                for key, count in item.items():
                    merged[key] = merged.get(key, 0) + count
            values[field.name] = merged
        else:
            values[field.name] = sum(items)
    return DeliveryStats(**values)
