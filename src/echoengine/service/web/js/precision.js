// The precision estimate per species from the reviews (GET /api/precision): for each score threshold, the
// estimated precision of every detection scoring at least that, with its 95 % interval, as a plot and a
// table; per score bin, the confirmed share of the reviewed ones.
//
//   #/precision?bins=5&species=robin

import {get} from "./api.js";
import {count, field, h, head, put, sayError, score, select, viewHeading} from "./dom.js";
import {bindKeys} from "./keys.js";
import {precisionChart} from "./charts.js";
import {known, loadSpecies} from "./server.js";
import {hashOf, pick} from "./state.js";

function interval(row) {
  return row.ci_low === null || row.ci_low === undefined ? "–" : `${score(row.ci_low)} – ${score(row.ci_high)}`;
}

function table(caption, first, rows, cells) {
  return h("table", {class: "precision"}, h("caption", {}, caption),
    head(first, ["Detections", "num"], ["Reviewed", "num"], ["Precision", "num"], ["95 % interval", "num"]),
    h("tbody", {}, rows.map((row) => h("tr", {}, h("th", {scope: "row"}, cells(row)),
      h("td", {class: "num"}, count(row.detections)), h("td", {class: "num"}, count(row.reviewed)),
      h("td", {class: "num"}, score(row.precision)), h("td", {class: "num"}, interval(row))))));
}

function speciesBlock(entry, index) {
  const id = `precision-${index}`;
  return h("section", {class: "card", "aria-labelledby": `${id}-h`},
    h("h3", {id: `${id}-h`}, entry.species),
    h("p", {class: "muted"}, `${count(entry.detections)} detections, ${count(entry.reviewed)} reviewed.`),
    precisionChart(id, entry.species, entry.thresholds || []),
    table("Precision of the detections at or above each threshold", "Threshold", entry.thresholds || [],
      (row) => `≥ ${score(row.threshold)}`),
    h("details", {}, h("summary", {}, "Per score bin"),
      table("Confirmed share of the reviewed detections in each bin", "Score bin", entry.bins || [],
        (row) => `${score(row.low)} – ${score(row.high)}`)));
}

function form(params) {
  const species = [["", "every species"], ...known.species.map((row) => [row.species, row.species])];
  const bins = h("input", {name: "bins", type: "number", min: 1, max: 20, step: 1, value: params.get("bins") || "5"});
  const element = h("form", {class: "filters", "aria-label": "Precision settings"},
    field("Species", select("species", species, params.get("species"))), field("Score bins", bins),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Show")));
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(element);
    location.hash = hashOf("precision", null, {species: data.get("species"), bins: data.get("bins")});
  });
  return element;
}

/** Render the precision view. */
export async function showPrecision(main, params) {
  put(main, viewHeading("Precision from the reviews"), h("p", {class: "muted"}, "Estimating…"));
  bindKeys({});
  let entries;
  try {
    await loadSpecies();
    entries = await get("api/precision", {bins: params.get("bins") || 5, ...pick(params, ["species"])});
  } catch (error) {
    put(main, viewHeading("Precision from the reviews"), form(params), h("p", {class: "error"}, error.message));
    sayError("The precision could not be estimated", error);
    return;
  }
  put(main, viewHeading("Precision from the reviews"),
    h("p", {}, "A detection counts as correct when its latest review confirms it under its own species; uncertain ",
      "reviews count as not reviewed. Each threshold's estimate weights every score bin by its detections, so review ",
      "a stratified sample (the ", h("a", {href: "#/queue"}, "review queue"), "), not only the top scores. ",
      "A dash: a bin with detections has no review yet."),
    form(params),
    entries.length ? h("div", {class: "cards"}, entries.map(speciesBlock)) : h("p", {}, "No detections yet."));
}
