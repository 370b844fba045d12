"""Training across processes (DDP, gloo on the CPU): the metrics of one process, rank 0 alone writing, --resume."""

import copy
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from echoengine import syncbatch
from echoengine.bundle import load_bundle, load_state
from echoengine.config import EchoConfig
from echoengine.synthetic import make_dataset

#: How far a run across two processes may be from one process's: float rounding, summed in another order.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """36 synthetic clips of 3 classes, a quick config, and a small_cnn bundle trained on them by one process."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_dataset(root / "data", classes=3, files_per_class=12, seed=0)
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"learning_rate": 3e-3, "device": "cpu", "epochs": 3},
        augment={"variants": 2, "noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0},
        audio={"sample_rate": 32000, "clip_seconds": 2.0},
        frontend={"n_fft": 512, "hop_length": 512, "n_mels": 48, "image_height": 48, "image_width": 48},
        data={"batch_size": 8},  # 24 training clips: three whole batches, halved exactly between two processes
    )
    config_file = config.save(root / "quick.toml")
    _train(root, data, config_file, "cnn")
    return root, data, config


@pytest.fixture(scope="module")
def head_run(cnn_run):
    """A config for a head on the CNN's embeddings, trained by epochs.

    The head (linear, trained by epochs with ``--solver sgd``) on the CNN's
    embeddings has no batch norm and no dropout, so two processes give one
    process's numbers to float rounding.
    """
    root, data, config = cnn_run
    head = config.replace(model={"embedder": f"cnn:{root / 'cnn'}", "head": "linear"},
                          train={"solver": "sgd", "learning_rate": 0.01, "epochs": 4})
    return root, data, head.save(root / "head.toml")


def _train(root, data, config, out, *args):
    command = [sys.executable, "-m", "echoengine", "train", data, "--config", config, "--out", root / out,
               "--cache-dir", root / "cache", "--quiet", *args]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_two_processes_train_as_one_and_resume(head_run):
    root, data, config = head_run
    _train(root, data, config, "single")
    first = _train(root, data, config, "ddp", "--distributed", "2", "--epochs", "2")
    resumed = _train(root, data, config, "ddp", "--distributed", "2", "--epochs", "4", "--resume")
    assert "resuming" in resumed.stdout and "after epoch 2" in resumed.stdout
    assert first.stdout.count("wrote the bundle") == 1  # rank 0 alone reports
    single = pd.read_csv(root / "single" / "history.csv")
    both = pd.read_csv(root / "ddp" / "history.csv")
    assert both["epoch"].tolist() == [1, 2, 3, 4]
    assert single["val_accuracy"].max() > 0.5 and single["train_accuracy"].iloc[-1] > 0.9  # it learns (3 classes)
    for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert both[column].to_numpy() == pytest.approx(single[column].to_numpy(), abs=1e-5), column
    events = list((root / "ddp" / "tensorboard").glob("events.*"))
    assert len(events) == 2  # one per launch: rank 0's; rank 1 wrote nothing
    assert not list((root / "ddp").rglob("*.tmp"))
    metrics = [pd.read_json(root / name / "metrics.json", typ="series") for name in ("single", "ddp")]
    assert metrics[1]["accuracy"] == pytest.approx(metrics[0]["accuracy"])


def test_distributed_refuses_a_batch_the_processes_cannot_share(head_run, tmp_path):
    _, data, config = head_run
    command = [sys.executable, "-m", "echoengine", "train", data, "--config", config, "--out", tmp_path / "b",
               "--no-cache", "--quiet", "--distributed", "3", "--epochs", "1"]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("error: data.batch_size 8 must be a multiple of the 3 training "
                                                    "processes (each takes an equal part of every batch)")


@pytest.mark.slow
def test_a_network_with_batch_norm_dropout_and_mixup_trains_as_in_one_process(cnn_run):
    """small_cnn and the Echo head: batch norm in both, dropout 0.5, mixup; 2 processes (resumed) against 1.

    At a learning rate of 1e-3 the float rounding of another summation
    order stays below 1e-4 for these epochs. At 3e-3 Adam grows it to 6e-4
    by the third (one process on 2 threads differs from one on 1 thread by
    5e-3 there), and mixed clips near the decision boundary can flip the
    training accuracy.
    """
    root, data, quick = cnn_run
    config = quick.replace(model={"head": "echo", "dropout": 0.5}, train={"learning_rate": 1e-3},
                           augment={"mixup_p": 0.5}).save(root / "echo.toml")
    _train(root, data, config, "echo")
    _train(root, data, config, "echo-ddp", "--distributed", "2", "--epochs", "2")
    _train(root, data, config, "echo-ddp", "--distributed", "2", "--epochs", "3", "--resume")  # generator restored
    single = pd.read_csv(root / "echo" / "history.csv")
    both = pd.read_csv(root / "echo-ddp" / "history.csv")
    assert both["epoch"].tolist() == single["epoch"].tolist() == [1, 2, 3]
    assert single["train_loss"].iloc[-1] < single["train_loss"].iloc[0]  # it learns
    for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert both[column].to_numpy() == pytest.approx(single[column].to_numpy(), abs=TOLERANCE), column
    bundle = load_bundle(root / "echo-ddp")  # plain layers: the weights load (weights_only=True) into the usual model
    layers = {type(m).__name__ for m in bundle.model.modules()}
    assert {"BatchNorm1d", "BatchNorm2d", "Dropout"} <= layers and not layers & {"SyncedBatchNorm", "ShardedDropout"}
    weights = [load_state(root / name / "weights.pt") for name in ("echo", "echo-ddp")]
    # running statistics included; Adam turns the rounding of a near-zero gradient into a step of up to the
    # learning rate (one channel of the last conv block here, 3e-4 off; the rest within 2e-5)
    for key, value in weights[0].items():
        assert torch.allclose(weights[1][key].float(), value.float(), atol=1e-3), key


def test_synced_layers_give_one_process_s_forward_backward_and_statistics(tmp_path):
    """Two gloo processes, each with half of a batch, against one process with all of it."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script, tmp_path]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for rank in (0, 1):
        differences = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(differences) == {"output", "input_grad", "param_grads", "running", "mixup", "masked_bce",
                                    "reverted"}
        assert max(differences.values()) < 1e-5, differences


@pytest.mark.parametrize("cuda", [False, True])
def test_timm_norm_and_activation_layers_keep_their_activation(cuda):
    """EfficientNetV2's BatchNormAct2d: the swapped layers compute what the originals do (one process, no sync)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    network = timm.create_model("tf_efficientnetv2_b0", pretrained=False, num_classes=0)
    original = copy.deepcopy(network)
    swapped = syncbatch.synchronised(network, cuda=cuda)
    kinds = {type(m).__name__ for m in swapped.modules()}
    assert "BatchNormAct2d" not in kinds and ("SyncBatchNormAct" if cuda else "SyncedBatchNorm") in kinds
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(swapped.eval()(images), original.eval()(images), atol=1e-5)
        if not cuda:  # one process: the batch's own statistics, then drop and act
            assert torch.allclose(swapped.train()(images), original.train()(images), atol=1e-5)
    if not cuda:
        assert [type(m) for m in syncbatch.revert(swapped).modules()] == [type(m) for m in original.modules()]


#: The ranks of test_synced_layers_give_one_process_s_forward_backward_and_statistics (a script for torchrun).
RANKS_SCRIPT = '''
import copy, json, sys
import numpy as np, torch, torch.distributed as dist
from torch import nn
from echoengine import syncbatch
from echoengine.augment import mixup
from echoengine.training import MaskedBCE

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
x = (torch.randn(8, 4, 6, 5) * 3 + 2).contiguous(memory_format=torch.channels_last)
r = torch.randn(8, 6)
model = nn.Sequential(nn.BatchNorm2d(4), nn.PReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(120, 6),
                      nn.BatchNorm1d(6, momentum=None))
with torch.no_grad():
    model[0].weight.uniform_(0.5, 2.0)
    model[0].bias.uniform_(-1.0, 1.0)
single = copy.deepcopy(model).train()
part = slice(rank * 4, rank * 4 + 4)
differences = {"output": 0.0, "input_grad": 0.0}
synced = syncbatch.convert(model, torch.device("cpu")).train()
for step in range(2):  # the second step starts from the running statistics and generator the first left
    torch.manual_seed(step)
    whole = x.clone().requires_grad_()
    expected = single(whole)
    (expected * r).sum().backward()
    torch.manual_seed(step)
    mine = x[part].clone().requires_grad_()
    output = synced(mine)
    (output * r[part]).sum().backward()
    differences["output"] = max(differences["output"], float((output - expected[part]).detach().abs().max()))
    differences["input_grad"] = max(differences["input_grad"], float((mine.grad - whole.grad[part]).abs().max()))
grads = []
for name, parameter in model.named_parameters():
    total = parameter.grad.clone()
    dist.all_reduce(total)  # what DDP sums (and divides by the processes, as the loss of a part is)
    expected = dict(single.named_parameters())[name].grad
    grads.append(float((total - expected).abs().max() / (1 + expected.abs().max())))
differences["param_grads"] = max(grads)  # relative where large: the summed gradients reach the tens
differences["running"] = max(float((a.float() - b.float()).abs().max())
                             for a, b in zip(model.buffers(), single.buffers()))
rng_single, rng_mine = np.random.default_rng(0), np.random.default_rng(0)
images, targets = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last), torch.eye(8)
mixed = mixup(images, targets, alpha=0.4, rng=rng_single)
parts = syncbatch.mix(images[part], targets[part], alpha=0.4, rng=rng_mine)
differences["mixup"] = max(float((a[part] - b).abs().max()) for a, b in zip(mixed, parts))
differences["mixup"] += abs(rng_single.random() - rng_mine.random())  # both generators moved on alike
torch.manual_seed(5)  # a multi-label loss over the known labels, fewer on one rank than on the other
logits, targets = torch.randn(8, 5), torch.rand(8, 5).round()
targets[torch.rand(8, 5) < torch.linspace(0.1, 0.8, 8)[:, None]] = float("nan")
whole = logits.clone().requires_grad_()
expected = MaskedBCE()(whole, targets)
expected.backward()
mine = logits[part].clone().requires_grad_()
loss = MaskedBCE(whole_batch=True)(mine, targets[part])
loss.backward()
mean = loss.detach().clone()
dist.all_reduce(mean)  # DDP's mean over the ranks
differences["masked_bce"] = max(float(abs(mean / world - expected)),
                                float((mine.grad / world - whole.grad[part]).abs().max()))
plain = syncbatch.revert(synced)
kinds = [type(m) for m in plain.modules()]
differences["reverted"] = float(kinds != [type(m) for m in single.modules()] or
                                list(plain.state_dict()) != list(single.state_dict()))
json.dump(differences, open(f"{sys.argv[1]}/rank{rank}.json", "w"))
dist.destroy_process_group()
'''
