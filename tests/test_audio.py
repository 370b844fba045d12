import numpy as np
import pytest
import soundfile as sf

from echoengine import audio
from echoengine.config import AudioConfig
from echoengine.errors import AudioError


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("extension", [".wav", ".flac", ".ogg", ".mp3"])
def test_every_format_decodes_to_float32_mono_at_the_target_rate(tmp_path, extension):
    path = tmp_path / f"tone{extension}"
    sf.write(path, np.stack([_tone(1.0, 44100), _tone(1.0, 44100, 880)], axis=1), 44100)
    y = audio.load(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 48000) <= 1200 if extension == ".mp3" else len(y) == 48000  # mp3 frames pad the ends


def test_channel_mixing_and_selection(tmp_path):
    left, right = _tone(0.5, 48000), np.zeros(24000, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 48000, subtype="FLOAT")
    np.testing.assert_allclose(audio.load(path), left / 2, atol=1e-7)
    np.testing.assert_allclose(audio.load(path, AudioConfig(channel=0)), left, atol=1e-7)
    np.testing.assert_array_equal(audio.load(path, AudioConfig(channel=1)), right)
    with pytest.raises(AudioError, match="channel index 2 does not exist"):
        audio.load(path, AudioConfig(channel=2))


def test_resampling_keeps_the_tone(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, _tone(2.0, 22050, 1000), 22050)
    y = audio.load(path)
    assert len(y) == 96000
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 48000 / len(y) - 1000) < 1


def test_time_range_matches_the_whole_file(tmp_path):
    rate = 44100
    path = tmp_path / "long.flac"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, rate * 20).astype(np.float32), rate)
    whole = audio.load(path)
    part = audio.load(path, offset=7.0, duration=3.0)
    assert len(part) == 3 * 48000
    np.testing.assert_allclose(part, whole[7 * 48000 : 10 * 48000], atol=1e-5)
    assert len(audio.load(path, offset=19.0, duration=5.0)) == 48000  # runs past the end: what exists


def test_bad_inputs_raise_one_error_type_naming_file_and_reason(bad_corpus):
    root, expected = bad_corpus
    for name, words in expected.items():
        path = root / "frogs" / name
        if words is None:
            assert audio.check(path).frames > 0
            assert audio.load(path).dtype == np.float32
            continue
        with pytest.raises(AudioError) as info:
            audio.check(path)
        message = str(info.value)
        assert message.startswith(str(path)) and words in message and "\n" not in message


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        audio.load(tmp_path / "nope.wav")
    (tmp_path / "a.aiff").write_bytes(b"FORM")
    with pytest.raises(AudioError, match=r"unsupported format '\.aiff'"):
        audio.load(tmp_path / "a.aiff")


def test_every_real_file_decodes(esc50, soundscapes):
    files = [p for root in (esc50, soundscapes) for p in sorted(root.rglob("*")) if audio.is_audio_file(p)]
    assert len(files) >= 414 + 96 + 7
    for path in files:
        info = audio.check(path)
        assert info.duration > 1.0, path
    # a stereo OGG and a 32 kHz FLAC through the whole loader
    robin = audio.load(soundscapes / "robin.ogg")
    assert robin.dtype == np.float32 and abs(len(robin) / 48000 - audio.info(soundscapes / "robin.ogg").duration) < 1e-3
    birds = audio.load(soundscapes / "birds_10s.flac", offset=2.0, duration=5.0)
    assert len(birds) == 240000 and np.abs(birds).max() > 0.01
