"""OpenTelemetry spans and log records -> events, in the flat shape or the template's.

Pure functions over the SDK's objects, read by attribute (no OpenTelemetry import here), so
that both the old (``LogData``) and the new (``ReadableLogRecord``) logs API work.
The ``otel`` shape is the wire format of the Collector's ``tinybirdexporter``, which
Tinybird's OpenTelemetry template ingests (events-api docs, "OpenTelemetry").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from tinybird_export._fields import HOST, event_ids, utc_from_ns
from tinybird_export._line_encoder import to_text

_SPAN_KINDS = ("Internal", "Server", "Client", "Producer", "Consumer")
_STATUS_CODES = ("Unset", "Ok", "Error")
# The flat shape spells them as the SDK's enum names (SpanKind.SERVER, StatusCode.ERROR).
_KIND_NAMES = ("INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS_NAMES = ("UNSET", "OK", "ERROR")


def rfc3339_nano(nanos: int) -> str:
    """RFC 3339 with up to 9 fraction digits, trailing zeros trimmed (Go's RFC3339Nano)."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    fraction = f".{rest:09d}".rstrip("0").rstrip(".")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + fraction + "Z"


def string_map(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    """Attributes as string -> string (JSON text for non-strings), like pdata's AsString."""
    return {str(key): to_text(value) for key, value in (attributes or {}).items()}


def plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain dict of the SDK's attributes: its BoundedAttributes answers each lookup in
    Python under a lock, so copy once and look up many times.
    """
    return dict(attributes) if attributes else {}


def span_attributes(span: Any) -> dict[str, Any]:
    """``plain(span.attributes)``, several times faster on the SDK's spans.

    ``ReadableSpan.attributes`` wraps a ``BoundedAttributes`` whose iteration runs in Python
    under its lock (~0.8 µs for two attributes). An ended span's attributes no longer change
    (the SDK refuses ``set_attribute`` after ``end``), so its backing dict is copied at C
    speed. Both names are private to the SDK: anything unexpected takes the public path.
    """
    backing = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(backing) is dict:
        return backing.copy()
    return plain(span.attributes)


def _hex(value: int | None, width: int) -> str:
    return format(value, f"0{width}x") if value else ""


def _scope(item: Any) -> Any:
    return getattr(item, "instrumentation_scope", None) or getattr(
        item, "instrumentation_info", None
    )


def scope_fields(scope: Any, resource: Any) -> dict[str, Any]:
    """The template's resource and scope columns, from an instrumentation scope and a resource."""
    return {
        "resource_schema_url": getattr(resource, "schema_url", "") or "",
        "resource_attributes": resource_map(resource),
        "scope_schema_url": getattr(scope, "schema_url", "") or "",
        "scope_name": getattr(scope, "name", "") or "",
        "scope_version": getattr(scope, "version", "") or "",
        "scope_attributes": string_map(getattr(scope, "attributes", None)),
    }


_resource_cache: tuple[Any, dict[str, str]] = (None, {})


def resource_map(resource: Any) -> dict[str, str]:
    """``string_map`` of a resource's attributes, cached: a provider's spans share one
    resource object, so this runs once per provider rather than once per span.
    """
    global _resource_cache  # noqa: PLW0603 - one-entry cache; tuple assignment is atomic
    cached, mapped = _resource_cache
    if cached is not resource:
        mapped = string_map(getattr(resource, "attributes", None))
        _resource_cache = (resource, mapped)
    return dict(mapped)  # a copy: a before_send hook may change the event


def service_name(resource: Any) -> str:
    """The resource's ``service.name`` as text (``""`` without one), from the cache."""
    cached, mapped = _resource_cache
    if cached is not resource:
        resource_map(resource)
        mapped = _resource_cache[1]
    return mapped.get("service.name", "")


def span_href(attributes: Mapping[str, Any]) -> str:
    """``url.full``, else ``http.url``, else scheme://host + target, else ``""``."""
    for key in ("url.full", "http.url"):
        if attributes.get(key):
            return str(attributes[key])
    scheme = attributes.get("url.scheme") or attributes.get("http.scheme")
    host = (
        attributes.get("server.address")
        or attributes.get("http.host")
        or attributes.get("net.host.name")
    )
    target = attributes.get("http.target") or "".join(
        filter(
            None,
            (
                attributes.get("url.path"),
                attributes.get("url.query") and "?" + str(attributes["url.query"]),
            ),
        )
    )
    if scheme and host:
        port = attributes.get("server.port") or attributes.get("net.host.port")
        netloc = f"{host}:{port}" if port and str(port) not in ("80", "443") else str(host)
        return f"{scheme}://{netloc}{target}"
    return ""


def _exception_text(events: Any) -> str:
    for event in events or ():
        if event.name == "exception":
            attributes = event.attributes or {}
            return str(
                attributes.get("exception.stacktrace")
                or f"{attributes.get('exception.type', '')}: "
                f"{attributes.get('exception.message', '')}"
            )
    return ""


def span_to_flat(span: Any) -> dict[str, Any]:
    """The default span event, in the spirit of the log event (see the README)."""
    context = span.context
    attributes = span_attributes(span)
    start, end = span.start_time or 0, span.end_time or span.start_time or 0
    return {
        "timestamp": utc_from_ns(start),
        "event": span.name,
        "href": span_href(attributes),
        "trace_id": _hex(context.trace_id, 32),
        "span_id": _hex(context.span_id, 16),
        "parent_span_id": _hex(span.parent.span_id, 16) if span.parent else "",
        "kind": _KIND_NAMES[span.kind.value],
        "status": _STATUS_NAMES[span.status.status_code.value],
        "status_message": span.status.description or "",
        "duration_ms": (end - start) / 1e6,
        "service": service_name(span.resource),
        "exception": _exception_text(span.events),
        "event_id": event_ids.next(),
        "attributes": string_map(attributes),
        "resource": resource_map(span.resource),
    }


def span_to_otel(span: Any) -> dict[str, Any]:
    """One ``otel_traces`` row, field for field as the Collector's tinybirdexporter sends it."""
    context = span.context
    start, end = span.start_time or 0, span.end_time or span.start_time or 0
    links = span.links or ()
    return {
        "start_time": rfc3339_nano(start),
        "end_time": rfc3339_nano(end),
        "trace_id": _hex(context.trace_id, 32),
        "span_id": _hex(context.span_id, 16),
        "parent_span_id": _hex(span.parent.span_id, 16) if span.parent else "",
        "trace_state": context.trace_state.to_header() if context.trace_state else "",
        "trace_flags": int(context.trace_flags),
        "span_name": span.name,
        "span_kind": _SPAN_KINDS[span.kind.value] if span.kind.value < 5 else "Unspecified",
        "service_name": service_name(span.resource),
        "duration": end - start,
        "status_code": _STATUS_CODES[span.status.status_code.value],
        "status_message": span.status.description or "",
        "span_attributes": string_map(span_attributes(span)),
        "events_timestamp": [rfc3339_nano(e.timestamp) for e in span.events or ()],
        "events_name": [e.name for e in span.events or ()],
        "events_attributes": [string_map(e.attributes) for e in span.events or ()],
        "links_trace_id": [_hex(link.context.trace_id, 32) for link in links],
        "links_span_id": [_hex(link.context.span_id, 16) for link in links],
        "links_trace_state": [
            link.context.trace_state.to_header() if link.context.trace_state else ""
            for link in links
        ],
        "links_attributes": [string_map(link.attributes) for link in links],
        **scope_fields(_scope(span), span.resource),
    }


def _log_parts(item: Any) -> tuple[Any, Any, Any]:
    """``(record, resource, scope)`` from ``LogData`` (SDK < 1.39) or ``ReadableLogRecord``."""
    record = item.log_record
    resource = getattr(item, "resource", None) or getattr(record, "resource", None)
    return record, resource, _scope(item)


def severity_level(item: Any) -> int:
    """The logging level of an OpenTelemetry log record's severity number: 1-4 TRACE and
    5-8 DEBUG are DEBUG, 9-12 INFO, 13-16 WARN WARNING, 17-20 ERROR, 21-24 FATAL CRITICAL
    (the logs data model's ranges); 0 when it has none.
    """
    severity = getattr(item.log_record, "severity_number", None)
    number = getattr(severity, "value", 0) or 0
    return 0 if number <= 0 else min(max((number - 1) // 4, 1) * 10, 50)


def _body(record: Any) -> str:
    body = record.body
    return body if isinstance(body, str) else ("" if body is None else to_text(body))


def log_to_otel(item: Any) -> dict[str, Any]:
    """One ``otel_logs`` row, as the Collector's tinybirdexporter sends it."""
    record, resource, scope = _log_parts(item)
    severity = record.severity_number
    return {
        "timestamp": rfc3339_nano(record.timestamp or record.observed_timestamp or 0),
        "trace_id": _hex(record.trace_id, 32),
        "span_id": _hex(record.span_id, 16),
        "flags": int(record.trace_flags or 0),
        "severity_text": record.severity_text or "",
        "severity_number": severity.value if severity is not None else 0,
        "body": _body(record),
        "service_name": service_name(resource),
        "log_attributes": string_map(record.attributes),
        **scope_fields(scope, resource),
    }


def log_to_flat(item: Any) -> dict[str, Any]:
    """An OpenTelemetry log record as the handler's flat log event (``app_logs`` schema)."""
    record, resource, scope = _log_parts(item)
    attributes = dict(record.attributes or {})
    return {
        "timestamp": utc_from_ns(record.timestamp or record.observed_timestamp or 0),
        "event": _body(record),
        "href": str(attributes.get("url.full", "")),
        "request_id": "",
        "exception": str(attributes.get("exception.stacktrace", "")),
        "event_id": event_ids.next(),
        "trace_id": _hex(record.trace_id, 32),
        "span_id": _hex(record.span_id, 16),
        "level": record.severity_text or "",
        "logger": getattr(scope, "name", "") or "",
        "service": service_name(resource),
        "module": "",
        "function": str(
            attributes.get("code.function.name") or attributes.get("code.function") or ""
        ),
        "file": str(attributes.get("code.file.path") or attributes.get("code.filepath") or ""),
        "line": int(attributes.get("code.line.number") or attributes.get("code.lineno") or 0),
        "process": 0,
        "thread": str(attributes.get("thread.name", "")),
        "host": HOST,
        "attributes": string_map(attributes),
    }
