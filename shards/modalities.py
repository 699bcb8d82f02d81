"""The modality registry: what a sample holds, defined once for training and evaluation.

Built on the source definitions in `ingest.sources` (bands, nodata, WorldCover codes);
nothing here repeats a band list or a class table. Every modality is stored in a shard
as `NAME.npy`, shaped (channels, H, W) with its on-disk dtype; the per-pixel validity
mask is `valid.npy` (H, W) bool and the metadata is `json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ingest.sources import sentinel2, worldcover

VALID = "valid"  # the (H, W) bool mask stored beside the modalities
META = "json"  # the per-sample metadata member


@dataclass(frozen=True)
class Modality:
    """One input/target modality as stored in the shards and fed to models."""

    name: str  # member `NAME.npy` in a sample and key of the loader's batches
    bands: tuple[str, ...]
    dtype: str  # on disk
    nodata: float  # on-disk value meaning "no data" (NaN for float modalities)
    categorical: bool = False
    classes: tuple[int, ...] = ()  # on-disk codes; class index i is classes[i]
    description: str = ""

    @property
    def channels(self) -> int:
        """Channels on disk: one per band."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of classes (categorical modalities); the nodata index is this number."""
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        """Class index given to nodata pixels (after the real classes, for an embedding row)."""
        return self.num_classes

    def is_nodata(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of nodata values in on-disk data."""
        return np.isnan(values) if math.isnan(self.nodata) else values == self.nodata

    def band_index(self, names: tuple[str, ...] | list[str]) -> list[int]:
        """Channel indices of the named bands; KeyError naming the unknown ones."""
        unknown = [n for n in names if n not in self.bands]
        if unknown:
            raise KeyError(f"{self.name} has no bands {unknown}; it has {list(self.bands)}")
        return [self.bands.index(n) for n in names]

    def class_lookup(self) -> np.ndarray:
        """uint8 code -> class index table (256 entries); unknown codes and nodata -> ignore."""
        lut = np.full(256, self.ignore_index, dtype=np.int64)
        lut[list(self.classes)] = np.arange(self.num_classes)
        return lut


S2 = Modality(
    "s2",
    sentinel2.BAND_NAMES,
    "uint16",
    float(sentinel2.NODATA),
    description="Sentinel-2 L2A surface reflectance x 10000 (harmonised), all 12 bands at 10 m",
)
DEM = Modality(
    "dem",
    ("elevation",),
    "float32",
    math.nan,
    description="Copernicus DEM GLO-30 elevation in metres, bilinear to 10 m",
)
LC = Modality(
    "lc",
    ("class",),
    "uint8",
    float(worldcover.NODATA),
    categorical=True,
    classes=worldcover.CODES,
    description="ESA WorldCover class codes, nearest to 10 m",
)
MODALITIES: dict[str, Modality] = {m.name: m for m in (S2, DEM, LC)}


def get(names: list[str] | tuple[str, ...]) -> list[Modality]:
    """The registry entries for `names`, with an error naming the unknown ones."""
    unknown = [n for n in names if n not in MODALITIES]
    if unknown:
        raise KeyError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
    return [MODALITIES[n] for n in names]
