"""A world of catalog items only, at Planetary Computer's scale: real tiles, no rasters.

    items = pc_world(200, dates=2)                  # 200 real Sentinel-2 tiles in Europe
    write_snapshot(items, "runs/bench/world.parquet")
    catalog = SnapshotCatalog("runs/bench/world.parquet")

The sample world (`generate.py`) renders every raster, so it holds a handful of tiles;
planning a corpus of scattered locations needs hundreds. This world is the catalog of
such a corpus and nothing else: `sentinel-2-l2a` items of real MGRS tiles (real names,
UTM zones and extents), a few acquisitions each, and the `cop-dem-glo-30` 1° cells and
`esa-worldcover` 3° tiles (both map versions) that cover them, all shaped as PC serves
them (`pc_items`). Hrefs point at PC's blob storage and are never read: the items are for
planning only. The same arguments give the same items.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import mgrs
import numpy as np
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from infra.world.pc_items import TILE_PX, cells, dem_item, s2_item, worldcover_item
from ingest.grid import lonlat_footprint

EUROPE = (-10.0, 36.0, 30.0, 60.0)  # lon0, lat0, lon1, lat1
SQUARE_M = 100_000.0  # an MGRS 100 km square
TILE_M = TILE_PX * 10.0  # a Sentinel-2 tile: its square widened 9.8 km east and south
FIRST_DATE = date(2021, 6, 1)
REVISIT_DAYS = 5  # one acquisition every 5 days, as S2A and S2B together
ORBITS = 143  # Sentinel-2's relative orbits
PROBE_DEG = 0.2  # spacing of the points whose MGRS squares are the area's tiles


@dataclass(frozen=True)
class S2Tile:
    """A Sentinel-2 tile: its MGRS name, UTM zone and the origin of its 10 m grid."""

    name: str  # "32TNT"
    epsg: int
    left: float  # the MGRS square's west edge
    top: float  # the MGRS square's north edge

    @property
    def square(self) -> tuple[float, float, float, float]:
        """The MGRS 100 km square in UTM metres: the points that are named this tile."""
        return (self.left, self.top - SQUARE_M, self.left + SQUARE_M, self.top)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The Sentinel-2 tile in UTM metres (overlapping its east and south neighbours)."""
        return (self.left, self.top - TILE_M, self.left + TILE_M, self.top)

    def footprint(self) -> BaseGeometry:
        """The MGRS square in lon/lat."""
        return lonlat_footprint(self.epsg, self.square)


def mgrs_tiles(area: tuple[float, float, float, float] = EUROPE) -> list[S2Tile]:
    """The MGRS tiles of points every `PROBE_DEG` degrees over the area, sorted by name.

    A square narrower than the spacing (a sliver at a zone's edge) may be missed.
    """
    lon0, lat0, lon1, lat1 = area
    lon, lat = np.meshgrid(np.arange(lon0, lon1, PROBE_DEG), np.arange(lat0, lat1, PROBE_DEG))
    converter = mgrs.MGRS()
    probes: dict[str, tuple[float, float, str]] = {}  # a point of each tile, its MGRS to 1 m
    for x, y in zip(lon.ravel().tolist(), lat.ravel().tolist(), strict=True):
        ref = converter.toMGRS(y, x, MGRSPrecision=5)  # "32TNT" + 5 + 5 digits
        probes.setdefault(ref[:5], (x, y, ref[5:]))
    tiles = []
    for name, (x, y, digits) in sorted(probes.items()):
        # the zone as MGRS names it (Norway's exceptions included), as ingest.locations does
        epsg = (32600 if name[2] >= "N" else 32700) + int(name[:2])
        east, north = Transformer.from_crs(4326, epsg, always_xy=True).transform(x, y)
        # the digits are the point's place in its square (rounded to 1 m: a point a hair
        # west of a square's edge is named for the next square, so no flooring `east`)
        left = round((east - int(digits[:5])) / SQUARE_M) * SQUARE_M
        top = round((north - int(digits[5:])) / SQUARE_M) * SQUARE_M + SQUARE_M
        tiles.append(S2Tile(name, epsg, left, top))
    return tiles


def pick_tiles(
    n_tiles: int, seed: int = 0, area: tuple[float, float, float, float] = EUROPE
) -> list[S2Tile]:
    """`n_tiles` of the area's tiles drawn at random (by `seed`), sorted by name."""
    tiles = mgrs_tiles(area)
    if n_tiles > len(tiles):
        raise ValueError(f"the area {area} has {len(tiles)} tiles, fewer than {n_tiles}")
    chosen = np.random.default_rng(seed).choice(len(tiles), size=n_tiles, replace=False)
    return [tiles[i] for i in sorted(chosen)]


def pc_world(
    n_tiles: int,
    dates: int = 2,
    seed: int = 0,
    area: tuple[float, float, float, float] = EUROPE,
) -> list[dict[str, Any]]:
    """The items of `pick_tiles(n_tiles, seed, area)`, sorted by collection and id.

    Each tile is sensed `dates` times, `REVISIT_DAYS` apart from `FIRST_DATE`, on the
    relative orbit of its longitude: neighbours on one orbit share an acquisition, as on
    PC. Cloud cover is drawn from `seed`; the DEM cells and WorldCover tiles are those
    the tiles' footprints meet.
    """
    rng = np.random.default_rng(seed)
    items: list[dict[str, Any]] = []
    dem_cells: set[tuple[int, int]] = set()
    lc_cells: set[tuple[int, int]] = set()
    for tile in pick_tiles(n_tiles, seed, area):
        footprint = lonlat_footprint(tile.epsg, tile.bounds)
        dem_cells.update(cells(footprint, 1))
        lc_cells.update(cells(footprint, 3))
        centre = footprint.centroid.x
        orbit = 1 + int((centre + 180) % 360 / 360 * ORBITS)
        for d in range(dates):
            day = FIRST_DATE + timedelta(days=REVISIT_DAYS * d)
            when = f"{day}T10:{orbit % 60:02d}:31.024000Z"  # PC's fractional seconds
            items.append(
                s2_item(tile.name, tile.epsg, tile.left, tile.top, when, orbit=orbit,
                        platform="S2A" if d % 2 == 0 else "S2B",
                        cloud=round(float(rng.uniform(0, 80)), 6))
            )  # fmt: skip
    items += [dem_item(lon, lat) for lon, lat in sorted(dem_cells)]
    items += [worldcover_item(lon, lat, v) for lon, lat in sorted(lc_cells)
              for v in ("v100", "v200")]  # fmt: skip
    return sorted(items, key=lambda i: (i["collection"], i["id"]))
