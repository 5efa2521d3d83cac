"""What the OpenTelemetry environment asks of a metric exporter: temporality and the
histograms' aggregation, read as the SDK's OTLP exporters read them, so that switching
``OTEL_METRICS_EXPORTER`` from ``otlp`` to ``tinybird`` changes nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)

TEMPORALITY_ENV: Final = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
HISTOGRAM_AGGREGATION_ENV: Final = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"


def temporality_preference(overrides: Mapping[type, Any] | None) -> dict[type, Any]:
    """The temporality per instrument class for ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_
    PREFERENCE``, as the SDK's OTLP exporters map it (opentelemetry-exporter-otlp-proto-common,
    ``OTLPMetricExporterMixin._get_temporality``; the spec's "OTLP Metric Exporter"):
    ``cumulative`` everything; ``delta`` counters, histograms and observable counters;
    ``lowmemory`` the synchronous counters and histograms only. Up-down counters and
    gauges stay cumulative. ``overrides`` win.

    Raises:
        ValueError: Another value (the OTLP exporters log a warning and use cumulative; a
            typo here would silently change what every sum means).
    """
    raw = os.environ.get(TEMPORALITY_ENV) or "cumulative"
    choice = raw.strip().lower()
    if choice not in ("cumulative", "delta", "lowmemory"):
        raise ValueError(
            f"tinybird-export: {TEMPORALITY_ENV} is {raw!r}: use cumulative (the default), "
            "delta or lowmemory."
        )
    delta, cumulative = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
    synchronous = cumulative if choice == "cumulative" else delta
    temporality: dict[type, Any] = {
        Counter: synchronous,
        UpDownCounter: cumulative,
        Histogram: synchronous,
        ObservableCounter: delta if choice == "delta" else cumulative,
        ObservableUpDownCounter: cumulative,
        ObservableGauge: cumulative,
    }
    temporality.update(overrides or {})
    return temporality


def aggregation_preference(overrides: Mapping[type, Any] | None) -> dict[type, Any]:
    """The histograms' aggregation for ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_
    AGGREGATION`` (``explicit_bucket_histogram``, the default, or
    ``base2_exponential_bucket_histogram``), as the OTLP exporters read it; ``overrides`` win.

    Raises:
        ValueError: Another value.
    """
    raw = os.environ.get(HISTOGRAM_AGGREGATION_ENV) or "explicit_bucket_histogram"
    choice = raw.strip().lower()
    aggregations = {
        "explicit_bucket_histogram": ExplicitBucketHistogramAggregation,
        "base2_exponential_bucket_histogram": ExponentialBucketHistogramAggregation,
    }
    if choice not in aggregations:
        raise ValueError(
            f"tinybird-export: {HISTOGRAM_AGGREGATION_ENV} is {raw!r}: use "
            "explicit_bucket_histogram (the default) or base2_exponential_bucket_histogram."
        )
    return {Histogram: aggregations[choice](), **(overrides or {})}
