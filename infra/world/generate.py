"""`eomae world`: generate the sample world on disk.

Layout of a world directory (the contract `infra.services` serves):

    world.json                      marker: generator version, config, fingerprint
    truth.json                      ground truth: tiles, scenes, points, markers
    truth/landcover.tif             master land cover, EPSG:4326 (what WorldCover v200 crops)
    truth/elevation.tif             master elevation, EPSG:4326 (what DEM cells sample)
    stac/catalog.json               self-contained static STAC catalog, relative hrefs
    stac/<collection>/<item>/<item>.json
    data/<collection>/<item>/<asset>.tif

The master rasters are in unwrapped longitudes (`infra.world.layout`): in the
antimeridian region their transform runs on past 180° (e.g. 179.7..180.3), which GDAL
reads fine but is not a wrapped EPSG:4326 extent; truth.json says so
(`master.unwrapped_longitudes`). Everything in the STAC catalog is wrapped.

What the world shows of Planetary Computer as it really is: DEM items on whole 1°
cells (continuous elevation across cell edges), WorldCover 2020 (v100) and 2021 (v200)
maps of the same tiles that differ, a second relative orbit of one tile on one day that
is only a sliver of data with tiny cloud cover, item geometries that are data footprints,
fractional-second datetimes, dark pixels stored at or below the +1000 offset, and
processing baselines by date.

The world is written to a temporary sibling directory and renamed into place, so a
crash never leaves a half-written world that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from affine import Affine
from pyproj import Transformer
from scipy import ndimage

from infra.world.cog import write_cog
from infra.world.config import WorldConfig
from infra.world.landscape import (
    SIGNATURES,
    VARIANTS,
    Landscape,
    bare_parcels,
    build_landscape,
    worldcover_2020,
)
from infra.world.layout import (
    WORLDCOVER_TILE_DEG,
    Acquisition,
    TileGrid,
    acquisitions,
    day_of_year,
    dem_cell_grid,
    dem_cells,
    region_box,
    stac_bbox,
    tile_grids,
    tiles_bounds,
    to_lonlat,
    worldcover_tiles,
)
from infra.world.sentinel2 import (
    MARKER_SPECTRUM,
    SLIVER_CUT,
    Marker,
    Scene,
    TileSurface,
    data_footprint,
    render_scene,
    tile_surface,
)
from infra.world.stac import (
    WORLDCOVER_MAPS,
    collection,
    dem_item,
    sentinel2_item,
    sentinel2_item_id,
    worldcover_item,
)
from ingest.grid import wrap_lon
from ingest.sources import dem, sentinel2, worldcover

log = logging.getLogger(__name__)

# 2: within-class spectral variety, crop parcels
# 3: PC as it really is: 1° DEM cells, WorldCover v100 + v200, a second-orbit sliver,
#    data-footprint geometries, fractional-second datetimes, dark DNs <= 1000 with the
#    offset, baselines by date, regions (alps, alaska, antimeridian)
GENERATOR_VERSION = 3
MARKER_FILE = "world.json"
TRUTH_FILE = "truth.json"
RELATIVE_ORBIT = 65
SLIVER_TILE, SLIVER_DATE = 0, 0  # which tile, on which date, a second orbit also images
SLIVER_CLOUD = 0.008  # target cloud fraction of the sliver's few pixels
Progress = Callable[[str, int, int], None]


class WorldError(ValueError):
    """A world directory that cannot be used or written."""


def fingerprint(cfg: WorldConfig) -> str:
    """Identifies what a world contains: same config and generator give the same bytes."""
    payload = json.dumps({"v": GENERATOR_VERSION, "config": cfg.model_dump()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_marker(world_dir: Path) -> dict[str, Any] | None:
    """The world.json of `world_dir`, or None if it is not an eomae world."""
    path = world_dir / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return marker if isinstance(marker, dict) and marker.get("eomae_world") == 1 else None


def generate_world(
    out_dir: Path, cfg: WorldConfig, *, force: bool = False, progress: Progress | None = None
) -> bool:
    """Generate the world into `out_dir`. Returns False when an identical world was there.

    An existing world with another config is replaced; any other non-empty directory is
    refused rather than overwritten.
    """
    out_dir = Path(out_dir).absolute()  # hrefs are made relative from absolute paths
    marker = read_marker(out_dir)
    if out_dir.exists() and marker is None and any(out_dir.iterdir()):
        raise WorldError(
            f"{out_dir} exists, is not empty and is not an eomae world (no {MARKER_FILE}); "
            "refusing to overwrite it: choose another directory"
        )
    if marker and marker.get("fingerprint") == fingerprint(cfg) and not force:
        log.debug("world in %s is up to date (fingerprint %s)", out_dir, marker["fingerprint"])
        return False

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_world(tmp, cfg, progress or (lambda *_: None))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _rng(cfg: WorldConfig, *key: int) -> np.random.Generator:
    """Independent streams per component, so adding dates does not change the terrain."""
    return np.random.default_rng([cfg.seed, *key])


def _write_world(root: Path, cfg: WorldConfig, progress: Progress) -> None:
    grids = tile_grids(cfg)
    acqs = acquisitions(cfg)
    region = region_box(grids)  # unwrapped longitudes
    total = len(grids) * len(acqs) + 4
    step = 0
    progress("terrain and land cover", step, total)
    landscape = build_landscape(region, _rng(cfg, 1), tiles_bounds(grids))

    items: list[dict[str, Any]] = []
    truth_tiles = []
    markers_all: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    for t, tile in enumerate(grids):
        markers = _place_markers(tile, cfg.markers_per_tile, _rng(cfg, 2, t))
        markers_all += [{**asdict(m), "tile": tile.mgrs} for m in markers]
        points += _ground_points(tile, landscape, cfg.points_per_tile, _rng(cfg, 3, t))
    all_markers = [Marker(m["lon"], m["lat"], m["size_m"]) for m in markers_all]
    # One crop calendar per date for the whole region, so overlapping tiles agree.
    bare = [bare_parcels(landscape.parcels, day_of_year(a.when), _rng(cfg, 5, d))
            for d, a in enumerate(acqs)]  # fmt: skip

    for t, tile in enumerate(grids):
        surface = tile_surface(tile, landscape, all_markers)
        scenes = []
        for d, acq in enumerate(acqs):
            step += 1
            progress(f"Sentinel-2 {tile.mgrs} {acq.when:%Y-%m-%d}", step, total)
            rng = _rng(cfg, 4, t, d)
            cloud_target, swath_cut = _scene_conditions(t, d, len(acqs), rng)
            platform = "S2A" if d % 2 == 0 else "S2B"
            shots = [(acq, RELATIVE_ORBIT, rng, cloud_target, swath_cut)]
            if (t, d) == (SLIVER_TILE, SLIVER_DATE):
                # The same satellite one orbit later: its swath just clips the tile corner.
                shots.append((acq.next_orbit(), RELATIVE_ORBIT + 1, _rng(cfg, 7, t, d),
                              SLIVER_CLOUD, SLIVER_CUT))  # fmt: skip
            for shot, orbit, shot_rng, cloud, cut in shots:
                item, scene = _write_scene(root, tile, surface, shot, platform, orbit,
                                           (shot_rng, cloud, cut, bare[d]))  # fmt: skip
                items.append(item)
                scenes.append(_scene_truth(item, shot, cut, scene, sliver=orbit != RELATIVE_ORBIT))
        truth_tiles.append(
            {
                "mgrs": tile.mgrs,
                "epsg": tile.epsg,
                "transform": list(tile.transform())[:6],
                "shape": list(tile.shape()),
                "bbox": list(stac_bbox(tile.footprint().bounds)),
                "scenes": scenes,
            }
        )

    step += 1
    progress("Copernicus DEM cells", step, total)
    dems = _write_dem(root, landscape, region)
    step += 1
    progress("WorldCover 2020 and 2021 tiles", step, total)
    covers = _write_worldcover(root, landscape, region, _rng(cfg, 6))
    items += dems + covers

    step += 1
    progress("ground truth and STAC catalog", step, total)
    _write_truth_rasters(root, landscape)
    extents = {
        sentinel2.COLLECTION: stac_bbox(region),
        dem.COLLECTION: stac_bbox(_cells_box(region)),
        worldcover.COLLECTION: stac_bbox(region),
    }
    _write_catalog(root, items, extents, acqs)
    truth = _truth(cfg, region, landscape, truth_tiles, dems, covers)
    truth |= {"points": points, "markers": markers_all}
    (root / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    marker = {
        "eomae_world": 1,
        "generator_version": GENERATOR_VERSION,
        "fingerprint": fingerprint(cfg),
        "config": cfg.model_dump(),
    }
    # Written last: its presence means the world is complete.
    (root / MARKER_FILE).write_text(json.dumps(marker, indent=1))
    step += 1
    progress("done", step, total)


def _truth(
    cfg: WorldConfig,
    region: tuple[float, float, float, float],
    landscape: Landscape,
    tiles: list[dict[str, Any]],
    dems: list[dict[str, Any]],
    covers: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ground-truth record (truth.json) less its points and markers."""
    return {
        "region_name": cfg.region,
        "region": list(stac_bbox(region)),
        "crs": "EPSG:4326 for lon/lat; tiles in their own UTM EPSG",
        "master": {
            "transform": list(landscape.transform)[:6],
            "shape": list(landscape.landcover.shape),
            "landcover": "truth/landcover.tif",
            "elevation": "truth/elevation.tif",
            "unwrapped_longitudes": bool(region[2] > 180.0),
            "longitudes": "continuous across 180°: values above 180 lie east of the "
            "antimeridian (subtract 360 for wrapped longitudes)",
        },
        "tiles": tiles,
        "dem_items": [i["id"] for i in dems],
        "dem_spacing_deg": {i["id"]: [i["properties"]["proj:transform"][0],
                                      -i["properties"]["proj:transform"][4]] for i in dems},
        "worldcover_items": {
            version: [i["id"] for i in covers
                      if i["properties"]["esa_worldcover:product_version"] == product]
            for version, (_, product) in WORLDCOVER_MAPS.items()
        },
        "worldcover_changed_2020": "v100 differs from v200 on ~3 % of pixels: smooth "
        "patches moved to a class the algorithms confuse (landscape.CHANGES_2020)",
        "marker_reflectance": MARKER_SPECTRUM.astype(int).tolist(),
        "signatures": {str(k): list(v) for k, v in SIGNATURES.items()},
        "variants": {str(k): list(v) for k, v in VARIANTS.items()},
        "cloud_cover_definition": "percent of non-nodata SCL pixels in classes 8, 9, 10",
        "dark_pixels_definition": "per scene, band pixels with data stored at DN 1..1000 "
        "(reflectance <= 0 under the +1000 offset of baseline >= 04.00); 0 without offset",
    }  # fmt: skip


def _write_scene(
    root: Path,
    tile: TileGrid,
    surface: TileSurface,
    acq: Acquisition,
    platform: str,
    orbit: int,
    conditions: tuple[np.random.Generator, float, float | None, np.ndarray],
) -> tuple[dict[str, Any], Scene]:
    """Render one scene, write its COGs and return its STAC item."""
    rng, cloud_target, swath_cut, bare = conditions
    scene = render_scene(tile, surface, acq, rng, cloud_target, swath_cut, bare)
    item_id = sentinel2_item_id(tile, acq, platform, orbit)
    folder = root / "data" / sentinel2.COLLECTION / item_id
    hrefs = {}
    for band in sentinel2.BANDS:
        path = folder / f"{band.name}.tif"
        write_cog(
            path,
            scene.bands[band.name],
            crs=f"EPSG:{tile.epsg}",
            transform=tile.transform(band.resolution_m),
            nodata=sentinel2.NODATA,
        )
        hrefs[band.name] = str(path)
    path = folder / f"{sentinel2.SCL_ASSET}.tif"
    write_cog(
        path,
        scene.scl,
        crs=f"EPSG:{tile.epsg}",
        transform=tile.transform(sentinel2.SCL_RESOLUTION_M),
        nodata=0,
        categorical=True,
    )
    hrefs[sentinel2.SCL_ASSET] = str(path)
    footprint = to_lonlat(data_footprint(tile, swath_cut), tile.epsg, tile.lon_ref)
    item = sentinel2_item(tile, acq, platform=platform, orbit=orbit, hrefs=hrefs,
                          stats=_stats(scene), footprint=footprint)  # fmt: skip
    return item, scene


def _stats(scene: Scene) -> dict[str, float]:
    return {
        "cloud_cover": scene.cloud_cover,
        "nodata_percentage": scene.nodata_percentage,
        "shadow_percentage": scene.shadow_percentage,
    }


def _scene_truth(
    item: dict[str, Any], acq: Acquisition, swath_cut: float | None, scene: Scene, *, sliver: bool
) -> dict[str, Any]:
    return {
        "item_id": item["id"],
        "datetime": item["properties"]["datetime"],
        "baseline": acq.baseline,
        "platform": item["properties"]["platform"],
        "relative_orbit": item["properties"]["sat:relative_orbit"],
        "swath_cut": swath_cut,
        "sliver": sliver,
        **_stats(scene),
        "dark_pixels": scene.dark_pixels,
    }


def _scene_conditions(
    tile: int, date: int, n_dates: int, rng: np.random.Generator
) -> tuple[float, float | None]:
    """Cloud fraction and swath edge of a scene: mostly random, with guaranteed extremes.

    Every tile's first date is nearly clear and the first tile's last date is mostly
    cloudy, so both ends of a cloud filter have something to select; a quarter of the
    scenes (and always tile 0, date 1) lie at a swath edge with a nodata margin.
    """
    cloud = float(rng.beta(0.6, 1.4))
    if date == 0:
        cloud = 0.02
    elif tile == 0 and date == n_dates - 1:
        cloud = 0.8
    edge = (tile == 0 and date == 1) or rng.random() < 0.25
    cut = float(rng.uniform(0.85, 1.05)) if edge else None
    return cloud, cut


def _place_markers(tile: TileGrid, n: int, rng: np.random.Generator) -> list[Marker]:
    """Markers centred on the tile's 60 m grid, away from edges and from each other."""
    to_lonlat = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
    cells = tile.size * 10 // 60
    margin = min(10, cells // 4)  # 600 m on full-size tiles
    separation = min(800.0, tile.size * 10 / 4)
    chosen: list[tuple[float, float]] = []
    for _ in range(1000 * max(n, 1)):
        if len(chosen) == n:
            break
        i, j = rng.integers(margin, cells - margin, size=2)
        x, y = tile.left + 60.0 * i, tile.top - 60.0 * j
        if all(np.hypot(x - a, y - b) > separation for a, b in chosen):
            chosen.append((x, y))
    lonlat = [to_lonlat.transform(x, y) for x, y in chosen]
    return [Marker(float(wrap_lon(lon)), float(lat)) for lon, lat in lonlat]


def _ground_points(
    tile: TileGrid, landscape: Landscape, n: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Points in homogeneous land cover (same class over ~80 m) well inside the tile.

    Found on the master grid (unwrapped longitudes), recorded with wrapped longitudes.
    """
    lc = landscape.landcover
    uniform = ndimage.maximum_filter(lc, 13) == ndimage.minimum_filter(lc, 13)
    inner = tile.footprint().buffer(-0.004).bounds
    inv = ~landscape.transform
    c0, r0 = inv @ (inner[0], inner[3])
    c1, r1 = inv @ (inner[2], inner[1])
    window = uniform[int(r0) : int(r1), int(c0) : int(c1)]
    rows, cols = np.nonzero(window)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    out = []
    for k in pick:
        r, c = rows[k] + int(r0), cols[k] + int(c0)
        lon, lat = landscape.transform @ (c + 0.5, r + 0.5)
        out.append(
            {
                "lon": float(wrap_lon(lon)),
                "lat": float(lat),
                "landcover": int(lc[r, c]),
                "elevation": float(landscape.elevation[r, c]),
                "tile": tile.mgrs,
            }
        )
    return out


def _cells_box(region: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The region grown to whole DEM cells (unwrapped longitudes)."""
    w, s, e, n = region
    return math.floor(w), math.floor(s), math.ceil(e), math.ceil(n)


def _write_dem(
    root: Path, landscape: Landscape, region: tuple[float, float, float, float]
) -> list[dict[str, Any]]:
    """Copernicus DEM cells: whole 1° cells, the terrain evaluated at every pixel centre.

    Neighbouring cells sample the same landscape, so elevation is continuous across their
    edges; beyond the master grid (most of a cell) the landscape's edge values extend.
    """
    items = []
    for lon, lat in dem_cells(region):
        transform, shape = dem_cell_grid(lon, lat)
        cols, rows = np.meshgrid(np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
        plon, plat = transform @ (cols, rows)
        elev = landscape.sample_elevation(np.asarray(plon), np.asarray(plat))
        item = dem_item(float(wrap_lon(lon)), lat, "", transform, shape)
        path = root / "data" / dem.COLLECTION / f"{item['id']}.tif"
        write_cog(path, elev, crs="EPSG:4326", transform=transform, nodata=None)
        item["assets"][dem.ASSET]["href"] = str(path)
        items.append(item)
    return items


def _write_worldcover(
    root: Path,
    landscape: Landscape,
    region: tuple[float, float, float, float],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """WorldCover tiles of both maps, 2020 (v100) and 2021 (v200).

    Crops of the master land cover (v200) and of its 2020 variant, which share its grid.
    """
    maps = {"v100": worldcover_2020(landscape.landcover, rng), "v200": landscape.landcover}
    res = worldcover.RESOLUTION_DEG
    n = round(WORLDCOVER_TILE_DEG / res)
    inv = ~landscape.transform
    items = []
    for lon, lat in worldcover_tiles(region):
        north = round(lat + WORLDCOVER_TILE_DEG, 6)
        c, r = (round(v) for v in inv @ (lon, north))
        west = round(float(wrap_lon(lon)), 6)
        transform = Affine(res, 0, west, 0, -res, north)
        for version, landcover in maps.items():
            crop = landcover[r : r + n, c : c + n]
            item = worldcover_item(west, lat, "", transform, crop.shape, version)
            path = root / "data" / worldcover.COLLECTION / f"{item['id']}_Map.tif"
            write_cog(path, crop, crs="EPSG:4326", transform=transform,
                      nodata=worldcover.NODATA, categorical=True)  # fmt: skip
            item["assets"][worldcover.ASSET]["href"] = str(path)
            items.append(item)
    return items


def _write_truth_rasters(root: Path, landscape: Landscape) -> None:
    write_cog(
        root / "truth" / "landcover.tif",
        landscape.landcover,
        crs="EPSG:4326",
        transform=landscape.transform,
        nodata=worldcover.NODATA,
        categorical=True,
    )
    write_cog(
        root / "truth" / "elevation.tif",
        landscape.elevation,
        crs="EPSG:4326",
        transform=landscape.transform,
        nodata=None,
    )


def _write_catalog(
    root: Path,
    items: list[dict],
    extents: dict[str, tuple[float, float, float, float]],
    acqs: list[Acquisition],
) -> None:
    """The static catalog; `extents`: each collection's STAC bbox (west > east across 180°)."""
    catalog = pystac.Catalog(
        id="eomae-sample-world",
        description="The eomae sample world: synthetic Sentinel-2 L2A, Copernicus DEM and "
        "ESA WorldCover, shaped like Planetary Computer's collections.",
    )
    start = acqs[0].when.strftime("%Y-%m-%dT00:00:00Z")
    end = acqs[-1].when.strftime("%Y-%m-%dT23:59:59Z")
    spans = {
        sentinel2.COLLECTION: (start, end),
        dem.COLLECTION: ("2021-04-22T00:00:00Z", "2021-04-22T00:00:00Z"),
        worldcover.COLLECTION: ("2020-01-01T00:00:00Z", "2021-12-31T23:59:59Z"),
    }
    for cid, (t0, t1) in spans.items():
        coll = pystac.Collection.from_dict(
            collection(cid, list(extents[cid]), t0, t1), migrate=False
        )
        for item in items:
            if item["collection"] == cid:
                coll.add_item(pystac.Item.from_dict(item, migrate=False))
        catalog.add_child(coll)
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
