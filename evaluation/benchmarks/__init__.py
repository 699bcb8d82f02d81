"""Readers for public EO benchmarks in their native on-disk formats.

Every reader turns a dataset directory into a `Benchmark`: what the task is, its class
names, which of our Sentinel-2 bands it has, and a map-style dataset per split whose
samples are dicts

    {"s2": float32 (C, H, W)  # reflectance x 10000, bands in `Benchmark.bands` order
     "label": int64 ()        # scene: class index
            | float32 (K,)    # multilabel: 0/1 per class
            | int64 (H, W)}   # segmentation: class index, IGNORE where unlabelled

`Benchmark.bands` is a subset of `ingest.sources.sentinel2.BAND_NAMES`, in that order
(bands a dataset lacks are absent; extra ones such as B10 are dropped). Bands stored at
20/60 m are resampled to the 10 m grid of the sample. Nothing is downloaded: a reader
gets a path and fails with `BenchmarkError` naming what is missing or malformed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from evaluation.metrics import EmptyClasses

Task = Literal["scene", "multilabel", "segmentation"]
SPLITS = ("train", "val", "test")
IGNORE = -100  # segmentation label of unlabelled pixels (torch's cross-entropy default)


class BenchmarkError(ValueError):
    """A benchmark directory that is missing, incomplete or not in the expected layout."""


class SampleSource(Protocol):
    """A map-style dataset of benchmark samples (see the module docstring).

    A source may also have `label(index)`, the label alone without reading imagery, which
    evaluation uses to choose label fractions and fit heads (evaluation.data).
    """

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclass
class Benchmark:
    """A benchmark read from disk: task, classes, bands present, and samples per split."""

    name: str
    task: Task
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    splits: dict[str, SampleSource] = field(default_factory=dict)
    metric: str = ""  # the papers' headline metric, e.g. "mAP (micro)" or "accuracy"
    split_source: str = "the benchmark's official splits"  # said in every report
    # Macro mAP of a class with no positive in the test split: 0, as the benchmarks'
    # reference code scores it (scikit-learn's and torchmetrics' average precision).
    empty_classes: EmptyClasses = "zero"

    def split(self, name: str) -> SampleSource:
        """One split's samples; BenchmarkError naming the splits there are."""
        if name not in self.splits:
            raise BenchmarkError(f"{self.name} has no split {name!r}; it has {list(self.splits)}")
        return self.splits[name]


def check_bands(found: Sequence[str], what: str) -> tuple[str, ...]:
    """Our band names among `found`, in our order; error when none is a Sentinel-2 band."""
    from ingest.sources.sentinel2 import BAND_NAMES

    bands = tuple(b for b in BAND_NAMES if b in set(found))
    if not bands:
        raise BenchmarkError(f"{what}: no Sentinel-2 band among {list(found)}")
    return bands
