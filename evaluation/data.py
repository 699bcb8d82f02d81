"""Evaluation data: one split of our shards, or of a public benchmark.

A shard split is read into memory (`EvalSplit`); a benchmark split is read a batch at a
time (`BenchmarkSplit`). Both give `take(index)`, `labels` and `subset(index)`:

    EvalSplit.sources  {"s2": (N, 12, H, W), "dem": (N, 1, H, W)}  normalised, float32
    EvalSplit.labels   (N,) long | (N, K) float 0/1 | (N, H, W) long (IGNORE: unlabelled)

Tasks on our shards come from land cover, so land cover is never an input:
- `multilabel`: classes covering at least `threshold` of the chip (BigEarthNet style),
- `scene`: the dominant class (EuroSAT style),
- `segmentation`: the per-pixel class, invalid and nodata pixels ignored.
Benchmarks bring their own labels; their Sentinel-2 bands are z-scored with their train
split's statistics (over up to STATS_SAMPLES seeded samples) and placed at our band
positions (absent bands stay 0, the mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import rasterio
import torch
from torch import Tensor

from evaluation.benchmarks import IGNORE, Benchmark, SampleSource, Task
from evaluation.metrics import EmptyClasses
from ingest.sources import worldcover
from shards.loader import make_loader
from shards.manifest import read_stats
from shards.modalities import DEM, LC, S2, VALID

SHARD_TASKS: tuple[Task, ...] = ("multilabel", "scene", "segmentation")
SHARDS = "shards"  # the dataset name of our own shard set in reports


@dataclass(frozen=True)
class TaskSpec:
    """What is predicted: kind, classes, and which dataset it comes from."""

    name: str
    kind: Task
    classes: tuple[str, ...]
    dataset: str
    bands: tuple[str, ...] = S2.bands  # S2 bands the dataset has
    sources: tuple[str, ...] = (S2.name, DEM.name)  # shard modalities it can feed
    colors: tuple[str, ...] = ()  # per class, for figures
    split: str = "the shard set's spatial train/test split"  # which split, said in reports
    # Macro mAP of a class absent from the test split: our small spatial test splits may
    # lack a land-cover class, which says nothing of the encoder, so it is left out.
    empty_classes: EmptyClasses = "skip"


@dataclass
class EvalSplit:
    """A split in memory: normalised inputs per shard modality and the task's labels."""

    sources: dict[str, Tensor]
    labels: Tensor
    skipped: int = 0  # damaged samples the loader could not read
    # per source, the (mean, std) per band its z-scores were made with (raw units)
    stats: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def take(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The inputs and labels of the samples at `index`."""
        return {k: v[index] for k, v in self.sources.items()}, self.labels[index]

    def subset(self, index: Tensor) -> EvalSplit:
        """The samples at `index` (label fractions, batches)."""
        return EvalSplit({k: v[index] for k, v in self.sources.items()}, self.labels[index],
                         stats=self.stats)  # fmt: skip


def landcover_task(kind: Task) -> TaskSpec:
    """A task on our shards' land cover."""
    classes = tuple(worldcover.BY_CODE[c].name for c in LC.classes)
    colors = tuple(worldcover.BY_CODE[c].color for c in LC.classes)
    return TaskSpec(kind, kind, classes, SHARDS, colors=colors)


def crop_to(x: Tensor, multiple: int) -> Tensor:
    """Centre crop of the last two dims to a multiple of `multiple` (the patch size)."""
    h, w = x.shape[-2:]
    nh, nw = h - h % multiple, w - w % multiple
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top : top + nh, left : left + nw]


def shard_labels(batch: dict[str, Tensor], kind: Task, threshold: float) -> Tensor:
    """A loader batch's labels for one land-cover task."""
    if kind == "multilabel":
        return (batch["lc_fractions"] >= threshold).float()
    if kind == "scene":
        return batch["lc_fractions"].argmax(dim=1)
    seg = batch[LC.name].clone()
    seg[(seg == LC.ignore_index) | ~batch[VALID]] = IGNORE
    return seg


def load_shard_split(
    shards_url: str, split: str, kind: Task, patch: int, threshold: float = 0.05
) -> EvalSplit:
    """One split of a shard set for a land-cover task (every sample, once)."""
    loader = make_loader(shards_url, split, [S2.name, DEM.name, LC.name], batch_size=64,
                         rank=0, world_size=1)  # fmt: skip
    sources: dict[str, list[Tensor]] = {S2.name: [], DEM.name: []}
    labels = []
    for batch in loader:
        for name, parts in sources.items():
            parts.append(crop_to(batch[name], patch))
        y = shard_labels(batch, kind, threshold)
        labels.append(crop_to(y, patch) if kind == "segmentation" else y)
    raw = read_stats(shards_url)
    stats = {k: (torch.tensor(raw[k]["mean"]), torch.tensor(raw[k]["std"])) for k in sources}
    return EvalSplit({k: torch.cat(v) for k, v in sources.items()}, torch.cat(labels),
                     skipped=loader.skipped, stats=stats)  # fmt: skip


STATS_SAMPLES = 1000  # train samples (seeded) the benchmark's band statistics come from
# GDAL keeps blocks it has read (by default up to 5 % of RAM): over a benchmark of many
# small files that grows with its size; the reads here are one pass, so a small cache.
READ_CACHE_MB = 64


class BenchmarkSplit:
    """A benchmark split read from disk a batch at a time: memory flat in its size.

    Samples are read when `take` asks for them, z-scored with `stats` and put at our band
    positions (absent bands 0); `labels` read only the labels where the source can
    (`label(i)`), so a label fraction is chosen before any imagery is read.
    """

    def __init__(self, source: SampleSource, rows: np.ndarray, stats: tuple[Tensor, Tensor],
                 bands: list[int], task: Task, patch: int) -> None:  # fmt: skip
        self.source, self.rows, self.bands, self.task, self.patch = source, rows, bands, task, patch
        self.stats = {S2.name: stats}
        self.skipped = 0
        self._labels: Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> Tensor:
        """Every sample's label, read once."""
        if self._labels is None:
            read = getattr(self.source, "label", None)
            values = [read(int(i)) if read else self.source[int(i)]["label"] for i in self.rows]
            y = torch.from_numpy(np.stack([np.asarray(v) for v in values]))
            self._labels = crop_to(y.long(), self.patch) if self.task == "segmentation" else y
        return self._labels

    def take(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The inputs and labels of the samples at `index`."""
        mean, std = self.stats[S2.name]
        with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):
            samples = [self.source[int(self.rows[i])] for i in index.tolist()]
        s2 = torch.from_numpy(np.stack([s["s2"] for s in samples])).float()
        full = torch.zeros(len(samples), S2.channels, *s2.shape[2:])
        full[:, self.bands] = (s2 - mean[self.bands, None, None]) / std[self.bands, None, None]
        y = torch.from_numpy(np.stack([np.asarray(s["label"]) for s in samples]))
        y = crop_to(y.long(), self.patch) if self.task == "segmentation" else y
        return {S2.name: crop_to(full, self.patch)}, y

    def subset(self, index: Tensor) -> BenchmarkSplit:
        """The samples at `index`, nothing read."""
        part = BenchmarkSplit(self.source, self.rows[index.numpy()], self.stats[S2.name],
                              self.bands, self.task, self.patch)  # fmt: skip
        if self._labels is not None:
            part._labels = self._labels[index]
        return part


def band_stats(source: SampleSource, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of a split's reflectances, over up to STATS_SAMPLES samples."""
    rows = np.random.default_rng(seed).permutation(len(source))[:STATS_SAMPLES]
    sums: list[np.ndarray] = []  # per sample: (3, C) pixel count, sum, sum of squares
    for i in sorted(rows.tolist()):
        with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):
            s2 = np.asarray(source[i]["s2"], dtype=np.float64)  # (C, H, W)
        n = np.full(s2.shape[0], s2.shape[1] * s2.shape[2], dtype=np.float64)
        sums.append(np.stack([n, s2.sum(axis=(1, 2)), (s2**2).sum(axis=(1, 2))]))
    count, total, square = np.sum(sums, axis=0)
    mean = total / count
    return mean, np.sqrt(np.maximum(square / count - mean**2, 0.0)).clip(min=1e-6)


def load_benchmark_splits(
    benchmark: Benchmark, splits: tuple[str, ...], patch: int
) -> dict[str, BenchmarkSplit]:
    """Benchmark splits, read lazily, z-scored with the train split's band statistics."""
    mean, std = band_stats(benchmark.split("train" if "train" in splits else splits[0]))
    index = [S2.bands.index(b) for b in benchmark.bands]
    # bands the benchmark lacks are 0 in z and in raw units: mean 0, std 1
    stats = (torch.zeros(S2.channels), torch.ones(S2.channels))
    stats[0][index], stats[1][index] = torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    return {
        name: BenchmarkSplit(
            benchmark.split(name),
            np.arange(len(benchmark.split(name))),
            stats,
            index,
            benchmark.task,
            patch,
        )  # fmt: skip
        for name in splits
    }


def benchmark_task(benchmark: Benchmark) -> TaskSpec:
    """The TaskSpec of a benchmark."""
    return TaskSpec(benchmark.name, benchmark.task, benchmark.classes, benchmark.name,
                    bands=benchmark.bands, sources=(S2.name,),
                    split=benchmark.split_source,
                    empty_classes=benchmark.empty_classes)  # fmt: skip


# What the protocols take: a split in memory or one read from disk a batch at a time.
Split = EvalSplit | BenchmarkSplit
