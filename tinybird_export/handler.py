"""``TinybirdHandler``: the ``logging.Handler`` that streams records to the Events API."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from tinybird_export._config import HandlerSettings, TinybirdConfig, kind
from tinybird_export._process import PROCESS
from tinybird_export._producer import Producer
from tinybird_export._record_mapper import RecordMapper
from tinybird_export.stats import DeliveryStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["TinybirdHandler"]

_get_ident = threading.get_ident
_sending_threads = PROCESS.sending.idents
_KIND = kind("TinybirdHandler", HandlerSettings)


class TinybirdHandler(logging.Handler):
    """Streams log records to ``POST {host}/v0/events?name={datasource}`` as NDJSON.

    ``emit`` turns the record into a flat event and queues it as one encoded line: no I/O,
    no waiting, no exception into the caller. A shared background worker batches and sends.
    Every argument may be given as a string (``dictConfig``, ``fileConfig``, Django's
    ``LOGGING``); unset arguments fall back to their ``TINYBIRD_*`` environment variables,
    then to the defaults listed in the README.

    Args:
        datasource: Data source to append to (``TINYBIRD_DATASOURCE``); required.
        level: The handler's level, as for any handler.
        **settings: The settings of the README's configuration table, keyword-only:
            ``token`` (``TINYBIRD_TOKEN``; without one the handler disables itself and says
            so once on stderr), ``host``, ``wait``, ``flush_interval``, ``service``,
            ``fields``, ``extras``, batch and queue limits, timeouts, ``compression``,
            ``before_send``...

    Raises:
        ValueError: A setting is missing or invalid; the message names it and its env var.
        TypeError: An unknown setting (the message suggests the nearest name), or one that
            does not apply to a handler.
    """

    def __init__(
        self,
        datasource: str | None = None,
        *,
        level: int | str = logging.NOTSET,
        **settings: Unpack[HandlerSettings],
    ) -> None:
        # Settings first: a handler that fails here must not be registered with logging
        # (logging.shutdown would flush a half-built handler at exit).
        config = TinybirdConfig.resolve({"datasource": datasource, **settings}, kind=_KIND)
        mapper = RecordMapper(config.service, config.fields, config.extras)
        super().__init__(level)
        self._mapper = mapper
        self._producer = Producer(config, "TinybirdHandler", flushed_by_logging=True)

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<TinybirdHandler {self._producer.config.datasource} ({level})>"

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:  # type: ignore[override]
        """Filter and emit without taking the handler lock.

        ``emit`` is thread-safe on its own, and the stock ``Handler.handle`` takes the lock
        that ``logging.shutdown`` holds across ``flush()``: logging threads must not wait on
        it. Records created by a thread that is sending (our worker, urllib3 inside a send)
        are dropped here, before any lock, so the handler never feeds on itself.
        """
        if _get_ident() in _sending_threads:
            self._producer.refuse("recursion")
            return False
        if not self.filters:  # the usual case, kept to one check
            self.emit(record)
            return True
        result = self.filter(record)
        if isinstance(result, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = result
        if result:
            self.emit(record)
        return result

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record as one event; failures go to ``handleError``, never the caller."""
        try:
            producer = self._producer
            if producer.has_before_send:
                producer.put(self._mapper(record), record.levelno)
            else:
                line, flags = self._mapper.encode(record, producer.max_event_bytes)
                producer.offer(line, flags, record.levelno)
        except Exception:  # noqa: BLE001 - logging's contract: never raise into the app
            self._producer.refuse("error")  # counted, never silently lost
            self.handleError(record)

    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Wait until every record emitted before the call is acknowledged by the server.

        Args:
            timeout: Seconds to wait at most; default ``flush_timeout``. No wait at all
                while the caller holds ``logging``'s module lock.

        Returns:
            Whether every record emitted since the previous ``flush()`` returned (or since
            the handler was made) was acknowledged (quarantined rows included) within the
            timeout: False if any of them was dropped (``stats().dropped_by_reason`` says
            why; records filtered by ``before_send`` do not count), even before this call;
            True again once a later flush finds everything since acknowledged.
        """
        return self._producer.flush(timeout)

    def close(self) -> None:
        """Flush within ``flush_timeout`` and stop sending for this handler. Idempotent.

        A closed handler that still gets records (a later ``dictConfig`` closed it and left
        it attached to a logger) reopens on the same data source and sends them, as
        ``logging.FileHandler`` does, and says so once on stderr; after the exit drain it
        does not (they are counted as ``after_exit``).
        """
        try:
            self._producer.close()
        finally:
            super().close()

    async def aflush(self, timeout: float | None = None) -> bool:
        """``flush(timeout)`` for a coroutine, never blocking the loop and without a thread
        of its own: the sender that completes the flush wakes it (asyncio and trio).

        Returns:
            What ``flush`` returns: whether every record emitted since the previous
            flush returned was acknowledged within the timeout (none dropped).
        """
        return await self._producer.aflush(timeout)

    async def aclose(self) -> None:
        """``close()`` for a coroutine: its flush (within ``flush_timeout``) awaited as
        ``aflush`` awaits.
        """
        try:
            await self._producer.aclose()
        finally:
            super().close()

    def stats(self) -> DeliveryStats:
        """A snapshot of this handler's delivery counters (see ``DeliveryStats``)."""
        return self._producer.stats()
