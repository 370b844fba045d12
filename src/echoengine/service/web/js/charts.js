// Two small inline SVG plots, drawn from plain numbers (no library, no map tiles):
//   precisionChart(thresholds)  precision against score threshold, with the 95 % interval as a band;
//   positionsChart(sensors)     sensors at their longitude and latitude, each a link to its detections.
// Each has a title and a description for screen readers; the tables beside them hold the same numbers.

import {s} from "./dom.js";

const M = {left: 56, right: 16, top: 12, bottom: 36};

function axes({W, H}, xTicks, yTicks, x, y, xLabel, yLabel) {
  const nodes = [];
  for (const [value, text] of xTicks) {
    nodes.push(s("line", {x1: x(value), x2: x(value), y1: M.top, y2: H - M.bottom, class: "grid"}),
      s("text", {x: x(value), y: H - M.bottom + 14, "text-anchor": "middle", class: "tick"}, text));
  }
  for (const [value, text] of yTicks) {
    nodes.push(s("line", {x1: M.left, x2: W - M.right, y1: y(value), y2: y(value), class: "grid"}),
      s("text", {x: M.left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick"}, text));
  }
  nodes.push(s("text", {x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle", class: "label"}, xLabel),
    s("text", {x: 12, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "label",
      transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})`}, yLabel));
  return nodes;
}

function frame({W, H}, id, title, description, children) {
  return s("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart",
    "aria-labelledby": `${id}-t ${id}-d`},
  s("title", {id: `${id}-t`}, title), s("desc", {id: `${id}-d`}, description), children);
}

/** Precision (0..1) against threshold (0..1): a line through the estimates, the interval as a band. */
export function precisionChart(id, species, thresholds) {
  const size = {W: 360, H: 190}, {W, H} = size;
  const x = (t) => M.left + t * (W - M.left - M.right);
  const y = (p) => H - M.bottom - p * (H - M.top - M.bottom);
  const known = thresholds.filter((row) => row.precision !== null && row.precision !== undefined);
  const banded = known.filter((row) => row.ci_low !== null && row.ci_high !== null);
  const band = banded.length ? [...banded.map((r) => `${x(r.threshold)},${y(r.ci_high)}`),
    ...banded.slice().reverse().map((r) => `${x(r.threshold)},${y(r.ci_low)}`)].join(" ") : "";
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((v) => [v, String(v)]);
  const described = known.length ? known.map((r) => `at ${r.threshold}: ${r.precision.toFixed(2)} ` +
    `(${(r.ci_low ?? 0).toFixed(2)} to ${(r.ci_high ?? 1).toFixed(2)})`).join("; ") : "no reviewed detections yet";
  return frame(size, id, `Precision of ${species} against the score threshold`, `Estimated precision ${described}.`, [
    axes(size, ticks, ticks, x, y, "score threshold", "precision"),
    band ? s("polygon", {points: band, class: "band"}) : null,
    known.length > 1 ? s("polyline", {points: known.map((r) => `${x(r.threshold)},${y(r.precision)}`).join(" "),
      class: "line"}) : null,
    known.map((r) => s("circle", {cx: x(r.threshold), cy: y(r.precision), r: 3.5, class: "dot"},
      s("title", {}, `threshold ${r.threshold}: precision ${r.precision.toFixed(3)}`))),
    known.length ? null : s("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "label"},
      "no reviews yet"),
  ]);
}

function span(values, pad) {
  let low = Math.min(...values), high = Math.max(...values);
  if (high - low < 1e-6) { low -= pad; high += pad; }
  const margin = (high - low) * 0.08;
  return [low - margin, high + margin];
}

function ticksOf([low, high]) {
  const step = (high - low) / 4;
  return [0, 1, 2, 3, 4].map((i) => low + i * step).map((v) => [v, v.toFixed(Math.abs(high - low) < 0.1 ? 4 : 2)]);
}

/** Baselines for the points' labels (10 px text beside each point): above the point, else the first place
 * below or above it where the label overlaps none placed before (close sensors' names stay readable). */
function labelBaselines(points) {
  const boxes = [];
  return points.map((p) => {
    const width = 6 * p.text.length, left = p.end ? p.x - 8 - width : p.x + 8;
    const clash = (top) => boxes.some((b) => left < b.left + b.width && b.left < left + width &&
      top < b.top + 12 && b.top < top + 12);
    const step = [0, 24, -12, 36, -24, 48, -36].find((shift) => !clash(p.y - 17 + shift)) ?? 0;
    boxes.push({left, top: p.y - 17 + step, width});
    return p.y - 7 + step;
  });
}

/** The sensors with coordinates as points (longitude across, latitude up), each a link to its list. */
export function positionsChart(id, sensors, linkOf) {
  const placed = sensors.filter((row) => Number.isFinite(row.lat) && Number.isFinite(row.lon));
  if (!placed.length) return null;
  const size = {W: 640, H: 320}, {W, H} = size;
  const lons = span(placed.map((r) => r.lon), 0.01), lats = span(placed.map((r) => r.lat), 0.01);
  const x = (lon) => M.left + ((lon - lons[0]) / (lons[1] - lons[0])) * (W - M.left - M.right);
  const y = (lat) => H - M.bottom - ((lat - lats[0]) / (lats[1] - lats[0])) * (H - M.top - M.bottom);
  const baselines = labelBaselines(placed.map((r) => ({x: x(r.lon), y: y(r.lat), text: r.id, end: x(r.lon) > W * 0.75})));
  const points = placed.map((r, i) => s("a", {href: linkOf(r),
    "aria-label": `${r.id}: latitude ${r.lat}, longitude ${r.lon}`},
    s("circle", {cx: x(r.lon), cy: y(r.lat), r: 5, class: "dot"}),
    s("text", {x: x(r.lon) + (x(r.lon) > W * 0.75 ? -8 : 8), y: baselines[i], class: "tick",
      "text-anchor": x(r.lon) > W * 0.75 ? "end" : "start"}, r.id)));
  return frame(size, id, "Sensor positions", `${placed.length} sensors by longitude (across) and latitude (up).`,
    [axes(size, ticksOf(lons), ticksOf(lats), x, y, "longitude (°)", "latitude (°)"), points]);
}
