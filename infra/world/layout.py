"""Where the sample world lies: Sentinel-2 tile grids, acquisition dates, DEM/WorldCover tiling.

The region straddles the boundary between UTM zones 32 and 33 (12°E) in the Alps, so
tiles of both zones overlap the same ground and ingest has to reproject across zones.
Tiles are scaled-down Sentinel-2 tiles: UTM, 10 m, origins on the 60 m grid so the
10/20/60 m rasters nest exactly, overlapping their neighbours like the real MGRS grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_geom
from shapely.geometry import Polygon, box, shape

from infra.world.config import WorldConfig
from ingest.sources import sentinel2

CENTER_LAT = 47.30
ZONE_BOUNDARY_LON = 12.0
TILE_OVERLAP = 0.1  # fraction of a tile shared with its neighbour
AUX_TILE_DEG = 0.05  # DEM and WorldCover tiles: scaled down from the real 1° and 3°
OFFSET_BASELINE_DATE = date(2022, 1, 25)  # first day of processing baseline 04.00
METERS_PER_DEG_LAT = 111_320.0

# Tile names styled like MGRS (zone, latitude band T, 100 km square); not real extents.
_NAMES = {32: ("32TQT", "32TPT", "32TNT"), 33: ("33TUN", "33TVN", "33TWN")}


@dataclass(frozen=True)
class TileGrid:
    """A Sentinel-2 tile: UTM CRS and a 10 m grid; 20 m and 60 m grids nest in it."""

    mgrs: str
    epsg: int
    left: float
    top: float
    size: int  # pixels at 10 m

    def transform(self, resolution: int = 10) -> Affine:
        """Affine transform of this tile's grid at `resolution` metres."""
        return Affine(resolution, 0.0, self.left, 0.0, -resolution, self.top)

    def shape(self, resolution: int = 10) -> tuple[int, int]:
        """(height, width) of the grid at `resolution` metres."""
        n = self.size * 10 // resolution
        return n, n

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the tile's UTM CRS."""
        extent = self.size * 10.0
        return self.left, self.top - extent, self.left + extent, self.top

    def footprint(self) -> Polygon:
        """The tile outline in EPSG:4326 (densified, so edges stay true after reprojection)."""
        outline = box(*self.bounds).segmentize(self.size * 10.0 / 16)
        return shape(transform_geom(f"EPSG:{self.epsg}", "EPSG:4326", outline.__geo_interface__))


@dataclass(frozen=True)
class Acquisition:
    """One overpass: when, and which processing baseline the product was made with."""

    when: datetime
    baseline: str

    @property
    def has_offset(self) -> bool:
        """True when its DNs carry the +1000 offset of baseline 04.00 and later."""
        return sentinel2.baseline_has_offset(self.baseline)


def utm_epsg(lon: float) -> int:
    """EPSG code of the northern-hemisphere UTM zone containing `lon`."""
    return 32600 + int(math.floor((lon + 180.0) / 6.0)) + 1


def tile_grids(cfg: WorldConfig) -> list[TileGrid]:
    """Tiles alternate around 12°E, west ones in zone 32, east ones in zone 33."""
    width_deg = cfg.tile_size * 10.0 / (METERS_PER_DEG_LAT * math.cos(math.radians(CENTER_LAT)))
    step = width_deg * (1.0 - TILE_OVERLAP)
    n_west = (cfg.tiles + 1) // 2
    centers = [ZONE_BOUNDARY_LON - (k + 0.5) * step for k in range(n_west)]
    centers += [ZONE_BOUNDARY_LON + (k + 0.5) * step for k in range(cfg.tiles - n_west)]
    grids = []
    used: dict[int, int] = {}
    for lon in sorted(centers):
        epsg = utm_epsg(lon)
        zone = epsg - 32600
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, CENTER_LAT)
        half = cfg.tile_size * 10.0 / 2
        left = math.floor((x - half) / 60.0) * 60.0
        top = math.ceil((y + half) / 60.0) * 60.0
        name = _NAMES[zone][used.get(zone, 0)]
        used[zone] = used.get(zone, 0) + 1
        grids.append(TileGrid(name, epsg, left, top, cfg.tile_size))
    return grids


def acquisitions(cfg: WorldConfig) -> list[Acquisition]:
    """Dates spread evenly from spring 2021 to autumn 2022: both baselines, all seasons."""
    start, end = datetime(2021, 3, 15, 10, 20, 31, tzinfo=UTC), datetime(2022, 10, 15, tzinfo=UTC)
    span = (end - start) / (cfg.dates - 1)
    out = []
    for i in range(cfg.dates):
        when = start + i * span
        when = when.replace(hour=10, minute=20, second=31, microsecond=0)
        baseline = "04.00" if when.date() >= OFFSET_BASELINE_DATE else "03.01"
        out.append(Acquisition(when, baseline))
    return out


def tiles_bounds(grids: list[TileGrid]) -> tuple[float, float, float, float]:
    """Lon/lat box around all tile footprints."""
    boxes = [g.footprint().bounds for g in grids]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def region_bounds(grids: list[TileGrid]) -> tuple[float, float, float, float]:
    """Lon/lat box around all tiles, snapped outward to the DEM/WorldCover tiling."""
    w, s, e, n = tiles_bounds(grids)

    def snap(v: float, up: bool) -> float:
        k = v / AUX_TILE_DEG
        return round((math.ceil(k - 1e-9) if up else math.floor(k + 1e-9)) * AUX_TILE_DEG, 6)

    return snap(w, False), snap(s, False), snap(e, True), snap(n, True)


def aux_tiles(region: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """South-west corners (lon, lat) of the DEM/WorldCover tiles that cover the region."""
    w, s, e, n = region
    nx = round((e - w) / AUX_TILE_DEG)
    ny = round((n - s) / AUX_TILE_DEG)
    return [
        (round(w + i * AUX_TILE_DEG, 6), round(s + j * AUX_TILE_DEG, 6))
        for j in range(ny)
        for i in range(nx)
    ]


def day_of_year(when: datetime) -> int:
    """Day of year, for the seasonal cycle of vegetation."""
    return (when - datetime(when.year, 1, 1, tzinfo=UTC)).days + 1


def processing_time(when: datetime) -> datetime:
    """When the ground segment produced the L2A product (appears in PC item ids)."""
    return when + timedelta(hours=7, minutes=43)
