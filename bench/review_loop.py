"""The learning loop on real recordings, end to end: does a model retrained on reviews beat the one it replaces?

Usage::

    python bench/review_loop.py [--classes all|esc10] [--base-sources 2] [--per-recording 4] [--out DIR]
                                [--precision 0.9] [--min-reviews 10] [--shares 0.4,0.3,0.3] [--seed 0]

ESC-50's subset (``../shared/data/esc50-subset``) gives real clips with a
known truth. Per class, the clips of ``--base-sources`` source recordings
are the original training data; the other sources are the field: their clips
are concatenated, ``--per-recording`` of distinct classes and one 5 s
stretch of a real background (``soundscapes/maad-indices``) in each, into
"field recordings" of three days (the sources split 40/30/30 %, each source
on one day only, so no day shares a source recording with another; ``--shares``). Then,
each step through ``echoengine``'s own command line and HTTP API:

1. ``train`` the first model (BirdNET embeddings + the default linear head) on the original data;
2. ``serve`` it (a real server, ``--threshold 0.1 --top-n 1``) and upload every field recording;
3. review every detection through the API as an oracle that knows the truth: confirmed when the detected
   species is heard in the event, relabelled (confirmed as the species heard) when one other species is,
   rejected otherwise (the background stretches);
4. ``reviews export`` day 1 (``--until``) with ``--with`` the original data, and day 2 apart;
5. ``train`` the new model on ``combined.csv`` (the original data and day 1's clips);
6. ``calibrate --reviews`` both models (the old one as a copy: the served bundle is left as it is) on day 2;
7. ``reviews compare`` them on day 3, which neither trained nor calibrated on (``--exclude`` both exports);
8. ``serve NEW --candidate`` beside the old one, ``POST /api/models/{id}/activate``, and upload one more
   recording: scored by the new model.

It prints the comparison (per species: reviewed held-out events, true ones,
each model's calibrated threshold, precision and recall there), then one
line per model over all species, and the seconds each step took.
``tests/test_review_loop.py`` runs the same steps on a smaller draw and checks each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RATE = 44100
CLIP = 5.0
DAYS = ("2024-05-01", "2024-05-02", "2024-05-03")
KEY = "review-loop-key"


# ---- data -------------------------------------------------------------------------------------------------------
def esc_clips(esc50: Path, esc10: bool = False) -> pd.DataFrame:
    """ESC-50's subset as ``filename, category, src_file, path`` (only ESC-10's 10 classes with ``esc10``)."""
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    if esc10:
        meta = meta[meta["esc10"]]
    meta = meta[["filename", "category", "src_file"]].astype(str).reset_index(drop=True)
    meta["path"] = [str(esc50 / "audio" / name) for name in meta["filename"]]
    return meta


def split_sources(clips: pd.DataFrame, base_sources: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class, the clips of ``base_sources`` source recordings (drawn) and the others: (original data, field)."""
    rng = np.random.default_rng(seed)
    base = set()
    for _, rows in clips.groupby("category"):
        sources = sorted(rows["src_file"].unique())
        base |= {(rows["category"].iloc[0], s) for s in rng.permutation(sources)[:base_sources]}
    in_base = [(c, s) in base for c, s in zip(clips["category"], clips["src_file"], strict=True)]
    return clips[in_base].reset_index(drop=True), clips[~np.array(in_base)].reset_index(drop=True)


def assign_days(field: pd.DataFrame, seed: int, shares: tuple = (0.4, 0.3, 0.3)) -> np.ndarray:
    """A day (0, 1, 2) for each field clip: each source recording's clips on one day, per class in these shares."""
    rng = np.random.default_rng(seed + 1)
    day_of: dict[tuple[str, str], int] = {}
    for category, rows in field.groupby("category"):
        sources = list(rng.permutation(sorted(rows["src_file"].unique())))
        for i, source in enumerate(sources):  # the middle of each source's place in [0, 1], against the shares
            day_of[(category, source)] = min(int(np.searchsorted(np.cumsum(shares), (i + 0.5) / len(sources))), 2)
    return np.array([day_of[(c, s)] for c, s in zip(field["category"], field["src_file"], strict=True)])


def write_dataset(clips: pd.DataFrame, folder: Path) -> Path:
    """An ESC-50-style dataset folder of ``clips`` (``meta/clips.csv``; ``audio`` links to ESC-50's audio)."""
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    (folder / "audio").symlink_to(Path(clips["path"].iloc[0]).parent, target_is_directory=True)
    clips[["filename", "category", "src_file"]].to_csv(folder / "meta" / "clips.csv", index=False)
    return folder


def _read(path: str | Path, seconds: float = CLIP, offset: float = 0.0) -> np.ndarray:
    import soxr

    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE)
    part = samples[round(offset * RATE):round((offset + seconds) * RATE)]
    return np.pad(part, (0, max(0, round(seconds * RATE) - len(part))))


@dataclass
class FieldRecording:
    """A concatenation of clips: its file, day and truth (``start, end, label`` per clip; '' for background)."""

    path: Path
    day: int
    truth: list[tuple[float, float, str]] = field(default_factory=list)


def make_field_recordings(field: pd.DataFrame, days: np.ndarray, out: Path, *, per_recording: int,
                          backgrounds: list[Path], seed: int) -> list[FieldRecording]:
    """Each day's clips, shuffled, into recordings of ``per_recording`` clips of distinct classes and one
    background stretch at a random place; FLAC at 44.1 kHz."""
    rng = np.random.default_rng(seed + 2)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for day in range(len(DAYS)):
        pool = field[days == day].sample(frac=1.0, random_state=int(rng.integers(1 << 30))).to_dict("records")
        while pool:
            chosen, seen = [], set()
            for clip in list(pool):
                if clip["category"] not in seen and len(chosen) < per_recording:
                    chosen.append(clip)
                    seen.add(clip["category"])
                    pool.remove(clip)
            parts = [(clip["path"], 0.0, clip["category"]) for clip in chosen]
            background = backgrounds[int(rng.integers(len(backgrounds)))] if backgrounds else None
            if background is not None:
                parts.insert(int(rng.integers(len(parts) + 1)), (background, float(rng.uniform(0, 5)), ""))
            path = out / f"day{day + 1}-{len(made):03d}.flac"
            sf.write(path, np.concatenate([_read(p, offset=o) for p, o, _ in parts]), RATE)
            made.append(FieldRecording(path, day, [(i * CLIP, (i + 1) * CLIP, label)
                                                   for i, (_, _, label) in enumerate(parts)]))
    return made


def oracle(detection: dict, truth: list[tuple[float, float, str]]) -> dict:
    """The review of a detection by a reviewer who knows the truth (see the module's text)."""
    heard = sorted({label for start, end, label in truth
                    if label and min(end, detection["end"]) - max(start, detection["start"]) > 0.5})
    if detection["species"] in heard:
        return {"status": "confirmed", "reviewer": "oracle"}
    if len(heard) == 1:
        return {"status": "confirmed", "species": heard[0], "reviewer": "oracle"}
    return {"status": "rejected", "reviewer": "oracle"}


# ---- the command line and the server ----------------------------------------------------------------------------
def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}


def echoengine(*args: str | Path, log: Path | None = None) -> str:
    """Run ``echoengine ARGS`` (this checkout's); its standard output. An error with its output if it fails."""
    result = subprocess.run([sys.executable, "-m", "echoengine", *map(str, args)], capture_output=True, text=True,
                            env=_environment())
    if log is not None:
        with open(log, "a") as file:
            file.write(f"$ echoengine {' '.join(map(str, args))}\n{result.stdout}{result.stderr}\n")
    if result.returncode:
        raise RuntimeError(f"echoengine {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


class Serving:
    """``echoengine serve BUNDLE --store STORE --port FREE ...`` in a subprocess, with a client."""

    def __init__(self, bundle: Path, store: Path, *options: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        key = store.parent / "api-key"
        key.write_text(KEY + "\n")
        self.log = open(store.parent / f"server-{port}.log", "wb")  # noqa: SIM115 (closed by stop)
        command = [sys.executable, "-m", "echoengine", "serve", str(bundle), "--store", str(store), "--port",
                   str(port), "--log-level", "warning", "--api-key-file", str(key), *options]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=_environment())
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0, headers={"X-API-Key": KEY})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start in 300 s")

    def upload(self, path: Path, recorded_at: str) -> int:
        answer = self.client.post("/api/recordings", files={"file": (path.name, path.read_bytes())},
                                  data={"sensor_id": "field-1", "recorded_at": recorded_at})
        answer.raise_for_status()
        return answer.json()["id"]

    def wait(self, ids: list[int], timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.client.get(f"/api/recordings/{i}").json()["status"] in ("done", "failed") for i in ids):
                return
            time.sleep(0.5)
        raise RuntimeError(f"recordings not scored in {timeout} s")

    def detections(self, **filters) -> list[dict]:
        found, offset = [], 0
        while True:
            page = self.client.get("/api/detections", params={"limit": 1000, "offset": offset, **filters}).json()
            found += page["items"]
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.client.close()
        self.log.close()


# ---- the loop ---------------------------------------------------------------------------------------------------
@dataclass
class Loop:
    """A run of the loop in ``out``: its settings, and what each step made (see the module's text)."""

    out: Path
    esc10: bool = False
    base_sources: int = 2
    per_recording: int = 4
    precision: float = 0.9
    min_reviews: int = 10
    seed: int = 0
    shares: tuple[float, float, float] = (0.4, 0.3, 0.3)
    train_options: tuple[str, ...] = ("--embedder", "birdnet")
    recordings: list[FieldRecording] = field(default_factory=list)
    reviews: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.out / name

    def timed(self, step: str, started: float) -> None:
        self.seconds[step] = round(time.monotonic() - started, 1)

    def prepare(self, esc50: Path = DATA / "esc50-subset", backgrounds: Path = DATA / "soundscapes" / "maad-indices"
                ) -> Path:
        """The original data (an ESC-50-style folder) and the field recordings; the original data's folder."""
        started = time.monotonic()
        base, field_clips = split_sources(esc_clips(esc50, self.esc10), self.base_sources, self.seed)
        original = write_dataset(base, self.path("original"))
        days = assign_days(field_clips, self.seed, self.shares)
        self.recordings = make_field_recordings(field_clips, days, self.path("field"),
                                                per_recording=self.per_recording,
                                                backgrounds=sorted(backgrounds.glob("*.flac")), seed=self.seed)
        self.timed("prepare", started)
        return original

    def train(self, data: Path, name: str, *extra: str, options: tuple[str, ...] | None = None) -> Path:
        """``echoengine train DATA --out OUT/NAME`` with the loop's model options (or ``options``) and ``extra``."""
        started = time.monotonic()
        echoengine("train", data, "--out", self.path(name), "--quiet", "--cache-dir", self.path("cache"),
                   *(self.train_options if options is None else options), *extra, log=self.path("commands.log"))
        self.timed(f"train {name}", started)
        return self.path(name)

    def serve_and_review(self, bundle: Path) -> Serving:
        """Serve ``bundle`` on a new store, upload every field recording, and review every detection (oracle)."""
        started = time.monotonic()
        server = Serving(bundle, self.path("store"), "--threshold", "0.1", "--top-n", "1")
        ids = {server.upload(r.path, f"{DAYS[r.day]}T{5 + i % 12:02d}:00:00Z"): r
               for i, r in enumerate(self.recordings)}
        server.wait(list(ids))
        self.timed("serve and score", started)
        started = time.monotonic()
        for detection in server.detections():
            verdict = oracle(detection, ids[detection["recording_id"]].truth)
            answer = server.client.post(f"/api/detections/{detection['id']}/review", json=verdict)
            answer.raise_for_status()
            kind = "corrected" if "species" in verdict else verdict["status"]
            self.reviews[kind] = self.reviews.get(kind, 0) + 1
        self.timed("review", started)
        return server

    def export(self, original: Path) -> tuple[Path, Path]:
        """Day 1's reviews with the original data (to train on), and day 2's (to calibrate on)."""
        started = time.monotonic()
        train = self.path("export-day1")
        echoengine("reviews", "export", "--store", self.path("store"), "--out", train, "--until",
                   f"{DAYS[0]}T23:59:59Z", "--with", original, log=self.path("commands.log"))
        calibration = self.path("export-day2")
        echoengine("reviews", "export", "--store", self.path("store"), "--out", calibration, "--since",
                   f"{DAYS[1]}T00:00:00Z", "--until", f"{DAYS[1]}T23:59:59Z", log=self.path("commands.log"))
        self.timed("export", started)
        return train, calibration

    def calibrate(self, bundle: Path, reviews: Path) -> str:
        started = time.monotonic()
        printed = echoengine("calibrate", bundle, "--reviews", reviews, "--precision", str(self.precision),
                             "--min-reviews", str(self.min_reviews), log=self.path("commands.log"))
        self.timed(f"calibrate {bundle.name}", started)
        return printed

    def compare(self, old: Path, new: Path, *exports: Path) -> tuple[str, pd.DataFrame]:
        started = time.monotonic()
        excluded = [arg for export in exports for arg in ("--exclude", str(export))]
        printed = echoengine("reviews", "compare", "--store", self.path("store"), old, new, *excluded, "--out",
                             self.path("compare.csv"), log=self.path("commands.log"))
        self.timed("compare", started)
        return printed, pd.read_csv(self.path("compare.csv"))

    def promote(self, new: Path) -> tuple[dict, list[dict]]:
        """Serve ``new`` as a candidate beside the active model, activate it, and upload one more recording: the
        activation's answer and that recording's detections."""
        started = time.monotonic()
        # at its calibrated thresholds (--threshold bundle): otherwise a candidate scores with the active model's 0.1
        server = Serving(new, self.path("store"), "--threshold", "bundle", "--top-n", "1", "--candidate")
        try:
            candidate = next(m for m in server.client.get("/api/models").json() if m["name"] == new.name)
            promoted = server.client.post(f"/api/models/{candidate['id']}/activate").json()
            last = self.recordings[-1]
            fresh = self.path("promotion.flac")
            samples, rate = sf.read(last.path, dtype="float32")
            sf.write(fresh, np.concatenate([samples, np.zeros(rate, "float32")]), rate)
            recording = server.upload(fresh, f"{DAYS[-1]}T23:00:00Z")
            server.wait([recording])
            return promoted, server.detections(sensor_id="field-1", start=f"{DAYS[-1]}T22:00:00Z")
        finally:
            server.stop()
            self.timed("promote", started)

    def run(self) -> str:
        """Every step; the comparison as compare prints it."""
        original = self.prepare()
        old = self.train(original, "old")
        server = self.serve_and_review(old)
        server.stop()
        day1, day2 = self.export(original)
        new = self.train(day1 / "combined.csv", "new", "--allow-outside-paths")
        old_calibrated = self.path("old-calibrated")
        shutil.copytree(old, old_calibrated)  # the served bundle stays as it was registered
        self.calibrate(old_calibrated, day2)
        self.calibrate(new, day2)
        printed, _ = self.compare(old_calibrated, new, day1, day2)
        self.promote(new)
        return printed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", choices=["all", "esc10"], default="all", help="ESC-50's 50 classes or ESC-10's")
    parser.add_argument("--base-sources", type=int, default=2, help="source recordings per class to train on first")
    parser.add_argument("--per-recording", type=int, default=4, help="clips per field recording")
    parser.add_argument("--precision", type=float, default=0.9, help="the calibrated thresholds' target")
    parser.add_argument("--min-reviews", type=int, default=10, help="reviews a species needs to be calibrated")
    parser.add_argument("--shares", type=lambda text: tuple(float(x) for x in text.split(",")),
                        default=(0.4, 0.3, 0.3), help="each day's share of the field sources: train, calibrate, test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args()
    if not (DATA / "esc50-subset").is_dir():
        print(f"needs the real data in {DATA}", file=sys.stderr)
        return 1
    out = args.out or Path(tempfile.mkdtemp(prefix="review-loop-"))
    loop = Loop(out, esc10=args.classes == "esc10", base_sources=args.base_sources,
                per_recording=args.per_recording, precision=args.precision, min_reviews=args.min_reviews,
                seed=args.seed, shares=args.shares)
    printed = loop.run()
    print(printed)
    table = pd.read_csv(loop.path("compare.csv")).set_index("species")
    for side in ("old", "new"):
        row = table.loc["all"]
        print(f"{side}: precision {row[f'{side}_precision']:.3f} ({int(row[f'{side}_found'])}/"
              f"{int(row[f'{side}_detections'])}), recall {row[f'{side}_recall']:.3f} of {int(row['true'])}")
    print(f"{len(loop.recordings)} field recordings; reviews: {loop.reviews}")
    print("seconds: " + ", ".join(f"{step} {seconds}" for step, seconds in loop.seconds.items()))
    print(f"everything is in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
