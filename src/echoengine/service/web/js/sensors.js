// The sensors: coordinates, recordings and detections, and a plain plot of their positions (no map tiles).
//
//   #/sensors

import {count, h, head, put, sayError, viewHeading, when} from "./dom.js";
import {bindKeys} from "./keys.js";
import {positionsChart} from "./charts.js";
import {known, loadSensors} from "./server.js";
import {hashOf} from "./state.js";

const linkOf = (sensor) => hashOf("detections", null, {sensor: sensor.id});

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function table(sensors) {
  return h("table", {class: "sensors"}, h("caption", {}, "Sensors and their last known position"),
    head("Sensor", "Name", ["Latitude", "num"], ["Longitude", "num"], ["Altitude (m)", "num"], ["Recordings", "num"],
      ["Detections", "num"], "Last seen (UTC)"),
    h("tbody", {}, sensors.map((sensor) => h("tr", {},
      h("th", {scope: "row"}, h("a", {href: linkOf(sensor), "aria-label": `${sensor.id}: its detections`}, sensor.id)),
      h("td", {}, sensor.name || "–"), h("td", {class: "num"}, fixed(sensor.lat, 5)),
      h("td", {class: "num"}, fixed(sensor.lon, 5)), h("td", {class: "num"}, fixed(sensor.alt, 0)),
      h("td", {class: "num"}, count(sensor.recordings)), h("td", {class: "num"}, count(sensor.detections)),
      h("td", {}, when(sensor.last_seen_at))))));
}

/** Render the sensors view. */
export async function showSensors(main) {
  put(main, viewHeading("Sensors"), h("p", {class: "muted"}, "Loading…"));
  bindKeys({});
  try {
    await loadSensors();
  } catch (error) {
    put(main, viewHeading("Sensors"), h("p", {class: "error"}, error.message));
    sayError("The sensors could not be listed", error);
    return;
  }
  const sensors = known.sensors;
  const chart = positionsChart("positions", sensors, linkOf);
  put(main, viewHeading("Sensors"),
    sensors.length ? [
      h("div", {class: "scroll"}, table(sensors)),
      h("figure", {class: "positions"}, chart || h("p", {}, "No sensor has given its position."),
        h("figcaption", {class: "muted small"}, "Positions as longitude and latitude (a plain plot, no map); a point ",
          "opens its sensor's detections.")),
    ] : h("p", {}, "No sensor yet: uploads and MQTT messages name their sensor."));
}
