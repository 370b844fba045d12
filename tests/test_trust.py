"""Trust: nothing read from a bundle runs code or says where this machine writes; no run loses or keeps stale files."""

from __future__ import annotations

import shutil
from pathlib import Path

import diskcache
import pytest
import torch

from echoengine.bundle import load_bundle
from echoengine.cache import FeatureCache
from echoengine.cli import main
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.layout import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE

# a small, fast model: the tests are about files, not accuracy
_TINY = ["--backbone", "small_cnn", "--head", "linear", "--epochs", "1", "--batch-size", "8", "--quiet"]


class Payload:
    """Unpickling this creates the marker file: proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "bundle"
    cache = tmp_path_factory.mktemp("trust-cache")
    assert main(["train", str(synthetic_dataset), "--out", str(out), "--cache-dir", str(cache), *_TINY]) == 0
    return out


@pytest.fixture
def bundle(trained, tmp_path) -> Path:
    """A private copy of the trained bundle, free to tamper with."""
    return Path(shutil.copytree(trained, tmp_path / "bundle"))


def _an_audio_file(data: Path) -> Path:
    return sorted(data.rglob("*.flac"))[0] if list(data.rglob("*.flac")) else sorted(data.rglob("*.wav"))[0]


def _commands(bundle: Path, data: Path, tmp_path: Path) -> list[list[str]]:
    cache = ["--cache-dir", str(tmp_path / "my-cache")]
    return [
        ["predict", str(bundle), str(_an_audio_file(data)), *cache],
        ["evaluate", str(bundle), str(data), "--out", str(tmp_path / "report"), *cache],
        ["calibrate", str(bundle), str(data), *cache],
        ["export", str(bundle)],
        ["detect", str(bundle), str(_an_audio_file(data)), "--out", str(tmp_path / "detections"), "--quiet"],
    ]


def test_a_weights_file_holding_code_is_refused_by_every_command(bundle, synthetic_dataset, tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"weight": Payload(marker)}, bundle / WEIGHTS_FILE)
    for command in _commands(bundle, synthetic_dataset, tmp_path):
        assert main(command) == 2, command
        assert f"{bundle / WEIGHTS_FILE}: cannot load the weights" in capsys.readouterr().err
        assert not marker.exists(), f"echoengine {command[0]} ran code from weights.pt"


def test_a_checkpoint_holding_code_never_runs_on_resume(bundle, synthetic_dataset, tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"epoch": 1, "keep": "best", "model": Payload(marker)}, bundle / CHECKPOINT_FILE)
    status = main(["train", str(synthetic_dataset), "--out", str(bundle), "--resume", "--epochs", "2", "--quiet",
                   "--cache-dir", str(tmp_path / "cache")])
    assert status == 2
    assert not marker.exists(), "train --resume ran code from checkpoint.pt"
    assert "error:" in capsys.readouterr().err


def test_a_bundle_cannot_choose_the_cache_folder(bundle, synthetic_dataset, tmp_path):
    """A bundle whose config points at a cache folder it ships, holding a pickled payload under the right key."""
    marker, planted, mine = tmp_path / "ran", tmp_path / "planted-cache", tmp_path / "my-cache"
    config = EchoConfig.load(bundle / CONFIG_FILE)
    (bundle / CONFIG_FILE).write_text((bundle / CONFIG_FILE).read_text().replace(
        'cache_dir = ""', f'cache_dir = "{planted}"'))
    assert EchoConfig.load(bundle / CONFIG_FILE).data.cache_dir == str(planted)
    path = _an_audio_file(synthetic_dataset).resolve()
    key = FeatureCache(planted, config).key(path, start=0, length=config.audio.clip_samples, variant=-1)
    with diskcache.Cache(str(planted)) as store:
        store.set(key, Payload(marker))  # diskcache pickles it
    assert main(["predict", str(bundle), str(path), "--cache-dir", str(mine)]) == 0
    assert not marker.exists(), "predict read the cache folder named by the bundle"
    assert len(FeatureCache(mine, config)) > 0  # the command's own cache folder was used
    assert load_bundle(bundle).config.data.cache_dir == ""


def test_a_bundle_stores_none_of_this_machines_settings(trained):
    saved = EchoConfig.load(trained / CONFIG_FILE)
    assert saved.data.cache_dir == "" and saved.data.num_workers == 0 and saved.train.device == "auto"


def test_training_into_an_earlier_bundle_is_refused_unless_overwritten(bundle, synthetic_dataset, tmp_path, capsys):
    (bundle / "model.onnx").write_bytes(b"an old graph")
    (bundle / "thresholds.csv").write_text("label,threshold\n")
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    command = ["train", str(synthetic_dataset), "--out", str(bundle), "--cache-dir", str(tmp_path / "c"), *_TINY]
    assert main(command) == 2
    assert "pass --resume to continue it or --overwrite to replace it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before  # nothing touched
    assert main([*command, "--overwrite"]) == 0
    assert not (bundle / "model.onnx").exists() and not (bundle / "thresholds.csv").exists()
    assert (bundle / WEIGHTS_FILE).is_file()


def test_a_folder_of_someone_elses_files_is_never_cleared(synthetic_dataset, tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.docx").write_text("years of work")
    command = ["train", str(synthetic_dataset), "--out", str(folder), "--overwrite", *_TINY]
    assert main(command) == 2
    assert "holds files echoengine did not write (chapter1.docx)" in capsys.readouterr().err
    assert (folder / "chapter1.docx").read_text() == "years of work"


def test_overwrite_clears_only_what_echoengine_wrote_at_every_depth(trained, tmp_path):
    from echoengine.layout import prepare_output

    earlier = Path(shutil.copytree(trained, tmp_path / "earlier"))
    (earlier / "plots" / "my_notes.txt").write_text("field notes")
    with pytest.raises(EchoError, match=r"did not write .*plots/my_notes.txt"):
        prepare_output(earlier, overwrite=True)
    assert (earlier / "plots" / "my_notes.txt").is_file() and (earlier / WEIGHTS_FILE).is_file()
    figures = tmp_path / "figures"  # names echoengine uses, but no run of it: someone's folder
    (figures / "plots").mkdir(parents=True)
    (figures / "plots" / "map.png").write_bytes(b"png")
    with pytest.raises(EchoError, match="did not write"):
        prepare_output(figures, overwrite=True)
    assert (figures / "plots" / "map.png").is_file()


def test_the_demo_never_clears_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "frog.wav").write_bytes(b"RIFF")
    assert main(["demo", "--out", str(tmp_path / "project"), "--quiet"]) == 2
    assert "did not write (data)" in capsys.readouterr().err
    assert (tmp_path / "project" / "data" / "frog.wav").is_file()


def test_an_onnx_graph_of_older_weights_is_an_error(bundle):
    from echoengine.exporting import bundle_onnx_session, export_onnx

    export_onnx(bundle)
    assert bundle_onnx_session(bundle) is not None
    state = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    torch.save({name: value + 0.01 if value.is_floating_point() else value for name, value in state.items()},
               bundle / WEIGHTS_FILE)
    with pytest.raises(EchoError, match=r"exported from other weights.*run: echoengine export"):
        bundle_onnx_session(bundle)


def test_outputs_the_user_names_are_not_overwritten_silently(synthetic_dataset, tmp_path, capsys):
    for command, out in (["split", str(synthetic_dataset)], tmp_path / "splits.csv"), (["config"], tmp_path / "c.toml"):
        out.write_text("mine")
        assert main([*command, "--out", str(out)]) == 2
        assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "mine"
        assert main([*command, "--out", str(out), "--overwrite"]) == 0
        assert f"wrote {out}" in capsys.readouterr().out and out.read_text() != "mine"


def test_preview_names_the_file_it_writes(synthetic_dataset, tmp_path, capsys):
    assert main(["preview", str(synthetic_dataset), "--out", str(tmp_path / "grid"), "--n", "2"]) == 0
    assert f"wrote {tmp_path / 'grid.png'} " in capsys.readouterr().out
    assert (tmp_path / "grid.png").is_file() and not (tmp_path / "grid").exists()
    assert main(["preview", str(synthetic_dataset), "--out", str(tmp_path / "grid"), "--n", "2"]) == 2
