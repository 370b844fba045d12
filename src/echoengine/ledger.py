"""The output folder of a detect run and its ledger, ``OUT/.detect/``: what survives a crash.

The ledger holds ``run.json`` (the model and window options, which a resumed
run must share), one record per finished file (``KEY.npz``: its window
scores) or unreadable one (``KEY.error``), and ``outputs.txt``, the per-file
tables (``raven/``, ``audacity/``) written into the folder. Every file is
written whole and then renamed into place.

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
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import EchoError
from echoengine.files import temporary_path, write_atomic
from echoengine.layout import Bundle, BundleFiles

__all__ = ["LEDGER", "OUTPUTS", "claim_output", "finished", "key", "list_outputs", "record_error", "record_scores",
           "recorded_scores", "start_ledger", "write_atomic"]

LEDGER = ".detect"
MANIFEST = "outputs.txt"  # in the ledger: every per-file table detect wrote into the folder
OUTPUTS = ("scores.parquet", "events.csv", "events.jsonl", "events.selections.txt", "errors.csv", "summary.csv",
           "summary.png")  # and raven/, audacity/: one table per file
_RECORD = re.compile(r"[0-9a-f]{20}\.(npz|error)(\.tmp)?|run\.json(\.tmp)?|outputs\.txt(\.tmp)?")


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
                "weights": [_weights_identity(b.path) for b in bundles],  # a bundle retrained in place differs
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


def _weights_identity(folder: Path) -> str:
    stat = BundleFiles(folder).weights.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def finished(ledger: Path, path: str, log) -> bool:
    """Whether the ledger holds a readable record of the file; a damaged one is removed, with a warning."""
    record = ledger / f"{key(path)}.npz"
    if not record.is_file():
        return False
    try:
        with np.load(record, allow_pickle=False) as data:
            [data[name] for name in ("start", "end", "partial", "scores")]
        return True
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        log(f"warning: {record}: damaged record of {path} ({' '.join(str(exc).split())[:120]}); scoring it again")
        record.unlink()
        return False


def record_scores(ledger: Path, path: str, rows: list, *, rate: int, n_classes: int) -> None:
    """A finished file's window scores, written atomically: the record a resumed run keeps.

    ``rows`` are ``(start sample, samples of audio, partial, scores)`` per window.
    """
    rows.sort(key=lambda r: r[0])
    starts = np.array([r[0] for r in rows], dtype=np.int64)
    valid = np.array([r[1] for r in rows], dtype=np.int64)
    matrix = np.stack([r[3] for r in rows]) if rows else np.zeros((0, n_classes))

    def write(target: Path) -> None:
        with open(target, "wb") as file:
            np.savez(file, start=np.round(starts / rate, 6), end=np.round((starts + valid) / rate, 6),
                     partial=np.array([r[2] for r in rows], dtype=bool), scores=matrix.astype(np.float32))

    write_atomic(ledger / f"{key(path)}.npz", write)
    (ledger / f"{key(path)}.error").unlink(missing_ok=True)  # failed in an earlier run, read now


def record_error(ledger: Path, path: str, error: str) -> None:
    """A file that could not be read: listed in ``errors.csv``, tried again by a resumed run."""
    record = json.dumps({"file": path, "error": error})
    write_atomic(ledger / f"{key(path)}.error", lambda p: p.write_text(record))


def recorded_scores(ledger: Path, path: str, classes: list[str]) -> pd.DataFrame:
    """A finished file's window scores: ``file, start, end, partial`` and a column per class."""
    with np.load(ledger / f"{key(path)}.npz", allow_pickle=False) as record:
        table = pd.DataFrame({"file": path, "start": record["start"], "end": record["end"],
                              "partial": record["partial"]})
        return pd.concat([table, pd.DataFrame(record["scores"], columns=classes)], axis=1)


def list_outputs(ledger: Path, names: list[str]) -> None:
    """Add per-file tables to the ledger's list of them, before writing them (``--overwrite`` removes them)."""
    manifest = ledger / MANIFEST
    known = manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else []
    if set(names) - set(known):
        write_atomic(manifest, lambda p: p.write_text("".join(f"{n}\n" for n in sorted({*known, *names})),
                                                        encoding="utf-8"))
