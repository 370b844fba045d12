// A detection's spectrogram and clip: the <audio> player of the event with a second of context, the
// spectrogram above it (the server marks the event and labels the axes) with a play head that follows the
// audio; a click on the spectrogram plays from there.
//
//   const figure = await player(detection);   // <figure> with #spectrogram and #clip

import {fetchBlob, mediaSource, paths} from "./api.js";
import {h, say, sayError, seconds} from "./dom.js";

const CONTEXT = 1.0; // seconds of audio either side of the event (the API's clip)
let objectUrls = [];

/** The plot's place in the picture and the seconds at its edges, from the server's X-Plot-* headers. */
function plotOf(headers) {
  const box = (headers.get("X-Plot-Box") || "").split(",").map(Number);
  const span = (headers.get("X-Plot-Time") || "").split(",").map(Number);
  if (box.length !== 4 || span.length !== 2 || [...box, ...span].some((v) => !Number.isFinite(v))) return null;
  return {left: box[0], top: box[1], width: box[2], height: box[3], start: span[0], end: span[1]};
}

function follow(image, audio, head, plot) {
  const place = () => {
    const wide = image.naturalWidth, high = image.naturalHeight;
    if (!wide || !high || plot.end <= plot.start) return;
    const at = plot.start + audio.currentTime;
    const x = plot.left + ((at - plot.start) / (plot.end - plot.start)) * plot.width;
    head.style.left = `${(100 * Math.min(plot.left + plot.width, Math.max(plot.left, x))) / wide}%`;
    head.style.top = `${(100 * plot.top) / high}%`;
    head.style.height = `${(100 * plot.height) / high}%`;
    head.hidden = audio.currentTime === 0 && audio.paused;
  };
  let frame = 0;
  const run = () => { place(); if (!audio.paused) frame = requestAnimationFrame(run); };
  audio.addEventListener("play", () => { cancelAnimationFrame(frame); run(); });
  for (const name of ["pause", "seeked", "timeupdate", "ended"]) audio.addEventListener(name, place);
  image.addEventListener("load", place);
  image.addEventListener("click", (event) => {
    const rect = image.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * image.naturalWidth;
    if (x < plot.left || x > plot.left + plot.width) return;
    audio.currentTime = ((x - plot.left) / plot.width) * (plot.end - plot.start);
    audio.play().catch((error) => say(`The clip does not play: ${error.message}`, "error"));
  });
  image.classList.add("seekable");
}

/** The figure of a detection: spectrogram (with a play head when the server says where its plot is) and clip. */
export async function player(d) {
  objectUrls.forEach((address) => URL.revokeObjectURL(address));
  objectUrls = [];
  const from = Math.max(0, d.start - CONTEXT);
  const to = d.duration ? Math.min(d.duration, d.end + CONTEXT) : d.end + CONTEXT;
  const image = h("img", {id: "spectrogram", alt: `Spectrogram of detection ${d.id} (${d.species}), ${seconds(from)} ` +
    `to ${seconds(to)} of its recording; the event spans ${seconds(d.start)} to ${seconds(d.end)}.`});
  const head = h("span", {class: "playhead", hidden: true});
  const audio = h("audio", {id: "clip", controls: true, preload: "auto"},
    "Your browser cannot play this clip: ", h("a", {href: paths.audio(d.id)}, "download it"), ".");
  audio.addEventListener("error", () => say(`The clip of detection ${d.id} could not be played ` +
    `(${audio.error ? `media error ${audio.error.code}` : "no audio"}).`, "error"));
  image.addEventListener("error", () => say(`The spectrogram of detection ${d.id} could not be loaded.`, "error"));
  try {
    const [picture, sound] = await Promise.all([fetchBlob(paths.spectrogram(d.id)), mediaSource(paths.audio(d.id))]);
    objectUrls = [picture.src, sound].filter((address) => address.startsWith("blob:"));
    const plot = plotOf(picture.headers);
    if (plot) follow(image, audio, head, plot);
    image.src = picture.src;
    audio.src = sound;
  } catch (error) {
    sayError(`The spectrogram or clip of detection ${d.id} could not be loaded`, error);
  }
  return h("figure", {class: "spectrogram"}, h("div", {class: "picture"}, image, head),
    h("figcaption", {}, h("label", {for: "clip"},
      `The event with a second of context either side (${seconds(from)} – ` +
      `${seconds(to)} of recording ${d.recording_id})`), audio));
}

/** Play or pause the clip on screen. */
export function togglePlay() {
  const audio = document.getElementById("clip");
  if (!audio) return;
  if (audio.paused) audio.play().catch((error) => say(`The clip does not play: ${error.message}`, "error"));
  else audio.pause();
}
