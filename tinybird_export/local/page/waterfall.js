// A trace's spans as a waterfall: one row per span in tree order (a child under its parent,
// siblings by start), a bar from its start to its end on the trace's time line.

import { element, svgElement } from "./dom.js";

export const SPANS = 500;

// The spans of one trace, on both engines, for each data source of spans: the flat shape
// (traces: duration_ms) and the OTel template's (otel_traces: Duration in nanoseconds).
// `id` is a quoted literal.
export const TRACE_QUERIES = {
  traces: (id) =>
    "select span_id, parent_span_id, event span_name, service, status, timestamp span_start, " +
    `duration_ms from traces where trace_id = ${id} order by timestamp limit ${SPANS}`,
  otel_traces: (id) =>
    "select SpanId span_id, ParentSpanId parent_span_id, SpanName span_name, ServiceName " +
    "service, StatusCode status, Timestamp span_start, Duration / 1e6 duration_ms " +
    `from otel_traces where TraceId = ${id} order by Timestamp limit ${SPANS}`,
};

// "YYYY-MM-DD HH:MM:SS[.fraction]" (UTC) as epoch milliseconds, with the fraction's digits.
export function parseTime(text) {
  const match = /^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d+))?/.exec(String(text));
  if (!match) return NaN;
  const [y, mo, d, h, mi, s] = match.slice(1, 7).map(Number);
  return Date.UTC(y, mo - 1, d, h, mi, s) + (match[7] ? Number(`0.${match[7]}`) * 1000 : 0);
}

export function formatMs(ms) {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
}

// Draws the rows of TRACE_QUERIES into `container`; returns the trace's duration.
export function renderWaterfall(container, rows, source) {
  const spans = rows.map((row) => ({
    id: String(row.span_id),
    parent: String(row.parent_span_id || ""),
    name: String(row.span_name),
    service: String(row.service || ""),
    status: String(row.status || ""),
    start: parseTime(row.span_start),
    duration: Math.max(Number(row.duration_ms) || 0, 0),
  }));
  const begin = Math.min(...spans.map((s) => s.start));
  const end = Math.max(...spans.map((s) => s.start + s.duration));
  const total = Math.max(end - begin, 0.001);
  const byId = new Map(spans.map((s) => [s.id, s]));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parent && span.parent !== span.id && byId.has(span.parent)) {
      if (!children.has(span.parent)) children.set(span.parent, []);
      children.get(span.parent).push(span);
    } else {
      roots.push(span);
    }
  }
  const ordered = [];
  const placed = new Set();
  const visit = (span, depth) => {
    if (placed.has(span)) return;
    placed.add(span);
    ordered.push({ span, depth });
    const kids = (children.get(span.id) || []).sort((a, b) => a.start - b.start);
    for (const child of kids) visit(child, depth + 1);
  };
  roots.sort((a, b) => a.start - b.start).forEach((root) => visit(root, 0));
  spans.filter((s) => !placed.has(s)).forEach((s) => visit(s, 0)); // parents in a cycle

  const axis = element("div", { class: "span-row axis-row" });
  axis.append(
    element("div", { class: "span-label muted" }, `${spans.length} spans from ${source}`),
    element("div", { class: "muted" }, `0 ms … ${formatMs(total)}`),
    element("div", { class: "muted number" }, "duration"),
  );
  const lines = ordered.map(({ span, depth }) => {
    const failed = /error/i.test(span.status);
    const row = element("div", { class: "span-row", "data-span-id": span.id, "data-depth": depth });
    const offset = formatMs(span.start - begin);
    row.title = `${span.name} (${span.service}): at +${offset}, ${formatMs(span.duration)}, ` +
      `status ${span.status || "unset"}`;
    const label = element("div", { class: `span-label depth-${Math.min(depth, 9)}` });
    const service = element("span", { class: "muted" }, span.service);
    label.append(element("span", {}, span.name), " ", service);
    const frame = { viewBox: "0 0 1000 10", preserveAspectRatio: "none", class: "span-bar" };
    const bar = svgElement("svg", frame);
    const x = Math.min(((span.start - begin) / total) * 1000, 998);
    const width = Math.max((span.duration / total) * 1000, 2);
    svgElement("rect", { x, y: 0, width, height: 10, class: failed ? "bar error" : "bar" }, bar);
    row.append(label, bar, element("div", { class: "number" }, formatMs(span.duration)));
    return row;
  });
  container.replaceChildren(axis, ...lines);
  return total;
}
