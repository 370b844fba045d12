"""Reviewed detections out of a store: the export train reads (layout, verdicts, stability, refusals), the reviews
of a store and of an export as one table, and the comparison of two models on them (service/reviewed.py,
service/export.py, service/compare.py, ``echoengine reviews``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from reviewkit import CALLS, open_reviewable, review, reviewed_store
from servicekit import small_bundle


@pytest.fixture(scope="module")
def bundle(synthetic_dataset, tmp_path_factory) -> Path:
    return small_bundle(synthetic_dataset, tmp_path_factory)


@pytest.fixture(scope="module")
def reviewed(bundle, tmp_path_factory):
    return reviewed_store(bundle, tmp_path_factory.mktemp("reviewed") / "store")


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _expected(reviewed) -> pd.DataFrame:
    """What each detection's latest review makes of it: verdict and the species it is."""
    rows = []
    for detection in reviewed.detections:
        said = reviewed.verdicts[detection["id"]]
        if said["status"] == "uncertain":
            continue
        corrected = said.get("species") not in (None, detection["species"])
        verdict = "corrected" if corrected else said["status"]
        label = said["species"] if corrected else detection["species"] if verdict == "confirmed" else ""
        rows.append({"detection_id": detection["id"], "species": detection["species"], "verdict": verdict,
                     "label": label, "start": detection["start"], "end": detection["end"]})
    return pd.DataFrame(rows).sort_values("detection_id", ignore_index=True)


def test_the_export_holds_clips_per_species_recordings_tables_and_negatives(reviewed, tmp_path):
    from echoengine.service.export import export_reviews
    from echoengine.service.reviewed import KEY_LENGTH

    result = export_reviews(reviewed.store, tmp_path / "export")
    out = result.out
    events = pd.read_csv(out / "reviews.csv", keep_default_na=False)
    expected = _expected(reviewed)
    got = events.sort_values("detection_id", ignore_index=True)[["detection_id", "species", "verdict", "label"]]
    pd.testing.assert_frame_equal(got, expected[["detection_id", "species", "verdict", "label"]], check_dtype=False)
    assert set(expected["verdict"]) == {"confirmed", "corrected", "rejected"}  # uncertain ones are not exported
    assert "uncertain" not in set(events["verdict"])
    clips = pd.read_csv(out / "clips" / "meta" / "clips.csv")
    labelled = events[events["verdict"] != "rejected"]
    assert sorted(clips["category"]) == sorted(labelled["label"])  # corrected ones under the corrected species
    for row in clips.itertuples():
        clip = out / "clips" / "audio" / row.filename
        assert clip.parent.name == row.category and clip.name.startswith(row.src_file + "_")
        assert len(row.src_file) == KEY_LENGTH and sf.info(clip).duration > 1.0
    for key, recording in events.groupby("key")["recording"].first().items():  # each recording copied whole
        copy = next((out / "recordings").glob(f"{key}.*[!t]"))
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == recording
    from echoengine.sources import annotation_boxes

    boxes = annotation_boxes(out / "recordings", negatives=out / "negatives")
    positives, negatives = boxes[boxes["positive"]], boxes[~boxes["positive"]]
    assert sorted(positives["label"]) == sorted(labelled["label"])
    wrong = events[events["verdict"] != "confirmed"]  # rejected, and the detected species of corrected ones
    assert sorted(negatives["label"]) == sorted(wrong["species"])
    counts = expected["verdict"].value_counts()
    assert (f"exported {len(events)} reviewed detections of 4 recordings ({counts['confirmed']} confirmed, "
            f"{counts['corrected']} corrected, {counts['rejected']} rejected)") in result.text()


def test_train_reads_the_export_as_it_is(reviewed, tmp_path, synthetic_dataset):
    """The readers of train (single-label clips, the original data with the clips, and multi-label recordings
    with their verified negatives) take the export's folders without a change."""
    from echoengine.config import EchoConfig
    from echoengine.labelkind import label_kind
    from echoengine.service.export import export_reviews

    out = export_reviews(reviewed.store, tmp_path / "export", with_data=synthetic_dataset).out
    config = EchoConfig()
    clips, _ = label_kind(multilabel=False).read(out / "clips", config)
    labels = pd.read_csv(out / "reviews.csv", keep_default_na=False).query("verdict != 'rejected'")["label"]
    assert sorted(clips["label"]) == sorted(labels) and clips["group"].str.len().eq(16).all()
    combined, _ = label_kind(multilabel=False).read(out / "combined.csv", config.replace(
        data={"allow_outside_paths": True}))
    original, _ = label_kind(multilabel=False).read(synthetic_dataset, config)
    assert len(combined) == len(original) + len(clips)
    recordings, boxes = label_kind(multilabel=True).read(out / "recordings", config,
                                                         boxes_source={"negatives": out / "negatives"})
    assert len(recordings) == pd.read_csv(out / "reviews.csv")["recording"].nunique()
    assert boxes["positive"].any() and (~boxes["positive"]).any()


def test_the_combined_table_keeps_the_source_recordings_of_the_original_data(reviewed, synthetic_dataset, tmp_path):
    """--with DATA --group-regex: DATA's clips of one recording share a group in combined.csv, which train reads."""
    from echoengine.config import EchoConfig
    from echoengine.labelkind import label_kind
    from echoengine.service.export import export_reviews

    out = export_reviews(reviewed.store, tmp_path / "export", with_data=synthetic_dataset,
                         group_regex=r"^(\w+_rec\d+)_").out
    combined = pd.read_csv(out / "combined.csv", keep_default_na=False)
    original = combined[~combined["filename"].str.startswith(str((out / "clips").absolute()))]
    assert set(original["src_file"]) == {Path(name).name.rsplit("_", 1)[0] for name in original["filename"]}
    assert original.groupby("src_file").size().min() >= 2  # the a and b files of each recording together
    config = EchoConfig().replace(data={"allow_outside_paths": True})
    table, _ = label_kind(multilabel=False).read(out / "combined.csv", config)  # no regex needed: src_file says
    assert table["group"].str.fullmatch(r"\w+_rec\d+|[0-9a-f]{16}").all()


def test_exports_of_the_same_reviews_are_the_same_files_and_changes_are_never_silent(reviewed, bundle, tmp_path):
    from echoengine.errors import EchoError
    from echoengine.service.export import export_reviews

    first = export_reviews(reviewed.store, tmp_path / "a")
    second = export_reviews(reviewed.store, tmp_path / "b")
    assert _tree(first.out) == _tree(second.out) and len(first.written) == len(_tree(first.out))
    again = export_reviews(reviewed.store, tmp_path / "a")  # into the same folder: nothing to write
    assert again.written == [] and len(again.unchanged) == len(first.written)
    before = _tree(first.out)

    store = tmp_path / "changed"  # a copy of the store where one confirmed detection is rejected afterwards
    shutil.copytree(reviewed.store, store)
    confirmed = next(d for d in reviewed.detections if reviewed.verdicts[d["id"]] == {"status": "confirmed"})
    service, client = open_reviewable(bundle, store)
    review(client, confirmed["id"], "rejected", reviewer="cat")
    service.stop()
    changes = r"\d file\(s\) of an earlier export would change and \d are no longer exported .*--overwrite"
    with pytest.raises(EchoError, match=changes) as refused:
        export_reviews(store, tmp_path / "a")
    assert "\n" not in str(refused.value) and _tree(first.out) == before  # nothing written
    replaced = export_reviews(store, tmp_path / "a", overwrite=True)
    exported = pd.read_csv(tmp_path / "b" / "reviews.csv", keep_default_na=False).set_index("detection_id")
    clip = exported.loc[confirmed["id"], "clip"]
    assert clip in replaced.removed and clip not in _tree(first.out)
    assert _tree(first.out) == _tree(export_reviews(store, tmp_path / "c").out)  # as a fresh export of it


def test_a_folder_that_is_not_a_store_or_holds_no_verdict_is_a_one_line_error(bundle, tmp_path):
    from echoengine.errors import EchoError
    from echoengine.service.export import export_reviews

    with pytest.raises(EchoError, match="not the store folder of echoengine serve"):
        export_reviews(tmp_path, tmp_path / "out")
    service, _ = open_reviewable(bundle, tmp_path / "store")
    service.stop()
    with pytest.raises(EchoError, match="no detection has a latest review of confirmed or rejected"):
        export_reviews(tmp_path / "store", tmp_path / "out")
    with pytest.raises(EchoError, match="not an ISO 8601 time"):
        export_reviews(tmp_path / "store", tmp_path / "out", since="last week")
    assert not (tmp_path / "out").exists()


def test_the_reviews_of_an_export_are_those_of_its_store_and_exclusions_take_whole_recordings(reviewed, tmp_path):
    from echoengine.service.export import export_reviews
    from echoengine.service.reviewed import held_out, read_store, reviewed_events

    store = read_store(reviewed.store)
    export = reviewed_events(export_reviews(reviewed.store, tmp_path / "export").out)
    columns = ["detection_id", "recording", "start", "end", "species", "score", "verdict", "label"]
    pd.testing.assert_frame_equal(store[columns], export[columns], check_dtype=False)
    assert all(Path(p).is_file() for p in export["path"])
    late = export_reviews(reviewed.store, tmp_path / "late", since="2024-05-03T00:00:00Z").out
    kept, left = held_out(store, exclude=[late])
    assert left == (store["time"] >= "2024-05-03").sum() and (kept["time"] < "2024-05-03").all()


def test_compare_scores_both_models_on_held_out_reviews(reviewed, tmp_path, capsys):
    from echoengine.cli import main
    from echoengine.service.compare import compare_models
    from echoengine.service.reviewed import read_store, truth

    other = tmp_path / "other"  # a copy the store never served: judged at its own thresholds.csv
    shutil.copytree(reviewed.bundle, other)
    (other / "thresholds.csv").write_text("class,threshold\n" + "".join(f"{c},0.2\n" for c in (
        "synthetic-croak", "synthetic-harmonic", "synthetic-trill", "synthetic-upsweep")))
    comparison = compare_models(reviewed.bundle, other, reviewed.store)
    table = comparison.table.set_index("species")
    events = read_store(reviewed.store)
    for name in CALLS:
        if name in table.index:
            known = truth(events, name)
            assert table.loc[name, "reviewed"] == (~np.isnan(known)).sum()
            assert table.loc[name, "true"] == (known == 1).sum()
    # the old bundle as the store served it (threshold 0, top-n 2), the copy at its own thresholds
    assert (table["old_threshold"].drop("all") == 0.0).all() and (table["new_threshold"].drop("all") == 0.2).all()
    assert "threshold 0 for every class, top-n 2 (as the store served it: model bundle/1" in comparison.text()
    assert "never served from this store" in comparison.text()
    assert table.loc["all", "old_found"] == table["old_found"].drop("all").sum()
    every = compare_models(reviewed.bundle, other, reviewed.store, overrides={"top_n": 0}).table.set_index("species")
    known = every.drop("all")
    assert (known["old_detections"] == known["reviewed"]).all()  # threshold 0 and every class: all detect
    assert (known["new_detections"] <= known["old_detections"]).all()  # same scores, a higher threshold
    assert main(["reviews", "compare", "--store", str(reviewed.store), str(reviewed.bundle), str(other),
                 "--out", str(tmp_path / "compare.csv")]) == 0
    printed = capsys.readouterr().out
    assert "held-out reviewed detections" in printed and "old P" in printed and (tmp_path / "compare.csv").is_file()
    assert main(["reviews", "compare", "--store", str(reviewed.store), str(reviewed.bundle), str(other),
                 "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("threshold 0.5 for every class") == 2 and "given: --threshold 0.5" in printed
    assert main(["reviews", "compare", "--store", str(reviewed.store), str(reviewed.bundle), str(other),
                 "--since", "2030-01-01"]) == 2
    assert "no reviewed detection left to compare on" in capsys.readouterr().err


def test_a_bundle_is_rescored_as_the_store_served_it(reviewed):
    """With the options recorded for the model that made them (threshold 0, top-n 2), each reviewed event's score
    for its species is the detection's own, and only a window's two best classes have a score."""
    from echoengine.service.recorded import scoring_of
    from echoengine.service.rescore import score_events
    from echoengine.service.reviewed import read_store

    scoring = scoring_of(reviewed.bundle, reviewed.store)
    assert (scoring.options.threshold, scoring.options.top_n) == (0.0, 2)
    events = read_store(reviewed.store)
    scored = score_events(reviewed.bundle, events, scoring.options)
    own = [scored.of(species)[i] for i, species in enumerate(events["species"])]
    np.testing.assert_allclose(own, events["score"], atol=1e-3)
    windows = np.ceil((events["end"] - events["start"]).to_numpy() / 5.0 - 1e-6)  # 5 s windows, none overlapping
    assert (np.isfinite(scored.scores).sum(axis=1) <= 2 * windows).all()
    assert (np.isfinite(scored.scores).sum(axis=1) < len(scored.classes)).any()
    every = score_events(reviewed.bundle, events, scoring_of(reviewed.bundle, reviewed.store,
                                                             overrides={"top_n": 0}).options)
    assert np.isfinite(every.scores).all()
    assert scoring_of(reviewed.bundle, None).options.threshold is None  # no store: the bundle's own thresholds


def test_an_export_never_touches_files_it_did_not_write(reviewed, tmp_path):
    from echoengine.errors import EchoError
    from echoengine.service.export import export_reviews

    mine = tmp_path / "mine"
    (mine / "recordings").mkdir(parents=True)
    (mine / "recordings" / "field-notes.txt").write_text("keep me")
    with pytest.raises(EchoError, match=r"holds files but no reviews\.csv"):
        export_reviews(reviewed.store, mine, overwrite=True)
    out = export_reviews(reviewed.store, tmp_path / "export").out
    (out / "recordings" / "field-notes.txt").write_text("mine too")  # a file of the user's, in an export
    (out / "recordings" / "0123456789abcdef.flac.tmp").write_bytes(b"half")  # what a killed export left
    again = export_reviews(reviewed.store, out, overwrite=True)
    assert again.written == [] and again.removed == []
    assert (out / "recordings" / "field-notes.txt").read_text() == "mine too"
    assert not (out / "recordings" / "0123456789abcdef.flac.tmp").exists()
