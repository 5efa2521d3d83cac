"""TinybirdMetricExporter with the real SDK, against the test server and the local server."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk")

from opentelemetry.metrics import Observation  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.view import (  # noqa: E402
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: E402

from tests.helpers import ROOT, child_env, run_python, talk_to_python  # noqa: E402
from tests.local_helpers import ENGINES, api, needs_clickhouse, sql  # noqa: E402
from tests.test_otel import assert_deadlines_honoured  # noqa: E402
from tinybird_export.local import DATASOURCES_DIR, LocalServer  # noqa: E402
from tinybird_export.local._datafile import parse_datasource  # noqa: E402
from tinybird_export.otel import TinybirdMetricExporter  # noqa: E402
from tinybird_export.testing import EventsServer, Reply  # noqa: E402

TABLES = {
    "gauge": "otel_metrics_gauge",
    "sum": "otel_metrics_sum",
    "histogram": "otel_metrics_histogram",
    "exponential_histogram": "otel_metrics_exponential_histogram",
}
RESOURCE = Resource.create({"service.name": "checkout", "deployment.environment": "test"})
# The SDK's points gained exemplars, and its scopes attributes, after 1.25 (the lowest
# supported SDK, run by .ci/run): what they do not have is not asserted there.
HAS_EXEMPLARS = "exemplars" in {f.name for f in dataclasses.fields(NumberDataPoint)}
SCOPE_ATTRIBUTES = "attributes" in inspect.signature(InstrumentationScope).parameters
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
needs_instrument = pytest.mark.skipif(
    not INSTRUMENT.exists(), reason="opentelemetry-distro is not installed"
)


@pytest.fixture
def exporter_for() -> Iterator[Any]:
    made: list[TinybirdMetricExporter] = []

    def make(server: EventsServer | LocalServer, **settings: Any) -> TinybirdMetricExporter:
        exporter = TinybirdMetricExporter(host=server.url, token=server.token, **settings)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown(5_000)


@pytest.fixture
def meter_for() -> Iterator[Any]:
    """A meter whose provider collects only on ``provider.force_flush()``."""
    providers: list[MeterProvider] = []

    def make(exporter: TinybirdMetricExporter, views: tuple[View, ...] = ()) -> Any:
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
        provider = MeterProvider(
            metric_readers=[reader], resource=RESOURCE, views=views, shutdown_on_exit=False
        )
        providers.append(provider)
        return provider.get_meter("tests.metrics", "1.2.3"), provider

    yield make
    for provider in providers:
        provider.shutdown()


def metrics_data(
    *metrics: Metric, resource: Resource = RESOURCE, scope: InstrumentationScope | None = None
) -> MetricsData:
    scope = scope or InstrumentationScope("tests.metrics", "1.2.3")
    return MetricsData(
        [
            ResourceMetrics(
                resource,
                [ScopeMetrics(scope, list(metrics), scope.schema_url or "")],
                resource.schema_url,
            )
        ]
    )


def number(value: float, start: int = 1, time_ns: int = 2, **attributes: Any) -> NumberDataPoint:
    return NumberDataPoint(attributes, start, time_ns, value)


def histogram_point(total: float, low: float = 1.0, high: float = 20.0) -> HistogramDataPoint:
    """Two values, one each side of 10; ``low``/``high`` its min and max."""
    return HistogramDataPoint({}, 1, 2, 2, total, [1, 1], [10.0], low, high)


def rows_by_table(server: EventsServer) -> dict[str, list[dict[str, Any]]]:
    return {kind: server.events(table) for kind, table in TABLES.items()}


class TestCollectorLines:
    """Each line is JSON-equal to what the Collector's tinybirdexporter writes for the same
    point: its own test cases (open-telemetry/opentelemetry-collector-contrib,
    exporter/tinybirdexporter/internal/metrics_test.go, TestConvertMetrics, and the gauge line
    of the reference research)."""

    SCHEMA = "https://opentelemetry.io/schemas/1.20.0"
    START, TIME = 1719158400000000000, 1719158401000000000
    BASE: dict[str, Any] = {  # noqa: RUF012 - read only
        "resource_schema_url": SCHEMA,
        "service_name": "test-service",
        "start_timestamp": "2024-06-23T16:00:00Z",
        "timestamp": "2024-06-23T16:00:01Z",
        "flags": 0,
        "metric_attributes": {},
        "scope_name": "test-scope",
        "scope_version": "1.0.0",
        "scope_schema_url": SCHEMA,
        "scope_attributes": {},
        "resource_attributes": {"service.name": "test-service"},
        "exemplars_filtered_attributes": [],
        "exemplars_timestamp": [],
        "exemplars_value": [],
        "exemplars_span_id": [],
        "exemplars_trace_id": [],
    }
    # The gauge case, as the Collector writes it (099f026 key order).
    GAUGE_LINE = (
        '{"resource_schema_url":"https://opentelemetry.io/schemas/1.20.0","resource_attributes":'
        '{"environment":"production","service.name":"test-service"},"service_name":"test-service",'
        '"start_timestamp":"2024-06-23T16:00:00Z","timestamp":"2024-06-23T16:00:01Z","flags":0,'
        '"metric_name":"test.gauge","metric_description":"Test gauge metric","metric_unit":"bytes",'
        '"metric_attributes":{"host":"server-1","region":"us-west"},"scope_name":"test-scope",'
        '"scope_version":"1.0.0","scope_schema_url":"https://opentelemetry.io/schemas/1.20.0",'
        '"scope_attributes":{"telemetry.sdk.name":"opentelemetry"},'
        '"exemplars_filtered_attributes":[],"exemplars_timestamp":[],"exemplars_value":[],'
        '"exemplars_span_id":[],"exemplars_trace_id":[],"value":1024}'
    )

    def case(self, name: str) -> tuple[Metric, Resource, InstrumentationScope, dict[str, Any]]:
        resource = Resource({"service.name": "test-service"}, self.SCHEMA)
        scope = InstrumentationScope("test-scope", "1.0.0", self.SCHEMA)
        expected = dict(self.BASE)
        if name == "sum":
            resource = Resource({}, self.SCHEMA)
            data: Any = Sum(
                [number(42.5, self.START, self.TIME)], AggregationTemporality.CUMULATIVE, True
            )
            metric = Metric("test.sum", "Test sum metric", "count", data)
            expected |= {"resource_attributes": {}, "service_name": "", "value": 42.5}
            expected |= {"aggregation_temporality": 2, "is_monotonic": True}
        elif name == "gauge":
            resource = Resource(
                {"service.name": "test-service", "environment": "production"}, self.SCHEMA
            )
            if SCOPE_ATTRIBUTES:
                scope = InstrumentationScope(
                    "test-scope",
                    "1.0.0",
                    self.SCHEMA,
                    {"telemetry.sdk.name": "opentelemetry"},  # type: ignore[call-arg,unused-ignore]
                )
            reading = number(1024, self.START, self.TIME, host="server-1", region="us-west")
            metric = Metric("test.gauge", "Test gauge metric", "bytes", Gauge([reading]))
            expected = json.loads(self.GAUGE_LINE)
            if not SCOPE_ATTRIBUTES:
                expected["scope_attributes"] = {}
        elif name == "histogram":
            if not HAS_EXEMPLARS:
                pytest.skip("this opentelemetry-sdk has no exemplars")
            from opentelemetry.sdk.metrics import Exemplar  # type: ignore[attr-defined,unused-ignore]

            exemplar = Exemplar(
                {"exemplar.type": "outlier"},
                1.2,
                1719158400500000000,
                0x0102030405060708,
                0x0102030405060708090A0B0C0D0E0F10,
            )
            # min/max +inf/-inf: the SDK's "not recorded" (the Go case sets none).
            buckets = HistogramDataPoint(
                {}, self.START, self.TIME, 100, 50.5, [10, 20, 30, 40], [0.5, 1.0, 1.5],
                math.inf, -math.inf, [exemplar],  # type: ignore[call-arg,unused-ignore]
            )  # fmt: skip
            data = Histogram([buckets], AggregationTemporality.DELTA)
            metric = Metric("test.histogram", "Test histogram metric", "seconds", data)
            expected |= {
                "exemplars_filtered_attributes": [{"exemplar.type": "outlier"}],
                "exemplars_timestamp": ["2024-06-23T16:00:00.5Z"],
                "exemplars_value": [1.2],
                "exemplars_span_id": ["0102030405060708"],
                "exemplars_trace_id": ["0102030405060708090a0b0c0d0e0f10"],
                "count": 100,
                "sum": 50.5,
                "bucket_counts": [10, 20, 30, 40],
                "explicit_bounds": [0.5, 1.0, 1.5],
                "aggregation_temporality": 1,
            }
        else:
            exponential = ExponentialHistogramDataPoint(
                {}, self.START, self.TIME, 200, 100.0, 2, 50, Buckets(1, [10, 20, 30]),
                Buckets(-1, [5, 15, 25]), 0, 0.1, 10.0,
            )  # fmt: skip
            data = ExponentialHistogram([exponential], AggregationTemporality.CUMULATIVE)
            metric = Metric(
                "test.exponential_histogram", "Test exponential histogram metric", "bytes", data
            )
            expected |= {
                "count": 200,
                "sum": 100.0,
                "scale": 2,
                "zero_count": 50,
                "positive_offset": 1,
                "positive_bucket_counts": [10, 20, 30],
                "negative_offset": -1,
                "negative_bucket_counts": [5, 15, 25],
                "min": 0.1,
                "max": 10.0,
                "aggregation_temporality": 2,
            }
        if name != "gauge":
            expected |= {
                "metric_name": metric.name,
                "metric_description": metric.description,
                "metric_unit": metric.unit,
            }
        return metric, resource, scope, expected

    @pytest.mark.parametrize("name", list(TABLES))
    def test_line_is_json_equal_to_the_collectors(
        self, name: str, server: EventsServer, exporter_for: Any
    ) -> None:
        """Each kind of point's line is JSON-equal to the Collector's own test case."""
        metric, resource, scope, expected = self.case(name)
        exporter = exporter_for(server)
        batch = metrics_data(metric, resource=resource, scope=scope)
        assert exporter.export(batch) is MetricExportResult.SUCCESS
        assert exporter.force_flush(10_000)
        (request,) = server.requests
        assert request.query["name"] == TABLES[name]
        (line,) = request.body.splitlines()
        assert json.loads(line) == expected


class TestInstruments:
    @pytest.mark.parametrize("engine", ENGINES)
    def test_every_instrument_kind_lands_in_its_table_with_nothing_quarantined(
        self, engine: str, exporter_for: Any, meter_for: Any
    ) -> None:
        """Through the package's .datasource files, on real ClickHouse (chDB) too."""
        with LocalServer(engine=engine, strict=True) as local:
            exporter = exporter_for(local, wait=True)
            views = (
                View(
                    instrument_name="payload.size",
                    aggregation=ExponentialBucketHistogramAggregation(),
                ),
            )
            meter, provider = meter_for(exporter, views)
            meter.create_counter("orders", "1", "orders placed").add(3, {"plan": "pro"})
            meter.create_up_down_counter("carts.open").add(-2)
            meter.create_histogram("latency", "ms").record(120.5, {"route": "/cart"})
            size = meter.create_histogram("payload.size", "By")
            for value in (0, 3, 700, 1e6):
                size.record(value)
            meter.create_observable_gauge(
                "temperature", callbacks=[lambda _: [Observation(21.5, {"room": "a"})]]
            )
            meter.create_observable_counter("cpu.time", callbacks=[lambda _: [Observation(9)]])
            meter.create_observable_up_down_counter(
                "threads", callbacks=[lambda _: [Observation(4)]]
            )
            meter.create_gauge("queue.depth").set(17)
            with (
                TracerProvider(shutdown_on_exit=False)
                .get_tracer("t")
                .start_as_current_span("request")
            ):  # exemplars with ids, where the SDK records them
                meter.create_histogram("in.span").record(5)
            provider.force_flush()
            assert exporter.force_flush(10_000)
            stats = exporter.stats()
            assert (stats.sent, stats.quarantined, stats.dropped) == (9, 0, 0)
            for info in api(local, "GET", "/v0/datasources").json()["datasources"]:
                assert info["quarantine_rows"] == 0, info

            def rows(text: str) -> list[dict[str, Any]]:
                answer: list[dict[str, Any]] = sql(local, text)["data"]
                return answer

            sums = rows(
                "select MetricName, Value, IsMonotonic, AggregationTemporality, Attributes "
                "from otel_metrics_sum order by MetricName"
            )
            assert [(r["MetricName"], r["Value"]) for r in sums] == [
                ("carts.open", -2),
                ("cpu.time", 9),
                ("orders", 3),
                ("threads", 4),
            ]
            assert [bool(r["IsMonotonic"]) for r in sums] == [False, True, True, False]
            assert {r["AggregationTemporality"] for r in sums} == {2}
            assert sums[2]["Attributes"] == {"plan": "pro"}
            gauges = rows(
                "select MetricName, Value, StartTimeUnix, TimeUnix, ServiceName, ScopeName, "
                "ScopeVersion from otel_metrics_gauge order by MetricName"
            )
            assert [(r["MetricName"], r["Value"]) for r in gauges] == [
                ("queue.depth", 17),
                ("temperature", 21.5),
            ]
            for gauge in gauges:  # a start time, not 1970: when the exporter started
                assert not gauge["StartTimeUnix"].startswith("1970")
                assert gauge["StartTimeUnix"] <= gauge["TimeUnix"]
                assert (gauge["ServiceName"], gauge["ScopeName"]) == ("checkout", "tests.metrics")
                assert gauge["ScopeVersion"] == "1.2.3"
            histograms = rows(
                "select MetricName, Count, Sum, BucketCounts, ExplicitBounds, Min, Max "
                "from otel_metrics_histogram order by MetricName"
            )
            latency = histograms[1]
            assert (latency["MetricName"], latency["Count"], latency["Sum"]) == (
                "latency",
                1,
                120.5,
            )
            assert sum(latency["BucketCounts"]) == 1
            assert len(latency["BucketCounts"]) == len(latency["ExplicitBounds"]) + 1
            assert (latency["Min"], latency["Max"]) == (120.5, 120.5)
            (exponential,) = rows(
                "select MetricName, Count, Scale, ZeroCount, PositiveOffset, "
                "PositiveBucketCounts, Min, Max from otel_metrics_exponential_histogram"
            )
            assert exponential["MetricName"] == "payload.size" and exponential["Count"] == 4
            assert exponential["ZeroCount"] == 1 and sum(exponential["PositiveBucketCounts"]) == 3
            assert (exponential["Min"], exponential["Max"]) == (0, 1e6)

    def test_every_field_has_a_column_and_every_column_a_field(
        self, server: EventsServer, exporter_for: Any, meter_for: Any
    ) -> None:
        """Each kind's row has exactly its .datasource's columns, and each value fits its type."""
        exporter = exporter_for(server)
        meter, provider = meter_for(
            exporter,
            (View(instrument_name="exp", aggregation=ExponentialBucketHistogramAggregation()),),
        )
        meter.create_counter("c").add(1)
        meter.create_histogram("h").record(1)
        meter.create_histogram("exp").record(1)
        meter.create_observable_gauge("g", callbacks=[lambda _: [Observation(1)]])
        provider.force_flush()
        assert exporter.force_flush(10_000)
        for kind, (row,) in rows_by_table(server).items():
            columns = parse_datasource((DATASOURCES_DIR / f"{TABLES[kind]}.datasource").read_text())
            assert {c.path[0] for c in columns} == set(row), kind
            for column in columns:
                column.type.convert(row[column.path[0]])  # raises if the type refuses it

    @pytest.mark.parametrize(
        ("preference", "counter", "observable_counter"),
        [
            ("", "cumulative", "cumulative"),
            ("cumulative", "cumulative", "cumulative"),
            ("DELTA", "delta", "delta"),
            ("lowmemory", "delta", "cumulative"),
        ],
    )
    def test_temporality_preference(
        self,
        preference: str,
        counter: str,
        observable_counter: str,
        monkeypatch: pytest.MonkeyPatch,
        server: EventsServer,
        exporter_for: Any,
        meter_for: Any,
    ) -> None:
        """As the SDK's OTLP exporters map OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE:
        up-down counters and gauges stay cumulative."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
        exporter = exporter_for(server)
        meter, provider = meter_for(exporter)
        orders = meter.create_counter("orders")
        latency = meter.create_histogram("latency")
        carts = meter.create_up_down_counter("carts")
        ticks = iter(range(10, 100, 10))
        meter.create_observable_counter("ticks", callbacks=[lambda _: [Observation(next(ticks))]])
        for amount in (1, 2):
            orders.add(amount)
            latency.record(amount)
            carts.add(amount)
            provider.force_flush()
        assert exporter.force_flush(10_000)
        code = {"delta": 1, "cumulative": 2}
        sums: dict[str, list[Any]] = {}
        for row in server.events("otel_metrics_sum"):
            sums.setdefault(row["metric_name"], []).append(
                (row["value"], row["aggregation_temporality"])
            )
        growing = {"delta": [1, 2], "cumulative": [1, 3]}
        assert sums["orders"] == [(v, code[counter]) for v in growing[counter]]
        assert sums["carts"] == [(1, 2), (3, 2)]
        observed = {"delta": [10, 10], "cumulative": [10, 20]}[observable_counter]
        assert sums["ticks"] == [(v, code[observable_counter]) for v in observed]
        histograms = server.events("otel_metrics_histogram")
        assert [(h["count"], h["aggregation_temporality"]) for h in histograms] == [
            (1, code[counter]),
            (1 if counter == "delta" else 2, code[counter]),
        ]

    def test_the_mapping_is_the_otlp_exporters(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each temporality preference maps instruments as the SDK's OTLP/HTTP exporter does."""
        otlp = pytest.importorskip(
            "opentelemetry.exporter.otlp.proto.http.metric_exporter",
            reason="the OTLP exporter is in the bench dependency group",
        )
        for preference in ("cumulative", "delta", "lowmemory"):
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
            ours = TinybirdMetricExporter(enabled=False)._preferred_temporality
            theirs = otlp.OTLPMetricExporter(endpoint="http://127.0.0.1:9")._preferred_temporality
            assert ours == theirs, preference

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "deltas"),
            ("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "exponential"),
        ],
    )
    def test_a_bad_preference_names_the_variable_and_the_fix(
        self, variable: str, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unknown temporality or histogram preference raises naming the variable and the fix."""
        monkeypatch.setenv(variable, value)
        with pytest.raises(ValueError, match=f"{variable} is '{value}': use "):
            TinybirdMetricExporter(enabled=False)

    def test_exponential_histograms_by_environment(
        self,
        monkeypatch: pytest.MonkeyPatch,
        server: EventsServer,
        exporter_for: Any,
        meter_for: Any,
    ) -> None:
        """The environment's default histogram aggregation sends histograms as exponential ones."""
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
            "base2_exponential_bucket_histogram",
        )
        exporter = exporter_for(server)
        meter, provider = meter_for(exporter)
        meter.create_histogram("latency").record(3)
        provider.force_flush()
        assert exporter.force_flush(10_000)
        assert [r["metric_name"] for r in server.events(TABLES["exponential_histogram"])] == [
            "latency"
        ]

    @pytest.mark.skipif(not HAS_EXEMPLARS, reason="this opentelemetry-sdk has no exemplars")
    def test_exemplars_recorded_inside_a_span_carry_its_ids(
        self, server: EventsServer, exporter_for: Any, meter_for: Any
    ) -> None:
        """Exemplars recorded inside a span carry its trace and span ids, value and time."""
        exporter = exporter_for(server)
        meter, provider = meter_for(exporter)
        latency = meter.create_histogram("latency")
        orders = meter.create_counter("orders")
        tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
        with tracer.start_as_current_span("request") as span:
            latency.record(42, {"route": "/cart"})
            orders.add(1)
            context = span.get_span_context()
        latency.record(7, {"route": "/cart"})  # outside: no exemplar (trace-based filter)
        provider.force_flush()
        assert exporter.force_flush(10_000)
        (histogram,) = server.events("otel_metrics_histogram")
        (counter,) = server.events("otel_metrics_sum")
        for row, value in ((histogram, 42), (counter, 1)):
            assert row["exemplars_trace_id"] == [format(context.trace_id, "032x")]
            assert row["exemplars_span_id"] == [format(context.span_id, "016x")]
            assert row["exemplars_value"] == [value]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", row["exemplars_timestamp"][0])
            assert len(row["exemplars_filtered_attributes"]) == 1


class TestBadData:
    def test_a_non_finite_value_drops_that_point_alone(
        self, server: EventsServer, exporter_for: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The Collector's JSON encoder fails there and drops the whole request for good."""
        exporter = exporter_for(server)
        gauge = Gauge([number(math.nan, room="a"), number(21.5, room="b")])
        total = Sum(
            [number(math.inf, route="/a"), number(3, route="/b")],
            AggregationTemporality.CUMULATIVE,
            True,
        )
        histogram = Histogram(
            [histogram_point(math.nan), histogram_point(21.0, low=math.inf, high=-math.inf)],
            AggregationTemporality.CUMULATIVE,
        )
        batch = metrics_data(
            Metric("temperature", None, None, gauge),
            Metric("orders", None, None, total),
            Metric("latency", None, None, histogram),
        )
        for _ in range(2):
            assert exporter.export(batch) is MetricExportResult.SUCCESS
        assert exporter.force_flush(10_000) is False  # the non-finite points were dropped
        assert exporter.force_flush(10_000) is True  # nothing dropped since
        rows = rows_by_table(server)
        assert [r["metric_attributes"] for r in rows["gauge"]] == [{"room": "b"}] * 2
        assert [r["metric_attributes"] for r in rows["sum"]] == [{"route": "/b"}] * 2
        assert [r["sum"] for r in rows["histogram"]] == [21.0] * 2
        assert "min" not in rows["histogram"][0] and "max" not in rows["histogram"][0]
        stats = exporter.stats()
        assert stats.dropped_by_reason == {"non_finite": 6} and stats.sent == 6
        by_source = exporter.datasource_stats()
        assert by_source["otel_metrics_gauge"].dropped_by_reason == {"non_finite": 2}
        err = capsys.readouterr().err
        assert err.count("tinybird-export:") == 1
        assert "'temperature' has a NaN or infinite value" in err and "'non_finite'" in err

    @pytest.mark.skipif(not HAS_EXEMPLARS, reason="this opentelemetry-sdk has no exemplars")
    def test_a_non_finite_exemplar_is_left_out_alone(
        self, server: EventsServer, exporter_for: Any
    ) -> None:
        """A NaN exemplar is left out, and the point keeps its finite exemplars."""
        from opentelemetry.sdk.metrics import Exemplar  # type: ignore[attr-defined,unused-ignore]

        exemplars = [Exemplar({}, math.nan, 5, 1, 1), Exemplar({}, 2.5, 5, 2, 2)]
        point = NumberDataPoint({}, 1, 2, 2.5, exemplars)  # type: ignore[call-arg,unused-ignore]
        exporter = exporter_for(server)
        exporter.export(metrics_data(Metric("g", None, None, Gauge([point]))))
        assert exporter.force_flush(10_000)
        (row,) = server.events("otel_metrics_gauge")
        assert row["exemplars_value"] == [2.5] and row["exemplars_span_id"] == ["0" * 15 + "2"]

    def test_a_nan_observation_beside_good_ones(
        self, server: EventsServer, exporter_for: Any, meter_for: Any
    ) -> None:
        """With the real SDK: 1.25 passes the NaN on (the exporter drops that point), newer
        ones drop it themselves; either way the good ones arrive and the bad one does not."""
        exporter = exporter_for(server)
        meter, provider = meter_for(exporter)
        meter.create_observable_gauge(
            "temperature",
            callbacks=[
                lambda _: [
                    Observation(21.5, {"room": "a"}),
                    Observation(math.nan, {"room": "b"}),
                    Observation(-math.inf, {"room": "c"}),
                    Observation(19.0, {"room": "d"}),
                ]
            ],
        )
        provider.force_flush()
        assert exporter.force_flush(10_000)
        rows = server.events("otel_metrics_gauge")
        assert sorted((r["metric_attributes"]["room"], r["value"]) for r in rows) == [
            ("a", 21.5),
            ("d", 19.0),
        ]
        assert exporter.stats().dropped_by_reason.get("non_finite", 0) in (0, 2)

    def test_export_never_raises_into_the_readers_thread(
        self, server: EventsServer, exporter_for: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A point that raises, an unknown type, a non-batch: said, not raised; the rest arrive."""

        class Unreadable:
            start_time_unix_nano, time_unix_nano, value = 1, 2, 1.0

            @property
            def attributes(self) -> Any:
                raise RuntimeError("broken point")

        class Strange:
            data_points = (number(1),)

        exporter = exporter_for(server)
        broken = Gauge([Unreadable(), number(2.0)])  # type: ignore[list-item]
        batch = metrics_data(
            Metric("broken", None, None, broken),
            Metric("strange", None, None, Strange()),  # type: ignore[arg-type]
        )
        assert exporter.export(batch) is MetricExportResult.SUCCESS
        assert exporter.export(object()) is MetricExportResult.SUCCESS
        assert exporter.force_flush(10_000) is False  # the unreadable point was dropped
        assert [r["value"] for r in server.events("otel_metrics_gauge")] == [2.0]
        assert exporter.stats().dropped_by_reason == {"unreadable": 1}
        err = capsys.readouterr().err
        assert "RuntimeError: broken point" in err
        assert "does not know the metric data type Strange (of 'strange')" in err
        assert "could not read a metrics batch (AttributeError" in err

    def test_before_send_sees_each_row_alone(self, server: EventsServer, exporter_for: Any) -> None:
        """The rows of one scope share their resource and scope maps: a hook that changes
        one row's map does not change the next row's."""
        seen: list[str] = []

        def redact(row: dict[str, Any]) -> dict[str, Any] | None:
            seen.append(row["resource_attributes"].pop("deployment.environment", "gone"))
            return None if row["metric_attributes"].get("drop") else row

        exporter = exporter_for(server, before_send=redact)
        points = [number(1, room="a"), number(2, room="b", drop="yes"), number(3, room="c")]
        exporter.export(metrics_data(Metric("g", None, None, Gauge(points))))
        assert exporter.force_flush(10_000)
        assert seen == ["test"] * 3
        rows = server.events("otel_metrics_gauge")
        assert [r["value"] for r in rows] == [1, 3]
        assert all("deployment.environment" not in r["resource_attributes"] for r in rows)
        assert exporter.stats().dropped_by_reason == {"before_send": 1}

    def test_a_huge_attribute_costs_at_most_max_event_bytes(
        self, server: EventsServer, exporter_for: Any
    ) -> None:
        """A 1 MB attribute is truncated with a marker to fit max_event_bytes, and counted."""
        exporter = exporter_for(server, max_event_bytes=4096)
        point = number(1.0, note="x" * 1_000_000)
        exporter.export(metrics_data(Metric("g", None, None, Gauge([point]))))
        assert exporter.force_flush(10_000)
        (request,) = server.requests
        assert len(request.body) <= 4096
        assert "truncated" in server.events("otel_metrics_gauge")[0]["metric_attributes"]["note"]
        assert exporter.stats().truncated == 1


class TestDelivery:
    def test_a_503_on_one_data_source_never_resends_another(
        self, server: EventsServer, exporter_for: Any, meter_for: Any
    ) -> None:
        """The Collector joins the four errors and retries all four (duplicates)."""
        server.script(Reply(status=503))
        exporter = exporter_for(server)
        meter, provider = meter_for(exporter)
        meter.create_counter("orders").add(1)
        meter.create_histogram("latency").record(5)
        meter.create_observable_gauge("temperature", callbacks=[lambda _: [Observation(20)]])
        provider.force_flush()
        assert exporter.force_flush(20_000)
        failed = server.requests[0].query["name"]
        assert server.requests[0].status == 503
        parts = exporter.datasource_stats()
        for table in ("otel_metrics_sum", "otel_metrics_histogram", "otel_metrics_gauge"):
            stats = parts[table]
            assert (stats.sent, stats.retries) == (1, 1 if table == failed else 0), table
            names = [r["metric_name"] for r in server.events(table)]
            assert len(names) == 1, (table, names)  # each row arrived exactly once
        assert sum(1 for r in server.requests if r.query["name"] == failed) == 2
        assert len(server.requests) == 4

    def test_force_flush_and_shutdown_honour_their_timeouts(
        self, server: EventsServer, exporter_for: Any
    ) -> None:
        """Against a hanging endpoint, force_flush and shutdown return within their timeouts."""
        server.respond(Reply(hang=True))
        exporter = exporter_for(server, timeout=30, flush_timeout=30)
        points = metrics_data(
            Metric("g", None, None, Gauge([number(1)])),
            Metric("s", None, None, Sum([number(1)], AggregationTemporality.CUMULATIVE, True)),
        )
        exporter.export(points)
        assert_deadlines_honoured(exporter, server, points, MetricExportResult.FAILURE)

    def test_the_readers_shutdown_time_is_honoured(
        self, server: EventsServer, exporter_for: Any
    ) -> None:
        """The SDK's reader calls ``shutdown(timeout=<ms left>)``, not ``timeout_millis``."""
        server.respond(Reply(hang=True))
        exporter = exporter_for(server, timeout=30, flush_timeout=30)
        # A finite interval: the reader's thread collects once more when it is shut down.
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        provider.get_meter("m").create_counter("c").add(1)
        started = time.monotonic()
        provider.shutdown(timeout_millis=1_000)
        assert time.monotonic() - started < 5  # not flush_timeout's 30 s
        assert server.wait_for(lambda: server.arrivals == 1, 10)  # the last collection's point
        server.release()

    def test_stats_add_up_the_four_data_sources(
        self, server: EventsServer, exporter_for: Any
    ) -> None:
        """stats() adds up the four data sources' counts; last_error names the one that failed."""
        server.script(Reply(status=403))
        exporter = exporter_for(server)
        exporter.export(
            metrics_data(
                Metric("g", None, None, Gauge([number(1), number(2)])),
                Metric("s", None, None, Sum([number(1)], AggregationTemporality.CUMULATIVE, True)),
            )
        )
        exporter.force_flush(10_000)
        stats = exporter.stats()
        parts = exporter.datasource_stats()
        assert set(parts) == set(TABLES.values())
        assert stats.emitted == 3 == stats.sent + stats.dropped + stats.queued + stats.in_flight
        assert stats.requests == sum(p.requests for p in parts.values()) == 2
        failed = server.requests[0].query["name"]
        assert stats.last_error.startswith(f"{failed}: ") and "403" in stats.last_error

    @pytest.mark.parametrize("provider_first", [True, False])
    def test_points_recorded_right_before_exit_arrive(
        self, server: EventsServer, provider_first: bool
    ) -> None:
        """The SDK's atexit shutdown (a last collection) and the package's drain may run in
        either order."""
        provider = (
            "from opentelemetry.sdk.metrics import MeterProvider\n"
            "from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader\n"
        )
        package = "from tinybird_export import TinybirdMetricExporter\n"
        body = (
            "provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(\n"
            "    TinybirdMetricExporter(), export_interval_millis=60_000)])\n"
            "provider.get_meter('exit').create_counter('at.exit').add(5)\n"
        )
        code = provider + package + body if provider_first else package + provider + body
        result = run_python(code, child_env(server))
        assert result.returncode == 0, result.stderr
        assert [(r["metric_name"], r["value"]) for r in server.events("otel_metrics_sum")] == [
            ("at.exit", 5)
        ]

    def test_exit_within_the_budget_when_the_endpoint_hangs(self, server: EventsServer) -> None:
        """The SDK gives its exporters 30 s at exit; the package's exit budget wins."""
        server.respond(Reply(hang=True))
        code = (
            "from opentelemetry.sdk.metrics import MeterProvider\n"
            "from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader\n"
            "from tinybird_export import TinybirdMetricExporter\n"
            "provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(\n"
            "    TinybirdMetricExporter(), export_interval_millis=60_000)])\n"
            "provider.get_meter('exit').create_counter('at.exit').add(5)\n"
        )
        started = time.monotonic()
        result = run_python(
            code, child_env(server, TINYBIRD_EXIT_TIMEOUT="1", TINYBIRD_TIMEOUT="30")
        )
        elapsed = time.monotonic() - started
        server.release()
        assert result.returncode == 0, result.stderr
        assert elapsed < 10, (elapsed, result.stderr)
        # Said once, as the exit drain or the close deadline (whichever gives it up) words it.
        (report,) = result.stderr.splitlines()
        # The hanging server holds the request: sent, no answer in time (24.12).
        assert "1 event(s) were being sent" in report and "no answer" in report, report
        assert "'otel_metrics_sum'" in report, report


class TestSettings:
    def test_data_sources_by_argument_and_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each kind's data source: its argument, else its variable; no two kinds share one."""

        def names(exporter: TinybirdMetricExporter) -> list[str]:
            return list(exporter.datasource_stats())

        monkeypatch.setenv("TINYBIRD_DATASOURCE", "app_logs")  # never read here
        assert names(TinybirdMetricExporter(enabled=False)) == list(TABLES.values())
        monkeypatch.setenv("TINYBIRD_METRICS_SUM_DATASOURCE", "my_sums")
        monkeypatch.setenv("TINYBIRD_METRICS_EXPONENTIAL_HISTOGRAM_DATASOURCE", "my_exp")
        exporter = TinybirdMetricExporter(enabled=False, gauge_datasource="my_gauges")
        assert names(exporter) == ["my_gauges", "my_sums", "otel_metrics_histogram", "my_exp"]
        with pytest.raises(ValueError, match="TINYBIRD_METRICS_HISTOGRAM_DATASOURCE"):
            TinybirdMetricExporter(enabled=False, histogram_datasource="no-dashes")
        with pytest.raises(ValueError, match="each kind of point needs its own"):
            TinybirdMetricExporter(enabled=False, gauge_datasource="my_sums")

    def test_a_setting_that_does_not_apply_says_why(self) -> None:
        """A setting the exporter does not take is a TypeError saying why, or what was meant."""
        with pytest.raises(TypeError, match="'shape' does not apply to TinybirdMetricExporter"):
            TinybirdMetricExporter(shape="otel")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="did you mean 'flush_interval'"):
            TinybirdMetricExporter(flush_intervall=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="no setting 'datasource': it sends to four"):
            TinybirdMetricExporter(datasource="metrics")  # type: ignore[call-arg]

    def test_the_files_have_the_templates_columns_in_its_order(self) -> None:
        """tinybirdco/tinybird-otel-template, datasources/otel_metrics_*.datasource."""
        text_map = "Map(LowCardinality(String), String)"
        common = [
            ("ResourceAttributes", text_map, "$.resource_attributes"),
            ("ResourceSchemaUrl", "String", "$.resource_schema_url"),
            ("ScopeName", "String", "$.scope_name"),
            ("ScopeVersion", "String", "$.scope_version"),
            ("ScopeAttributes", text_map, "$.scope_attributes"),
            ("ScopeSchemaUrl", "String", "$.scope_schema_url"),
            ("ServiceName", "String", "$.service_name"),
            ("MetricName", "LowCardinality(String)", "$.metric_name"),
            ("MetricDescription", "String", "$.metric_description"),
            ("MetricUnit", "String", "$.metric_unit"),
            ("Attributes", text_map, "$.metric_attributes"),
            ("StartTimeUnix", "DateTime64(9)", "$.start_timestamp"),
            ("TimeUnix", "DateTime64(9)", "$.timestamp"),
        ]
        exemplars = [
            ("ExemplarsTraceId", "Array(String)", "$.exemplars_trace_id[:]"),
            ("ExemplarsSpanId", "Array(String)", "$.exemplars_span_id[:]"),
            ("ExemplarsTimestamp", "Array(DateTime64(9))", "$.exemplars_timestamp[:]"),
            ("ExemplarsValue", "Array(Float64)", "$.exemplars_value[:]"),
            (
                "ExemplarsFilteredAttributes",
                f"Array({text_map})",
                "$.exemplars_filtered_attributes[:]",
            ),
        ]
        value = [("Value", "Float64", "$.value"), ("Flags", "UInt8", "$.flags")]
        temporality = [("AggregationTemporality", "Int32", "$.aggregation_temporality")]
        tail = [
            ("Flags", "UInt8", "$.flags"),
            ("Min", "Nullable(Float64)", "$.min"),
            ("Max", "Nullable(Float64)", "$.max"),
            *temporality,
        ]
        counts = [("Count", "UInt64", "$.count"), ("Sum", "Float64", "$.sum")]
        expected = {
            "gauge": [*value, *exemplars],
            "sum": [*value, *exemplars, *temporality, ("IsMonotonic", "Bool", "$.is_monotonic")],
            "histogram": [
                *counts,
                ("BucketCounts", "Array(UInt64)", "$.bucket_counts[:]"),
                ("ExplicitBounds", "Array(Float64)", "$.explicit_bounds[:]"),
                *exemplars,
                *tail,
            ],
            "exponential_histogram": [
                *counts,
                ("Scale", "Int32", "$.scale"),
                ("ZeroCount", "UInt64", "$.zero_count"),
                ("PositiveOffset", "Int32", "$.positive_offset"),
                ("PositiveBucketCounts", "Array(UInt64)", "$.positive_bucket_counts[:]"),
                ("NegativeOffset", "Int32", "$.negative_offset"),
                ("NegativeBucketCounts", "Array(UInt64)", "$.negative_bucket_counts[:]"),
                *exemplars,
                *tail,
            ],
        }
        for kind, table in TABLES.items():
            columns = parse_datasource((DATASOURCES_DIR / f"{table}.datasource").read_text())
            assert [(c.name, c.type.name, c.jsonpath) for c in columns] == common + expected[kind]
            assert columns[6].default_sql == "'unknown'"

    def test_tinybirds_own_parser_reads_the_four_files(self, tmp_path: Path) -> None:
        """The files as Tinybird's CLI (``tb``, Forward) reads them before a deploy."""
        from tests.test_tinybird_clients import parse_in_client

        code = (
            "import json, sys\n"
            "from tinybird.datafile.parse_datasource import parse_datasource\n"
            "for path in sys.argv[1:]:\n"
            "    result = parse_datasource(path)\n"
            "    node = result.datafile.nodes[0]\n"
            "    print(json.dumps([[c['name'], f\"Nullable({c['type']})\" if c.get('nullable')\n"
            "                       else c['type'], c['jsonpath']] for c in node['columns']]\n"
            "                     + [dict(node['engine']['args']), len(node['indexes']),\n"
            "                        [str(w) for w in result.warnings]]))\n"
        )
        files = [DATASOURCES_DIR / f"{table}.datasource" for table in TABLES.values()]
        parsed = parse_in_client("forward", code, files, tmp_path)
        for path, (*columns, engine, indexes, warnings) in zip(files, parsed, strict=True):
            ours = parse_datasource(path.read_text())
            assert columns == [[c.name, c.type.name, c.jsonpath] for c in ours], path.name
            assert engine["sorting_key"] == (
                "ServiceName, MetricName, Attributes, toUnixTimestamp64Nano(TimeUnix)"
            )
            assert (indexes, warnings) == (6, [])

    def test_entry_point(self) -> None:
        """OTEL_METRICS_EXPORTER=tinybird finds TinybirdMetricExporter through its entry point."""
        (entry_point,) = importlib.metadata.entry_points(
            group="opentelemetry_metrics_exporter", name="tinybird"
        )
        assert entry_point.load() is TinybirdMetricExporter


APP = """
import logging
from opentelemetry import metrics, trace

tracer = trace.get_tracer("shop")
orders = metrics.get_meter("shop").create_counter("orders")
with tracer.start_as_current_span("checkout"):
    orders.add(1, {"plan": "pro"})
    logging.getLogger("shop").warning("order placed")
"""


@needs_instrument
class TestNoCode:
    def test_the_readmes_no_code_line_runs_as_written(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """All three signals, with the SDK's auto-configuration and nothing else."""
        readme = (Path(ROOT) / "README.md").read_text()
        (line,) = [
            ln for ln in readme.splitlines() if "opentelemetry-instrument python app.py" in ln
        ]
        assert "OTEL_METRICS_EXPORTER=tinybird" in line
        (tmp_path / "app.py").write_text(APP)
        env = {**os.environ, **child_env(server)}
        del env["TINYBIRD_DATASOURCE"]
        env["PATH"] = f"{INSTRUMENT.parent}{os.pathsep}{env['PATH']}"
        result = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        (span,) = server.events("traces")
        (log,) = server.events("logs")
        (orders,) = server.events("otel_metrics_sum")
        assert (span["event"], log["event"], orders["metric_name"]) == (
            "checkout",
            "order placed",
            "orders",
        )
        assert log["trace_id"] == span["trace_id"]
        assert orders["metric_attributes"] == {"plan": "pro"} and orders["value"] == 1

    def test_export_interval_and_temporality_from_the_environment(
        self, server: EventsServer
    ) -> None:
        """opentelemetry-instrument's PeriodicExportingMetricReader reads
        OTEL_METRIC_EXPORT_INTERVAL: a point arrives while the app still runs (the default,
        60 s, would send it only at exit)."""
        app = (
            "import sys\n"
            "from opentelemetry import metrics\n"
            "metrics.get_meter('shop').create_counter('orders').add(2)\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
        )
        env = {
            **child_env(server),
            "OTEL_METRICS_EXPORTER": "tinybird",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
            "TINYBIRD_FLUSH_INTERVAL": "0.1",
        }
        with talk_to_python([str(INSTRUMENT), sys.executable, "-c", app], env) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            try:
                assert proc.stdout.readline().strip() == "ready", proc.stderr
                assert server.wait_for(lambda: bool(server.events("otel_metrics_sum")), 20)
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.wait(30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        (row, *later) = server.events("otel_metrics_sum")
        assert (row["metric_name"], row["value"], row["aggregation_temporality"]) == (
            "orders",
            2,
            1,
        )
        assert later == []  # delta: nothing new was counted afterwards


DOCS = (Path(ROOT) / "docs" / "integrations.md").read_text()


def docs_metrics_queries() -> list[str]:
    section = DOCS.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def test_the_docs_have_the_three_day_one_queries() -> None:
    """docs/integrations.md's metrics section has its three day-one queries, as SQL blocks."""
    assert len(docs_metrics_queries()) == 3


@needs_clickhouse
def test_the_docs_metrics_queries_answer_on_clickhouse(
    monkeypatch: pytest.MonkeyPatch, exporter_for: Any
) -> None:
    """Each query of docs/integrations.md's metrics section, on the local server's chDB
    engine, over points of both temporalities (two services)."""
    with LocalServer(engine="clickhouse", strict=True) as local:
        for service, temporality in (("shop-cumulative", "cumulative"), ("shop-delta", "delta")):
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality)
            exporter = exporter_for(local, wait=True)
            provider = MeterProvider(
                metric_readers=[
                    PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
                ],
                resource=Resource.create({"service.name": service}),
                shutdown_on_exit=False,
            )
            meter = provider.get_meter("shop")
            requests = meter.create_counter("http.server.requests")
            duration = meter.create_histogram("http.server.duration", "ms")
            depth = [0]
            meter.create_observable_gauge(
                "queue.depth", callbacks=[lambda _: [Observation(depth[0], {"queue": "emails"})]]
            )
            for collection in (range(1, 51), range(51, 101)):  # two collections
                for value in collection:
                    requests.add(1, {"route": "/cart"})
                    duration.record(value, {"route": "/cart"})
                depth[0] += 7
                provider.force_flush()
            provider.shutdown()
            assert exporter.stats().quarantined == 0
        answers = [sql(local, text)["data"] for text in docs_metrics_queries()]
    rate, p95, depth_now = answers
    for service in ("shop-cumulative", "shop-delta"):
        # 100 requests in all, whichever minutes the two collections fell in.
        assert sum(r["requests"] for r in rate if r["ServiceName"] == service) == 100
        values = [r["p95"] for r in p95 if r["ServiceName"] == service]
        assert values and all(0 < v <= 100 for v in values)
        if len(values) == 1:  # both collections in one minute: 1..100 ms
            assert values == [95]
        assert [(r["queue"], r["depth"]) for r in depth_now if r["ServiceName"] == service] == [
            ("emails", 14)
        ]
