"""Torch datasets and loaders over a catalog: (image, one-hot label) pairs.

Training items are augmented variants: each epoch, :class:`VariantSampler`
draws for every sample one of ``augment.variants`` variants, and variant
``k`` (its random crop, waveform augmentation, masks and rotation) is a pure
function of ``(augment.seed, k, sample)``, so it can be cached and is
identical when computed again. Evaluation items are the clean, fixed windows
of each file (hop = clip length, last one padded), never augmented.

Examples
--------
>>> import tempfile
>>> from echoengine.synthetic import make_dataset
>>> from echoengine.catalog import load_catalog
>>> root = make_dataset(tempfile.mkdtemp(), classes=2, files_per_class=2, seed=0)
>>> cfg = EchoConfig()
>>> data = ClipDataset(load_catalog(root), ["synthetic-trill", "synthetic-upsweep"], cfg, train=False)
>>> image, target = data[0]
>>> tuple(image.shape), target.tolist()
((3, 260, 260), [1.0, 0.0])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from echoengine import audio
from echoengine.augment import WaveformAugmenter, rotate, spec_augment, variant_seed
from echoengine.cache import FeatureCache, quantise_image
from echoengine.clips import box_labels, crop_around, pad_to_length, random_start, window_starts
from echoengine.config import EchoConfig
from echoengine.errors import AudioError, DataError, EchoError
from echoengine.features import MelFrontend
from echoengine.runtime import keep_freed_memory

__all__ = ["BoxLabels", "ClipDataset", "MultiLabelDataset", "ShardedBatches", "VariantSampler", "WaveformDataset",
           "image_dataset", "make_loader", "preview_inputs", "waveform_dataset"]

logger = logging.getLogger("echoengine")


class ClipDataset(Dataset):
    """Model inputs of the samples of a catalog.

    Parameters
    ----------
    table : pandas.DataFrame
        A catalog (``path``, ``label`` columns; ``duration`` when scanned).
    classes : sequence of str
        Output order of the one-hot labels; an empty label gives all zeros.
    config : EchoConfig
    train : bool
        Augmented random crops of the clip length (items are ``(index,
        variant)``) or clean fixed windows (items are integers) of the
        length recordings are scored in (:attr:`EchoConfig.window_seconds`:
        the clip, or BirdNET's 3 s for models on BirdNET), so that evaluation
        scores the windows ``predict`` and ``detect`` score.
    cache : FeatureCache, optional
    clips : bool
        Clean items of the clip length even so: what a head is fitted and
        validated on (training stays on clips; see ``model.window_seconds``).
    """

    def _label_rows(self, table: pd.DataFrame, classes: Sequence[str]) -> None:
        """``classes``, ``paths``, ``keys`` and ``targets`` of the rows (-1: unlabelled); unknown labels refused.

        Variants are keyed by the path below the dataset's folder (``keys``),
        so that a moved or copied dataset draws the same variants.
        """
        self.classes = list(classes)
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted(set(table["label"]) - set(index) - {""})
        if unknown:
            raise DataError(f"labels not among the classes: {', '.join(map(repr, unknown))}")
        self.paths = table["path"].tolist()
        root = os.path.commonpath([os.path.dirname(p) for p in self.paths]) if self.paths else ""
        self.keys = [os.path.relpath(p, root) for p in self.paths]
        self.targets = [index.get(label, -1) for label in table["label"]]

    def __init__(
        self,
        table: pd.DataFrame,
        classes: Sequence[str],
        config: EchoConfig,
        *,
        train: bool,
        cache: FeatureCache | None = None,
        clips: bool = False,
    ) -> None:
        self.config = config
        self.train = train
        self.cache = cache
        self._label_rows(table, classes)
        self.sample_rate = config.audio.sample_rate
        self.clip_samples = config.audio.clip_samples if train or clips else config.window_samples
        durations = table["duration"] if "duration" in table else [audio.info(p).duration for p in self.paths]
        self.lengths = [round(d * self.sample_rate) for d in durations]
        if train:
            self.items = [(row, -1) for row in range(len(self.paths))]
            self.variants = config.augment.variants
        else:
            self.items = [
                (row, int(start))
                for row, n in enumerate(self.lengths)
                for start in window_starts(n, length=self.clip_samples, hop=self.clip_samples)
            ]
        self.frontend = MelFrontend.from_config(config)
        self.augmenter = WaveformAugmenter(config.augment, sample_rate=self.sample_rate) if train else None

    def __len__(self) -> int:
        return len(self.items)

    def rows(self) -> np.ndarray:
        """The catalog row of every item (several per row for windowed evaluation)."""
        return np.array([row for row, _ in self.items], dtype=np.int64)

    def one_hot(self, row: int) -> torch.Tensor:
        target = torch.zeros(len(self.classes), dtype=torch.float32)
        if self.targets[row] >= 0:
            target[self.targets[row]] = 1.0
        return target

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (image, one-hot label) of an item.

        A file that fails now (changed or removed since it was checked) is
        handled by ``data.on_error``: ``"raise"`` raises its AudioError,
        ``"warn"`` logs it in one line and returns None, ``"ignore"`` returns
        None; :func:`make_loader` drops None items from batches.
        """
        index, variant = item if isinstance(item, tuple) else (item, 0)
        row, start = self.items[index]
        variant = variant if self.train else -1
        try:
            inputs = self.model_input(row, start, variant)
        except AudioError as error:
            self.report(error)
            return None
        return inputs, self.target(row, start, variant)

    def target(self, row: int, start: int, variant: int) -> torch.Tensor:
        """The label of an item: the one-hot label of its file (multi-label datasets: of its clip)."""
        return self.one_hot(row)

    def crop_start(self, row: int, rng: np.random.Generator) -> int:
        """Where a training crop of a row starts (uniformly drawn); multi-label datasets crop around boxes."""
        return random_start(self.lengths[row], length=self.clip_samples, rng=rng)

    def report(self, error: AudioError) -> None:
        """Apply ``data.on_error`` to a file that failed: raise it, log it in one line, or ignore it."""
        if self.config.data.on_error == "raise":
            raise error
        if self.config.data.on_error == "warn":
            logger.warning("skipping %s", error)

    def model_input(self, row: int, start: int, variant: int) -> torch.Tensor:
        """The model image of a clip, (channels, height, width), through the cache."""
        image = self._cached_image(row, start, variant)
        channels = self.config.frontend.image_channels
        return torch.from_numpy(image).unsqueeze(0).expand(channels, -1, -1)

    def _cached_image(self, row: int, start: int, variant: int) -> np.ndarray:
        """The image of a clip, rounded as the cache stores it whether it is a hit, a miss or uncached."""
        key = None
        if self.cache is not None:
            key = self.cache_key(row, start, variant)
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        image = quantise_image(self.compute_image(row, start, variant))  # the same values as a later hit
        if key is not None:
            self.cache.put(key, image)
        return image

    def cache_key(self, row: int, start: int, variant: int) -> str:
        """The feature-cache key of an item (training crops: ``start`` -1, the variant draws the crop)."""
        return self.cache.key(self.paths[row], start=start, length=self.clip_samples, variant=variant)

    def clip_waveform(self, row: int, start: int, variant: int) -> tuple[np.ndarray, np.random.Generator | None]:
        """The waveform of a clip (clean window ``start``, or augmented variant) and the variant's generator."""
        path, length = self.paths[row], self.clip_samples
        rng = None
        if variant >= 0:
            seed = variant_seed(self.config.augment.seed, variant, self.keys[row])
            rng = np.random.default_rng(seed)
            start = self.crop_start(row, rng)
        y = audio.load(path, self.config.audio, offset=start / self.sample_rate, duration=length / self.sample_rate)
        y = pad_to_length(y, length=length, where=self.config.audio.pad if rng is not None else "end", rng=rng)
        if rng is not None and self.augmenter is not None:
            y = self.augmenter(y, seed=int(rng.integers(2**62)))
        return y, rng

    def compute_image(self, row: int, start: int, variant: int) -> np.ndarray:
        """The one-channel image of a clip: clean window ``start``, or augmented variant."""
        y, rng = self.clip_waveform(row, start, variant)
        with torch.inference_mode():
            spec = self.frontend.spectrogram(torch.from_numpy(y).unsqueeze(0))
            if rng is not None:
                spec = self._augment_spectrogram(spec, rng)
            image = self.frontend.image(spec)[:, 0]
            if rng is not None:
                image = self._rotate(image, rng)
        return image[0].numpy()

    def _augment_spectrogram(self, spec: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config.augment
        if cfg.specaugment_p > 0 and rng.random() < cfg.specaugment_p:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            spec = spec_augment(
                spec[0], time_masks=cfg.time_masks, time_mask_fraction=cfg.time_mask_fraction,
                freq_masks=cfg.freq_masks, freq_mask_fraction=cfg.freq_mask_fraction, generator=generator,
            ).unsqueeze(0)
        return spec

    def _rotate(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config.augment
        if cfg.rotation_p > 0 and rng.random() < cfg.rotation_p:
            image = rotate(image, degrees=float(rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees)))
        return image.clamp(0.0, 1.0)


class WaveformDataset(ClipDataset):
    """(clip waveform, one-hot label) items, for models that take raw audio (the ``birdnet`` backbone).

    Training items are augmented variants as in :class:`ClipDataset` (waveform
    augmentation only); they are recomputed, not cached.
    """

    def model_input(self, row: int, start: int, variant: int) -> torch.Tensor:
        """The clip's waveform (samples,)."""
        y, _ = self.clip_waveform(row, start, variant)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


class BoxLabels:
    """Multi-label items from annotated recordings, mixed into a dataset class (images or embeddings).

    Parameters
    ----------
    recordings : DataFrame
        Scanned recordings (``path``, ``group``, ``duration``).
    boxes : DataFrame
        Their annotated boxes (:func:`echoengine.catalog.read_annotations`),
        positives and verified negatives.

    Training items are crops that hold a positive box (one per box, placed
    with ``data.box_jitter``) and ``data.background_crops`` crops anywhere
    per recording, each an augmented variant as usual; evaluation items are
    the regular grid of windows of every recording (clip length, or
    BirdNET's 3 s). Targets are
    multi-hot from the boxes a clip holds (:func:`echoengine.clips.box_labels`),
    NaN where a species is left out of the loss.
    """

    def __init__(self, recordings: pd.DataFrame, boxes: pd.DataFrame, classes: Sequence[str], config: EchoConfig,
                 *, train: bool, **options) -> None:
        data = config.data
        known = boxes[boxes["label"].isin(list(classes))]
        self.boxes_of = {path: group.reset_index(drop=True) for path, group in known.groupby("path")}
        rows = []
        for record in recordings.itertuples(index=False):
            base = {"path": record.path, "label": "", "group": record.group, "duration": record.duration}
            if not train:
                rows.append({**base, "anchor_start": np.nan, "anchor_end": np.nan, "tag": ""})
                continue
            mine = self.boxes_of.get(record.path)
            if mine is not None:
                for box in mine[mine["positive"]].drop_duplicates(["start", "end"]).itertuples(index=False):
                    rows.append({**base, "anchor_start": box.start, "anchor_end": box.end,
                                 "tag": f"{box.start:.4f}-{box.end:.4f}"})
            rows += [{**base, "anchor_start": np.nan, "anchor_end": np.nan, "tag": f"bg{j}"}
                     for j in range(data.background_crops)]
        table = pd.DataFrame(rows, columns=["path", "label", "group", "duration", "anchor_start", "anchor_end",
                                            "tag"])
        self.anchors = table[["anchor_start", "anchor_end"]].to_numpy(dtype=np.float64)
        self.tags = table["tag"].tolist()
        super().__init__(table, classes, config, train=train, **options)
        if train:  # several crops of one file: seeds and cache keys of their own, named by their box
            self.keys = [f"{key}#{tag}" for key, tag in zip(self.keys, self.tags, strict=True)]
        fe = config.frontend
        self._band = (fe.fmin, fe.fmax or config.audio.sample_rate / 2) if data.frequency_overlap else None

    def cache_key(self, row: int, start: int, variant: int) -> str:
        """Training crops are keyed by their box (or ``bg``) and the jitter, never by their place in a list."""
        key = super().cache_key(row, start, variant)
        if variant < 0:
            return key
        return f"{key}|multilabel:{self.tags[row]}:{self.config.data.box_jitter}"

    def crop_start(self, row: int, rng: np.random.Generator) -> int:
        start, end = self.anchors[row]
        if np.isnan(start):
            return super().crop_start(row, rng)
        seconds = crop_around(start, end, length=self.config.audio.clip_seconds,
                              duration=self.lengths[row] / self.sample_rate, jitter=self.config.data.box_jitter,
                              rng=rng)
        return round(seconds * self.sample_rate)

    def target(self, row: int, start: int, variant: int) -> torch.Tensor:
        if variant >= 0:  # the crop start drawn by clip_waveform, drawn again
            rng = np.random.default_rng(variant_seed(self.config.augment.seed, variant, self.keys[row]))
            start = self.crop_start(row, rng)
        data = self.config.data
        boxes = self.boxes_of.get(self.paths[row])
        if boxes is None:
            boxes = pd.DataFrame(columns=["start", "end", "low_freq", "high_freq", "label", "positive"])
        labels = box_labels(boxes, np.array([start / self.sample_rate]), length=self.clip_samples / self.sample_rate,
                            classes=self.classes, min_overlap=data.min_overlap, min_fraction=data.min_overlap_fraction,
                            band=self._band, unlabeled=data.unlabeled)
        return torch.from_numpy(labels[0])


class MultiLabelDataset(BoxLabels, ClipDataset):
    """Multi-label (image, multi-hot target) items of annotated recordings: see :class:`BoxLabels`."""


class VariantSampler(Sampler):
    """Shuffled ``(index, variant)`` pairs, different every epoch, reproducible from a seed.

    Examples
    --------
    >>> sampler = VariantSampler(3, variants=20, seed=0)
    >>> first, second = list(sampler), list(sampler)
    >>> sorted(i for i, _ in first), first == second
    ([0, 1, 2], False)
    >>> sampler.set_epoch(0); list(sampler) == first
    True
    """

    def __init__(self, size: int, *, variants: int, seed: int) -> None:
        self.size, self.variants, self.seed = size, variants, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration that of epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.size)
        variants = rng.integers(0, self.variants, size=self.size)
        return iter(zip(order.tolist(), variants.tolist()))


class ShardedBatches(Sampler):
    """Rank ``rank``'s part of every global batch of ``batch`` items drawn by ``sampler``: training across processes.

    Each global batch (``batch`` consecutive items of the epoch's order) is
    cut into ``shards`` equal parts, one per rank, so that the ranks together
    see the batches a single process would and the gradients they average
    are those of the whole batch. The last, short global batch is cut into
    equal parts of at least 2 items (batch norm needs two), the few left over
    dropped; shorter, it is dropped on every rank, so all ranks take the
    same number of steps.

    Examples
    --------
    >>> sampler = VariantSampler(10, variants=1, seed=0)
    >>> [len(b) for b in ShardedBatches(sampler, batch=4, rank=1, shards=2)]  # the last 2 items: 1 each, dropped
    [2, 2]
    >>> sampler.set_epoch(0); first = list(sampler)[:4]
    >>> parts = []
    >>> for r in (0, 1):
    ...     sampler.set_epoch(0); parts += next(iter(ShardedBatches(sampler, batch=4, rank=r, shards=2)))
    >>> parts == first
    True
    """

    def __init__(self, sampler: VariantSampler, *, batch: int, rank: int, shards: int) -> None:
        if batch % shards:
            raise EchoError(f"data.batch_size {batch} must be a multiple of the {shards} training processes "
                            "(each takes an equal part of every batch)")
        self.sampler, self.batch, self.rank, self.shards = sampler, batch, rank, shards

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration that of epoch ``epoch``."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        full, last = divmod(len(self.sampler), self.batch)
        return full + (last // self.shards >= 2)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = list(self.sampler)
        for start in range(0, len(order), self.batch):
            chunk = order[start : start + self.batch]
            part = len(chunk) // self.shards
            if part >= 2 or len(chunk) == self.batch:
                yield chunk[self.rank * part : (self.rank + 1) * part]


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)
    keep_freed_memory()


def make_loader(dataset: ClipDataset, config: EchoConfig, *, seed: int | None = None,
                shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """A DataLoader with the config's batch size and workers.

    Training datasets get a :class:`VariantSampler`; evaluation datasets are
    read in order. ``shard`` is ``(rank, processes)`` of a training run
    across processes: the rank reads its part of each training batch
    (:class:`ShardedBatches`) and every ``processes``-th evaluation item.
    """
    rank, shards = shard
    sampler = batches = None
    batch_size = config.data.batch_size
    if dataset.train:
        seed = config.augment.seed if seed is None else seed
        sampler = VariantSampler(len(dataset), variants=dataset.variants, seed=seed)
        if shards > 1:
            batches, sampler, batch_size = ShardedBatches(sampler, batch=batch_size, rank=rank, shards=shards), None, 1
    elif shards > 1:
        sampler = range(rank, len(dataset), shards)
    workers = config.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        batch_sampler=batches,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_single_thread_worker if workers else None,
        collate_fn=_collate_usable,
    )


def preview_inputs(usable: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, n: int = 16,
                   augment: bool = False, seed: int = 0) -> tuple[torch.Tensor, list[str]] | None:
    """The model inputs of ``n`` files drawn from a scanned catalog, and their titles, for a preview grid.

    Each file gives its first clean window, or with ``augment`` a random
    training variant. The titles are the label and the file name. ``None``
    when no drawn file can be read.
    """
    rng = np.random.default_rng(seed)
    picked = usable.iloc[np.sort(rng.permutation(len(usable))[:n])].reset_index(drop=True)
    dataset = ClipDataset(picked, classes, config, train=augment)
    if augment:  # a random variant of each file
        items = list(zip(range(len(picked)), rng.integers(0, config.augment.variants, len(picked)).tolist()))
    else:  # the first window of each file
        items = np.unique(dataset.rows(), return_index=True)[1].tolist()
    # one item per picked row, in row order; a file that broke since the scan gives None
    shown = [(path, pair) for path, pair in zip(picked["path"], (dataset[item] for item in items)) if pair]
    if not shown:
        return None
    titles = [f"{classes[int(t.argmax())] if t.sum() else '(unlabelled)'}\n{os.path.basename(path)[:28]}"
              for path, (_, t) in shown]
    return torch.stack([image for _, (image, _) in shown]), titles


def _collate_usable(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the items of a batch, leaving out those whose file failed (None)."""
    usable = [item for item in items if item is not None]
    if not usable:
        return torch.empty(0), torch.empty(0)
    return default_collate(usable)


def image_dataset(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool,
                  cache: FeatureCache | None = None, progress: bool = False,
                  boxes: pd.DataFrame | None = None, clips: bool = False) -> ClipDataset:
    """Model images of a catalog (the ``cnn`` kind); with ``boxes``, multi-label items of annotated recordings.

    ``progress`` is unused: images are computed as the loader asks for them.
    """
    if boxes is not None:
        return MultiLabelDataset(table, boxes, classes, config, train=train, cache=cache, clips=clips)
    return ClipDataset(table, classes, config, train=train, cache=cache, clips=clips)


def waveform_dataset(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool,
                     cache: FeatureCache | None = None, progress: bool = False,
                     boxes: pd.DataFrame | None = None, clips: bool = False) -> WaveformDataset:
    """Clip waveforms of a catalog (the fine-tuned ``birdnet`` kind); never cached, single-label only.

    Raises
    ------
    EchoError
        ``boxes`` given: waveform models train on one label per clip.
    """
    if boxes is not None:
        raise EchoError(f"multi-label training works with CNN backbones and embedders, not {config.model.kind.label}")
    return WaveformDataset(table, classes, config, train=train, clips=clips)
