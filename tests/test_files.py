"""Files are written whole or not at all, and a bundle names its own files."""

from pathlib import Path

import pytest
import torch

from echoengine import bundle as bundle_module
from echoengine.bundle import WEIGHTS_FILE, Bundle, BundleFiles, load_bundle, save_atomic, write_metadata
from echoengine.config import EchoConfig
from echoengine.files import temporary_path, write_atomic, write_text_atomic
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
    assert any(Path("weights.pt.tmp").match(pattern) for pattern in bundle_module._RUN_FILES)


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
                "thresholds": "thresholds.csv", "onnx": "model.onnx"}
    assert {name: getattr(files, name) for name in expected} == {k: tmp_path / v for k, v in expected.items()}


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

    assert detection.THRESHOLDS_FILE == thresholds.THRESHOLDS_FILE == bundle_module.THRESHOLDS_FILE
    assert exporting.ONNX_FILE == bundle_module.ONNX_FILE
