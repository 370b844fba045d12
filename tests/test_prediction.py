"""predict in bounded memory: streamed windows give the whole-file answer; the ONNX graph fed in chunks."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from echoengine import audio, catalog
from echoengine.bundle import load_bundle, save_atomic
from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.exporting import export_onnx, onnx_session
from echoengine.layout import write_metadata
from echoengine.models import build_model
from echoengine.prediction import predict_table
from echoengine.scoring import pool_windows, predict_files, score_stream, window_scorer

SMALL_FRONTEND = {"n_mels": 128, "image_height": 128, "image_width": 96}


@pytest.fixture(scope="module")
def cnn_bundle(synthetic_dataset, tmp_path_factory):
    """small_cnn trained for a few seconds on the synthetic calls (its answers differ by file), exported to ONNX."""
    from echoengine.training import fit

    config = EchoConfig().replace(model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
                                  train={"epochs": 3, "device": "cpu", "learning_rate": 1e-2}, frontend=SMALL_FRONTEND)
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    out = tmp_path_factory.mktemp("predict") / "bundle"
    fit(table, table, catalog.class_names(table), config, out, progress=False, log=lambda line: None)
    export_onnx(out, check=[table["path"].iloc[0]])
    return load_bundle(out)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """47 s of tones over noise at 44.1 kHz: 9 windows and a partial one, five 10 s blocks to stream and resample."""
    rng = np.random.default_rng(3)
    t = np.arange(44100 * 47) / 44100
    y = 0.05 * rng.normal(size=len(t)) + 0.3 * np.sin(2 * np.pi * (2000 + 40 * t) * t) * (t % 7 < 2)
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, y.astype(np.float32), 44100)
    return path


def _table(paths) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in paths], "label": "", "group": [str(p) for p in paths]})


def _real_files(esc50, soundscapes) -> list:
    # ESC-50 clips (5 s at 44.1 kHz: one window), a stereo Ogg shorter than a window, 45 s and 60 s soundscapes
    return [*sorted((esc50 / "audio").glob("*.flac"))[:5], soundscapes / "robin.ogg",
            soundscapes / "great_plains_toad.flac", soundscapes / "birds_1min.flac"]


def test_streamed_predictions_equal_the_whole_file_path_on_real_recordings(cnn_bundle, esc50, soundscapes):
    files = _real_files(esc50, soundscapes)
    expected = predict_table([cnn_bundle], _table(files))
    got = predict_files([cnn_bundle], files, block_seconds=7.0)  # the 60 s file: 9 blocks
    assert got.shape == (len(files), len(cnn_bundle.classes)) and not np.isnan(got).any()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.ptp(got, axis=0).max() > 0.05  # a trained model: the files get different answers


def test_a_file_over_several_stream_blocks_is_predicted_as_a_whole(cnn_bundle, long_file):
    expected = predict_table([cnn_bundle], _table([long_file]))
    for block_seconds, batch_size in ((10.0, 3), (60.0, 16)):
        got = predict_files([cnn_bundle], [long_file], block_seconds=block_seconds, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_multilabel_models_pool_windows_by_their_max(long_file, tmp_path):
    config = EchoConfig().replace(model={"backbone": "small_cnn", "head": "linear", "multilabel": True},
                                  frontend=SMALL_FRONTEND)
    write_metadata(tmp_path / "multi", config, ["a", "b", "c"])
    torch.manual_seed(0)
    save_atomic(build_model(config.model, 3).state_dict(), tmp_path / "multi" / "weights.pt")
    bundle = load_bundle(tmp_path / "multi")
    expected = predict_table([bundle], _table([long_file]))
    got = predict_files([bundle], [long_file], block_seconds=10.0)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert got.sum() > 1.0  # sigmoids, not a softmax


def test_an_unreadable_file_is_reported_in_one_line_and_the_others_predicted(cnn_bundle, long_file, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    lines = []
    for onnx in (False, True):
        got = predict_files([cnn_bundle], [bad, long_file], onnx=onnx, log=lines.append)
        assert np.isnan(got[0]).all() and np.isclose(got[1].sum(), 1.0)
    assert len(lines) == 2 and all(line.startswith(f"error: {bad}: ") for line in lines)


def test_streamed_predictions_fill_and_read_the_feature_cache(cnn_bundle, long_file, tmp_path):
    cache = FeatureCache(tmp_path / "cache", cnn_bundle.config)
    uncached = predict_files([cnn_bundle], [long_file])
    filled = predict_files([cnn_bundle], [long_file], cache=cache)
    assert len(cache) == 10  # one image per window, under keys of their own (not the dataset's)
    from_cache = predict_files([cnn_bundle], [long_file], cache=cache)
    # no cache, a cold one and a warm one: the same images (rounded as the cache stores them), the same answer
    np.testing.assert_array_equal(filled, uncached)
    np.testing.assert_array_equal(from_cache, uncached)
    np.testing.assert_allclose(predict_table([cnn_bundle], _table([long_file]), cache=cache), uncached, atol=1e-5)


def test_the_onnx_graph_fed_in_chunks_gives_its_answer_on_the_whole_waveform(cnn_bundle):
    session = onnx_session(cnn_bundle.path / "model.onnx")
    clip = cnn_bundle.config.audio.clip_samples
    rng = np.random.default_rng(0)
    y = (0.1 * rng.normal(size=int(clip * 7.3)) + np.sin(np.arange(int(clip * 7.3)) * 0.3)).astype(np.float32)
    whole, whole_windows = session.run(None, {"waveform": y})
    scorer = window_scorer([cnn_bundle], onnx=True)
    for batch_size in (1, 2, 100):  # 8, 4 and 1 graph runs
        windows = score_stream(scorer, [y], batch_size=batch_size)
        assert windows.shape == whole_windows.shape == (8, len(cnn_bundle.classes))
        np.testing.assert_allclose(windows, whole_windows, atol=1e-6)
        np.testing.assert_allclose(pool_windows(windows), whole, atol=1e-6)
    blocks = np.split(y, [1000, 1001, clip * 3 + 17])  # blocks that cut windows anywhere
    windows = score_stream(scorer, blocks, batch_size=2)
    np.testing.assert_allclose(windows, whole_windows, atol=1e-6)
    np.testing.assert_allclose(pool_windows(windows), whole, atol=1e-6)


def test_predict_with_onnx_streams_long_files_and_gives_the_pytorch_answer(cnn_bundle, long_file, soundscapes):
    files = [long_file, soundscapes / "robin.ogg", soundscapes / "birds_1min.flac"]
    session = onnx_session(cnn_bundle.path / "model.onnx")
    whole = np.stack([session.run(None, {"waveform": audio.load(f, cnn_bundle.config.audio)})[0] for f in files])
    got = predict_files([cnn_bundle], files, onnx=True, block_seconds=7.0, batch_size=3)
    np.testing.assert_allclose(got, whole, atol=1e-4)
    np.testing.assert_allclose(got, predict_files([cnn_bundle], files), atol=1e-4)


def test_a_graph_on_embeddings_is_fed_in_chunks_too(cnn_bundle, synthetic_dataset, long_file, tmp_path):
    from echoengine.training import fit

    config = EchoConfig().replace(model={"embedder": f"cnn:{cnn_bundle.path}", "head": "linear"},
                                  train={"epochs": 1, "device": "cpu"})
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    fit(table, table, catalog.class_names(table), config, tmp_path / "head", progress=False, log=lambda line: None)
    path, _ = export_onnx(tmp_path / "head", check=[long_file])
    head, session = load_bundle(tmp_path / "head"), onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["embeddings"]
    y = audio.load(long_file, head.config.audio)
    scorer = window_scorer([head], onnx=True)
    whole = score_stream(scorer, [y], batch_size=100)  # every clip embedded and scored in one run
    windows = score_stream(scorer, [y], batch_size=1)
    assert windows.shape == whole.shape == (10, len(head.classes))
    np.testing.assert_allclose(windows, whole, atol=1e-6)
    got = predict_files([head], [long_file], onnx=True, block_seconds=10.0, batch_size=3)
    np.testing.assert_allclose(got, predict_files([head], [long_file]), atol=1e-4)
