// Keyboard shortcuts: each view binds its own keys; "?" lists them all. No key acts while the focus is in a
// text field or a select (Esc leaves the field); a focused audio player keeps its own keys (Space, arrows);
// Space and Enter keep their meaning on buttons and links.
//
//   bindKeys({c: confirm, r: reject});   // the detection view's keys, replaced when another view opens

import {h} from "./dom.js";

/** Every shortcut, for the help dialog and the footer: [keys, action, where]. */
export const SHORTCUTS = [
  [["c"], "confirm the detection", "detection"],
  [["r"], "reject it (a false positive)", "detection"],
  [["u"], "mark it uncertain", "detection"],
  [["l"], "relabel: type the right species (type-ahead), Enter saves", "detection"],
  [["n", "→"], "next detection (in the queue: the next unreviewed one)", "detection"],
  [["p", "←"], "previous detection", "detection"],
  [["Space"], "play or pause the clip", "detection"],
  [["z"], "undo your last review", "detection, list"],
  [["Esc"], "back to the list or queue (in a text field: leave the field)", "detection"],
  [["n", "→"], "next page", "list"],
  [["p", "←"], "previous page", "list"],
  [["/"], "go to the filters", "list"],
  [["s"], "start reviewing the queue", "queue"],
  [["?"], "show these shortcuts", "everywhere"],
];

const SPOKEN = {"→": "right arrow", "←": "left arrow"};
let bound = {};

/** The keys of the open view: {key: action}; "n" also binds →, "p" also ←. */
export function bindKeys(map) {
  bound = {...map};
  if (map.n && !map.ArrowRight) bound.ArrowRight = map.n;
  if (map.p && !map.ArrowLeft) bound.ArrowLeft = map.p;
}

function typing(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === "INPUT") return !["button", "submit", "reset", "checkbox", "radio"].includes(target.type);
  return ["TEXTAREA", "SELECT"].includes(target.tagName);
}

// the keys a focused audio player uses itself (letters still act as shortcuts there)
const PLAYER_KEYS = [" ", "Enter", "ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp",
  "PageDown"];

function playerKey(target, key) {
  return target instanceof Element && ["AUDIO", "VIDEO"].includes(target.tagName) && PLAYER_KEYS.includes(key);
}

function activates(target, key) {
  return (key === " " || key === "Enter") && target instanceof Element &&
    target.closest("button, a, summary, input, [role=button]") !== null;
}

function onKey(event, help) {
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  if (typing(target)) {
    if (event.key === "Escape" && target.blur && !target.closest("dialog")) {
      target.blur();
      event.preventDefault();
    }
    return;
  }
  if (help.open || activates(target, event.key) || playerKey(target, event.key)) return;
  if (event.key === "?") {
    event.preventDefault();
    help.showModal();
    return;
  }
  const action = bound[event.key] || bound[event.key.toLowerCase?.()];
  if (action && !event.repeat) {
    event.preventDefault();
    action(event);
  }
}

/** Listen for the shortcuts and fill the help dialog's table and the footer's list. */
export function installKeys() {
  const help = document.getElementById("help");
  document.addEventListener("keydown", (event) => onKey(event, help));
  document.getElementById("help-open").addEventListener("click", () => help.showModal());
  const rows = SHORTCUTS.map(([keys, action, where]) => h("tr", {},
    h("td", {}, keys.map((key, i) => [i ? " or " : "", h("kbd", {"aria-label": SPOKEN[key] || null}, key)])),
    h("td", {}, action, h("span", {class: "muted"}, ` (${where})`))));
  document.querySelector("#help-keys tbody").replaceChildren(...rows);
  const brief = SHORTCUTS.filter(([, , where]) => where.startsWith("detection")).map(([keys, action]) =>
    `${keys.join("/")} ${action.split(/[:(]/)[0].trim()}`);
  document.getElementById("footer-keys").textContent = `${brief.join(" · ")} · ? all shortcuts`;
}
