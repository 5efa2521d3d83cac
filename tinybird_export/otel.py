"""OpenTelemetry exporters: spans, log records and metrics to the Events API, no Collector.

All put events through the same producers and shared worker as ``TinybirdHandler``:
``export()`` converts and queues (no I/O), so ``SimpleSpanProcessor`` is cheap, and
``BatchSpanProcessor`` works too. Needs the ``otel`` extra (``opentelemetry-sdk``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tinybird_export import _runtime_checks
from tinybird_export._config import ExporterSettings, TinybirdConfig, kind
from tinybird_export._otel_mapper import (
    log_to_flat,
    log_to_otel,
    severity_level,
    span_to_flat,
    span_to_otel,
)
from tinybird_export._otel_metric_exporter import TinybirdMetricExporter
from tinybird_export._producer import Producer
from tinybird_export.stats import DeliveryStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

try:  # opentelemetry-sdk >= 1.39 renamed the logs exporter interface
    from opentelemetry.sdk._logs.export import LogRecordExporter as _LogExporterBase
    from opentelemetry.sdk._logs.export import LogRecordExportResult as _LogResult
except ImportError:  # pragma: no cover - exercised by the lowest supported SDK in CI
    from opentelemetry.sdk._logs.export import LogExporter as _LogExporterBase  # type: ignore[assignment,unused-ignore]
    from opentelemetry.sdk._logs.export import LogExportResult as _LogResult  # type: ignore[assignment,unused-ignore]

__all__ = ["TinybirdLogExporter", "TinybirdMetricExporter", "TinybirdSpanExporter"]


class _Exporter:
    """What both exporters share: settings, the producer, flush and shutdown deadlines."""

    def __init__(
        self,
        label: str,
        datasource_env: str,
        defaults: dict[str, str],
        converters: dict[str, Callable[[Any], dict[str, Any]]],
        settings: Mapping[str, Any],
    ) -> None:
        config = TinybirdConfig.resolve(
            settings,
            kind=kind(label, ExporterSettings),
            datasource_env=datasource_env,
            default_datasource=lambda values: defaults[values.get("shape", "flat")],
        )
        self._producer = Producer(config, label)
        self._convert = converters[config.shape]
        self._lock = threading.Lock()
        self._is_shutdown = False

    def _put_all(self, items: Sequence[Any]) -> bool:
        if self._is_shutdown:
            self._producer.refuse("closed", len(items))  # handed over, and refused
            return False
        level = self._level
        for item in items:
            try:
                self._producer.put(self._convert(item), level(item))
            except Exception:  # noqa: BLE001 - one bad item must not fail the batch
                self._producer.refuse("error")
        return True

    @staticmethod
    def _level(item: Any) -> int:
        """The backpressure priority: none for spans (the plain drop policy)."""
        return 0

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until everything exported so far is acknowledged, or the deadline; whether
        everything exported since the previous ``force_flush`` returned was acknowledged
        (False if any of it was dropped, even before this call).
        """
        return self._producer.flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """Flush within the deadline (default ``flush_timeout``: the SDK calls this with no
        argument at exit) and detach from the shared worker. Idempotent; after it,
        ``export`` returns FAILURE without sending.
        """
        with self._lock:
            if self._is_shutdown:
                return
            self._is_shutdown = True
        self._producer.close(None if timeout_millis is None else timeout_millis / 1000)

    def stats(self) -> DeliveryStats:
        """A snapshot of this exporter's delivery counters."""
        return self._producer.stats()


class TinybirdSpanExporter(_Exporter, SpanExporter):
    """An OpenTelemetry ``SpanExporter`` that sends spans to the Events API.

    Constructible with no arguments (the SDK's ``OTEL_TRACES_EXPORTER=tinybird`` entry point
    does that): settings come from the environment like the handler's, but the data source
    is ``TINYBIRD_TRACES_DATASOURCE`` (never ``TINYBIRD_DATASOURCE``, so shapes never mix),
    default ``traces`` for the flat shape and ``otel_traces`` for the ``otel`` shape.

    Args:
        datasource: Data source (``TINYBIRD_TRACES_DATASOURCE``).
        shape: ``flat`` (default) or ``otel`` (Tinybird's OpenTelemetry template),
            ``TINYBIRD_OTEL_SHAPE``.
        **settings: Any other setting of the README's table, keyword-only (``service``,
            ``fields`` and ``extras`` do not apply: spans carry their resource).
    """

    def __init__(self, datasource: str | None = None, **settings: Unpack[ExporterSettings]) -> None:
        super().__init__(
            "TinybirdSpanExporter",
            "TINYBIRD_TRACES_DATASOURCE",
            {"flat": "traces", "otel": "otel_traces"},
            {"flat": span_to_flat, "otel": span_to_otel},
            {"datasource": datasource, **settings},
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Convert and queue the spans (no I/O); FAILURE after shutdown."""
        ok = self._put_all(spans)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class TinybirdLogExporter(_Exporter, _LogExporterBase):
    """An OpenTelemetry SDK log exporter (``opentelemetry.sdk._logs``) for the Events API.

    Same rules as ``TinybirdSpanExporter``; the data source is ``TINYBIRD_LOGS_DATASOURCE``,
    default ``logs`` (flat shape, the handler's log event schema) or ``otel_logs`` (``otel``).
    Records that urllib3 produces while this package sends are never exported (see
    ``_process``'s recursion guard), so a failing endpoint cannot feed back into itself.
    """

    def __init__(self, datasource: str | None = None, **settings: Unpack[ExporterSettings]) -> None:
        super().__init__(
            "TinybirdLogExporter",
            "TINYBIRD_LOGS_DATASOURCE",
            {"flat": "logs", "otel": "otel_logs"},
            {"flat": log_to_flat, "otel": log_to_otel},
            {"datasource": datasource, **settings},
        )
        # Known to the check for logs stored twice (a TinybirdHandler on the same records).
        _runtime_checks.log_exporter_opened(self, self._producer.config.datasource)

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """As ``TinybirdSpanExporter.shutdown``."""
        _runtime_checks.log_exporter_closed(self)
        super().shutdown(timeout_millis)

    def export(self, batch: Sequence[Any]) -> Any:
        """Convert and queue the log records (no I/O); FAILURE after shutdown."""
        return _LogResult.SUCCESS if self._put_all(batch) else _LogResult.FAILURE

    @staticmethod
    def _level(item: Any) -> int:
        """A log record's severity as a logging level, for the severity-aware drop policy."""
        return severity_level(item)
