"""How ``detect`` (and the service) cut, score and threshold windows: one options object passed down.

Examples
--------
>>> DetectOptions(overlap=1.0).scoring()
{'overlap': 1.0, 'min_window': 0.0, 'onnx': False}
"""

from __future__ import annotations

from dataclasses import dataclass

from echoengine.errors import EchoError
from echoengine.scorepool import can_fork, usable_cores

__all__ = ["DetectOptions"]


@dataclass(frozen=True)
class DetectOptions:
    """How windows are cut and scored, and how events are drawn from the scores.

    Parameters
    ----------
    overlap : float
        Seconds shared by consecutive windows (0: windows touch), less than the clip length.
    min_window : float
        Drop the last, partial window of a file when it holds fewer seconds of audio.
    threshold : float, optional
        One threshold for every class, in [0, 1] (scores are probabilities);
        None: the bundle's calibrated ``thresholds.csv`` where it has one, else 0.5.
    top_n : int
        Consider only the ``top_n`` best-scoring classes of each window (0: all).
    include, exclude : sequence of str
        Report only these classes / never these.
    merge_gap : float
        Detections of a class closer than this (seconds) merge into one event.
    batch_size : int
        Windows scored at a time (from several files); CNNs: a multiple of :data:`echoengine.kinds.MODEL_BATCH`.
    workers : int
        Processes decoding audio and computing model inputs (0: in the main process).
    block_seconds : float
        Audio decoded at a time from each file.
    onnx : bool
        Score with the bundle's exported ``model.onnx`` instead of PyTorch.
    jobs : int
        Processes scoring batches side by side, one thread each
        (:class:`~echoengine.scorepool.ScoringPool`; 0: one per core; 1: this
        process alone, on every core). :func:`detect` only.
    min_confidence : float
        With a model of a taxonomy: each event also names the deepest rank of
        its species' lineage whose score reaches this (``taxon``,
        ``taxon_rank``, ``taxon_score``; 0: not asked).
    weights : tuple of (str, float)
        Classes whose event scores are multiplied by a weight in (0, 1)
        (an occurrence table's down-weighting at the recordings' place:
        :func:`echoengine.events.weigh_events`); the events that then miss
        their threshold are left out.
    keep_scores : float, optional
        ``detect``'s ``scores.parquet`` keeps the window scores reaching this
        (0: every window and class); None: every one, but the built-in
        birdnet's that reach 0.01, the lowest ``--min-conf`` BirdNET-Analyzer
        takes (:func:`echoengine.events.kept_scores`).
    location_filter, occurrence
        The service only: drop the detections of species not expected at each recording's position and date
        (:mod:`echoengine.occurrence`: the occurrence score they need; ``occurrence``: a table of the user's instead).
    """

    overlap: float = 0.0
    min_window: float = 0.0
    threshold: float | None = None
    top_n: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    merge_gap: float = 0.0
    batch_size: int = 16
    workers: int = 0
    block_seconds: float = 60.0
    onnx: bool = False
    jobs: int = 0
    location_filter: float | None = None
    occurrence: str = ""
    min_confidence: float = 0.0
    keep_scores: float | None = None
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # NaN fails the test too
            raise EchoError(f"--threshold must be in [0, 1] (scores are probabilities), got {self.threshold}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise EchoError(f"--min-confidence must be a probability in [0, 1], got {self.min_confidence}")
        if self.keep_scores is not None and not 0.0 <= self.keep_scores <= 1.0:
            raise EchoError(f"--keep-scores must be a score in [0, 1] (0: every score), got {self.keep_scores}")
        if self.jobs < 0:
            raise EchoError(f"--jobs must be 0 (one per core) or more, got {self.jobs}")

    def scoring_processes(self) -> tuple[int, int | None]:
        """Scoring processes and the threads of each: ``jobs`` of one thread (0: one per core), or this
        process on every core (1: ``(1, None)``).

        Examples
        --------
        >>> DetectOptions(jobs=1).scoring_processes(), DetectOptions(jobs=4).scoring_processes()[0]
        ((1, None), 4)
        """
        jobs = self.jobs or usable_cores()
        if jobs == 1 or not can_fork():
            return 1, (1 if self.jobs == 0 else None)  # one core: one thread, as the processes would
        return jobs, max(1, usable_cores() // jobs)

    def scoring(self) -> dict:
        """The options that change window scores (a resumed run must keep them)."""
        return {"overlap": self.overlap, "min_window": self.min_window, "onnx": self.onnx}
