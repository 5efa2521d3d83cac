"""OpenTelemetry exporters with the real SDK, against the test server and the local server."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler  # noqa: E402
from opentelemetry.sdk._logs.export import (  # noqa: E402
    BatchLogRecordProcessor,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: E402

from tests.helpers import ROOT, child_env, run_python  # noqa: E402
from tinybird_export import TinybirdHandler  # noqa: E402
from tinybird_export.local import DATASOURCES_DIR, LocalServer  # noqa: E402
from tinybird_export.local._datafile import parse_datasource  # noqa: E402
from tinybird_export.otel import TinybirdLogExporter, TinybirdSpanExporter  # noqa: E402
from tinybird_export.testing import EventsServer, Reply  # noqa: E402

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")
RESOURCE = Resource.create({"service.name": "checkout", "deployment.environment": "test"})


@pytest.fixture
def tracer_for() -> Iterator[Any]:
    providers: list[TracerProvider] = []

    def make(exporter: Any, batch: bool = False) -> Any:
        provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
        providers.append(provider)
        if exporter is None:
            return provider.get_tracer("tests.otel", "1.2.3")
        processor = (
            BatchSpanProcessor(exporter, schedule_delay_millis=50)
            if batch
            else SimpleSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
        return provider.get_tracer("tests.otel", "1.2.3")

    yield make
    for provider in providers:
        provider.shutdown()


def exporter_for(
    server: EventsServer | LocalServer, cls: Any = TinybirdSpanExporter, **settings: Any
) -> Any:
    return cls(host=server.url, token=server.token, **settings)


def make_spans(tracer: Any) -> None:
    with tracer.start_as_current_span(
        "GET /cart",
        kind=SpanKind.SERVER,
        attributes={
            "url.full": "https://shop.example/cart?x=1",
            "http.response.status_code": 200,
            "flags": [1, 2],
            "ok": True,
        },
    ) as parent:
        with tracer.start_as_current_span("db query") as child:
            child.add_event("cache miss", {"key": "cart:1"})
        try:
            raise ValueError("bad cart")
        except ValueError as exc:
            parent.record_exception(exc)
            parent.set_status(Status(StatusCode.ERROR, "bad cart"))


class TestSpanExporter:
    def test_flat_span_events(self, server: EventsServer, tracer_for: Any) -> None:
        """Spans arrive in the flat shape with their ids, duration and status."""
        exporter = exporter_for(server)
        make_spans(tracer_for(exporter))
        assert exporter.force_flush(10_000)
        child, parent = server.events("traces")
        assert parent["event"] == "GET /cart"
        assert parent["href"] == "https://shop.example/cart?x=1"
        assert re.fullmatch(r"[0-9a-f]{32}", parent["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", parent["span_id"])
        assert parent["parent_span_id"] == ""
        assert child["parent_span_id"] == parent["span_id"]
        assert child["trace_id"] == parent["trace_id"]
        assert (parent["kind"], parent["status"], parent["status_message"]) == (
            "SERVER",
            "ERROR",
            "bad cart",
        )
        assert (child["kind"], child["status"]) == ("INTERNAL", "UNSET")
        assert parent["service"] == "checkout"
        assert parent["attributes"]["http.response.status_code"] == "200"
        assert parent["attributes"]["flags"] == "[1,2]"
        assert parent["attributes"]["ok"] == "true"
        assert parent["resource"]["deployment.environment"] == "test"
        assert "ValueError: bad cart" in parent["exception"]
        assert isinstance(parent["duration_ms"], float) and parent["duration_ms"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", parent["timestamp"])

    def test_href_built_from_parts(self, server: EventsServer, tracer_for: Any) -> None:
        """href is built from the span's URL parts when it has no full URL."""
        exporter = exporter_for(server)
        tracer = tracer_for(exporter)
        with tracer.start_as_current_span(
            "a",
            attributes={
                "http.scheme": "https",
                "http.host": "shop.example",
                "http.target": "/p?q=1",
            },
        ):
            pass
        with tracer.start_as_current_span("b"):
            pass
        assert exporter.force_flush(10_000)
        assert [e["href"] for e in server.events()] == ["https://shop.example/p?q=1", ""]

    def test_batch_span_processor(self, server: EventsServer, tracer_for: Any) -> None:
        """BatchSpanProcessor's batches arrive whole."""
        exporter = exporter_for(server)
        tracer = tracer_for(exporter, batch=True)
        for i in range(50):
            with tracer.start_as_current_span(f"span {i}"):
                pass
        assert server.wait_for_rows(50, timeout=20)

    def test_otel_shape_matches_the_template(self, tracer_for: Any) -> None:
        """The template's otel_traces data source takes every span without quarantine."""
        with LocalServer(datasources=DATASOURCES_DIR, strict=True) as local:
            exporter = exporter_for(local, shape="otel", wait=True)
            make_spans(tracer_for(exporter))
            assert exporter.force_flush(10_000)
            assert exporter.stats().quarantined == 0 and exporter.stats().sent == 2
            from tinybird_export.cli import query

            rows: Any = query(local.url, local.token, "select * from otel_traces order by Duration")
            parent = rows["data"][1]
            assert parent["SpanKind"] == "Server" and parent["StatusCode"] == "Error"
            assert parent["ServiceName"] == "checkout" and parent["ScopeName"] == "tests.otel"
            assert parent["ScopeVersion"] == "1.2.3"
            assert parent["EventsName"] == ["exception"]
            assert rows["data"][0]["EventsName"] == ["cache miss"]
            assert rows["data"][0]["EventsAttributes"] == [{"key": "cart:1"}]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}", parent["Timestamp"])

    def test_otel_shape_wire_format(self, server: EventsServer, tracer_for: Any) -> None:
        """The otel shape is the template's wire format."""
        exporter = exporter_for(server, shape="otel")
        make_spans(tracer_for(exporter))
        assert exporter.force_flush(10_000)
        child, parent = server.events("otel_traces")
        assert RFC3339.match(parent["start_time"]) and RFC3339.match(parent["end_time"])
        assert isinstance(parent["duration"], int) and parent["duration"] > 0
        assert parent["span_kind"] == "Server" and child["span_kind"] == "Internal"
        assert parent["status_code"] == "Error" and child["status_code"] == "Unset"
        assert parent["parent_span_id"] == "" and child["parent_span_id"] == parent["span_id"]
        assert parent["trace_flags"] & 1 == 1 and parent["trace_state"] == ""  # sampled bit
        assert all(isinstance(v, str) for v in parent["span_attributes"].values())
        assert parent["resource_attributes"]["service.name"] == "checkout"

    def test_datasource_never_from_tinybird_datasource(
        self, monkeypatch: pytest.MonkeyPatch, server: EventsServer
    ) -> None:
        """The exporters' data sources never come from TINYBIRD_DATASOURCE."""
        monkeypatch.setenv("TINYBIRD_DATASOURCE", "app_logs")
        monkeypatch.setenv("TINYBIRD_TOKEN", "t")
        assert TinybirdSpanExporter()._producer.config.datasource == "traces"
        monkeypatch.setenv("TINYBIRD_OTEL_SHAPE", "otel")
        assert TinybirdSpanExporter()._producer.config.datasource == "otel_traces"
        assert TinybirdLogExporter()._producer.config.datasource == "otel_logs"
        monkeypatch.setenv("TINYBIRD_TRACES_DATASOURCE", "my_spans")
        assert TinybirdSpanExporter()._producer.config.datasource == "my_spans"

    def test_deadlines_shutdown_and_export_after_shutdown(
        self, server: EventsServer, tracer_for: Any
    ) -> None:
        """Hanging endpoint: flush and shutdown keep their deadlines; export after fails."""
        server.respond(Reply(hang=True))
        exporter = exporter_for(server, timeout=30)
        tracer = tracer_for(exporter)
        with tracer.start_as_current_span("stuck"):
            pass
        assert_deadlines_honoured(exporter, server, [], SpanExportResult.FAILURE)


def assert_deadlines_honoured(
    exporter: Any, server: EventsServer, batch: Any, failure: Any
) -> None:
    """With what ``exporter`` exported stuck on a hanging ``server``: ``force_flush(200)`` and
    ``shutdown(300)`` (twice) return within their deadlines, and ``export(batch)`` after
    shutdown is ``failure`` without sending."""
    started = time.monotonic()
    assert exporter.force_flush(200) is False
    assert time.monotonic() - started < 3
    started = time.monotonic()
    exporter.shutdown(300)
    exporter.shutdown(300)
    assert time.monotonic() - started < 3
    before = server.arrivals
    assert exporter.export(batch) is failure
    assert server.arrivals == before
    server.release()


class TestLogExporter:
    def _logger(self, exporter: Any, batch: bool = False) -> tuple[logging.Logger, LoggerProvider]:
        provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
        processor = (
            BatchLogRecordProcessor(exporter) if batch else SimpleLogRecordProcessor(exporter)
        )
        provider.add_log_record_processor(processor)
        logger = logging.getLogger(f"otel.{os.urandom(3).hex()}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(LoggingHandler(logger_provider=provider))
        return logger, provider

    @pytest.mark.parametrize("shape", ["flat", "otel"])
    def test_log_records_fit_the_shipped_schemas(self, shape: str, tracer_for: Any) -> None:
        """Log records of both shapes fit the shipped .datasource schemas."""
        with LocalServer(datasources=DATASOURCES_DIR, strict=True) as local:
            exporter = exporter_for(local, TinybirdLogExporter, shape=shape, wait=True)
            logger, provider = self._logger(exporter)
            tracer = tracer_for(None)  # spans only for context: nothing exported
            with tracer.start_as_current_span("request"):
                logger.warning("inside %s", "span", extra={"cart_id": 42})
            try:
                1 / 0
            except ZeroDivisionError:
                logger.exception("boom")
            assert exporter.force_flush(10_000)
            stats = exporter.stats()
            assert (stats.sent, stats.quarantined) == (2, 0)
            from tinybird_export.cli import query

            table = "otel_logs" if shape == "otel" else "logs"
            rows: Any = query(local.url, local.token, f"select * from {table}")["data"]
            first = rows[0]
            if shape == "otel":
                assert first["Body"] == "inside span" and first["SeverityText"] == "WARN"
                assert first["SeverityNumber"] == 13 and len(first["TraceId"]) == 32
                assert first["LogAttributes"]["cart_id"] == "42"
            else:
                assert first["event"] == "inside span" and first["level"] == "WARN"
                assert len(first["trace_id"]) == 32 and first["attributes"]["cart_id"] == "42"
                assert "ZeroDivisionError" in rows[1]["exception"]
            provider.shutdown()

    def test_no_feedback_loop_through_logging_handler(self, server: EventsServer) -> None:
        """OTel's LoggingHandler on the root at DEBUG with urllib3 debug and a failing
        endpoint: urllib3's records from our sends are never exported."""
        server.script(Reply(status=503), Reply(status=503))
        result = run_python(
            """
            import logging
            from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
            from tinybird_export.otel import TinybirdLogExporter
            exporter = TinybirdLogExporter()
            provider = LoggerProvider()
            provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
            root = logging.getLogger()
            root.setLevel(logging.DEBUG)
            root.addHandler(LoggingHandler(logger_provider=provider))
            logging.getLogger("urllib3").setLevel(logging.DEBUG)
            logging.info("app record")
            provider.force_flush()
            print(exporter.force_flush(30_000), exporter.stats().emitted)
            provider.shutdown()
        """,
            {**child_env(server), "TINYBIRD_LOGS_DATASOURCE": "loop"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["True", "1"]
        assert [e["event"] for e in server.events("loop")] == ["app record"]


STORED_TWICE = "every record is stored twice, in two data sources"

# One program, three set-ups: OpenTelemetry's LoggingHandler handing records to a provider
# that exports to Tinybird, or to memory, on the root or on a logger of its own; and a
# TinybirdHandler on the root. Records are logged both before and after the second handler
# is attached, so whichever comes last is covered.
LOGS_TWICE = """
    import logging, sys
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as Memory
    except ImportError:  # opentelemetry-sdk < 1.39
        from opentelemetry.sdk._logs.export import InMemoryLogExporter as Memory
    from tinybird_export import TinybirdHandler
    from tinybird_export.otel import TinybirdLogExporter
    export_to, otel_logger, order = sys.argv[1:4]
    exporter = TinybirdLogExporter() if export_to == "tinybird" else Memory()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logging.getLogger("audit").propagate = False
    tinybird = TinybirdHandler(datasource="app_logs", flush_interval=60)
    handlers = [(logging.getLogger(otel_logger), LoggingHandler(logger_provider=provider)),
                (root, tinybird)]
    if order == "tinybird-first":
        handlers.reverse()
    for logger, handler in handlers:
        logger.addHandler(handler)
        for name in ("shop", "audit"):
            logging.getLogger(name).info("order placed")
    print(tinybird.flush(20))
    if export_to == "tinybird":
        print(exporter.force_flush(20_000))
    provider.shutdown()
"""


def run_logs_twice(
    server: EventsServer, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``LOGS_TWICE`` with ``args`` (export to, the LoggingHandler's logger, order)."""
    script = tmp_path / "logs_twice.py"
    script.write_text(textwrap.dedent(LOGS_TWICE))
    return subprocess.run(
        [sys.executable, str(script), *args],
        env={**os.environ, **child_env(server)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestLogsStoredTwice:
    @pytest.mark.parametrize("order", ["otel-first", "tinybird-first"])
    def test_logging_handler_exporting_to_tinybird_and_a_handler_are_said_once(
        self, server: EventsServer, order: str, tmp_path: Path
    ) -> None:
        """The SDK's LoggingHandler (exporting to Tinybird) and a TinybirdHandler on the
        root: each record arrives twice, in two data sources, and stderr says so once."""
        result = run_logs_twice(server, tmp_path, "tinybird", "", order)
        assert result.stdout.split() == ["True", "True"], result.stderr
        assert result.stderr.count(STORED_TWICE) == 1, result.stderr
        assert "records of logger 'root' reach both <TinybirdHandler app_logs" in result.stderr
        assert "TinybirdLogExporter sends to 'logs'" in result.stderr
        # What the message is about: the record logged once both were attached reached
        # both data sources (the one before, only the first handler's).
        assert sorted([len(server.events("logs")), len(server.events("app_logs"))]) == [1, 2]

    @pytest.mark.parametrize(
        ("export_to", "otel_logger"),
        [("memory", ""), ("tinybird", "audit")],
        ids=["otel-exports-elsewhere", "separate-loggers"],
    )
    def test_no_word_when_no_record_is_stored_twice(
        self, server: EventsServer, export_to: str, otel_logger: str, tmp_path: Path
    ) -> None:
        """A LoggingHandler exporting elsewhere, or on a logger whose records never reach
        the TinybirdHandler: nothing is stored twice, nothing is said."""
        result = run_logs_twice(server, tmp_path, export_to, otel_logger, "otel-first")
        assert result.returncode == 0, result.stderr
        assert STORED_TWICE not in result.stderr

    @pytest.mark.skipif(
        not (Path(sys.executable).parent / "opentelemetry-instrument").exists(),
        reason="opentelemetry-distro is not installed",
    )
    @pytest.mark.parametrize("configure", ["dictConfig", "addHandler"])
    def test_opentelemetry_instrument_auto_logging_and_a_handler_are_said_once(
        self, server: EventsServer, tmp_path: Path, configure: str
    ) -> None:
        """opentelemetry-instrument with OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED
        (the README's no-code line) attaches a LoggingHandler to the root; an app that also
        puts a TinybirdHandler there is told once, exactly when records are stored twice
        (opentelemetry-sdk < 1.39's dictConfig drops the LoggingHandler: then neither)."""
        app = tmp_path / "app.py"
        app.write_text(
            textwrap.dedent(f"""
            import logging.config
            from tinybird_export import TinybirdHandler
            if {configure == "dictConfig"}:
                logging.config.dictConfig({{
                    "version": 1,
                    "disable_existing_loggers": False,
                    "handlers": {{"tinybird": {{"class": "tinybird_export.TinybirdHandler",
                                              "datasource": "app_logs"}}}},
                    "root": {{"handlers": ["tinybird"], "level": "INFO"}},
                }})
            else:
                logging.getLogger().addHandler(TinybirdHandler(datasource="app_logs"))
                logging.getLogger().setLevel(logging.INFO)
            for i in range(3):
                logging.getLogger("shop").info("order placed")
        """)
        )
        env = {
            **os.environ,
            **child_env(server),
            "OTEL_LOGS_EXPORTER": "tinybird",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
        }
        instrument = Path(sys.executable).parent / "opentelemetry-instrument"
        result = subprocess.run(
            [str(instrument), sys.executable, str(app)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert len([e for e in server.events("app_logs") if e["event"] == "order placed"]) == 3
        twice = len([e for e in server.events("logs") if e["event"] == "order placed"])
        assert twice in (0, 3)
        assert result.stderr.count(STORED_TWICE) == (1 if twice else 0), result.stderr
        if configure == "addHandler":
            assert twice == 3  # the LoggingHandler stays: every version stores them twice


class TestCorrelationAndLifecycle:
    def test_handler_events_carry_the_current_span(
        self, server: EventsServer, make_handler: Any, logger: logging.Logger, tracer_for: Any
    ) -> None:
        """A handler's records carry the current span's trace and span ids."""
        handler = make_handler()
        logger.addHandler(handler)
        tracer = tracer_for(exporter_for(server))
        with tracer.start_as_current_span("work") as span:
            logger.info("inside")
            context = span.get_span_context()
        logger.info("outside")
        assert handler.flush(10)
        inside, outside = server.events("app_logs")
        assert inside["trace_id"] == format(context.trace_id, "032x")
        assert inside["span_id"] == format(context.span_id, "016x")
        assert outside["trace_id"] == outside["span_id"] == ""

    @pytest.mark.parametrize("provider_first", [True, False])
    def test_spans_ended_at_exit_are_delivered_either_order(
        self, server: EventsServer, provider_first: bool
    ) -> None:
        """The SDK's atexit shutdown and the package's drain may run in either order."""
        create_provider = """
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            provider = TracerProvider()
        """
        import_exporter = """
            from tinybird_export import TinybirdSpanExporter
        """
        body = """
            provider.add_span_processor(BatchSpanProcessor(TinybirdSpanExporter(),
                                                           schedule_delay_millis=60_000))
            tracer = provider.get_tracer("exit")
            for i in range(20):
                with tracer.start_as_current_span(f"span {i}"):
                    pass
        """
        parts = (
            [create_provider, import_exporter]
            if provider_first
            else [import_exporter, create_provider]
        )
        import textwrap

        code = "".join(textwrap.dedent(p) for p in [*parts, body])
        result = run_python(code, child_env(server))
        assert result.returncode == 0, result.stderr
        assert sorted(e["event"] for e in server.events("traces")) == sorted(
            f"span {i}" for i in range(20)
        )


class TestEntryPointsAndSchemas:
    @pytest.mark.parametrize(
        ("group", "cls"),
        [
            ("opentelemetry_traces_exporter", TinybirdSpanExporter),
            ("opentelemetry_logs_exporter", TinybirdLogExporter),
        ],
    )
    def test_entry_points(self, group: str, cls: type) -> None:
        """The SDK's entry points (OTEL_*_EXPORTER=tinybird) load the exporters."""
        (entry_point,) = importlib.metadata.entry_points(group=group, name="tinybird")
        assert entry_point.load() is cls

    @pytest.mark.skipif(
        shutil.which("opentelemetry-instrument") is None
        and not (Path(sys.executable).parent / "opentelemetry-instrument").exists(),
        reason="opentelemetry-distro is not installed",
    )
    def test_opentelemetry_instrument_run(self, server: EventsServer) -> None:
        """A real opentelemetry-instrument run, configured by environment variables only."""
        import subprocess

        instrument = Path(sys.executable).parent / "opentelemetry-instrument"
        env = {
            **os.environ,
            **child_env(server),
            "OTEL_TRACES_EXPORTER": "tinybird",
            "OTEL_LOGS_EXPORTER": "tinybird",
            "OTEL_METRICS_EXPORTER": "tinybird",
            "OTEL_SERVICE_NAME": "otel-example",
            "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
        }
        env.pop("TINYBIRD_DATASOURCE")
        result = subprocess.run(
            [str(instrument), sys.executable, str(Path(ROOT) / "examples" / "otel_app.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        spans = server.events("traces")
        logs = server.events("logs")
        assert {s["event"] for s in spans} >= {"checkout", "charge card"}
        assert all(s["service"] == "otel-example" for s in spans)
        assert "order placed" in {entry["event"] for entry in logs}
        placed = next(entry for entry in logs if entry["event"] == "order placed")
        assert placed["trace_id"] in {s["trace_id"] for s in spans}
        (orders,) = server.events("otel_metrics_sum")
        assert (orders["metric_name"], orders["value"], orders["service_name"]) == (
            "orders",
            1,
            "otel-example",
        )

    @pytest.mark.parametrize(
        ("file", "make_event", "not_stored"),
        [
            ("traces", "flat_span", set()),
            ("otel_traces", "otel_span", {"end_time", "trace_flags"}),
            ("logs", "flat_log", set()),
            ("otel_logs", "otel_log", set()),
            ("app_logs", "handler_log", set()),
        ],
    )
    def test_every_field_has_a_column_and_every_column_a_field(
        self,
        file: str,
        make_event: str,
        not_stored: set[str],
        tracer_for: Any,
        server: EventsServer,
    ) -> None:
        """The shipped schemas and the mappers agree (the template's otel_traces has no
        column for end_time and trace_flags, which the Collector's exporter also sends)."""
        columns = parse_datasource((DATASOURCES_DIR / f"{file}.datasource").read_text())
        paths = {c.path[0] for c in columns}
        event = _sample_event(make_event, tracer_for, server)
        assert set(event) - not_stored == paths
        for column in columns:
            column.type.convert(event[column.path[0]])  # raises if the type refuses it


def _sample_event(kind: str, tracer_for: Any, server: EventsServer) -> dict[str, Any]:
    from tinybird_export._otel_mapper import span_to_flat, span_to_otel

    if kind == "handler_log":
        handler = TinybirdHandler(datasource="app_logs", host=server.url, token=server.token)
        try:
            line, _ = handler._mapper.encode(logging.makeLogRecord({"msg": "x", "k": 1}), 1 << 20)
        finally:
            handler.close()
        import orjson

        event: dict[str, Any] = orjson.loads(line)  # type: ignore[arg-type]
        del event["k"]  # extras are not schema columns (they are in attributes)
        return event
    if kind in ("flat_span", "otel_span"):
        captured: list[Any] = []

        class Capture:
            def export(self, spans: Any) -> SpanExportResult:
                captured.extend(spans)
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

        make_spans(tracer_for(Capture()))
        return (span_to_flat if kind == "flat_span" else span_to_otel)(captured[-1])
    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogExporter
    except ImportError:  # opentelemetry-sdk < 1.39
        from opentelemetry.sdk._logs.export import InMemoryLogExporter  # type: ignore[no-redef,unused-ignore]

    from tinybird_export._otel_mapper import log_to_flat, log_to_otel

    memory = InMemoryLogExporter()  # type: ignore[no-untyped-call,unused-ignore]
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = logging.getLogger("schema.sample")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=provider))
    logger.warning("sample")
    item = memory.get_finished_logs()[-1]
    provider.shutdown()
    return (log_to_flat if kind == "flat_log" else log_to_otel)(item)


class TestSpanAttributes:
    def test_fast_copy_equals_the_public_view_and_is_independent(self) -> None:
        """The fast attribute copy equals the public view and is a copy."""
        from tinybird_export._otel_mapper import span_attributes

        tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
        with tracer.start_as_current_span("x", attributes={"a": 1, "b": "c"}) as span:
            pass
        copied = span_attributes(span)
        attributes: Any = getattr(span, "attributes", None)  # the SDK's span has them
        assert copied == dict(attributes) == {"a": 1, "b": "c"}
        copied["a"] = 2
        assert attributes["a"] == 1

    def test_objects_without_the_sdk_internals_take_the_public_path(self) -> None:
        """Span-like objects without the SDK's internals take the public path."""
        from tinybird_export._otel_mapper import span_attributes

        class Foreign:
            attributes: ClassVar[Any] = {"k": "v"}

        assert span_attributes(Foreign()) == {"k": "v"}
        Foreign.attributes = None
        assert span_attributes(Foreign()) == {}
