"""One real-size Sentinel-2 tile with the DEM and WorldCover under it, written block by block.

    items = write_big_tile(Path("/tmp/bigtile"))        # 10980 x 10980 px, as real ones
    items = write_big_tile(tmp_path, 1200, block=256)   # a corner of it, for tests

The sample world (`infra.world.generate`) renders whole tiles in memory, which keeps its
tiles small. A memory benchmark needs one tile as large as a real one and the rasters
that cover it, so here nothing tile-sized is ever held: every raster is computed window
by window and streamed to disk (`infra.world.cog.write_cogs_windowed`). The writer's own
peak memory depends on `block`, not on the tile size.

The ground is a few smooth fields defined everywhere in the tile's UTM CRS (`Ground`:
value noise on coarse lattices whose nodes are hashed from their global index and the
seed), so any window is computed alone and neighbouring windows agree to the pixel.
Elevation and two more fields decide the land cover, which decides each pixel's spectrum
(`infra.world.landscape.SIGNATURES`), SCL class and WorldCover code. The EPSG:4326
rasters (DEM, WorldCover) evaluate the same fields at their pixel centres mapped into the
UTM CRS, so all three products show the same ground.

Written under `out`:

    data/sentinel-2-l2a/<item id>/<asset>.tif   12 bands at 10/20/60 m, SCL at 20 m
    data/cop-dem-glo-30/<item id>.tif           whole 1° cells at 1" (the real spacing)
    data/esa-worldcover/<item id>_Map.tif       of each 3° tile, the part the tile needs
    items.json                                  the items, a GeoJSON FeatureCollection

The tile is 32TPT (EPSG:32632, origin 600000, 5300040), sensed on 14 July 2023 under
baseline 05.09 (DNs carry the +1000 offset), ~5 % cloud, no nodata. A smaller
`tile_size` keeps the origin and covers less.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window
from scipy import ndimage

from infra.world.cog import CogSpec, write_cogs_windowed
from infra.world.generate import Progress
from infra.world.landscape import SIGNATURES, VARIANTS, VEGETATION
from infra.world.layout import (
    METERS_PER_DEG_LAT,
    Acquisition,
    TileGrid,
    dem_lon_factor,
    processing_baseline,
)
from infra.world.sentinel2 import CLOUD_SPECTRUM, SHADOW_DARKENING
from infra.world.stac import dem_item, sentinel2_item, sentinel2_item_id, worldcover_item
from ingest.sources import dem, sentinel2, worldcover
from ingest.sources.sentinel2 import SceneClass

TILE = TileGrid("32TPT", 32632, 600_000.0, 5_300_040.0, 10980)
SENSED = datetime(2023, 7, 14, 10, 20, 31, 24_000, tzinfo=UTC)
PLATFORM, RELATIVE_ORBIT = "S2B", 65
WORLDCOVER_TILE_DEG = 3  # as the real product is tiled
WORLDCOVER_VERSION = "v200"  # the planner's default map

# Value-noise octaves: (lattice spacing in metres, weight).
ELEVATION = ((40_000, 900.0), (12_000, 600.0), (3_000, 250.0), (800, 80.0), (200, 20.0))
ELEVATION_MID_M, ELEVATION_SPAN_M, VALLEY_FLOOR_M = 1500.0, 6000.0, 300.0
MOISTURE = ((6_000, 0.7), (1_500, 0.3))
CULTIVATION = ((3_000, 0.6), (800, 0.4))
VARIETY = ((2_000, 0.7), (400, 0.3))
BRIGHTNESS = ((150, 0.7), (30, 0.3))
CLOUD = ((3_000, 0.5), (1_000, 0.3), (250, 0.2))
FIELDS = {"elevation": 1, "moisture": 2, "cultivation": 3, "variety": 4, "brightness": 5,
          "cloud": 6}  # fmt: skip
CLOUD_START, CLOUD_RAMP = 0.70, 0.06  # cloud fbm above this starts to be cloud
SHADOW_OFFSET_M = (300.0, -520.0)  # a shadow lies 600 m north-west of its cloud (sun SE)

# Per WorldCover code: both end-member spectra [256, 12] and the SCL class.
_SIGNATURE = np.zeros((256, len(sentinel2.BANDS)), np.float32)
_VARIANT = np.zeros((256, len(sentinel2.BANDS)), np.float32)
_SCL = np.zeros(256, np.uint8)
for _code in SIGNATURES:
    _SIGNATURE[_code], _VARIANT[_code] = SIGNATURES[_code], VARIANTS[_code]
    _SCL[_code] = {80: SceneClass.WATER, 70: SceneClass.SNOW}.get(
        _code, SceneClass.VEGETATION if _code in VEGETATION else SceneClass.NOT_VEGETATED
    )

Report = Callable[[str], None]  # a pass is about to start: what it writes

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_U64 = (1 << 64) - 1


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half the output bits."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def _lattice(i: np.ndarray, j: np.ndarray, key: int) -> np.ndarray:
    """Uniform values in [0, 1) at lattice nodes (i, j): the same whoever asks."""
    h = _mix(i.astype(np.int64).view(np.uint64) + np.uint64((key * 0x9E3779B97F4A7C15) & _U64))
    h = _mix(h ^ j.astype(np.int64).view(np.uint64))
    return ((h >> np.uint64(11)).astype(np.float64) * 2.0**-53).astype(np.float32)


def _smooth(f: np.ndarray) -> np.ndarray:
    """Lattice coordinates with a smoothstep inside each cell: no kinks at cell edges."""
    cell = np.floor(f)
    t = f - cell
    return cell + t * t * (3.0 - 2.0 * t)


def _cell(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per lattice coordinate: the node before it, and the weight (float32) of the next."""
    cell = np.floor(f)
    return cell.astype(np.intp), (f - cell).astype(np.float32)


def value_noise(x: np.ndarray, y: np.ndarray, spacing: float, key: int) -> np.ndarray:
    """Smooth noise in [0, 1] (float32) at points x, y (metres; broadcastable).

    Lattice nodes are `spacing` metres apart; only those around the points are made. A
    grid given as x [1, W] and y [H, 1] is interpolated separably (rows first, then a
    gather per column, 5x faster), any other points bilinearly one by one.
    """
    u, v = x / spacing, y / spacing
    i0, j0 = math.floor(u.min()), math.floor(v.min())
    jj, ii = np.mgrid[j0 : math.floor(v.max()) + 2, i0 : math.floor(u.max()) + 2]
    nodes = _lattice(ii, jj, key)  # [nj, ni]
    fu, fv = _smooth(u - i0), _smooth(v - j0)
    if fu.shape[0] == 1 and fv.shape[1] == 1:
        cv, tv = _cell(fv[:, 0])
        cu, tu = _cell(fu[0])
        rows = nodes[cv] * (1 - tv[:, None]) + nodes[cv + 1] * tv[:, None]  # [H, ni]
        return rows[:, cu] * (1 - tu) + rows[:, cu + 1] * tu  # [H, W]
    coords = np.stack(np.broadcast_arrays(fv, fu))
    return ndimage.map_coordinates(nodes, coords, order=1, mode="nearest", output=np.float32)


@dataclass(frozen=True)
class Ground:
    """The ground and sky of the tile, as functions of UTM coordinates (metres)."""

    seed: int
    pixel_m: float = 0.0  # the size of the pixels asked for; finer octaves are averaged out

    def fbm(self, name: str, x: np.ndarray, y: np.ndarray, octaves: tuple) -> np.ndarray:
        """Weighted mean of the octaves of field `name` at x, y: float32 in [0, 1].

        An octave finer than a pixel counts as its mean, 0.5, as the pixel integrates it
        (and its lattice would outnumber the pixels).
        """
        total = sum(w for _, w in octaves)
        finer = sum(w for spacing, w in octaves if spacing < self.pixel_m)
        out = np.full(np.broadcast_shapes(x.shape, y.shape), 0.5 * finer / total, np.float32)
        for k, (spacing, weight) in enumerate(octaves):
            if spacing >= self.pixel_m:
                key = (self.seed * 64 + FIELDS[name]) * 16 + k
                out += value_noise(x, y, spacing, key) * np.float32(weight / total)
        return out

    def elevation(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Metres, float32: broad Alpine relief, flat valley floors, summits above 3000 m."""
        relief = self.fbm("elevation", x, y, ELEVATION)
        return np.maximum(ELEVATION_MID_M + ELEVATION_SPAN_M * (relief - 0.5), VALLEY_FLOOR_M)

    def landcover(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WorldCover codes (uint8) by elevation zone, moisture and cultivation; elevation."""
        elev = self.elevation(x, y)
        wet = self.fbm("moisture", x, y, MOISTURE)
        farmed = self.fbm("cultivation", x, y, CULTIVATION)
        # Valleys: lakes, towns, fields, woods, meadows; forest or meadow slopes; alpine
        # shrubs or meadows; bare rock; snow.
        valley = np.select([wet > 0.75, farmed > 0.68, farmed > 0.45, wet > 0.5],
                           [80, 50, 40, 10], 30)  # fmt: skip
        slope = np.where(wet > 0.42, 10, 30)
        alpine = np.where(wet > 0.5, 20, 30)
        zones = [elev < 900, elev < 1900, elev < 2400, elev < 2900]
        return np.select(zones, [valley, slope, alpine, 60], 70).astype(np.uint8), elev

    def cloud(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cloud opacity in [0, 1], float32: soft-edged patches over a few % of the tile."""
        c = self.fbm("cloud", x, y, CLOUD)
        return np.clip((c - CLOUD_START) / CLOUD_RAMP, 0.0, 1.0)

    def scene(
        self, x: np.ndarray, y: np.ndarray, bands: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reflectance x 10^4 [len(bands), H, W] float32 as the sensor sees it; SCL [H, W].

        `bands`: indices into `sentinel2.BANDS`.
        """
        lc, _ = self.landcover(x, y)
        variety = self.fbm("variety", x, y, VARIETY)
        cloud = self.cloud(x, y)
        dx, dy = SHADOW_OFFSET_M
        shadow = np.clip(self.cloud(x + dx, y + dy) * 2 - cloud * 2, 0.0, 1.0)  # not under it
        # What reaches the sensor of the surface's light: texture, shadow, then the cloud.
        keep = 0.85 + 0.3 * self.fbm("brightness", x, y, BRIGHTNESS)
        keep *= (1 - (1 - SHADOW_DARKENING) * shadow) * (1 - cloud)
        refl = np.empty((len(bands), *lc.shape), np.float32)
        for k, b in enumerate(bands):
            sig = np.take(_SIGNATURE[:, b], lc)
            refl[k] = (sig + (np.take(_VARIANT[:, b], lc) - sig) * variety) * keep
            refl[k] += CLOUD_SPECTRUM[b] * cloud
        scl = _SCL[lc]
        scl[shadow > 0.5] = SceneClass.CLOUD_SHADOW
        scl[cloud > 0.2] = SceneClass.CLOUD_MEDIUM_PROBABILITY
        scl[cloud > 0.6] = SceneClass.CLOUD_HIGH_PROBABILITY
        return refl, scl


def to_dn(refl: np.ndarray) -> np.ndarray:
    """Stored DNs of baseline 04.00 and later: reflectance x 10^4 + 1000, never NODATA."""
    dn = np.rint(refl) + sentinel2.BOA_ADD_OFFSET
    return np.clip(dn, sentinel2.NODATA + 1, 65535).astype(np.uint16)


def utm_centres(transform: Affine, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a window of a north-up grid: x [1, W] and y [H, 1]."""
    cols = np.arange(window.col_off, window.col_off + window.width) + 0.5
    rows = np.arange(window.row_off, window.row_off + window.height) + 0.5
    return (transform.c + transform.a * cols)[None, :], (transform.f + transform.e * rows)[:, None]


def lonlat_centres_in_utm(
    transform: Affine, window: Window, to_utm: Transformer
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a window of a lon/lat grid in UTM metres, x and y [H, W].

    Only the window's corners are projected and the centres interpolated between them
    bilinearly, as projecting 10^8 points would take longer than the rest of the writing.
    Off by under 1 m in a 1024 px WorldCover window, 10 m (a third of a pixel) in a
    1024 px DEM window; windows that share an edge share its corners, so they still meet.
    """
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    lon = transform.c + transform.a * np.array([c0, c1, c0, c1])  # north-up grids only
    lat = transform.f + transform.e * np.array([r0, r0, r1, r1])
    cx, cy = (np.asarray(v).reshape(2, 2) for v in to_utm.transform(lon, lat))  # [top/bottom, l/r]
    s = ((np.arange(window.width) + 0.5) / window.width)[None, :]
    t = ((np.arange(window.height) + 0.5) / window.height)[:, None]

    def bilinear(corner: np.ndarray) -> np.ndarray:
        top = corner[0, 0] * (1 - s) + corner[0, 1] * s
        bottom = corner[1, 0] * (1 - s) + corner[1, 1] * s
        return top * (1 - t) + bottom * t

    return bilinear(cx), bilinear(cy)


@dataclass
class SceneCounts:
    """SCL pixels seen so far, for the item's cloud and shadow percentages."""

    total: int = 0
    cloud: int = 0
    shadow: int = 0

    def add(self, scl: np.ndarray) -> None:
        """Count one window of the SCL."""
        self.total += scl.size
        self.cloud += int(np.isin(scl, [int(c) for c in sentinel2.CLOUD_CLASSES]).sum())
        self.shadow += int((scl == SceneClass.CLOUD_SHADOW).sum())

    def stats(self) -> dict[str, float]:
        """What `infra.world.stac.sentinel2_item` reports: percent of the tile."""
        pct = 100.0 / max(self.total, 1)
        return {"cloud_cover": round(self.cloud * pct, 4), "nodata_percentage": 0.0,
                "shadow_percentage": round(self.shadow * pct, 4)}  # fmt: skip


def _write_sentinel2(
    folder: Path, tile: TileGrid, ground: Ground, block: int, report: Report
) -> tuple[dict[str, str], dict[str, float]]:
    """The 12 bands and the SCL, one pass per resolution; asset hrefs and scene stats."""
    hrefs: dict[str, str] = {}
    counts = SceneCounts()
    for res in sentinel2.RESOLUTIONS_M:
        bands = [i for i, b in enumerate(sentinel2.BANDS) if b.resolution_m == res]
        names = [sentinel2.BANDS[i].name for i in bands]
        with_scl = res == sentinel2.SCL_RESOLUTION_M
        report(f"Sentinel-2 {res} m: {' '.join(names)}{' SCL' * with_scl}")
        specs = [CogSpec(folder / f"{n}.tif", "uint16", sentinel2.NODATA) for n in names]
        if with_scl:
            specs.append(CogSpec(folder / f"{sentinel2.SCL_ASSET}.tif", "uint8", 0, True))

        def render(window: Window, res: int = res, bands: list[int] = bands,
                   with_scl: bool = with_scl) -> list[np.ndarray]:  # fmt: skip
            seen = replace(ground, pixel_m=res)
            refl, scl = seen.scene(*utm_centres(tile.transform(res), window), bands)
            arrays = [to_dn(r) for r in refl]
            if with_scl:
                counts.add(scl)
                arrays.append(scl)
            return arrays

        write_cogs_windowed(
            specs,
            crs=f"EPSG:{tile.epsg}",
            transform=tile.transform(res),
            shape=tile.shape(res),
            render=render,
            block=block,
        )
        hrefs |= {s.path.stem: str(s.path) for s in specs}
    return hrefs, counts.stats()


def dem_cells(bounds: tuple[float, float, float, float]) -> list[tuple[int, int]]:
    """South-west corners of the 1° DEM cells that a lon/lat box meets."""
    w, s, e, n = bounds
    return [(lon, lat) for lat in range(math.floor(s), math.ceil(n))
            for lon in range(math.floor(w), math.ceil(e))]  # fmt: skip


def _write_dem(
    root: Path, bounds: tuple[float, float, float, float], spacing_deg: float, ground: Ground,
    block: int, report: Report,
) -> list[dict[str, Any]]:  # fmt: skip
    """Whole 1° Copernicus DEM cells, pixels `spacing_deg` apart.

    Wider apart in longitude above 50° as in the real product; edges on whole degrees as
    the sample world's (`layout.dem_cell_grid`).
    """
    items = []
    to_utm = Transformer.from_crs(4326, TILE.epsg, always_xy=True)
    ground = replace(ground, pixel_m=spacing_deg * METERS_PER_DEG_LAT)
    for lon, lat in dem_cells(bounds):
        dy = spacing_deg
        dx = dy * dem_lon_factor(lat)
        transform = Affine(dx, 0.0, float(lon), 0.0, -dy, float(lat + 1))
        shape = (round(1 / dy), round(1 / dx))
        item = dem_item(lon, lat, "", transform, shape)
        path = root / "data" / dem.COLLECTION / f"{item['id']}.tif"
        report(f"Copernicus DEM {item['id']}")

        def render(window: Window, transform: Affine = transform) -> list[np.ndarray]:
            return [ground.elevation(*lonlat_centres_in_utm(transform, window, to_utm))]

        write_cogs_windowed(
            [CogSpec(path, dem.DTYPE, None)],
            crs="EPSG:4326",
            transform=transform,
            shape=shape,
            render=render,
            block=block,
        )
        item["assets"][dem.ASSET]["href"] = str(path)
        items.append(item)
    return items


def worldcover_extents(
    bounds: tuple[float, float, float, float],
) -> list[tuple[int, int, Affine, tuple[int, int]]]:
    """The WorldCover tiles a lon/lat box meets, each cut down to the box.

    Per 3° tile: its south-west corner, and the transform and (height, width) of the part
    of its grid that covers the box, whole pixels of the tile's own grid.
    """
    res, size = worldcover.RESOLUTION_DEG, WORLDCOVER_TILE_DEG
    n_px = round(size / res)
    w, s, e, n = bounds
    out = []
    for lat in range(math.floor(s / size) * size, math.ceil(n / size) * size, size):
        for lon in range(math.floor(w / size) * size, math.ceil(e / size) * size, size):
            north = lat + size
            c0, c1 = max(math.floor((w - lon) / res), 0), min(math.ceil((e - lon) / res), n_px)
            r0, r1 = max(math.floor((north - n) / res), 0), min(math.ceil((north - s) / res), n_px)
            if c1 > c0 and r1 > r0:
                transform = Affine(res, 0.0, lon + c0 * res, 0.0, -res, north - r0 * res)
                out.append((lon, lat, transform, (r1 - r0, c1 - c0)))
    return out


def _write_worldcover(
    root: Path, bounds: tuple[float, float, float, float], ground: Ground, block: int,
    report: Report,
) -> list[dict[str, Any]]:  # fmt: skip
    """The WorldCover v200 map: of each 3° tile, the part over `bounds`."""
    items = []
    to_utm = Transformer.from_crs(4326, TILE.epsg, always_xy=True)
    ground = replace(ground, pixel_m=worldcover.RESOLUTION_DEG * METERS_PER_DEG_LAT)
    for lon, lat, transform, shape in worldcover_extents(bounds):
        item = worldcover_item(lon, lat, "", transform, shape, WORLDCOVER_VERSION)
        path = root / "data" / worldcover.COLLECTION / f"{item['id']}_Map.tif"
        report(f"ESA WorldCover {item['id']}")

        def render(window: Window, transform: Affine = transform) -> list[np.ndarray]:
            return [ground.landcover(*lonlat_centres_in_utm(transform, window, to_utm))[0]]

        write_cogs_windowed(
            [CogSpec(path, "uint8", worldcover.NODATA, True)],
            crs="EPSG:4326",
            transform=transform,
            shape=shape,
            render=render,
            block=block,
        )
        item["assets"][worldcover.ASSET]["href"] = str(path)
        items.append(item)
    return items


def write_big_tile(
    out: Path,
    tile_size: int = TILE.size,
    *,
    seed: int = 0,
    block: int = 1024,
    dem_spacing_deg: float = dem.RESOLUTION_DEG,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Write the tile's rasters under `out`; return its items, hrefs the files' paths.

    One `sentinel-2-l2a` item, the `cop-dem-glo-30` items of the 1° cells its footprint
    meets and the `esa-worldcover` items of the 3° tiles it meets. `tile_size` is in
    10 m pixels and must divide by 6 (the 60 m bands nest); `block` is the window edge in
    pixels, which bounds the memory used. DEM cells have the real 1" spacing unless
    `dem_spacing_deg` says otherwise (tests: a coarser one is faster to write, and a cell
    is much larger than a small tile). `progress(message, step, total)` is called
    before each pass (one per S2 resolution, DEM cell and WorldCover tile) and when done.
    """
    if tile_size <= 0 or tile_size % 6:
        raise ValueError(f"tile_size {tile_size} must be a positive multiple of 6")
    if block < 16:
        raise ValueError(f"block {block} must be at least 16 px")
    out = Path(out).absolute()
    tile = TileGrid(TILE.mgrs, TILE.epsg, TILE.left, TILE.top, tile_size)
    acq = Acquisition(SENSED, processing_baseline(SENSED.date()))
    ground = Ground(seed)
    footprint = tile.footprint()
    bounds = footprint.bounds
    total = len(sentinel2.RESOLUTIONS_M) + len(dem_cells(bounds)) + len(worldcover_extents(bounds))
    steps = iter(range(total + 1))

    def report(message: str) -> None:
        if progress is not None:
            progress(message, next(steps), total)

    folder = (
        out / "data" / sentinel2.COLLECTION / sentinel2_item_id(tile, acq, PLATFORM, RELATIVE_ORBIT)
    )
    hrefs, stats = _write_sentinel2(folder, tile, ground, block, report)
    dems = _write_dem(out, bounds, dem_spacing_deg, ground, block, report)
    covers = _write_worldcover(out, bounds, ground, block, report)
    s2 = sentinel2_item(tile, acq, platform=PLATFORM, orbit=RELATIVE_ORBIT, hrefs=hrefs,
                        stats=stats, footprint=footprint)  # fmt: skip
    items = [s2, *dems, *covers]
    features = {"type": "FeatureCollection", "features": items}
    (out / "items.json").write_text(json.dumps(features, indent=1))
    report("done")
    return items
