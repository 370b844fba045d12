"""What a detect run found, per species and over time: ``summary.csv`` and ``summary.png``.

The time of a detection is read from a ``YYYYMMDD_HHMMSS`` stamp in its
file's name when there is one (recorders such as AudioMoth and Song Meter
name files so). The plot draws the events of stamped files along the time
of day and those of the other files apart, end to end
(:func:`echoengine.plots.detections_over_time`).

Examples
--------
>>> file_timestamp("/x/S4A03895_20190522_001500.flac", 30.0)
Timestamp('2019-05-22 00:15:30')
>>> file_timestamp("robin.ogg", 1.0) is None
True
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from echoengine import ledger

__all__ = ["file_timestamp", "summarize"]


def summarize(out: str | Path, *, log=print) -> pd.DataFrame:
    """Per species: events, files, seconds detected, and the hours of day of detections; plots them over time.

    Reads ``out/events.csv`` (written by :func:`echoengine.detection.detect`)
    and writes ``summary.csv`` and ``summary.png`` into ``out`` (the plot
    needs matplotlib, which the serving runtime lacks: without it, the table
    alone, with a note). The hours of day come from the files with a time
    stamp in their names; the files without one are named in the log and
    plotted apart.
    """
    out = Path(out)
    events = pd.read_csv(out / "events.csv", keep_default_na=False)
    events["when"] = [file_timestamp(f, s) for f, s in zip(events["file"], events["start"], strict=True)]
    rows = []
    for label, group in events.groupby("label", sort=True):
        stamped = group["when"].dropna()
        hours = sorted({t.hour for t in stamped})
        rows.append({"species": label, "events": len(group), "files": group["file"].nunique(),
                     "seconds": round(float((group["end"] - group["start"]).sum()), 1),
                     "hours_of_day": " ".join(f"{h:02d}" for h in hours)})
    table = pd.DataFrame(rows, columns=["species", "events", "files", "seconds", "hours_of_day"])
    table = table.sort_values(["events", "species"], ascending=[False, True], kind="stable").reset_index(drop=True)
    ledger.write_atomic(out / "summary.csv", lambda p: table.to_csv(p, index=False, lineterminator="\n"))
    _plot(events, out / "summary.png", log)
    log(table.to_string(index=False) if len(table) else "no detections")
    note = _time_note(events)
    if note:
        log(note)
    return table


def _plot(events: pd.DataFrame, path: Path, log) -> None:
    try:
        from echoengine.plots import detections_over_time  # matplotlib: the train extra's
    except ModuleNotFoundError as exc:
        log(f"note: no {path.name}: plotting needs {exc.name} (the train extra: pip install -e '.[train]')")
        return
    detections_over_time(events, path)


def _time_note(events: pd.DataFrame) -> str:
    """What the summary says about time: which files had no time stamp in their names."""
    unstamped = list(dict.fromkeys(events.loc[events["when"].isna(), "file"]))
    if not unstamped:
        return ""
    names = ", ".join(os.path.basename(str(f)) for f in unstamped[:5])
    names += f" and {len(unstamped) - 5} more" if len(unstamped) > 5 else ""
    stamped = events.loc[events["when"].notna(), "file"].nunique()
    if not stamped:
        return (f"no time stamp (YYYYMMDD_HHMMSS) in the names of the {len(unstamped)} file(s) with detections: "
                "summary.png lays them end to end and hours_of_day is empty")
    return (f"summary.png: {stamped} file(s) on a time-of-day axis (hours_of_day counts only them); "
            f"{len(unstamped)} without a time stamp in the name, plotted apart end to end: {names}")


def file_timestamp(path: str, offset: float) -> pd.Timestamp | None:
    """The clock time ``offset`` seconds into a file whose name has a ``YYYYMMDD_HHMMSS`` stamp, else None."""
    match = re.search(r"(\d{8})[_T-]?(\d{6})", os.path.basename(str(path)))
    if not match:
        return None
    stamp = pd.to_datetime(match.group(1) + match.group(2), format="%Y%m%d%H%M%S", errors="coerce")
    return None if pd.isna(stamp) else stamp + pd.Timedelta(seconds=float(offset))
