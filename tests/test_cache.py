import logging
import os
import pickle
import sqlite3

import diskcache
import numpy as np
import pytest
import soundfile as sf
import torch

from echoengine.cache import FeatureCache
from echoengine.catalog import load_catalog, scan
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset
from echoengine.embeddings import EmbeddingCache


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


# ---- a cache folder is untrusted data: never unpickled, a damaged one never stops a run -------------------------


class _Payload:
    """What an attacker plants: unpickling it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle ran')",))


def _big_image():
    # 260 x 260 uint16 is over diskcache's 32 KB: stored in a value file, not in cache.db
    return np.random.default_rng(0).random((260, 260), dtype=np.float32)


def _rows(folder):
    with sqlite3.connect(folder / "cache.db") as db:
        return db.execute("SELECT key, mode, filename FROM Cache").fetchall()


def _edit_rows(folder, **columns):
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute(f"UPDATE Cache SET {assignments}", tuple(columns.values()))


def _plant_through_diskcache(folder, key, marker, value):
    with diskcache.Cache(str(folder)) as raw:  # diskcache's default Disk pickles any object
        raw.set(key, _Payload(marker))


def _plant_large_pickle_through_diskcache(folder, key, marker, value):
    with diskcache.Cache(str(folder)) as raw:
        raw.set(key, [_Payload(marker), bytes(100_000)])  # pickled into a value file


def _plant_pickle_mode_in_the_database(folder, key, marker, value):
    _edit_rows(folder, mode=4, filename=None, size=0, value=pickle.dumps(_Payload(marker)))


def _plant_pickle_in_the_value_file(folder, key, marker, value):
    ((_, _, filename),) = _rows(folder)
    (folder / filename).write_bytes(pickle.dumps(_Payload(marker)))


def _plant_pickle_in_the_value_file_and_mode(folder, key, marker, value):
    _plant_pickle_in_the_value_file(folder, key, marker, value)
    _edit_rows(folder, mode=4)


PLANTS = [_plant_through_diskcache, _plant_large_pickle_through_diskcache, _plant_pickle_mode_in_the_database,
          _plant_pickle_in_the_value_file, _plant_pickle_in_the_value_file_and_mode]


def _feature_cache(folder, path):
    cache = FeatureCache(folder, EchoConfig())
    return cache, cache.key(path, start=0, length=10, variant=-1), _big_image()


def _embedding_cache(folder, path):
    cache = EmbeddingCache(folder, EchoConfig(), "test-embedder")
    value = np.random.default_rng(1).normal(size=(3, 4096)).astype(np.float32)  # 48 KB: a value file
    return cache, cache.key(path, start=0, length=10, variant=-1), value


@pytest.mark.parametrize("make_cache", [_feature_cache, _embedding_cache], ids=["features", "embeddings"])
@pytest.mark.parametrize("plant", PLANTS, ids=lambda plant: plant.__name__.removeprefix("_plant_"))
def test_a_pickle_planted_in_the_cache_folder_never_runs(tmp_path, make_cache, plant, caplog):
    folder, marker = tmp_path / "cache", tmp_path / "marker"
    cache, key, value = make_cache(folder, __file__)
    cache.put(key, value)
    cache.close()
    plant(folder, key, marker, value)
    cache, key, value = make_cache(folder, __file__)  # a later run
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        assert cache.get(key) is None
    assert not marker.exists()
    assert str(folder) in caplog.text  # dropped, with a warning naming the folder
    assert len(cache) == 0
    cache.put(key, value)  # recomputed and stored again
    again = cache.get(key)
    assert again is not None and not marker.exists()


def test_pickled_keys_are_never_unpickled_either(tmp_path):
    folder, marker = tmp_path / "cache", tmp_path / "marker"
    cache, key, value = _feature_cache(folder, __file__)
    cache.put(key, value)
    _edit_rows(folder, raw=0, key=pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="pickled key"):
        list(FeatureCache(folder, EchoConfig()).store)  # diskcache unpickles non-raw keys when it lists them
    assert not marker.exists()


def test_an_edited_row_cannot_read_or_delete_a_file_outside_the_cache(tmp_path, caplog):
    folder, outside = tmp_path / "cache", tmp_path / "precious.val"
    cache, key, value = _feature_cache(folder, __file__)
    cache.put(key, value)
    ((_, _, filename),) = _rows(folder)
    outside.write_bytes((folder / filename).read_bytes())  # a valid entry, but not one of the cache's files
    _edit_rows(folder, filename=os.path.relpath(outside, folder))
    again, key, _ = _feature_cache(folder, __file__)
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        assert again.get(key) is None
    assert "outside the cache" in caplog.text
    again.clear()
    assert outside.exists()


@pytest.mark.parametrize("setting", ["disk__directory", "_disk", "get"])
def test_an_edited_settings_table_cannot_move_or_break_the_cache(tmp_path, setting, caplog):
    folder, outside = tmp_path / "cache", tmp_path / "elsewhere"
    outside.mkdir()
    cache, key, value = _feature_cache(folder, __file__)
    cache.put(key, value)
    with sqlite3.connect(folder / "cache.db") as db:  # diskcache sets every Settings row as an attribute
        db.execute("INSERT INTO Settings VALUES (?, ?)", (setting, str(outside)))
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        cache, key, value = _feature_cache(folder, __file__)
        assert cache.get(key) is None  # uncached, with one warning: never a traceback
        cache.put(cache.key(__file__, start=1, length=10, variant=-1), value)
    assert cache.broken and str(folder) in caplog.text
    assert not any(outside.iterdir())


def test_training_through_a_poisoned_cache_never_runs_the_pickle(tiny_training, tmp_path, one_torch_thread):
    from echoengine.cli import main

    data, config = tiny_training
    folder, marker = tmp_path / "cache", tmp_path / "marker"
    quick = ["--config", str(config), "--backbone", "small_cnn", "--epochs", "1", "--cache-dir", str(folder), "--quiet"]
    assert main(["train", str(data), "--out", str(tmp_path / "first"), *quick]) == 0
    assert len(_rows(folder)) > 0
    _edit_rows(folder, mode=4, filename=None, size=0, value=pickle.dumps(_Payload(marker)))
    assert main(["train", str(data), "--out", str(tmp_path / "second"), *quick]) == 0
    assert not marker.exists()
    assert all(mode != 4 for _, mode, _ in _rows(folder))  # every poisoned entry was dropped and recomputed


def _one_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data, 0)
    return data


def _value_files(folder):
    return [folder / filename for _, _, filename in _rows(folder) if filename]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path):
    path.write_bytes(np.random.default_rng(7).bytes(path.stat().st_size))


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbage"])
def test_a_damaged_value_file_is_dropped_and_recomputed_with_one_warning(tmp_path, damage, caplog):
    data, folder = _one_file(tmp_path), tmp_path / "cache"
    config = EchoConfig()  # 260 x 260 images: value files
    first = _dataset(data, config, FeatureCache(folder, config))[0][0]
    (value_file,) = _value_files(folder)
    damage(value_file)
    cache = FeatureCache(folder, config)
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        again = _dataset(data, config, cache)[0][0]
        assert cache.get(cache.key(data / "a" / "x.wav", start=0, length=config.audio.clip_samples,
                                   variant=-1)) is not None  # stored again, readable
    assert torch.equal(again, first)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(folder) in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert len(cache) == 1


def test_many_damaged_entries_give_one_warning(tmp_path, caplog):
    folder = tmp_path / "cache"
    cache = FeatureCache(folder, EchoConfig())
    keys = [cache.key(__file__, start=start, length=10, variant=-1) for start in range(3)]
    for key in keys:
        cache.put(key, _big_image())
    for value_file in _value_files(folder):
        _garble(value_file)
    cache = FeatureCache(folder, EchoConfig())
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        assert [cache.get(key) for key in keys] == [None, None, None]
    assert len([record for record in caplog.records if record.levelno >= logging.WARNING]) == 1
    assert len(cache) == 0


def test_a_garbage_cache_database_means_an_uncached_run_with_one_warning(tmp_path, caplog):
    data, folder = _one_file(tmp_path), tmp_path / "cache"
    folder.mkdir()
    garbage = np.random.default_rng(3).bytes(8192)
    (folder / "cache.db").write_bytes(garbage)
    config = EchoConfig()
    uncached = _dataset(data, config, None)[0][0]
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        cache = FeatureCache(folder, config)
        images = [_dataset(data, config, cache)[0][0] for _ in range(2)]
    assert all(torch.equal(image, uncached) for image in images)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(folder) in warnings[0] and "going on without it" in warnings[0]
    assert cache.broken and len(cache) == 0
    assert (folder / "cache.db").read_bytes() == garbage  # the user's folder is left as it was


def test_training_goes_on_uncached_over_a_garbage_cache_database(tiny_training, tmp_path, one_torch_thread, caplog):
    from echoengine.cli import main

    data, config = tiny_training
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"not a database, " * 512)
    with caplog.at_level(logging.WARNING, logger="echoengine"):
        assert main(["train", str(data), "--config", str(config), "--out", str(tmp_path / "b"), "--epochs", "1",
                     "--cache-dir", str(folder), "--quiet"]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    mentions = [message for message in warnings if str(folder) in message]
    assert len(mentions) == 1 and mentions[0].startswith(f"feature cache {folder} cannot be opened")


# ---- a run uses the same values whether they come from the cache or not -------------------------------------------


def test_an_image_is_the_same_from_a_miss_a_hit_and_no_cache(tmp_path):
    data, folder = _one_file(tmp_path), tmp_path / "cache"
    config = EchoConfig()
    for variant_config, train in ((config, False), (config.replace(augment={"variants": 2}), True)):
        table, _ = scan(load_catalog(data), variant_config.audio)
        item = (0, 1) if train else 0

        def image(cache, variant_config=variant_config, table=table, train=train, item=item):
            return ClipDataset(table, ["a"], variant_config, train=train, cache=cache)[item][0]

        cache = FeatureCache(folder, variant_config)
        miss, hit, uncached = image(cache), image(cache), image(None)
        assert torch.equal(miss, hit) and torch.equal(miss, uncached)


def test_embeddings_are_the_same_from_a_miss_and_a_hit(tmp_path):
    cache = EmbeddingCache(tmp_path, EchoConfig(), "test-embedder")
    value = np.random.default_rng(2).normal(size=(2, 1024))  # float64, as an embedder might give
    cache.put("k", value)
    hit = cache.get("k")
    assert hit.dtype == np.float32 and hit.flags.writeable
    np.testing.assert_array_equal(hit, value.astype(np.float32))
    assert EmbeddingCache(tmp_path, EchoConfig(), "test-embedder").get("k").tobytes() == hit.tobytes()


def test_a_command_with_the_default_limit_never_shrinks_a_larger_cache(tmp_path):
    large = FeatureCache(tmp_path, EchoConfig().replace(data={"cache_size_gb": 20}))
    large.put(large.key(__file__, start=0, length=10, variant=-1), np.zeros((4, 4), np.float32))
    large.close()
    default = FeatureCache(tmp_path, EchoConfig())  # e.g. predict: the bundle's config holds no cache settings
    assert default.store.size_limit == 20 * 2**30 and len(default) == 1
