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


def test_a_version_1_config_keeps_birdnet_embedding_alone_and_the_current_one_adds_blocks(tmp_path):
    old = {"version": 1, "model": {"embedder": "birdnet"}}
    assert EchoConfig.from_dict(old).model.birdnet_blocks == ()
    assert EchoConfig.from_dict({**old, "version": 2}).model.birdnet_blocks == ("3-3", "3-4", "3-5")
    explicit = {"version": 1, "model": {"embedder": "birdnet", "birdnet_blocks": ["4-4"]}}
    assert EchoConfig.from_dict(explicit).model.birdnet_blocks == ("4-4",)
    path = tmp_path / "old.toml"
    path.write_text('version = 1\n[model]\nembedder = "birdnet"\n')
    assert EchoConfig.load(path).model.birdnet_blocks == ()
    from echoengine.models import build_model  # an old bundle's head keeps the width its weights have

    assert build_model(EchoConfig.load(path).model, 3).mean.shape == (1024,)
    assert build_model(EchoConfig.from_dict({"model": {"embedder": "birdnet"}}).model, 3).mean.shape == (1672,)


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
        ({"data": {"extensions": [".xyz"]}}, "extensions"),
        ({"augment": {"seed": -1}}, "augment.seed"),
        ({"frontend": {"window": "hannn"}}, "frontend.window"),
        ({"audio": {"clip_seconds": 0.01}, "frontend": {"pad_mode": "reflect"}}, "reflect"),
        ({"audio": {"clip_seconds": 0.01}, "frontend": {"center": False}}, "center = false"),
        ({"model": {"birdnet_blocks": ["3-6"]}}, "model.birdnet_blocks: unknown block(s) 3-6"),
        ({"version": 3}, "config version 3 is not supported"),
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


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"audio": {"clip_seconds": 1e12}}, "audio.clip_seconds must be at most 600"),
        ({"audio": {"clip_seconds": float("inf")}}, "audio.clip_seconds must be at most 600"),
        ({"audio": {"clip_seconds": 1e-9}}, "clip_seconds x sample_rate = 0 samples"),
        ({"audio": {"sample_rate": 10**30}}, "audio.sample_rate must be at most 1000000"),
        ({"audio": {"sample_rate": 384000, "clip_seconds": 600}}, "230400000 samples must hold 1 to"),
        ({"frontend": {"image_height": 100000}}, "frontend.image_height must be at most 2048"),
        ({"frontend": {"image_width": 4096}}, "frontend.image_width must be at most 2048"),
        ({"frontend": {"image_channels": 64}}, "frontend.image_channels must be at most 4"),
        ({"frontend": {"n_fft": 2**20}}, "frontend.n_fft must be at most 65536"),
        ({"frontend": {"hop_length": 2**20}}, "frontend.hop_length must be at most 65536"),
        ({"frontend": {"n_mels": 100000}}, "frontend.n_mels must be at most 1024"),
        ({"frontend": {"hop_length": 1}}, "the STFT of one clip would hold 246001025 values"),
        ({"data": {"batch_size": 10**6}}, "data.batch_size must be at most 4096"),
        ({"data": {"batch_size": 1024}, "frontend": {"image_height": 2048, "image_width": 2048}},
         "a batch of data.batch_size 1024 model images"),
        ({"data": {"num_workers": 10**4}}, "data.num_workers must be at most 256"),
        ({"data": {"folds": 10**4}}, "data.folds must be at most 100"),
        ({"data": {"background_crops": 10**9}}, "data.background_crops must be at most 1000"),
        ({"data": {"cache_size_gb": float("inf")}}, "data.cache_size_gb must be at most 100000"),
        ({"data": {"split_seed": 2**40}}, "data.split_seed must be at most 4294967295"),
        ({"augment": {"variants": 10**6}}, "augment.variants must be at most 1000"),
        ({"augment": {"embedding_variants": 10**6}}, "augment.embedding_variants must be at most 1000"),
        ({"augment": {"time_masks": 10**6}}, "augment.time_masks must be at most 100"),
        ({"model": {"hidden_size": 10**7}}, "model.hidden_size must be at most 16384"),
        ({"model": {"embedding_hop": 1e-5}}, "model.embedding_hop must be 0 (the window length) or 0.1 to 600"),
        ({"train": {"seed": 2**64}}, "train.seed must be in [0, 4294967295]"),
    ],
)
def test_sizes_have_upper_bounds(changes, words):
    with pytest.raises(ConfigError) as info:
        EchoConfig.from_dict(changes)
    assert words in str(info.value)


def test_the_largest_allowed_sizes_are_accepted():
    EchoConfig.from_dict({"audio": {"sample_rate": 1_000_000, "clip_seconds": 60}, "frontend": {"fmax": 13000,
                          "n_fft": 65536, "hop_length": 65536, "n_mels": 1024, "image_height": 2048,
                          "image_width": 2048, "image_channels": 4}, "data": {"batch_size": 64, "folds": 100}})
    EchoConfig.from_dict({"data": {"batch_size": 4096, "num_workers": 256}, "model": {"hidden_size": 16384},
                          "augment": {"variants": 1000, "seed": 2**32 - 1}})


def test_a_wrong_type_anywhere_is_a_config_error_naming_the_key():
    import dataclasses

    from echoengine.config import _SECTIONS

    for section, cls in _SECTIONS.items():
        for key in (f.name for f in dataclasses.fields(cls)):
            for value in ({"x": 1}, [[1]], "zzz", True, float("nan"), 10**30):
                try:
                    EchoConfig.from_dict({section: {key: value}})
                except ConfigError as error:
                    assert "\n" not in str(error)
                    assert section in str(error), str(error)  # any other exception fails the test


def test_an_undecodable_or_unreadable_config_names_the_file(tmp_path):
    path = tmp_path / "echoengine.toml"
    path.write_bytes(b"[audio]\nsample_rate = 44100 # caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        EchoConfig.load(path)
    assert str(info.value) == (f"{path}: not UTF-8 text (byte 0xe9 at offset 33); "
                               "a config is a TOML file: save it as UTF-8")
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the config \\(Is a directory\\)$"):
        EchoConfig.load(tmp_path)
    path.write_text('[train]\nepochs = "ten"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"echoengine\.toml: train\.epochs must be int, got 'ten'$"):
        EchoConfig.load(path)


def test_birdnet_blocks_are_kept_in_block_order_once_and_version_1_cnn_configs_are_unaffected():
    config = EchoConfig.from_dict({"model": {"embedder": "birdnet", "birdnet_blocks": ["3-5", "3-3", "3-5"]}})
    assert config.model.birdnet_blocks == ("3-3", "3-5")
    cnn = EchoConfig.from_dict({"version": 1, "model": {"backbone": "small_cnn"}})
    assert cnn.fingerprint() == EchoConfig.from_dict({"model": {"backbone": "small_cnn"}}).fingerprint()
    with pytest.raises(ConfigError, match=r"\[model\] must be a table"):
        EchoConfig.from_dict({"version": 1, "model": 3})


def test_an_ensemble_of_models_on_different_birdnet_features_is_refused():
    from echoengine.errors import EchoError
    from echoengine.layout import Bundle, check_ensemble

    new = EchoConfig().replace(model={"embedder": "birdnet"})
    old = new.replace(model={"birdnet_blocks": []})
    check_ensemble([Bundle("a", new, ["x"], None), Bundle("b", new, ["x"], None)])
    with pytest.raises(EchoError, match="b: its audio or front-end config differs"):
        check_ensemble([Bundle("a", new, ["x"], None), Bundle("b", old, ["x"], None)])
    cnn = EchoConfig()  # blocks are not the inputs of a CNN
    check_ensemble([Bundle("a", cnn, ["x"], None), Bundle("b", cnn.replace(model={"birdnet_blocks": []}), ["x"], None)])


def test_birdnet_blocks_from_the_command_line(tmp_path):
    from echoengine.cli import _training_options, build_parser

    base = ["cv", str(tmp_path), "--out", str(tmp_path / "cv"), "--embedder", "birdnet"]
    for given, expected in (("none", ()), ("3-5, 3-4", ("3-4", "3-5")), ("3-4,,3-5", ("3-4", "3-5"))):
        config, changes = _training_options(build_parser().parse_args([*base, "--birdnet-blocks", given]))
        assert config.replace(**changes).model.birdnet_blocks == expected
    config, changes = _training_options(build_parser().parse_args([*base, "--birdnet-blocks", "3-9"]))
    with pytest.raises(ConfigError, match="unknown block"):
        config.replace(**changes)


def test_a_boolean_option_turns_off_what_the_config_file_turns_on(tmp_path):
    from echoengine.cli import _training_options, build_parser

    path = EchoConfig().replace(train={"refit": True}, model={"multilabel": True}).save(tmp_path / "on.toml")
    base = ["train", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(path)]
    config, changes = _training_options(build_parser().parse_args(base))
    assert config.replace(**changes).train.refit and config.replace(**changes).model.multilabel
    config, changes = _training_options(build_parser().parse_args([*base, "--no-refit", "--no-multilabel"]))
    assert not config.replace(**changes).train.refit and not config.replace(**changes).model.multilabel
