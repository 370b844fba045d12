import pytest
import torch

from echoengine.config import EchoConfig, ModelConfig
from echoengine.errors import ConfigError, EchoError
from echoengine.models import EchoDenseHead, build_backbone, build_model
from echoengine.models.backbones import TIMM_BACKBONES


@pytest.mark.parametrize("name", [*TIMM_BACKBONES, "small_cnn"])
def test_every_backbone_classifies_a_model_image(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=name, head="linear"), n_classes=5).eval()
    images = torch.rand(2, *EchoConfig().frontend.image_shape)
    with torch.inference_mode():
        logits = model(images)
        features = model.features(images)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert features.shape == (2, model.backbone.num_features)


def test_echo_head_layout():
    head = EchoDenseHead(1280, n_classes=10)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1280, 80), (80, 40), (40, 10)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 3
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.5]


def test_the_echo_model_trains_a_step():
    model = build_model(ModelConfig(backbone="small_cnn"), n_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model(images), targets)
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in model.head.parameters())


def test_pretrained_weights_never_fall_back_to_random(tmp_path, monkeypatch):
    import echoengine.models.backbones as backbones

    monkeypatch.setattr(backbones, "_online", lambda *a, **k: False)
    with pytest.raises(EchoError, match=r"no network.*model.weights"):
        build_backbone("efficientnet_b0", pretrained=True)
    with pytest.raises(EchoError, match="weights file not found"):
        build_backbone("efficientnet_b0", pretrained=True, weights=str(tmp_path / "missing.safetensors"))
    # a local file is loaded (here one saved from a randomly initialised model)
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("efficientnet_b0", num_classes=0)
    save_file(source.state_dict(), tmp_path / "b0.safetensors")
    loaded = build_backbone("efficientnet_b0", pretrained=True, weights=str(tmp_path / "b0.safetensors"))
    assert torch.equal(loaded.conv_stem.weight, source.conv_stem.weight)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        ModelConfig(backbone="vgg")
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_backbone("small_cnn", pretrained=True)
