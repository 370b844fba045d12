"""Taxonomies: lineages from folders and CSVs, rank probabilities, rank outputs of predict and detect, rank metrics."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from echoengine.catalog import load_catalog
from echoengine.config import EchoConfig
from echoengine.errors import ConfigError, DataError
from echoengine.rankmetrics import rank_metrics
from echoengine.sources import labels_table
from echoengine.synthetic import make_dataset
from echoengine.taxonomy import Taxonomy, below_node, label_table

FROGS = Taxonomy(("family", "genus"), {"green-frog": ("Ranidae", "Lithobates"), "bullfrog": ("Ranidae", "Lithobates"),
                                       "wood-frog": ("Ranidae", "Rana"), "tree-frog": ("Hylidae", "Hyla")})
CLASSES = ["bullfrog", "green-frog", "tree-frog", "wood-frog"]


def test_a_name_with_two_parents_is_refused():
    with pytest.raises(DataError, match="'Hyla' sits under both Hylidae and Ranidae"):
        Taxonomy(("family", "genus"), {"a": ("Hylidae", "Hyla"), "b": ("Ranidae", "Hyla")})


def test_a_taxonomy_csv_round_trips_and_names_its_problems(tmp_path):
    path = FROGS.write(tmp_path / "taxonomy.csv")
    assert Taxonomy.read(path) == FROGS
    (tmp_path / "bad.csv").write_text("species,family\nowl,Strigidae\n")
    with pytest.raises(DataError, match=r"bad.csv: no 'label' column"):
        Taxonomy.read(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("label,family\nowl,Strigidae\nowl,Tytonidae\n")
    with pytest.raises(DataError, match="listed twice: owl"):
        Taxonomy.read(tmp_path / "twice.csv")


def test_rank_probabilities_sum_the_labels_below_each_name():
    probs = np.array([[0.30, 0.11, 0.07, 0.52], [0.1, 0.1, 0.7, 0.1]])
    genus = FROGS.rank_probabilities(probs, CLASSES, "genus")  # Hyla, Lithobates, Rana
    np.testing.assert_allclose(genus, [[0.07, 0.41, 0.52], [0.7, 0.2, 0.1]])
    np.testing.assert_allclose(FROGS.rank_probabilities(probs, CLASSES, "family"), [[0.07, 0.93], [0.7, 0.3]])


def test_the_lineage_is_the_most_probable_labels_with_each_ranks_sum():
    calls = FROGS.lineage_of(np.array([0.30, 0.11, 0.07, 0.52]), CLASSES)
    assert [(c.rank, c.name) for c in calls] == [("family", "Ranidae"), ("genus", "Rana"), ("label", "wood-frog")]
    assert [round(c.probability, 2) for c in calls] == [0.93, 0.52, 0.52]
    # Ranidae holds 0.6 but tree-frog is the best label: the lineage is tree-frog's, as predict's species and
    # detect's events name it
    calls = FROGS.lineage_of(np.array([0.3, 0.3, 0.4, 0.0]), CLASSES)
    assert [(c.name, round(c.probability, 2)) for c in calls] == [("Hylidae", 0.4), ("Hyla", 0.4), ("tree-frog", 0.4)]


@pytest.mark.parametrize("rank", ["score", "file", "genus_score", "../../x", "2nd", "species"])
def test_a_rank_that_would_overwrite_an_output_column_or_a_path_is_refused(rank, tmp_path):
    (tmp_path / "t.csv").write_text(f"label,{rank}\nowl,Strigidae\n")
    with pytest.raises(DataError, match=f"the rank '{re.escape(rank)}' cannot be used"):
        Taxonomy.read(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match=r"taxonomy\.ranks: the rank"):
        EchoConfig().replace(taxonomy={"ranks": [rank]})


@pytest.mark.parametrize("name", ["A/B", "..", " Strix", "Strix "])
def test_a_name_that_is_no_folder_or_changes_when_read_back_is_refused(name):
    with pytest.raises(DataError, match="rename it"):
        Taxonomy(("genus",), {"owl": (name,)})


def _nested(root: Path, source: Path) -> Path:
    """The four synthetic classes of ``source`` in family/genus folders; each class's files one level further down
    in half of its files (recorder folders below the label)."""
    lineage = {}
    for i, folder in enumerate(sorted(p for p in source.iterdir() if p.is_dir())):
        family, genus = ("Ranidae", "Lithobates") if i < 2 else ("Ranidae", "Rana") if i == 2 else ("Hylidae", "Hyla")
        target = root / family / genus / folder.name
        for j, file in enumerate(sorted(folder.iterdir())):
            place = target / "recorder-b" if j % 2 else target
            place.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, place / file.name)
        lineage[folder.name] = (family, genus)
    return root


@pytest.fixture(scope="module")
def nested_data(tmp_path_factory) -> Path:
    source = make_dataset(tmp_path_factory.mktemp("flat"), classes=4, files_per_class=4, seed=1)
    return _nested(tmp_path_factory.mktemp("nested") / "data", source)


def test_folders_give_the_lineage_and_the_label_below_it(nested_data):
    table, tree = label_table(load_catalog(nested_data), nested_data, "folders")
    assert tree.ranks == ("rank1", "rank2")  # the shallowest file lies three folders down
    assert sorted(table["label"].unique()) == sorted(tree.lineages) and len(tree.lineages) == 4
    named = label_table(load_catalog(nested_data), nested_data, "folders", ranks=["family", "genus"])[1]
    assert named.ranks == ("family", "genus") and set(named.names("family")) == {"Hylidae", "Ranidae"}
    one_genus, none = label_table(load_catalog(nested_data), nested_data, "folders", ranks=["family", "genus"],
                                  node="Ranidae/Lithobates")
    assert none is None and len(one_genus) == 8 and one_genus["label"].nunique() == 2


def test_inspect_prints_the_tree_with_file_and_recording_counts(nested_data, capsys):
    from echoengine.cli import main

    assert main(["inspect", str(nested_data), "--ranks", "family,genus", "--group-regex", r"^([a-z]+_rec\d+)_"]) == 0
    tree = capsys.readouterr().out.split("taxonomy (family > genus > label):\n")[1].splitlines()
    assert tree[:3] == ["Hylidae (family): 4 files, 2 recordings", "  Hyla (genus): 4 files, 2 recordings",
                        "    synthetic-upsweep: 4 files, 2 recordings"]
    assert "Ranidae (family): 12 files, 6 recordings" in tree and "  Lithobates (genus): 8 files, 4 recordings" in tree
    assert main(["inspect", str(nested_data)]) == 0  # without --ranks or --taxonomy: a folder per class, no tree
    assert "taxonomy (" not in capsys.readouterr().out


def test_a_label_under_two_lineages_is_refused_with_its_file(nested_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(nested_data, data)
    label = next((data / "Hylidae" / "Hyla").iterdir()).name
    moved = data / "Ranidae" / "Rana" / label
    moved.mkdir()
    shutil.copy(next(p for p in (data / "Hylidae" / "Hyla" / label).iterdir() if p.is_file()), moved / "x.wav")
    with pytest.raises(DataError, match=f"the label '{label}' is also under"):
        label_table(load_catalog(data), data, "folders")


def test_a_taxonomy_csv_must_place_every_label(synthetic_dataset, tmp_path):
    labels = sorted(p.name for p in synthetic_dataset.iterdir() if p.is_dir())
    pd.DataFrame({"label": labels[:-1], "order": "A"}).to_csv(tmp_path / "t.csv", index=False)
    config = EchoConfig().replace(taxonomy={"source": str(tmp_path / "t.csv")})
    with pytest.raises(DataError, match=f"no lineage for the label.s. {labels[-1]}"):
        labels_table(synthetic_dataset, config)


def test_below_node_names_the_children():
    table = pd.DataFrame({"label": CLASSES})
    assert below_node(table, FROGS, "Ranidae")["label"].tolist() == ["Lithobates", "Lithobates", "Rana"]
    with pytest.raises(DataError, match="--node Ranidae/Nope: not an internal node"):
        below_node(table, FROGS, "Ranidae/Nope")


def test_rank_metrics_count_near_misses_and_the_hierarchical_f1():
    labels = ["green-frog", "bullfrog", "wood-frog", "tree-frog"]
    probs = np.eye(4)[[0, 0, 1, 2]]  # green->bullfrog (same genus), bullfrog right, wood->green (same family),
    result = rank_metrics(labels, probs, CLASSES, FROGS)  # tree-frog right
    assert result["ranks"]["label"]["accuracy"] == 0.5
    assert result["ranks"]["genus"]["accuracy"] == 0.75 and result["ranks"]["family"]["accuracy"] == 1.0
    assert result["mistakes_within"] == {"family": 1.0, "genus": 0.5}
    assert result["hierarchical_f1"] == pytest.approx((2 / 3 + 1 + 1 / 3 + 1) / 4)
    assert np.array(result["ranks"]["family"]["confusion_matrix"]).tolist() == [[1, 0], [0, 3]]


# ---- a model of a taxonomy, end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frog_model(nested_data, tiny_training, tmp_path_factory):
    """A small CNN trained on the nested folders' labels, with the taxonomy.csv of its classes."""
    from echoengine import api

    _, config_file = tiny_training
    config = EchoConfig.load(config_file).replace(
        taxonomy={"source": "folders", "ranks": ["family", "genus"]}, train={"epochs": 3},
        data={"test_fraction": 0.25, "val_fraction": 0.25})
    out = tmp_path_factory.mktemp("frog-model") / "bundle"
    result = api.train(nested_data, config=config, out=out)
    assert len(result.classes) == 4
    tree = labels_table(nested_data, config)[1]
    assert Taxonomy.read(out / "taxonomy.csv") == tree  # training writes the classes' taxonomy into the bundle
    return out, tree


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoengine", *args], capture_output=True, text=True, check=False)


def test_predict_gives_each_file_its_lineage_and_the_deepest_sure_rank(frog_model, nested_data):
    from echoengine import api

    bundle, tree = frog_model
    files = sorted(str(p) for p in nested_data.rglob("*") if p.is_file())[:6]
    result = api.predict(bundle, files, min_confidence=0.999999)
    for row, probs in zip(result.rows(), result.probabilities, strict=True):
        assert list(row["ranks"]) == ["family", "genus", "label"]
        family, label = row["ranks"]["family"], row["ranks"]["label"]
        assert label["label"] == result.classes[int(np.argmax(probs))]  # the most probable label's lineage
        assert tree.lineages[label["label"]][0] == family["label"]
        index = tree.names("family").index(family["label"])
        assert family["probability"] == pytest.approx(100 * tree.rank_probabilities(probs, result.classes,
                                                                                     "family")[index], abs=0.01)
        if family["probability"] < 99.9999:  # no rank is that sure: nothing is named
            assert (row["species"], row["rank"], row["probability"]) == ("", "", None)
    everything = api.predict(bundle, files).rows()  # min_confidence 0: the label rank
    assert all(row["rank"] == "label" and row["species"] == row["ranks"]["label"]["label"] for row in everything)
    done = _cli("predict", str(bundle), *files[:2], "--format", "json", "--min-confidence", "0.0")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)[0]["ranks"]) == {"family", "genus", "label"}
    done = _cli("predict", str(bundle), *files[:2], "--format", "csv")
    assert done.stdout.splitlines()[0] == "file,rank,species,probability,family,genus,family_probability," \
                                          "genus_probability"
    # with --min-confidence, the CSV names each file's deepest rank that sure, as the JSON's species and rank do
    done = _cli("predict", str(bundle), *files[:2], "--format", "csv", "--min-confidence", "0.5", "--top-k", "2")
    table = pd.read_csv(io.StringIO(done.stdout), keep_default_na=False)
    assert list(table.columns[-3:]) == ["taxon", "taxon_rank", "taxon_probability"] and len(table) == 4
    sure = api.predict(bundle, files[:2], min_confidence=0.5).rows()
    for row, (_, rows) in zip(sure, table.groupby("file", sort=False), strict=True):
        assert set(rows["taxon"]) == {row["species"]} and set(rows["taxon_rank"]) == {row["rank"]}


def test_detect_events_carry_their_lineage(frog_model, nested_data, tmp_path):
    from echoengine import api

    bundle, tree = frog_model
    files = sorted(str(p) for p in nested_data.rglob("*") if p.is_file())[:4]
    result = api.detect(bundle, files, out=tmp_path / "run", threshold=0.0, top_n=1, min_confidence=0.5)
    events = result.events
    assert len(events) and {"family", "family_score", "genus", "genus_score", "taxon", "taxon_rank"} <= set(events)
    for event in events.to_dict("records"):
        assert (event["family"], event["genus"]) == tree.lineages[event["label"]]
        assert event["family_score"] >= event["genus_score"] - 1e-4 >= event["score"] - 2e-4  # sums of more labels
    raven = (tmp_path / "run" / "events.selections.txt").read_text().splitlines()
    assert raven[0].split("\t")[-7:] == ["family", "family_score", "genus", "genus_score", "taxon", "taxon_rank",
                                         "taxon_score"]
    assert len(raven) == len(events) + 1


def test_evaluate_reports_every_rank(frog_model, nested_data, tmp_path):
    from echoengine import api

    bundle, _ = frog_model
    result = api.evaluate(bundle, nested_data, out=tmp_path / "report")
    ranks = result.metrics["taxonomy"]["ranks"]
    assert list(ranks) == ["family", "genus", "label"]
    assert ranks["label"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert ranks["family"]["accuracy"] >= ranks["genus"]["accuracy"] >= ranks["label"]["accuracy"]
    assert (tmp_path / "report" / "plots" / "confusion_family.png").is_file()
    assert "hierarchical F1" in result.report
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["taxonomy"]["ranks"]["genus"]["names"] == ["Hyla", "Lithobates", "Rana"]


def test_the_service_stores_and_gives_each_detection_its_lineage(frog_model, nested_data, tmp_path):
    from fastapi.testclient import TestClient

    from echoengine.detection import DetectOptions
    from echoengine.service.app import create_app
    from echoengine.service.ingest import ingest
    from echoengine.service.server import open_service

    bundle, tree = frog_model
    service = open_service(bundle, store=tmp_path / "store", options=DetectOptions(threshold=0.0, top_n=1),
                           public_reads=True)
    try:
        heard: list[dict] = []
        service.worker.on_detection(heard.append)  # what MQTT publishes
        audio = next(p for p in nested_data.rglob("*.wav")).read_bytes()
        recording, _ = ingest(service.db, service.store, audio, filename="frog.wav")
        assert service.worker.run_once() == recording
        items = TestClient(create_app(service)).get("/api/detections").json()["items"]
        assert items and len(heard) == len(items)
        for item in items:
            ranks = item["ranks"]
            assert list(ranks) == ["family", "genus", "label"] and ranks["label"]["label"] == item["species"]
            assert (ranks["family"]["label"], ranks["genus"]["label"]) == tree.lineages[item["species"]]
            assert ranks["family"]["score"] >= ranks["label"]["score"] - 1e-6
        assert all(detection["ranks"] for detection in heard)
    finally:
        service.stop()


def test_a_file_above_the_labels_folder_is_refused_with_its_path(nested_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(nested_data, data)
    stray = data / "Hylidae" / "Hyla" / "stray.wav"
    shutil.copy(next(nested_data.rglob("*.wav")), stray)
    with pytest.raises(DataError, match=f"{re.escape(str(stray))}: lies 2 folder.s. below .* above the label's"):
        label_table(load_catalog(data), data, "folders", ranks=["family", "genus"])


def test_one_node_needs_two_children(nested_data):
    table = load_catalog(nested_data)
    with pytest.raises(DataError, match="--node Hylidae/Hyla: its files have 1 child class"):
        label_table(table, nested_data, "folders", ranks=["family", "genus"], node="Hylidae/Hyla")


def test_a_node_of_a_csv_taxonomy_reads_the_whole_dataset(nested_data, tmp_path):
    """A --node model's taxonomy.csv holds the labels below it; the others in the data are simply left out."""
    table, tree = label_table(load_catalog(nested_data), nested_data, "folders", ranks=["family", "genus"])
    flat = table.assign(path=table["path"])  # the same files, their labels those of the tree
    below = Taxonomy(tree.ranks, {k: v for k, v in tree.lineages.items() if v[0] == "Ranidae"})
    path = below.write(tmp_path / "below.csv")
    kept = label_table(flat, nested_data, str(path), node="Ranidae")[0]
    assert sorted(kept["label"].unique()) == ["Lithobates", "Rana"] and len(kept) == 12


def test_lineage_columns_follow_each_event_in_long_runs():
    """with_lineage finds each event's windows by bisection per file: 2,000 files of 100 windows in seconds."""
    import time

    from echoengine.events import with_lineage

    files = np.repeat([f"f{i}.wav" for i in range(2000)], 100)
    starts = np.tile(np.arange(100) * 3.0, 2000)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=len(files))
    scores = pd.DataFrame({"file": files, "start": starts, "end": starts + 3.0, **dict(zip(CLASSES, probs.T))})
    events = pd.DataFrame({"file": files[::10], "start": starts[::10], "end": starts[::10] + 6.0,
                           "label": np.array(CLASSES)[probs[::10].argmax(axis=1)], "score": probs[::10].max(axis=1)})
    began = time.perf_counter()
    table = with_lineage(events, scores, CLASSES, FROGS)
    assert time.perf_counter() - began < 30  # was quadratic: minutes
    first = table.iloc[0]
    index = FROGS.names("family").index(first["family"])
    expected = FROGS.rank_probabilities(probs[:2], CLASSES, "family")[:, index].max()
    assert first["family_score"] == pytest.approx(expected, abs=1e-4)
