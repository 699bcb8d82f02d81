"""ESA WorldCover 10 m as Planetary Computer publishes it: collection, asset, class table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from rasterio.enums import Resampling

from ingest.grid import Grid
from ingest.mosaic import mosaic

COLLECTION = "esa-worldcover"
ASSET = "map"
RESOLUTION_DEG = 1 / 12000  # ~10 m at the equator
NODATA = 0
RESAMPLING = Resampling.nearest

# The collection holds two maps of the same tiles: 2020 (v100) and 2021 (v200). An item
# says which by `esa_worldcover:product_version`, and its id carries the tag
# (ESA_WorldCover_10m_2021_v200_N48E012).
Version = Literal["v100", "v200"]
LATEST: Version = "v200"
PRODUCT_VERSIONS: dict[str, Version] = {"1.0.0": "v100", "2.0.0": "v200"}
_ID_VERSION = re.compile(r"_(v\d{3})_")


@dataclass(frozen=True)
class LandCoverClass:
    """One WorldCover class: its code in the product, name and the official colour."""

    code: int
    name: str
    color: str


CLASSES: tuple[LandCoverClass, ...] = (
    LandCoverClass(10, "Tree cover", "#006400"),
    LandCoverClass(20, "Shrubland", "#ffbb22"),
    LandCoverClass(30, "Grassland", "#ffff4c"),
    LandCoverClass(40, "Cropland", "#f096ff"),
    LandCoverClass(50, "Built-up", "#fa0000"),
    LandCoverClass(60, "Bare / sparse vegetation", "#b4b4b4"),
    LandCoverClass(70, "Snow and ice", "#f0f0f0"),
    LandCoverClass(80, "Permanent water bodies", "#0064c8"),
    LandCoverClass(90, "Herbaceous wetland", "#0096a0"),
    LandCoverClass(95, "Mangroves", "#00cf75"),
    LandCoverClass(100, "Moss and lichen", "#fae6a0"),
)
CODES: tuple[int, ...] = tuple(c.code for c in CLASSES)
BY_CODE: dict[int, LandCoverClass] = {c.code: c for c in CLASSES}


def item_version(item: dict[str, Any]) -> Version | None:
    """Which map an item (STAC dict) belongs to, from its product version or else its id."""
    product = item.get("properties", {}).get("esa_worldcover:product_version")
    if product in PRODUCT_VERSIONS:
        return PRODUCT_VERSIONS[product]
    tag = _ID_VERSION.search(str(item.get("id", "")))
    return tag.group(1) if tag and tag.group(1) in get_args(Version) else None  # type: ignore[return-value]


def read(hrefs: Sequence[str], grid: Grid) -> tuple[np.ndarray, int]:
    """WorldCover codes (uint8, 0 where no item covers) mosaicked onto `grid`, nearest."""
    return mosaic(hrefs, grid, RESAMPLING, nodata=NODATA, dtype="uint8")
