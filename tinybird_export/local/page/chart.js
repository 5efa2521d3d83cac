// Events per minute per data source: stacked bars in an SVG drawn here (a few dozen
// rectangles; no chart library to vendor, and the DOM says what the chart shows).

import { element, formatCount, svgElement } from "./dom.js";

export const MINUTES = 60; // the window, ending at the newest minute
const MIN_MINUTES = 10;
const SERIES_CLASSES = 8;
const MINUTE = 60000;

// "YYYY-MM-DD HH:MM..." (the engines' text for a DateTime) as epoch milliseconds, or NaN.
export function minuteOf(text) {
  const match = /^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d)/.exec(String(text));
  if (!match) return NaN;
  const [y, mo, d, h, mi] = match.slice(1, 6).map(Number);
  return Date.UTC(y, mo - 1, d, h, mi);
}

export function formatMinute(ms) {
  return `${new Date(ms).toISOString().slice(0, 16).replace("T", " ")}:00`;
}

// `names`: the data sources, in their colour order; `points`: {ds, minute, count};
// `only`: the one data source to draw on a scale of its own (a small one is lost among
// others), or null; `onPick(name)`: a click on a data source of the legend.
export function renderChart(chart, legend, names, points, { only = null, onPick = () => {} } = {}) {
  if (!points.length) {
    const note = names.length
      ? "No events in the window."
      : "No events yet: send some (the README's quickstart, examples/stream_events.py).";
    chart.replaceChildren(element("p", { class: "muted empty-chart" }, note));
    legend.replaceChildren();
    return;
  }
  const newest = Math.max(...points.map((p) => p.minute));
  const oldest = Math.min(...points.map((p) => p.minute));
  const span = Math.round((newest - oldest) / MINUTE) + 1;
  const slots = Math.max(MIN_MINUTES, Math.min(MINUTES, span));
  const first = newest - (slots - 1) * MINUTE;
  const series = names
    .map((name, index) => {
      const counts = new Array(slots).fill(0);
      for (const p of points) {
        const slot = Math.round((p.minute - first) / MINUTE);
        if (p.ds === name && slot >= 0 && slot < slots) counts[slot] += p.count;
      }
      const total = counts.reduce((a, b) => a + b, 0);
      return { name, counts, total, color: `series-${index % SERIES_CLASSES}` };
    })
    .filter((s) => s.total > 0);
  const shown = series.filter((s) => !only || s.name === only);
  const stacked = Array.from({ length: slots }, (_, slot) =>
    shown.reduce((sum, s) => sum + s.counts[slot], 0),
  );
  const step = niceStep(Math.max(1, ...stacked));
  const top = Math.max(step, Math.ceil(Math.max(1, ...stacked) / step) * step);

  const [width, height, left, right, upper, lower] = [800, 250, 56, 8, 10, 26];
  const plotWidth = width - left - right;
  const plotHeight = height - upper - lower;
  const slotWidth = plotWidth / slots;
  const barWidth = Math.max(1, slotWidth * 0.78);
  const x = (slot) => left + slot * slotWidth + (slotWidth - barWidth) / 2;
  const y = (value) => upper + plotHeight - (value / top) * plotHeight;
  const total = shown.reduce((sum, s) => sum + s.total, 0);
  const root = svgElement("svg", {
    id: "chart-svg",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `events per minute, the ${slots} minutes to ${label(newest)} UTC`,
    "data-datasources": shown.map((s) => s.name).join(","),
    "data-events": total,
    "data-minutes": slots,
  });
  for (let value = 0; value <= top; value += step) {
    const at = y(value);
    svgElement("line", { x1: left, x2: width - right, y1: at, y2: at, class: "grid" }, root);
    const attributes = { x: left - 8, y: at + 4, class: "axis", "text-anchor": "end" };
    const text = svgElement("text", attributes, root);
    text.textContent = compact(value);
  }
  const every = Math.max(1, Math.ceil(slots / 8));
  for (let slot = slots - 1; slot >= 0; slot -= every) {
    const at = x(slot) + barWidth / 2;
    const attributes = { x: at, y: height - 8, class: "axis", "text-anchor": "middle" };
    const text = svgElement("text", attributes, root);
    text.textContent = label(first + slot * MINUTE);
  }
  const base = new Array(slots).fill(0);
  for (const s of shown) {
    const attributes = { class: `bars ${s.color}`, "data-datasource": s.name, "data-total": s.total };
    const group = svgElement("g", attributes, root);
    s.counts.forEach((count, slot) => {
      if (!count) return;
      const bottom = y(base[slot]);
      base[slot] += count;
      const barHeight = Math.max(bottom - y(base[slot]), 1);
      const box = { x: x(slot), y: bottom - barHeight, width: barWidth, height: barHeight };
      const bar = svgElement("rect", box, group);
      bar.setAttribute("data-count", count);
      const title = svgElement("title", {}, bar);
      const minute = label(first + slot * MINUTE);
      title.textContent = `${s.name}, ${minute} UTC: ${formatCount(count)} events`;
    });
  }
  chart.replaceChildren(root);
  legend.replaceChildren(
    ...series.map((s) => {
      const item = element("li", { "data-datasource": s.name });
      if (only && s.name !== only) item.classList.add("dimmed");
      const button = element("button", { type: "button", class: "link" });
      button.append(element("span", { class: `swatch ${s.color}` }), s.name);
      button.addEventListener("click", () => onPick(s.name));
      item.append(button, element("span", { class: "muted" }, formatCount(s.total)));
      return item;
    }),
  );
}

function label(ms) {
  return formatMinute(ms).slice(11, 16);
}

function niceStep(max, ticks = 4) {
  const raw = max / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const normal = raw / magnitude;
  return Math.max(1, (normal <= 1 ? 1 : normal <= 2 ? 2 : normal <= 5 ? 5 : 10) * magnitude);
}

function compact(value) {
  const format = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  return format.format(value);
}
