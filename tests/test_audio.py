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


@pytest.mark.parametrize(("container", "subtype"), [
    ("WAV", "PCM_16"), ("WAV", "PCM_U8"), ("WAVEX", "PCM_32"), ("W64", "PCM_16"), ("RF64", "PCM_24"),
    ("AIFF", "PCM_24"), ("AIFF", "PCM_S8")])
def test_integer_pcm_cut_mid_data_is_checked_as_long_as_it_reads(tmp_path, container, subtype):
    # check() takes integer PCM's length from its header: it must be what decoding gives, even for a file cut short
    path = tmp_path / ("cut.aiff" if container == "AIFF" else "cut.wav")
    samples = np.random.default_rng(1).normal(0, 0.2, (48000, 2)).clip(-1, 1)
    sf.write(path, samples, 48000, format=container, subtype=subtype)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3 + 1])  # cut mid-frame, and the header still says 48000
    checked = audio.check(path)
    decoded, _ = sf.read(path, always_2d=True)
    assert 0 < checked.frames == len(decoded) < 48000
    assert len(audio.load(path, audio.AudioConfig(sample_rate=48000))) == checked.frames


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        audio.load(tmp_path / "nope.wav")
    (tmp_path / "a.mid").write_bytes(b"MThd")
    with pytest.raises(AudioError, match=r"unsupported format '\.mid'"):
        audio.load(tmp_path / "a.mid")


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


# ---- compressed files made by lame and ffmpeg from real recordings -------------------------------------------------
MP3_FRAME = 1152  # samples in one MPEG-1 layer III frame
# lame CBR and VBR write a Xing/Info frame and LAME tag (frame count, encoder delay, padding); with -t they do not.
ENCODINGS = {
    "cbr.mp3": ["lame", "--quiet", "-b", "128"],
    "vbr.mp3": ["lame", "--quiet", "-V", "4"],
    "vbr_noxing.mp3": ["lame", "--quiet", "-V", "4", "-t"],
    "aac.m4a": ["ffmpeg", "-c:a", "aac", "-aac_pns", "0"],  # see test_ranges_of_compressed_files_match_the_whole
    "phone.m4a": ["ffmpeg", "-c:a", "aac", "-b:a", "96k"],
    "opus.opus": ["ffmpeg", "-c:a", "libopus", "-b:a", "48k"],
    "wma.wma": ["ffmpeg", "-c:a", "wmav2"],
}


def _encode(source, out, command: list[str]) -> None:
    import subprocess

    if command[0] == "lame":
        subprocess.run([*command, str(source), str(out)], check=True)
    else:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), *command[1:], str(out)],
                       check=True)


def _require_binaries(*names: str) -> None:
    import shutil

    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"{name} not installed: these tests encode real recordings with Debian's lame and ffmpeg")


@pytest.fixture(scope="session")
def encoded(soundscapes, tmp_path_factory):
    """birds_1min.flac (60 s, 32 kHz, real) as a WAV and in each of ENCODINGS."""
    _require_binaries("lame", "ffmpeg")
    folder = tmp_path_factory.mktemp("encoded")
    y, rate = sf.read(soundscapes / "birds_1min.flac", dtype="float32")
    source = folder / "source.wav"
    sf.write(source, y, rate, subtype="PCM_16")  # lame reads WAV, not FLAC
    for name, command in ENCODINGS.items():
        _encode(source, folder / name, command)
    return folder, source


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_compressed_files_decode_to_their_full_length(encoded, name, caplog):
    folder, source = encoded
    path, expected = folder / name, sf.info(source).duration
    checked = audio.check(path)
    # Without a LAME tag the encoder delay and padding (1105 + up to 1151 samples) are unknown, and stay in.
    frames = 2 if name == "vbr_noxing.mp3" else 1
    assert abs(checked.duration - expected) <= frames * MP3_FRAME / checked.sample_rate, name
    y = audio.load(path)
    assert abs(len(y) - checked.duration * 48000) <= 1
    # the whole recording is there, in place: its loudness second by second follows the source's
    reference = audio.load(source)
    n = min(len(y), len(reference)) // 48000 * 48000
    loudness = [np.sqrt((x[:n].reshape(-1, 48000) ** 2).mean(axis=1)) for x in (y, reference)]
    assert np.corrcoef(*loudness)[0, 1] > 0.95, name
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_vbr_mp3_without_xing_header_is_not_cut_short(encoded):
    # libsndfile took the length from the first frame's bitrate: 27.3 s of this 60 s recording
    folder, _ = encoded
    header, decoded = audio.info(folder / "vbr_noxing.mp3"), audio.check(folder / "vbr_noxing.mp3")
    assert decoded.duration > 60.0 and header.format == "MP3"
    assert sum(len(b) for b in audio.stream(folder / "vbr_noxing.mp3", block_seconds=7.0)) == len(
        audio.load(folder / "vbr_noxing.mp3"))


@pytest.mark.parametrize("name", ["cbr.mp3", "vbr.mp3", "vbr_noxing.mp3", "aac.m4a", "opus.opus", "wma.wma"])
def test_ranges_of_compressed_files_match_the_whole(encoded, name):
    # Ranges starting past decode.SEEK_BEYOND_SECONDS seek (MP3, AAC, Opus) and cut by timestamps. AAC is encoded
    # without noise substitution here: its noise bands are random noise, different after a seek.
    path = encoded[0] / name
    whole = audio.load(path)
    for offset in (3.0, 21.7, 43.25):
        part = audio.load(path, offset=offset, duration=4.0)
        start = round(offset * 48000)
        assert len(part) == 4 * 48000
        np.testing.assert_allclose(part, whole[start : start + len(part)], atol=1e-5, err_msg=f"{name} at {offset}")
    tail = audio.load(path, offset=58.0, duration=5.0)  # runs past the end: what exists
    np.testing.assert_allclose(tail, whole[58 * 48000 :], atol=1e-5)
    blocks = np.concatenate(list(audio.stream(path, block_seconds=9.0)))
    np.testing.assert_allclose(blocks, whole, atol=1e-5)


def test_aac_ranges_differ_only_by_noise_substitution(encoded):
    path = encoded[0] / "phone.m4a"
    whole, part = audio.load(path), audio.load(path, offset=21.7, duration=4.0)
    start = round(21.7 * 48000)
    assert np.abs(part - whole[start : start + len(part)]).max() < 0.02  # the signal peaks at ~0.3


def test_truncated_mp3_is_used_with_a_warning(encoded, tmp_path, caplog):
    folder, _ = encoded
    data = (folder / "vbr.mp3").read_bytes()
    path = tmp_path / "half.mp3"
    path.write_bytes(data[: len(data) // 2])  # the Xing frame still says 60 s
    checked = audio.check(path)
    assert 25.0 < checked.duration < 35.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: truncated") and "\n" not in warnings[0]
    assert "1920000 frames" in warnings[0]
    y = audio.load(path)
    assert abs(len(y) - checked.duration * 48000) <= 1
    complete = audio.load(folder / "vbr.mp3")
    cut = len(y) - 48000  # the last frames of the cut file may differ: compare all but its last second
    np.testing.assert_allclose(y[:cut], complete[:cut], atol=1e-5)


def test_mp3_a_little_shorter_than_its_header_is_fine(encoded, tmp_path, caplog):
    # as the field recordings: the Xing frame count lists ~0.2 s more than decodes
    folder, _ = encoded
    data = (folder / "vbr.mp3").read_bytes()
    path = tmp_path / "short.mp3"
    path.write_bytes(data[: len(data) - len(data) // 300])
    header, checked = audio.info(path), audio.check(path)
    assert header.frames == 60 * 32000 and 0 < header.frames - checked.frames < 32000
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_vbr_mp3_without_xing_and_a_quiet_start_is_not_called_truncated(soundscapes, tmp_path, caplog):
    # FFmpeg estimates this file's length from the bitrate of its quiet first frames: far too long
    _require_binaries("lame")
    y, rate = sf.read(soundscapes / "birds_10s.flac", dtype="float32")
    source, path = tmp_path / "quiet_start.wav", tmp_path / "quiet_start.mp3"
    sf.write(source, np.concatenate([np.zeros(10 * rate, np.float32), y]), rate, subtype="PCM_16")
    _encode(source, path, ENCODINGS["vbr_noxing.mp3"])
    assert audio.info(path).duration > 1.2 * sf.info(source).duration  # the estimate
    assert abs(audio.check(path).duration - sf.info(source).duration) <= 2 * MP3_FRAME / rate
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_undecodable_compressed_files_raise(encoded, tmp_path):
    data = (encoded[0] / "aac.m4a").read_bytes()
    path = tmp_path / "cut.m4a"
    path.write_bytes(data[: len(data) // 2])  # ffmpeg writes the index (moov) last: nothing left to find frames by
    with pytest.raises(AudioError, match="no decodable m4a data") as info:
        audio.check(path)
    assert str(info.value).startswith(str(path))
    (tmp_path / "text.opus").write_text("not audio\n" * 100)
    with pytest.raises(AudioError, match=r"text\.opus: not a readable audio file"):
        audio.load(tmp_path / "text.opus")


def test_compressed_extensions_are_audio():
    for name in ("a.mp3", "b.M4A", "c.aac", "d.opus", "e.wma", "f.ogg", "g.aiff"):
        assert audio.is_audio_file(name), name
    assert not audio.is_audio_file(".hidden.m4a") and not audio.is_audio_file("notes.txt")


def test_inspect_a_single_mp3(encoded, capsys):
    from echoengine.cli import main

    assert main(["inspect", str(encoded[0] / "vbr_noxing.mp3")]) == 0
    out = capsys.readouterr().out
    assert "files: 1 (1 usable, 0 unreadable)" in out and "total duration: 1.0 min" in out and "60.0s" in out


def test_kaiser_fast_reads_files_as_librosa_does_for_birdnet_analyzer(soundscapes, tmp_path):
    """``resample_quality = "kaiser_fast"``: librosa.load(sr=48000, mono=True, res_type="kaiser_fast")'s samples,
    to the bit, for a 32 kHz recording and a stereo 44.1 kHz one (channels averaged in float32 on both sides)."""
    librosa = pytest.importorskip("librosa")
    pytest.importorskip("resampy", reason="resampy comes with the birdnet extra")
    config = AudioConfig(resample_quality="kaiser_fast")
    stereo = tmp_path / "stereo.flac"
    rng = np.random.default_rng(3)
    sf.write(stereo, rng.uniform(-0.5, 0.5, (44100 * 3 + 17, 2)), 44100, subtype="PCM_24")
    for path in (soundscapes / "ruffed_grouse_drum.flac", stereo):
        ours = audio.load(path, config)
        theirs, _ = librosa.load(path, sr=48000, mono=True, res_type="kaiser_fast")
        n = min(len(ours), len(theirs))  # librosa's float length adds a trailing zero now and then
        assert abs(len(ours) - len(theirs)) <= 1 and not theirs[n:].any() and not ours[n:].any()
        np.testing.assert_array_equal(ours[:n], theirs[:n], err_msg=str(path))
        assert not np.array_equal(ours, audio.load(path))  # soxr's HQ is another filter


def test_kaiser_fast_ranges_and_blocks_equal_the_whole_file_resampled(soundscapes):
    """resampy resamples whole arrays; ranges and detect's blocks give the same samples, edges included."""
    pytest.importorskip("resampy", reason="resampy comes with the birdnet extra")
    path = soundscapes / "birds_1min.flac"  # 32 kHz
    config = AudioConfig(resample_quality="kaiser_fast")
    whole = audio.load(path, config)
    assert len(whole) == 60 * 48000
    for offset, duration in ((0.0, 2.5), (7.3, 3.0), (21.0001, 4.0), (57.5, 5.0)):
        start = round(offset * 48000)
        part = audio.load(path, config, offset=offset, duration=duration)
        assert len(part) == min(round(duration * 48000), len(whole) - start)
        np.testing.assert_array_equal(part, whole[start : start + len(part)], err_msg=str(offset))
    for block_seconds in (7.0, 0.013):
        blocks = list(audio.stream(path, config, block_seconds=block_seconds))
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
