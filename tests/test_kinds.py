"""The registry of model kinds: every kind reachable from a config, validation that asks it, clear refusals."""

import dataclasses
import subprocess
import sys

import pytest

from echoengine import kinds
from echoengine.config import EchoConfig, ModelConfig
from echoengine.errors import ConfigError, EchoError


def _selecting(kind: kinds.ModelKind) -> ModelConfig:
    """A [model] section of this kind."""
    if kind.embedder:
        return ModelConfig(embedder=kind.embedder + ("/bundle" if kind.embedder.endswith(":") else ""))
    return ModelConfig(backbone=kind.backbones[0])


@pytest.mark.parametrize("name", list(kinds.KINDS))
def test_every_registered_kind_is_reachable_from_a_config(name):
    kind = kinds.KINDS[name]
    model = _selecting(kind)
    assert model.kind is kind is kinds.model_kind(model)
    assert model.head_name == kind.default_head and model.uses_birdnet == kind.birdnet
    assert kind.input in kinds.INPUTS
    for head in kind.heads:
        assert dataclasses.replace(model, head=head).kind is kind
    for backbone in kind.backbones:
        assert kinds.backbone_kind(backbone) is kind


@pytest.mark.parametrize("name", list(kinds.KINDS))
def test_every_kind_names_functions_that_exist(name):
    kind = kinds.KINDS[name]
    targets = [kind.builder, kind.dataset, kind.make_embedder, kind.embedding_size, kind.serving]
    assert all(callable(target.resolve()) for target in targets if target is not None)


def test_the_kinds_of_the_models_echoengine_trains():
    assert ModelConfig().kind.name == "cnn" and ModelConfig(backbone="small_cnn").kind.input == kinds.IMAGES
    assert ModelConfig(backbone="birdnet").kind.input == kinds.WAVEFORMS
    assert ModelConfig(backbone="birdnet").kind.finetunes and not ModelConfig().kind.finetunes
    for embedder in ("birdnet", "birdnet-tflite", "cnn:/somewhere/bundle"):
        kind = ModelConfig(embedder=embedder, backbone="birdnet").kind
        assert kind.input == kinds.EMBEDDINGS and kind.embedder  # the embedder decides, not the unused backbone
    assert [ModelConfig(embedder=e).kind.serving is None for e in ("birdnet", "birdnet-tflite", "cnn:x")] == [
        False, True, True]  # BirdNET in torch runs inside the serving graph; the others leave it the head alone


def test_timm_backbones_come_from_timms_registry():
    import timm

    from echoengine.models.backbones import BACKBONES

    assert all(timm.is_model(name) for name in kinds.TIMM_BACKBONES.values())
    assert set(kinds.KINDS["cnn"].backbones) == set(BACKBONES)  # every name the config accepts has a builder


def test_unknown_kinds_are_one_line_errors_listing_the_known_ones():
    with pytest.raises(ConfigError) as info:
        ModelConfig(embedder="yamnet")
    assert str(info.value) == ("model.embedder must be '', 'birdnet', 'birdnet-tflite' or 'cnn:/path/to/bundle', "
                               "got 'yamnet'")
    with pytest.raises(ConfigError) as info:
        ModelConfig(backbone="vgg")
    assert str(info.value) == ("model.backbone must be one of efficientnetv2_b0, efficientnet_b0, efficientnet_b3, "
                               "resnet18, resnet50, inception_v3, mobilenetv3_large_100, small_cnn, birdnet, got 'vgg'")
    with pytest.raises(EchoError, match=r"^unknown embedder 'yamnet'; known: birdnet, birdnet-tflite, cnn:/path/to/"):
        kinds.embedder_kind("yamnet")
    with pytest.raises(EchoError, match="unknown embedder ''"):
        kinds.embedder_kind("")


def test_what_a_kind_allows_is_checked_with_the_messages_of_before():
    with pytest.raises(ConfigError, match=r"^model\.head must be 'linear', 'mlp' or 'attention' on an embedder, "
                                          r"got 'echo'$"):
        ModelConfig(embedder="birdnet", head="echo")
    with pytest.raises(ConfigError, match=r"^model\.head must be 'echo', 'linear' or 'mlp' on the fine-tuned "
                                          r"birdnet backbone, got 'attention'$"):
        ModelConfig(backbone="birdnet", head="attention")
    with pytest.raises(ConfigError, match=r"^model\.head must be 'auto', 'echo', 'linear', 'mlp' or 'attention'"):
        ModelConfig(head="big")
    with pytest.raises(ConfigError, match="the cnn:x embedder is pretrained already"):
        ModelConfig(embedder="cnn:x", pretrained=True)
    with pytest.raises(ConfigError, match=r"^the birdnet backbone takes 48 kHz audio: set audio\.sample_rate = 48000, "
                                          r"not 32000$"):
        EchoConfig().replace(model={"backbone": "birdnet"}, audio={"sample_rate": 32000})
    EchoConfig().replace(model={"backbone": "small_cnn"}, audio={"sample_rate": 32000})


def test_config_validation_asks_the_registry(monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))  # a registry of this test's own
    with pytest.raises(ConfigError, match=r"model\.embedder must be"):
        ModelConfig(embedder="toy")
    toy = kinds.register(dataclasses.replace(
        kinds.KINDS["birdnet-tflite-embeddings"], name="toy", embedder="toy", heads=("mlp",), default_head="mlp",
        birdnet=False))
    assert ModelConfig(embedder="toy").kind is toy and ModelConfig(embedder="toy").head_name == "mlp"
    with pytest.raises(ConfigError, match=r"model\.head must be 'mlp' on an embedder, got 'linear'"):
        ModelConfig(embedder="toy", head="linear")
    with pytest.raises(ConfigError, match="'birdnet-tflite', 'cnn:/path/to/bundle' or 'toy', got 'toys'"):
        ModelConfig(embedder="toys")
    assert EchoConfig().replace(model={"embedder": "toy"}).convex_head()  # a head on embeddings: fitted by L-BFGS


def test_a_kind_that_would_select_configs_of_another_is_refused(monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    cnn, tflite = kinds.KINDS["cnn"], kinds.KINDS["birdnet-tflite-embeddings"]
    with pytest.raises(ValueError, match="name 'cnn' is taken"):
        kinds.register(cnn)
    with pytest.raises(ValueError, match="already selected by another kind: resnet50"):
        kinds.register(dataclasses.replace(cnn, name="more", backbones=("resnet50", "vit")))
    with pytest.raises(ValueError, match="already selected by another kind: cnn:local:"):
        kinds.register(dataclasses.replace(tflite, name="local", embedder="cnn:local:"))
    with pytest.raises(ValueError, match="backbones or an embedder, not both"):
        kinds.register(dataclasses.replace(tflite, name="both", backbones=("vit",)))
    with pytest.raises(ValueError, match="default head 'echo' is not among its heads"):
        kinds.register(dataclasses.replace(tflite, name="odd", embedder="odd", default_head="echo"))
    kinds.register(dataclasses.replace(tflite, name="birdnet-lite", embedder="birdnet-lite"))  # a name, not a prefix


def test_birdnet_blocks_of_version_1_configs_follow_the_kinds_that_use_birdnet():
    old = {"version": 1}
    assert EchoConfig.from_dict({**old, "model": {"embedder": "birdnet-tflite"}}).model.birdnet_blocks == ()
    assert EchoConfig.from_dict({**old, "model": {"backbone": "birdnet"}}).model.birdnet_blocks == ()
    assert EchoConfig.from_dict({**old, "model": {"embedder": "cnn:x"}}).model.birdnet_blocks == ("3-3", "3-4", "3-5")
    assert kinds.uses_birdnet(embedder="cnn:x", backbone="birdnet")  # as before: the backbone's name alone counts
    assert not kinds.uses_birdnet(embedder="nonsense", backbone="nonsense")


def test_the_registry_keeps_the_config_free_of_torch():
    code = "import sys, echoengine.config; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
