import numpy as np
import pytest
import torch
from PIL import Image

from echoengine import audio
from echoengine.clips import crop_at
from echoengine.config import EchoConfig
from echoengine.features import MelFrontend, reference_mel_db, resize_matrix


def max_db_error(clips: np.ndarray, config: EchoConfig) -> float:
    frontend = MelFrontend.from_config(config)
    with torch.inference_mode():
        ours = frontend.mel_db(torch.from_numpy(clips)).numpy()
    return max(float(np.abs(o - reference_mel_db(y, config)).max()) for o, y in zip(ours, clips))


def test_shapes_and_range(rng):
    frontend = MelFrontend.from_config(EchoConfig())
    waveforms = torch.from_numpy(rng.normal(0, 0.1, (3, 240000)).astype(np.float32))
    assert frontend.mel_db(waveforms).shape == (3, 260, 1201)
    images = frontend(waveforms)
    assert images.shape == (3, 3, 260, 260)
    assert float(images.min()) == 0.0 and abs(float(images.max()) - 1.0) < 1e-6
    assert torch.equal(images[:, 0], images[:, 2])


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the Echo settings
        {"frontend": {"window": "hamming", "n_mels": 64, "fmax": 8000}},
        {"frontend": {"win_length": 1024, "hop_length": 256}},  # window applied in time
        {"frontend": {"fmin": 0, "fmax": 24000, "power": 1.0, "top_db": None}},
        {"audio": {"sample_rate": 22050}, "frontend": {"n_fft": 1024, "hop_length": 256, "n_mels": 128,
                                                       "fmax": 11025, "htk": True, "norm": "none"}},
    ],
)
def test_matches_librosa_on_synthetic_signals(changes, rng):
    config = EchoConfig().replace(**changes)
    n = config.audio.sample_rate * 3
    t = np.arange(n) / config.audio.sample_rate
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    clips = np.stack([chirp + rng.normal(0, 0.01, n), rng.normal(0, 0.2, n) * (t < 1.5)]).astype(np.float32)
    assert max_db_error(clips, config) <= 0.01


def test_matches_librosa_within_0_01_db_on_real_clips(esc50, soundscapes):
    config = EchoConfig()
    length = config.audio.clip_samples
    files = sorted((esc50 / "audio").glob("*.flac"))[::20]  # 21 classes' worth of ESC-50
    clips = [crop_at(audio.load(f, config.audio), start=0, length=length) for f in files]
    for name in ["birds_10s.flac", "great_plains_toad.flac", "humpback_whale.ogg", "robin.ogg", "spinetail.flac"]:
        clips.append(crop_at(audio.load(soundscapes / name, config.audio, duration=5.0), start=0, length=length))
    assert max_db_error(np.stack(clips), config) <= 0.01


def test_gradients_flow_and_batches_do_not_change_results(rng):
    frontend = MelFrontend.from_config(EchoConfig())
    x = torch.from_numpy(rng.normal(0, 0.1, (3, 48000)).astype(np.float32))
    with torch.inference_mode():
        one_by_one = torch.cat([frontend.mel_db(x[i : i + 1]) for i in range(3)])
        together = frontend.mel_db(x)
    assert torch.allclose(one_by_one, together, atol=1e-4)
    x.requires_grad_(True)
    frontend(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_silence_gives_a_black_image_not_noise():
    images = MelFrontend.from_config(EchoConfig())(torch.zeros(2, 240000))
    assert float(images.abs().max()) == 0.0


def test_lanczos_kernel_matches_pil():
    rng = np.random.default_rng(0)
    data = rng.random((1201, 260)).astype(np.float32)
    ours = resize_matrix(1201, 260, method="lanczos3") @ data.astype(np.float64)
    pil = np.asarray(Image.fromarray(data, mode="F").resize((260, 260), Image.LANCZOS))
    assert np.abs(ours - pil).max() < 1e-5
    bilinear = resize_matrix(1201, 260, method="bilinear") @ data
    pil = np.asarray(Image.fromarray(data, mode="F").resize((260, 260), Image.BILINEAR))
    assert np.abs(bilinear - pil).max() < 1e-5


def test_resize_rows_sum_to_one_and_antialias_weighs_frames_evenly():
    smooth = resize_matrix(1201, 260)
    np.testing.assert_allclose(smooth.sum(axis=1), 1.0)
    # How much each input frame counts in the output: even with antialiasing,
    # very uneven in the Echo pipeline's tf.image.resize call (no antialias).
    inner = slice(20, -20)
    smooth_weight = smooth.sum(axis=0)[inner]
    aliasing_weight = resize_matrix(1201, 260, antialias=False).sum(axis=0)[inner]
    assert smooth_weight.min() > 0.2 and smooth_weight.max() < 0.23
    assert aliasing_weight.min() < 0.1 and aliasing_weight.max() > 0.9


def test_runs_on_gpu_like_on_cpu(rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    frontend = MelFrontend.from_config(EchoConfig())
    x = torch.from_numpy(rng.normal(0, 0.1, (2, 240000)).astype(np.float32))
    cpu = frontend(x)
    gpu = frontend.to("cuda")(x.cuda()).cpu()
    assert float((cpu - gpu).abs().max()) < 1e-3
