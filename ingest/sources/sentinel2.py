"""Sentinel-2 L2A as Planetary Computer publishes it: collection, assets, bands, SCL.

This module is the one place that says what a Sentinel-2 band is. Everything downstream
(the sample world, ingest, the shard modality registry) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

COLLECTION = "sentinel-2-l2a"
NODATA = 0
SCL_ASSET = "SCL"
SCL_RESOLUTION_M = 20

# Baseline 04.00 (25 Jan 2022) added BOA_ADD_OFFSET = -1000: stored DN = 10000 * reflectance
# + 1000. Harmonising subtracts it again so all scenes share one scale.
OFFSET_BASELINE = "04.00"
BOA_ADD_OFFSET = 1000
REFLECTANCE_SCALE = 1e-4


@dataclass(frozen=True)
class Band:
    """One spectral band: asset key, native resolution and optics (wavelengths in µm)."""

    name: str
    common_name: str
    resolution_m: int
    center_wavelength: float
    full_width_half_max: float


# L2A has no B10 (cirrus, used only by the atmospheric correction). Order as in PC's eo:bands.
BANDS: tuple[Band, ...] = (
    Band("B01", "coastal", 60, 0.443, 0.027),
    Band("B02", "blue", 10, 0.490, 0.098),
    Band("B03", "green", 10, 0.560, 0.045),
    Band("B04", "red", 10, 0.665, 0.038),
    Band("B05", "rededge", 20, 0.704, 0.019),
    Band("B06", "rededge", 20, 0.740, 0.018),
    Band("B07", "rededge", 20, 0.783, 0.028),
    Band("B08", "nir", 10, 0.842, 0.145),
    Band("B8A", "nir08", 20, 0.865, 0.033),
    Band("B09", "nir09", 60, 0.945, 0.026),
    Band("B11", "swir16", 20, 1.610, 0.143),
    Band("B12", "swir22", 20, 2.190, 0.242),
)
BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)
BY_NAME: dict[str, Band] = {b.name: b for b in BANDS}
RESOLUTIONS_M: tuple[int, ...] = (10, 20, 60)


class SceneClass(IntEnum):
    """Sen2Cor scene classification (SCL) codes."""

    NO_DATA = 0
    SATURATED_OR_DEFECTIVE = 1
    DARK_AREA = 2
    CLOUD_SHADOW = 3
    VEGETATION = 4
    NOT_VEGETATED = 5
    WATER = 6
    UNCLASSIFIED = 7
    CLOUD_MEDIUM_PROBABILITY = 8
    CLOUD_HIGH_PROBABILITY = 9
    THIN_CIRRUS = 10
    SNOW = 11


CLOUD_CLASSES: frozenset[SceneClass] = frozenset(
    {
        SceneClass.CLOUD_MEDIUM_PROBABILITY,
        SceneClass.CLOUD_HIGH_PROBABILITY,
        SceneClass.THIN_CIRRUS,
    }
)
# Pixels that never count as valid surface observations.
INVALID_CLASSES: frozenset[SceneClass] = CLOUD_CLASSES | {
    SceneClass.NO_DATA,
    SceneClass.SATURATED_OR_DEFECTIVE,
    SceneClass.CLOUD_SHADOW,
}


def baseline_has_offset(baseline: str) -> bool:
    """True when a product of this processing baseline (e.g. "04.00") carries the +1000 DN."""
    major, minor = (int(p) for p in baseline.split("."))
    ref_major, ref_minor = (int(p) for p in OFFSET_BASELINE.split("."))
    return (major, minor) >= (ref_major, ref_minor)
