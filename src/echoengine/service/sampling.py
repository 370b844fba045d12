"""The review queue's stratified sample and the precision it estimates: pure functions, no database.

Score bins
    ``bins`` equal-width bins over [0, 1]: bin ``k`` holds the scores
    ``k / bins <= score < (k + 1) / bins`` (the last one also holds 1.0), so a
    bin's low edge is a threshold and the bins from ``k`` up hold exactly the
    detections scoring at least ``k / bins``.
The sample (``GET /api/review-queue``)
    The strata are species x score bin. A review budget is shared equally
    among the strata that have detections; a stratum with fewer detections
    than its share gives the rest back to the others (water-filling), and
    the last few units go to the strata first in a seeded order (a hash of
    seed, species and bin). Within a stratum the detections taken are those
    with the smallest hash of (seed, detection id): a uniform random sample
    that a seed repeats, and that new detections change only by entering
    where their own hash ranks (those already sampled stay while the
    stratum's allocation does not shrink). Reviewed detections stay in it.
The estimate (``GET /api/precision``)
    A detection is correct when its latest review is ``confirmed`` with no
    other species; ``rejected`` and relabelled ones (confirmed as another
    species, or rejected with a species) are false positives of the
    detected species; ``uncertain`` counts as not reviewed. In bin ``k``,
    with ``N_k`` detections, ``n_k`` reviewed and ``c_k`` correct, the
    precision is ``p_k = c_k / n_k`` with its Wilson 95 % interval
    ``(p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, z = 1.96. Over the
    detections scoring at least a threshold (the bins ``K`` from it up,
    ``N = Σ N_k``), the stratified estimate is ``P = Σ_K (N_k / N) p_k``;
    its interval is the stratified Wilson interval (Yan & Su 2010): Wilson's
    formula at ``P`` with the effective number of reviews
    ``n_eff = 1 / Σ_K ((N_k / N)² / n_k)`` (which is ``n`` for one bin and
    for reviews spread in proportion to the detections). Both are null
    where a bin with detections has no reviews. The estimate is unbiased
    when the reviews of each bin are a random sample of it, as the queue's
    are (no finite-population correction: the interval is conservative).

Examples
--------
>>> bin_of(0.6, 5), bin_of(0.59, 5), bin_of(1.0, 5), bin_of(0.0, 5)
(3, 2, 4, 0)
>>> allocate([100, 2, 100], budget=30, seed=0)
[14, 2, 14]
>>> [round(x, 3) for x in wilson(8, 10)]
[0.49, 0.943]
>>> est = stratified_precision([(90, 10, 9), (10, 10, 5)])  # (detections, reviewed, correct) per bin
>>> round(est.precision, 3), round(est.ci_low, 3), round(est.ci_high, 3)
(0.86, 0.583, 0.964)
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["Z95", "Estimate", "allocate", "bin_edges", "bin_of", "precision_table", "rank_key", "stratified_precision",
           "stratified_sample", "wilson"]

#: The normal quantile of a two-sided 95 % interval.
Z95 = NormalDist().inv_cdf(0.975)


def bin_edges(bins: int) -> list[float]:
    """The ``bins + 1`` edges of equal-width score bins over [0, 1].

    Examples
    --------
    >>> bin_edges(4)
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    return [k / bins for k in range(bins + 1)]


def bin_of(score: float, bins: int) -> int:
    """The bin of ``score``: the number of low edges above 0 that it reaches (as ``score >= k / bins``)."""
    return min(max(bisect_right(bin_edges(bins)[1:-1], score), 0), bins - 1)


def rank_key(seed: int, key: int | str) -> int:
    """A 64-bit hash of (seed, key): a detection's place in its stratum's random order.

    Examples
    --------
    >>> rank_key(0, 7) == rank_key(0, 7) != rank_key(1, 7)
    True
    """
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


def allocate(sizes: Sequence[int], budget: int, seed: int = 0, keys: Sequence[int | str] | None = None) -> list[int]:
    """Share ``budget`` equally among strata of ``sizes``, never more than a stratum holds (water-filling).

    What a small stratum cannot take goes to the others; when fewer units
    than open strata are left, they go one each to the open strata with the
    smallest :func:`rank_key` of (``seed``, their key); ``keys`` name the
    strata (default: their positions).

    Examples
    --------
    >>> allocate([5, 5, 5], budget=7, keys=["a", "b", "c"])
    [2, 2, 3]
    >>> allocate([1, 0, 50], budget=20)
    [1, 0, 19]
    >>> allocate([3, 4], budget=100)
    [3, 4]
    """
    keys = list(range(len(sizes))) if keys is None else list(keys)
    given = [0] * len(sizes)
    left = min(budget, sum(sizes))
    open_ = [i for i, size in enumerate(sizes) if size > 0]
    while left > 0:
        share = left // len(open_)
        if share == 0:
            for i in sorted(open_, key=lambda i: rank_key(seed, keys[i]))[:left]:
                given[i] += 1
            break
        for i in open_:
            take = min(share, sizes[i] - given[i])
            given[i] += take
            left -= take
        open_ = [i for i in open_ if given[i] < sizes[i]]
    return given


def stratified_sample(rows: Iterable[tuple[int, str, float]], *, budget: int, bins: int, seed: int
                      ) -> tuple[list[dict], list[tuple[int, dict]]]:
    """The queue's sample of detections ``(id, species, score)``: its strata and the detections it takes.

    Returns the strata (every bin of every species found, by species then
    bin: ``species, bin, low, high, detections, sampled``) and the sample as
    ``(detection id, stratum)`` pairs, interleaved (each stratum's first,
    then each one's second, ...) so that a review stopped early still covers
    every stratum.

    Examples
    --------
    >>> strata, picks = stratified_sample([(1, "owl", 0.9), (2, "owl", 0.1), (3, "owl", 0.95)],
    ...                                   budget=2, bins=2, seed=0)
    >>> [(s["bin"], s["detections"], s["sampled"]) for s in strata]
    [(0, 1, 1), (1, 2, 1)]
    >>> sorted(stratum["bin"] for _, stratum in picks)
    [0, 1]
    """
    members: dict[tuple[str, int], list[int]] = {}
    edges = bin_edges(bins)
    inner = edges[1:-1]  # as bin_of, without making the edges again for each detection
    for detection_id, species, score in rows:
        members.setdefault((species, bisect_right(inner, score)), []).append(detection_id)
    keys = [(species, k) for species in sorted({s for s, _ in members}) for k in range(bins)]
    sizes = [len(members.get(key, ())) for key in keys]
    given = allocate(sizes, budget, seed, keys=[f"{species}/{k}" for species, k in keys])
    strata, picks = [], []
    for (species, k), size, n in zip(keys, sizes, given, strict=True):
        stratum = {"species": species, "bin": k, "low": edges[k], "high": edges[k + 1]}
        strata.append({**stratum, "detections": size, "sampled": n})
        chosen = sorted(members.get((species, k), ()), key=lambda i: rank_key(seed, i))[:n]
        picks += [(place, len(picks), i, stratum) for place, i in enumerate(chosen)]
    picks.sort(key=lambda pick: pick[:2])
    return strata, [(i, stratum) for _, _, i, stratum in picks]


def wilson(correct: int, reviewed: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of ``correct / reviewed`` (``reviewed`` may be an effective, fractional number).

    Examples
    --------
    >>> [round(x, 3) for x in wilson(10, 10)]
    [0.722, 1.0]
    >>> [round(x, 3) for x in wilson(0, 4)]
    [0.0, 0.49]
    """
    return _wilson_at(correct / reviewed, reviewed, z)


def _wilson_at(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """A precision and its 95 % interval (all None: not estimable, a bin with detections lacks reviews)."""

    precision: float | None
    ci_low: float | None
    ci_high: float | None


_NONE = Estimate(None, None, None)


def stratified_precision(strata: Sequence[tuple[int, int, int]], z: float = Z95) -> Estimate:
    """The stratified precision of bins ``(detections, reviewed, correct)`` and its stratified Wilson interval.

    Examples
    --------
    >>> stratified_precision([(50, 0, 0), (10, 4, 4)])  # the first bin has no reviews
    Estimate(precision=None, ci_low=None, ci_high=None)
    >>> stratified_precision([(0, 0, 0), (10, 8, 8)]) == stratified_precision([(10, 8, 8)])
    True
    """
    used = [(big_n, n, c) for big_n, n, c in strata if big_n > 0]
    total = sum(big_n for big_n, _, _ in used)
    if not used or any(n == 0 for _, n, _ in used):
        return _NONE
    precision = sum(big_n / total * c / n for big_n, n, c in used)
    effective = 1 / sum((big_n / total) ** 2 / n for big_n, n, _ in used)
    return Estimate(precision, *_wilson_at(precision, effective, z))


def precision_table(counts: Iterable[tuple[str, int, int, int, int]], bins: int) -> list[dict]:
    """Per species, its bins' precision and the estimate at each threshold, from ``(species, bin, N, n, c)``.

    Examples
    --------
    >>> (owl,) = precision_table([("owl", 0, 4, 2, 1), ("owl", 1, 2, 2, 2)], bins=2)
    >>> [(b["detections"], b["precision"]) for b in owl["bins"]]
    [(4, 0.5), (2, 1.0)]
    >>> [(t["threshold"], t["detections"], round(t["precision"], 3)) for t in owl["thresholds"]]
    [(0.0, 6, 0.667), (0.5, 2, 1.0)]
    """
    found: dict[str, list[tuple[int, int, int]]] = {}
    for species, k, big_n, n, c in counts:
        cells = found.setdefault(species, [(0, 0, 0)] * bins)
        old = cells[k]
        cells[k] = (old[0] + big_n, old[1] + n, old[2] + c)
    edges = bin_edges(bins)
    table = []
    for species in sorted(found, key=lambda name: (-sum(cell[0] for cell in found[name]), name)):
        cells = found[species]
        rows = []
        for k, (big_n, n, c) in enumerate(cells):
            estimate = Estimate(c / n, *wilson(c, n)) if n else _NONE
            rows.append({"bin": k, "low": edges[k], "high": edges[k + 1], "detections": big_n, "reviewed": n,
                         "confirmed": c, **vars(estimate)})
        thresholds = [{"threshold": edges[k], "detections": sum(cell[0] for cell in cells[k:]),
                       "reviewed": sum(cell[1] for cell in cells[k:]), **vars(stratified_precision(cells[k:]))}
                      for k in range(bins)]
        table.append({"species": species, "detections": sum(cell[0] for cell in cells),
                      "reviewed": sum(cell[1] for cell in cells), "bins": rows, "thresholds": thresholds})
    return table
