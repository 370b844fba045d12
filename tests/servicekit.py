"""What the service's tests share: a small bundle to serve, synthetic recordings, the check of a 4xx."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from echoengine import catalog
from echoengine.config import EchoConfig
from echoengine.synthetic import synthesize_call

#: The scoring options of the tests' servers: every window's two best classes are detections.
SCORING = ("--threshold", "0", "--top-n", "2")
SMALL = {"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400, "n_fft": 1024}


def small_bundle(synthetic_dataset, tmp_path_factory) -> Path:
    """A small_cnn bundle on a light front end (16 kHz), trained for one epoch: service plumbing only."""
    import torch

    from echoengine.training import fit

    config = EchoConfig().replace(audio={"sample_rate": 16000}, frontend={**SMALL, "fmax": 7000.0},
                                  model={"backbone": "small_cnn", "head": "linear"},
                                  train={"epochs": 1, "device": "cpu"})
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    out = tmp_path_factory.mktemp("served") / "bundle"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(table, table, catalog.class_names(table), config, out, progress=False, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return out


def make_recording(seconds: float, seed: int, call: str = "synthetic-trill", form: str = "FLAC") -> bytes:
    """A synthetic recording at 32 kHz (the bundle resamples it), as file bytes; each seed its own content."""
    samples = synthesize_call(call, seconds=seconds, rng=np.random.default_rng(seed), snr_db=10.0)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 32000, format=form)
    return buffer.getvalue()


def one_line_4xx(answer, status: int, words: str = "") -> None:
    assert answer.status_code == status, (answer.status_code, answer.text)
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and 0 < len(detail) < 300, detail
    assert words.lower() in detail.lower(), detail


def statuses(url: str) -> dict[int, str]:
    """Each recording's status in the database at ``url``."""
    from echoengine.service.db import Database
    from echoengine.service.schema import Recording

    db = Database.connect(url)
    try:
        with db.session() as session:
            return dict(session.query(Recording.id, Recording.status).all())
    finally:
        db.dispose()


def changed_weights(bundle: Path, folder: Path) -> Path:
    """A copy of the bundle with other weights (as a retrained model would have): the same name, a new hash."""
    import shutil

    import torch

    copy = folder / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("checkpoint.pt", "tensorboard"))
    state = torch.load(copy / "weights.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name] = state[name] + 0.05
    torch.save(state, copy / "weights.pt")
    return copy
