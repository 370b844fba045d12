"""Detection over long field recordings: every window scored, events, outputs that survive a crash.

A recording is decoded block by block (:func:`echoengine.audio.stream`:
memory stays bounded whatever its length) and cut into the model's windows
(its clip length, or BirdNET's 3 s for BirdNET bundles), ``overlap``
seconds apart from the next: the windows cover the whole file, the last one
padded with silence and flagged ``partial`` (dropped when shorter than
``min_window`` seconds). Worker processes may decode and compute the model
inputs (the mel front end for CNN bundles); batches of windows drawn from
several files at once are scored with the bundle (or the mean of an
ensemble's members, or the exported ONNX graph).

Finished files are recorded in ``OUT/.detect/``, the first at once, then a part every 2 seconds
for the files of those seconds (their window scores, written atomically:
:class:`echoengine.ledger.Recorder`; the model always takes inputs of one shape, CNN images 4 at a
time, so a window's scores do not depend on which other windows share its batch), so
``resume=True`` after a crash or a kill scores only the files not yet recorded, and the outputs,
always rebuilt from the records in the order of the input files, are the same bytes as an
uninterrupted run's (the files of a damaged part are scored again). The batches are scored by
``jobs`` processes of one thread each (:class:`echoengine.scorepool.ScoringPool`). An unreadable file
is reported in one line, listed in ``errors.csv`` with the reason, and the
run goes on. A run writes into a new or empty folder only, unless it
resumes the folder's run or overwrites it, which removes only the files of
that run (:func:`echoengine.ledger.claim_output`).

From the window scores, events: a window detects a class when its score
reaches the class's threshold (``threshold``, else the bundle's calibrated
``thresholds.csv``, else 0.5), optionally only among the window's
``top_n`` classes and the classes included and not excluded; detections of
one class in overlapping or touching windows (or closer than ``merge_gap``
seconds) merge into one event with its start, end, max and mean score.

Examples
--------
>>> [(start, valid) for start, _, valid in stream_windows([np.ones(7, "float32"), np.ones(4, "float32")],
...                                                      length=4, hop=3)]
[(0, 4), (3, 4), (6, 4), (9, 2)]
>>> scores = pd.DataFrame({"file": "a.wav", "start": [0.0, 2.5, 5.0], "end": [5.0, 7.5, 10.0], "owl": [.9, .8, .1]})
>>> merge_events(window_detections(scores, ["owl"], thresholds=np.array([0.5])))[["start", "end", "score"]]
   start  end  score
0    0.0  7.5    0.9
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fastparquet  # a tenth of pyarrow's size: the serving runtime stays small (pandas reads it with either)
import numpy as np
import pandas as pd
from tqdm import tqdm

from echoengine import audio, formats, ledger
from echoengine.clips import stream_windows
from echoengine.detect_options import DetectOptions
from echoengine.errors import AudioError, EchoError
from echoengine.events import (
    check_species,
    detection_thresholds,
    kept_scores,
    lineage_columns,
    merge_events,
    weigh_events,
    window_detections,
    with_lineage,
)
from echoengine.kinds import IMAGES, MODEL_BATCH
from echoengine.layout import THRESHOLDS_FILE, Bundle
from echoengine.scorepool import ScoringPool
from echoengine.scoring import scoring_threads, window_scorer
from echoengine.sources import find_audio
from echoengine.summary import summarize
from echoengine.taxonomy import Taxonomy, bundle_taxonomy
from echoengine.thresholds import load_thresholds, write_thresholds

__all__ = [
    "THRESHOLDS_FILE", "DetectOptions", "check_windows", "detect", "file_events", "file_windows", "load_thresholds",
    "score_file", "score_files", "scored_windows", "summarize", "write_outputs", "write_thresholds",
]


# ---- windows ---------------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    inputs: object  # the scorer's inputs (a tensor, or an array for graphs); None when no window is left
    rows: list[tuple[int, int, int, bool]]  # (file index, start sample, audio samples, partial)
    finished: list[tuple[int, str | None]] = field(default_factory=list)  # (file index, error or None)


class _FileWindows:
    """Batches of windows across files; each worker takes every n-th file and reports each file's end.

    With ``prepare`` False, a batch's inputs are its windows (scoring processes prepare them).
    """

    def __init__(self, files: list[tuple[int, str]], scorer, options: DetectOptions, prepare: bool = True) -> None:
        self.files, self.scorer, self.options, self.prepare = files, scorer, options, prepare
        self.length = scorer.config.window_samples

    def share(self, worker: int, workers: int) -> Iterator[_Batch]:
        """The batches of worker ``worker`` of ``workers``: every ``workers``-th file from its own."""
        mine = self.files[worker::workers]
        windows: list[np.ndarray] = []
        batch = _Batch(None, [])
        for index, path in mine:
            error = None
            try:
                for start, window, valid, partial in file_windows(path, self.scorer.config, self.options):
                    windows.append(window)
                    batch.rows.append((index, start, valid, partial))
                    if len(windows) == self.options.batch_size:
                        yield self._full(batch, windows)
                        windows, batch = [], _Batch(None, [])
            except AudioError as exc:  # its windows already batched are dropped by the main process
                error = exc.reason
            batch.finished.append((index, error))
        if batch.rows or batch.finished:
            yield self._full(batch, windows)

    def _full(self, batch: _Batch, windows: list[np.ndarray]) -> _Batch:
        if windows:  # padded so that every call of the model has one shape (CNN images: MODEL_BATCH of them)
            whole = MODEL_BATCH if self.scorer.kind == IMAGES else self.options.batch_size  # rows a shape holds
            stacked = np.zeros((-(-len(windows) // whole) * whole, self.length), dtype=np.float32)
            stacked[: len(windows)] = np.stack(windows)
            batch.inputs = self.scorer.prepare(stacked) if self.prepare else stacked
        return batch


def file_windows(path: str | Path, config, options: DetectOptions) -> Iterator[tuple[int, np.ndarray, int, bool]]:
    """The windows detect scores in one file: ``(start sample, window, samples of audio, partial)``.

    The file is decoded block by block; windows are the model's
    (:attr:`~echoengine.config.EchoConfig.window_seconds`: the clip length,
    or BirdNET's 3 s for models on BirdNET) and ``options.overlap`` seconds
    apart from the next, the last one padded with silence and flagged partial
    (dropped when it holds less than ``options.min_window`` seconds, unless
    it is the file's only window).

    Raises
    ------
    AudioError
        The file cannot be decoded (possibly after some windows were given).
    """
    rate = config.audio.sample_rate
    length = config.window_samples
    min_samples = round(options.min_window * rate)
    blocks = audio.stream(path, config.audio, block_seconds=options.block_seconds)
    for start, window, valid in stream_windows(blocks, length=length, hop=length - round(options.overlap * rate)):
        partial = valid < length
        if not (partial and start > 0 and valid < min_samples):
            yield start, window, valid, partial


def score_file(scorer, path: str | Path, options: DetectOptions = DetectOptions()) -> pd.DataFrame:
    """The window scores of one file, as :func:`detect` scores and records them.

    Windows go to the scorer in batches of ``options.batch_size``; a file's
    last, short batch is padded only to whole model batches of CNN images
    (:data:`~echoengine.kinds.MODEL_BATCH`, the shapes :func:`detect`'s
    batches are scored in), so a short recording costs its own windows, not
    a whole batch, and the scores are :func:`detect`'s.

    Returns
    -------
    DataFrame
        ``file, start, end`` (seconds), ``partial`` and one column of scores per class.

    Examples
    --------
    >>> scores = score_file(window_scorer([read_bundle("bundle")], onnx=True), "pond.wav")  # doctest: +SKIP
    >>> file_events(scores, scorer.classes, scorer.config, thresholds=np.full(4, 0.5))  # doctest: +SKIP
    """
    rows, windows = [], []  # rows: (start sample, samples of audio, partial, scores), as detect records them

    def flush() -> None:
        padded = -(-len(windows) // MODEL_BATCH) * MODEL_BATCH if scorer.kind == IMAGES else len(windows)
        stacked = np.zeros((padded, scorer.config.window_samples), dtype=np.float32)
        stacked[: len(windows)] = np.stack([window for _, window, _, _ in windows])
        probabilities = scorer.score(scorer.prepare(stacked))[: len(windows)]
        rows.extend((start, valid, partial, p) for (start, _, valid, partial), p in zip(windows, probabilities,
                                                                                         strict=True))
        windows.clear()

    for window in file_windows(path, scorer.config, options):
        windows.append(window)
        if len(windows) == options.batch_size:
            flush()
    if windows:
        flush()
    return _scores_table(path, rows, scorer)


def _scores_table(path: str | Path, rows: list, scorer) -> pd.DataFrame:
    """A file's window scores from its rows ``(start sample, samples of audio, partial, scores)``, in order."""
    rate = scorer.config.audio.sample_rate
    rows = sorted(rows, key=lambda row: row[0])
    starts = np.array([row[0] for row in rows], dtype=np.int64)
    ends = starts + np.array([row[1] for row in rows], dtype=np.int64)
    matrix = np.stack([row[3] for row in rows]) if rows else np.zeros((0, len(scorer.classes)))
    table = pd.DataFrame({"file": str(path), "start": np.round(starts / rate, 6), "end": np.round(ends / rate, 6),
                          "partial": np.array([bool(row[2]) for row in rows], dtype=bool)})
    return pd.concat([table, pd.DataFrame(matrix.astype(np.float32), columns=scorer.classes)], axis=1)


def file_events(scores: pd.DataFrame, classes: Sequence[str], config, *, thresholds: np.ndarray,
                options: DetectOptions = DetectOptions()) -> pd.DataFrame:
    """The events of window scores (one file's or many): the events table of :func:`detect`'s outputs.

    Returns
    -------
    DataFrame
        ``file, start, end, label, score`` (the max), ``low_freq, high_freq``
        (the front end's band), ``mean_score, windows``.
    """
    events = merge_events(window_detections(scores, classes, thresholds=thresholds, top_n=options.top_n,
                                            include=options.include, exclude=options.exclude), gap=options.merge_gap)
    events = events.round({"start": 3, "end": 3, "score": 4, "mean_score": 4})
    fe = config.frontend
    events.insert(5, "low_freq", float(fe.fmin))
    events.insert(6, "high_freq", float(fe.fmax or config.audio.sample_rate / 2))
    return events


# ---- the run ---------------------------------------------------------------------------------------------------
def detect(bundles: Sequence[Bundle], paths: Sequence[str | Path], out: str | Path, *,
           options: DetectOptions = DetectOptions(), resume: bool = False, overwrite: bool = False,
           progress: bool = True, log=print) -> dict[str, Path]:
    """Score every window of every file, record each finished file, and write the outputs.

    Parameters
    ----------
    bundles : sequence of Bundle
        One bundle, or an ensemble sharing classes and front end.
    paths : sequence of paths
        Audio files and folders.
    out : path
        Output folder (see :func:`write_outputs`): new or empty, unless ``resume`` or ``overwrite``.
    resume : bool
        Keep the files finished by an earlier run into ``out`` (with the same
        model and window options) and score only the others.
    overwrite : bool
        Remove an earlier run's files from ``out`` first (refused when it holds
        files detect did not write).

    Returns
    -------
    dict
        Output name -> path.
    """
    out = Path(out)
    files = find_audio(paths)
    if not files:
        raise EchoError(f"no audio files in {', '.join(map(str, paths))}")
    jobs, threads = options.scoring_processes()
    with scoring_threads(threads):  # before the scorer: its ONNX sessions take their threads when made
        scorer = window_scorer(bundles, onnx=options.onnx)
        check_species(scorer.classes, options.include, options.exclude)  # before hours of scoring, not after
        check_windows(scorer, options)
        # a bad thresholds.csv stops the run now, not after hours of scoring
        thresholds = detection_thresholds(bundles, options.threshold, scorer.classes)
        records, todo = open_ledger(out, bundles, scorer, files, options=options, resume=resume,
                                    overwrite=overwrite, log=log)
        _score_files(scorer, files, todo, records, options=options, progress=progress, log=log, jobs=jobs,
                     threads=threads or 1)
    return write_outputs(out, files, scorer.classes, scorer.config, options=options, thresholds=thresholds,
                         log=log, taxonomy=bundle_taxonomy(bundles[0]),
                         keep_scores=kept_scores(bundles, options.keep_scores))


def open_ledger(out: Path, bundles: Sequence[Bundle], scorer, files: list[str], *, options: DetectOptions,
                resume: bool, overwrite: bool, log: Callable[[str], None]) -> tuple[Path, list[tuple[int, str]]]:
    """Claim ``out``, start (or resume) its ledger, and list the files still to score as ``(index, path)``."""
    ledger.claim_output(out, resume=resume, overwrite=overwrite)
    # the window length too: an earlier version scored BirdNET bundles in 5 s clips
    identity = {**options.scoring(), "window": scorer.config.window_seconds}
    records = ledger.start_ledger(out, bundles, identity, resume)
    done = ledger.finished_files(records, files, log)  # failed files are tried again
    todo = [(i, f) for i, f in enumerate(files) if f not in done]
    if resume and len(todo) < len(files):
        log(f"resuming: {len(files) - len(todo)} of {len(files)} files already done")
    return records, todo


def check_windows(scorer, options: DetectOptions) -> None:
    """Refuse an overlap of a window or more, and image batches that are not whole model batches."""
    seconds = scorer.config.window_seconds
    if not 0 <= options.overlap < seconds:
        raise EchoError(f"--overlap must be in [0, {seconds:g}) seconds (the model's window), got {options.overlap}")
    if scorer.kind == IMAGES and options.batch_size % MODEL_BATCH:
        raise EchoError(f"--batch-size must be a multiple of {MODEL_BATCH} (the model's batch), so "
                        f"that every window is scored in batches of one shape; got {options.batch_size}")


def _score_files(scorer, files: list[str], todo: list[tuple[int, str]], records: Path, *, options: DetectOptions,
                 progress: bool, log: Callable[[str], None], jobs: int = 1, threads: int = 1) -> None:
    """Score the windows of the files to do and record the files (their scores or their errors) as they finish.

    With ``jobs`` above 1 and more than a batch or two of windows to score,
    :class:`ScoringPool` processes of ``threads`` threads score the batches.
    """
    rate = scorer.config.audio.sample_rate
    samples = {i: round(_duration(f) * rate) for i, f in todo}
    windows = sum(-(-n // scorer.config.window_samples) for n in samples.values())
    pool = None
    if jobs > 1 and windows > 2 * options.batch_size:
        scorer.load()  # in this process, before the fork: the children share the model
        pool = ScoringPool(scorer, jobs, (options.batch_size, scorer.config.window_samples), threads)
    bar = _Progress(samples, rate, files=len(files), done=len(files) - len(todo), enabled=progress)
    try:
        with bar, ledger.Recorder(records, rate=rate, n_classes=len(scorer.classes)) as recorder:
            for index, rows in scored_windows(scorer, todo, options, on_window=bar.reach, pool=pool):
                path = files[index]
                if isinstance(rows, str):
                    log(f"error: {path}: {rows}")
                    recorder.error(path, rows)
                else:
                    recorder.scores(path, rows)
                bar.finish(index)
    finally:
        if pool is not None:
            pool.close()


def scored_windows(scorer, files: Sequence[tuple[int, str]], options: DetectOptions, *,
                   on_window: Callable[[int, int], object] | None = None,
                   pool: ScoringPool | None = None) -> Iterator[tuple[int, list | str]]:
    """Score the windows of several files together, in :func:`detect`'s batches; give each file as it finishes.

    Parameters
    ----------
    files : sequence of (index, path)
    on_window : callable, optional
        Called with ``(index, end sample)`` of each window scored (a progress bar).
    pool : ScoringPool, optional
        Scoring processes that score (and prepare) the batches; else this process does.

    Yields
    ------
    (index, rows) or (index, reason)
        ``rows``: ``(start sample, samples of audio, partial, scores)`` of each
        window of the file; ``reason``: why the file could not be decoded.
    """
    pending: dict[int, list] = {i: [] for i, _ in files}
    batches = _batches(_FileWindows(list(files), scorer, options, prepare=pool is None), options.workers)
    if pool is None:
        scored = ((batch, scorer.score(batch.inputs) if batch.rows else None) for batch in batches)
    else:
        scored = pool.scores(_handed_over(batches))
    for batch, scores in scored:
        if batch.rows:
            probabilities = scores[: len(batch.rows)]
            for (index, start, valid, partial), p in zip(batch.rows, probabilities, strict=True):
                pending[index].append((start, valid, partial, p))
                if on_window is not None:
                    on_window(index, start + valid)
        for index, error in batch.finished:
            rows = pending.pop(index, [])
            yield index, (rows if error is None else error)


def _handed_over(batches: Iterator[_Batch]) -> Iterator[tuple[_Batch, np.ndarray | None]]:
    """``(batch, its windows)`` for a :class:`ScoringPool`, which copies them: the batch lets go of them."""
    for batch in batches:
        windows, batch.inputs = batch.inputs, None
        yield batch, windows if batch.rows else None


def score_files(scorer, paths: Sequence[str | Path], options: DetectOptions = DetectOptions()
                ) -> Iterator[tuple[int, pd.DataFrame | str]]:
    """The window scores of several files, scored together as :func:`detect` scores them; each as it finishes.

    Windows of several files share the model's batches, so many short
    recordings cost what one long one does; the scores are :func:`detect`'s.

    Yields
    ------
    (index, scores) or (index, reason)
        ``scores`` as :func:`score_file` gives them; ``reason``: why the file could not be decoded.

    Examples
    --------
    >>> for i, scores in score_files(scorer, ["pond.wav", "marsh.flac"]):  # doctest: +SKIP
    ...     print(i, len(scores))
    """
    for index, rows in scored_windows(scorer, list(enumerate(map(str, paths))), options):
        yield index, rows if isinstance(rows, str) else _scores_table(paths[index], rows, scorer)


def _batches(windows: _FileWindows, workers: int) -> Iterator[_Batch]:
    """The batches of windows, read in the main process or by ``workers`` processes (torch's DataLoader)."""
    if workers == 0:
        return windows.share(0, 1)
    from torch.utils.data import DataLoader

    from echoengine.torchscorer import WorkerShare  # worker processes come with torch (not in the serving runtime)

    return iter(DataLoader(WorkerShare(windows), batch_size=None, num_workers=workers, persistent_workers=False))


class _Progress:
    """Audio scored, on a bar in units that suit its total (s, min or h), never past the total.

    Counted in samples at the model's rate, each file's capped at the length
    its header gives: decoders and resamplers may yield a sample more.
    """

    def __init__(self, samples: dict[int, int], rate: int, *, files: int, done: int, enabled: bool) -> None:
        self.expected, self.reached, self.count = samples, dict.fromkeys(samples, 0), 0
        self.files, self.done = files, done
        total = sum(samples.values())
        unit, self.scale = ("s", rate) if total < 120 * rate else ("min", 60 * rate) if total < 7200 * rate else (
            "h", 3600 * rate)
        digits = 2 if unit == "h" else 1
        self.bar = tqdm(total=total / self.scale, desc="detect", disable=not enabled, file=sys.stderr,
                        bar_format=f"{{l_bar}}{{bar}}| {{n:.{digits}f}}/{{total:.{digits}f}} {unit} audio "
                        "[{elapsed}<{remaining}{postfix}]")

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def reach(self, index: int, sample: int) -> None:
        """The audio of file ``index`` up to ``sample`` is scored."""
        capped = min(sample, self.expected[index])
        if capped > self.reached[index]:
            self.count += capped - self.reached[index]
            self.reached[index] = capped
            self.bar.n = self.count / self.scale  # at most the total: integers, divided alike
            self.bar.update(0)

    def finish(self, index: int) -> None:
        """File ``index`` is done (its dropped tail or its failure counts as scored)."""
        self.done += 1
        self.bar.set_postfix_str(f"{self.done}/{self.files} files", refresh=False)  # shown with the next update
        self.reach(index, self.expected[index])


def _duration(path: str) -> float:
    try:
        return audio.info(path).duration
    except AudioError:
        return 0.0


def _output_name(path: str, common: str, *, extension: bool = False) -> str:
    relative = os.path.relpath(path, common) if common else os.path.basename(path)
    return re.sub(r"[\\/]+", "__", relative if extension else os.path.splitext(relative)[0])


def _table_names(files: list[str]) -> list[str]:
    """Names of the per-file tables: paths below the files' common folder, extension kept where names clash."""
    common = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else ""
    names = [_output_name(os.path.abspath(f), common) for f in files]
    clashing = {n for n in names if names.count(n) > 1}  # a.wav and a.flac: keep the extension
    return [_output_name(os.path.abspath(f), common, extension=True) if n in clashing else n
            for f, n in zip(files, names, strict=True)]


def write_outputs(out: str | Path, files: Sequence[str], classes: Sequence[str], config, *,
                  options: DetectOptions, thresholds: np.ndarray, log: Callable[[str], None] = print,
                  taxonomy: Taxonomy | None = None, keep_scores: float = 0.0) -> dict[str, Path]:
    """Build the outputs from the records of finished files, in the order of ``files``.

    Writes ``scores.parquet`` (file, start, end, partial, class, score: every
    window and class whose score reaches ``keep_scores``, 0: all; file and
    class dictionary-encoded), ``events.csv``, ``events.jsonl``, the Raven selection
    tables (``events.selections.txt`` for all files with ``Begin File``,
    and ``raven/NAME.selections.txt`` per file), Audacity label tracks
    (``audacity/NAME.txt``) and ``errors.csv``. Every file is written whole
    then renamed into place. With the ``taxonomy`` of the classes, events
    carry their lineage (:func:`echoengine.events.with_lineage`).
    """
    out = Path(out)
    classes = list(classes)
    records = ledger.read_records(out / ledger.LEDGER, log)
    done, errors = [], []
    for path in files:
        record = records.get(ledger.key(path))
        if record is not None and record.error is None:
            done.append((path, record))
        elif record is not None:
            errors.append({"file": path, "error": record.error})
    scores, long = _score_tables([path for path, _ in done], [record for _, record in done], classes,
                                 keep=keep_scores)
    events = weigh_events(file_events(scores, classes, config, thresholds=thresholds, options=options),
                          dict(options.weights), classes, thresholds)
    extra = lineage_columns(taxonomy, min_confidence=options.min_confidence) if taxonomy is not None else []
    if taxonomy is not None:  # each event's genus, family, ... with their scores (an occurrence table's weights in)
        weighed = scores.assign(**{label: scores[label] * w for label, w in options.weights if label in scores})
        events = with_lineage(events, weighed, classes, taxonomy, min_confidence=options.min_confidence)
    event_order = {f: i for i, f in enumerate(files)}
    events = events.assign(_f=events["file"].map(event_order)).sort_values(["_f", "start", "label"], kind="stable")
    events = events.drop(columns="_f").reset_index(drop=True)
    written: dict[str, Path] = {}

    def put(name: str, write) -> None:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_atomic(path, write)
        written[name] = path

    put("scores.parquet", lambda p: fastparquet.write(str(p), long, write_index=False))
    put("events.csv", lambda p: formats.write_csv(events, p))
    put("events.jsonl", lambda p: formats.write_jsonl(events, p))
    put("events.selections.txt", lambda p: formats.write_raven(events, p, combined=True, extra=extra))
    names = _table_names([path for path, _ in done])
    ledger.list_outputs(out / ledger.LEDGER, [f"{folder}/{n}{suffix}" for n in names for folder, suffix in
                                              (("raven", ".selections.txt"), ("audacity", ".txt"))])
    by_file = dict(tuple(events.groupby("file", sort=False))) if len(events) else {}
    for (path, _), name in zip(done, names, strict=True):
        mine = by_file.get(path, events.iloc[:0])
        put(f"raven/{name}.selections.txt", lambda p, m=mine: formats.write_raven(m, p, extra=extra))
        put(f"audacity/{name}.txt", lambda p, m=mine: formats.write_audacity(m, p))
    error_table = pd.DataFrame(errors, columns=["file", "error"])
    put("errors.csv", lambda p: error_table.to_csv(p, index=False, lineterminator="\n"))
    return written


def _score_tables(paths: list[str], records: list, classes: list[str], *,
                  keep: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The window scores of the files, wide (a column per class) and long (a row per window and class whose score
    reaches ``keep``; file and class categorical, which Parquet stores as dictionaries)."""
    counts = [len(record.start) for record in records]
    file = np.repeat(np.array(paths, dtype=object), counts)
    columns = {"file": file}
    for name in ("start", "end", "partial"):
        parts = [getattr(record, name) for record in records]
        columns[name] = np.concatenate(parts) if parts else np.zeros(0, bool if name == "partial" else float)
    matrix = (np.concatenate([record.scores for record in records]) if records else
              np.zeros((0, len(classes)), np.float32))
    wide = pd.concat([pd.DataFrame(columns), pd.DataFrame(matrix, columns=classes)], axis=1)
    # the rows of a file are in time order, its windows' classes in the model's order
    rows, kept = np.nonzero(matrix >= keep) if keep > 0 else np.indices(matrix.shape).reshape(2, -1)
    long = pd.DataFrame({**{name: values[rows] for name, values in columns.items()},
                         "class": pd.Categorical.from_codes(kept, categories=classes), "score": matrix[rows, kept]})
    long["file"] = pd.Categorical(long["file"], categories=list(dict.fromkeys(paths)))
    return wide, long
