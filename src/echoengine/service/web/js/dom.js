// Small DOM helpers: build elements, announce messages, format numbers and times.
//
//   h("button", {type: "button", onclick: go}, "Next")   ->  <button type="button">Next</button>
//   say("Detection 12 confirmed")                         ->  the status line (an aria-live region) reads it

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: h("a", {href: "#/x"}, "text", child, [more]). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element (same arguments as h). */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace a node's children. */
export function put(node, ...children) {
  node.replaceChildren();
  return fill(node, {}, children);
}

let statusTimer = null;

/** Announce one line in the status region; kind "error" keeps it until the next message. */
export function say(text, kind = "info") {
  const status = document.getElementById("status");
  if (!status) return;
  clearTimeout(statusTimer);
  status.textContent = String(text).split("\n")[0];
  status.dataset.kind = kind;
  if (kind !== "error") statusTimer = setTimeout(() => { status.textContent = ""; }, 12000);
}

/** A thrown error as one line (an ApiError already names the request and the server's detail). */
export function sayError(what, error) {
  say(`${what}: ${error && error.message ? error.message : error}`, "error");
}

/** A score as 0.873. */
export function score(value) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(3);
}

/** A share as 42 %. */
export function percent(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)} %` : "–";
}

/** An ISO time ("2024-05-01T04:00:03.5Z") as "2024-05-01 04:00:03" (UTC). */
export function when(iso) {
  return iso ? iso.replace("T", " ").replace(/(\.\d+)?Z$/, "") : "–";
}

/** Seconds as "12.3 s". */
export function seconds(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} s`;
}

/** A whole number with thousands separators. */
export function count(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en");
}

/** A heading that takes the focus when a view opens (screen readers hear where they are). */
export function viewHeading(text, id = "view-title") {
  return h("h2", {id, tabindex: "-1"}, text);
}

/** A label + control pair: {label, control} wrapped in a div. */
export function field(labelText, control, hint) {
  const id = control.id || `f-${control.name || Math.random().toString(36).slice(2, 8)}`;
  control.id = id;
  return h("div", {class: "field"}, h("label", {for: id}, labelText), control,
    hint ? h("span", {class: "muted small"}, hint) : null);
}

/** A <select> of [value, text] pairs with one selected. */
export function select(name, pairs, selected) {
  return h("select", {name},
    pairs.map(([value, text]) => h("option", {value, selected: String(value) === String(selected ?? "")}, text)));
}

/** A table head: head("Species", ["Score", "num"]) -> <thead> with column headers (right-aligned for "num"). */
export function head(...columns) {
  return h("thead", {}, h("tr", {}, columns.map((column) => {
    const [text, kind] = Array.isArray(column) ? column : [column, null];
    return h("th", {scope: "col", class: kind}, text);
  })));
}
