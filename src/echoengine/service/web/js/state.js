// The page's state lives in the URL's hash, so that any view (a filtered list, a detection within it, the
// queue) can be linked, bookmarked and reloaded:
//
//   #/detections?species=robin&review=unreviewed&order=score&page=3
//   #/detection/812?species=robin&review=unreviewed&order=score&pos=107     (a detection within that list)
//   #/detection/812?queue=1&budget=50&seed=0&bins=5                          (a detection within the queue)
//   #/queue?budget=50&seed=0   #/precision?bins=5   #/sensors

/** The list's filter fields in the hash, each with the API parameter it becomes. */
export const FILTERS = {
  species: "species", sensor: "sensor_id", from: "start", to: "end", min: "min_score", max: "max_score",
  review: "review", order: "order",
};
export const QUEUE_FIELDS = ["budget", "seed", "bins", "qspecies"];
export const PAGE_SIZES = [25, 50, 100, 200];
/** The hash whose view is on screen (a view that updates itself with pushState sets it too). */
export const rendered = {hash: null};

/** The current route: {view, id, params (URLSearchParams)}. */
export function route(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, "");
  const cut = raw.indexOf("?");
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1));
  return {view: parts[0] || "detections", id: parts[1] || null, params};
}

/** Whether a hash is one of the page's routes (the skip link's "#main" is not). */
export function isRoute(hash) {
  return hash === "" || hash === "#" || hash.startsWith("#/");
}

/** A hash for a view, an optional id and parameters (empty values are left out). */
export function hashOf(view, id, params) {
  const query = new URLSearchParams();
  for (const [name, value] of params instanceof URLSearchParams ? params.entries() : Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return `#/${view}${id ? `/${encodeURIComponent(id)}` : ""}${text ? `?${text}` : ""}`;
}

/** Only the named parameters of a URLSearchParams, as a plain object. */
export function pick(params, names) {
  const out = {};
  for (const name of names) if (params.get(name)) out[name] = params.get(name);
  return out;
}

/** The page size and page number of the list (1-based), within bounds. */
export function paging(params) {
  const size = PAGE_SIZES.includes(Number(params.get("size"))) ? Number(params.get("size")) : 50;
  const page = Math.max(1, Math.floor(Number(params.get("page")) || 1));
  return {size, page};
}

/** The API query of the list's filters in the hash: dates become the whole days they name (UTC). */
export function apiFilter(params) {
  const out = {};
  for (const [name, parameter] of Object.entries(FILTERS)) {
    const value = params.get(name);
    if (!value) continue;
    if (name === "from") out[parameter] = `${value}T00:00:00Z`;
    else if (name === "to") out[parameter] = `${value}T23:59:59.999Z`;
    else out[parameter] = value;
  }
  return out;
}

/** The list's hash parameters only (filters and paging), e.g. to go back from a detection to its list. */
export function listParams(params) {
  return pick(params, [...Object.keys(FILTERS), "size", "page"]);
}
