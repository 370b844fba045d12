"""The ``echoengine demo`` walk-through: SYNTHETIC data, training, prediction and detection, told step by step.

Everything runs on the CPU in about a minute and stays in one folder, which
the next demo replaces. The data are computer-made calls over noise, clearly
named ``synthetic-*``, never animals.

Examples
--------
>>> from echoengine.demo import run_demo
>>> run_demo("echoengine-demo", epochs=2, files_per_class=6)  # doctest: +SKIP
1/5 wrote a SYNTHETIC dataset (computer-made calls over noise, not animals): echoengine-demo/data
...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from echoengine import api, catalog, synthetic
from echoengine.bundle import load_bundle
from echoengine.config import EchoConfig
from echoengine.detection import DetectOptions, detect
from echoengine.layout import BundleFiles, prepare_output
from echoengine.mix import mix_soundscapes

__all__ = ["run_demo"]

_MARKER = ".echoengine-demo"


def run_demo(out: str | Path, *, epochs: int = 20, files_per_class: int = 16, lr: float = 1e-3, seed: int = 0,
             progress: bool = True, say: Callable[[str], None] = print) -> Path:
    """Make a SYNTHETIC dataset in ``out``, train ``small_cnn`` on it, predict and detect with the bundle.

    Parameters
    ----------
    out : str or Path
        The demo's folder: new, empty or an earlier demo's (replaced).
    epochs, lr : int, float
        Most epochs and the learning rate of the training.
    files_per_class : int
        Synthetic files of each of the 5 classes.
    seed : int
        Seed of the data and the training.
    progress : bool
        Progress bars while training.
    say : callable
        Where each line of the walk-through goes.

    Returns
    -------
    Path
        The trained bundle.
    """
    out = Path(out)
    earlier = out.is_dir() and any(out.iterdir())
    prepare_output(out, overwrite=True, owned=("data", "bundle", "cache", "field", "detections", _MARKER),
                   markers=(_MARKER,), recursive=False)
    (out / _MARKER).write_text("a folder of echoengine demo: `echoengine demo` replaces it\n", encoding="utf-8")
    if earlier:
        say(f"replaced the earlier demo in {out}")
    data = synthetic.make_dataset(out / "data", classes=5, files_per_class=files_per_class, seed=seed)
    say(f"1/5 wrote a SYNTHETIC dataset (computer-made calls over noise, not animals): {data}")
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.2},
        train={"epochs": epochs, "learning_rate": lr, "patience": 8, "lr_patience": 3, "seed": seed},
        data={"group_regex": r"^(.+_rec\d+)_", "batch_size": 8, "val_fraction": 0.2, "test_fraction": 0.2,
              "cache_dir": str(out / "cache")},
        augment={"variants": 4, "time_stretch_p": 0.0, "pitch_shift_p": 0.0},
    )
    say("2/5 training small_cnn on the CPU (about a minute on 2 cores)")
    trained = api.train(data, config=config, out=out / "bundle", progress=progress, log=say)
    say(f"\n{trained.report}")
    bundle = trained.bundle
    say("\n3/5 predicting the first file of each class with the bundle:")
    examples = sorted(next(iter(sorted(folder.glob("*.*")))) for folder in data.iterdir() if folder.is_dir())
    say(api.predict(bundle, examples).text(top_k=2))
    _detect_in_a_soundscape(bundle, out, config, say)
    files = BundleFiles(bundle)
    say(f"\n5/5 done. bundle: {bundle}\n    metrics: {files.metrics}\n"
        f"    plots: {files.confusion_plot}, {files.training_plot}\n"
        f"    detections: {out / 'detections' / 'events.csv'} (Raven: {out / 'detections' / 'raven'})")
    return bundle


def _detect_in_a_soundscape(bundle: Path, out: Path, config: EchoConfig, say: Callable[[str], None]) -> None:
    """Mix a 60 s SYNTHETIC field recording from the held-out test files, detect its calls, compare with the truth."""
    splits = pd.read_csv(BundleFiles(bundle).splits, keep_default_na=False)
    clips, _ = catalog.scan(splits[splits["part"] == "test"].drop(columns="part"), config.audio)
    truth = mix_soundscapes(clips, out / "field", count=1, duration=60.0, events=(5, 5), snr=(10.0, 20.0),
                            config=config.audio, seed=1, prefix="synthetic_field")
    say(f"\n4/5 detecting calls in a 60 s SYNTHETIC field recording ({truth['path'].iloc[0]}; the truth "
        "is its Raven table beside it):")
    written = detect([load_bundle(bundle)], [truth["path"].iloc[0]], out / "detections",
                     options=DetectOptions(overlap=2.5, threshold=0.5), progress=False, log=lambda line: None)
    events = pd.read_csv(written["events.csv"])
    for event in events.itertuples():
        real = truth[(truth["start"] < event.end) & (truth["end"] > event.start) & (truth["label"] == event.label)]
        say(f"  {event.start:6.1f}-{event.end:5.1f} s  {event.label:<20} {event.score:.2f}  "
            f"{'matches a true call' if len(real) else 'no true call of it here'}")
    found = sum(((events["label"] == row.label) & (events["start"] < row.end) & (events["end"] > row.start)).any()
                for row in truth.itertuples())
    say(f"  {found} of the {len(truth)} true calls were detected. A single-label model shares each window's "
        "probability among its classes, so background can be named after the nearest one; a --multilabel "
        "model trained on annotated recordings can also answer 'none'.")
