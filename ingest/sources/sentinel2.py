"""Sentinel-2 L2A as Planetary Computer publishes it: collection, assets, bands, SCL.

This module is the one place that says what a Sentinel-2 band is. Everything downstream
(the sample world, ingest, the shard modality registry) imports it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from rasterio.enums import Resampling

from ingest.grid import Grid
from ingest.raster import ReadError, read_into_grid

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
# Onto the 10 m grid: 10 m bands are copied (nearest: an aligned grid), 20/60 m bands
# bilinear, the SCL nearest (classes).
RESAMPLING: dict[str, Resampling] = {
    b.name: Resampling.nearest if b.resolution_m == 10 else Resampling.bilinear for b in BANDS
} | {SCL_ASSET: Resampling.nearest}


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


def item_epsg(item: dict) -> int:
    """The item's EPSG code, from proj:epsg (PC) or proj:code (projection extension v2)."""
    props = item["properties"]
    if props.get("proj:epsg"):
        return int(props["proj:epsg"])
    code = props.get("proj:code") or item["assets"]["B02"].get("proj:code", "")
    if not str(code).upper().startswith("EPSG:"):
        raise ValueError(f"item {item['id']} has neither proj:epsg nor an EPSG proj:code")
    return int(str(code).split(":")[1])


def tile_bounds(item: dict) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of the tile in its UTM CRS, from the 10 m asset's proj fields."""
    asset = item["assets"]["B02"]
    a, _, c, _, e, f = asset["proj:transform"][:6]
    h, w = asset["proj:shape"]
    return c, f + e * h, c + a * w, f


def read_scene(item: dict, grid: Grid, max_reads: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All 12 bands as stored (uint16 DN, [12, H, W]) and the SCL ([H, W]) on `grid`.

    10 m bands on an aligned grid are copied exactly (nearest); 20/60 m bands are
    bilinear; SCL is nearest. Up to `max_reads` rasters are read concurrently.
    """
    missing = [k for k in (*BAND_NAMES, SCL_ASSET) if k not in item["assets"]]
    if missing:
        raise ReadError(f"item {item['id']} lacks assets {missing}")

    def read(key: str, resampling: Resampling) -> tuple[np.ndarray, int]:
        href = item["assets"][key]["href"]
        return read_into_grid(
            href, grid, resampling, nodata=NODATA, dtype="uint8" if key == SCL_ASSET else "uint16"
        )

    with ThreadPoolExecutor(max_workers=max_reads) as pool:
        results = dict(
            zip(RESAMPLING, pool.map(lambda kv: read(*kv), RESAMPLING.items()), strict=True)
        )
    s2 = np.stack([results[name][0] for name in BAND_NAMES])
    scl = results[SCL_ASSET][0]
    return s2, scl, sum(nbytes for _, nbytes in results.values())


def harmonise(dn: np.ndarray, baseline: str) -> np.ndarray:
    """One scale for all baselines: remove the +1000 of 04.00 and later, clip at 0."""
    if not baseline_has_offset(baseline):
        return dn
    return np.clip(dn.astype(np.int32) - BOA_ADD_OFFSET, 0, None).astype(np.uint16)


def valid_mask(dn: np.ndarray, scl: np.ndarray) -> np.ndarray:
    """Pixels with data in every band and an SCL class that is a clear surface observation."""
    invalid_codes = [int(c) for c in INVALID_CLASSES]
    return (dn != NODATA).all(axis=0) & ~np.isin(scl, invalid_codes)
