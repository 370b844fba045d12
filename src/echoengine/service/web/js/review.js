// Verdicts and their undo: each review this tab makes is remembered (session storage) with where it was
// made, so that "z" deletes the latest one (DELETE /api/reviews/{id}) and goes back to its detection.
//
//   await sendVerdict(detection, "confirmed");               // POST /api/detections/{id}/review
//   await sendVerdict(detection, "confirmed", "wren");        // a relabel: the right species is wren
//   await undoLast();

import {del, paths, post, reviewer} from "./api.js";
import {say, sayError} from "./dom.js";
import {known} from "./server.js";

const UNDO_STORE = "echoengine.undo";
let pendingNewSpecies = null;  // a relabel to a name no model knows, given once: the second time it is sent
const listeners = [];

function stack() {
  try {
    return JSON.parse(sessionStorage.getItem(UNDO_STORE) || "[]");
  } catch {
    return [];
  }
}

function save(entries) {
  sessionStorage.setItem(UNDO_STORE, JSON.stringify(entries.slice(-200)));
}

/** Call fn(detectionId, status or null) after each verdict and undo (the queue keeps its marks current). */
export function onReviewChange(fn) {
  listeners.push(fn);
}

/** Whether a reviewer name is set; if not, say so and open the field. */
export function haveReviewer() {
  if (reviewer()) return true;
  const settings = document.getElementById("settings");
  settings.open = true;
  document.getElementById("reviewer").focus();
  say("Type your name as reviewer first (it is saved with each review), then press Enter.", "error");
  return false;
}

/** Whether any model this store has served knows ``name`` as a class. */
function isKnownSpecies(name) {
  return known.models.some((model) => model.classes.includes(name));
}

/** Post a verdict; the review's JSON, or null when it failed (the status line says why). */
export async function sendVerdict(detection, status, species = null, comment = null) {
  if (!haveReviewer()) return null;
  const body = {status, reviewer: reviewer()};
  if (species && species !== detection.species) body.species = species;
  if (body.species && !isKnownSpecies(body.species)) {
    // a name no model knows: a typo, or a species new to the models (a class of the next one): sent only
    // when the same name is given twice in a row
    if (pendingNewSpecies !== body.species) {
      pendingNewSpecies = body.species;
      say(`Not relabelled: "${body.species}" is not one of the models' classes. Relabel with it again to add it ` +
          "as a new species.", "error");
      return null;
    }
    body.new_species = true;
  }
  pendingNewSpecies = null;
  if (comment) body.comment = comment;
  const what = body.species ? `relabelled as ${body.species}` : status;
  try {
    const review = await post(paths.review(detection.id), body);
    const entries = stack();
    entries.push({review: review.id, detection: detection.id, what, hash: location.hash});
    save(entries);
    listeners.forEach((fn) => fn(detection.id, status));
    say(`Detection ${detection.id} ${what}. Press z to undo.`);
    return review;
  } catch (error) {
    sayError(`Detection ${detection.id} could not be ${what}`, error);
    return null;
  }
}

/** Delete this tab's latest review and go back to where it was made; true when one was undone. */
export async function undoLast() {
  const entries = stack();
  const entry = entries.pop();
  if (!entry) {
    say("Nothing to undo: this tab has made no review.");
    return false;
  }
  try {
    await del(paths.reviewById(entry.review));
  } catch (error) {
    if (error.status !== 404) {
      sayError(`The review of detection ${entry.detection} could not be undone`, error);
      return false;
    }
    save(entries);  // already gone: forget it
    sayError(`The review of detection ${entry.detection} was already deleted`, error);
    return false;
  }
  save(entries);
  listeners.forEach((fn) => fn(entry.detection, null));
  say(`Undone: detection ${entry.detection} ${entry.what}.`);
  if (entry.hash && entry.hash !== location.hash) location.hash = entry.hash;
  else window.dispatchEvent(new CustomEvent("echoengine:refresh"));
  return true;
}
