import numpy as np
import pytest

from echoengine.clips import fixed_windows, pad_to_length, random_crop, window_starts


def test_random_crop_is_a_contiguous_subsection_and_reproducible():
    y = np.arange(1000, dtype=np.float32)
    a = random_crop(y, length=100, rng=np.random.default_rng(7))
    b = random_crop(y, length=100, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) == 1)
    starts = {int(random_crop(y, length=100, rng=np.random.default_rng(s))[0]) for s in range(50)}
    assert len(starts) > 40 and max(starts) <= 900


def test_short_signals_are_padded_with_silence():
    y = np.ones(30, dtype=np.float32)
    end = random_crop(y, length=100, rng=np.random.default_rng(0))
    assert end[:30].sum() == 30 and end[30:].sum() == 0
    centred = pad_to_length(y, length=100, where="center")
    assert centred[35:65].sum() == 30 and len(centred) == 100
    with pytest.raises(ValueError, match="needs an rng"):
        pad_to_length(y, length=100, where="random")


@pytest.mark.parametrize("n_samples", [1, 99, 100, 101, 250, 1000, 1001])
@pytest.mark.parametrize(("length", "hop"), [(100, 100), (100, 50), (100, 30)])
def test_windows_cover_every_sample(n_samples, length, hop):
    starts = window_starts(n_samples, length=length, hop=hop)
    assert starts[0] == 0 and np.all(np.diff(starts) == hop)
    covered = np.zeros(n_samples, dtype=bool)
    for s in starts:
        covered[s : s + length] = True
    assert covered.all()
    assert starts[-1] < n_samples  # no window entirely past the end


def test_a_hop_longer_than_the_window_is_refused():
    with pytest.raises(ValueError, match="hop <= length"):
        window_starts(250, length=100, hop=300)


def test_fixed_windows_pad_the_last_one():
    y = np.arange(1, 251, dtype=np.float32)
    windows, starts = fixed_windows(y, length=100, hop=100)
    assert starts.tolist() == [0, 100, 200]
    np.testing.assert_array_equal(windows.ravel()[:250], y)
    assert windows[-1, 50:].sum() == 0
    assert fixed_windows(y, length=100, hop=100, keep_partial=False)[0].shape == (2, 100)
