"""Embeddings computed ahead on Ray: the values of a local run, and a training run that finds them all cached."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from echoengine import catalog, sources
from echoengine.bundle import save_atomic
from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.embeddings import EmbeddingDataset
from echoengine.layout import write_metadata
from echoengine.models import build_model
from echoengine.rayembed import EmbedResult, key_chunks
from echoengine.synthetic import make_dataset

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[distributed]' runs these tests")


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory):
    """12 synthetic clips and a config for a linear head trained by epochs on a random small_cnn's embeddings."""
    root = tmp_path_factory.mktemp("embed")
    data = make_dataset(root / "data", classes=3, files_per_class=4, seed=0)
    embedder = EchoConfig().replace(audio={"sample_rate": 16000}, model={"backbone": "small_cnn", "head": "linear"},
                                    frontend={"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400,
                                              "n_fft": 1024, "fmax": 7000.0})
    write_metadata(root / "cnn", embedder, ["a", "b", "c"])
    torch.manual_seed(0)
    save_atomic(build_model(embedder.model, 3).state_dict(), root / "cnn" / "weights.pt")
    config = EchoConfig().replace(
        audio={"sample_rate": 16000}, frontend={"fmax": 7000.0},
        model={"embedder": f"cnn:{root / 'cnn'}", "head": "linear"},
        train={"solver": "sgd", "epochs": 2, "device": "cpu"}, augment={"embedding_variants": 2},
        data={"batch_size": 4, "val_fraction": 0.25, "test_fraction": 0.25})
    return root, data, config.save(root / "head.toml")


def _echoengine(*args):
    done = subprocess.run([sys.executable, "-m", "echoengine", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _values(config, data, cache_dir) -> dict:
    table, _ = sources.labelled_files(data, config)
    found = {}
    for train in (True, False):
        dataset = EmbeddingDataset(table, catalog.class_names(table), config, train=train,
                                   cache=FeatureCache(cache_dir, config))
        for key in dataset.embedding_keys():
            found[train, key] = dataset.cache.get(dataset.embedding_cache_key(*key))
    return found


@pytest.mark.slow  # 70 s on 2 busy cores: a Ray instance, two embedding runs and a training run
def test_embeddings_on_ray_equal_a_local_runs_and_training_finds_them(embedding_run):
    root, data, config_file = embedding_run
    on_ray = _echoengine("embed", data, "--config", config_file, "--cache-dir", root / "ray-cache", "--engine", "ray",
                         "--ray-workers", "2", "--quiet")
    assert "ray: 2 CPUs on 1 node(s)" in on_ray.stderr
    _echoengine("embed", data, "--config", config_file, "--cache-dir", root / "local-cache", "--quiet")
    config = EchoConfig.load(config_file)
    ray_values, local_values = _values(config, data, root / "ray-cache"), _values(config, data, root / "local-cache")
    count = len(ray_values)  # 12 clips x 2 variants, and every clean window of the 12 files
    assert count > 36 and on_ray.stdout.startswith(f"{count} clip embeddings computed, 0 already cached")
    assert all(value is not None for value in ray_values.values())
    assert all(np.array_equal(ray_values[key], local_values[key]) for key in ray_values)  # the very same values
    again = _echoengine("embed", data, "--config", config_file, "--cache-dir", root / "ray-cache", "--quiet")
    assert again.stdout.startswith(f"0 clip embeddings computed, {count} already cached")
    entries = len(FeatureCache(root / "ray-cache", config))
    _echoengine("train", data, "--config", config_file, "--cache-dir", root / "ray-cache", "--out", root / "bundle",
                "--quiet")
    assert len(FeatureCache(root / "ray-cache", config)) == entries  # training embedded nothing new


def test_embed_needs_an_embedder_and_the_cache(embedding_run, tmp_path):
    _, data, _ = embedding_run
    done = subprocess.run([sys.executable, "-m", "echoengine", "embed", str(data), "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "give a config with model.embedder" in done.stderr
    assert key_chunks(list(range(300)), batch=32, batches=4)[-1] == list(range(256, 300))
    assert EmbedResult(3, 4, 1).text() == "3 clip embeddings computed, 4 already cached, 1 unreadable"
