"""``TinybirdEvents``: an application's own events (page views, clicks) through the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tinybird_export._config import EventsSettings, TinybirdConfig, kind
from tinybird_export._producer import Producer
from tinybird_export._record_mapper import plain_event
from tinybird_export.stats import DeliveryStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["TinybirdEvents"]

_KIND = kind("TinybirdEvents", EventsSettings)


class TinybirdEvents:
    """Sends plain dicts to a data source, with the handler's batching and guarantees.

    ``send`` copies the event, adds the static ``fields`` (the event's own keys win), fills
    in ``timestamp`` (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``) and ``event_id`` when absent,
    encodes it and queues it; it never blocks or does I/O. Settings are the handler's
    (same arguments, same environment variables) but for the log-record ones, ``service``
    and ``extras``, which are refused.

    Example::

        events = TinybirdEvents(datasource="simple_events")
        events.send({"href": "https://shop.example/", "event": "page_view"})
    """

    def __init__(self, datasource: str | None = None, **settings: Unpack[EventsSettings]) -> None:
        config = TinybirdConfig.resolve({"datasource": datasource, **settings}, kind=_KIND)
        self._fields = dict(config.fields)
        self._producer = Producer(config, "TinybirdEvents")

    def __repr__(self) -> str:
        return f"<TinybirdEvents {self._producer.config.datasource}>"

    def send(self, event: Mapping[str, Any], *, level: int = 0) -> None:
        """Queue one event. Bad values are repaired, oversized ones truncated or dropped and
        counted; nothing is raised to the caller for bad data.

        Args:
            event: The event's fields.
            level: A logging level for the event's priority when the memory bound is
                reached: WARNING or higher displaces queued events of lower levels (the
                README's drop policy). 0, the default, is the plain policy: the newest
                event is dropped.

        Raises:
            TypeError: ``event`` is not a mapping (a programming error, not bad data).
        """
        if not isinstance(event, Mapping):
            raise TypeError(f"TinybirdEvents.send takes a mapping, not {type(event).__name__}")
        try:
            copy = plain_event(event, self._fields)
        except Exception as exc:  # noqa: BLE001 - a mapping that raises when read
            self._producer.refuse_unreadable(event, exc)
            return
        self._producer.put(copy, level)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event sent before the call is acknowledged, or ``timeout``.

        Returns:
            Whether every event sent since the previous ``flush()`` returned (or since the
            sender was made) was acknowledged in time: False if any of them was dropped
            (``stats().dropped_by_reason`` says why; events ``before_send`` filtered out do
            not count), even before this call; True again once a later flush finds
            everything since acknowledged.
        """
        return self._producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush within ``timeout`` (default ``flush_timeout``) and stop sending; what is
        still queued is sent in the background until then, then counted as
        ``close_timeout``. Idempotent.
        """
        self._producer.close(timeout)

    async def aflush(self, timeout: float | None = None) -> bool:
        """``flush(timeout)`` for a coroutine, never blocking the loop and without a thread
        of its own: the sender that completes the flush wakes it (asyncio and trio).

        Returns:
            What ``flush`` returns: whether every event sent since the previous flush
            returned was acknowledged in time (none dropped).
        """
        return await self._producer.aflush(timeout)

    async def aclose(self) -> None:
        """``close()`` for a coroutine: its flush (within ``flush_timeout``) awaited as
        ``aflush`` awaits.
        """
        await self._producer.aclose()

    async def __aenter__(self) -> TinybirdEvents:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stats(self) -> DeliveryStats:
        """A snapshot of this sender's delivery counters."""
        return self._producer.stats()

    def __enter__(self) -> TinybirdEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
