"""The model's modalities: named views of the shard modalities, with their loss.

The EO MultiMAE paper's code splits Sentinel-2 into band groups, each its own modality
(`bandgroups`); `s2` keeps the 12 bands as one. Bands and classes come from the shard
registry, so nothing here repeats a band table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from shards.modalities import DEM, LC, MODALITIES, S2, VALID

Loss = Literal["mse", "l1", "ce"]


@dataclass(frozen=True)
class ModelModality:
    """A model modality: which shard modality (and bands) it is, how it is reconstructed."""

    name: str
    source: str  # shard modality (`s2`, `dem`, `lc`)
    bands: tuple[str, ...]  # bands of the source, in this order
    loss: Loss

    @property
    def categorical(self) -> bool:
        """Whether this modality holds class indices (land cover)."""
        return MODALITIES[self.source].categorical

    @property
    def channels(self) -> int:
        """Input channels (1 class-index plane for categorical modalities)."""
        return 1 if self.categorical else len(self.bands)

    @property
    def num_classes(self) -> int:
        """Classes of a categorical modality (its nodata index is this number)."""
        return MODALITIES[self.source].num_classes

    @property
    def out_channels(self) -> int:
        """Values predicted per pixel: class logits or one per band."""
        return self.num_classes if self.categorical else len(self.bands)

    def take(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Pick it from a loader batch: (B, C, H, W) float or (B, H, W) long; None if absent."""
        if self.source not in batch:
            return None
        x = batch[self.source]
        if self.categorical:
            return x
        index = MODALITIES[self.source].band_index(self.bands)
        return x if index == list(range(x.shape[1])) else x[:, index]


def _spectral(name: str, bands: tuple[str, ...]) -> ModelModality:
    return ModelModality(name, S2.name, bands, "mse")


ELEVATION = ModelModality("dem", DEM.name, DEM.bands, "l1")
LANDCOVER = ModelModality("lc", LC.name, LC.bands, "ce")
PRESETS: dict[str, tuple[ModelModality, ...]] = {
    "bandgroups": (
        _spectral("rgb", ("B04", "B03", "B02")),
        _spectral("rededge", ("B05", "B06", "B07")),
        _spectral("nir", ("B8A", "B08")),
        _spectral("swir", ("B11", "B12")),
        ELEVATION,
        LANDCOVER,
    ),
    "s2": (_spectral("s2", S2.bands), ELEVATION, LANDCOVER),
}


def split_batch(
    batch: dict[str, Tensor], modalities: tuple[ModelModality, ...] | list[ModelModality]
) -> dict[str, Tensor]:
    """Loader batch -> {model modality: tensor} for those present in the batch."""
    out = {}
    for m in modalities:
        x = m.take(batch)
        if x is not None:
            out[m.name] = x
    return out


def valid_of(batch: dict[str, Tensor]) -> Tensor:
    """The (B, H, W) validity mask of a batch (all valid when the batch has none)."""
    if VALID in batch:
        return batch[VALID]
    first = next(v for v in batch.values() if isinstance(v, Tensor))
    return torch.ones(first.shape[0], *first.shape[-2:], dtype=torch.bool)
