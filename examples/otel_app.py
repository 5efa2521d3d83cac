"""A small app instrumented with OpenTelemetry, exporting to Tinybird with no Collector.

Environment-only setup (``opentelemetry-instrument``, from ``opentelemetry-distro``)::

    OTEL_TRACES_EXPORTER=tinybird OTEL_LOGS_EXPORTER=tinybird OTEL_METRICS_EXPORTER=none \\
    OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true OTEL_SERVICE_NAME=shop \\
    TINYBIRD_TOKEN=... opentelemetry-instrument python examples/otel_app.py

Programmatic setup: ``python examples/otel_app.py --programmatic`` (no SDK batch processor:
``SimpleSpanProcessor`` is enough, the exporter only queues into the shared worker).
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace

log = logging.getLogger("shop")


def setup_programmatically() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tinybird_export import TinybirdHandler, TinybirdSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(TinybirdSpanExporter()))
    trace.set_tracer_provider(provider)
    # Log events go to the handler's data source, with trace_id/span_id of the current span.
    logging.basicConfig(level=logging.INFO, handlers=[TinybirdHandler(datasource="app_logs")])


def main() -> None:
    if "--programmatic" in sys.argv:
        setup_programmatically()
    logging.getLogger().setLevel(logging.INFO)
    tracer = trace.get_tracer("shop")
    with (
        tracer.start_as_current_span(
            "checkout", attributes={"url.full": "https://shop.example/checkout"}
        ),
        tracer.start_as_current_span("charge card"),
    ):
        log.info("order placed", extra={"order_id": 42})


if __name__ == "__main__":
    main()
