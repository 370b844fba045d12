import pytest

from echoengine.config import EchoConfig
from echoengine.errors import ConfigError


def test_defaults_are_the_echo_pipeline():
    cfg = EchoConfig()
    assert (cfg.audio.sample_rate, cfg.audio.clip_seconds, cfg.audio.clip_samples) == (48000, 5.0, 240000)
    fe = cfg.frontend
    assert (fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels, fe.fmin, fe.fmax) == (2048, None, 200, 260, 20, 13000)
    assert (fe.top_db, fe.ref, fe.image_shape) == (80, 1.0, (3, 260, 260))
    assert (cfg.augment.variants, cfg.data.batch_size) == (20, 16)
    assert cfg.augment.noise_p == cfg.augment.time_stretch_p == cfg.augment.pitch_shift_p == cfg.augment.shift_p == 0.2


def test_toml_round_trip(tmp_path):
    cfg = EchoConfig().replace(frontend={"n_mels": 128, "top_db": None}, audio={"channel": 1})
    loaded = EchoConfig.load(cfg.save(tmp_path / "echoengine.toml"))
    assert loaded == cfg
    assert loaded.frontend.top_db is None and loaded.audio.channel == 1


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"frontend": {"fmax": 30000}}, "Nyquist"),
        ({"frontend": {"hop_length": 0}}, "frontend.hop_length must be positive"),
        ({"frontend": {"win_length": 4096}}, "win_length"),
        ({"frontend": {"fmin": 5000, "fmax": 4000}}, "must be below fmax"),
        ({"frontend": {"n_mel": 128}}, "unknown key(s) in [frontend]: n_mel"),
        ({"spectrogram": {}}, "unknown section"),
        ({"audio": {"sample_rate": "48k"}}, "audio.sample_rate must be int"),
        ({"audio": {"channel": "left"}}, "audio.channel"),
        ({"augment": {"noise_p": 1.5}}, "probability"),
        ({"augment": {"time_stretch_min_rate": 2.0}}, "above maximum"),
        ({"data": {"on_error": "explode"}}, "on_error"),
        ({"data": {"extensions": [".aiff"]}}, "extensions"),
        ({"augment": {"seed": -1}}, "augment.seed"),
        ({"frontend": {"window": "hannn"}}, "frontend.window"),
        ({"audio": {"clip_seconds": 0.01}, "frontend": {"pad_mode": "reflect"}}, "reflect"),
        ({"audio": {"clip_seconds": 0.01}, "frontend": {"center": False}}, "center = false"),
    ],
)
def test_invalid_values_are_named(changes, words):
    with pytest.raises(ConfigError) as info:
        EchoConfig.from_dict(changes)
    assert words in str(info.value)


def test_load_reports_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[frontend]\nhop_length = -5\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: frontend\.hop_length"):
        EchoConfig.load(path)
    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        EchoConfig.load(path)


def test_fingerprint_follows_the_named_sections():
    base = EchoConfig()
    other_fe = base.replace(frontend={"n_mels": 128})
    other_aug = base.replace(augment={"noise_p": 0.5})
    assert base.fingerprint("audio", "frontend") != other_fe.fingerprint("audio", "frontend")
    assert base.fingerprint("audio", "frontend") == other_aug.fingerprint("audio", "frontend")
    assert base.fingerprint("augment") != other_aug.fingerprint("augment")
