"""Photos as a data kind: crops of scikit-learn's sample photos trained, predicted, evaluated and exported."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from echoengine import api, images, photos
from echoengine.cli import main
from echoengine.config import EchoConfig, ImageConfig
from echoengine.errors import ConfigError, EchoError, ImageError
from echoengine.sources import labelled_files
from echoengine.synthetic import make_photo_dataset

QUICK = {"model": {"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
         "train": {"epochs": 12, "learning_rate": 3e-3, "device": "cpu", "seed": 0},
         "image": {"size": 40}, "augment": {"variants": 4}, "data": {"batch_size": 8, "cache_dir": ""}}


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
    """Training crops (4 regions x 10, one in a nested folder) and held-out crops of other places (4 x 6)."""
    root = tmp_path_factory.mktemp("photos")
    train = make_photo_dataset(root / "train", crops_per_class=10, seed=0)
    (train / "sky" / "nested").mkdir()
    shutil.move(train / "sky" / "sky-9.png", train / "sky" / "nested" / "sky-9.png")
    return train, make_photo_dataset(root / "test", crops_per_class=6, seed=1)


@pytest.fixture(scope="module")
def photo_bundle(photo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("photo-model") / "bundle"
    api.train(photo_data[0], out=out, changes=QUICK, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def audio_bundle(tiny_training, tmp_path_factory):
    data, config = tiny_training
    out = tmp_path_factory.mktemp("audio-model") / "bundle"
    changes = {"train": {"epochs": 1}, "data": {"cache_dir": ""}}
    api.train(data, config=EchoConfig.load(config), out=out, changes=changes, log=lambda line: None)
    return out


def _jpeg_rotated(path, orientation: int = 6):
    """A 60 x 30 JPEG, left half red, whose EXIF says: turn me (6: 90 degrees clockwise)."""
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_decoding_turns_photos_upright_and_into_rgb(tmp_path):
    upright = images.decode(_jpeg_rotated(tmp_path / "turned.jpg"))
    assert upright.size == (30, 60) and upright.mode == "RGB"  # 6: stored landscape, shown portrait
    assert images.check(tmp_path / "turned.jpg") == images.ImageInfo(30, 60, "RGB", "JPEG")
    top = np.asarray(upright)[:30].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 50  # the red half is on top once turned
    for mode in ("L", "RGBA", "P", "I;16"):
        Image.new(mode, (20, 10)).save(tmp_path / f"{mode[0]}.png")
        assert images.decode(tmp_path / f"{mode[0]}.png").mode == "RGB"


def test_fitting_crops_the_centre_and_training_variants_are_reproducible():
    photo = Image.fromarray(np.repeat(np.arange(200, dtype=np.uint8)[None, :, None], 100, axis=0).repeat(3, axis=2))
    crop = images.fit(photo, ImageConfig(size=20, crop_fraction=1.0, interpolation="nearest"))
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    assert 45 <= crop[0, 0, 0] <= 55 and 145 <= crop[0, -1, 0] <= 150  # columns 50-150: the centred square
    squashed = images.fit(photo, ImageConfig(size=20, resize="squash", interpolation="nearest"))
    assert squashed[0, 0, 0] < 10 and squashed[0, -1, 0] > 190
    config = ImageConfig(size=20, min_scale=0.3, flip_p=0.5)
    draws = [images.random_fit(photo, config, np.random.default_rng(seed)) for seed in (1, 1, 2)]
    assert (draws[0] == draws[1]).all() and not (draws[0] == draws[2]).all()
    inputs = images.normalise(crop, mean=config.mean, std=config.std)
    assert inputs.shape == (3, 20, 20) and inputs.dtype == np.float32
    assert inputs[0, 0, 0] == pytest.approx((crop[0, 0, 0] / 255 - 0.485) / 0.229, abs=1e-6)


def test_the_image_config_round_trips_and_checks_itself(tmp_path):
    config = EchoConfig().replace(data={"kind": "images"}, image={"size": 96, "resize": "squash", "mean": [0.5] * 3},
                                  model={"backbone": "resnet18"})
    assert config.data.extensions == (".jpg", ".jpeg", ".png")  # the kind's own list
    assert EchoConfig.load(config.save(tmp_path / "photo.toml")) == config
    assert "[image]" in (tmp_path / "photo.toml").read_text()
    assert EchoConfig.from_dict({"data": {"kind": "images"}}).image == ImageConfig()  # configs without [image]
    assert config.replace(data={"kind": "audio"}).data.extensions == EchoConfig().data.extensions
    for changes, words in [({"image": {"size": 8}}, "image.size must be 16 to 2048"),
                           ({"image": {"std": [1, 0, 1]}}, "image.std must be positive"),
                           ({"image": {"mean": [0.5]}}, "image.mean must be 3 numbers"),
                           ({"data": {"kind": "video"}}, "data.kind must be 'audio' or 'images'"),
                           ({"data": {"kind": "images", "extensions": [".wav"]}}, "data.extensions must be among"),
                           ({"data": {"kind": "images"}, "model": {"embedder": "birdnet"}}, "trains a CNN backbone")]:
        with pytest.raises(ConfigError, match=words):
            EchoConfig().replace(**changes)


def test_inspect_reports_a_photo_folder(photo_data, capsys):
    assert main(["inspect", str(photo_data[0])]) == 0
    out = capsys.readouterr().out
    assert "(photos)" in out and "files: 40 (40 usable, 0 unreadable)" in out and "classes: 4" in out
    assert "JPEG (20), PNG (20)" in out


def test_a_photo_model_trains_and_beats_chance_on_held_out_crops(photo_bundle, photo_data):
    config = EchoConfig.load(photo_bundle / "echoengine.toml")
    assert config.data.kind == "images" and config.image.size == 40
    result = api.evaluate(photo_bundle, photo_data[1])
    assert result.metrics["n"] == 24 and result.metrics["accuracy"] >= 0.6  # chance: 0.25
    assert (result.out / "metrics.json").is_file()


def test_predict_prints_json_for_photos(photo_bundle, photo_data, capsys):
    files = [str(photo_data[1] / "sky" / "sky-0.jpg"), str(photo_data[1] / "petals" / "petals-1.png")]
    assert main(["predict", str(photo_bundle), *files, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["file"] for row in rows] == files
    assert all(row["species"] in ("sky", "ground", "petals", "leaves") and len(row["top_k"]) == 3 for row in rows)


def test_the_exported_graph_scores_photos_as_pytorch_does(photo_bundle, photo_data):
    files = sorted(str(p) for p in photo_data[1].rglob("*-[0-2].*"))
    (result,) = api.export(photo_bundle, check=files[:3])
    assert result.path == photo_bundle / "model.onnx" and result.difference <= 1e-4
    torch_run, graph_run = api.predict(photo_bundle, files), api.predict(photo_bundle, files, onnx=True)
    assert len(files) == 12 and np.abs(torch_run.probabilities - graph_run.probabilities).max() <= 1e-4
    code = f"""
import importlib.abc, json, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, NoTorch())
from echoengine import api
result = api.predict({str(photo_bundle)!r}, {files!r}, onnx=True)
print(json.dumps(result.probabilities.tolist()))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.abs(np.array(json.loads(run.stdout)) - graph_run.probabilities).max() == 0.0


def test_a_corrupt_photo_is_reported_in_one_line_and_skipped(photo_bundle, photo_data, tmp_path, caplog):
    data = shutil.copytree(photo_data[1], tmp_path / "data")
    (data / "sky" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (data / "petals" / "petals-0.jpg").read_bytes()
    (data / "petals" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    usable, errors = labelled_files(data, EchoConfig().replace(data={"kind": "images"}), on_error="warn")
    assert len(usable) == 24 and sorted(e.path.rsplit("/", 1)[1] for e in errors) == ["corrupt.jpg", "truncated.jpg"]
    assert all(isinstance(e, ImageError) and "\n" not in str(e) for e in errors)
    assert "skipping" in caplog.text and "corrupt.jpg" in caplog.text
    result = api.predict(photo_bundle, [data / "sky" / "corrupt.jpg", data / "sky" / "sky-1.png"])
    assert len(result.table) == 1 and len(result.errors) == 1 and "corrupt.jpg" in result.errors[0]
    metrics = api.evaluate(photo_bundle, data, out=tmp_path / "report").metrics
    assert metrics["n"] == 24


def test_cross_validation_runs_on_photos(photo_data, tmp_path):
    changes = {**QUICK, "train": {**QUICK["train"], "epochs": 2}}
    result = api.cross_validate(photo_data[0], out=tmp_path / "cv", folds=2, changes=changes, log=lambda line: None)
    assert len(result.summary["folds"]) == 2 and 0 <= result.summary["mean"]["accuracy"] <= 1
    assert len(api.predict(tmp_path / "cv", [photo_data[1] / "sky" / "sky-0.jpg"]).table) == 1  # the fold ensemble


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_timm_backbones_train_on_photos_from_a_local_weights_file(backbone, photo_data, tmp_path):
    import timm
    import torch

    weights = tmp_path / f"{backbone}.pth"
    torch.save(timm.create_model(backbone, num_classes=0).state_dict(), weights)
    changes = {**QUICK, "model": {"backbone": backbone, "pretrained": True, "weights": str(weights)},
               "train": {**QUICK["train"], "epochs": 1}, "image": {"size": 32}}
    result = api.train(photo_data[0], out=tmp_path / "bundle", changes=changes, log=lambda line: None)
    assert EchoConfig.load(result.bundle / "echoengine.toml").model.backbone == backbone
    assert len(api.predict(result.bundle, [photo_data[1] / "sky" / "sky-0.jpg"]).table) == 1


def test_a_photo_model_refuses_audio_and_detect(photo_bundle, tiny_training, tmp_path):
    audio_data, _ = tiny_training
    wav = next(audio_data.rglob("*.wav"))
    with pytest.raises(EchoError, match=r"\.wav: an audio file, but .* was trained on images"):
        api.predict(photo_bundle, [wav])
    with pytest.raises(EchoError, match="holds audio files, but the model takes images"):
        api.evaluate(photo_bundle, audio_data, out=tmp_path / "report")
    with pytest.raises(EchoError, match="classifies whole images; detect finds calls"):
        api.detect(photo_bundle, [audio_data], out=tmp_path / "detections")


def test_an_audio_model_refuses_photos(audio_bundle, photo_data, tmp_path):
    with pytest.raises(EchoError, match=r"sky-0\.jpg: an image, but .* was trained on audio files"):
        api.predict(audio_bundle, [photo_data[1] / "sky" / "sky-0.jpg"])
    with pytest.raises(EchoError, match="holds images, but the model takes audio files"):
        api.predict(audio_bundle, [photo_data[1]])
    with pytest.raises(EchoError, match="holds images, but the model takes audio files"):
        api.evaluate(audio_bundle, photo_data[1], out=tmp_path / "report")


def test_folders_say_which_kind_they_hold(photo_data, tiny_training, tmp_path):
    assert photos.data_kind(photo_data[0]) == "images" and photos.data_kind(tiny_training[0]) == "audio"
    assert photos.data_kind(tmp_path) is None
    assert photos.for_data(EchoConfig(), tiny_training[0]) == EchoConfig()


def test_the_detection_service_refuses_a_photo_model(photo_bundle):
    from echoengine.detection import DetectOptions
    from echoengine.service.served import prepare_model

    with pytest.raises(EchoError, match="classifies whole images; the detection service finds calls"):
        prepare_model(photo_bundle, DetectOptions())


def test_a_taxonomy_of_photos_trains_per_node_and_exports(photo_data, tmp_path, capsys):
    """The hierarchy path is the audio one: nested photo folders train a per-node model, its probabilities are
    the product down the tree, and its exported graph scores as PyTorch does."""
    nested = tmp_path / "nested"
    for region, source in {"sky": "china", "ground": "china", "petals": "flower", "leaves": "flower"}.items():
        shutil.copytree(photo_data[0] / region, nested / source / region)
    out = tmp_path / "per-node"
    changes = {**QUICK, "train": {**QUICK["train"], "epochs": 4},
               "taxonomy": {"ranks": ["photo"], "hierarchy": "per-node"}}
    result = api.train(nested, out=out, changes=changes, log=lambda line: None)
    assert sorted(p.name for p in (out / "nodes").iterdir()) == ["china", "flower", "root"]
    assert main(["inspect", str(nested), "--ranks", "photo"]) == 0  # the tree counts images, as the report does
    assert "china (photo): 20 images, 20 groups\n  ground: 10 images, 10 groups" in capsys.readouterr().out
    assert list(result.metrics["taxonomy"]["ranks"]) == ["photo", "label"]
    files = sorted(str(p) for p in photo_data[1].rglob("*-[0-1].*"))
    (exported,) = api.export(out, check=files[:2])
    assert exported.difference <= 1e-4
    predicted = api.predict(out, files, onnx=True, min_confidence=0.5)
    assert np.allclose(predicted.probabilities.sum(axis=1), 1.0, atol=1e-5)
    rows = predicted.rows()
    assert all(set(row["ranks"]) == {"photo", "label"} for row in rows)
    parents = {"sky": "china", "ground": "china", "petals": "flower", "leaves": "flower"}
    assert all(parents[row["ranks"]["label"]["label"]] == row["ranks"]["photo"]["label"] for row in rows)
