// The review page's entry point: settings (reviewer, API key), the model line, the keys, and the router that
// renders the view the URL's hash names (#/detections, #/detection/ID, #/queue, #/precision, #/sensors).

import {apiKey, get, reviewer, setApiKey, setReviewer} from "./api.js";
import {h, put, say, sayError} from "./dom.js";
import {showDetection} from "./detection.js";
import {installKeys} from "./keys.js";
import {showList} from "./list.js";
import {showPrecision} from "./precision.js";
import {showQueue} from "./queue.js";
import {loadModels, modelName} from "./server.js";
import {showSensors} from "./sensors.js";
import {isRoute, rendered, route} from "./state.js";

const VIEWS = {
  detections: [showList, "Detections"], detection: [showDetection, "Detection"], queue: [showQueue, "Review queue"],
  precision: [showPrecision, "Precision"], sensors: [showSensors, "Sensors"],
};
const NAV = {detection: "detections"};
let rendering = Promise.resolve();

async function render(force = false) {
  if (!isRoute(location.hash) || (!force && location.hash === rendered.hash)) return;
  rendered.hash = location.hash;
  const {view, id, params} = route();
  const name = VIEWS[view] ? view : "detections";
  const [show, title] = VIEWS[name];
  const main = document.getElementById("main");
  const same = main.dataset.view === name;
  main.dataset.view = name;
  for (const link of document.querySelectorAll("nav [data-view]")) {
    if (link.dataset.view === (NAV[name] || name)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${title}${id ? ` ${id}` : ""} · echoengine review`;
  main.setAttribute("aria-busy", "true");
  try {
    await show(main, params, id, {same});
  } catch (error) {
    put(main, h("h2", {id: "view-title", tabindex: "-1"}, title), h("p", {class: "error"}, error.message));
    sayError(`${title} could not be shown`, error);
  } finally {
    main.removeAttribute("aria-busy");
  }
  const keepFocus = same && name !== "detection" && main.contains(document.activeElement);
  if (!keepFocus && !force) document.getElementById("view-title")?.focus({preventScroll: false});
  main.dataset.ready = location.hash;  // for tests and tools: this hash is rendered
}

function queueRender(force = false) {
  rendering = rendering.then(() => render(force));
  return rendering;
}

function settings() {
  const form = document.getElementById("settings-form");
  const name = document.getElementById("reviewer");
  const key = document.getElementById("api-key");
  name.value = reviewer();
  key.value = apiKey();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setReviewer(name.value.trim());
    setApiKey(key.value.trim());
    document.getElementById("settings").open = false;
    showSettings();
    say(`Saved: you review as ${reviewer() || "nobody (type a name)"}${apiKey() ? ", with an API key" : ""}.`);
    start();
  });
  showSettings();
}

function showSettings() {
  document.getElementById("settings-summary").textContent =
    `Reviewer: ${reviewer() || "not set"}${apiKey() ? " · key set" : ""}`;
}

async function start() {
  const line = document.getElementById("serving");
  try {
    const health = get("healthz").catch((error) => ({status: error.message}));
    const model = await loadModels();
    const state = await health;
    line.textContent = `Serving ${modelName(model)} · ${model ? model.classes.length : 0} classes · ` +
      `${state.queued ?? "?"} queued${state.status === "ok" ? "" : ` · ${state.status}`}`;
  } catch (error) {
    line.textContent = `The server's model is unknown: ${error.message}`;
    sayError("The server could not be reached", error);
  }
}

function skipLink() {
  document.getElementById("skip").addEventListener("click", (event) => {
    event.preventDefault();  // keep the route in the hash
    document.getElementById("main").focus();
  });
}

settings();
skipLink();
installKeys();
window.addEventListener("hashchange", () => {
  const status = document.getElementById("status");
  if (status && status.dataset.kind === "error") say("");  // an error belongs to the view it happened in
  queueRender();
});
window.addEventListener("popstate", () => queueRender());
window.addEventListener("echoengine:refresh", () => queueRender(true));
start().then(() => {
  if (!location.hash || location.hash === "#") history.replaceState(null, "", "#/detections");
  queueRender();
});
