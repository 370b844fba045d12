// The HTTP API as the page calls it: relative URLs (the page may sit behind a proxy's prefix), the API key
// from session storage as X-API-Key, and every failure as an ApiError whose message is one line with the
// server's "detail".
//
//   const page = await get("api/detections", {species: "robin", limit: 50});
//   await post(`api/detections/${id}/review`, {status: "confirmed", reviewer: "ann"});

const KEY_STORE = "echoengine.apiKey";
const REVIEWER_STORE = "echoengine.reviewer";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY_STORE, value);
  else sessionStorage.removeItem(KEY_STORE);
}

export function reviewer() {
  return localStorage.getItem(REVIEWER_STORE) || "";
}

export function setReviewer(value) {
  if (value) localStorage.setItem(REVIEWER_STORE, value);
  else localStorage.removeItem(REVIEWER_STORE);
}

/** A URL relative to the page, with the query parameters that are set (empty ones are left out). */
export function url(path, params = {}) {
  const address = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") address.searchParams.set(name, value);
  }
  return address;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (body && body.detail !== undefined) {
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not JSON: the status text says enough
  }
  return response.statusText || "no reason given";
}

async function call(method, path, {params, body} = {}) {
  const headers = {Accept: "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (apiKey()) headers["X-API-Key"] = apiKey();
  let response;
  try {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    response = await fetch(url(path, params), {method, headers, body: payload});
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message})`);
  }
  if (!response.ok) {
    const detail = (await detailOf(response)).replace(/\s+/g, " ");
    throw new ApiError(response.status, `${response.status} ${detail}`);
  }
  return response.status === 204 ? null : response.json();
}

export const get = (path, params) => call("GET", path, {params});
export const post = (path, body) => call("POST", path, {body});
export const del = (path) => call("DELETE", path);

/**
 * The address to give an <img> or <audio>: the API's own URL, or, when a key must be sent, an object URL
 * of the bytes fetched with the key (media elements cannot send headers).
 */
export async function mediaSource(path) {
  if (!apiKey()) return url(path).href;
  const response = await fetch(url(path), {headers: {"X-API-Key": apiKey()}});
  if (!response.ok) throw new ApiError(response.status, `${response.status} ${await detailOf(response)}`);
  return URL.createObjectURL(await response.blob());
}

/** Bytes fetched (with the key, when set) as an object URL: {src, headers}; the caller revokes src. */
export async function fetchBlob(path) {
  const headers = apiKey() ? {"X-API-Key": apiKey()} : {};
  let response;
  try {
    response = await fetch(url(path), {headers});
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message})`);
  }
  if (!response.ok) throw new ApiError(response.status, `${response.status} ${await detailOf(response)}`);
  return {src: URL.createObjectURL(await response.blob()), headers: response.headers};
}

/** The detections of a filter: {total, items}. */
export function detections(filter) {
  return get("api/detections", filter);
}

/** Detection paths built from its id (not from the server's absolute links, which name the host it bound). */
export const paths = {
  detection: (id) => `api/detections/${id}`,
  audio: (id) => `api/detections/${id}/audio`,
  spectrogram: (id) => `api/detections/${id}/spectrogram.png`,
  review: (id) => `api/detections/${id}/review`,
  reviewById: (id) => `api/reviews/${id}`,
};
