// The detection list: filters (species, sensor, dates, score range, review status), ordering, paging, and
// the counts per species with their confirmed and rejected shares. Only one page of detections is ever
// fetched (the server counts the rest), so the list stays fast with tens of thousands of detections.
//
//   showList(main, route().params)   // renders #/detections?species=robin&page=2

import {detections} from "./api.js";
import {count, field, h, head, percent, put, say, sayError, score, seconds, select, viewHeading, when} from "./dom.js";
import {bindKeys} from "./keys.js";
import {undoLast} from "./review.js";
import {known, loadSensors, loadSpecies} from "./server.js";
import {FILTERS, PAGE_SIZES, apiFilter, hashOf, listParams, paging, rendered} from "./state.js";

const REVIEWS = [["", "any"], ["unreviewed", "unreviewed"], ["reviewed", "reviewed"], ["confirmed", "confirmed"],
  ["rejected", "rejected"], ["uncertain", "uncertain"]];
const ORDERS = [["newest", "newest first"], ["oldest", "oldest first"], ["score", "highest score first"]];

let current = null; // {params, total} of the list on screen

function filterForm(params) {
  const species = [["", "any"],
    ...known.species.map((row) => [row.species, `${row.species} (${count(row.detections)})`])];
  const sensors = [["", "any"], ...known.sensors.map((row) => [row.id, row.name ? `${row.id} (${row.name})` : row.id])];
  const number = (name) => h("input", {name, type: "number", min: 0, max: 1, step: "any", inputmode: "decimal",
    value: params.get(name) || "", placeholder: name === "min" ? "0" : "1"});
  const date = (name) => h("input", {name, type: "date", value: params.get(name) || ""});
  const form = h("form", {class: "filters", id: "filters", "aria-label": "Filters"},
    field("Species", select("species", species, params.get("species"))),
    field("Sensor", select("sensor", sensors, params.get("sensor"))),
    field("From (UTC)", date("from")),
    field("To (UTC)", date("to")),
    field("Score at least", number("min")),
    field("Score at most", number("max")),
    field("Review", select("review", REVIEWS, params.get("review"))),
    field("Order", select("order", ORDERS, params.get("order") || "newest")),
    field("Per page", select("size", PAGE_SIZES.map((n) => [n, n]), paging(params).size)),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Apply"),
      h("button", {type: "button", class: "quiet", onclick: () => { form.reset(); clearForm(form); apply(form); }},
        "Clear")));
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(form); });
  form.addEventListener("change", (event) => { if (event.target.tagName === "SELECT") apply(form); });
  return form;
}

function clearForm(form) {
  for (const element of form.elements) {
    if (element.tagName === "SELECT") element.selectedIndex = element.name === "size" ? 1 : 0;
    else if (element.tagName === "INPUT") element.value = "";
  }
}

function apply(form) {
  const data = new FormData(form);
  const params = new URLSearchParams();
  for (const name of [...Object.keys(FILTERS), "size"]) {
    const value = (data.get(name) || "").trim();
    if (value && !(name === "order" && value === "newest") && !(name === "size" && value === "50")) {
      params.set(name, value);
    }
  }
  rendered.hash = hashOf("detections", null, params);
  history.pushState(null, "", rendered.hash);
  document.getElementById("species-counts")?.replaceChildren(speciesTable(params));
  loadPage(params, true);
}

function reviewBadge(item) {
  const status = item.review || "unreviewed";
  const relabel = item.reviewed_species && item.reviewed_species !== item.species ? ` as ${item.reviewed_species}` : "";
  return h("span", {class: `badge ${status}`}, status + relabel);
}

function row(item, params, position) {
  const link = hashOf("detection", item.id, {...listParams(params), pos: position});
  return h("tr", {},
    h("td", {class: "time"}, when(item.time)),
    h("th", {scope: "row"}, h("a", {href: link, "aria-label": `${item.species}, detection ${item.id}`}, item.species)),
    h("td", {class: "num"}, score(item.score)),
    h("td", {}, item.sensor_id || "–"),
    h("td", {class: "num"}, `${item.start.toFixed(1)}–${seconds(item.end)}`),
    h("td", {}, reviewBadge(item)),
    h("td", {class: "muted"}, item.model ? `${item.model.name}/${item.model.version}` : item.model_version || "–"));
}

function pager(total, params) {
  const {size, page} = paging(params);
  const last = Math.max(1, Math.ceil(total / size));
  const go = (to) => {
    const next = new URLSearchParams(params);
    if (to > 1) next.set("page", to); else next.delete("page");
    return hashOf("detections", null, next);
  };
  const link = (to, text, label) => (to >= 1 && to <= last && to !== page
    ? h("a", {href: go(to), class: "button", "aria-label": label}, text)
    : h("span", {class: "button disabled", "aria-disabled": "true"}, text));
  return h("nav", {class: "pager", "aria-label": "Pages of detections"},
    link(1, "« First", "first page"), link(page - 1, "‹ Previous", "previous page"),
    h("span", {}, `page ${count(Math.min(page, last))} of ${count(last)}`),
    link(page + 1, "Next ›", "next page"), link(last, "Last »", "last page"));
}

function results(answer, params) {
  const {size, page} = paging(params);
  const first = (page - 1) * size;
  const shown = answer.items.length;
  const summary = answer.total === 0 ? "No detection matches these filters."
    : `Detections ${count(first + 1)}–${count(first + shown)} of ${count(answer.total)}.`;
  const table = h("table", {class: "detections"},
    h("caption", {class: "visually-hidden"}, "Detections, one per row; the species opens the detection"),
    head("Time (UTC)", "Species", ["Score", "num"], "Sensor", ["Event", "num"], "Review", "Model"),
    h("tbody", {}, answer.items.map((item, i) => row(item, params, first + i))));
  return [h("p", {id: "list-summary"}, summary), pager(answer.total, params),
    shown ? h("div", {class: "scroll"}, table) : null,
    shown > 20 ? pager(answer.total, params) : null];
}

async function loadPage(params, announce = false) {
  const area = document.getElementById("results");
  if (!area) return;
  const {size, page} = paging(params);
  area.setAttribute("aria-busy", "true");
  try {
    const answer = await detections({...apiFilter(params), limit: size, offset: (page - 1) * size});
    current = {params, total: answer.total};
    put(area, results(answer, params));
    if (announce) say(`${count(answer.total)} detections match.`);
  } catch (error) {
    put(area, h("p", {class: "error"}, `The detections could not be listed: ${error.message}`));
    sayError("Listing detections failed", error);
  } finally {
    area.removeAttribute("aria-busy");
    document.getElementById("main").dataset.ready = location.hash;
  }
}

function speciesTable(params) {
  const rows = known.species.map((row) => {
    const wrong = (row.rejected || 0) + (row.relabelled || 0);
    const reviewed = (row.confirmed || 0) + wrong + (row.uncertain || 0);
    const filter = hashOf("detections", null, {...listParams(params), species: row.species, page: ""});
    const share = (part) => (part === undefined ? "–" : `${count(part)} (${percent(part, reviewed)})`);
    return h("tr", {},
      h("th", {scope: "row"}, h("a", {href: filter}, row.species),
        h("span", {class: "under"}, shareBar(row), `${count(row.detections)} detections · ${count(reviewed)} reviewed`,
          row.relabelled ? ` · ${count(row.relabelled)} relabelled` : "")),
      h("td", {class: "num"}, share(row.confirmed || 0)), h("td", {class: "num"}, share(wrong)));
  });
  return h("table", {class: "species"},
    h("caption", {}, "Confirmed as the species, and rejected or relabelled to another: shares of the reviewed ",
      "detections. The bar: of all detections."),
    head("Species", ["Confirmed", "num"], ["Rejected or relabelled", "num"]),
    h("tbody", {}, rows));
}

function shareBar(row) {
  const total = row.detections || 1;
  const bar = h("span", {class: "bar", role: "img", "aria-label":
    `${row.confirmed || 0} confirmed, ${row.rejected || 0} rejected, ${row.relabelled || 0} relabelled, ` +
    `${row.uncertain || 0} uncertain ` +
    `of ${row.detections}`});
  for (const part of ["confirmed", "rejected", "relabelled", "uncertain"]) {
    const piece = h("span", {class: `bar-${part}`});
    piece.style.width = `${(100 * (row[part] || 0)) / total}%`;
    bar.append(piece);
  }
  return bar;
}

/** Render the list view for the hash's parameters. */
export async function showList(main, params, _id, {same = false} = {}) {
  if (!same) put(main, viewHeading("Detections"), h("p", {class: "muted"}, "Loading…"));
  try {
    if (!same || !known.species.length) await Promise.all([loadSpecies(), loadSensors()]);
  } catch (error) {
    sayError("The species and sensors could not be loaded", error);
  }
  put(main, viewHeading("Detections"),
    h("div", {class: "columns"},
      h("section", {class: "wide", "aria-labelledby": "view-title"}, filterForm(params),
        h("div", {id: "results", "aria-live": "off"})),
      h("aside", {"aria-labelledby": "species-title"}, h("h3", {id: "species-title"}, "Species"),
        h("div", {class: "scroll", id: "species-counts"}, speciesTable(params)))));
  bindKeys({
    n: () => stepPage(+1), p: () => stepPage(-1), z: () => undoLast(),
    "/": () => document.querySelector("#filters select, #filters input")?.focus(),
  });
  await loadPage(params);
}

function stepPage(step) {
  if (!current) return;
  const {size, page} = paging(current.params);
  const last = Math.max(1, Math.ceil(current.total / size));
  const to = page + step;
  if (to < 1 || to > last) {
    say(step > 0 ? "This is the last page." : "This is the first page.");
    return;
  }
  const next = new URLSearchParams(current.params);
  next.set("page", to);
  location.hash = hashOf("detections", null, next);
}
