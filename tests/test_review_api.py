"""The review API: the list's score range and orders, undo, species counts, the review queue and the precision
estimate, on real servers over SQLite and PostgreSQL; and the sampling and the estimator on their own.

The servers score one real upload (its audio backs the spectrogram); the
detections the review tests need, with scores chosen by hand, are added to
the server's database through the schema, under species names of their own
(``t-...``), so each test counts only its own. Reviews go through the API.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from pathlib import Path

import numpy as np
import pytest

from servers import Server
from servicekit import SCORING, make_recording, one_line_4xx, small_bundle

ITEM_KEYS = {"id", "recording_id", "sensor_id", "species", "start", "end", "time", "score", "mean_score",
             "top_species", "model", "review", "reviewed_species", "audio_url", "spectrogram_url", "duration"}
BASE = dt.datetime(2024, 6, 1)


# ---- the sampling and the estimator, on their own ------------------------------------------------------------------
def test_bins_are_closed_below_and_the_last_holds_one():
    from echoengine.service.sampling import bin_edges, bin_of

    assert [bin_of(s, 5) for s in (0.0, 0.1999, 0.2, 0.4, 0.6, 0.8, 0.9999, 1.0)] == [0, 0, 1, 2, 3, 4, 4, 4]
    for bins in (1, 3, 7, 10, 100):
        edges = bin_edges(bins)
        assert all(bin_of(low, bins) == k for k, low in enumerate(edges[:-1]))  # a low edge is in its own bin
        assert bin_of(1.0, bins) == bins - 1


def test_allocation_is_equal_and_small_strata_give_the_rest_to_the_others():
    from echoengine.service.sampling import allocate

    assert allocate([10, 10, 10, 10], budget=20) == [5, 5, 5, 5]
    assert allocate([1, 2, 100, 100], budget=40) == [1, 2, 18, 19] or allocate([1, 2, 100, 100], budget=40) == [
        1, 2, 19, 18]
    assert allocate([0, 3, 0], budget=10) == [0, 3, 0]  # fewer than the budget: all of it
    assert sum(allocate([4, 4, 4], budget=5)) == 5 and max(allocate([4, 4, 4], budget=5)) == 2
    assert allocate([], budget=5) == [] and allocate([5], budget=0) == [0]
    for seed in range(20):  # the odd units: the same for a seed, spread over strata by the seeds
        assert allocate([9] * 6, budget=8, seed=seed) == allocate([9] * 6, budget=8, seed=seed)
    firsts = {tuple(allocate([9] * 6, budget=8, seed=seed)) for seed in range(20)}
    assert len(firsts) > 3 and all(sorted(a) == [1, 1, 1, 1, 2, 2] for a in firsts)


def _rows(n: int, species: str = "owl", start: int = 1) -> list[tuple[int, str, float]]:
    return [(start + i, species, (i % 100) / 100) for i in range(n)]


def test_the_sample_is_stratified_by_species_and_bin_and_covers_small_strata():
    from echoengine.service.sampling import stratified_sample

    rows = _rows(200, "owl") + _rows(3, "wren", start=1000) + [(2000, "kite", 0.95)]
    strata, picks = stratified_sample(rows, budget=30, bins=5, seed=0)
    by_key = {(s["species"], s["bin"]): s for s in strata}
    assert len(strata) == 15 and sum(s["sampled"] for s in strata) == len(picks) == 30
    assert by_key[("kite", 4)]["sampled"] == 1 and by_key[("kite", 0)]["detections"] == 0
    assert [by_key[("wren", k)]["sampled"] for k in range(5)] == [3, 0, 0, 0, 0]  # all of a small stratum
    owl = [by_key[("owl", k)]["sampled"] for k in range(5)]
    assert sum(owl) == 26 and max(owl) - min(owl) <= 1  # the rest, shared equally over the owl's bins
    scores = dict((i, score) for i, _, score in rows)
    for detection_id, stratum in picks:
        assert stratum["low"] <= scores[detection_id] < stratum["high"] or scores[detection_id] == stratum["high"] == 1
    first = [(s["species"], s["bin"]) for _, s in picks[:7]]  # interleaved: every stratum's first, then the seconds
    assert first == [("kite", 4), *(("owl", k) for k in range(5)), ("wren", 0)]


def test_the_sample_is_deterministic_for_a_seed_and_uniform_over_seeds():
    from echoengine.service.sampling import stratified_sample

    rows = _rows(50)
    one = stratified_sample(rows, budget=10, bins=1, seed=3)
    assert one == stratified_sample(list(reversed(rows)), budget=10, bins=1, seed=3)  # not the rows' order
    assert one != stratified_sample(rows, budget=10, bins=1, seed=4)
    counts = dict.fromkeys(range(1, 51), 0)
    for seed in range(1000):
        for detection_id, _ in stratified_sample(rows, budget=10, bins=1, seed=seed)[1]:
            counts[detection_id] += 1
    assert all(140 <= n <= 260 for n in counts.values()), counts  # each about 1000 x 10/50 = 200 times


def test_the_sample_is_stable_as_detections_arrive():
    from echoengine.service.sampling import stratified_sample

    rows = _rows(100)
    _, before = stratified_sample(rows, budget=20, bins=5, seed=7)
    new = [(500 + i, "owl", 0.05 + 0.2 * (i % 5)) for i in range(10)]  # two more in each bin
    _, after = stratified_sample(rows + new, budget=20, bins=5, seed=7)
    old, now = {i for i, _ in before}, {i for i, _ in after}
    entered = now - old
    assert entered <= {i for i, _, _ in new}  # only new detections enter ...
    assert len(old - now) == len(entered)  # ... each in place of one (the allocation did not change)
    assert len(old & now) >= 10


def test_wilson_intervals_match_scipy_and_the_hand_computed_ones():
    from scipy.stats import binomtest

    from echoengine.service.sampling import wilson

    for k, n in ((0, 1), (1, 1), (8, 10), (3, 4), (0, 25), (25, 25), (17, 60)):
        reference = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k, n) == pytest.approx((reference.low, reference.high), abs=1e-9)
    low, high = wilson(8, 10)  # (p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96, p = 0.8, n = 10
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_the_stratified_estimate_by_hand_and_its_nulls():
    from echoengine.service.sampling import stratified_precision, wilson

    # two bins of 4 detections: 1 of 2 reviewed correct, 3 of 4: P = 0.5 * 0.5 + 0.5 * 0.75 = 0.625,
    # n_eff = 1 / (0.25 / 2 + 0.25 / 4) = 5.333; Wilson at (0.625, 5.333): 0.2551 to 0.8903
    estimate = stratified_precision([(4, 2, 1), (4, 4, 3)])
    assert estimate.precision == pytest.approx(0.625)
    assert (round(estimate.ci_low, 4), round(estimate.ci_high, 4)) == (0.2551, 0.8903)
    one = stratified_precision([(7, 4, 3)])  # one bin: its own Wilson interval
    assert (one.ci_low, one.ci_high) == pytest.approx(wilson(3, 4))
    proportional = stratified_precision([(30, 3, 3), (10, 1, 0)])  # reviews in proportion: n_eff = n = 4
    assert proportional.precision == pytest.approx(0.75)
    assert (proportional.ci_low, proportional.ci_high) == pytest.approx(wilson(3, 4))
    assert stratified_precision([(5, 0, 0), (5, 5, 5)]).precision is None  # a bin with detections, no reviews
    assert stratified_precision([(0, 0, 0), (5, 5, 5)]) == stratified_precision([(5, 5, 5)])  # empty bins: no say
    assert stratified_precision([(0, 0, 0)]).precision is None and stratified_precision([]).ci_low is None


def test_the_precision_table_by_hand():
    from echoengine.service.sampling import precision_table, wilson

    (owl,) = precision_table([("owl", 0, 4, 2, 1), ("owl", 1, 4, 4, 3), ("owl", 2, 1, 0, 0)], bins=4)
    assert [(b["bin"], b["low"], b["high"]) for b in owl["bins"]] == [(0, 0, 0.25), (1, 0.25, 0.5), (2, 0.5, 0.75),
                                                                      (3, 0.75, 1.0)]
    assert [(b["detections"], b["reviewed"], b["confirmed"], b["precision"]) for b in owl["bins"]] == [
        (4, 2, 1, 0.5), (4, 4, 3, 0.75), (1, 0, 0, None), (0, 0, 0, None)]
    assert (owl["bins"][1]["ci_low"], owl["bins"][1]["ci_high"]) == pytest.approx(wilson(3, 4))
    assert [(t["threshold"], t["detections"], t["reviewed"], t["precision"]) for t in owl["thresholds"]] == [
        (0.0, 9, 6, None), (0.25, 5, 4, None), (0.5, 1, 0, None), (0.75, 0, 0, None)]  # bin 2 has no reviews
    assert (owl["detections"], owl["reviewed"]) == (9, 6)


def test_sql_bins_are_the_python_bins(new_database, tmp_path):
    from echoengine.service import queries
    from echoengine.service.db import Database, default_url
    from echoengine.service.sampling import bin_of

    db = Database.connect(new_database() or default_url(tmp_path))
    db.migrate()
    scores = [0.0, 0.2, 0.29, 0.3, 0.57, 0.5699999, 0.6, 0.7, 0.99, 1.0, 0.1 + 0.2]
    try:
        with db.transaction() as session:
            recording, model = _recording_and_model(session)
            _add_detections(session, recording, model, [("t-edge", s) for s in scores])
        for bins in (3, 5, 10, 100):
            with db.session() as session:
                got = {k: n for _, k, n, _, _ in queries.stratum_counts(session, bins, "t-edge")}
            want: dict[int, int] = {}
            for score in scores:
                want[bin_of(score, bins)] = want.get(bin_of(score, bins), 0) + 1
            assert got == want, bins
    finally:
        db.dispose()


# ---- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(synthetic_dataset, tmp_path_factory) -> Path:
    """A small_cnn bundle on a light front end, trained for one epoch: service plumbing only."""
    return small_bundle(synthetic_dataset, tmp_path_factory)


@pytest.fixture(scope="module")
def server(bundle, new_database, tmp_path_factory):
    """A server that has scored one real upload (sensor ``t-real``); ``db_url`` is its database."""
    from echoengine.service.db import default_url

    store = tmp_path_factory.mktemp("review") / "store"
    url = new_database()
    running = Server(bundle, store, db=url, options=SCORING).wait_ready()
    running.db_url = url or default_url(store)
    answer = running.client.post("/api/recordings", files={"file": ("real.flac", make_recording(8.0, seed=70))},
                                 data={"sensor_id": "t-real", "recorded_at": "2024-06-01T05:00:00Z"})
    assert answer.status_code == 202, answer.text
    running.recording_id = answer.json()["id"]
    assert running.wait_for([running.recording_id])[0]["status"] == "done"
    yield running
    running.stop()


# ---- helpers -------------------------------------------------------------------------------------------------------
def _recording_and_model(session):
    """A recording (60 s, the first recording's audio) and a model (the first) for hand-made detections."""
    from echoengine.service.schema import Model, Recording

    model = session.query(Model).order_by(Model.id).first()
    if model is None:
        model = Model(name="hand", version=1, weights_hash="0" * 16, fingerprint="hand", classes=[], thresholds=[],
                      options={}, path="hand")
        session.add(model)
        session.flush()
    recording = session.query(Recording).filter_by(sha256="f" * 64).first()
    if recording is None:
        real = session.query(Recording).order_by(Recording.id).first()
        recording = Recording(sha256="f" * 64, audio=real.audio if real else "none.flac", size=1, duration=60.0,
                              sample_rate=32000, channels=1, status="done", sensor_id=None, recorded_at=BASE)
        session.add(recording)
        session.flush()
    return recording, model


_made = [0]


def _add_detections(session, recording, model, rows: list[tuple[str, float]]) -> list[int]:
    """Detections ``(species, score)`` in ``recording``, each at a start (and time) of its own; their ids."""
    from echoengine.service.schema import Detection

    added = []
    for species, score in rows:
        _made[0] += 1
        start = _made[0] * 0.01
        added.append(Detection(recording_id=recording.id, model_id=model.id, species=species, start=start,
                               end=start + 1.0, time=BASE + dt.timedelta(minutes=_made[0]), score=score,
                               mean_score=score / 2, windows=1, top_species=[{"species": species, "score": score}]))
    session.add_all(added)
    session.flush()
    return [d.id for d in added]


def _insert(server: Server, rows: list[tuple[str, float]]) -> list[int]:
    from echoengine.service.db import Database

    db = Database.connect(server.db_url)
    try:
        with db.transaction() as session:
            recording, model = _recording_and_model(session)
            return _add_detections(session, recording, model, rows)
    finally:
        db.dispose()


def _review(server: Server, detection_id: int, status: str, species: str | None = None) -> dict:
    """A verdict; a corrected species is sent as a new one (these tests' names are no model's classes)."""
    species_fields = {"species": species, "new_species": True} if species else {}
    answer = server.client.post(f"/api/detections/{detection_id}/review",
                                json={"status": status, "reviewer": "ann", **species_fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_a_corrected_species_no_model_knows_is_refused_unless_it_is_said_to_be_new(server):
    (detection,) = _insert(server, [("t-typo", 0.5)])
    classes = next(m["classes"] for m in server.client.get("/api/models").json() if m["serving"])
    url = f"/api/detections/{detection}/review"
    refused = server.client.post(url, json={"status": "confirmed", "reviewer": "ann", "species": "synthetic-crok"})
    one_line_4xx(refused, 422, "'synthetic-crok' is not a class of any model")
    assert "new_species" in refused.json()["detail"]
    for body in ({"species": classes[0]}, {"species": "t-new-frog", "new_species": True}):
        answer = server.client.post(url, json={"status": "confirmed", "reviewer": "ann", **body})
        assert answer.status_code == 201 and answer.json()["species"] == body["species"], answer.text


def _list(server: Server, **params) -> dict:
    answer = server.client.get("/api/detections", params={"limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()


# ---- the contract, on each database --------------------------------------------------------------------------------
def test_the_list_has_a_score_range_and_three_orders(server):
    ids = _insert(server, [("t-order", s) for s in (0.5, 0.9, 0.1, 0.5, 0.7)])
    newest = _list(server, species="t-order")["items"]
    assert [d["id"] for d in newest] == ids[::-1]  # later ids were made later
    assert [d["id"] for d in _list(server, species="t-order", order="oldest")["items"]] == ids
    by_score = _list(server, species="t-order", order="score")["items"]
    assert [(d["score"], d["id"]) for d in by_score] == [(0.9, ids[1]), (0.7, ids[4]), (0.5, ids[3]), (0.5, ids[0]),
                                                         (0.1, ids[2])]
    middle = _list(server, species="t-order", min_score=0.5, max_score=0.7, order="score")
    assert middle["total"] == 3 and [d["id"] for d in middle["items"]] == [ids[4], ids[3], ids[0]]
    page = server.client.get("/api/detections", params={"species": "t-order", "order": "score", "limit": 2,
                                                        "offset": 2}).json()
    assert page["total"] == 5 and [d["id"] for d in page["items"]] == [ids[3], ids[0]]
    blank = _list(server, species="", sensor_id="", review="", start="", end="")  # a form's blank fields
    assert blank["total"] == _list(server)["total"]
    get = server.client.get
    one_line_4xx(get("/api/detections", params={"order": "best"}), 422, "order")
    one_line_4xx(get("/api/detections", params={"max_score": 1.5}), 422, "max_score")
    one_line_4xx(get("/api/detections", params={"max_score": "nan"}), 422, "max_score")
    one_line_4xx(get("/api/detections", params={"min_score": 0.8, "max_score": 0.2}), 400,
                 "min_score (0.8) is above max_score (0.2)")


def test_every_item_carries_the_contract_and_a_detection_its_reviews(server):
    real = _list(server, sensor_id="t-real")["items"]
    assert real and all(set(item) >= ITEM_KEYS for item in real)
    item = real[0]
    assert item["duration"] == pytest.approx(8.0) and item["review"] is None and item["reviewed_species"] is None
    assert item["spectrogram_url"] == f"{server.url}/api/detections/{item['id']}/spectrogram.png"
    assert item["audio_url"] == f"{server.url}/api/detections/{item['id']}/audio"
    assert set(item["model"]) == {"id", "name", "version"} and item["model"]["name"] == "bundle"
    first = _review(server, item["id"], "confirmed")
    second = _review(server, item["id"], "confirmed", species="t-other")
    assert first["id"] < second["id"] and second["species"] == "t-other"
    detail = server.client.get(f"/api/detections/{item['id']}").json()
    assert set(detail) >= ITEM_KEYS and [r["id"] for r in detail["reviews"]] == [first["id"], second["id"]]
    assert (detail["review"], detail["reviewed_species"]) == ("confirmed", "t-other")
    listed = next(d for d in _list(server, sensor_id="t-real")["items"] if d["id"] == item["id"])
    assert (listed["review"], listed["reviewed_species"]) == ("confirmed", "t-other")


def test_a_review_is_undone_by_deleting_it(server):
    (detection,) = _insert(server, [("t-undo", 0.6)])
    first = _review(server, detection, "rejected")
    second = _review(server, detection, "confirmed", species="t-else")
    answer = server.client.delete(f"/api/reviews/{second['id']}")
    assert answer.status_code == 200 and answer.json() == {"id": second["id"], "deleted": True}
    detail = server.client.get(f"/api/detections/{detection}").json()
    assert [r["id"] for r in detail["reviews"]] == [first["id"]] and detail["review"] == "rejected"
    assert detail["reviewed_species"] is None
    assert server.client.delete(f"/api/reviews/{first['id']}").status_code == 200
    assert _list(server, species="t-undo")["items"][0]["review"] is None
    one_line_4xx(server.client.delete(f"/api/reviews/{first['id']}"), 404, f"no review with id {first['id']}")
    one_line_4xx(server.client.delete("/api/reviews/0"), 422, "review_id")
    one_line_4xx(server.client.delete("/api/reviews/abc"), 422, "review_id")


def test_species_counts_split_by_the_latest_review(server):
    ids = _insert(server, [("t-count", 0.5)] * 6)
    _review(server, ids[0], "confirmed")
    _review(server, ids[1], "rejected")
    _review(server, ids[1], "confirmed")  # the latest counts
    _review(server, ids[2], "uncertain")
    _review(server, ids[3], "confirmed", species="t-count-b")  # relabelled
    counts = {row["species"]: row for row in server.client.get("/api/species").json()}
    assert counts["t-count"] == {"species": "t-count", "detections": 6, "confirmed": 2, "rejected": 0,
                                 "uncertain": 1, "unreviewed": 2, "relabelled": 1}
    assert "t-count-b" not in counts  # a corrected name is not a detection of its own
    parts = ("confirmed", "relabelled", "rejected", "uncertain", "unreviewed")
    assert all(row["detections"] == sum(row[s] for s in parts) for row in counts.values())


def test_the_review_queue_is_a_stratified_seeded_sample_with_reviews_marked(server):
    scores = [0.05, 0.1, 0.15, 0.3, 0.45, 0.55, 0.6, 0.62, 0.64, 0.66, 0.68, 0.9, 0.95, 1.0]
    ids = _insert(server, [("t-queue", s) for s in scores])
    params = {"species": "t-queue", "budget": 9, "bins": 5, "seed": 11}
    queue = server.client.get("/api/review-queue", params=params).json()
    assert (queue["budget"], queue["seed"], queue["bins"]) == (9, 11, 5)
    strata = [(s["bin"], s["low"], s["high"], s["detections"], s["sampled"]) for s in queue["strata"]]
    assert strata == [(0, 0.0, 0.2, 3, 2), (1, 0.2, 0.4, 1, 1), (2, 0.4, 0.6, 2, 2), (3, 0.6, 0.8, 5, 2),
                      (4, 0.8, 1.0, 3, 2)]  # 9 over 5 bins: the lone one takes 1, the others 2 each
    items = queue["items"]
    assert len(items) == 9 and len({d["id"] for d in items}) == 9 and {d["id"] for d in items} <= set(ids)
    for item in items:
        assert set(item) >= ITEM_KEYS and item["stratum"]["species"] == "t-queue"
        assert item["stratum"]["low"] <= item["score"] <= item["stratum"]["high"]
    assert [item["stratum"]["bin"] for item in items[:5]] == [0, 1, 2, 3, 4]  # each bin's first, first
    assert server.client.get("/api/review-queue", params=params).json() == queue  # the same seed, the same sample
    reviewed = items[2]["id"]
    _review(server, reviewed, "rejected")
    again = server.client.get("/api/review-queue", params=params).json()
    assert [d["id"] for d in again["items"]] == [d["id"] for d in items]  # reviewed ones stay in the sample
    assert next(d for d in again["items"] if d["id"] == reviewed)["review"] == "rejected"
    assert sum(s["reviewed"] for s in again["strata"]) == 1
    others = {tuple(d["id"] for d in server.client.get("/api/review-queue", params={**params, "seed": seed}
                                                       ).json()["items"]) for seed in range(5)}
    assert len(others) > 1  # other seeds, other samples


def test_the_review_queue_keeps_its_sample_as_detections_arrive(server):
    ids = _insert(server, [("t-stable", 0.1 + 0.8 * (i % 2)) for i in range(40)])
    params = {"species": "t-stable", "budget": 6, "bins": 2, "seed": 5}
    before = {d["id"] for d in server.client.get("/api/review-queue", params=params).json()["items"]}
    new = set(_insert(server, [("t-stable", 0.1), ("t-stable", 0.9)] * 5))
    after = {d["id"] for d in server.client.get("/api/review-queue", params=params).json()["items"]}
    assert len(before) == len(after) == 6 and before <= set(ids)
    assert after - before <= new and len(before - after) == len(after - before)  # only new ones, in a place each
    everything = server.client.get("/api/review-queue", params={**params, "budget": 5000}).json()
    assert len(everything["items"]) == 50 and sum(s["sampled"] for s in everything["strata"]) == 50


def test_the_review_queue_of_all_species_and_its_bad_parameters(server):
    queue = server.client.get("/api/review-queue", params={"budget": 20, "species": ""}).json()
    assert len(queue["items"]) == 20 and len({s["species"] for s in queue["strata"]}) > 1
    assert queue["bins"] == 5 and queue["seed"] == 0 and all(s["sampled"] <= s["detections"] for s in queue["strata"])
    assert server.client.get("/api/review-queue", params={"species": "t-nothing"}).json()["items"] == []
    get = server.client.get
    for params, words in [({"budget": 0}, "budget"), ({"budget": 10**6}, "budget"), ({"budget": "x"}, "budget"),
                          ({"bins": 0}, "bins"), ({"bins": 21}, "bins"), ({"seed": -1}, "seed"),
                          ({"species": "a\x01"}, "species")]:
        one_line_4xx(get("/api/review-queue", params=params), 422, words)


def test_precision_per_bin_and_threshold_by_hand(server):
    low = _insert(server, [("t-prec", s) for s in (0.1, 0.2, 0.3, 0.4)])  # bin 0 of 2
    high = _insert(server, [("t-prec", s) for s in (0.6, 0.7, 0.8, 0.9)])  # bin 1
    _review(server, low[0], "confirmed")
    _review(server, low[1], "confirmed", species="t-else")  # relabelled: a false positive of t-prec
    _review(server, low[2], "uncertain")  # not a verdict
    for detection in high[:3]:
        _review(server, detection, "confirmed", species="t-prec")  # the same species named: correct
    _review(server, high[3], "rejected")
    (prec,) = server.client.get("/api/precision", params={"species": "t-prec", "bins": 2}).json()
    assert (prec["species"], prec["detections"], prec["reviewed"]) == ("t-prec", 8, 6)
    rows = [(b["bin"], b["low"], b["high"], b["detections"], b["reviewed"], b["confirmed"], b["precision"])
            for b in prec["bins"]]
    assert rows == [(0, 0.0, 0.5, 4, 2, 1, 0.5), (1, 0.5, 1.0, 4, 4, 3, 0.75)]
    assert (prec["bins"][1]["ci_low"], prec["bins"][1]["ci_high"]) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    at_zero, at_half = prec["thresholds"]
    assert (at_zero["threshold"], at_zero["detections"], at_zero["reviewed"]) == (0.0, 8, 6)
    assert at_zero["precision"] == pytest.approx(0.625)  # 4/8 x 1/2 + 4/8 x 3/4
    assert (at_zero["ci_low"], at_zero["ci_high"]) == pytest.approx((0.2551, 0.8903), abs=1e-4)
    assert (at_half["threshold"], at_half["detections"], at_half["precision"]) == (0.5, 4, 0.75)
    assert (at_half["ci_low"], at_half["ci_high"]) == (prec["bins"][1]["ci_low"], prec["bins"][1]["ci_high"])
    _insert(server, [("t-prec", 0.45)])
    _review(server, low[0], "uncertain")  # bin 0: 5 detections, 1 reviewed (relabelled) -> 0 of 1
    (prec,) = server.client.get("/api/precision", params={"species": "t-prec", "bins": 2}).json()
    assert prec["bins"][0]["precision"] == 0.0 and prec["thresholds"][0]["precision"] == pytest.approx(
        5 / 9 * 0 + 4 / 9 * 0.75)


def test_precision_is_null_where_a_bin_has_no_reviews_and_its_bad_parameters(server):
    _insert(server, [("t-null", 0.1), ("t-null", 0.9)])
    (row,) = server.client.get("/api/precision", params={"species": "t-null"}).json()
    assert [(b["detections"], b["precision"], b["ci_low"]) for b in row["bins"]] == [
        (1, None, None), (0, None, None), (0, None, None), (0, None, None), (1, None, None)]
    assert all(t["precision"] is None and t["ci_high"] is None for t in row["thresholds"])
    assert server.client.get("/api/precision", params={"species": "t-none-such"}).json() == []
    everyone = server.client.get("/api/precision", params={"bins": 3, "species": ""}).json()
    assert {"t-null", "t-prec"} <= {row["species"] for row in everyone} and all(
        len(row["bins"]) == len(row["thresholds"]) == 3 for row in everyone)
    for params in ({"bins": 0}, {"bins": 21}, {"bins": "five"}):
        one_line_4xx(server.client.get("/api/precision", params=params), 422, "bins")


def test_the_spectrogram_has_axes_and_marks_the_event(server):
    from PIL import Image

    item = _list(server, sensor_id="t-real", order="score")["items"][0]
    answer = server.client.get(item["spectrogram_url"].removeprefix(server.url))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    left, top, width, height = map(int, answer.headers["X-Plot-Box"].split(","))
    start, end = map(float, answer.headers["X-Plot-Time"].split(","))
    assert (start, end) == pytest.approx((max(0.0, item["start"] - 1), min(8.0, item["end"] + 1)), abs=1e-3)
    image = Image.open(io.BytesIO(answer.content)).convert("RGB")
    assert height == 256 and image.width >= left + width and image.height > top + height + 20
    def ink(box) -> int:  # dark pixels (tick labels, axis titles) in a margin
        return int((np.asarray(image.crop(box), dtype=int).sum(axis=2) < 200).sum())
    assert ink((0, top, left - 6, top + height)) > 30  # the kHz labels
    assert ink((left, top + height + 5, left + width, image.height)) > 60  # the seconds and "time (s)"
    x0 = left + math.floor((item["start"] - start) / (end - start) * (width - 1))
    x1 = left + math.ceil((item["end"] - start) / (end - start) * (width - 1))
    bar = image.getpixel(((x0 + x1) // 2, top - 6))
    assert bar[1] > bar[0] + 50 and bar[1] > bar[2] + 30  # the event's green bar above the plot
    outside = [x for x in (left + 2, left + width - 3) if not x0 - 1 <= x <= x1 + 1]
    assert all(image.getpixel((x, top - 6)) == (255, 255, 255) for x in outside)  # no bar outside the event


def test_openapi_lists_the_review_endpoints(server):
    paths = server.client.get("/openapi.json").json()["paths"]
    assert {"/api/reviews/{review_id}", "/api/review-queue", "/api/precision"} <= set(paths)
    assert "delete" in paths["/api/reviews/{review_id}"]
    listed = {p["name"] for p in paths["/api/detections"]["get"]["parameters"]}
    assert {"max_score", "order"} <= listed


# ---- in-process: the key ---------------------------------------------------------------------------------------------
def test_deleting_a_review_is_a_write_that_needs_the_key(bundle, tmp_path):
    from fastapi.testclient import TestClient

    from echoengine.service.app import create_app
    from echoengine.service.server import open_service

    key = tmp_path / "key"
    key.write_text("open sesame, says ann\n")
    service = open_service(bundle, store=tmp_path / "store", api_key_file=key)
    with service.db.transaction() as session:
        recording, model = _recording_and_model(session)
        (detection,) = _add_detections(session, recording, model, [("t-key", 0.5)])
    client = TestClient(create_app(service))
    secret = {"X-API-Key": "open sesame, says ann"}
    posted = client.post(f"/api/detections/{detection}/review", json={"status": "confirmed", "reviewer": "a"},
                         headers=secret)
    assert posted.status_code == 201
    one_line_4xx(client.delete(f"/api/reviews/{posted.json()['id']}"), 401, "X-API-Key")
    one_line_4xx(client.delete(f"/api/reviews/{posted.json()['id']}", headers={"X-API-Key": "no"}), 401, "wrong")
    assert client.delete(f"/api/reviews/{posted.json()['id']}", headers=secret).json()["deleted"] is True
    assert client.get("/api/review-queue", headers=secret).status_code == 200
    assert client.get("/api/precision", headers=secret).status_code == 200
    service.stop()
