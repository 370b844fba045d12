"""BirdNET fine-tuning starts from the L-BFGS linear head on frozen embeddings (linear probing, then fine-tuning)."""

import numpy as np
import pandas as pd
import torch

from echoengine import catalog
from echoengine.cli import _training_options, build_parser
from echoengine.config import EchoConfig
from echoengine.headfit import train_linear_head
from echoengine.training import _probe_head
from echoengine.trainrun import training_config


def test_finetune_warm_starts_a_linear_head_and_keeps_an_explicit_choice(tmp_path):
    parser = build_parser()

    def _training_config(args):  # what `train` and `cv` (and the Python API) run with
        base, changes = _training_options(args)
        return training_config(base, finetune=args.finetune, changes=changes)

    train = ["train", str(tmp_path), "--out", str(tmp_path / "out")]
    config = _training_config(parser.parse_args([*train, "--backbone", "birdnet", "--finetune"]))
    assert (config.model.head_name, config.train.probe_epochs, config.train.freeze_backbone) == ("linear", 1, False)
    config = _training_config(parser.parse_args([*train, "--backbone", "birdnet", "--finetune",
                                                 "--head", "mlp", "--probe-epochs", "7"]))
    assert (config.model.head_name, config.train.probe_epochs) == ("mlp", 7)
    frozen = _training_config(parser.parse_args([*train, "--backbone", "birdnet"]))
    assert frozen.train.freeze_backbone and frozen.train.probe_epochs == 0


def test_the_probe_is_the_lbfgs_head_with_its_standardisation_folded_in(esc50, tmp_path):
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    for label in sorted(meta["category"].unique())[:3]:
        (tmp_path / label).mkdir()
        for name in meta[meta["category"] == label].drop_duplicates("src_file").head(3)["filename"]:
            (tmp_path / label / name).symlink_to(esc50 / "audio" / name)
    config = EchoConfig().replace(model={"backbone": "birdnet", "head": "linear"},
                                  train={"probe_epochs": 1, "freeze_backbone": False})
    table, _ = catalog.scan(catalog.load_catalog(tmp_path), config.audio)
    classes = catalog.class_names(table)
    head = _probe_head(table, table.iloc[:0], classes, config, tmp_path / "probe", keep="best", log=print)
    probe, _ = train_linear_head(table, classes, config.replace(model={"embedder": "birdnet"}))
    x = torch.randn(5, probe.mean.shape[0]) * 3  # window features: the embedding and the pooled blocks
    with torch.no_grad():
        expected = probe.head((x - probe.mean) / probe.std)
        np.testing.assert_allclose(head(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "probe").exists(), "the L-BFGS probe writes no bundle of its own"
