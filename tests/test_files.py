"""Files are written whole or not at all, and a bundle names its own files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from echoengine import layout
from echoengine.bundle import load_bundle, save_atomic
from echoengine.config import EchoConfig
from echoengine.files import temporary_path, write_atomic, write_csv_atomic, write_text_atomic
from echoengine.layout import WEIGHTS_FILE, Bundle, BundleFiles, CrossValidationFiles, write_metadata
from echoengine.models import build_model


def test_write_atomic_replaces_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    assert write_atomic(path, lambda temporary: temporary.write_text("new")) == path
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "history.csv"
    path.write_text("old")

    def write(temporary: Path) -> None:
        temporary.write_text("half a fi")
        raise error

    with pytest.raises(type(error)):
        write_atomic(path, write)
    assert path.read_text() == "old"
    assert not temporary_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    def write(temporary: Path) -> None:
        temporary.write_text("x")
        raise ValueError("no rows")

    with pytest.raises(ValueError, match="no rows"):
        write_atomic(tmp_path / "new.csv", write)
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_name_is_the_one_run_folders_recognise(tmp_path):
    assert temporary_path(tmp_path / "weights.pt") == tmp_path / "weights.pt.tmp"
    assert any(Path("weights.pt.tmp").match(pattern) for pattern in layout._RUN_FILES)


def test_write_text_atomic_and_save_atomic(tmp_path):
    assert write_text_atomic(tmp_path / "a.txt", "frog\n").read_text(encoding="utf-8") == "frog\n"
    save_atomic({"bias": torch.ones(2)}, tmp_path / WEIGHTS_FILE)
    assert torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)["bias"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", WEIGHTS_FILE]


def test_bundle_files_name_every_file(tmp_path):
    files = Bundle(tmp_path, EchoConfig(), ["a"], None).files
    assert files == BundleFiles(str(tmp_path))
    expected = {"config": "echoengine.toml", "classes": "classes.txt", "weights": "weights.pt",
                "checkpoint": "checkpoint.pt", "history": "history.csv", "selection_history": "selection_history.csv",
                "splits": "splits.csv", "annotations": "annotations.csv", "metrics": "metrics.json",
                "thresholds": "thresholds.csv", "onnx": "model.onnx", "per_class": "per_class.csv",
                "test_predictions": "test_predictions.csv", "plots": "plots", "confusion_plot": "plots/confusion.png",
                "training_plot": "plots/training.png", "tensorboard": "tensorboard", "probe": "probe"}
    assert {name: getattr(files, name) for name in expected} == {k: tmp_path / v for k, v in expected.items()}
    assert files.per_class_at("window") == tmp_path / "per_class_window.csv"


def test_cross_validation_files_name_every_file(tmp_path):
    files = CrossValidationFiles(str(tmp_path))
    expected = {"folds": "folds.csv", "cv_folds": "cv_folds.csv", "metrics": "metrics.json",
                "oof_predictions": "oof_predictions.csv", "annotations": "annotations.csv", "plots": "plots",
                "confusion_plot": "plots/confusion.png", "accuracy_plot": "plots/cv_val_accuracy.png"}
    assert {name: getattr(files, name) for name in expected} == {k: tmp_path / v for k, v in expected.items()}
    assert files.fold(3) == BundleFiles(tmp_path / "fold3")
    assert any(Path("fold3").match(pattern) for pattern in layout._RUN_FILES)


def test_write_csv_atomic_writes_the_table(tmp_path):
    table = pd.DataFrame({"path": ["a.wav", "b.wav"], "part": ["train", "test"]})
    path = write_csv_atomic(tmp_path / "splits.csv", table, index=False)
    assert path == tmp_path / "splits.csv"
    assert path.read_text() == "path,part\na.wav,train\nb.wav,test\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits.csv"]


@pytest.mark.parametrize("name", ["splits.csv.gz", "splits.csv.zip", "splits.csv.bz2"])
def test_write_csv_atomic_compresses_as_the_final_name_says(tmp_path, name):
    table = pd.DataFrame({"path": ["a.wav"], "part": ["train"]})
    write_csv_atomic(tmp_path / name, table, index=False)
    assert pd.read_csv(tmp_path / name).equals(table)  # pandas infers the compression from the name
    table.to_csv(tmp_path / f"direct-{name}", index=False)
    assert (tmp_path / name).read_bytes()[:2] == (tmp_path / f"direct-{name}").read_bytes()[:2]


class _FailingTable:
    """A table whose ``to_csv`` writes half a file, then fails (a full disk, a kill)."""

    def to_csv(self, path, **options) -> None:
        Path(path).write_text("path,pa")
        raise OSError("No space left on device")


def test_a_failed_csv_write_keeps_the_old_table(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_text("path,part\na.wav,train\n")
    with pytest.raises(OSError, match="No space left"):
        write_csv_atomic(path, _FailingTable(), index=False)
    assert path.read_text() == "path,part\na.wav,train\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits.csv"]


def test_a_failed_config_save_keeps_the_old_config(tmp_path, monkeypatch):
    path = EchoConfig().save(tmp_path / "echoengine.toml")
    before = path.read_text()

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(KeyboardInterrupt):
        EchoConfig().replace(train={"epochs": 3}).save(path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["echoengine.toml"]


def test_a_figure_is_written_whole_under_its_own_name(tmp_path):
    from echoengine import plots

    path = plots.plot_confusion(np.array([[2, 0], [1, 3]]), ["frog", "owl"], tmp_path / "plots" / "confusion.png")
    assert path == tmp_path / "plots" / "confusion.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.png"]


def test_a_loaded_bundle_names_its_files(tmp_path):
    config = EchoConfig().replace(model={"backbone": "small_cnn", "head": "echo"})
    folder = write_metadata(tmp_path / "bundle", config, ["frog", "owl"])
    torch.save(build_model(config.model, 2).state_dict(), folder / WEIGHTS_FILE)
    files = load_bundle(folder).files
    assert files.splits == folder / "splits.csv"
    assert files.weights.is_file() and files.config.is_file() and files.classes.is_file()
    assert not files.onnx.exists()


def test_file_names_are_shared_with_the_modules_that_read_them():
    from echoengine import detection, exporting, thresholds

    assert detection.THRESHOLDS_FILE == thresholds.THRESHOLDS_FILE == layout.THRESHOLDS_FILE
    assert exporting.ONNX_FILE == layout.ONNX_FILE
