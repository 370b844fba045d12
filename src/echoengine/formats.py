"""Event tables in the formats ecologists open: CSV, Raven selection tables, Audacity labels, JSON lines.

An *event table* is a DataFrame with one row per detection or annotation:

``file``, ``start``, ``end`` (seconds), ``label``, ``score`` (NaN when
none), ``low_freq``, ``high_freq`` (Hz, NaN when none), and for merged
detections ``mean_score`` and ``windows``. Writers round times to the
millisecond and scores to 4 decimals, and readers give back exactly what
was written, so an event table survives a round trip through Raven or
Audacity. This module is pure table I/O (pandas only): the annotation
readers of :mod:`echoengine.catalog` and the writers of
:mod:`echoengine.detection` share it.

Examples
--------
>>> import io
>>> events = pd.DataFrame({"file": ["a.wav"], "start": [1.0], "end": [6.0], "label": ["owl"], "score": [0.91]})
>>> text = io.StringIO()
>>> write_raven(events, text)
>>> print(text.getvalue().splitlines()[1])
1	Spectrogram 1	1	1.000	6.000			owl	0.9100
>>> read_raven(io.StringIO(text.getvalue()))[["start", "end", "label", "score"]].to_dict("records")
[{'start': 1.0, 'end': 6.0, 'label': 'owl', 'score': 0.91}]
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "EVENT_COLUMNS", "RAVEN_COLUMNS", "read_audacity", "read_raven", "write_audacity", "write_csv",
    "write_jsonl", "write_raven",
]

EVENT_COLUMNS = ["file", "start", "end", "label", "score", "low_freq", "high_freq"]
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Score"]
_SCORE_SUFFIX = re.compile(r"^(.*) \(([01]\.\d{4})\)$")  # as write_audacity writes it: "owl (0.9100)"


def _text(number: float, digits: int) -> str:
    return "" if number is None or (isinstance(number, float) and math.isnan(number)) else f"{number:.{digits}f}"


def _cell(value) -> str:
    """A table cell: numbers with 4 decimals, nothing for a missing one."""
    if isinstance(value, float | np.floating):
        return _text(float(value), 4)
    return str(value)


def _complete(events: pd.DataFrame) -> pd.DataFrame:
    """The event columns, missing optional ones filled with NaN."""
    events = events.copy()
    for column in ("score", "low_freq", "high_freq"):
        if column not in events:
            events[column] = np.nan
    if "file" not in events:
        events["file"] = ""
    return events


def _open_text(target, mode: str):
    """A text stream for a path (written atomically by the caller) or the stream itself."""
    if isinstance(target, str | os.PathLike):
        return open(target, mode, encoding="utf-8", newline="")
    return _Borrowed(target)


class _Borrowed:
    """A stream given by the caller: used, not closed."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __enter__(self):
        return self.stream

    def __exit__(self, *exc) -> None:
        return None


def write_raven(events: pd.DataFrame, target, *, combined: bool = False, extra: Sequence[str] = ()) -> None:
    """A Raven selection table (tab-separated): one selection per event.

    Parameters
    ----------
    events : DataFrame
        Event table (see the module docstring).
    target : path or text stream
    combined : bool
        Events of several files in one table: adds Raven's ``Begin File``
        column (the file's name).
    extra : sequence of str
        Columns of ``events`` written after Raven's own (e.g. an event's
        genus and family: :func:`echoengine.events.lineage_columns`).
    """
    events = _complete(events)
    columns = [*RAVEN_COLUMNS, *(["Begin File"] if combined else []), *extra]
    with _open_text(target, "w") as out:
        out.write("\t".join(columns) + "\n")
        added = events[list(extra)].to_numpy(dtype=object) if extra else np.empty((len(events), 0), dtype=object)
        for number, (row, more) in enumerate(zip(events.itertuples(index=False), added), start=1):
            fields = [str(number), "Spectrogram 1", "1", _text(row.start, 3), _text(row.end, 3),
                      _text(row.low_freq, 1), _text(row.high_freq, 1), str(row.label), _text(row.score, 4)]
            if combined:
                fields.append(os.path.basename(str(row.file)))
            fields += [_cell(value) for value in more]
            out.write("\t".join(fields) + "\n")


def read_raven(source, *, label_column: str | None = None) -> pd.DataFrame:
    """Read a Raven selection table into an event table.

    Raven writes one row per view (Spectrogram and Waveform) of a selection;
    rows repeating a ``Selection`` number are dropped. The label is read
    from ``label_column``, else the first of ``Species``, ``Annotation``,
    ``Label``, ``Class``, ``species``, ``label`` present.

    Raises
    ------
    ValueError
        The table lacks the time columns or a label column (the message names them).
    """
    table = pd.read_csv(source, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    for needed in ("Begin Time (s)", "End Time (s)"):
        if needed not in table:
            raise ValueError(f"not a Raven selection table: no {needed!r} column (columns: {list(table.columns)})")
    candidates = [label_column] if label_column else ["Species", "Annotation", "Label", "Class", "species", "label"]
    label = next((c for c in candidates if c in table), None)
    if label is None:
        raise ValueError(f"no label column: expected one of {candidates} (columns: {list(table.columns)})")
    if "Selection" in table:
        table = table.drop_duplicates("Selection")

    def numbers(column: str) -> pd.Series:
        if column not in table:
            return pd.Series(np.nan, index=table.index)
        return pd.to_numeric(table[column].replace("", np.nan), errors="coerce")

    return pd.DataFrame({
        "file": table.get("Begin File", ""),
        "start": numbers("Begin Time (s)"), "end": numbers("End Time (s)"),
        "label": table[label].str.strip(), "score": numbers("Score"),
        "low_freq": numbers("Low Freq (Hz)"), "high_freq": numbers("High Freq (Hz)"),
    }).reset_index(drop=True)


def write_audacity(events: pd.DataFrame, target) -> None:
    """An Audacity label track: ``start<TAB>end<TAB>label``, then ``\\<TAB>low<TAB>high`` when frequencies are set.

    A score is kept in the label as ``"label (0.9100)"``, which
    :func:`read_audacity` splits off again.
    """
    events = _complete(events)
    with _open_text(target, "w") as out:
        for row in events.itertuples(index=False):
            text = str(row.label) if _text(row.score, 4) == "" else f"{row.label} ({row.score:.4f})"
            out.write(f"{row.start:.3f}\t{row.end:.3f}\t{text}\n")
            if not (math.isnan(row.low_freq) or math.isnan(row.high_freq)):
                out.write(f"\\\t{row.low_freq:.1f}\t{row.high_freq:.1f}\n")


def read_audacity(source) -> pd.DataFrame:
    """Read an Audacity label track (with the optional frequency lines) into an event table.

    Raises
    ------
    ValueError
        A line that is neither a label nor a frequency line (the message gives its number).
    """
    text = Path(source).read_text(encoding="utf-8-sig") if isinstance(source, str | os.PathLike) else source.read()
    rows: list[dict] = []
    for number, line in enumerate(io.StringIO(text), start=1):
        fields = line.rstrip("\r\n").split("\t")
        if not line.strip():
            continue
        try:
            if fields[0] == "\\":
                if not rows:
                    raise ValueError("a frequency line before any label")
                rows[-1]["low_freq"], rows[-1]["high_freq"] = float(fields[1]), float(fields[2])
                continue
            start, end = float(fields[0]), float(fields[1])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"line {number}: not an Audacity label ({line.strip()[:60]!r}: {exc})") from None
        label = fields[2].strip() if len(fields) > 2 else ""
        score = np.nan
        match = _SCORE_SUFFIX.match(label)
        if match:
            label, score = match.group(1), float(match.group(2))
        rows.append({"file": "", "start": start, "end": end, "label": label, "score": score,
                     "low_freq": np.nan, "high_freq": np.nan})
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def write_csv(events: pd.DataFrame, target) -> None:
    """Events as CSV, one row per event, times in seconds (3 decimals), scores with 4."""
    events = events.copy()
    for column, digits in (("start", 3), ("end", 3), ("score", 4), ("mean_score", 4)):
        if column in events:
            events[column] = events[column].round(digits)
    with _open_text(target, "w") as out:
        events.to_csv(out, index=False, lineterminator="\n")


def write_jsonl(events: pd.DataFrame, target) -> None:
    """Events as JSON lines, one object per event."""
    with _open_text(target, "w") as out:
        for record in events.to_dict("records"):
            clean = {k: (None if isinstance(v, float) and math.isnan(v) else
                         round(v, 4) if isinstance(v, float) else v.item() if hasattr(v, "item") else v)
                     for k, v in record.items()}
            out.write(json.dumps(clean, ensure_ascii=False) + "\n")
