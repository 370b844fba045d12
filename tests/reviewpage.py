"""What the browser tests of the review page share, whatever the browser: the served store, the API and the database.

:func:`review_server` starts a real ``echoengine serve`` of the tests' quick bundle (threshold 0, two species per
window) with an API key, and uploads real field recordings (``../shared/data/soundscapes``): each recording gives
its two best species as events. :func:`add_detections` adds thousands more by SQL, for timing a large store.
:func:`small_png` turns a browser's screenshot into the README's kind of picture.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import sqlite3
from pathlib import Path

from servers import Server
from servicekit import SCORING, small_bundle

# (file, sensor, latitude, longitude): real recordings, three sensors with positions, one without
UPLOADS = [("birds_10s.flac", "pond-1", 40.79, -77.86), ("ruffed_grouse_drum.flac", "ridge-2", 40.81, -77.80),
           ("spinetail.flac", "forest-3", 4.63, -52.30), ("robin.ogg", "garden-4", None, None)]
MAAD = 3  # and the first few 10 s files of the 24 h series, from pond-1
KEY = "review-page-key"  # the server needs it for writes: the page's key field is tested too
#: JavaScript (function bodies) both browsers' tests run in the page.
STATUS_JS = "return document.getElementById('status')?.textContent || ''"
#: The view of the address is rendered: nothing is loading.
SETTLED_JS = ("const m = document.getElementById('main'); return !!m && m.dataset.ready === location.hash"
              " && !m.hasAttribute('aria-busy') && !m.querySelector('[aria-busy]')")
#: The names of the form fields of the view that have no label.
UNLABELLED_JS = ("return [...document.querySelectorAll('main input, main select')]"
                 ".filter(e => !e.labels || !e.labels.length).map(e => e.name)")
#: What sticks out of the window on the right (the page scrolls sideways), but in a scrolling box (wide tables);
#: and the scrolling boxes whose content is wider than they are (``scrolled``: a table that hides columns).
OVERFLOW_JS = """
const width = document.documentElement.clientWidth, out = [];
for (const element of document.querySelectorAll('body *')) {
  if (element.closest('.scroll, dialog:not([open]), details:not([open]) > :not(summary)')) continue;
  const box = element.getBoundingClientRect();
  if (!box.width || box.right <= width + 1) continue;
  const name = typeof element.className === 'string' && element.className ? '.' + element.className.split(' ')[0] : '';
  out.push(`${element.tagName.toLowerCase()}${element.id ? '#' + element.id : ''}${name} right ${Math.round(box.right)}`
           + ` > ${width}`);
}
const scrolled = [...document.querySelectorAll('.scroll')].filter(e => e.scrollWidth > e.clientWidth + 1)
  .map(e => `${e.firstElementChild?.className || 'box'} ${e.scrollWidth} > ${e.clientWidth}`);
return {scrollWidth: document.documentElement.scrollWidth, width, out: out.slice(0, 10), scrolled};
"""
#: Reviews the README's screenshots show: (index in the oldest-first list from 2 on, verdict).
SCREENSHOT_VERDICTS = ["confirmed", "confirmed", "rejected", "uncertain", "confirmed", "rejected"]


def review_server(soundscapes: Path, synthetic_dataset, tmp_path_factory, name: str) -> Server:
    """A running server whose store holds the detections of real recordings (every window's two best classes);
    ``server.store`` is its store folder, ``server.client`` sends the key."""
    bundle = small_bundle(synthetic_dataset, tmp_path_factory)
    store = tmp_path_factory.mktemp(name) / "store"
    key_file = store.parent / "key.txt"
    key_file.write_text(KEY + "\n")
    running = Server(bundle, store, options=(*SCORING, "--api-key-file", str(key_file))).wait_ready()
    running.store = store
    running.client.headers["X-API-Key"] = KEY
    try:
        ids = []
        for day, (file, sensor, lat, lon) in enumerate(UPLOADS):
            position = {"lat": lat, "lon": lon} if lat is not None else {}
            ids.append(upload(running, soundscapes / file, sensor_id=sensor,
                              recorded_at=f"2024-05-0{day + 1}T05:00:00Z", **position))
        for i, path in enumerate(sorted((soundscapes / "maad-indices").glob("*.flac"))[:MAAD]):
            ids.append(upload(running, path, sensor_id="pond-1", recorded_at=f"2024-05-06T0{i}:00:00Z"))
        finished = running.wait_for(ids, timeout=180)
        assert all(r["status"] == "done" for r in finished), running.output()[-2000:]
    except BaseException:
        running.stop()
        raise
    return running


def upload(server: Server, path: Path, **fields) -> int:
    """Upload a recording with form fields (sensor, time, position); its id."""
    with open(path, "rb") as file:
        answer = server.client.post("/api/recordings", files={"file": (path.name, file)},
                                    data={k: str(v) for k, v in fields.items()})
    assert answer.status_code in (200, 202), answer.text
    return answer.json()["id"]


def api(server: Server, path: str, **params):
    """A GET of the server's API, its JSON (200 asserted)."""
    answer = server.client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def reviews_in(server: Server) -> list[tuple]:
    """Every review in the store's SQLite file, read with SQL: (detection, status, species, reviewer)."""
    with sqlite3.connect(server.store / "echo.db") as connection:
        return connection.execute("SELECT detection_id, status, species, reviewer FROM reviews ORDER BY id").fetchall()


def review_for_screenshots(server: Server) -> list[dict]:
    """A few reviews by "ann" (and a relabel), as the README's pictures show them; the detections, oldest first."""
    items = api(server, "/api/detections", order="oldest", limit=1000)["items"]
    for item, status in zip(items[2:], SCREENSHOT_VERDICTS):
        server.client.post(f"/api/detections/{item['id']}/review", json={"status": status, "reviewer": "ann"})
    relabel = items[-2]
    other = next(entry["species"] for entry in relabel["top_species"] if entry["species"] != relabel["species"])
    server.client.post(f"/api/detections/{relabel['id']}/review",
                       json={"status": "confirmed", "species": other, "reviewer": "ann"})
    return items


def small_png(png: bytes, path: Path) -> None:
    """A screenshot as a small PNG: 256 colours, well under 300 KB."""
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                         dither=Image.Dither.NONE).save(path, optimize=True)


def add_detections(server: Server, n: int, seed: int = 0) -> None:
    """``n`` more detections by SQL, spread over species, scores, days and the existing recordings."""
    from sqlalchemy import insert, select

    from echoengine.service.db import Database, default_url
    from echoengine.service.schema import Detection, Model, Recording

    rng = random.Random(seed)
    db = Database.connect(default_url(server.store))
    try:
        with db.transaction() as session:
            model = session.scalars(select(Model).order_by(Model.id.desc())).first()
            recordings = session.execute(select(Recording.id, Recording.duration)).all()
            rows = []
            for i in range(n):
                recording, duration = recordings[i % len(recordings)]
                species = model.classes[(i // len(recordings)) % len(model.classes)]
                # odd starts, never one a real event has (those are on window edges)
                start = round(0.000123 + (i // (len(recordings) * len(model.classes))) * duration / n, 6)
                score = rng.random()
                rows.append({"recording_id": recording, "model_id": model.id, "species": species, "start": start,
                             "end": min(duration, start + 1.0), "score": score, "mean_score": score * 0.9,
                             "windows": 1, "time": dt.datetime(2024, 6, 1) + dt.timedelta(minutes=17 * i),
                             "top_species": [{"species": species, "score": score}]})
            session.execute(insert(Detection), rows)
    finally:
        db.dispose()
