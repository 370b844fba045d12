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


def test_finetune_advice_recommends_frozen_embeddings_where_fine_tuning_lost():
    from echoengine.finetuning import FINETUNE_LOST_UP_TO, finetune_advice

    few = finetune_advice(60, 20)  # 3 clips per class
    assert "3.0 clips per class" in few and "without --finetune is recommended" in few and "CPU" not in few
    more = finetune_advice(int(20 * FINETUNE_LOST_UP_TO * 2), 20, cpu_hours=3.25)
    assert "recommended" not in more and "compare it with --embedder birdnet by cv" in more
    assert more.endswith("on this CPU about 3.2 h")


def test_a_finetuning_run_says_so_before_it_starts(esc50, tmp_path):
    from echoengine.training import _prepare_run

    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    for label in sorted(meta["category"].unique())[:2]:
        (tmp_path / label).mkdir()
        for name in meta[meta["category"] == label].head(2)["filename"]:
            (tmp_path / label / name).symlink_to(esc50 / "audio" / name)
    config = EchoConfig().replace(model={"backbone": "birdnet", "head": "linear"}, data={"cache_dir": str(tmp_path)},
                                  train={"freeze_backbone": False, "epochs": 3})
    table, _ = catalog.scan(catalog.load_catalog(tmp_path), config.audio)
    said = []
    _prepare_run(table, table.iloc[:0], catalog.class_names(table), config, tmp_path / "out",
                 device=torch.device("cpu"), probe=False, keep="best", progress=False, log=said.append, boxes=None)
    advice = [line for line in said if line.startswith("fine-tuning BirdNET")]
    assert len(advice) == 1 and "on 2.0 clips per class" in advice[0] and "recommended" in advice[0]
    assert advice[0].endswith("on this CPU about 1 min")  # 4 clips x 2 windows x 3 epochs at 1.3 s
