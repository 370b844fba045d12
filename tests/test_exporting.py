"""ONNX export: the graph front end, parity with PyTorch on real clips, a fresh onnxruntime process."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from echoengine import audio, catalog
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.exporting import GraphFrontend, export_onnx
from echoengine.features import MelFrontend


@pytest.fixture(scope="module")
def cnn_bundle(synthetic_dataset, tmp_path_factory):
    from echoengine.training import fit

    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "echo"}, train={"epochs": 2, "device": "cpu"},
        frontend={"n_mels": 128, "image_height": 128, "image_width": 96},
    )
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    out = tmp_path_factory.mktemp("export") / "bundle"
    fit(table, table, catalog.class_names(table), config, out, progress=False, log=lambda line: None)
    return out


def test_the_graph_front_end_equals_the_torch_front_end_on_real_clips(esc50):
    config = EchoConfig()
    files = sorted((esc50 / "audio").glob("*.wav"))[:4] or sorted((esc50 / "audio").iterdir())[:4]
    clips = torch.stack([torch.from_numpy(np.resize(audio.load(f, config.audio), config.audio.clip_samples))
                         for f in files])
    difference = (GraphFrontend(config)(clips) - MelFrontend.from_config(config)(clips)).abs().max()
    assert difference < 1e-4


def test_export_checks_itself_on_real_recordings_of_any_length(cnn_bundle, soundscapes):
    # 2.7 s (shorter than a clip), 10 s, 60 s: one, two and twelve windows
    files = [soundscapes / "robin.ogg", soundscapes / "birds_10s.flac", soundscapes / "birds_1min.flac"]
    path, difference = export_onnx(cnn_bundle, check=files)
    assert path == cnn_bundle / "model.onnx" and path.is_file()
    assert difference <= 1e-4


def test_an_export_that_disagrees_fails_and_leaves_nothing(cnn_bundle, soundscapes, tmp_path):
    with pytest.raises(EchoError, match="export check failed"):
        export_onnx(cnn_bundle, out=tmp_path / "bad.onnx", check=[soundscapes / "robin.ogg"], tolerance=-1.0)
    assert not list(tmp_path.iterdir())


def test_the_exported_model_runs_in_a_fresh_process_with_only_onnxruntime(cnn_bundle, soundscapes):
    path, _ = export_onnx(cnn_bundle, check=[soundscapes / "robin.ogg"])
    script = f"""
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
waveform = np.random.default_rng(0).normal(0, 0.1, 48000 * 12).astype(np.float32)
probabilities, windows = session.run(None, {{"waveform": waveform}})
assert "torch" not in sys.modules and "echoengine" not in sys.modules
print(probabilities.shape, windows.shape, round(float(probabilities.sum()), 4))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(4,) (3, 4) 1.0"


def test_predict_with_onnx_gives_the_pytorch_answer(cnn_bundle, soundscapes, capsys):
    from echoengine.cli import main

    export_onnx(cnn_bundle, check=[soundscapes / "robin.ogg"])
    files = [str(soundscapes / "birds_10s.flac"), str(soundscapes / "great_plains_toad.flac")]
    assert main(["predict", str(cnn_bundle), *files, "--format", "csv", "--no-cache"]) == 0
    torch_out = capsys.readouterr().out
    assert main(["predict", str(cnn_bundle), *files, "--format", "csv", "--onnx"]) == 0
    assert capsys.readouterr().out == torch_out


def test_the_export_command_reports_the_checked_difference(cnn_bundle, soundscapes, capsys):
    from echoengine.cli import main

    assert main(["export", str(cnn_bundle), "--check", str(soundscapes / "ruffed_grouse_drum.flac")]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "max probability difference" in out
    assert main(["export", str(cnn_bundle.parent / "missing")]) == 2
    assert "neither a model bundle" in capsys.readouterr().err
