// One detection: its spectrogram (the event's span marked by the server), the clip with a second of context,
// the top species, the model that found it and earlier reviews; buttons and keys to confirm, reject, mark
// uncertain, relabel (type-ahead over the serving model's classes), step to the next or previous one, undo.
//
//   showDetection(main, route().params, 812)   // #/detection/812?...

import {get, paths, reviewer} from "./api.js";
import {count, h, head, put, say, sayError, score, seconds, viewHeading, when} from "./dom.js";
import {bindKeys} from "./keys.js";
import {sendVerdict, undoLast} from "./review.js";
import {player, togglePlay} from "./player.js";
import {known} from "./server.js";
import {neighbour, origin, where} from "./walk.js";

const ADVANCE_STORE = "echoengine.advance";

function advance() {
  return localStorage.getItem(ADVANCE_STORE) !== "no";
}

function facts(d) {
  const duration = d.duration ?? d.recording_duration ?? d.recording?.duration;
  const rows = [
    ["Species", d.species], ["Score (max / mean)", `${score(d.score)} / ${score(d.mean_score)}`],
    ["Time (UTC)", when(d.time)], ["Sensor", d.sensor_id || "–"],
    ["Event in the recording", `${seconds(d.start)} – ${seconds(d.end)}`],
    ["Recording", `${d.recording_id}${duration ? ` (${seconds(duration)})` : ""}`],
    ["Model", d.model ? `${d.model.name}, version ${d.model.version}` : d.model_version || "–"],
  ];
  return h("dl", {class: "facts"}, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function topSpecies(d) {
  const rows = (d.top_species || []).slice(0, 5).map((entry) => {
    const bar = h("span", {class: "bar score-bar", "aria-hidden": "true"}, h("span", {class: "bar-score"}));
    bar.firstChild.style.width = `${Math.round(100 * entry.score)}%`;
    return h("tr", {class: entry.species === d.species ? "this" : null},
      h("th", {scope: "row"}, entry.species), h("td", {class: "num"}, score(entry.score)), h("td", {}, bar));
  });
  return h("table", {class: "top-species"}, h("caption", {}, "Top 5 species over the event"),
    head("Species", ["Score", "num"], h("span", {class: "visually-hidden"}, "Score as a bar")),
    h("tbody", {}, rows));
}

function reviewsTable(d) {
  const reviews = d.reviews || [];
  if (!reviews.length) return h("p", {id: "reviews"}, "No review yet.");
  return h("table", {id: "reviews", class: "reviews"},
    h("caption", {class: "visually-hidden"}, "Earlier reviews, oldest first"),
    head("When (UTC)", "Reviewer", "Verdict", "Comment"),
    h("tbody", {}, reviews.map((r) => h("tr", {}, h("td", {}, when(r.created_at)), h("td", {}, r.reviewer),
      h("td", {}, h("span", {class: `badge ${r.status}`}, r.status),
        r.species ? h("span", {class: "under"}, `as ${r.species}`) : null),
      h("td", {}, r.comment || "")))));
}

function verdictPanel(d, act) {
  const button = (status, text, key) => h("button", {type: "button", class: `verdict ${status}`,
    "aria-keyshortcuts": key, onclick: () => act(status)}, text, " ", h("kbd", {}, key));
  const species = h("input", {id: "relabel", name: "species", list: "classes", autocomplete: "off",
    spellcheck: "false", maxlength: 200,
    placeholder: known.classes.length ? `one of ${count(known.classes.length)} classes` : ""});
  const comment = h("input", {id: "comment", name: "comment", maxlength: 2000, autocomplete: "off"});
  const form = h("form", {class: "relabel"},
    h("label", {for: "relabel"}, "Relabel as species ", h("kbd", {}, "l")), species,
    h("button", {type: "submit"}, "Relabel"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = species.value.trim();
    if (!name) {
      say("Type the right species to relabel (the list offers the model's classes).", "error");
      species.focus();
      return;
    }
    act("confirmed", name);
  });
  const next = h("input", {type: "checkbox", id: "advance", checked: advance(),
    onchange: (event) => localStorage.setItem(ADVANCE_STORE, event.target.checked ? "yes" : "no")});
  const latest = (d.reviews || []).at(-1);
  return h("section", {class: "verdict-panel", "aria-labelledby": "verdict-title"},
    h("h3", {id: "verdict-title"}, "Your verdict"),
    h("p", {class: "muted"}, latest ? `Latest: ${latest.status}${latest.species ? ` as ${latest.species}` : ""} by ` +
      `${latest.reviewer}. ` : "Not reviewed yet. ",
    reviewer() ? `You review as ${reviewer()}.` : "Set your name first (top)."),
    h("div", {class: "buttons"}, button("confirmed", "Confirm", "c"), button("rejected", "Reject", "r"),
      button("uncertain", "Uncertain", "u")),
    form,
    h("div", {class: "field"}, h("label", {for: "comment"}, "Comment (optional, sent with the verdict)"), comment),
    h("p", {}, next, " ", h("label", {for: "advance"}, "After a verdict, go to the next detection")),
    h("p", {}, h("button", {type: "button", class: "quiet", "aria-keyshortcuts": "z", onclick: () => undoLast()},
      "Undo my last review ", h("kbd", {}, "z"))));
}

/** Go to the next (+1) or previous (-1) detection; false when there is none (the status line says why). */
async function step(id, params, direction) {
  try {
    const found = await neighbour(id, params, direction);
    if (found.hash) location.hash = found.hash;
    else say(found.why);
    return Boolean(found.hash);
  } catch (error) {
    sayError("The next detection could not be found", error);
    return false;
  }
}

/** Render the detection view for the detection `id`, within the list or queue of the hash. */
export async function showDetection(main, params, id) {
  const detectionId = Number(id);
  const from = origin(params);
  let d;
  try {
    d = await get(paths.detection(detectionId));
  } catch (error) {
    put(main, viewHeading(`Detection ${id}`), h("p", {class: "error"}, `It cannot be shown: ${error.message}`),
      h("p", {}, h("a", {href: from.back}, from.label)));
    sayError(`Detection ${id} cannot be shown`, error);
    bindKeys({Escape: () => { location.hash = from.back; }});
    return;
  }
  const act = async (status, species = null) => {
    const comment = document.getElementById("comment")?.value.trim() || null;
    const review = await sendVerdict(d, status, species, comment);
    if (!review) return;
    if (!(advance() && await step(d.id, params, +1))) window.dispatchEvent(new CustomEvent("echoengine:refresh"));
  };
  const relabel = d.reviewed_species && d.reviewed_species !== d.species ? ` → ${d.reviewed_species}` : "";
  const position = h("span", {class: "muted", id: "position"});
  put(main, viewHeading(`Detection ${d.id}: ${d.species}`),
    h("p", {}, h("span", {class: `badge ${d.review || "unreviewed"}`, id: "review-state"},
      (d.review || "unreviewed") + relabel),
      " ", position),
    h("nav", {class: "steps", "aria-label": "Detections"},
      h("button", {type: "button", "aria-keyshortcuts": "p ArrowLeft", onclick: () => step(d.id, params, -1)},
        "‹ Previous ", h("kbd", {}, "p")),
      h("a", {href: from.back, class: "button", "aria-keyshortcuts": "Escape"}, from.label, " ", h("kbd", {}, "Esc")),
      h("button", {type: "button", "aria-keyshortcuts": "n ArrowRight", onclick: () => step(d.id, params, +1)},
        "Next ", h("kbd", {}, "n"), " ›")),
    h("div", {class: "detail"},
      h("div", {}, await player(d), verdictPanel(d, act)),
      h("div", {class: "side"}, facts(d), topSpecies(d),
        h("section", {"aria-labelledby": "reviews-title"}, h("h3", {id: "reviews-title"}, "Earlier reviews"),
          reviewsTable(d)))));
  bindKeys({
    c: () => act("confirmed"), r: () => act("rejected"), u: () => act("uncertain"),
    l: () => document.getElementById("relabel").focus(), n: () => step(d.id, params, +1),
    p: () => step(d.id, params, -1), z: () => undoLast(), " ": togglePlay,
    Escape: () => { location.hash = from.back; },
  });
  where(d.id, params).then((text) => { position.textContent = text; }).catch(() => {});
}
