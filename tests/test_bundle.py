"""A damaged bundle fails in one line that names the file at fault."""

import numpy as np
import pytest
import soundfile as sf
import torch

from echoengine.bundle import load_bundle
from echoengine.cli import main
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.layout import CLASSES_FILE, CONFIG_FILE, WEIGHTS_FILE, read_classes, write_metadata
from echoengine.models import build_model


@pytest.fixture
def bundle(tmp_path):
    """A bundle of an untrained small_cnn with 3 classes (no training: only its files matter here)."""
    config = EchoConfig().replace(model={"backbone": "small_cnn", "head": "echo"})
    folder = write_metadata(tmp_path / "bundle", config, ["frog", "owl", "bat"])
    torch.save(build_model(config.model, 3).state_dict(), folder / WEIGHTS_FILE)
    return folder


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "call.wav"
    sf.write(path, np.zeros(4800, np.float32), 48000)
    return path


def _predict_error(bundle, wav, capsys) -> str:
    assert main(["predict", str(bundle), str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_intact_bundle_loads(bundle):
    loaded = load_bundle(bundle)
    assert loaded.classes == read_classes(bundle) == ["frog", "owl", "bat"]


@pytest.mark.parametrize("names", [["frog", "owl"], ["frog", "owl", "bat", "cat"]])
def test_a_class_list_that_does_not_match_the_weights_is_blamed(bundle, wav, capsys, names):
    (bundle / CLASSES_FILE).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    with pytest.raises(EchoError) as info:
        load_bundle(bundle)
    assert str(info.value) == (f"{bundle / CLASSES_FILE}: lists {len(names)} classes but {WEIGHTS_FILE} has 3 "
                               f"outputs; the class list does not belong to these weights: put back the "
                               f"{CLASSES_FILE} written with them (one class per output, in output order)")
    err = _predict_error(bundle, wav, capsys)
    assert f"{bundle / CLASSES_FILE}: lists {len(names)} classes" in err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"frog\n\xffowl\nbat\n", "not UTF-8 text (byte 0xff at offset 5)"),
        (b"\n\n", "lists no class"),
        (b"frog\nowl\nfrog\n", "names 'frog' more than once"),
    ],
)
def test_an_unusable_class_list_is_named(bundle, wav, capsys, content, words):
    (bundle / CLASSES_FILE).write_bytes(content)
    with pytest.raises(EchoError, match=r"classes\.txt: "):
        read_classes(bundle)
    err = _predict_error(bundle, wav, capsys)
    assert f"{bundle / CLASSES_FILE}: {words}" in err


def test_a_class_list_with_a_byte_order_mark_reads_as_written(bundle):
    (bundle / CLASSES_FILE).write_bytes("frog\r\nowl\r\nbat\r\n".encode("utf-8-sig"))
    assert load_bundle(bundle).classes == ["frog", "owl", "bat"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"[audio]\nsample_rate = 48000\n\xfe\n", "not UTF-8 text (byte 0xfe at offset"),
        (b"[audio]\nsample_rate = \"48k\"\n", "audio.sample_rate must be int, got '48k'"),
        (b"[model]\nhidden_size = [512]\n", "model.hidden_size must be int, got [512]"),
        (b"audio = 3\n", "[audio] must be a table of keys"),
        (b"[frontend]\nimage_height = 100000\n", "frontend.image_height must be at most 2048"),
    ],
)
def test_an_unusable_bundle_config_is_named(bundle, wav, capsys, content, words):
    (bundle / CONFIG_FILE).write_bytes(content)
    err = _predict_error(bundle, wav, capsys)
    assert f"{bundle / CONFIG_FILE}: {words}" in err
