"""A small app instrumented with OpenTelemetry, exporting to Tinybird with no Collector.

Environment-only setup (``opentelemetry-instrument``, from ``opentelemetry-distro``)::

    OTEL_TRACES_EXPORTER=tinybird OTEL_LOGS_EXPORTER=tinybird OTEL_METRICS_EXPORTER=tinybird \\
    OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true OTEL_SERVICE_NAME=shop \\
    TINYBIRD_TOKEN=... opentelemetry-instrument python examples/otel_app.py

Programmatic setup: ``python examples/otel_app.py --programmatic`` (no SDK batch processor:
``SimpleSpanProcessor`` is enough, the exporter only queues into the shared worker). Metrics
go to the template's ``otel_metrics_*`` data sources, at exit here (every 60 s in a server).
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import metrics, trace

log = logging.getLogger("shop")


def setup_programmatically() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tinybird_export import TinybirdHandler, TinybirdMetricExporter, TinybirdSpanExporter

    resource = Resource.create({"service.name": "shop"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(TinybirdSpanExporter()))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(TinybirdMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    # Log events go to the handler's data source, with trace_id/span_id of the current span.
    logging.basicConfig(level=logging.INFO, handlers=[TinybirdHandler(datasource="app_logs")])


def main() -> None:
    if "--programmatic" in sys.argv:
        setup_programmatically()
    logging.getLogger().setLevel(logging.INFO)
    tracer = trace.get_tracer("shop")
    orders = metrics.get_meter("shop").create_counter("orders", description="orders placed")
    with (
        tracer.start_as_current_span(
            "checkout", attributes={"url.full": "https://shop.example/checkout"}
        ),
        tracer.start_as_current_span("charge card"),
    ):
        log.info("order placed", extra={"order_id": 42})
        orders.add(1, {"plan": "pro"})


if __name__ == "__main__":
    main()
