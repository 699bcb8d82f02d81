"""The target grid of a unit: the tile's UTM CRS at 10 m, clipped to the AOI, on the chip grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.warp import transform_bounds
from shapely.geometry.base import BaseGeometry

RESOLUTION_M = 10


@dataclass(frozen=True)
class Grid:
    """A north-up grid: CRS, origin, size in pixels. Origins are multiples of the chip extent."""

    epsg: int
    left: float
    top: float
    width: int
    height: int

    @property
    def crs(self) -> str:
        """CRS as an EPSG string."""
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Affine:
        """Pixel to CRS coordinates."""
        return Affine(RESOLUTION_M, 0.0, self.left, 0.0, -RESOLUTION_M, self.top)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        return (
            self.left,
            self.top - self.height * RESOLUTION_M,
            self.left + self.width * RESOLUTION_M,
            self.top,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the plan."""
        return {"epsg": self.epsg, "left": self.left, "top": self.top,
                "width": self.width, "height": self.height}  # fmt: skip


def chip_grid(
    epsg: int,
    tile_bounds: tuple[float, float, float, float],
    aoi: BaseGeometry,
    chip_size: int,
) -> Grid | None:
    """Whole chips inside both the tile and the AOI's bounding box; None if there are none.

    Chip edges are multiples of `chip_size * 10 m` in the CRS, so a chip's id (its CRS and
    origin) does not depend on the AOI, the tile or the run.
    """
    extent = chip_size * RESOLUTION_M
    aoi_bounds = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *aoi.bounds, densify_pts=21)
    left = max(tile_bounds[0], aoi_bounds[0])
    bottom = max(tile_bounds[1], aoi_bounds[1])
    right = min(tile_bounds[2], aoi_bounds[2])
    top = min(tile_bounds[3], aoi_bounds[3])
    left, bottom = math.ceil(left / extent) * extent, math.ceil(bottom / extent) * extent
    right, top = math.floor(right / extent) * extent, math.floor(top / extent) * extent
    if right <= left or top <= bottom:
        return None
    width = round((right - left) / RESOLUTION_M)
    height = round((top - bottom) / RESOLUTION_M)
    return Grid(epsg, float(left), float(top), width, height)
