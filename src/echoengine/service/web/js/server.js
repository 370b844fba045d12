// What the page knows of the server: the serving model (its classes feed the relabel type-ahead), the
// species and the sensors (they feed the filters). Loaded once, refreshed when a view needs fresh counts.
//
//   await loadModels();  known.classes  ->  ["robin", "wren", ...]

import {get} from "./api.js";
import {h} from "./dom.js";

export const known = {model: null, models: [], classes: [], species: [], sensors: []};

/** The models (the serving one first in `known.model`); fills the <datalist> of classes. */
export async function loadModels() {
  known.models = await get("api/models");
  known.model = known.models.find((model) => model.serving) || known.models[0] || null;
  known.classes = known.model ? [...known.model.classes].sort((a, b) => a.localeCompare(b)) : [];
  let list = document.getElementById("classes");
  if (!list) {
    list = h("datalist", {id: "classes"});
    document.body.append(list);
  }
  list.replaceChildren(...known.classes.map((name) => h("option", {value: name})));
  return known.model;
}

/** Detections and review counts per species: [{species, detections, confirmed, rejected, uncertain, unreviewed}]. */
export async function loadSpecies() {
  known.species = await get("api/species");
  return known.species;
}

/** The sensors: [{id, name, lat, lon, alt, recordings, ...}]. */
export async function loadSensors() {
  known.sensors = await get("api/sensors");
  return known.sensors;
}

/** A model's name and version, "bundle/3". */
export function modelName(model) {
  return model ? `${model.name}/${model.version}` : "–";
}
