"""The front end: waveforms to mel spectrograms in dB to model images, as one torch module.

:class:`MelFrontend` is used by training and by inference alike, built from
the :class:`~echoengine.config.FrontendConfig` saved with every model, so a
model never meets a front end it was not trained with.

What it computes equals ``librosa.power_to_db(librosa.feature.melspectrogram(...))``
with the same settings (within 0.01 dB; see ``tests/test_features.py`` and
``bench/frontend.py``). It is faster because it skips work the config makes
useless:

* the STFT's frames are views into the padded signal (no copies), and the
  Hann (or Hamming) window is applied in the frequency domain as a 3-tap
  filter on the bins below ``fmax`` only, instead of to every sample of
  every frame;
* only the FFT bins that the mel filter bank uses are squared and summed,
  without a complex ``abs`` (no square root, no complex temporaries);
* the mel filter bank, over 99 % zeros, is applied as a sparse matrix to
  those bins only, rather than as one full dense product;
* frames are processed in chunks that stay in the CPU cache.

Two limits. With ``top_db = None`` bins far below the loudest (more than
about 120 dB down) hold float32 rounding noise rather than librosa's
values; the default ``top_db = 80`` floors them. And large temporaries are
allocated for every clip: in a process that makes many, call
:func:`echoengine.runtime.keep_freed_memory` (the ``echoengine`` command and
its loader workers do), or glibc's page faults make the front end up to 2x
slower.

The model image
---------------
The dB spectrogram is laid out time x mels (the Echo pipeline's layout:
height is time, width is mel bands), resized to ``image_height x
image_width``, min-max scaled to [0, 1] per example and repeated to
``image_channels`` channels.

The resize is a separable linear map computed once per input length
(:func:`resize_matrix`). ``resize = "lanczos5"`` is the kernel the Echo
pipeline named (``tf.image.resize(..., method="lanczos5")``). That call left
TensorFlow's ``antialias`` at False: when 1201 frames shrink to 260 rows,
each row interpolates the 10 frames around its centre with a kernel sized
for the input's spacing, so nothing is low-passed before the 4.6x shrink.
The result aliases: how much a frame counts depends on where it falls
between two rows (from 0.08 to 0.97 of a row, against 0.21 to 0.22 with
antialiasing), so a short call can fade or stand out depending on its
position. With ``resize_antialias = True`` (our default) the kernel is
stretched by the shrink factor, as PIL and ``torch.nn.functional.interpolate(
..., antialias=True)`` do. ``resize_antialias = False`` reproduces the Echo
pipeline's resize. On real ESC-50 clips the two images differ by a mean of
about 0.02 on the [0, 1] scale (``bench/frontend.py`` measures it); our
Lanczos kernel with ``a = 3`` matches PIL's ``Image.LANCZOS`` to 1e-5
(``tests/test_features.py``).

Examples
--------
>>> import torch
>>> from echoengine.config import FrontendConfig
>>> frontend = MelFrontend(FrontendConfig(), sample_rate=48000)
>>> images = frontend(torch.zeros(2, 240000))
>>> tuple(images.shape), float(images.min()), float(images.max())
((2, 3, 260, 260), 0.0, 0.0)
"""

from __future__ import annotations

import math
import warnings

import librosa
import numpy as np
import torch
from torch import nn

from echoengine.config import EchoConfig, FrontendConfig

__all__ = ["FEATURES_VERSION", "MelFrontend", "mel_filter_bank", "reference_mel_db", "resize_matrix"]

# Frames processed at once on the CPU: enough to amortise per-call overhead,
# few enough for their spectra to stay in the cache.
_CPU_CHUNK_FRAMES = 600
# Cosine-sum windows (a0 - a1 cos) that are applied in the frequency domain.
_COSINE_WINDOWS = {"hann": (0.5, 0.5), "hamming": (0.54, 0.46)}
#: Version of the feature computation; the feature cache keys on it, so bump it
#: whenever a change to this module changes the numbers it produces.
FEATURES_VERSION = 1


def mel_filter_bank(config: FrontendConfig, *, sample_rate: int) -> np.ndarray:
    """librosa's mel filter bank for a front-end config.

    Returns
    -------
    np.ndarray, shape (n_mels, n_fft // 2 + 1), float32

    Examples
    --------
    >>> mel_filter_bank(FrontendConfig(), sample_rate=48000).shape
    (260, 1025)
    """
    return librosa.filters.mel(
        sr=sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        htk=config.htk,
        norm="slaney" if config.norm == "slaney" else None,
        dtype=np.float32,
    )


def reference_mel_db(y: np.ndarray, config: EchoConfig) -> np.ndarray:
    """What :meth:`MelFrontend.mel_db` must equal: librosa's mel spectrogram in dB.

    ``librosa.power_to_db(librosa.feature.melspectrogram(y, ...))`` with the
    config's settings, for one signal; used by the tests and benchmarks.

    Returns
    -------
    np.ndarray, shape (n_mels, frames)
    """
    fe = config.frontend
    mel = librosa.feature.melspectrogram(
        y=y, sr=config.audio.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length, win_length=fe.win_length,
        window=fe.window, center=fe.center, pad_mode=fe.pad_mode, power=fe.power, n_mels=fe.n_mels,
        fmin=fe.fmin, fmax=fe.fmax, htk=fe.htk, norm="slaney" if fe.norm == "slaney" else None,
    )
    return librosa.power_to_db(mel, ref=fe.ref, amin=fe.amin, top_db=fe.top_db)


def _kernel(name: str, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if name.startswith("lanczos"):
        a = int(name[len("lanczos") :])
        return np.where(x < a, np.sinc(x) * np.sinc(x / a), 0.0)
    if name == "bilinear":
        return np.maximum(1.0 - x, 0.0)
    if name == "bicubic":  # Keys cubic with a = -0.5, as TensorFlow's "bicubic"
        a = -0.5
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x <= 1, near, np.where(x < 2, far, 0.0))
    raise ValueError(f"unknown resize kernel {name!r}")


def _kernel_radius(name: str) -> float:
    return {"bilinear": 1.0, "bicubic": 2.0}.get(name) or float(name[len("lanczos") :])


def resize_matrix(n_in: int, n_out: int, *, method: str = "lanczos5", antialias: bool = True) -> np.ndarray:
    """The linear map that resizes a length-``n_in`` axis to ``n_out`` samples.

    Pixel centres sit at half-integers (as in TensorFlow, PIL and torch with
    ``align_corners=False``). With ``antialias`` the kernel is widened by the
    shrink factor when downsampling. Taps outside the input are dropped and
    each row's weights renormalised to sum to 1.

    Returns
    -------
    np.ndarray, shape (n_out, n_in), float64

    Examples
    --------
    >>> m = resize_matrix(4, 2, method="bilinear")
    >>> m.round(3).tolist()
    [[0.429, 0.429, 0.143, 0.0], [0.0, 0.143, 0.429, 0.429]]
    >>> bool(np.allclose(resize_matrix(5, 5), np.eye(5)))
    True
    """
    inv_scale = n_in / n_out
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    radius = _kernel_radius(method) * kernel_scale
    centres = (np.arange(n_out) + 0.5) * inv_scale
    matrix = np.zeros((n_out, n_in))
    for row, centre in enumerate(centres):
        first = max(math.floor(centre - radius), 0)
        last = min(math.ceil(centre + radius), n_in)
        taps = np.arange(first, last)
        weights = _kernel(method, (taps + 0.5 - centre) / kernel_scale)
        total = weights.sum()
        if total != 0:
            matrix[row, first:last] = weights / total
    return matrix


def _sparse(matrix: np.ndarray) -> torch.Tensor:
    """A float32 CSR tensor (torch calls its sparse CSR support beta; we use only its matmul)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(matrix, dtype=torch.float32).to_sparse_csr()


class MelFrontend(nn.Module):
    """Waveform batch -> mel spectrogram in dB -> model image, on CPU or GPU.

    Parameters
    ----------
    config : FrontendConfig
    sample_rate : int
        Sample rate of the waveforms it will be given.

    Examples
    --------
    >>> frontend = MelFrontend.from_config(EchoConfig())
    >>> frontend.mel_db(torch.zeros(1, 48000)).shape
    torch.Size([1, 260, 241])
    """

    def __init__(self, config: FrontendConfig, *, sample_rate: int) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = sample_rate
        bank = mel_filter_bank(config, sample_rate=sample_rate)
        used = np.flatnonzero(bank.any(axis=0))
        if len(used) == 0:
            raise ValueError("the mel filter bank is empty: check fmin, fmax and n_fft")
        self._bin_start, self._bin_stop = int(used[0]), int(used[-1]) + 1
        win_length = config.win_length or config.n_fft
        cosine = _COSINE_WINDOWS.get(config.window)
        n_bins = config.n_fft // 2 + 1
        self._window_in_frequency = (
            cosine is not None and win_length == config.n_fft and self._bin_start >= 1 and self._bin_stop < n_bins
        )
        scale = 1.0
        if self._window_in_frequency:
            a0, a1 = cosine
            self._neighbour_weight = a1 / (2 * a0)
            scale = a0**config.power  # the bins are computed divided by a0
        else:
            window = librosa.filters.get_window(config.window, win_length, fftbins=True)
            window = librosa.util.pad_center(window, size=config.n_fft)
            self.register_buffer("window", torch.as_tensor(window, dtype=torch.float32), persistent=False)
        # Over 99 % of the filter bank is zeros: a sparse product skips them.
        used_bank = bank[:, self._bin_start : self._bin_stop] * scale
        self.register_buffer("mel_weights", _sparse(used_bank), persistent=False)
        self._resize_cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor | None]] = {}

    @classmethod
    def from_config(cls, config: EchoConfig) -> MelFrontend:
        """The front end of a full config (its sample rate and front-end section)."""
        return cls(config.frontend, sample_rate=config.audio.sample_rate)

    # ---- spectrogram --------------------------------------------------------
    def _frames(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, frames, n_fft) views of the padded waveforms."""
        cfg = self.config
        if cfg.center:
            half = cfg.n_fft // 2
            waveforms = nn.functional.pad(waveforms.unsqueeze(1), (half, half), mode=cfg.pad_mode).squeeze(1)
        if waveforms.shape[-1] < cfg.n_fft:
            raise ValueError(f"waveform of {waveforms.shape[-1]} samples is shorter than n_fft={cfg.n_fft}")
        return waveforms.unfold(-1, cfg.n_fft, cfg.hop_length)

    def _power(self, frames: torch.Tensor) -> torch.Tensor:
        """|STFT|**power of the used bins of frames (..., n_fft) -> (..., bins)."""
        lo, hi = self._bin_start, self._bin_stop
        in_place = not frames.requires_grad  # no autograd graph to keep intact
        if self._window_in_frequency:
            spectrum = torch.view_as_real(torch.fft.rfft(frames)[..., lo - 1 : hi + 1])
            # X[k] - c (X[k-1] + X[k+1]), in two passes
            neighbours = torch.add(spectrum[..., :-2, :], spectrum[..., 2:, :])
            parts = torch.add(spectrum[..., 1:-1, :], neighbours, alpha=-self._neighbour_weight,
                              out=neighbours if in_place else None)
        else:
            parts = torch.view_as_real(torch.fft.rfft(frames * self.window)[..., lo:hi]).clone()
        parts = parts.square_() if in_place else parts.square()
        power = parts[..., 0] + parts[..., 1]
        return power if self.config.power == 2.0 else power.pow(self.config.power / 2)

    def _apply_mel(self, power: torch.Tensor, out: torch.Tensor) -> None:
        """Write the mel bands of power spectra (..., bins) into ``out`` (..., n_mels)."""
        flat = power.reshape(-1, power.shape[-1])
        out.copy_(torch.sparse.mm(self.mel_weights, flat.T).T.reshape(out.shape))

    def mel_power(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mel spectrogram (power), laid out (batch, frames, n_mels).

        On the CPU each example is processed in chunks of frames that stay in
        the cache; on a GPU the whole batch at once.
        """
        frames = self._frames(waveforms.to(torch.float32))
        batch, n_frames = frames.shape[:2]
        out = frames.new_empty(batch, n_frames, self.config.n_mels)
        if frames.device.type != "cpu":
            self._apply_mel(self._power(frames), out)
            return out
        step = math.ceil(n_frames / math.ceil(n_frames / _CPU_CHUNK_FRAMES))  # equal chunks
        for example in range(batch):
            for start in range(0, n_frames, step):
                stop = min(start + step, n_frames)
                self._apply_mel(self._power(frames[example, start:stop]), out[example, start:stop])
        return out

    def _to_db(self, mel: torch.Tensor) -> torch.Tensor:
        """``librosa.power_to_db``, per example (in place unless autograd records it)."""
        cfg = self.config
        if mel.requires_grad:
            db = mel.clamp_min(cfg.amin).log10().mul(10.0)
        else:
            db = mel.clamp_min_(cfg.amin).log10_().mul_(10.0)
        if cfg.ref != 1.0:
            db -= 10.0 * math.log10(max(cfg.amin, cfg.ref))
        if cfg.top_db is not None:
            floor = db.amax(dim=(1, 2), keepdim=True) - cfg.top_db
            db = torch.maximum(db, floor) if db.requires_grad else torch.maximum(db, floor, out=db)
        return db

    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mel spectrogram in dB in the image layout: (batch, frames, n_mels)."""
        return self._to_db(self.mel_power(waveforms))

    def mel_db(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mel spectrogram in dB, librosa's layout: (batch, n_mels, frames).

        Equals ``librosa.power_to_db(librosa.feature.melspectrogram(y, ...),
        ref=ref, amin=amin, top_db=top_db)`` per example.
        """
        return self.spectrogram(waveforms).transpose(1, 2)

    # ---- image ----------------------------------------------------------------
    def _resize_maps(self, n_frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (n_frames, str(device))
        if key not in self._resize_cache:
            cfg = self.config
            antialias = cfg.resize_antialias
            time_map = resize_matrix(n_frames, cfg.image_height, method=cfg.resize, antialias=antialias)
            time_map = _sparse(time_map).to(device)
            mel_map = None
            if cfg.n_mels != cfg.image_width:
                mel_map = resize_matrix(cfg.n_mels, cfg.image_width, method=cfg.resize, antialias=antialias)
                mel_map = torch.as_tensor(mel_map.T, dtype=torch.float32, device=device)
            self._resize_cache[key] = (time_map, mel_map)
        return self._resize_cache[key]

    def image(self, db: torch.Tensor) -> torch.Tensor:
        """Model images from dB spectrograms laid out (batch, frames, n_mels).

        Returns
        -------
        torch.Tensor, shape (batch, image_channels, image_height, image_width), in [0, 1]
        """
        batch, n_frames, n_mels = db.shape
        # Min-max scaling ignores a shift; taking the maximum out first makes a
        # constant input exactly zero, so float rounding in the resize cannot be
        # blown up to the full [0, 1] range by the scaling.
        db = db - db.amax(dim=(1, 2), keepdim=True)
        time_map, mel_map = self._resize_maps(n_frames, db.device)
        # One sparse product resizes the time axis of the whole batch.
        stacked = db.transpose(0, 1).reshape(n_frames, batch * n_mels)
        resized = (time_map @ stacked).reshape(-1, batch, n_mels).transpose(0, 1)
        if mel_map is not None:
            resized = resized @ mel_map
        low = resized.amin(dim=(1, 2), keepdim=True)
        high = resized.amax(dim=(1, 2), keepdim=True)
        scaled = (resized - low) / (high - low).clamp_min(1e-6)
        return scaled.unsqueeze(1).expand(-1, self.config.image_channels, -1, -1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Waveforms (batch, samples) -> images (batch, channels, height, width)."""
        if waveforms.ndim == 1:
            waveforms = waveforms.unsqueeze(0)
        return self.image(self.spectrogram(waveforms))
