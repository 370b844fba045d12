"""Shared fixtures: seeded synthetic signals, a bad-input corpus, and the real data by path."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from echoengine.synthetic import make_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ESC50 = SHARED_DATA / "esc50-subset"
SOUNDSCAPES = SHARED_DATA / "soundscapes"


# Where programs write caches and settings unless told otherwise; every test (and subprocess) gets a temporary one.
_HOME_VARIABLES = {"HOME": "home", "XDG_CACHE_HOME": "home/.cache", "XDG_CONFIG_HOME": "home/.config",
                   "MPLCONFIGDIR": "matplotlib", "TORCH_HOME": "torch"}
_saved_environment: dict[str, str | None] = {}
_temporary_home: list[Path] = []


def _test_default_cache() -> Path:
    return _temporary_home[0] / "home" / ".cache" / "echoengine" / "features"


def pytest_configure(config: pytest.Config) -> None:
    """Point HOME, the cache variables and the CLI's default cache at a temporary folder.

    Done before collection, so that nothing a test module imports (the CLI's
    ``DEFAULT_CACHE``, matplotlib's font cache, torch hub) and no subprocess
    a test starts writes into the user's ``~/.cache``; undone by
    :func:`pytest_unconfigure`.
    """
    root = Path(tempfile.mkdtemp(prefix="echoengine-tests-home-"))
    _temporary_home.append(root)
    for name, relative in _HOME_VARIABLES.items():
        _saved_environment[name] = os.environ.get(name)
        (root / relative).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / relative)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in _saved_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if _temporary_home:
        shutil.rmtree(_temporary_home.pop(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _default_cache_is_temporary(monkeypatch) -> None:
    """The CLI's default feature cache, in the temporary home for every test (even if imported before HOME moved)."""
    cli = sys.modules.get("echoengine.cli")
    if cli is not None:
        monkeypatch.setattr(cli, "DEFAULT_CACHE", _test_default_cache())
    assert Path.home() == _temporary_home[0] / "home"


@pytest.fixture
def one_torch_thread():
    """Torch on one thread: far quicker for tiny models on a small, shared CPU; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny synthetic dataset (2 classes x 4 files) and a config file that trains on it in seconds on a CPU."""
    from echoengine.config import EchoConfig

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", classes=2, files_per_class=4, seed=0)
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"learning_rate": 1e-3, "device": "cpu"},
        augment={"variants": 2, "noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0},
        audio={"sample_rate": 32000, "clip_seconds": 2.0},  # the files' own rate: no resampling
        frontend={"n_fft": 512, "hop_length": 512, "n_mels": 48, "image_height": 48, "image_width": 48},
        data={"batch_size": 4},
    )
    return data, config.save(root / "quick.toml")


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


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session; skipped when PostgreSQL is not installed."""
    from servers import PostgresCluster, postgres_bin

    folder = postgres_bin()
    if folder is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl not found (Debian: apt-get install postgresql): "
                    "the PostgreSQL half of the service tests is skipped")
    cluster = PostgresCluster(folder)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def new_database(request):
    """A function that gives a fresh database URL of the backend (None: the store's own SQLite file).

    A module whose ``server`` fixture takes it runs each of its tests against both databases.
    """
    if request.param == "sqlite":
        return lambda: None
    return request.getfixturevalue("postgres").database
