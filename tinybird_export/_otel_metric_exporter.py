"""``TinybirdMetricExporter``: OpenTelemetry metrics into the template's four data sources.

Each kind of data point (gauge, sum, histogram, exponential histogram) goes to its own data
source through its own producer on the shared worker, so each has its own queue, memory
bound, retries and pacing: a 503 on one never holds back or re-sends another (the
Collector's exporter joins the four errors and retries all four, duplicating the ones that
had succeeded). ``_otel_metrics`` turns the points into rows.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from tinybird_export import _diagnostics
from tinybird_export._config import (
    METRICS_DATASOURCE_ENV,
    MetricExporterSettings,
    TinybirdConfig,
    kind,
)
from tinybird_export._line_encoder import safe_str
from tinybird_export._otel_metrics import (
    KINDS,
    Formats,
    NonFinite,
    data_kind,
    metric_points,
    point_row,
)
from tinybird_export._otel_preferences import aggregation_preference, temporality_preference
from tinybird_export._producer import Producer
from tinybird_export.stats import DeliveryStats, total

if TYPE_CHECKING:
    from typing_extensions import Unpack

_LABEL: Final = "TinybirdMetricExporter"


def _resolve(
    point_kind: str, datasource: str | None, settings: Mapping[str, Any]
) -> TinybirdConfig:
    """One data source's settings: its own name and env var, the rest shared."""

    def default_name(_values: Mapping[str, Any]) -> str:
        return f"otel_metrics_{point_kind}"

    return TinybirdConfig.resolve(
        {**settings, "datasource": datasource},
        kind=kind(_LABEL, MetricExporterSettings),
        datasource_env=METRICS_DATASOURCE_ENV[point_kind],
        default_datasource=default_name,
    )


class TinybirdMetricExporter(MetricExporter):
    """An OpenTelemetry ``MetricExporter`` that sends data points to the Events API, one row
    per point, into the four data sources of Tinybird's OpenTelemetry template.

    Constructible with no arguments (``OTEL_METRICS_EXPORTER=tinybird`` does that, and
    ``opentelemetry-instrument`` pairs it with a ``PeriodicExportingMetricReader`` that
    collects every ``OTEL_METRIC_EXPORT_INTERVAL`` ms). Each data source is a producer of
    its own on the shared worker: its own memory bound, retries and pacing, so a failure
    of one never re-sends another. Temporality follows
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` (``cumulative``, ``delta`` or
    ``lowmemory``, as the SDK's OTLP exporters read it), and the histogram aggregation
    ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``.

    Args:
        gauge_datasource: Gauge points (``TINYBIRD_METRICS_GAUGE_DATASOURCE``, default
            ``otel_metrics_gauge``).
        sum_datasource: Sum points (``TINYBIRD_METRICS_SUM_DATASOURCE``, ``otel_metrics_sum``).
        histogram_datasource: Histogram points (``TINYBIRD_METRICS_HISTOGRAM_DATASOURCE``,
            ``otel_metrics_histogram``).
        exponential_histogram_datasource: Exponential histogram points
            (``TINYBIRD_METRICS_EXPONENTIAL_HISTOGRAM_DATASOURCE``,
            ``otel_metrics_exponential_histogram``).
        preferred_temporality: Temporality by instrument class, over the preference.
        preferred_aggregation: Aggregation by instrument class, over the default.
        **settings: Any other setting of the README's table, keyword-only; each of the four
            data sources holds at most ``queue_max_bytes``.

    Raises:
        ValueError: A setting, or one of the two ``OTEL_EXPORTER_OTLP_METRICS_*``
            variables, is invalid; the message names it and the fix.
    """

    def __init__(
        self,
        *,
        gauge_datasource: str | None = None,
        sum_datasource: str | None = None,
        histogram_datasource: str | None = None,
        exponential_histogram_datasource: str | None = None,
        preferred_temporality: dict[type, Any] | None = None,
        preferred_aggregation: dict[type, Any] | None = None,
        **settings: Unpack[MetricExporterSettings],
    ) -> None:
        super().__init__(
            preferred_temporality=temporality_preference(preferred_temporality),
            preferred_aggregation=aggregation_preference(preferred_aggregation),
        )
        if "datasource" in settings:
            raise TypeError(
                f"tinybird-export: {_LABEL} has no setting 'datasource': it sends to four, "
                "gauge_datasource, sum_datasource, histogram_datasource and "
                "exponential_histogram_datasource."
            )
        datasources = (
            gauge_datasource,
            sum_datasource,
            histogram_datasource,
            exponential_histogram_datasource,
        )
        # Every setting is checked before any data source attaches to the shared worker.
        configs = [
            _resolve(point_kind, datasource, settings)
            for point_kind, datasource in zip(KINDS, datasources, strict=True)
        ]
        names = [config.datasource for config in configs]
        if len(set(names)) < len(names):
            raise ValueError(
                f"tinybird-export: {_LABEL}'s data sources are {', '.join(names)}: each kind "
                "of point needs its own (their columns differ); set gauge_datasource, "
                "sum_datasource, histogram_datasource and exponential_histogram_datasource "
                "(or TINYBIRD_METRICS_<KIND>_DATASOURCE) to four names."
            )
        self._producers = {
            point_kind: Producer(config, _LABEL)
            for point_kind, config in zip(KINDS, configs, strict=True)
        }
        self._flush_timeout = self._producers["sum"].config.flush_timeout
        self._started_ns = time.time_ns()
        self._formats = Formats()
        self._lock = threading.Lock()
        self._is_shutdown = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Convert and queue one row per data point (no I/O); FAILURE after shutdown.

        Never raises into the SDK's reader thread: a point that cannot be read, or whose
        value JSON cannot carry (NaN, ±Inf), is dropped alone, counted and said once.
        """
        if self._is_shutdown:
            return MetricExportResult.FAILURE
        try:
            self._put_all(metrics_data)
        except Exception as exc:  # noqa: BLE001 - a malformed batch must not reach the SDK
            _diagnostics.say_once(
                f"metrics-unreadable:{type(exc).__name__}",
                f"{_LABEL} could not read a metrics batch ({type(exc).__name__}: "
                f"{safe_str(exc)[:200]}); the points before it were queued.",
            )
        return MetricExportResult.SUCCESS

    def _put_all(self, metrics_data: MetricsData) -> None:
        formats, start_ns = self._formats, self._started_ns
        for base, metric in metric_points(metrics_data):
            point_kind = data_kind(metric.data)
            if point_kind is None:
                _diagnostics.say_once(
                    f"metrics-type:{type(metric.data).__name__}",
                    f"{_LABEL} does not know the metric data type "
                    f"{type(metric.data).__name__} (of {metric.name!r}); it was not sent.",
                )
                continue
            producer = self._producers[point_kind]
            for point in metric.data.data_points:
                try:
                    row = point_row(
                        point_kind, base, metric.data, point, formats=formats, start_ns=start_ns
                    )
                except NonFinite as exc:
                    self._refuse_non_finite(producer, metric.name, exc.field)
                except Exception as exc:  # noqa: BLE001 - one bad point must not fail the rest
                    producer.refuse_unreadable(point, exc)
                else:
                    if producer.has_before_send:  # the rows of a scope share their maps
                        row = {k: v.copy() if type(v) is dict else v for k, v in row.items()}
                    producer.put(row)

    def _refuse_non_finite(self, producer: Producer, metric: str, field: str) -> None:
        producer.refuse("non_finite")
        _diagnostics.say_once(
            "metrics-non-finite",
            f"{_LABEL}: a data point of {metric!r} has a NaN or infinite {field}, which "
            "JSON cannot carry: that point alone was dropped (counted as 'non_finite'), the "
            "others were sent. Later ones are counted without this message.",
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Wait until every point exported so far is acknowledged, or the deadline; whether
        every point exported since the previous ``force_flush`` returned was acknowledged, in
        all four data sources (False if any was dropped, even before this call).
        """
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        return self._each_within(deadline, lambda producer, left: producer.flush(left))

    def shutdown(self, timeout_millis: float | None = None, **kwargs: Any) -> None:
        """Flush within the deadline (default ``flush_timeout``; the SDK's reader passes its
        remaining time as ``timeout=`` in ms) and detach the four data sources from the
        shared worker. Idempotent; after it, ``export`` returns FAILURE without sending.
        """
        if timeout_millis is None:
            timeout_millis = kwargs.get("timeout")
        seconds = self._flush_timeout if timeout_millis is None else timeout_millis / 1000
        with self._lock:
            if self._is_shutdown:
                return
            self._is_shutdown = True
        deadline = time.monotonic() + max(seconds, 0)

        def close(producer: Producer, left: float) -> bool:
            producer.close(left)
            return True

        self._each_within(deadline, close)

    def _each_within(self, deadline: float, step: Callable[[Producer, float], bool]) -> bool:
        """Make every data source's queue due at once (one wake-up of the worker), then run
        ``step`` on each with what is left until ``deadline``.
        """
        producers = self._producers.values()
        for producer in producers:
            producer.make_due()
        return all([step(p, max(deadline - time.monotonic(), 0.0)) for p in producers])

    def stats(self) -> DeliveryStats:
        """The four data sources' delivery counters, added up (``stats.total``), with each
        data source's last error, named.
        """
        parts = self.datasource_stats()
        errors = (f"{name}: {part.last_error}" for name, part in parts.items() if part.last_error)
        return dataclasses.replace(total(parts.values()), last_error="; ".join(errors))

    def datasource_stats(self) -> dict[str, DeliveryStats]:
        """Each data source's delivery counters, by data source name."""
        return {p.channel.datasource: p.stats() for p in self._producers.values()}
