// Building the page's DOM from data: text and attributes only, never HTML (an event's text
// is the application's users' text), and no inline style (the Content-Security-Policy
// allows app.css only: what changes with the data is a class).

const SVG = "http://www.w3.org/2000/svg";

export function element(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function svgElement(tag, attributes = {}, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (parent) parent.append(node);
  return node;
}

export function cell(content, className = "") {
  const td = element("td", className ? { class: className } : {});
  td.append(content);
  return td;
}

export function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// Rows (objects) as a table under the given column names. `link(name, text)` may return an
// element for a cell (a trace id's button); `fresh(index)` marks rows not seen before.
export function renderTable(table, names, data, options = {}) {
  const { fresh = () => false, link = () => null, empty = "No rows." } = options;
  const head = element("tr");
  head.append(...names.map((name) => element("th", {}, name)));
  table.tHead.replaceChildren(head);
  if (!data.length) {
    const row = element("tr");
    row.append(element("td", { class: "muted", colspan: Math.max(1, names.length) }, empty));
    table.tBodies[0].replaceChildren(row);
    return;
  }
  const rows = data.map((values, index) => {
    const row = element("tr");
    if (fresh(index)) row.classList.add("fresh");
    for (const name of names) {
      const value = values[name];
      const text = display(value);
      const linked = text ? link(name, text) : null;
      if (linked) {
        row.append(cell(linked));
        continue;
      }
      const td = cell(text, value === null || value === undefined ? "null" : "");
      if (text.length > 40) td.title = text.slice(0, 4000);
      row.append(td);
    }
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
}

export function formatCount(value) {
  return Number(value).toLocaleString("en-US");
}
