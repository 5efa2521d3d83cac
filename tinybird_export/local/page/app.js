// The page of `tinybird-export local`: the workspace's data sources, events per minute, the
// newest events, a trace's spans and SQL, read through the API Tinybird's CLIs use
// (/v0/datasources, /v0/sql) with the token from this page's URL fragment (#token=...).
//
// The token goes in an Authorization header only: never in a URL, so never in a request
// line or the server's log. Every query here runs on both engines (ClickHouse's SQL, and
// SQLite's with the ClickHouse spellings the local server rewrites: count(),
// toStartOfMinute), read-only under the server's allowlist and bounds, one at a time.

import { MINUTES, formatMinute, minuteOf, renderChart } from "./chart.js";
import { cell, element, formatCount, renderTable } from "./dom.js";
import { TRACE_QUERIES, formatMs, renderWaterfall } from "./waterfall.js";

const REFRESH_MS = 2000;
const CHART_MS = 10000; // the chart's (new data sources: at once)
// A refresh waits at least this many times what the last one took: on a workspace so large
// that its queries take long, the page slows down rather than keep the server busy (it then
// spends at most 1/20 of its time on the page).
const PACE = 20;
const NEWEST = 50;
const SQL_ROWS_SHOWN = 500;
const TIME_NAMES = ["timestamp", "Timestamp", "TimeUnix", "time", "ts", "date"];
const TRACE_COLUMNS = { trace_id: "traces", TraceId: "otel_traces" };

const $ = (id) => document.getElementById(id);
const state = {
  token: null,
  datasources: [],
  selected: null,
  chosen: false, // the user picked the data source (else: the one written last)
  paused: false,
  running: false,
  timer: null,
  chartDue: 0, // when the chart is read again (performance.now())
  charted: null, // the data sources with rows, when the chart was drawn
  chart: { names: [], points: [] }, // what it drew
  chartOnly: null, // the data source drawn alone (a click in the legend), or null
  chartFloor: null,
  newestFloor: new Map(),
  seen: new Set(),
  seenName: null,
  generation: 0,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- the API ------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.token}` };
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  } catch {
    throw new ApiError(0, "the server does not answer: is tinybird-export local running?");
  }
  const type = response.headers.get("Content-Type") || "";
  const json = type.includes("json");
  const body = json ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const message = body && typeof body === "object" && body.error ? body.error : String(body);
    throw new ApiError(response.status, message);
  }
  return { body, type };
}

function sql(text) {
  const headers = { "Content-Type": "text/plain;charset=utf-8" };
  return api("/v0/sql", { method: "POST", headers, body: text });
}

// A data source's or column's name in SQL (backticks: ClickHouse's and SQLite's both). Names
// are the server's word characters, in any alphabet (a guessed schema keeps an event's keys):
// letters, digits, underscores, nothing that could close the quotes.
function ident(name) {
  if (!/^[\p{L}\p{N}_]+$/u.test(name)) throw new Error(`unexpected name ${name}`);
  return `\`${name}\``;
}

// A value from the data as a string literal: only the characters of timestamps and ids,
// which both engines read alike (their escapes differ); null for any other.
function literal(value) {
  const text = String(value);
  return /^[A-Za-z0-9_ .:+-]*$/.test(text) ? `'${text}'` : null;
}

function timeColumn(columns) {
  const isTime = (c) => /^(Nullable\(|LowCardinality\()*(DateTime|Date)/.test(c.type);
  for (const name of TIME_NAMES) {
    const found = columns.find((c) => c.name === name && isTime(c));
    if (found) return found;
  }
  return columns.find(isTime) || null;
}

// --- refreshing ---------------------------------------------------------------------------

function schedule(delay = REFRESH_MS) {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, delay);
}

async function refresh() {
  state.timer = null;
  if (!state.token || state.paused || document.hidden || state.running) return;
  state.running = true;
  let delay = REFRESH_MS;
  const started = performance.now();
  try {
    await loadDatasources();
    const charted = state.datasources.filter((ds) => ds.rows && ds.minutes).map((ds) => ds.name);
    let chartTook = 0;
    if (performance.now() >= state.chartDue || charted.join() !== state.charted) {
      const chartStarted = performance.now();
      await loadChart();
      chartTook = performance.now() - chartStarted;
      state.chartDue = performance.now() + Math.max(CHART_MS, PACE * chartTook);
    }
    state.charted = charted.join();
    await loadNewest();
    // The chart's own pace is above: the others set the refresh's.
    delay = Math.max(REFRESH_MS, PACE * (performance.now() - started - chartTook));
    const every = Math.round(delay / 1000);
    setStatus(`refreshed at ${new Date().toLocaleTimeString()}, every ${every} s`);
  } catch (error) {
    if (error.status === 403) {
      // The only 403 these reads can get: the token was refused (a server restarted with
      // --data :memory: has a new one).
      state.running = false;
      showNoToken(`The server refused this token: ${error.message}.`);
      return;
    }
    setStatus(`${error.message} (trying again)`, true);
    delay = REFRESH_MS * 2;
  }
  state.running = false;
  schedule(delay);
}

function setStatus(text, failed = false) {
  $("status").textContent = text;
  $("status").classList.toggle("failed", failed);
}

// --- data sources -------------------------------------------------------------------------

async function loadDatasources() {
  const { body } = await api("/v0/datasources");
  state.datasources = body.datasources.map((ds) => {
    const time = timeColumn(ds.columns || []);
    return {
      name: ds.name,
      rows: Number(ds.statistics.row_count) || 0,
      quarantined: Number(ds.quarantine_rows) || 0,
      updated: String(ds.updated_at || ""),
      time: time && time.name,
      minutes: Boolean(time && time.type.includes("DateTime")),
    };
  });
  state.datasources.sort((a, b) => b.rows - a.rows || a.name.localeCompare(b.name));
  if (!state.chosen || !find(state.selected)) {
    const filled = state.datasources.filter((ds) => ds.rows > 0);
    filled.sort((a, b) => b.updated.localeCompare(a.updated));
    const pick = filled[0] || state.datasources[0];
    state.selected = pick ? pick.name : null;
  }
  renderDatasources();
}

function find(name) {
  return state.datasources.find((ds) => ds.name === name) || null;
}

function select(name) {
  state.selected = name;
  state.chosen = true;
  renderDatasources();
  loadNewest().catch((error) => setStatus(error.message, true));
}

function renderDatasources() {
  const rows = state.datasources.map((ds) => {
    const attributes = { "data-datasource": ds.name, "data-rows": ds.rows };
    const row = element("tr", { ...attributes, "data-quarantined": ds.quarantined });
    row.classList.toggle("empty", ds.rows === 0);
    row.classList.toggle("selected", ds.name === state.selected);
    const name = element("button", { type: "button", class: "link" }, ds.name);
    name.addEventListener("click", () => select(ds.name));
    const updated = cell(ds.rows ? ds.updated.slice(11, 19) : "", "muted");
    updated.title = ds.updated;
    const warn = ds.quarantined ? " warn" : "";
    row.append(
      cell(name),
      cell(formatCount(ds.rows), "number rows"),
      cell(formatCount(ds.quarantined), `number quarantined${warn}`),
      updated,
    );
    return row;
  });
  $("datasources").tBodies[0].replaceChildren(...rows);
  const total = state.datasources.reduce((sum, ds) => sum + ds.rows, 0);
  const filled = state.datasources.filter((ds) => ds.rows > 0).length;
  const of = `${formatCount(total)} rows in ${filled} of ${state.datasources.length}`;
  $("datasources-total").textContent = of;
}

// --- events per minute --------------------------------------------------------------------

async function loadChart() {
  const sources = state.datasources.filter((ds) => ds.rows > 0 && ds.minutes);
  const names = sources.map((ds) => ds.name);
  if (!sources.length) {
    drawChart(names, []);
    return;
  }
  // After the first answer only the window's rows are grouped (the newest minute only
  // grows): older ones cost a comparison each (SQLite reads every row).
  const floor = state.chartFloor ? literal(state.chartFloor) : null;
  const arms = sources.map((ds) => {
    const time = ident(ds.time);
    const where = floor ? ` where ${time} >= ${floor}` : "";
    return (
      `select * from (select '${ds.name}' ds, toStartOfMinute(${time}) m, count() c ` +
      `from ${ident(ds.name)}${where} group by m order by m desc limit ${MINUTES})`
    );
  });
  const { body } = await sql(arms.join(" union all "));
  const points = body.data
    .map((row) => ({ ds: row.ds, minute: minuteOf(row.m), count: Number(row.c) }))
    .filter((point) => Number.isFinite(point.minute));
  if (points.length) {
    const newest = Math.max(...points.map((point) => point.minute));
    state.chartFloor = formatMinute(newest - (MINUTES - 1) * 60000);
  } else {
    state.chartFloor = null; // nothing since the floor (rows deleted): read all next time
  }
  drawChart(names, points);
}

function drawChart(names, points) {
  state.chart = { names, points };
  if (!names.includes(state.chartOnly)) state.chartOnly = null;
  renderChart($("chart"), $("legend"), names, points, { only: state.chartOnly, onPick: focus });
}

// A click on a data source in the legend: draw it alone (again: all of them), and show its
// newest events.
function focus(name) {
  state.chartOnly = state.chartOnly === name ? null : name;
  drawChart(state.chart.names, state.chart.points);
  select(name);
}

// --- newest events ------------------------------------------------------------------------

async function loadNewest() {
  const ds = find(state.selected);
  const generation = ++state.generation;
  $("events-name").textContent = ds ? ds.name : "…";
  if (!ds) return;
  if (!ds.rows) {
    renderTable($("events"), [], [], { empty: "No rows yet." });
    state.shown = null;
    $("events-note").textContent = "";
    return;
  }
  const table = ident(ds.name);
  let answer = null;
  if (ds.time) {
    // The newest rows are at or after the oldest of the previous answer: read only those.
    const time = ident(ds.time);
    const order = ` order by ${time} desc limit ${NEWEST}`;
    const floor = state.newestFloor.get(ds.name);
    if (floor) {
      answer = (await sql(`select * from ${table} where ${time} >= ${floor}${order}`)).body;
      if (answer.data.length < Math.min(NEWEST, ds.rows)) answer = null; // rows deleted
    }
    answer = answer || (await sql(`select * from ${table}${order}`)).body;
    const last = answer.data.length === NEWEST ? answer.data[NEWEST - 1][ds.time] : null;
    const oldest = last === null ? null : literal(last);
    if (oldest) state.newestFloor.set(ds.name, oldest);
    else state.newestFloor.delete(ds.name);
  } else {
    answer = (await sql(`select * from ${table} limit ${NEWEST}`)).body;
  }
  if (generation !== state.generation) return; // another data source was picked meanwhile
  $("events-note").textContent = ds.time ? `by ${ds.time}, refreshing` : "(no time column)";
  let names = answer.meta.map((m) => m.name);
  if (ds.time) names = [ds.time, ...names.filter((name) => name !== ds.time)];
  const before = state.seenName === ds.name ? state.seen : null;
  const keys = answer.data.map((row) => JSON.stringify(row));
  // The same rows as on the last refresh: leave the table alone, so that a click (pressed on
  // one button, released on its replacement, is no click) or a text selection survives.
  const shown = JSON.stringify([names, keys]);
  if (before !== null && state.shown === shown) return;
  state.shown = shown;
  renderTable($("events"), names, answer.data, {
    fresh: (index) => before !== null && !before.has(keys[index]),
    link: traceLink,
  });
  state.seen = new Set(keys);
  state.seenName = ds.name;
}

// A trace id's cell: a button that shows the trace's spans.
function traceLink(name, text) {
  if (!TRACE_COLUMNS[name]) return null;
  const attributes = { type: "button", class: "link trace", "data-trace": text };
  const button = element("button", attributes, text);
  button.addEventListener("click", () => showTrace(text, TRACE_COLUMNS[name]));
  return button;
}

// --- a trace's spans ----------------------------------------------------------------------

async function showTrace(id, preferred) {
  const trace = id.trim();
  $("trace-id").textContent = trace;
  $("trace-input").value = trace;
  $("waterfall").replaceChildren();
  const quoted = /^[A-Za-z0-9_.:-]{1,128}$/.test(trace) ? literal(trace) : null;
  if (!quoted) {
    $("trace-note").textContent = "not a trace id (letters, digits, _ . : - only)";
    return;
  }
  const order = preferred === "otel_traces" ? ["otel_traces", "traces"] : ["traces", "otel_traces"];
  const names = order.filter((name) => find(name) && find(name).rows > 0);
  $("trace-note").textContent = "loading…";
  try {
    for (const name of names) {
      const { body } = await sql(TRACE_QUERIES[name](quoted));
      if (body.data.length) {
        const total = renderWaterfall($("waterfall"), body.data, name);
        $("trace-note").textContent = `${formatMs(total)} end to end`;
        $("trace-panel").scrollIntoView({ block: "nearest" });
        return;
      }
    }
    const where = names.join(" or ") || "traces or otel_traces (both are empty)";
    $("trace-note").textContent = `no spans of this trace in ${where}`;
  } catch (error) {
    $("trace-note").textContent = error.message;
  }
}

// --- SQL ----------------------------------------------------------------------------------

async function runSql() {
  const text = $("sql").value.trim();
  const status = $("sql-status");
  if (!text) return;
  status.textContent = "running…";
  status.classList.remove("failed");
  const started = performance.now();
  try {
    const { body, type } = await sql(text);
    const ms = (performance.now() - started).toFixed(0);
    const result = $("sql-result");
    if (type.includes("json") && body && Array.isArray(body.data)) {
      const shown = body.data.slice(0, SQL_ROWS_SHOWN);
      renderTable(result, (body.meta || []).map((m) => m.name), shown, { link: traceLink });
      $("sql-text").hidden = true;
      const more = body.data.length > shown.length ? `, the first ${shown.length} shown` : "";
      const rows = body.data.length === 1 ? "1 row" : `${formatCount(body.data.length)} rows`;
      status.textContent = `${rows}${more} in ${ms} ms`;
    } else {
      result.tHead.replaceChildren();
      result.tBodies[0].replaceChildren();
      $("sql-text").textContent = typeof body === "string" ? body : JSON.stringify(body, null, 2);
      $("sql-text").hidden = false;
      status.textContent = `answered in ${ms} ms`;
    }
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("failed");
  }
}

// --- the page -----------------------------------------------------------------------------

function showNoToken(reason) {
  clearTimeout(state.timer);
  state.token = null;
  $("workspace").hidden = true;
  $("pause").hidden = true;
  $("no-token").hidden = false;
  $("no-token-reason").textContent = reason;
  setStatus("no token: no data");
}

function start() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  Object.assign(state, { datasources: [], chosen: false, chartDue: 0, charted: null });
  Object.assign(state, { chartFloor: null, chartOnly: null, seenName: null });
  state.newestFloor.clear();
  if (!token) {
    showNoToken("This page shows the workspace only to whoever holds its token: none here.");
    return;
  }
  state.token = token;
  $("no-token").hidden = true;
  $("workspace").hidden = false;
  $("pause").hidden = false;
  setStatus("loading…");
  schedule(0);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  $("token-input").value = "";
  if (token) location.hash = `token=${encodeURIComponent(token)}`;
});
$("trace-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showTrace($("trace-input").value, null);
});
$("sql-form").addEventListener("submit", (event) => {
  event.preventDefault();
  runSql();
});
$("sql").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    runSql();
  }
});
$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Resume" : "Pause";
  if (state.paused) setStatus("paused");
  else schedule(0);
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.token) schedule(0);
});
window.addEventListener("hashchange", start);
start();
