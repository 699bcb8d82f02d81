"""The target grid of a unit: the tile's UTM CRS at 10 m, clipped to the AOI, on the chip grid.

Also where a grid lies in lon/lat (`lonlat_footprint`), which is what the catalog is
searched with: densified so its edges stay true, split at 180° where it crosses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

RESOLUTION_M = 10
Lon = TypeVar("Lon", float, np.ndarray)
FOOTPRINT_POINTS_PER_EDGE = 32  # a UTM edge is curved in lon/lat; 32 points keep it within ~1 m


def cell_id(epsg: int, left: float, top: float) -> str:
    """EPSG_LEFT_TOP of a chip or grid: a location's id, the same on every date.

    `eomae sample` names its cells so, and the shards their chips (`chip_id`).
    """
    return f"{epsg}_{int(left)}_{int(top)}"


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

    @property
    def name(self) -> str:
        """Its `cell_id`: a one-chip grid's is its cell's and its chip's chip_id in shards."""
        return cell_id(self.epsg, self.left, self.top)

    def footprint(self) -> BaseGeometry:
        """Where the grid lies in lon/lat (EPSG:4326), see `lonlat_footprint`."""
        return lonlat_footprint(self.epsg, self.bounds)

    def overlaps(self, other: Grid) -> bool:
        """Whether the two grids share a pixel (same CRS only)."""
        a, b = self.bounds, other.bounds
        return (
            self.epsg == other.epsg and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
        )

    def union(self, other: Grid) -> Grid:
        """The smallest grid holding both (same CRS); chip-aligned when both are."""
        a, b = self.bounds, other.bounds
        left, bottom = min(a[0], b[0]), min(a[1], b[1])
        right, top = max(a[2], b[2]), max(a[3], b[3])
        return Grid(self.epsg, left, top, round((right - left) / RESOLUTION_M),
                    round((top - bottom) / RESOLUTION_M))  # fmt: skip

    def blocks(self, size: int) -> list[tuple[int, int, Grid]]:
        """(row, col, sub-grid) of `size` px squares from the top-left, row by row.

        The last row and column are cut by the grid's edge.
        """
        return [
            (row, col, Grid(self.epsg, self.left + col * RESOLUTION_M,
                            self.top - row * RESOLUTION_M,
                            min(size, self.width - col), min(size, self.height - row)))
            for row in range(0, self.height, size)
            for col in range(0, self.width, size)
        ]  # fmt: skip

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
    """Whole chips inside both the tile and the AOI's UTM envelope; None if there are none.

    Chip edges are multiples of `chip_size * 10 m` in the CRS, so a chip's id (its CRS and
    origin) does not depend on the AOI, the tile or the run.
    """
    extent = chip_size * RESOLUTION_M
    envelopes = [transform_bounds("EPSG:4326", f"EPSG:{epsg}", *part.bounds, densify_pts=21)
                 for part in parts(aoi)]  # an AOI split at 180° has two  # fmt: skip
    aoi_bounds = (min(b[0] for b in envelopes), min(b[1] for b in envelopes),
                  max(b[2] for b in envelopes), max(b[3] for b in envelopes))  # fmt: skip
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


def wrap_lon(lon: Lon) -> Lon:
    """Longitude (a number or an array) in [-180, 180)."""
    return (lon + 180.0) % 360.0 - 180.0


def parts(geometry: BaseGeometry) -> list[BaseGeometry]:
    """The polygons of a geometry: two for a footprint split at 180°, else itself."""
    return list(getattr(geometry, "geoms", [geometry]))


@lru_cache(maxsize=64)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def lonlat_footprint(
    epsg: int,
    bounds: tuple[float, float, float, float],
    points_per_edge: int = FOOTPRINT_POINTS_PER_EDGE,
) -> BaseGeometry:
    """The outline of a box of a projected CRS in lon/lat, densified.

    A footprint that crosses the antimeridian comes back as a MultiPolygon split at ±180°
    (the GeoJSON and STAC convention), so it intersects items on both sides.
    """
    left, bottom, right, top = bounds
    step = max(right - left, top - bottom) / points_per_edge
    outline = box(left, bottom, right, top).segmentize(step)
    to_lonlat = _to_lonlat(epsg)
    ring = shapely.transform(outline, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))
    lons = [x for x, _ in ring.exterior.coords]
    if max(lons) - min(lons) <= 180:
        return ring
    # Crosses 180°: unwrap to [0, 360), then cut at 180 and shift the east part back.
    unwrapped = Polygon([(x % 360, y) for x, y in ring.exterior.coords])
    west = unwrapped.intersection(box(0, -90, 180, 90))
    east = shapely.transform(
        unwrapped.intersection(box(180, -90, 360, 90)), lambda xy: xy - [360.0, 0.0]
    )
    return MultiPolygon([p for g in (west, east) if not g.is_empty for p in parts(g)])
