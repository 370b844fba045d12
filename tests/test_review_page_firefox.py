"""The review page in a real headless Firefox, driven over WebDriver BiDi, against a real ``echoengine serve``.

The browser is Debian's ``firefox-esr`` (``apt-get install firefox-esr``), run on a fresh profile and driven
through the WebDriver BiDi protocol it speaks itself (:mod:`bidi`: no geckodriver, nothing downloaded); the
tests skip, saying why, when it (or the ``websocket-client`` package) is missing. They do what the Chromium
tests (``test_review_page.py``) do, on the same kind of store (:mod:`reviewpage`: real field recordings
scored by the tests' quick bundle): the list loads and filters, a detection shows its spectrogram and its clip
loads, a key press confirms one, the type-ahead relabels another, undo takes that back, and the database holds
exactly that; and no part of the page sticks out of a 1280 or a 1024 px wide window.

``ECHOENGINE_SCREENSHOTS=FOLDER pytest tests/test_review_page_firefox.py -k layout`` also keeps the screenshots
(``review-*-firefox-WIDTH.png``); without it they go to a temporary folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bidi import FIREFOX, Firefox
from reviewpage import (
    KEY,
    OVERFLOW_JS,
    SETTLED_JS,
    STATUS_JS,
    UNLABELLED_JS,
    api,
    review_for_screenshots,
    review_server,
    reviews_in,
    small_png,
)
from servers import Server

ROWS = "table.detections tbody tr"


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def firefox_program() -> str:
    """The firefox program, or a skip naming what is missing."""
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[test]')")
    if not Path(FIREFOX).is_file():
        pytest.skip(f"{FIREFOX} not found: the Firefox tests need Debian's firefox-esr (apt-get install firefox-esr)")
    return FIREFOX


@pytest.fixture(scope="module")
def server(firefox_program, soundscapes, synthetic_dataset, tmp_path_factory):
    """A server with detections of real recordings: every window's two best classes (threshold 0)."""
    running = review_server(soundscapes, synthetic_dataset, tmp_path_factory, "review-page-firefox")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(firefox_program, tmp_path_factory):
    """Headless Firefox on a throwaway profile, 1280 x 900; closed after the module (its output kept in a log)."""
    with Firefox(firefox_program, log=tmp_path_factory.mktemp("firefox") / "firefox.log") as firefox:
        yield firefox


# ---- helpers -----------------------------------------------------------------------------------------------------
def _status(browser: Firefox) -> str:
    return browser.run(STATUS_JS)


def _hash(browser: Firefox) -> str:
    return browser.run("return location.hash")


def _wait(browser: Firefox, condition, what: str, timeout: float = 20.0):
    return browser.wait(lambda: condition(browser), what, timeout, status=lambda: f"status line: {_status(browser)!r}")


def _settled(browser: Firefox) -> bool:
    return browser.run(SETTLED_JS)


def _open(browser: Firefox, server: Server, hash_: str) -> None:
    """Load the page at ``hash_`` and wait until its view is rendered."""
    browser.navigate(f"{server.url}/{hash_}")
    _wait(browser, _settled, f"rendering {hash_}")


def _at(browser: Firefox, hash_: str) -> bool:
    """Whether the view of ``hash_`` (a prefix) is rendered."""
    return _settled(browser) and _hash(browser).startswith(hash_)


def _texts(browser: Firefox, css: str) -> list[str]:
    return browser.run("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.trim())", css)


def _value(browser: Firefox, css: str) -> str:
    return browser.run("return document.querySelector(arguments[0]).value", css)


def _type_into(browser: Firefox, css: str, *keys: str) -> None:
    """Click a text field, empty it, and type ``keys`` (key names of :data:`bidi.KEYS` or text)."""
    browser.click(css)
    browser.run("const f = document.querySelector(arguments[0]); f.select()", css)
    browser.keys("Backspace", *keys)


def _sign_in(browser: Firefox, name: str, key: str = KEY) -> None:
    """Type the reviewer's name and the API key into the page's settings, as a user would."""
    browser.click("#settings-summary")
    _type_into(browser, "#reviewer", name)
    _type_into(browser, "#api-key", *([key] if key else []))
    browser.keys("Enter")
    shown = f"Reviewer: {name}" + (" · key set" if key else "")
    _wait(browser, lambda b: _texts(b, "#settings-summary") == [shown], "saving the reviewer and the key")


# ---- the tests ---------------------------------------------------------------------------------------------------
def test_the_list_loads_filters_and_keeps_its_filter_in_the_address(browser, server):
    everything = api(server, "/api/detections", limit=1000)
    _open(browser, server, "")
    assert _hash(browser) == "#/detections"
    assert len(_texts(browser, ROWS)) == min(50, everything["total"]) > 0
    assert f"of {everything['total']}." in _texts(browser, "#list-summary")[0]
    loaded = browser.run("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(server.url) for name in loaded), loaded  # nothing but this server
    assert browser.run(UNLABELLED_JS) == []

    browser.keys("?")  # "?" lists the shortcuts in a dialog (Esc closes it); "/" goes to the filters
    _wait(browser, lambda b: b.run("return document.getElementById('help').open"), "opening the help")
    assert len(_texts(browser, "#help-keys tbody tr")) >= 10
    browser.keys("Escape")
    _wait(browser, lambda b: not b.run("return document.getElementById('help').open"), "closing the help")
    browser.keys("/")
    assert browser.run("return document.activeElement.name") == "species"

    species = everything["items"][-1]["species"]
    browser.keys(species)  # the focused select's type-ahead picks the species, which applies the filter
    expected = api(server, "/api/detections", species=species, limit=1000)
    _wait(browser, lambda b: _settled(b) and f"of {expected['total']}." in _texts(b, "#list-summary")[0],
          "filtering by species")
    assert f"species={species}" in _hash(browser)
    shown = _texts(browser, f"{ROWS} th a")
    assert shown and set(shown) == {species} and len(shown) == min(50, expected["total"])

    score = sorted(item["score"] for item in expected["items"])[len(expected["items"]) // 2]
    _type_into(browser, "input[name=min]", f"{score:.4f}")
    browser.click("#filters button[type=submit]")
    narrower = api(server, "/api/detections", species=species, min_score=f"{score:.4f}", limit=1000)
    _wait(browser, lambda b: _settled(b) and f"of {narrower['total']}." in _texts(b, "#list-summary")[0],
          "filtering by score")
    browser.reload()  # the address holds the filter: a reload shows the same list
    _wait(browser, _settled, "reloading the filtered list")
    assert _value(browser, "select[name=species]") == species
    assert _value(browser, "input[name=min]") == f"{score:.4f}"
    assert len(_texts(browser, ROWS)) == narrower["total"]
    assert browser.console_errors() == []


def test_a_detection_shows_its_spectrogram_and_its_clip_loads(browser, server):
    _open(browser, server, "#/detections?order=oldest")
    first = api(server, "/api/detections", order="oldest", limit=1)["items"][0]
    browser.run("document.querySelector(arguments[0]).focus()", f"{ROWS} th a")
    browser.keys("Enter")  # the keyboard opens it
    _wait(browser, lambda b: _at(b, f"#/detection/{first['id']}?"), "opening the first detection")
    detection = api(server, f"/api/detections/{first['id']}")
    assert _texts(browser, "#view-title") == [f"Detection {detection['id']}: {detection['species']}"]
    assert browser.run("return document.activeElement.id") == "view-title"  # the new view's heading has the focus
    _wait(browser, lambda b: b.run("const a = document.getElementById('clip'); return a.readyState >= 1 && "
                                   "a.error === null"), "loading the clip's metadata")
    clip = min(detection["end"] + 1, detection["duration"]) - max(0, detection["start"] - 1)
    assert browser.run("return document.getElementById('clip').duration") == pytest.approx(clip, abs=0.05)
    _wait(browser, lambda b: b.run("return document.getElementById('spectrogram').naturalWidth > 0"),
          "loading the spectrogram")
    top = [text.split("\n")[0].strip() for text in _texts(browser, "table.top-species tbody tr th")]
    assert top == [entry["species"] for entry in detection["top_species"][:5]]
    model = f"{detection['model']['name']}, version {detection['model']['version']}"
    assert model in _texts(browser, "dl.facts")[0]
    assert browser.console_errors() == []


def test_review_by_keys_relabel_through_the_type_ahead_and_undo(browser, server):
    before = reviews_in(server)
    _open(browser, server, "#/detections?review=unreviewed&order=oldest")
    _sign_in(browser, "firefox-test")
    first, second = api(server, "/api/detections", review="unreviewed", order="oldest", limit=2)["items"]
    browser.click(f"{ROWS} th a")
    _wait(browser, lambda b: _at(b, f"#/detection/{first['id']}?"), "opening the first unreviewed detection")
    # with a key, the page fetches the clip with it (a media element cannot send headers) and plays the bytes
    _wait(browser, lambda b: b.run("const a = document.getElementById('clip');"
                                   "return a.src.startsWith('blob:') && a.readyState >= 1 && !a.error"),
          "loading the clip with the key")
    # keys do nothing while typing: a "c" in the comment field is text, not a verdict
    browser.click("#comment")
    browser.keys("c")
    time.sleep(0.5)
    assert reviews_in(server) == before and _value(browser, "#comment") == "c"
    browser.keys("Backspace", "Escape")  # Esc leaves the field; the keys act again
    browser.keys("c")
    _wait(browser, lambda b: f"Detection {first['id']} confirmed" in _status(b), "confirming by key")
    _wait(browser, lambda b: _at(b, f"#/detection/{second['id']}?"), "moving to the next detection")
    confirmed = api(server, f"/api/detections/{first['id']}")
    assert confirmed["review"] == "confirmed" and confirmed["reviews"][-1]["reviewer"] == "firefox-test"

    classes = next(model for model in api(server, "/api/models") if model["serving"])["classes"]
    browser.keys("l")  # relabel: the type-ahead field offers the serving model's classes
    assert browser.run("const f = document.activeElement; return [f.id, f.getAttribute('list')]") == \
        ["relabel", "classes"]
    offered = browser.run("return [...document.querySelectorAll('#classes option')].map(o => o.value)")
    assert sorted(offered) == sorted(classes)
    other = next(name for name in classes if name != second["species"])
    browser.keys("synthetic-crok", "Enter")  # a typo: no model's class, so the page asks first
    _wait(browser, lambda b: 'Not relabelled: "synthetic-crok" is not one of the models' in _status(b),
          "holding back the typo")
    assert api(server, f"/api/detections/{second['id']}")["reviews"] == []
    _type_into(browser, "#relabel", other, "Enter")
    _wait(browser, lambda b: f"Detection {second['id']} relabelled as {other}" in _status(b), "relabelling")
    relabelled = api(server, f"/api/detections/{second['id']}")["reviews"][-1]
    assert (relabelled["status"], relabelled["species"]) == ("confirmed", other)
    assert reviews_in(server)[len(before):] == [(first["id"], "confirmed", None, "firefox-test"),
                                                (second["id"], "confirmed", other, "firefox-test")]

    _wait(browser, _settled, "moving on after the relabel")
    browser.keys("z")  # undo deletes the latest review, the relabel, and shows its detection again
    _wait(browser, lambda b: f"Undone: detection {second['id']}" in _status(b), "undoing")
    _wait(browser, lambda b: _at(b, f"#/detection/{second['id']}?"), "going back to the relabelled detection")
    assert api(server, f"/api/detections/{second['id']}")["reviews"] == []
    assert reviews_in(server)[len(before):] == [(first["id"], "confirmed", None, "firefox-test")]
    assert _texts(browser, "#review-state") == ["unreviewed"]
    assert browser.console_errors() == []


@pytest.mark.parametrize("width", [1280, 1024])
def test_the_layout_fits_the_window_and_the_screenshots(browser, server, width, tmp_path):
    """The list and a detection (after a few reviews), at ``width`` px: nothing sticks out on the right; the
    screenshots are kept in $ECHOENGINE_SCREENSHOTS (else a temporary folder)."""
    folder = Path(os.environ.get("ECHOENGINE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    if not api(server, "/api/detections", review="reviewed", limit=0)["total"] > 2:
        review_for_screenshots(server)
    items = api(server, "/api/detections", order="oldest", limit=1000)["items"]
    browser.set_viewport(width, 900)
    misfits = []
    try:
        relabelled = next(item for item in items if item["reviewed_species"] not in (None, item["species"]))
        for name, hash_ in (("list", "#/detections"), ("detection", f"#/detection/{items[0]['id']}?order=oldest&pos=0"),
                            ("relabelled", f"#/detection/{relabelled['id']}"), ("queue", "#/queue?budget=6"),
                            ("precision", "#/precision"), ("sensors", "#/sensors")):
            _open(browser, server, hash_)
            browser.run("window.scrollTo(0, 0); document.activeElement?.blur()")
            if name in ("detection", "relabelled"):
                _wait(browser, lambda b: b.run("return document.getElementById('spectrogram').complete && "
                                               "document.getElementById('clip').readyState >= 1"),
                      "loading the spectrogram and the clip")
            small_png(browser.screenshot(), folder / f"review-{name}-firefox-{width}.png")
            layout = browser.run(OVERFLOW_JS)
            if not (layout["scrollWidth"] <= layout["width"] and layout["out"] == layout["scrolled"] == []):
                misfits.append((name, layout))
    finally:
        browser.set_viewport(1280, 900)
    assert misfits == [], f"at {width} px: {misfits}"
    assert browser.console_errors() == []
