"""One local sink for every peer's wire format, in its own process; it counts, keeps nothing.

NDJSON (tinybird-export, tinybird-python-sdk), OTLP/HTTP protobuf (OpenTelemetry: logs, traces
and metrics, whose records are data points), JSON arrays (python-logstash-async) and msgpack
(logtail-python). ``GET /`` returns the counters: records, requests, raw bytes (after gzip),
bytes as they came on the wire (before gunzip), the wall-clock time of the last arrival, and
the requests still being counted.
With ``hang`` it reads each request and never answers (until a long timeout).
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from typing import Any, ClassVar

from tinybird_export._ingest_body import count_rows

HANG_SECONDS = 600


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    counts: ClassVar[dict[str, float]] = {
        "records": 0,
        "requests": 0,
        "bytes": 0,
        "wire_bytes": 0,
        "last": 0.0,
        "active": 0,  # requests read but not yet counted
    }
    lock = threading.Lock()
    hang = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.lock:
            body = json.dumps(self.counts).encode()
        self._reply(200, body)

    def do_POST(self) -> None:
        with self.lock:
            self.counts["active"] += 1
        try:
            self._count()
        finally:
            with self.lock:
                self.counts["active"] -= 1

    def _count(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.hang:
            threading.Event().wait(HANG_SECONDS)
            return
        wire = len(raw)
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        records = count_records(self.path, self.headers.get("Content-Type") or "", raw)
        with self.lock:
            self.counts["records"] += records
            self.counts["requests"] += 1
            self.counts["bytes"] += len(raw)
            self.counts["wire_bytes"] += wire
            self.counts["last"] = time.time()
        body = json.dumps({"successful_rows": records, "quarantined_rows": 0}).encode()
        self._reply(202 if self.path.startswith("/v0/events") else 200, body)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def count_records(path: str, content_type: str, body: bytes) -> int:
    if path.startswith("/v1/metrics"):
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        return sum(
            len(getattr(metric, metric.WhichOneof("data")).data_points)
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )
    if path.startswith(("/v1/logs", "/v1/traces")):
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        if path.startswith("/v1/logs"):
            logs = ExportLogsServiceRequest()
            logs.ParseFromString(body)
            return sum(len(s.log_records) for r in logs.resource_logs for s in r.scope_logs)
        traces = ExportTraceServiceRequest()
        traces.ParseFromString(body)
        return sum(len(s.spans) for r in traces.resource_spans for s in r.scope_spans)
    if "msgpack" in content_type:
        import msgpack

        data = msgpack.unpackb(body, raw=False)
        return len(data) if isinstance(data, list) else 1
    if path.startswith("/v0/events"):
        return count_rows(body)
    data = json.loads(body or b"null")
    return len(data) if isinstance(data, list) else 1


def serve(hang: bool) -> None:
    Sink.hang = hang
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
