import numpy as np
import torch

from echoengine.augment import WaveformAugmenter, mixup, rotate, spec_augment, variant_seed
from echoengine.config import AugmentConfig


def _signal(rng) -> np.ndarray:
    t = np.arange(16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 0.01, len(t))).astype(np.float32)


def test_variant_k_is_reproducible_from_seed_and_k(rng):
    y = _signal(rng)
    augment = WaveformAugmenter(AugmentConfig(noise_p=1, time_stretch_p=1, pitch_shift_p=1, shift_p=1),
                                sample_rate=16000)
    first = augment(y, seed=variant_seed(0, 3, "a.wav"))
    again = augment(y, seed=variant_seed(0, 3, "a.wav"))
    other = augment(y, seed=variant_seed(0, 4, "a.wav"))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.shape == y.shape and first.dtype == np.float32


def test_global_random_state_is_left_untouched(rng):
    augment = WaveformAugmenter(AugmentConfig(noise_p=1), sample_rate=16000)
    np.random.seed(99)  # noqa: NPY002
    expected = np.random.random()  # noqa: NPY002
    np.random.seed(99)  # noqa: NPY002
    augment(_signal(rng), seed=1)
    assert np.random.random() == expected  # noqa: NPY002


def test_each_augmentation_switches_off_with_p_zero(rng):
    y = _signal(rng)
    off = AugmentConfig(noise_p=0, time_stretch_p=0, pitch_shift_p=0, shift_p=0)
    augment = WaveformAugmenter(off, sample_rate=16000)
    assert not augment.active
    np.testing.assert_array_equal(augment(y, seed=5), y)
    noise_only = WaveformAugmenter(AugmentConfig(noise_p=1, time_stretch_p=0, pitch_shift_p=0, shift_p=0),
                                   sample_rate=16000)
    difference = noise_only(y, seed=5) - y
    assert 0.001 <= difference.std() <= 0.015  # the Echo pipeline's noise amplitude range


def test_spec_augment_masks_stay_within_limits():
    spec = torch.arange(200 * 50, dtype=torch.float32).reshape(200, 50) + 1
    out = spec_augment(spec, time_masks=2, time_mask_fraction=0.1, freq_masks=2, freq_mask_fraction=0.2,
                       generator=torch.Generator().manual_seed(3))
    masked = out == spec.min()
    masked_rows = masked.all(dim=1).sum()
    masked_cols = masked.all(dim=0).sum()
    assert 0 < masked_rows <= 2 * 20 and 0 < masked_cols <= 2 * 10
    again = spec_augment(spec, time_masks=2, time_mask_fraction=0.1, freq_masks=2, freq_mask_fraction=0.2,
                         generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_rotation_is_small_and_keeps_the_centre():
    image = torch.zeros(1, 65, 65)
    image[0, 32, :] = 1.0  # a horizontal line through the centre
    turned = rotate(image, degrees=2.0)
    assert float(turned[0, 32, 32]) > 0.9
    assert float(turned[0, 32, 2]) < 0.9 and float(turned[0, 33, 2]) > 0.0  # the ends moved by a pixel
    assert torch.equal(rotate(image, degrees=0.0), image)


def test_mixup_mixes_inputs_and_targets_alike():
    inputs = torch.arange(8, dtype=torch.float32).reshape(8, 1) * 10  # example i holds 10 i
    targets = torch.eye(8)
    mixed_x, mixed_y = mixup(inputs, targets, alpha=0.4, rng=np.random.default_rng(0))
    assert torch.allclose(mixed_y.sum(dim=1), torch.ones(8))
    # each input is the same blend of examples as its target says
    assert torch.allclose(mixed_x[:, 0], mixed_y @ inputs[:, 0], atol=1e-5)
    assert (mixed_y.max(dim=1).values < 0.999).sum() >= 4  # most examples really are mixed


def test_variants_are_the_same_when_computed_from_several_threads(rng):
    from concurrent.futures import ThreadPoolExecutor

    y = _signal(rng)
    augment = WaveformAugmenter(AugmentConfig(noise_p=1, shift_p=1, time_stretch_p=0.5), sample_rate=16000)
    seeds = [variant_seed(0, k, "a.wav") for k in range(16)]
    serial = [augment(y, seed=s) for s in seeds]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda s: augment(y, seed=s), seeds))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded))
