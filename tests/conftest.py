"""Shared fixtures: seeded synthetic signals, a bad-input corpus, and the real data by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from echoengine.synthetic import make_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ESC50 = SHARED_DATA / "esc50-subset"
SOUNDSCAPES = SHARED_DATA / "soundscapes"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path}: these tests need ../shared/data beside the project")
    return path


@pytest.fixture(scope="session")
def esc50() -> Path:
    """The ESC-50 subset (414 real clips, 50 classes); skipped when absent."""
    return _require(ESC50)


@pytest.fixture(scope="session")
def soundscapes() -> Path:
    """Real field recordings; skipped when absent."""
    return _require(SOUNDSCAPES)


@pytest.fixture(scope="session")
def esc10(esc50):
    """The 83 ESC-10 rows of the ESC-50 subset (10 classes), as a catalog."""
    import os

    import pandas as pd

    from echoengine import catalog

    table = catalog.load_catalog(esc50)
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    names = set(meta.loc[meta["esc10"], "filename"])
    return table[table["path"].map(lambda p: os.path.basename(p) in names)].reset_index(drop=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small folder-per-class synthetic dataset (4 classes x 6 files)."""
    return make_dataset(tmp_path_factory.mktemp("synthetic"), classes=4, files_per_class=6, seed=0)


# Each bad file: (relative path, how to write it, expected words in the error or None when usable).
def _write_bad_corpus(root: Path) -> dict[str, str | None]:
    rng = np.random.default_rng(0)
    good = rng.normal(0, 0.1, 48000).astype(np.float32)
    folder = root / "frogs"
    folder.mkdir(parents=True)
    expected: dict[str, str | None] = {}

    sf.write(folder / "good.wav", good, 48000)
    expected["good.wav"] = None
    (folder / "empty.wav").write_bytes(b"")
    expected["empty.wav"] = "empty file"
    sf.write(folder / "zero_length.wav", np.zeros(0, np.float32), 48000)
    expected["zero_length.wav"] = "zero-length"
    sf.write(folder / "whole.flac", np.tile(good, 3), 48000)
    data = (folder / "whole.flac").read_bytes()
    (folder / "truncated.flac").write_bytes(data[: len(data) // 2])
    (folder / "whole.flac").unlink()
    expected["truncated.flac"] = "truncated"
    (folder / "text.wav").write_text("this is a text file, not audio\n" * 20)
    expected["text.wav"] = "not a readable audio file"
    (folder / "noise.mp3").write_bytes(rng.bytes(5000))
    expected["noise.mp3"] = "no decodable mp3 data"
    with_nan = good.copy()
    with_nan[1000] = np.nan
    sf.write(folder / "nan.wav", with_nan, 48000, subtype="FLOAT")
    expected["nan.wav"] = "non-finite"
    sf.write(folder / "eight_channels.wav", np.tile(good[:, None], (1, 8)), 48000)
    expected["eight_channels.wav"] = None
    sf.write(folder / "rate_384k.wav", rng.normal(0, 0.1, 384000).astype(np.float32), 384000)
    expected["rate_384k.wav"] = None
    sf.write(folder / "one_sample.wav", good[:1], 48000)
    expected["one_sample.wav"] = "too short"
    sf.write(folder / "grenouille_été_蛙.flac", good, 48000)
    expected["grenouille_été_蛙.flac"] = None
    return expected


@pytest.fixture
def bad_corpus(tmp_path) -> tuple[Path, dict[str, str | None]]:
    """A one-class folder of good and broken files, with the error each should give."""
    return tmp_path, _write_bad_corpus(tmp_path)
