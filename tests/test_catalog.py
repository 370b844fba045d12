import logging

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from echoengine import catalog, splits
from echoengine.errors import AudioError, DataError


def _touch_audio(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(4800, np.float32), 48000)


def test_folder_per_class(tmp_path):
    for name in ["zebra/b.wav", "zebra/a.flac", "Élan/x.ogg", "蛙/sub/y.wav", ".hidden/z.wav", "zebra/.dot.wav"]:
        _touch_audio(tmp_path / name)
    (tmp_path / "zebra" / "notes.txt").write_text("not audio")
    table = catalog.from_folder(tmp_path)
    assert catalog.class_names(table) == sorted(["zebra", "Élan", "蛙"])
    assert len(table) == 4
    assert table.loc[table["label"] == "zebra", "path"].str.endswith(("a.flac", "b.wav")).all()


def test_group_regex(tmp_path):
    for name in ["owl/site1_001.wav", "owl/site1_002.wav", "owl/site2_001.wav"]:
        _touch_audio(tmp_path / name)
    table = catalog.from_folder(tmp_path, group_regex=r"^(site\d+)_")
    assert table["group"].nunique() == 2
    with pytest.raises(DataError, match="does not match the file name"):
        catalog.from_folder(tmp_path, group_regex=r"^rec(\d+)")


def test_esc50_csv_and_folder(esc50):
    from_folder = catalog.load_catalog(esc50)
    from_csv = catalog.load_catalog(esc50 / "meta" / "esc50.csv")
    pd.testing.assert_frame_equal(from_folder, from_csv)
    assert len(from_csv) == 414 and len(catalog.class_names(from_csv)) == 50
    assert from_csv["group"].nunique() < 414  # clips of one src_file share a group


def test_kfold_never_leaks_a_source_recording(esc50, caplog):
    table = catalog.load_catalog(esc50)
    with pytest.raises(DataError, match="only 1 in: 'washing_machine'"):
        splits.kfold(table, folds=5, sparse_classes="error")
    trained_only = splits.kfold(table, folds=5, seed=0)  # the default: in every fold's training part
    assert set(table.label[trained_only == splits.TRAIN_ONLY]) == {"washing_machine"}
    folds = splits.kfold(table, folds=5, seed=0, sparse_classes="drop")
    np.testing.assert_array_equal(np.where(trained_only == splits.TRAIN_ONLY, splits.EXCLUDED, trained_only), folds)
    assert "hand_saw (3)" in caplog.text  # warned: missing from some folds
    kept = table.assign(fold=folds)[folds >= 0]
    assert set(table.label) - set(kept.label) == {"washing_machine"}
    assert sorted(set(kept.fold)) == [0, 1, 2, 3, 4]
    assert (kept.groupby("group")["fold"].nunique() == 1).all()
    # stratified: every class with 5 or more recordings sits in every fold
    groups = kept.groupby("label")["group"].nunique()
    spread = kept.groupby("label")["fold"].nunique()
    assert (spread[groups >= 5] == 5).all() and (spread == np.minimum(groups, 5)).all()
    np.testing.assert_array_equal(folds, splits.kfold(table, folds=5, seed=0, sparse_classes="drop"))
    assert not np.array_equal(folds, splits.kfold(table, folds=5, seed=1, sparse_classes="drop"))


def test_train_val_test_split_is_grouped_and_near_the_fractions(esc50):
    table = catalog.load_catalog(esc50)
    parts = splits.split(table, val_fraction=0.15, test_fraction=0.15, seed=0, sparse_classes="drop")
    assert set(table.label[parts == "excluded"]) == {"washing_machine"}
    table, parts = table[parts != "excluded"], parts[parts != "excluded"]
    shares = pd.Series(parts).value_counts(normalize=True)
    assert 0.6 < shares["train"] < 0.8 and 0.08 < shares["val"] < 0.22 and 0.08 < shares["test"] < 0.22
    # every class with 3 or more recordings is in every part
    spread = table.assign(part=parts).groupby("label").agg(parts=("part", "nunique"), groups=("group", "nunique"))
    assert (spread.loc[spread.groups >= 3, "parts"] == 3).all()
    assert (table.assign(part=parts).groupby("group")["part"].nunique() == 1).all()
    np.testing.assert_array_equal(parts, splits.split(table, val_fraction=0.15, test_fraction=0.15, seed=0))


def test_a_class_with_one_recording_trains_by_default_and_is_never_tested(caplog):
    table = pd.DataFrame({"path": [f"{i}.wav" for i in range(12)],
                          "label": ["frog"] * 9 + ["bat"] * 3,
                          "group": [f"g{i}" for i in range(9)] + ["b0", "b0", "b0"]})
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        folds = splits.kfold(table, folds=3)
    assert (folds[9:] == splits.TRAIN_ONLY).all() and set(folds[:9]) == {0, 1, 2}
    assert "3-fold cross-validation: trained on but never tested (a single source recording): bat" in caplog.text
    parts = splits.split(table)
    assert (parts[9:] == "train").all() and {"val", "test"} <= set(parts[:9])
    with pytest.raises(DataError, match=r"at least 2 source recordings per class.*only 1 in: 'bat'.*drop"):
        splits.kfold(table, folds=5, sparse_classes="error")
    with pytest.raises(DataError, match="only 1 in: 'bat'"):
        splits.split(table, sparse_classes="error")
    assert (splits.kfold(table, folds=3, sparse_classes="drop")[9:] == splits.EXCLUDED).all()
    assert (splits.split(table, sparse_classes="drop")[9:] == "excluded").all()
    with pytest.raises(DataError, match="no label"):
        splits.kfold(table.assign(label=""), folds=3)


def test_scan_keeps_good_files_and_reports_bad_ones(bad_corpus, caplog):
    root, expected = bad_corpus
    usable, errors = catalog.scan(catalog.from_folder(root), on_error="warn")
    good = sorted(name for name, words in expected.items() if words is None)
    assert sorted(p.rsplit("/", 1)[-1] for p in usable["path"]) == good
    assert len(errors) == len(expected) - len(good)
    assert len(caplog.records) == len(errors)
    assert all(r.getMessage().startswith("skipping ") and "\n" not in r.getMessage() for r in caplog.records)
    with pytest.raises(AudioError):
        catalog.scan(catalog.from_folder(root), on_error="raise")


def test_a_recording_split_over_class_folders_stays_in_one_fold(tmp_path):
    for label in ["owl", "frog"]:
        for rec in range(4):
            for clip in range(2):
                _touch_audio(tmp_path / label / f"rec{rec}_{clip}.wav")
    table = catalog.from_folder(tmp_path, group_regex=r"^(rec\d+)_")
    assert table["group"].nunique() == 4
    folds = splits.kfold(table, folds=2, seed=0)
    assert (table.assign(fold=folds).groupby("group")["fold"].nunique() == 1).all()


def test_too_small_datasets_give_a_data_error():
    table = pd.DataFrame({"path": ["a", "b", "c", "d"], "label": ["x", "x", "y", "y"], "group": ["1", "2", "3", "4"]})
    with pytest.raises(DataError, match="cannot make 5 parts from 4 source recording"):
        splits.kfold(table, folds=5)
    parts = splits.split(table, test_fraction=0.1, val_fraction=0.1)
    assert sorted(parts[:2]) == sorted(parts[2:]) == ["test", "train"]  # 2 recordings: one each


def test_kfold_names_the_classes_too_small_for_the_folds_and_the_fix(caplog):
    # 3 classes of 4 recordings: 5 folds cannot be stratified (scikit-learn refused in its own words)
    table = pd.DataFrame({"path": [f"{i}.wav" for i in range(12)], "label": ["frog", "owl", "bat"] * 4,
                          "group": [f"g{i}" for i in range(12)]})
    with pytest.raises(DataError) as info:
        splits.kfold(table, folds=5)
    message = str(info.value)
    assert "5-fold cross-validation" in message and "\n" not in message
    assert all(f"{label} (4 recordings, 4 files)" in message for label in ("frog", "owl", "bat"))
    assert "--folds 4 or fewer" in message
    assert sorted(set(splits.kfold(table, folds=4))) == [0, 1, 2, 3]  # the fix it suggests works
    # one class too small for the folds: kept, with a warning naming it, its recordings and the fix (as cv does)
    table = pd.DataFrame({"path": [f"{i}.wav" for i in range(13)], "label": ["frog"] * 10 + ["bat"] * 3,
                          "group": [f"g{i}" for i in range(13)]})
    caplog.clear()
    folds = splits.kfold(table, folds=5)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and len(set(folds[10:])) == 3
    assert "bat (3)" in caplog.text and "--folds 3" in caplog.text and "frog" not in caplog.text


def _esc50_csv(root, filenames):
    for name in ["a.wav", "b.wav"]:
        _touch_audio(root / "audio" / name)
    rows = [f"{name},{i % 2},{'owl' if i % 2 else 'frog'}" for i, name in enumerate(filenames)]
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("filename,target,category\n" + "\n".join(rows) + "\n")
    return root / "meta" / "esc50.csv"


@pytest.mark.parametrize("bad", ["../../secret.wav", "../meta/x.wav", "ABSOLUTE"])
def test_csv_rows_outside_the_dataset_folder_are_refused(tmp_path, bad):
    outside = tmp_path / "elsewhere" / "secret.wav"
    _touch_audio(outside)
    root = tmp_path / "esc"
    bad = str(outside) if bad == "ABSOLUTE" else bad
    csv = _esc50_csv(root, ["a.wav", "b.wav", bad])
    with pytest.raises(DataError) as info:
        catalog.load_catalog(root)
    message = str(info.value)
    assert message.startswith(f"{csv}: row 3 (line 4) names {bad!r}, outside the dataset folder")
    assert "--allow-outside-paths" in message and "data.allow_outside_paths" in message
    with pytest.raises(DataError, match="row 3"):
        catalog.from_csv(csv, audio_dir=root / "audio")
    from echoengine.config import DataConfig

    table = catalog.load_catalog(root, DataConfig(allow_outside_paths=True))
    assert len(table) == 3
    inside = catalog.from_csv(_esc50_csv(tmp_path / "ok", ["a.wav", "sub/../b.wav"]))
    assert len(inside) == 2
