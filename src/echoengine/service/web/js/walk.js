// Next and previous around a detection, within what it was opened from: the filtered list (its position in
// the hash) or the review queue (the next unreviewed detection of the sample).
//
//   await neighbour(812, route().params, +1)   ->  "#/detection/815?species=robin&pos=108"  (or null)

import {detections} from "./api.js";
import {count} from "./dom.js";
import {loadQueue, nextUnreviewed, queueParams} from "./queue.js";
import {apiFilter, hashOf, listParams} from "./state.js";

/** Where the detection came from: {kind: "list" | "queue", back: hash of that view, label}. */
export function origin(params) {
  if (params.get("queue")) {
    const keep = queueParams(params);
    delete keep.queue;
    return {kind: "queue", back: hashOf("queue", null, keep), label: "Back to the queue"};
  }
  const list = listParams(params);
  const pos = Number(params.get("pos"));
  if (Number.isInteger(pos) && pos >= 0) list.page = String(Math.floor(pos / Number(list.size || 50)) + 1);
  if (list.page === "1") delete list.page;
  return {kind: "list", back: hashOf("detections", null, list), label: "Back to the list"};
}

async function inQueue(id, params, step) {
  const answer = await loadQueue(params);
  const items = answer.items;
  let at = items.findIndex((item) => item.id === id);
  if (at < 0) at = Number(params.get("pos")) || 0;
  const to = step > 0 ? nextUnreviewed(items, at) : at - 1;
  if (to === null) return {hash: null, why: "Every detection of this sample is reviewed."};
  if (to < 0) return {hash: null, why: "This is the first detection of the queue."};
  return {hash: hashOf("detection", items[to].id, {...queueParams(params), pos: to})};
}

async function inList(id, params, step) {
  const pos = Math.max(0, Number(params.get("pos")) || 0);
  const start = Math.max(0, pos - 1);
  const page = await detections({...apiFilter(params), limit: 3, offset: start});
  const at = page.items.findIndex((item) => item.id === id);
  // still in the list: step from it; gone from it (reviewed under a review filter): the list closed up
  const to = at >= 0 ? start + at + step : (step > 0 ? pos : pos - 1);
  const item = page.items[to - start];
  if (to < 0 || !item) {
    return {hash: null, why: `This is the ${step > 0 ? "last" : "first"} detection of the list.`};
  }
  return {hash: hashOf("detection", item.id, {...listParams(params), pos: to})};
}

/** The hash of the next (step +1) or previous (-1) detection, or {hash: null, why}. */
export function neighbour(id, params, step) {
  return params.get("queue") ? inQueue(id, params, step) : inList(id, params, step);
}

/** "17 of 230 in the list" / "3 of 50 in the queue, 12 left to review" (or "" when unknown). */
export async function where(id, params) {
  if (params.get("queue")) {
    const answer = await loadQueue(params);
    const at = answer.items.findIndex((item) => item.id === id);
    const left = answer.items.filter((item) => !item.review).length;
    return at < 0 ? `Not in this queue; ${count(left)} left to review`
      : `${count(at + 1)} of ${count(answer.items.length)} in the queue, ${count(left)} left to review`;
  }
  const pos = Number(params.get("pos"));
  if (!params.has("pos") || !Number.isInteger(pos)) return "";
  const page = await detections({...apiFilter(params), limit: 0});
  return `${count(pos + 1)} of ${count(page.total)} in the list`;
}
