"""Sentinel-2 L2A as Planetary Computer publishes it: collection, assets, bands, SCL.

This module is the one place that says what a Sentinel-2 band is. Everything downstream
(the sample world, ingest, the shard modality registry) imports it.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from enum import IntEnum
from functools import lru_cache
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from shapely.errors import GEOSException
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from ingest.grid import Grid, lonlat_footprint
from ingest.raster import ReadError, read_into_grid

COLLECTION = "sentinel-2-l2a"
NODATA = 0
SCL_ASSET = "SCL"
SCL_RESOLUTION_M = 20

# Baseline 04.00 (25 Jan 2022) added BOA_ADD_OFFSET = -1000: stored DN = 10000 * reflectance
# + 1000. Harmonising subtracts it again so all scenes share one scale.
OFFSET_BASELINE = "04.00"
OFFSET_START = date(2022, 1, 25)  # products sensed from this day on carry the offset
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
    return baseline_key(baseline) >= baseline_key(OFFSET_BASELINE)


# ESA's product name carries the baseline: S2B_MSIL2A_20230101T102339_N0510_R065_... is 05.10.
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})_")


def processing_baseline(item: dict[str, Any]) -> tuple[str, bool]:
    """(baseline, inferred): `s2:processing_baseline`, else the product name's, else the date's.

    Items in the STAC projection v2 layout may lack the property; their SAFE product name
    (in `s2:product_uri` or the asset hrefs) still states it. Without either, the baseline
    is inferred from the sensing date: the +1000 offset began with 04.00 on 25 Jan 2022;
    before it, "00.00" stands for "some earlier one".
    """
    props = item["properties"]
    stated = props.get("s2:processing_baseline")
    if baseline_key(str(stated)) > (0,):
        return str(stated), False
    names = [str(props.get("s2:product_uri", ""))]
    names += [str(a.get("href", "")) for a in (item.get("assets") or {}).values()]
    for name in names:
        if found := _BASELINE_IN_NAME.search(name):
            return f"{found[1]}.{found[2]}", False
    sensed = datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
    return (OFFSET_BASELINE if sensed.date() >= OFFSET_START else "00.00"), True


def item_problem(item: dict[str, Any]) -> str | None:
    """Why an item cannot be planned, or None: each field the planner relies on, checked."""
    props = item.get("properties") or {}
    if not props.get("s2:mgrs_tile"):
        return "no s2:mgrs_tile"
    try:
        datetime.fromisoformat(str(props["datetime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return f"datetime {props.get('datetime')!r} is not an RFC 3339 instant"
    cloud = props.get("eo:cloud_cover")
    if cloud is not None and (not isinstance(cloud, int | float) or not 0 <= cloud <= 100):
        return f"eo:cloud_cover {cloud!r} is not a percentage"
    missing = [k for k in (*BAND_NAMES, SCL_ASSET) if k not in (item.get("assets") or {})]
    if missing:
        return f"lacks assets {missing}"
    try:
        epsg, bounds = item_epsg(item), tile_bounds(item)
        a, _, _, _, e = item["assets"]["B02"]["proj:transform"][:5]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        return f"no usable proj:epsg / proj:transform / proj:shape on B02 ({err!r})"
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        return f"proj:epsg {epsg} is not a UTM zone"
    if (a, e) != (10, -10) or bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
        return f"B02 is not on a 10 m north-up grid: proj:transform {a}, {e}, bounds {bounds}"
    try:
        geometry = shape(item["geometry"])
    except (KeyError, TypeError, ValueError, AttributeError, GEOSException) as err:
        return f"unreadable geometry ({err!r})"
    if not geometry.is_valid:
        return f"invalid geometry: {explain_validity(geometry)}"
    if not geometry.intersects(tile_footprint(epsg, bounds)):
        return f"geometry lies outside the tile its proj fields describe (EPSG:{epsg} {bounds})"
    return None


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


def baseline_key(baseline: str) -> tuple[int, ...]:
    """A processing baseline ("05.10") as a sortable key; unparsable ones sort first."""
    try:
        return tuple(int(p) for p in baseline.split("."))
    except (AttributeError, ValueError):
        return (-1,)


_ORBIT_IN_ID = re.compile(r"_R(\d{3})_")


def relative_orbit(item: dict[str, Any]) -> int:
    """The relative orbit: `sat:relative_orbit`, else the R### of PC's item id, else 0."""
    orbit = item["properties"].get("sat:relative_orbit")
    if orbit is not None:
        return int(orbit)
    found = _ORBIT_IN_ID.search(item["id"])
    return int(found.group(1)) if found else 0


def platform_code(item: dict[str, Any]) -> str:
    """S2A, S2B, ...: from the item id's prefix (PC) or the `platform` property."""
    prefix = item["id"][:3]
    if re.fullmatch(r"S2[A-Z]", prefix):
        return prefix
    platform = str(item["properties"].get("platform", ""))  # "Sentinel-2A"
    return f"S2{platform[-1].upper()}" if platform.lower().startswith("sentinel-2") else "S2"


@lru_cache(maxsize=1024)
def tile_footprint(epsg: int, bounds: tuple[float, float, float, float]) -> BaseGeometry:
    """A tile's outline in lon/lat (cached: every item of a tile asks for it)."""
    return lonlat_footprint(epsg, bounds)


def usable_share(item: dict[str, Any], footprint: BaseGeometry | None = None) -> float:
    """The share of `footprint` (lon/lat; default: the whole tile) the scene shows clear.

    Data share x (1 - cloud cover). On Planetary Computer an item's geometry is its data
    footprint, so the data share is the part of `footprint` the geometry covers; nodata
    that `s2:nodata_pixel_percentage` (of the whole tile) puts inside the geometry, as in
    a catalog whose geometries are whole tiles, is taken as spread evenly over it. A
    sliver (99.6 % nodata) thus ranks below a full scene however low its cloud cover. An
    item without `eo:cloud_cover` counts as fully cloudy: planned only when nothing better is.
    """
    props = item["properties"]
    stated = props.get("eo:cloud_cover")
    cloud = 1.0 if stated is None else min(max(float(stated) / 100, 0.0), 1.0)  # unknown: cloudy
    nodata = min(max(float(props.get("s2:nodata_pixel_percentage") or 0.0) / 100, 0.0), 1.0)
    try:
        tile = tile_footprint(item_epsg(item), tile_bounds(item))
        geometry = shape(item["geometry"])
    except (KeyError, TypeError, ValueError):  # no usable geometry or proj fields
        return (1 - nodata) * (1 - cloud)
    area = footprint if footprint is not None else tile
    inside = min(geometry.area / tile.area, 1.0) if tile.area > 0 else 1.0
    nodata_inside = max(nodata - (1 - inside), 0.0) / inside if inside > 0 else 1.0
    covered = geometry.intersection(area).area / area.area if area.area > 0 else 0.0
    return covered * (1 - nodata_inside) * (1 - cloud)


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
    """One scale for all baselines: remove the +1000 of 04.00 and later.

    Dark pixels (water, shadow) of those baselines are stored at or below 1000 (a
    reflectance of 0 or less); they become 1, the darkest value that is not NODATA, so a
    pixel with data never reads as missing. NODATA stays NODATA.
    """
    if not baseline_has_offset(baseline):
        return dn
    shifted = np.clip(dn.astype(np.int32) - BOA_ADD_OFFSET, NODATA + 1, None)
    return np.where(dn == NODATA, NODATA, shifted).astype(np.uint16)


def valid_mask(dn: np.ndarray, scl: np.ndarray) -> np.ndarray:
    """Pixels with data in every band and an SCL class that is a clear surface observation."""
    invalid_codes = [int(c) for c in INVALID_CLASSES]
    return (dn != NODATA).all(axis=0) & ~np.isin(scl, invalid_codes)
