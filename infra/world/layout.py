"""Where the sample world lies: regions, Sentinel-2 tile grids, dates, DEM/WorldCover tiling.

A region straddles a UTM zone boundary (`REGIONS`), so tiles of both zones overlap the
same ground and ingest has to reproject across zones: 12°E in the Alps (zones 32/33),
-150° in Alaska (zones 5/6) and the antimeridian in Chukotka (zones 60/1). Tiles are
scaled-down Sentinel-2 tiles: UTM, 10 m, origins on the 60 m grid so the 10/20/60 m
rasters nest exactly, overlapping their neighbours like the real MGRS grid.

Longitudes. Everything built here in lon/lat (footprints, the region box, the DEM and
WorldCover tiling, the landscape's master grid) is in *unwrapped* longitudes: continuous
around the region's boundary meridian, so in the antimeridian region the ground east of
180° has longitudes 180..181 rather than -180..-179 and boxes never wrap. What leaves the
generator for STAC (item geometries and bboxes, collection extents, `truth["region"]`,
ids, rasters of DEM/WorldCover cells) is wrapped to [-180, 180] by `stac_bbox` and
`infra.world.stac.stac_geometry`, following RFC 7946: a box across 180° has west > east.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeVar

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon, box

from infra.world.config import RegionName, WorldConfig
from ingest.grid import wrap_lon
from ingest.sources import sentinel2

TILE_OVERLAP = 0.1  # fraction of a tile shared with its neighbour
WORLDCOVER_TILE_DEG = 0.05  # WorldCover tiles: scaled down from the real 3°
# Copernicus DEM GLO-30 cells are 1° with 1" spacing; the world's are 1° with a coarser
# base spacing (3", 1200 x 1200 per cell) to stay small. Only the generator uses this.
DEM_CELL_DEG = 1
DEM_BASE_SPACING_DEG = 3 / 3600
METERS_PER_DEG_LAT = 111_320.0
# The next overpass of the same satellite, on the adjacent orbit (period ~100.6 min).
ORBIT_PERIOD = timedelta(minutes=100, seconds=37, milliseconds=101)
# ESA's Level-2A processing baselines by sensing date (from the Copernicus Data Space
# "Sentinel-2 L2A baselines" table), as Planetary Computer's items carry them.
BASELINES: tuple[tuple[date, str], ...] = (
    (date(2019, 5, 6), "02.12"),
    (date(2020, 2, 4), "02.14"),
    (date(2021, 3, 30), "03.00"),
    (date(2021, 6, 30), "03.01"),
    (date(2022, 1, 25), "04.00"),  # first with the +1000 DN offset
    (date(2022, 12, 6), "05.09"),
    (date(2023, 12, 13), "05.10"),
)

T = TypeVar("T", float, np.ndarray)


@dataclass(frozen=True)
class Region:
    """A world's place: its latitude, the UTM zone boundary its tiles straddle, tile names.

    `boundary_lon` is unwrapped (180 for the antimeridian); `names` maps a UTM zone to
    MGRS-styled tile names (zone, latitude band, 100 km square; not real extents), given
    in the order tiles of that zone are assigned them, west to east.
    """

    name: RegionName
    center_lat: float
    boundary_lon: float
    names: dict[int, tuple[str, str, str]]
    overpass_utc: time  # ~10:30 local solar time, in UTC


REGIONS: dict[RegionName, Region] = {
    "alps": Region(
        "alps", 47.30, 12.0,
        {32: ("32TQT", "32TPT", "32TNT"), 33: ("33TUN", "33TVN", "33TWN")},
        time(10, 20, 31),
    ),
    "alaska": Region(
        "alaska", 61.40, -150.0,
        {5: ("05VNL", "05VPL", "05VML"), 6: ("06VUR", "06VVR", "06VWR")},
        time(21, 15, 21),
    ),
    "antimeridian": Region(
        "antimeridian", 65.40, 180.0,
        {60: ("60WVT", "60WWT", "60WUT"), 1: ("01WCN", "01WDN", "01WEN")},
        time(22, 5, 41),  # early enough that the next orbit is still on the same UTC day
    ),
}  # fmt: skip


def unwrap_lon(lon: T, ref: float) -> T:
    """Longitude in [ref - 180, ref + 180): continuous around the meridian `ref`."""
    return ref + wrap_lon(lon - ref)


def stac_bbox(bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """An unwrapped lon/lat box as STAC writes it: wrapped, west > east if it crosses 180°."""
    w, s, e, n = bounds
    east = -wrap_lon(-e)  # in (-180, 180], so an east edge on 180 stays 180
    return round(wrap_lon(w), 9), round(s, 9), round(east, 9), round(n, 9)


def to_lonlat(poly: Polygon, epsg: int, lon_ref: float) -> Polygon:
    """A polygon of a projected CRS in lon/lat (unwrapped around `lon_ref`), densified."""
    w, s, e, n = poly.bounds
    dense = poly.segmentize(max(e - w, n - s) / 16)
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        lon, lat = to_ll.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([unwrap_lon(np.asarray(lon), lon_ref), lat])

    return shapely.transform(dense, project)


@dataclass(frozen=True)
class TileGrid:
    """A Sentinel-2 tile: UTM CRS and a 10 m grid; 20 m and 60 m grids nest in it."""

    mgrs: str
    epsg: int
    left: float
    top: float
    size: int  # pixels at 10 m
    lon_ref: float = 0.0  # footprints are unwrapped around this meridian

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
        """The tile outline in lon/lat, unwrapped longitudes (see the module docstring)."""
        return to_lonlat(box(*self.bounds), self.epsg, self.lon_ref)


@dataclass(frozen=True)
class Acquisition:
    """One overpass: when, and which processing baseline the product was made with."""

    when: datetime
    baseline: str

    @property
    def has_offset(self) -> bool:
        """True when its DNs carry the +1000 offset of baseline 04.00 and later."""
        return sentinel2.baseline_has_offset(self.baseline)

    def next_orbit(self) -> Acquisition:
        """The same satellite one orbit later, processed with the same baseline."""
        return Acquisition(self.when + ORBIT_PERIOD, self.baseline)


def utm_epsg(lon: float) -> int:
    """EPSG code of the northern-hemisphere UTM zone containing `lon` (any longitude)."""
    return 32600 + int(math.floor((wrap_lon(lon) + 180.0) / 6.0)) + 1


ROW_TILES = 6  # tiles per row: three on each side of the zone boundary


def tile_grids(cfg: WorldConfig) -> list[TileGrid]:
    """Rows of up to six tiles across the region's zone boundary, one after another southwards.

    In a row, tiles alternate around the boundary, west ones in the western zone; rows
    overlap as neighbouring tiles do. The first row's tiles take the region's names,
    further rows' names are made up in the same style (zone, band, two letters), unique
    within the world.
    """
    region = REGIONS[cfg.region]
    height_deg = cfg.tile_size * 10.0 / METERS_PER_DEG_LAT
    names = _names(region)
    grids = []
    for row, first in enumerate(range(0, cfg.tiles, ROW_TILES)):
        lat = region.center_lat - row * height_deg * (1.0 - TILE_OVERLAP)
        count = min(ROW_TILES, cfg.tiles - first)
        grids += _row(cfg, region, lat, count, names)
    return grids


def _names(region: Region) -> dict[int, Iterator[str]]:
    """Per zone, its tile names in the order tiles take them: the region's, then made up."""

    def zone_names(zone: int, given: tuple[str, ...]) -> Iterator[str]:
        yield from given
        prefix = given[0][:3]
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # MGRS skips I and O
        for first in letters:
            for second in letters:
                if (name := prefix + first + second) not in given:
                    yield name

    return {zone: zone_names(zone, given) for zone, given in region.names.items()}


def _row(
    cfg: WorldConfig, region: Region, lat: float, count: int, names: dict[int, Iterator[str]]
) -> list[TileGrid]:
    """`count` tiles centred on `lat`, alternating around the zone boundary."""
    width_deg = cfg.tile_size * 10.0 / (METERS_PER_DEG_LAT * math.cos(math.radians(lat)))
    step = width_deg * (1.0 - TILE_OVERLAP)
    n_west = (count + 1) // 2
    b = region.boundary_lon
    centers = [b - (k + 0.5) * step for k in range(n_west)]
    centers += [b + (k + 0.5) * step for k in range(count - n_west)]
    grids = []
    for lon in sorted(centers):
        epsg = utm_epsg(lon)
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(wrap_lon(lon), lat)
        half = cfg.tile_size * 10.0 / 2
        left = math.floor((x - half) / 60.0) * 60.0
        top = math.ceil((y + half) / 60.0) * 60.0
        grids.append(TileGrid(next(names[epsg - 32600]), epsg, left, top, cfg.tile_size, b))
    return grids


def processing_baseline(sensed: date) -> str:
    """The L2A processing baseline of a product sensed on `sensed` (see BASELINES)."""
    current = BASELINES[0][1]
    for start, baseline in BASELINES:
        if sensed >= start:
            current = baseline
    return current


def acquisitions(cfg: WorldConfig) -> list[Acquisition]:
    """Dates spread evenly from spring 2021 to autumn 2022: several baselines, all seasons.

    Sensing times carry milliseconds, as real ones do (10:20:31.024); they differ by date.
    """
    overpass = REGIONS[cfg.region].overpass_utc
    start, end = datetime(2021, 3, 15, tzinfo=UTC), datetime(2022, 10, 15, tzinfo=UTC)
    span = (end - start) / (cfg.dates - 1)
    out = []
    for i in range(cfg.dates):
        day = (start + i * span).date()
        millis = (24 + 131 * i) % 1000 or 1
        when = datetime.combine(day, overpass, tzinfo=UTC).replace(microsecond=millis * 1000)
        out.append(Acquisition(when, processing_baseline(day)))
    return out


def tiles_bounds(grids: list[TileGrid]) -> tuple[float, float, float, float]:
    """Lon/lat box around all tile footprints (unwrapped longitudes)."""
    boxes = [g.footprint().bounds for g in grids]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def region_box(grids: list[TileGrid]) -> tuple[float, float, float, float]:
    """Box around all tiles snapped outward to the WorldCover tiling (unwrapped longitudes).

    The landscape's master grid covers exactly this box.
    """
    w, s, e, n = tiles_bounds(grids)

    def snap(v: float, up: bool) -> float:
        k = v / WORLDCOVER_TILE_DEG
        return round((math.ceil(k - 1e-9) if up else math.floor(k + 1e-9)) * WORLDCOVER_TILE_DEG, 6)

    return snap(w, False), snap(s, False), snap(e, True), snap(n, True)


def region_bounds(grids: list[TileGrid]) -> tuple[float, float, float, float]:
    """The world's region as a STAC bbox: `region_box` wrapped, west > east across 180°."""
    return stac_bbox(region_box(grids))


def worldcover_tiles(region: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """South-west corners (unwrapped lon, lat) of the WorldCover tiles that cover `region`."""
    w, s, e, n = region
    nx = round((e - w) / WORLDCOVER_TILE_DEG)
    ny = round((n - s) / WORLDCOVER_TILE_DEG)
    return [
        (round(w + i * WORLDCOVER_TILE_DEG, 6), round(s + j * WORLDCOVER_TILE_DEG, 6))
        for j in range(ny)
        for i in range(nx)
    ]


def dem_cells(region: tuple[float, float, float, float]) -> list[tuple[int, int]]:
    """South-west corners (unwrapped lon, lat) of the 1° DEM cells that cover `region`."""
    w, s, e, n = region
    return [
        (lon, lat)
        for lat in range(math.floor(s), math.ceil(n), DEM_CELL_DEG)
        for lon in range(math.floor(w), math.ceil(e), DEM_CELL_DEG)
    ]


def dem_lon_factor(lat: int) -> float:
    """Copernicus DEM widens the longitude spacing towards the poles, by this factor.

    `lat` is the cell's south edge; the band is that of the cell's edge nearer the equator
    (1 up to 50°, 1.5 to 60°, 2 to 70°, 3 to 80°, 5 to 85°, 10 beyond).
    """
    band = lat if lat >= 0 else -lat - 1
    for limit, factor in ((50, 1.0), (60, 1.5), (70, 2.0), (80, 3.0), (85, 5.0)):
        if band < limit:
            return factor
    return 10.0


def dem_cell_grid(lon: int, lat: int) -> tuple[Affine, tuple[int, int]]:
    """Transform (wrapped longitudes) and (height, width) of the DEM cell at (lon, lat).

    The cell's edges are its whole degrees, as the item footprint says.
    """
    dy = DEM_BASE_SPACING_DEG
    dx = dy * dem_lon_factor(lat)
    shape = (round(DEM_CELL_DEG / dy), round(DEM_CELL_DEG / dx))
    return Affine(dx, 0.0, float(wrap_lon(lon)), 0.0, -dy, float(lat + DEM_CELL_DEG)), shape


def day_of_year(when: datetime) -> int:
    """Day of year, for the seasonal cycle of vegetation."""
    return (when - datetime(when.year, 1, 1, tzinfo=UTC)).days + 1


def processing_time(when: datetime) -> datetime:
    """When the ground segment produced the L2A product (appears in PC item ids)."""
    return when + timedelta(hours=7, minutes=43)
