import os

import numpy as np
import soundfile as sf
import torch

from echoengine.cache import FeatureCache
from echoengine.catalog import load_catalog, scan
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset


def _dataset(root, config, cache):
    table, _ = scan(load_catalog(root), config.audio)
    return ClipDataset(table, ["a"], config, train=False, cache=cache)


def _write(root, seed):
    (root / "a").mkdir(exist_ok=True)
    y = np.random.default_rng(seed).normal(0, 0.1, 48000 * 2).astype(np.float32)
    sf.write(root / "a" / "x.wav", y, 48000)


def test_hit_then_miss_when_the_config_changes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data, 0)
    config = EchoConfig()
    cache = FeatureCache(tmp_path / "cache", config)
    first = _dataset(data, config, cache)[0][0]
    assert len(cache) == 1
    again = _dataset(data, config, cache)[0][0]
    assert torch.allclose(first, again, atol=1e-5) and len(cache) == 1
    # a different front end must not be served the old features
    changed = config.replace(frontend={"n_mels": 128})
    other = _dataset(data, changed, FeatureCache(tmp_path / "cache", changed))[0][0]
    assert len(cache) == 2
    assert not torch.allclose(first, other, atol=1e-3)


def test_augmentation_settings_key_augmented_variants_only(tmp_path):
    path = tmp_path / "f.wav"
    path.write_bytes(b"x")
    config = EchoConfig()
    augmented = config.replace(augment={"noise_p": 0.9})

    def key(cfg, variant):
        return FeatureCache(tmp_path / "cache", cfg).key(path, start=0, length=1, variant=variant)

    assert key(config, -1) == key(augmented, -1)
    assert key(config, 3) != key(augmented, 3)
    assert key(config, 3) != key(config, 4)
    # settings that act after the cache or only choose among variants do not invalidate it
    assert key(config, 3) == key(config.replace(augment={"variants": 5, "mixup_p": 0.5}), 3)


def test_a_changed_file_is_not_served_stale_features(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data, 0)
    config = EchoConfig()
    cache = FeatureCache(tmp_path / "cache", config)
    before = _dataset(data, config, cache)[0][0]
    _write(data, 1)
    os.utime(data / "a" / "x.wav", ns=(1, 1))  # even with an old mtime: size or mtime_ns differ
    after = _dataset(data, config, cache)[0][0]
    assert not torch.allclose(before, after, atol=1e-3)
    content = FeatureCache(tmp_path / "cache2", config.replace(data={"cache_identity": "content"}))
    before_key = content.key(data / "a" / "x.wav", start=0, length=1, variant=-1)
    _write(data, 2)  # edited while the same cache object is in use
    assert content.key(data / "a" / "x.wav", start=0, length=1, variant=-1) != before_key
    # a byte-identical copy elsewhere has the same content identity
    (tmp_path / "copy.wav").write_bytes((data / "a" / "x.wav").read_bytes())
    copy_key = content.key(tmp_path / "copy.wav", start=0, length=1, variant=-1)
    assert copy_key == content.key(data / "a" / "x.wav", start=0, length=1, variant=-1)


def test_cache_is_shared_by_dataloader_workers(tmp_path, synthetic_dataset):
    config = EchoConfig().replace(data={"num_workers": 2, "batch_size": 4})
    cache = FeatureCache(tmp_path / "cache", config)
    table, _ = scan(load_catalog(synthetic_dataset), config.audio)
    from echoengine.catalog import class_names
    from echoengine.dataset import make_loader

    dataset = ClipDataset(table.iloc[:8], class_names(table), config, train=False, cache=cache)
    batches = list(make_loader(dataset, config))
    assert sum(len(b[0]) for b in batches) == len(dataset)
    assert len(cache) == len(dataset)
    cached = list(make_loader(dataset, config))
    for (x1, _), (x2, _) in zip(batches, cached):
        assert torch.allclose(x1, x2, atol=1e-5)
