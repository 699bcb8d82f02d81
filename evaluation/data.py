"""Evaluation data: one split of our shards or of a public benchmark, in memory.

Evaluation sets are small next to pretraining corpora (and features are what probes
train on), so a split is read once into tensors:

    EvalSplit.sources  {"s2": (N, 12, H, W), "dem": (N, 1, H, W)}  normalised, float32
    EvalSplit.labels   (N,) long | (N, K) float 0/1 | (N, H, W) long (IGNORE: unlabelled)

Tasks on our shards come from land cover, so land cover is never an input:
- `multilabel`: classes covering at least `threshold` of the chip (BigEarthNet style),
- `scene`: the dominant class (EuroSAT style),
- `segmentation`: the per-pixel class, invalid and nodata pixels ignored.
Benchmarks bring their own labels; their Sentinel-2 bands are z-scored with their train
split's statistics and placed at our band positions (absent bands stay 0, the mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from evaluation.benchmarks import IGNORE, Benchmark, Task
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


def _stack(benchmark: Benchmark, split: str) -> tuple[np.ndarray, np.ndarray]:
    samples = benchmark.split(split)
    items = [samples[i] for i in range(len(samples))]
    return np.stack([s["s2"] for s in items]), np.stack([np.asarray(s["label"]) for s in items])


def band_stats(s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of (N, C, H, W) reflectances."""
    flat = s2.transpose(1, 0, 2, 3).reshape(s2.shape[1], -1).astype(np.float64)
    return flat.mean(axis=1), np.maximum(flat.std(axis=1), 1e-6)


def load_benchmark_splits(
    benchmark: Benchmark, splits: tuple[str, ...], patch: int
) -> dict[str, EvalSplit]:
    """Benchmark splits as EvalSplits, z-scored with the train split's band statistics."""
    raw = {s: _stack(benchmark, s) for s in splits}
    mean, std = band_stats(raw["train"][0] if "train" in raw else raw[splits[0]][0])
    index = [S2.bands.index(b) for b in benchmark.bands]
    # bands the benchmark lacks are 0 in z and in raw units: mean 0, std 1
    stats = (torch.zeros(S2.channels), torch.ones(S2.channels))
    stats[0][index], stats[1][index] = torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    out = {}
    for name, (s2, labels) in raw.items():
        z = (s2 - mean[None, :, None, None]) / std[None, :, None, None]
        full = np.zeros((s2.shape[0], S2.channels, *s2.shape[2:]), np.float32)
        full[:, index] = z
        y = torch.from_numpy(labels)
        if benchmark.task == "segmentation":
            y = crop_to(y.long(), patch)
        out[name] = EvalSplit({S2.name: crop_to(torch.from_numpy(full), patch)}, y,
                              stats={S2.name: stats})  # fmt: skip
    return out


def benchmark_task(benchmark: Benchmark) -> TaskSpec:
    """The TaskSpec of a benchmark."""
    return TaskSpec(benchmark.name, benchmark.task, benchmark.classes, benchmark.name,
                    bands=benchmark.bands, sources=(S2.name,),
                    split=benchmark.split_source)  # fmt: skip
