"""OpenTelemetry metric data points -> rows of the template's ``otel_metrics_*`` data sources.

One row per data point, with the keys and value rendering of the Collector's
``tinybirdexporter`` (opentelemetry-collector-contrib, ``exporter/tinybirdexporter/internal/
metrics.go``): the same JSON per line, so that the template's data sources and queries work
unchanged. Where that exporter loses data, these rows keep it:

- a NaN or infinite value, sum or bucket bound drops that point alone (Go's ``json.Marshal``
  fails there, and the Collector drops the whole request); a non-finite exemplar drops that
  exemplar alone; the SDK's ``±inf`` "not recorded" min and max are left out (NULL);
- a gauge carries a start time: the SDK gives its gauges none (the Collector writes 1970),
  so it is when this exporter started, as the Go SDK does for its cumulative gauges;
- exemplars carry their trace and span ids; resource and scope schema URLs and scope
  attributes are filled (the Python OTLP path drops them);
- empty bucket arrays are ``[]``, never ``null``.

Pure functions over the SDK's ``MetricsData``, read by attribute (no OpenTelemetry import),
so that every supported SDK works (1.25 has no exemplars and no scope attributes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Final

from tinybird_export._otel_mapper import rfc3339_nano, scope_fields, service_name, string_map

KINDS: Final = ("gauge", "sum", "histogram", "exponential_histogram")
"""The four kinds of data point, each with its own data source."""
_KIND_OF_DATA: Final = {
    "Gauge": "gauge",
    "Sum": "sum",
    "Histogram": "histogram",
    "ExponentialHistogram": "exponential_histogram",
}


_SECONDS_KEPT: Final = 64


class NonFinite(ValueError):
    """A value JSON cannot carry (NaN, ±Inf): the point is dropped."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class Formats:
    """What the rows of one exporter format again and again, remembered: the RFC 3339 text
    of each second (a collection's points share their time, and a series' start is often in
    the same second as others'), and a histogram's bounds (the SDK hands every point of an
    instrument the same tuple).
    """

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}
        self._bounds: tuple[Any, list[float]] = ((), [])

    def stamp(self, nanos: int) -> str:
        """Go's ``time.RFC3339Nano`` in UTC, as ``rfc3339_nano``."""
        seconds, rest = divmod(nanos, 1_000_000_000)
        prefix = self._seconds.get(seconds)
        if prefix is None:
            if len(self._seconds) >= _SECONDS_KEPT:
                self._seconds.clear()
            prefix = self._seconds[seconds] = rfc3339_nano(seconds * 1_000_000_000)[:-1]
        return f"{prefix}.{rest:09d}".rstrip("0") + "Z" if rest else prefix + "Z"

    def bounds(self, bounds: Any) -> list[float]:
        """A histogram's explicit bounds as floats (a fresh list per row).

        Raises:
            NonFinite: A bound is NaN or infinite.
        """
        known, floats = self._bounds
        if bounds is not known and bounds != known:
            floats = [float(b) for b in bounds]
            if not all(map(math.isfinite, floats)):
                raise NonFinite("explicit_bounds")
            self._bounds = (bounds, floats)
        return floats.copy()


def data_kind(data: Any) -> str | None:
    """The kind (``KINDS``) of a metric's ``data``, by its SDK type's name; None if unknown."""
    return _KIND_OF_DATA.get(type(data).__name__)


def metric_points(metrics_data: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each metric of ``MetricsData`` with what its rows share (resource, scope, metric)."""
    for resource_metrics in metrics_data.resource_metrics:
        resource = resource_metrics.resource
        for scope_metrics in resource_metrics.scope_metrics:
            shared = {
                **scope_fields(scope_metrics.scope, resource),
                "service_name": service_name(resource),
            }
            # The SDK copies the resource's and the scope's schema URL into these.
            shared["resource_schema_url"] = (
                getattr(resource_metrics, "schema_url", "") or shared["resource_schema_url"]
            )
            shared["scope_schema_url"] = (
                getattr(scope_metrics, "schema_url", "") or shared["scope_schema_url"]
            )
            for metric in scope_metrics.metrics:
                yield (
                    {
                        **shared,
                        "metric_name": metric.name,
                        "metric_description": metric.description or "",
                        "metric_unit": metric.unit or "",
                    },
                    metric,
                )


def point_row(
    kind: str, base: dict[str, Any], data: Any, point: Any, *, formats: Formats, start_ns: int
) -> dict[str, Any]:
    """One row: ``base`` (from ``metric_points``) and the point's own fields.

    Args:
        kind: The metric's kind (``data_kind``).
        base: What the metric's rows share.
        data: The metric's ``data`` (temporality, monotonicity).
        point: The data point.
        formats: Formats timestamps and bounds.
        start_ns: The start time of a point that has none (gauges).

    Raises:
        NonFinite: A value, sum or bucket bound is NaN or infinite.
    """
    stamp = formats.stamp
    row = {
        **base,
        "start_timestamp": stamp(point.start_time_unix_nano or start_ns),
        "timestamp": stamp(point.time_unix_nano),
        # Only exponential histogram points have flags in the SDK (NO_RECORDED_VALUE is
        # never set by it); the Collector writes 0 for the others' absent flags too.
        "flags": int(getattr(point, "flags", 0) or 0),
        "metric_attributes": string_map(point.attributes),
        **_exemplars(getattr(point, "exemplars", None), stamp),
    }
    if kind in ("gauge", "sum"):
        row["value"] = _finite(float(point.value), "value")
        if kind == "sum":
            row["aggregation_temporality"] = int(data.aggregation_temporality)
            row["is_monotonic"] = bool(data.is_monotonic)
        return row
    row["count"] = int(point.count)
    row["sum"] = _finite(float(point.sum), "sum")
    if kind == "histogram":
        row["bucket_counts"] = list(point.bucket_counts)
        row["explicit_bounds"] = formats.bounds(point.explicit_bounds)
    else:
        row["scale"] = int(point.scale)
        row["zero_count"] = int(point.zero_count)
        row["positive_offset"] = int(point.positive.offset)
        row["positive_bucket_counts"] = list(point.positive.bucket_counts)
        row["negative_offset"] = int(point.negative.offset)
        row["negative_bucket_counts"] = list(point.negative.bucket_counts)
    # Absent when not recorded: the SDK then holds +inf and -inf (record_min_max=False, or
    # no measurement), and the Collector leaves them out (omitempty), so the column is NULL.
    for key in ("min", "max"):
        value = getattr(point, key, None)
        if value is not None and math.isfinite(value):
            row[key] = float(value)
    row["aggregation_temporality"] = int(data.aggregation_temporality)
    return row


def _finite(value: float, field: str) -> float:
    if math.isfinite(value):
        return value
    raise NonFinite(field)


def _exemplars(exemplars: Any, stamp: Callable[[int], str]) -> dict[str, list[Any]]:
    """The five parallel exemplar arrays; an exemplar with a non-finite value is left out."""
    if not exemplars:
        return {
            "exemplars_filtered_attributes": [],
            "exemplars_timestamp": [],
            "exemplars_value": [],
            "exemplars_span_id": [],
            "exemplars_trace_id": [],
        }
    kept = [e for e in exemplars if math.isfinite(e.value)]
    return {
        "exemplars_filtered_attributes": [string_map(e.filtered_attributes) for e in kept],
        "exemplars_timestamp": [stamp(e.time_unix_nano) for e in kept],
        "exemplars_value": [float(e.value) for e in kept],
        "exemplars_span_id": [format(e.span_id, "016x") if e.span_id else "" for e in kept],
        "exemplars_trace_id": [format(e.trace_id, "032x") if e.trace_id else "" for e in kept],
    }
