// The review queue: a stratified sample of detections (species x score bin) for a review budget. Reviewing
// the whole sample, not only the top scores, gives unbiased precision estimates at every threshold. The
// page walks the sample, skipping detections already reviewed.
//
//   #/queue?budget=50&bins=5&seed=0&qspecies=robin

import {get} from "./api.js";
import {count, field, h, head, put, say, sayError, score, select, viewHeading} from "./dom.js";
import {bindKeys} from "./keys.js";
import {onReviewChange} from "./review.js";
import {known, loadSpecies} from "./server.js";
import {QUEUE_FIELDS, hashOf, pick} from "./state.js";

const DEFAULTS = {budget: "50", bins: "5", seed: "0"};
let cached = {key: null, answer: null};

/** The queue's parameters of a hash (with defaults), as the API takes them. */
export function queueQuery(params) {
  const given = pick(params, QUEUE_FIELDS);
  return {budget: given.budget || DEFAULTS.budget, bins: given.bins || DEFAULTS.bins, seed: given.seed || DEFAULTS.seed,
    species: given.qspecies || ""};
}

/** The queue for these parameters (fetched once, then kept and updated as reviews are made). */
export async function loadQueue(params, fresh = false) {
  const query = queueQuery(params);
  const key = JSON.stringify(query);
  if (fresh || cached.key !== key) cached = {key, answer: await get("api/review-queue", query)};
  return cached.answer;
}

onReviewChange((id, status) => {
  for (const item of cached.answer?.items || []) if (item.id === id) item.review = status;
});

/** The hash parameters that open a detection within the queue. */
export function queueParams(params) {
  return {queue: 1, ...pick(params, QUEUE_FIELDS)};
}

/** The next unreviewed item after position `from` (wrapping around), or null when all are reviewed. */
export function nextUnreviewed(items, from) {
  for (let step = 1; step <= items.length; step += 1) {
    const i = (from + step + items.length) % items.length;
    if (!items[i].review) return i;
  }
  return null;
}

function queueForm(params) {
  const query = queueQuery(params);
  const species = [["", "every species"], ...known.species.map((row) => [row.species, row.species])];
  const number = (name, min, max) => h("input", {name, type: "number", min, max, step: 1, required: true,
    value: query[name]});
  const form = h("form", {class: "filters", "aria-label": "Queue settings"},
    field("Budget (detections to review)", number("budget", 1, 1000)),
    field("Score bins", number("bins", 1, 20)),
    field("Seed", number("seed", 0, 2 ** 31 - 1)),
    field("Species", select("qspecies", species, query.species)),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Sample")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = hashOf("queue", null, Object.fromEntries(QUEUE_FIELDS.map((name) => [name, data.get(name)])));
  });
  return form;
}

function strataTable(all) {
  const strata = all.filter((row) => row.detections > 0);
  return h("table", {class: "strata"},
    h("caption", {}, "Strata: species × score bin (bins without detections left out)"),
    head("Species", ["Score bin", "num"], ["Detections", "num"], ["Sampled", "num"], ["Reviewed", "num"]),
    h("tbody", {}, strata.map((row) => h("tr", {},
      h("th", {scope: "row"}, row.species), h("td", {class: "num"}, `${score(row.low)} – ${score(row.high)}`),
      h("td", {class: "num"}, count(row.detections)), h("td", {class: "num"}, count(row.sampled)),
      h("td", {class: "num"}, count(row.reviewed))))));
}

function itemsTable(items, params) {
  return h("table", {class: "detections"},
    h("caption", {}, "The sample, in the order the queue walks it"),
    head(["#", "num"], "Species", ["Score", "num"], ["Score bin", "num"], "Review"),
    h("tbody", {}, items.map((item, i) => h("tr", {},
      h("td", {class: "num"}, i + 1),
      h("th", {scope: "row"}, h("a", {href: hashOf("detection", item.id, {...queueParams(params), pos: i})},
        item.species)),
      h("td", {class: "num"}, score(item.score)),
      h("td", {class: "num"}, item.stratum ? `${score(item.stratum.low)} – ${score(item.stratum.high)}` : "–"),
      h("td", {}, h("span", {class: `badge ${item.review || "unreviewed"}`}, item.review || "unreviewed"))))));
}

function start(answer, params) {
  const i = nextUnreviewed(answer.items, -1);
  if (i === null) {
    say(answer.items.length ? "Every detection of this sample is reviewed." : "The sample is empty.");
    return;
  }
  location.hash = hashOf("detection", answer.items[i].id, {...queueParams(params), pos: i});
}

/** Render the queue view. */
export async function showQueue(main, params) {
  put(main, viewHeading("Review queue"), h("p", {class: "muted"}, "Sampling…"));
  let answer;
  try {
    await loadSpecies();
    answer = await loadQueue(params, true);
  } catch (error) {
    put(main, viewHeading("Review queue"), queueForm(params), h("p", {class: "error"}, `No queue: ${error.message}`));
    sayError("The review queue could not be loaded", error);
    return;
  }
  const reviewed = answer.items.filter((item) => item.review).length;
  put(main, viewHeading("Review queue"),
    h("p", {}, "A sample of the detections stratified by species and score bin, for a review budget. Review the ",
      "whole sample (not only high scores): the confirmed share in each bin then estimates each species' precision ",
      "at every threshold without bias (see ", h("a", {href: "#/precision"}, "Precision"), ")."),
    queueForm(params),
    h("p", {}, h("label", {for: "queue-progress"}, `${count(reviewed)} of ${count(answer.items.length)} sampled `,
      "detections reviewed "), h("progress", {id: "queue-progress", max: answer.items.length || 1, value: reviewed})),
    h("p", {}, h("button", {type: "button", "aria-keyshortcuts": "s", onclick: () => start(answer, params)},
      "Start reviewing (s)")),
    h("div", {class: "scroll"}, strataTable(answer.strata || [])),
    h("div", {class: "scroll"}, itemsTable(answer.items, params)));
  bindKeys({s: () => start(answer, params)});
}
