"""Detection on Ray: a local Ray instance per run, outputs equal to a local run's, a killed worker, a killed driver."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from echoengine import ledger
from echoengine.bundle import save_atomic
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.layout import write_metadata
from echoengine.models import build_model
from echoengine.raydetect import RayOptions, chunk_files

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[distributed]' runs these tests")

OPTIONS = ["--overlap", "1.0", "--threshold", "0.2", "--top-n", "1", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def quick_bundle(tmp_path_factory) -> Path:
    """A small_cnn bundle with random weights on a light 16 kHz front end: detection plumbing, in a second."""
    folder = tmp_path_factory.mktemp("ray") / "bundle"
    config = EchoConfig().replace(
        audio={"sample_rate": 16000}, model={"backbone": "small_cnn", "head": "linear"},
        frontend={"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400, "n_fft": 1024,
                  "fmax": 7000.0})
    classes = [f"class_{i}" for i in range(5)]
    write_metadata(folder, config, classes)
    torch.manual_seed(0)
    save_atomic(build_model(config.model, len(classes)).state_dict(), folder / "weights.pt")
    return folder


@pytest.fixture(scope="module")
def recordings(soundscapes) -> list[str]:
    """The real field recordings (7) and 24 of the 10 s maad series: 8.6 min of audio, 31 files."""
    top = sorted(str(p) for p in soundscapes.iterdir() if p.is_file() and p.suffix in (".flac", ".ogg"))
    return top + sorted(str(p) for p in (soundscapes / "maad-indices").glob("*.flac"))[:24]


def _detect(*args) -> list[str]:
    return [sys.executable, "-m", "echoengine", "detect", *map(str, args)]


@pytest.fixture(scope="module")
def reference(quick_bundle, recordings, tmp_path_factory) -> Path:
    """The local run's outputs."""
    out = tmp_path_factory.mktemp("ray") / "local"
    done = subprocess.run(_detect(quick_bundle, *recordings, "--out", out, *OPTIONS), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def _assert_same_outputs(out: Path, reference: Path) -> None:
    names = sorted(str(p.relative_to(reference)) for p in reference.rglob("*")
                   if p.is_file() and ".detect" not in p.parts)
    assert {"events.csv", "scores.parquet", "events.selections.txt", "errors.csv"} <= set(names)
    assert len(reference.joinpath("events.csv").read_text().splitlines()) > 10  # events to compare
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ours, theirs = (ledger.read_records(folder / ".detect", log=lambda line: None) for folder in (out, reference))
    assert ours.keys() == theirs.keys()  # every file recorded once (parts are cut by time: not the same parts)
    for key, record in ours.items():
        assert record.file == theirs[key].file and record.error == theirs[key].error
        np.testing.assert_array_equal(record.scores, theirs[key].scores)


def _descendants(pid: int) -> list[int]:
    """The processes started under ``pid`` (read from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _records(out: Path) -> int:
    """Files the ledger holds a record of (its parts are written a few seconds apart)."""
    return len(ledger.read_records(out / ".detect", log=lambda line: None))


def _end(pids: list[int]) -> None:
    """End the processes a killed run left behind (ours only: found under its pid), by their ids."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_ray_run_writes_the_local_runs_outputs_byte_for_byte(quick_bundle, recordings, reference, tmp_path):
    out = tmp_path / "ray"
    done = subprocess.run(_detect(quick_bundle, *recordings, "--out", out, *OPTIONS, "--engine", "ray",
                                  "--ray-workers", "2", "--ray-chunk-seconds", "60"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ray: 2 CPUs on 1 node(s)" in done.stderr
    _assert_same_outputs(out, reference)


def test_a_ray_worker_killed_mid_task_is_retried_and_no_file_is_lost_or_doubled(quick_bundle, recordings, reference,
                                                                                  tmp_path):
    out = tmp_path / "ray"
    process = subprocess.Popen(_detect(quick_bundle, *recordings, "--out", out, *OPTIONS, "--engine", "ray",
                                       "--ray-workers", "2", "--ray-chunk-seconds", "20"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and process.poll() is None:
        if (out / ".detect").is_dir():  # early: Ray's message about the retry has time to reach the driver
            busy = [pid for pid in _descendants(process.pid) if _title(pid).startswith("ray::score_chunk")]
            if busy:
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=300)
    assert killed is not None, "no Ray worker was seen scoring a chunk"
    assert process.returncode == 0, stderr
    assert "will be retried" in stdout + stderr  # Ray's own word that the killed worker's task ran again
    _assert_same_outputs(out, reference)


def test_resume_after_the_driver_is_killed_gives_the_local_outputs(quick_bundle, recordings, reference, tmp_path):
    out = tmp_path / "ray"
    command = _detect(quick_bundle, *recordings, "--out", out, *OPTIONS, "--engine", "ray", "--ray-workers", "2",
                      "--ray-chunk-seconds", "20")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    # the first finished file is recorded at once, the next ones in a part 2 s later: killed in between
    while time.time() < deadline and not ((out / ".detect").is_dir() and _records(out) >= 1):
        time.sleep(0.02)
    started = _descendants(process.pid)  # the local Ray instance: ended below, whatever outlives the driver
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1)
    _end([pid for pid in started if "ray" in _title(pid)])  # still Ray's, not a process that took its id
    finished = _records(out)
    assert 1 <= finished < len(recordings) and not (out / "events.csv").exists()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {finished} of {len(recordings)} files already done" in resumed.stderr
    _assert_same_outputs(out, reference)


def test_ray_options_are_checked_and_files_grouped_into_chunks():
    with pytest.raises(EchoError, match="--ray-workers must be at least 1"):
        RayOptions(workers=0)
    with pytest.raises(EchoError, match="--ray-chunk-seconds"):
        RayOptions(chunk_seconds=0)
    files = [(i, f"{i}.wav") for i in range(5)]
    assert chunk_files(files, [10, 10, 10, 700, 10], chunk_seconds=25) == [files[:2], files[2:3], files[3:4], files[4:]]
    assert RayOptions().tasks_in_flight(cluster_cpus=3) == 6


def test_ray_options_need_the_ray_engine(quick_bundle, tmp_path):
    done = subprocess.run(_detect(quick_bundle, tmp_path, "--out", tmp_path / "out", "--ray-workers", "2"),
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: --ray-workers go with --engine ray"
