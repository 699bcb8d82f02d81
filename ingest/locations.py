"""Corpus locations: cells of the chip grid, chosen by a sampling strategy.

    cfg = SampleConfig(strategy="uniform", bbox=[(5, 45, 15, 48)], count=1000,
                       min_distance_km=5, out=Path("runs/corpus/locations.parquet"))
    cells = sample_locations(cfg)      # a GeoDataFrame, one row per cell
    write_cells(cells, cfg.out)        # GeoParquet

A cell is one chip of the grid every stage uses (`ingest.grid`): the UTM zone of the
location's MGRS tile, 10 m pixels, its origin a multiple of the chip extent. So a cell's id
("32632_680320_5245440": EPSG, left, top; the `chip_id` its chips carry in the shards)
is the same whoever samples it, and the tile that holds it (`mgrs`) is what the planner
groups cells by.

Strategies:
- `points`: the cells of the points of a file (GeoJSON, GeoParquet, or CSV with lon and
  lat columns), e.g. SSL4EO-S12's city-centred samples; a polygon gives every cell whose
  centre lies in it.
- `uniform`: `count` points uniform in area over the AOIs, each at least
  `min_distance_km` from the others (great-circle), then their cells.
- `grid`: a regular grid over the AOIs (the whole world without one): rows every
  `spacing_km` of latitude, points every `spacing_km` along each row (Major TOM's layout).

With `balance_landcover` (uniform, grid), `count` of the candidates are kept with the
WorldCover classes taken in turn (`ingest.balance`).

Cells are unique: points that fall in one cell give one row; `duplicates` in the summary
counts them.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import mgrs
import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, model_validator
from pyproj import Transformer
from scipy.spatial import cKDTree
from shapely import contains_xy
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from ingest.balance import balanced, landcover_at
from ingest.catalog import PLANETARY_COMPUTER, open_catalog
from ingest.config import Areas, bbox_geometry
from ingest.grid import RESOLUTION_M, cell_id, lonlat_footprint, parts
from ingest.snapshot import SnapshotCatalog
from ingest.sources import worldcover

log = logging.getLogger(__name__)
EARTH_RADIUS_KM = 6371.0088
Strategy = Literal["points", "uniform", "grid"]
COLUMNS = ("cell", "epsg", "left", "top", "chip_size", "mgrs", "lon", "lat")


class SampleError(ValueError):
    """A sampling request that cannot be met, or an input file that cannot be read."""


class SampleConfig(Areas):
    """`eomae sample`: where a corpus's chips are, as cells of the chip grid.

    The areas (`bbox`, `aoi_file`) are those of the uniform and grid strategies.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field(description="points (from a file), uniform, or grid.")
    points: Path | None = Field(
        None, description="points: GeoJSON, GeoParquet or CSV (lon, lat columns) file."
    )
    count: int | None = Field(None, ge=1, description="uniform: how many locations.")
    min_distance_km: float = Field(0.0, ge=0, description="uniform: least distance between two.")
    spacing_km: float = Field(10.0, gt=0, description="grid: distance between grid points.")
    chip_size: int = Field(64, ge=8, le=2048, description="Chip size in 10 m pixels.")
    seed: int = Field(0, description="Seed of the uniform draw.")
    balance_landcover: bool = Field(
        False,
        description="uniform, grid: keep `count` of `oversample` x as many candidates, the "
        "WorldCover classes taken in turn (read from a coarse overview of the map).",
    )
    oversample: int = Field(
        10, ge=1, le=1000, description="balance: candidates drawn per location kept."
    )
    catalog: str = Field(
        PLANETARY_COMPUTER,
        description="balance: `planetary-computer` or the URL of a STAC API with WorldCover.",
    )
    catalog_snapshot: Path | None = Field(
        None, description="balance: a catalog snapshot (STAC GeoParquet) instead of --catalog."
    )
    worldcover_version: worldcover.Version = Field(
        worldcover.LATEST, description="balance: which WorldCover map (v100: 2020, v200: 2021)."
    )
    out: Path = Field(Path("locations.parquet"), description="GeoParquet file to write.")

    @model_validator(mode="after")
    def _inputs(self) -> SampleConfig:
        if self.strategy == "points" and self.points is None:
            raise ValueError("strategy points needs --points FILE")
        if self.strategy == "uniform" and self.count is None:
            raise ValueError("strategy uniform needs --count N")
        if self.strategy == "uniform" and not (self.bbox or self.aoi_file):
            raise ValueError("strategy uniform needs an area: --bbox W,S,E,N or --aoi-file")
        if self.balance_landcover and (self.strategy == "points" or self.count is None):
            raise ValueError("--balance-landcover draws --count locations of the uniform or "
                             "grid strategy")  # fmt: skip
        if self.points is not None and not Path(self.points).is_file():
            raise ValueError(f"points {self.points} does not exist")
        return self


def sample_locations(cfg: SampleConfig) -> gpd.GeoDataFrame:
    """The cells the strategy chooses (see the module doc), sorted by MGRS tile and id."""
    if cfg.strategy == "points":
        assert cfg.points is not None
        lon, lat = points_of(_read_geometries(cfg.points), cfg.chip_size)
    elif cfg.strategy == "uniform":
        assert cfg.count is not None
        wanted = cfg.count * (cfg.oversample if cfg.balance_landcover else 1)
        lon, lat = uniform_points(cfg.aois(), wanted, cfg.min_distance_km, cfg.seed)
    else:
        lon, lat = grid_points(cfg.aois(), cfg.spacing_km)
    cells = cells_of(lon, lat, cfg.chip_size)
    if cfg.balance_landcover:  # over cells, not points: two candidates may share one
        assert cfg.count is not None
        catalog = (SnapshotCatalog(cfg.catalog_snapshot) if cfg.catalog_snapshot
                   else open_catalog(cfg.catalog))  # fmt: skip
        classes = landcover_at(cells["lon"].to_numpy(), cells["lat"].to_numpy(), catalog,
                               cfg.worldcover_version)  # fmt: skip
        cells = cells.iloc[balanced(classes, cfg.count, cfg.seed)].reset_index(drop=True)
    return cells


def _read_geometries(path: Path) -> list[BaseGeometry]:
    """Points or polygons of a GeoJSON, GeoParquet or CSV (lon, lat) file, in lon/lat."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pd.read_csv(path)
            names = {c.lower(): c for c in table.columns}
            lon = next((names[c] for c in ("lon", "longitude", "x") if c in names), None)
            lat = next((names[c] for c in ("lat", "latitude", "y") if c in names), None)
            if lon is None or lat is None:
                raise SampleError(f"{path}: no lon/lat columns among {list(table.columns)}")
            return list(gpd.points_from_xy(table[lon], table[lat]))
        if suffix in (".parquet", ".geoparquet"):
            frame = gpd.read_parquet(path)
            return list(frame.to_crs(4326).geometry if frame.crs else frame.geometry)
        data = json.loads(path.read_text())
    except SampleError:
        raise
    except Exception as e:
        raise SampleError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    features = data.get("features", [data]) if data.get("type") != "Feature" else [data]
    return [shape(f.get("geometry", f)) for f in features]


def points_of(geometries: list[BaseGeometry], chip_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the points, and of the cell centres inside each polygon."""
    lon: list[float] = []
    lat: list[float] = []
    for geometry in geometries:
        if geometry.geom_type in ("Point", "MultiPoint"):
            for p in getattr(geometry, "geoms", [geometry]):
                lon.append(p.x)
                lat.append(p.y)
        else:
            x, y = _cell_centres_in(geometry, chip_size)
            lon += x.tolist()
            lat += y.tolist()
    return np.asarray(lon, float), np.asarray(lat, float)


def _cell_centres_in(polygon: BaseGeometry, chip_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of the centres of the cells (of the polygon centre's zone) inside it."""
    centre = polygon.representative_point()
    epsg = int(_epsg(np.array([centre.x]), np.array([centre.y]))[0])
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    extent = chip_size * RESOLUTION_M
    xs, ys = [], []
    for part in parts(polygon):
        w, s, e, n = part.bounds
        corners = to_utm.transform([w, w, e, e], [s, n, s, n])
        x0, x1 = math.floor(min(corners[0]) / extent), math.ceil(max(corners[0]) / extent)
        y0, y1 = math.floor(min(corners[1]) / extent), math.ceil(max(corners[1]) / extent)
        gx, gy = np.meshgrid((np.arange(x0, x1) + 0.5) * extent, (np.arange(y0, y1) + 0.5) * extent)
        lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(
            gx.ravel(), gy.ravel()
        )
        inside = contains_xy(part, lon, lat)
        xs.append(np.asarray(lon)[inside])
        ys.append(np.asarray(lat)[inside])
    return np.concatenate(xs), np.concatenate(ys)


def uniform_points(
    aois: list[BaseGeometry], count: int, min_distance_km: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` points uniform in area over the AOIs, pairwise ≥ `min_distance_km` apart.

    Candidates are drawn in batches (uniform on the sphere within the AOIs' bounds, kept
    when inside) and accepted in order when no accepted point is nearer than the minimum;
    SampleError when 50 x count candidates still leave too few.
    """
    area = unary_union(aois)
    rng = np.random.default_rng(seed)
    # the minimum as a distance between 3-D unit vectors; a pair nearer than it conflicts
    chord = 2 * math.sin(min_distance_km / EARTH_RADIUS_KM / 2) * (1 - 1e-9)
    boxes = np.array([p.bounds for p in parts(area)])
    weights = np.array([_box_area(b) for b in boxes])
    kept: list[np.ndarray] = []  # unit vectors of the accepted points
    lon_out: list[float] = []
    lat_out: list[float] = []
    drawn = 0
    while len(lon_out) < count and drawn < 50 * count:
        n = max(1024, 2 * (count - len(lon_out)))
        drawn += n
        b = boxes[rng.choice(len(boxes), size=n, p=weights / weights.sum())]
        lon = rng.uniform(b[:, 0], b[:, 2])
        sin_lat = rng.uniform(np.sin(np.radians(b[:, 1])), np.sin(np.radians(b[:, 3])))
        lat = np.degrees(np.arcsin(sin_lat))  # uniform in area: sin(lat) uniform
        inside = contains_xy(area, lon, lat)
        lon, lat = lon[inside], lat[inside]
        xyz = _unit_vectors(lon, lat)
        before = cKDTree(np.array(kept)) if kept and chord > 0 else None
        near = cKDTree(xyz).query_ball_point(xyz, chord) if chord > 0 else None
        accepted = np.zeros(len(lon), bool)
        for i in range(len(lon)):  # greedy, in draw order
            if len(lon_out) == count:
                break
            if near is not None:
                if before is not None and before.query_ball_point(
                    xyz[i], chord, return_length=True
                ):
                    continue
                if any(accepted[j] for j in near[i] if j < i):
                    continue
                kept.append(xyz[i])
            accepted[i] = True
            lon_out.append(float(lon[i]))
            lat_out.append(float(lat[i]))
    if len(lon_out) < count:
        raise SampleError(
            f"only {len(lon_out)} of {count} locations fit {min_distance_km:g} km apart in the "
            f"AOIs ({drawn} candidates drawn): ask for fewer or a smaller --min-distance-km"
        )
    return np.asarray(lon_out), np.asarray(lat_out)


def _box_area(bounds: tuple[float, float, float, float]) -> float:
    w, s, e, n = bounds
    return (e - w) * abs(math.sin(math.radians(n)) - math.sin(math.radians(s)))


def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def grid_points(aois: list[BaseGeometry], spacing_km: float) -> tuple[np.ndarray, np.ndarray]:
    """The points of a regular grid that lie in the AOIs (anywhere without AOIs).

    Rows every `spacing_km` of latitude from the equator, points every `spacing_km` along
    each row from 0° of longitude: the same points whatever the AOI.
    """
    area = unary_union(aois) if aois else bbox_geometry((-180.0, -90.0, 180.0, 90.0))
    step = math.degrees(spacing_km / EARTH_RADIUS_KM)  # of latitude
    lons: list[np.ndarray] = []
    lats: list[np.ndarray] = []
    for part in parts(area):
        w, s, e, n = part.bounds
        for row in range(math.ceil(s / step), math.floor(n / step) + 1):
            lat = row * step
            if abs(lat) >= 90:
                continue
            along = step / math.cos(math.radians(lat))
            lon = np.arange(math.ceil(w / along), math.floor(e / along) + 1) * along
            lon = lon[(lon >= -180) & (lon < 180)]
            inside = contains_xy(part, lon, np.full_like(lon, lat))
            lons.append(lon[inside])
            lats.append(np.full(int(inside.sum()), lat))
    if not lons:
        return np.empty(0), np.empty(0)
    return np.concatenate(lons), np.concatenate(lats)


def _mgrs_tiles(lon: np.ndarray, lat: np.ndarray) -> list[str]:
    """The MGRS 100 km tile of each point ("32TPT"), as Sentinel-2's tiles are named."""
    converter = mgrs.MGRS()
    return [
        converter.toMGRS(float(y), float(x), MGRSPrecision=0) for x, y in zip(lon, lat, strict=True)
    ]


def _epsg(lon: np.ndarray, lat: np.ndarray, tiles: list[str] | None = None) -> np.ndarray:
    """The UTM EPSG code of each point's MGRS tile (its zone, with Norway's exceptions)."""
    tiles = tiles if tiles is not None else _mgrs_tiles(lon, lat)
    zones = np.array([int(t[:2]) for t in tiles])
    north = np.array([t[2] >= "N" for t in tiles])
    return np.where(north, 32600, 32700) + zones


def cells_of(lon: np.ndarray, lat: np.ndarray, chip_size: int) -> gpd.GeoDataFrame:
    """The unique cells holding the points (lon/lat arrays), with their footprints."""
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    if lon.size == 0:
        raise SampleError("no location: the strategy found no point (check the AOI or file)")
    bad = ~((lon >= -180) & (lon <= 180) & (lat > -80) & (lat < 84))
    if bad.any():  # UTM, hence MGRS and Sentinel-2 tiles, stop at 80°S and 84°N
        i = int(np.flatnonzero(bad)[0])
        raise SampleError(f"{int(bad.sum())} points outside lon -180..180, lat -80..84 "
                          f"(UTM's range), e.g. ({lon[i]}, {lat[i]})")  # fmt: skip
    tiles = _mgrs_tiles(lon, lat)
    epsg = _epsg(lon, lat, tiles)
    extent = chip_size * RESOLUTION_M
    left, top = np.empty(lon.size), np.empty(lon.size)
    for code in np.unique(epsg):
        at = epsg == code
        x, y = Transformer.from_crs(4326, int(code), always_xy=True).transform(lon[at], lat[at])
        left[at] = np.floor(np.asarray(x) / extent) * extent
        top[at] = (np.floor(np.asarray(y) / extent) + 1) * extent
    frame = pd.DataFrame({"epsg": epsg, "left": left, "top": top, "mgrs": tiles})
    corners = list(zip(frame.epsg, frame.left, frame.top, strict=True))
    frame["cell"] = [cell_id(e, x, y) for e, x, y in corners]  # = shards' chip_id
    unique = frame.drop_duplicates("cell").copy()
    if len(unique) < len(frame):
        log.info("%d points fell in a cell another point had", len(frame) - len(unique))
    unique["chip_size"] = chip_size
    corners = list(zip(unique.epsg, unique.left, unique.top, strict=True))
    footprints = [lonlat_footprint(int(e), (x, y - extent, x + extent, y), points_per_edge=4)
                  for e, x, y in corners]  # fmt: skip
    centres = [f.centroid for f in footprints]
    unique["lon"] = [c.x for c in centres]
    unique["lat"] = [c.y for c in centres]
    cells = gpd.GeoDataFrame(unique[list(COLUMNS)], geometry=footprints, crs="EPSG:4326")
    cells.attrs["duplicates"] = len(frame) - len(unique)
    return cells.sort_values(["mgrs", "cell"]).reset_index(drop=True)


def write_cells(cells: gpd.GeoDataFrame, path: Path) -> Path:
    """The cells as GeoParquet (written beside, then moved: never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    cells.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_cells(path: Path) -> gpd.GeoDataFrame:
    """Cells written by `write_cells`; SampleError naming what is missing."""
    cells = gpd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in cells.columns]
    if missing:
        raise SampleError(f"{path}: not a locations file (no {missing})")
    return cells


def summary(cells: gpd.GeoDataFrame) -> dict[str, Any]:
    """Counts a user checks: cells, MGRS tiles, UTM zones, duplicates merged."""
    return {"cells": len(cells), "tiles": int(cells["mgrs"].nunique()),
            "zones": int(cells["epsg"].nunique()),
            "duplicates": int(cells.attrs.get("duplicates", 0))}  # fmt: skip
