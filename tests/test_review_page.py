"""The review page in a real headless Chromium, driven by Selenium, against a real ``echoengine serve``.

The browser is Debian's ``chromium`` through its ``chromedriver`` (``apt-get install chromium
chromium-driver``), given to Selenium by path, so Selenium Manager never downloads a browser or a driver;
the tests skip, saying why, when either (or selenium) is missing. The server serves a quick bundle (the
service tests' one, trained for an epoch on synthetic calls) with threshold 0 and two species per window,
and the detections come from uploading real field recordings (``../shared/data/soundscapes``): each
recording gives its two best species as events. The last test adds 10,000 detections by SQL (the scoring
of real uploads would take minutes) to time the list on a large store.

``ECHOENGINE_SCREENSHOTS=docs/images pytest tests/test_review_page.py -k screenshots`` writes the README's
screenshots of the list and of a detection.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from reviewpage import (
    KEY,
    OVERFLOW_JS,
    SETTLED_JS,
    STATUS_JS,
    UNLABELLED_JS,
    add_detections,
    api,
    review_for_screenshots,
    review_server,
    reviews_in,
    small_png,
)
from servers import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def webdriver_module():
    """Selenium's webdriver, or a skip naming what is missing."""
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    for program, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(program).is_file():
            pytest.skip(f"{program} not found: the browser tests need Debian's {package} (apt-get install {package})")
    from selenium import webdriver

    assert selenium.__version__
    return webdriver


@pytest.fixture(scope="module")
def server(webdriver_module, soundscapes, synthetic_dataset, tmp_path_factory):
    """A server with detections of real recordings: every window's two best classes (threshold 0)."""
    running = review_server(soundscapes, synthetic_dataset, tmp_path_factory, "review-page")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(webdriver_module, tmp_path_factory):
    """Headless Chromium with a throwaway profile, nothing fetched from the internet; closed after the module."""
    webdriver = webdriver_module
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="echoengine-chromium-")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-default-apps", "--disable-sync",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900",
                     f"--user-data-dir={profile}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(log)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# ---- helpers -----------------------------------------------------------------------------------------------------
def _wait(driver, condition, timeout: float = 20.0, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"{what} did not happen in {timeout} s; status line: "
                                        f"{_status(driver)!r}")


def _status(driver) -> str:
    return driver.execute_script(STATUS_JS)


def _settled(driver) -> bool:
    return driver.execute_script(SETTLED_JS)


def _showing(driver, fragment: str) -> bool:
    """Whether the view of a hash holding ``fragment`` is rendered: one script, so that the check cannot pair the
    old view's settled state with the new hash (a verdict moves the hash before the next view is drawn)."""
    return driver.execute_script(SETTLED_JS + " && location.hash.includes(arguments[0])", fragment)


def _left(driver, fragment: str) -> bool:
    """Whether a view whose hash lacks ``fragment`` is rendered (the page has moved on), in one script."""
    return driver.execute_script(SETTLED_JS + " && !location.hash.includes(arguments[0])", fragment)


def _open(driver, server: Server, hash_: str) -> None:
    """Load the page at ``hash_`` (a fresh document) and wait until its view is rendered."""
    driver.get(f"{server.url}/{hash_}")
    _wait(driver, _settled, what=f"rendering {hash_}")


def _go(driver, hash_: str) -> None:
    """Follow a link within the page (no reload) and wait until its view is rendered."""
    driver.execute_script("location.hash = arguments[0]", hash_)
    _wait(driver, _settled, what=f"rendering {hash_}")


def _keys(driver, keys: str) -> None:
    """Type keys where the focus is (as a user would: no element picked)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _rows(driver, css: str = "table.detections tbody tr") -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """The browser console's errors since the last call, less those naming one of ``allowed``."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(word in entry["message"] for word in allowed)]


def _sign_in(driver, name: str, key: str = KEY) -> None:
    """Type the reviewer's name and the API key into the page's settings, as a user would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.ID, "settings-summary").click()
    for field_id, value in (("reviewer", name), ("api-key", key)):
        field = driver.find_element(By.ID, field_id)
        field.clear()
        field.send_keys(value)
    field.send_keys(Keys.ENTER)
    shown = f"Reviewer: {name}" + (" · key set" if key else "")
    _wait(driver, lambda d: d.find_element(By.ID, "settings-summary").text == shown,
          what="saving the reviewer and the key")


# ---- the tests ---------------------------------------------------------------------------------------------------
def test_the_list_loads_filters_and_keeps_its_filter_in_the_address(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    everything = api(server, "/api/detections", limit=1000)
    _open(browser, server, "")
    assert browser.execute_script("return location.hash") == "#/detections"
    assert len(_rows(browser)) == min(50, everything["total"]) > 0
    assert f"of {everything['total']}." in browser.find_element(By.ID, "list-summary").text
    # nothing but this server: no CDN, no font, no tile (the page's CSP would refuse them anyway)
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(server.url) for name in loaded), loaded
    # every control has a label
    assert browser.execute_script(UNLABELLED_JS) == []

    # "?" lists the shortcuts in a dialog (Esc closes it); "/" goes to the filters
    _keys(browser, "?")
    _wait(browser, lambda d: d.execute_script("return document.getElementById('help').open"), what="the help")
    assert len(_rows(browser, "#help-keys tbody tr")) >= 10
    _keys(browser, Keys.ESCAPE)
    _wait(browser, lambda d: not d.execute_script("return document.getElementById('help').open"), what="closing")
    _keys(browser, "/")
    assert browser.switch_to.active_element.get_attribute("name") == "species"

    species = everything["items"][-1]["species"]
    Select(browser.find_element(By.NAME, "species")).select_by_value(species)
    expected = api(server, "/api/detections", species=species, limit=1000)
    _wait(browser, lambda d: _settled(d) and f"of {expected['total']}." in d.find_element(By.ID, "list-summary").text,
          what="filtering by species")
    assert f"species={species}" in browser.execute_script("return location.hash")
    shown = [row.find_element(By.CSS_SELECTOR, "th a").text for row in _rows(browser)]
    assert shown and set(shown) == {species} and len(shown) == min(50, expected["total"])

    score = sorted(item["score"] for item in expected["items"])[len(expected["items"]) // 2]
    low = browser.find_element(By.NAME, "min")
    low.send_keys(f"{score:.4f}")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    narrower = api(server, "/api/detections", species=species, min_score=f"{score:.4f}", limit=1000)
    _wait(browser, lambda d: _settled(d) and f"of {narrower['total']}." in d.find_element(By.ID, "list-summary").text,
          what="filtering by score")
    browser.refresh()  # the address holds the filter: a reload (or a link) shows the same list
    _wait(browser, _settled, what="reloading the filtered list")
    assert Select(browser.find_element(By.NAME, "species")).first_selected_option.get_attribute("value") == species
    assert browser.find_element(By.NAME, "min").get_attribute("value") == f"{score:.4f}"
    assert len(_rows(browser)) == narrower["total"]
    assert _console_errors(browser) == []


def test_a_detection_shows_its_spectrogram_and_plays_its_clip(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, server, "#/detections?order=oldest")
    first = api(server, "/api/detections", order="oldest", limit=1)["items"][0]
    link = _rows(browser)[0].find_element(By.CSS_SELECTOR, "th a")
    link.send_keys(Keys.ENTER)  # the keyboard opens it
    _wait(browser, lambda d: _showing(d, f"#/detection/{first['id']}?"),
          what="opening the first detection")
    detection = api(server, f"/api/detections/{first['id']}")
    title = browser.find_element(By.ID, "view-title")
    assert title.text == f"Detection {detection['id']}: {detection['species']}"
    assert browser.switch_to.active_element == title  # the new view's heading takes the focus
    _wait(browser, lambda d: d.execute_script(
        "const a = document.getElementById('clip'); return a.readyState >= 1 && a.error === null"),
        what="loading the clip's metadata")
    clip = min(detection["end"] + 1, detection["duration"]) - max(0, detection["start"] - 1)
    assert browser.execute_script("return document.getElementById('clip').duration") == pytest.approx(clip, abs=0.05)
    _wait(browser, lambda d: d.execute_script("return document.getElementById('spectrogram').naturalWidth > 0"),
          what="loading the spectrogram")
    top = [row.find_element(By.TAG_NAME, "th").text for row in _rows(browser, "table.top-species tbody tr")]
    assert top == [entry["species"] for entry in detection["top_species"][:5]]
    model = f"{detection['model']['name']}, version {detection['model']['version']}"
    assert model in browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    _keys(browser, " ")  # Space plays the clip
    _wait(browser, lambda d: d.execute_script("const a = document.getElementById('clip'); return a.currentTime > 0"),
          what="playing the clip")
    _keys(browser, " ")
    _wait(browser, lambda d: d.execute_script("return document.getElementById('clip').paused"), what="pausing")
    assert _console_errors(browser) == []


def test_review_by_keys_relabel_through_the_type_ahead_and_undo(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = reviews_in(server)
    _open(browser, server, "#/detections?review=unreviewed&order=oldest")
    _sign_in(browser, "page-test")
    unreviewed = api(server, "/api/detections", review="unreviewed", order="oldest", limit=2)["items"]
    first, second = unreviewed
    _rows(browser)[0].find_element(By.CSS_SELECTOR, "th a").click()
    _wait(browser, lambda d: _showing(d, f"#/detection/{first['id']}?"),
          what="opening the first unreviewed detection")

    # with a key, the page fetches the clip with it (a media element cannot send headers) and plays the bytes
    _wait(browser, lambda d: d.execute_script("const a = document.getElementById('clip');"
                                              "return a.src.startsWith('blob:') && a.readyState >= 1 && !a.error"),
          what="loading the clip with the key")
    # keys do nothing while typing: a "c" in the comment field is text, not a verdict
    comment = browser.find_element(By.ID, "comment")
    comment.send_keys("c")
    time.sleep(0.5)
    assert reviews_in(server) == before and comment.get_attribute("value") == "c"
    comment.clear()
    comment.send_keys(Keys.ESCAPE)  # Esc leaves the field; the keys act again
    _keys(browser, "c")
    _wait(browser, lambda d: f"Detection {first['id']} confirmed" in _status(d), what="confirming by key")
    # the verdict moves on to the next unreviewed detection
    _wait(browser, lambda d: _showing(d, f"#/detection/{second['id']}?"),
          what="moving to the next detection")
    confirmed = api(server, f"/api/detections/{first['id']}")
    assert confirmed["review"] == "confirmed" and confirmed["reviews"][-1]["reviewer"] == "page-test"

    # relabel through the type-ahead: the field offers the serving model's classes
    classes = next(model for model in api(server, "/api/models") if model["serving"])["classes"]
    _keys(browser, "l")
    field = browser.switch_to.active_element
    assert field.get_attribute("id") == "relabel" and field.get_attribute("list") == "classes"
    offered = browser.execute_script("return [...document.querySelectorAll('#classes option')].map(o => o.value)")
    assert sorted(offered) == sorted(classes)
    other = next(name for name in classes if name != second["species"])
    field.send_keys("synthetic-crok", Keys.ENTER)  # a typo: no model's class, so the page asks first
    _wait(browser, lambda d: 'Not relabelled: "synthetic-crok" is not one of the models' in _status(d),
          what="holding back the typo")
    assert api(server, f"/api/detections/{second['id']}")["reviews"] == []
    field = browser.find_element(By.ID, "relabel")
    field.clear()
    field.send_keys(other, Keys.ENTER)
    _wait(browser, lambda d: f"Detection {second['id']} relabelled as {other}" in _status(d), what="relabelling")
    relabelled = api(server, f"/api/detections/{second['id']}")["reviews"][-1]
    assert (relabelled["status"], relabelled["species"]) == ("confirmed", other)
    assert reviews_in(server)[len(before):] == [(first["id"], "confirmed", None, "page-test"),
                                              (second["id"], "confirmed", other, "page-test")]

    # undo (z) deletes the latest review, the relabel, and shows its detection again
    _wait(browser, lambda d: _left(d, f"#/detection/{second['id']}?"), what="moving on after the relabel")
    _keys(browser, "z")
    _wait(browser, lambda d: f"Undone: detection {second['id']}" in _status(d), what="undoing")
    _wait(browser, lambda d: _showing(d, f"#/detection/{second['id']}?"),
          what="going back to the relabelled detection")
    assert api(server, f"/api/detections/{second['id']}")["reviews"] == []
    assert reviews_in(server)[len(before):] == [(first["id"], "confirmed", None, "page-test")]  # the database agrees
    assert browser.find_element(By.ID, "review-state").text == "unreviewed"
    assert _console_errors(browser) == []


def test_the_queue_the_precision_and_the_sensors(browser, server):
    from selenium.webdriver.common.by import By

    queue = api(server, "/api/review-queue", budget=6, bins=5, seed=0)
    _open(browser, server, "#/queue?budget=6&bins=5&seed=0")
    _sign_in(browser, "page-test")
    assert [row.find_element(By.CSS_SELECTOR, "th a").text for row in _rows(browser)] == \
        [item["species"] for item in queue["items"]]
    waiting = [item for item in queue["items"] if not item["review"]]
    _keys(browser, "s")  # start: the first unreviewed detection of the sample
    _wait(browser, lambda d: _showing(d, f"#/detection/{waiting[0]['id']}?queue=1"), what="starting the queue")
    assert "in the queue" in browser.find_element(By.ID, "position").text
    _keys(browser, "r")  # a verdict moves on to the next unreviewed one of the sample
    _wait(browser, lambda d: _showing(d, f"#/detection/{waiting[1]['id']}?queue=1"), what="stepping through the queue")
    assert api(server, f"/api/detections/{waiting[0]['id']}")["review"] == "rejected"

    precision = api(server, "/api/precision", bins=5)
    _go(browser, "#/precision?bins=5")
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".card h3")]
    assert titles == [entry["species"] for entry in precision] and titles
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == len(precision)
    rejected = next(entry for entry in precision if entry["species"] == waiting[0]["species"])
    estimated = [row for row in rejected["thresholds"] if row["precision"] is not None]
    assert estimated and browser.find_elements(By.CSS_SELECTOR, "svg.chart .band")

    sensors = api(server, "/api/sensors")
    _go(browser, "#/sensors")
    rows = _rows(browser, "table.sensors tbody tr")
    assert [row.find_element(By.TAG_NAME, "th").text for row in rows] == [s["id"] for s in sensors]
    pond = next(row for row in rows if row.find_element(By.TAG_NAME, "th").text == "pond-1")
    count = api(server, "/api/detections", sensor_id="pond-1", limit=0)["total"]
    assert pond.find_elements(By.TAG_NAME, "td")[5].text == f"{count:,}"
    placed = [s for s in sensors if s["lat"] is not None]
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart circle")) == len(placed) == 3
    assert _console_errors(browser) == []


def test_errors_are_one_line_with_the_servers_reason(browser, server):
    from selenium.webdriver.common.by import By

    _open(browser, server, "#/detection/99999")
    assert _status(browser) == "Detection 99999 cannot be shown: 404 no detection with id 99999"
    _open(browser, server, "#/detections?max=1.5")
    assert "422" in _status(browser) and "max_score" in _status(browser) and "\n" not in _status(browser)
    assert "max_score" in browser.find_element(By.CSS_SELECTOR, "#results .error").text
    # a verdict without the key: refused by the server, and the page says why
    item = api(server, "/api/detections", limit=1)["items"][0]
    _open(browser, server, f"#/detection/{item['id']}")
    _sign_in(browser, "page-test", key="")
    count = len(reviews_in(server))
    _keys(browser, "c")
    _wait(browser, lambda d: f"Detection {item['id']} could not be confirmed: 401 " in _status(d), what="refusing")
    assert "X-API-Key" in _status(browser) and len(reviews_in(server)) == count
    _sign_in(browser, "page-test")
    _console_errors(browser)  # the browser logs the failed requests themselves: expected here


@pytest.mark.parametrize("width", [1280, 1024])
def test_the_layout_fits_the_window(browser, server, width):
    """Every view at ``width`` px: nothing sticks out on the right, and no table is too wide for its box (it would
    scroll); with ECHOENGINE_SCREENSHOTS=FOLDER, each view's screenshot is kept there."""
    detection = api(server, "/api/detections", order="oldest", limit=1)["items"][0]
    folder = os.environ.get("ECHOENGINE_SCREENSHOTS")
    browser.set_window_size(width, 900)
    misfits = []
    try:
        for name, hash_ in (("list", "#/detections"), ("detection", f"#/detection/{detection['id']}?order=oldest"
                                                                    "&pos=0"),
                            ("queue", "#/queue?budget=6"), ("precision", "#/precision"), ("sensors", "#/sensors")):
            _open(browser, server, hash_)
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
                small_png(browser.get_screenshot_as_png(), Path(folder) / f"review-{name}-chromium-{width}.png")
            layout = browser.execute_script(OVERFLOW_JS)
            if not (layout["scrollWidth"] <= layout["width"] and layout["out"] == layout["scrolled"] == []):
                misfits.append((hash_, layout))
    finally:
        browser.set_window_size(1280, 900)
    assert misfits == [], f"at {width} px: {misfits}"
    assert _console_errors(browser) == []


def _screenshot(driver, path: Path, height: int) -> None:
    """The window (1280 px wide, ``height`` high) as a small PNG: 256 colours, well under 300 KB."""
    driver.set_window_size(1280, height)
    driver.execute_script("window.scrollTo(0, 0); document.activeElement?.blur()")
    time.sleep(0.3)
    small_png(driver.get_screenshot_as_png(), path)


def test_screenshots_for_the_readme(browser, server):
    """With ECHOENGINE_SCREENSHOTS=FOLDER: the list and a detection, after a few reviews (the README's pictures)."""
    folder = os.environ.get("ECHOENGINE_SCREENSHOTS")
    if not folder:
        pytest.skip("set ECHOENGINE_SCREENSHOTS=FOLDER to write the README's screenshots of the review page")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = review_for_screenshots(server)
    _open(browser, server, "#/detections")
    browser.execute_script("localStorage.setItem('echoengine.reviewer', 'ann')")
    browser.refresh()
    _wait(browser, _settled, what="reloading the list")
    _screenshot(browser, folder / "review-list.png", 780)
    birds = items[0]  # birds_10s.flac, the first upload
    _open(browser, server, f"#/detection/{birds['id']}?order=oldest&pos=0")
    _keys(browser, " ")
    _wait(browser, lambda d: d.execute_script("return document.getElementById('clip').currentTime > 3.5"),
          what="playing into the clip")
    _keys(browser, " ")
    _screenshot(browser, folder / "review-detection.png", 1010)
    browser.set_window_size(1280, 900)
    for name in ("review-list.png", "review-detection.png"):
        assert (folder / name).stat().st_size < 300_000


def _timed(step) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def test_the_page_stays_fast_with_10000_more_detections(browser, server):
    """Runs last: it adds 10,000 detections to the module's store (by SQL, see the module's note)."""
    from selenium.webdriver.common.by import By

    add_detections(server, 10_000)
    total = api(server, "/api/detections", limit=0)["total"]
    assert total >= 10_000
    species = api(server, "/api/species")[0]["species"]
    last = -(-total // 50)
    middle = api(server, "/api/detections", offset=total // 2, limit=1)["items"][0]["id"]
    steps = {
        "the list, first page": lambda: _open(browser, server, "#/detections"),
        "the last page": lambda: _go(browser, f"#/detections?page={last}"),
        "a species, best scores first": lambda: _go(browser, f"#/detections?species={species}&order=score"),
        "unreviewed, scores 0.4 to 0.6": lambda: _go(browser, "#/detections?review=unreviewed&min=0.4&max=0.6"),
        "a detection": lambda: _go(browser, f"#/detection/{middle}?pos={total // 2}"),
        "its next one": lambda: (_keys(browser, "n"), _wait(browser, lambda d: _left(d, f"/{middle}?"))),
        "the review queue (budget 200)": lambda: _go(browser, "#/queue?budget=200"),
        "the precision": lambda: _go(browser, "#/precision"),
        "the sensors": lambda: _go(browser, "#/sensors"),
    }
    seconds = {name: _timed(step) for name, step in steps.items()}
    print(f"\nthe review page with {total:,} detections (seconds until rendered):")
    for name, value in seconds.items():
        print(f"  {name:32s} {value:6.2f}")
    _go(browser, f"#/detections?page={last}")
    assert f"of {total:,}." in browser.find_element(By.ID, "list-summary").text
    assert len(_rows(browser)) == total - 50 * (last - 1)
    assert max(seconds.values()) < 5.0, seconds
    assert _console_errors(browser) == []
