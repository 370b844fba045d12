"""The output folder of a detect run and its ledger, ``OUT/.detect/``: what survives a crash.

The ledger holds ``run.json`` (the model and window options, which a resumed
run must share), the records of finished files in parts (``part-000001.npz``,
...: each the window scores of the files that finished in a few seconds, and
the files that could not be read, with the reason: one write per part, not
per file), and ``outputs.txt``, the per-file tables (``raven/``,
``audacity/``) written into the folder. Every file is written whole and
then renamed into place; a later part's record of a file replaces an
earlier one's (an unreadable file read on resume).

A run writes into a new or empty folder, into an earlier run's folder to
resume it, or, asked to overwrite, into one holding nothing but an earlier
run's files, which are removed first (:func:`claim_output`): nothing a
person put there is ever removed or overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echoengine.errors import EchoError
from echoengine.files import temporary_path, write_atomic
from echoengine.layout import Bundle

__all__ = ["LEDGER", "OUTPUTS", "Record", "Recorder", "claim_output", "finished_files", "key", "list_outputs",
           "read_records", "start_ledger", "write_atomic"]

LEDGER = ".detect"
MANIFEST = "outputs.txt"  # in the ledger: every per-file table detect wrote into the folder
OUTPUTS = ("scores.parquet", "events.csv", "events.jsonl", "events.selections.txt", "errors.csv", "summary.csv",
           "summary.png")  # and raven/, audacity/: one table per file
_RECORD = re.compile(r"part-\d{6}\.npz(\.tmp)?|[0-9a-f]{20}\.(npz|error)(\.tmp)?|run\.json(\.tmp)?"
                     r"|outputs\.txt(\.tmp)?")
_PART = re.compile(r"part-(\d{6})\.npz")  # (the 20-hex-digit names: one record per file, before parts)


def key(path: str) -> str:
    """The name of a file's records in the ledger."""
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20]


def claim_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Make sure a run writes only where nothing of value is lost: an empty folder, its own run, or a cleared one.

    With ``resume``, the folder must hold an earlier run's ledger; else it
    must be empty, or, with ``overwrite``, hold nothing but an earlier run's
    files, which are then removed (files detect did not write stop it).
    """
    if resume and overwrite:
        raise EchoError("--resume and --overwrite exclude each other: continue the earlier run, or replace it")
    entries = [Path(root, name) for root, dirs, files in os.walk(out) for name in dirs + files]
    if not entries or (resume and (out / LEDGER / "run.json").is_file()):
        return
    if resume:
        raise EchoError(f"{out}: not empty and holds no earlier detect run to resume; choose another --out")
    ours = _run_files(out)
    folders = {out / "raven", out / "audacity", out / LEDGER}
    foreign = sorted(p for p in entries if p not in (folders if p.is_dir() and not p.is_symlink() else ours))
    if foreign:
        raise EchoError(f"{out}: holds files detect did not write (e.g. {foreign[0].relative_to(out)}); "
                        "choose another --out, or move them away")
    if not overwrite:
        raise EchoError(f"{out}: holds an earlier detect run; pass --resume to continue it or --overwrite to "
                        "replace its outputs")
    for path in entries:
        if path not in folders:
            path.unlink()
    for folder in folders:
        if folder.is_dir():
            folder.rmdir()


def _run_files(out: Path) -> set[Path]:
    """The files of an earlier run in ``out``: its ledger, its outputs and the per-file tables it listed."""
    ledger = out / LEDGER
    ours = {out / name for name in OUTPUTS} | {temporary_path(out / name) for name in OUTPUTS}
    if ledger.is_dir():
        ours |= {path for path in ledger.iterdir() if _RECORD.fullmatch(path.name) and path.is_file()}
    if (ledger / MANIFEST).is_file():
        listed = (ledger / MANIFEST).read_text(encoding="utf-8").splitlines()
    elif (ledger / "run.json").is_file() and (out / "events.csv").is_file():  # a finished run of an older version
        listed = [str(p.relative_to(out)) for folder, pattern in (("raven", "*.selections.txt"), ("audacity", "*.txt"))
                  for p in (out / folder).glob(pattern)]
    else:
        listed = []
    return ours | {out / name for name in listed} | {temporary_path(out / name) for name in listed}


def start_ledger(out: Path, bundles: Sequence[Bundle], scoring: dict, resume: bool) -> Path:
    """The run's ledger folder; with ``resume``, the earlier run's, which must match the model and ``scoring``."""
    ledger = out / LEDGER
    identity = {"bundles": [str(b.path.resolve()) for b in bundles],
                "weights": [b.weights_identity for b in bundles],  # a bundle retrained in place differs
                "config": bundles[0].config.fingerprint(), **scoring}
    run_file = ledger / "run.json"
    if resume and run_file.is_file():
        saved = json.loads(run_file.read_text())
        if saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            raise EchoError(f"{out}: cannot resume: the earlier run differs in {', '.join(changed)}; "
                            "use the same model and window options, or another --out")
        return ledger
    ledger.mkdir(parents=True, exist_ok=True)  # empty: see claim_output
    write_atomic(run_file, lambda p: p.write_text(json.dumps(identity, indent=1)))
    return ledger


@dataclass
class Record:
    """What the ledger holds of one file: its window scores (seconds), or why it could not be read."""

    file: str
    start: np.ndarray | None = None
    end: np.ndarray | None = None
    partial: np.ndarray | None = None
    scores: np.ndarray | None = None
    error: str | None = None


def _parts(ledger: Path) -> list[Path]:
    return sorted(p for p in ledger.iterdir() if _PART.fullmatch(p.name)) if ledger.is_dir() else []


def read_records(ledger: Path, log: Callable[[str], None] = print) -> dict[str, Record]:
    """Every file's latest record, by :func:`key`; a damaged part is removed, with a warning (its files score again)."""
    records: dict[str, Record] = {}
    for part in _parts(ledger):
        try:
            with np.load(part, allow_pickle=False) as data:
                arrays = {name: data[name] for name in ("files", "counts", "start", "end", "partial", "scores",
                                                        "error_files", "errors")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            log(f"warning: {part}: damaged record ({' '.join(str(exc).split())[:120]}); scoring its files again")
            part.unlink()
            continue
        bounds = np.concatenate([[0], np.cumsum(arrays["counts"])])
        for i, path in enumerate(arrays["files"].tolist()):
            rows = slice(bounds[i], bounds[i + 1])
            records[key(path)] = Record(path, arrays["start"][rows], arrays["end"][rows], arrays["partial"][rows],
                                        arrays["scores"][rows])
        for path, reason in zip(arrays["error_files"].tolist(), arrays["errors"].tolist(), strict=True):
            records[key(path)] = Record(path, error=reason)
    return records


def finished_files(ledger: Path, files: Sequence[str], log: Callable[[str], None] = print) -> set[str]:
    """The files of ``files`` whose window scores the ledger holds (unreadable ones are tried again)."""
    records = read_records(ledger, log)
    return {f for f in files if (record := records.get(key(f))) is not None and record.error is None}


class Recorder:
    """Records finished files in the ledger, a part every ``seconds`` (and at the end): one write for many files.

    The first finished file is written at once. A run killed between two
    parts loses the files of the last ``seconds`` at most; a resumed run
    scores them again.

    Parameters
    ----------
    ledger : Path
    rate : int
        Sample rate of the windows' sample positions.
    n_classes : int
    seconds : float
        Longest time a finished file waits to be written.
    """

    def __init__(self, ledger: Path, *, rate: int, n_classes: int, seconds: float = 2.0) -> None:
        self.ledger, self.rate, self.n_classes, self.seconds = ledger, rate, n_classes, seconds
        numbers = [int(_PART.fullmatch(p.name).group(1)) for p in _parts(ledger)]
        self.number = max(numbers, default=0)
        self._scored: list[tuple[str, list]] = []
        self._errors: list[tuple[str, str]] = []
        self._since = -float("inf")  # the first finished file is written at once

    def scores(self, path: str, rows: list) -> None:
        """A finished file's windows: ``(start sample, samples of audio, partial, scores)`` each."""
        self._scored.append((path, sorted(rows, key=lambda r: r[0])))
        self._maybe_flush()

    def error(self, path: str, reason: str) -> None:
        """A file that could not be read: listed in ``errors.csv``, tried again by a resumed run."""
        self._errors.append((path, reason))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._since >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """Write the files finished since the last part as one part."""
        self._since = time.monotonic()
        if not (self._scored or self._errors):
            return
        rows = [row for _, file_rows in self._scored for row in file_rows]
        starts = np.array([r[0] for r in rows], dtype=np.int64)
        valid = np.array([r[1] for r in rows], dtype=np.int64)
        arrays = {"files": np.array([p for p, _ in self._scored], dtype=str),
                  "counts": np.array([len(r) for _, r in self._scored], dtype=np.int64),
                  "start": np.round(starts / self.rate, 6), "end": np.round((starts + valid) / self.rate, 6),
                  "partial": np.array([r[2] for r in rows], dtype=bool),
                  "scores": (np.stack([r[3] for r in rows]) if rows else np.zeros((0, self.n_classes))
                             ).astype(np.float32),
                  "error_files": np.array([p for p, _ in self._errors], dtype=str),
                  "errors": np.array([e for _, e in self._errors], dtype=str)}

        def write(target: Path) -> None:
            with open(target, "wb") as file:
                np.savez(file, **arrays)

        self.number += 1
        write_atomic(self.ledger / f"part-{self.number:06d}.npz", write)
        self._scored, self._errors = [], []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()  # also when interrupted: what finished stays finished


def list_outputs(ledger: Path, names: list[str]) -> None:
    """Add per-file tables to the ledger's list of them, before writing them (``--overwrite`` removes them)."""
    manifest = ledger / MANIFEST
    known = manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else []
    if set(names) - set(known):
        write_atomic(manifest, lambda p: p.write_text("".join(f"{n}\n" for n in sorted({*known, *names})),
                                                        encoding="utf-8"))
