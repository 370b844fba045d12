import numpy as np
import pytest
import soundfile as sf
import torch

from echoengine.cache import FeatureCache
from echoengine.catalog import class_names, load_catalog, scan
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset, VariantSampler, make_loader
from echoengine.errors import AudioError


def _table(root, config):
    return scan(load_catalog(root), config.audio)[0]


def test_training_batches_are_images_with_one_hot_labels(synthetic_dataset):
    config = EchoConfig().replace(data={"batch_size": 4})
    table = _table(synthetic_dataset, config)
    classes = class_names(table)
    dataset = ClipDataset(table, classes, config, train=True)
    images, targets = next(iter(make_loader(dataset, config)))
    assert images.shape == (4, 3, 260, 260) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert targets.shape == (4, len(classes)) and torch.equal(targets.sum(dim=1), torch.ones(4))


def test_augmentation_only_in_training_and_variants_are_reproducible(synthetic_dataset, tmp_path):
    config = EchoConfig().replace(augment={"noise_p": 1.0, "rotation_p": 1.0})
    table = _table(synthetic_dataset, config).iloc[:2]
    classes = class_names(_table(synthetic_dataset, config))
    train = ClipDataset(table, classes, config, train=True)
    clean = ClipDataset(table, classes, config, train=False)
    variant_3 = train[(0, 3)][0]
    assert torch.equal(variant_3, train[(0, 3)][0])
    assert not torch.allclose(variant_3, train[(0, 4)][0])
    assert clean.train is False and not torch.allclose(clean[0][0], variant_3, atol=1e-3)
    assert torch.equal(clean[0][0], clean[(0, 3)][0])  # evaluation ignores any variant asked for
    # the same variant comes back from the cache unchanged
    cached = ClipDataset(table, classes, config, train=True, cache=FeatureCache(tmp_path, config))
    assert torch.allclose(cached[(0, 3)][0], variant_3, atol=1e-4)
    assert torch.allclose(cached[(0, 3)][0], variant_3, atol=1e-4)


def test_evaluation_items_are_every_window_of_every_file(synthetic_dataset):
    config = EchoConfig()
    table = _table(synthetic_dataset, config)
    dataset = ClipDataset(table, class_names(table), config, train=False)
    expected = sum(int(np.ceil(max(d, 1e-9) / config.audio.clip_seconds - 1e-9)) for d in table["duration"])
    assert len(dataset) == expected
    assert sorted(set(dataset.rows().tolist())) == list(range(len(table)))


def test_variant_sampler_changes_each_epoch_but_replays_from_the_seed():
    sampler = VariantSampler(10, variants=20, seed=3)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert epoch0 != epoch1 and sorted(i for i, _ in epoch0) == list(range(10))
    assert all(0 <= v < 20 for _, v in epoch0)
    sampler.set_epoch(1)
    assert list(sampler) == epoch1


def test_real_esc50_batch(esc50):
    config = EchoConfig().replace(data={"batch_size": 8})
    table = _table(esc50, config)
    esc10 = table[table["label"].isin(["dog", "rooster", "rain", "sea_waves", "crackling_fire"])]
    dataset = ClipDataset(esc10, class_names(esc10), config, train=True)
    images, targets = next(iter(make_loader(dataset, config)))
    assert images.shape == (8, 3, 260, 260) and targets.sum() == 8
    assert float(images.std()) > 0.05  # real content, not blank padding


def test_a_file_broken_after_the_scan_is_skipped_from_its_batch(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    for i in range(3):
        sf.write(tmp_path / "a" / f"{i}.wav", np.random.default_rng(i).normal(0, 0.1, 48000).astype(np.float32), 48000)
    config = EchoConfig().replace(data={"batch_size": 3})
    table = _table(tmp_path, config)
    (tmp_path / "a" / "1.wav").write_text("overwritten by something else")
    images, targets = next(iter(make_loader(ClipDataset(table, ["a"], config, train=False), config)))
    assert images.shape[0] == 2 and targets.shape == (2, 1)
    assert "1.wav" in caplog.text and "not a readable audio file" in caplog.text
    strict = config.replace(data={"on_error": "raise"})
    with pytest.raises(AudioError, match=r"1\.wav"):
        next(iter(make_loader(ClipDataset(table, ["a"], strict, train=False), strict)))
