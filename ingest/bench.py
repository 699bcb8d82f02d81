"""`eomae bench ingest`: eomae's Ray ingest against what users would write instead.

Three ways from the same STAC API to the same arrays on the same grids, timed one after
another on the same units in each repeat:

    eomae     `ingest.run.run_ingest`: plan (STAC searches), then one Ray task per unit
              (tile x date) with concurrent reads, written to the zarr cube
    naive     one process, one thing at a time: pystac-client searches, then for every
              unit each Sentinel-2 band, the SCL and every covering DEM and WorldCover
              item opened with rasterio and warped onto the unit's grid by a WarpedVRT,
              band after band; GDAL's default settings, as in a script nobody tuned
    odc-stac  `odc.stac.load` of the same items onto the same GeoBox with the same
              resampling per band (all dates of a tile in one call, DEM and land cover
              once per tile), `configure_rio(cloud_defaults=True)`, a thread pool with as
              many reads in flight as eomae has

The naive loop and odc-stac then derive the unit's arrays with ingest's own function
(`ingest.run.unit_arrays`: harmonised S2, SCL, DEM, land cover, validity mask) and write
them with eomae's writer (`ingest.cube.write_unit`, chunked by chip), so all three do the
same work from search to bytes on disk and differ only in how they search, read and warp.
Both run in a fresh process each time, which first does one unit untimed (imports, GDAL
and library set-up, as the bench's untimed eomae warm-up run does for the Ray workers)
and then clears GDAL's HTTP cache; before each eomae run, so do the Ray workers.

The rate is chips/s, with chips = the chip-grid cells of every unit's grid,
Σ (height / chip_size) x (width / chip_size), each cell written whether or not it holds
valid pixels: the same count for all three, which fill the same grids. The figures are
eomae chips/s ÷ naive chips/s and ÷ odc-stac chips/s within each repeat. After the last
repeat every unit written by each alternative is compared with eomae's, array by array.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pystac_client
import rasterio
import ray
import zarr
from pydantic import Field
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from ingest.catalog import open_catalog
from ingest.config import IngestConfig
from ingest.cube import CUBE_NAME, array_layout, open_cube, write_unit
from ingest.grid import Grid
from ingest.parallel import init_ray
from ingest.plan import Unit, make_plan
from ingest.raster import GDAL_ENV, clear_http_cache, first_valid, sign
from ingest.run import run_ingest, unit_arrays
from ingest.sources import dem, sentinel2, worldcover

ALTERNATIVES = ("eomae", "naive", "odc-stac")
ARRAYS = ("s2", "scl", "dem", "lc", "valid")
ODC_MISSING = "odc-stac is not installed (pip install 'eomae[bench]')"
# "The same arrays": S2, SCL, land cover and validity equal on at least 99.9 % of the pixels
# of every unit (a nearest-neighbour tie may fall either way), the DEM within 0.5 m on average.
TOLERANCE = {"equal_fraction": 0.999, "dem_mean_abs_diff_m": 0.5}
EQUAL_WITHIN = {"dem": 1.0, "s2": 1}  # differences that count as equal (m, DN)


class BenchError(RuntimeError):
    """The alternatives did not do the same work (a unit failed or is missing)."""


class IngestBenchConfig(IngestConfig):
    """`eomae bench ingest`: an ingest config, run by eomae, a naive loop and odc-stac."""

    repeats: int = Field(3, ge=1, description="Repeats of (eomae, naive, odc-stac); medians.")
    warmup: bool = Field(
        True, description="One untimed eomae run first (Ray workers import, files in page cache)."
    )
    odc_threads: int | None = Field(
        None,
        ge=1,
        description="odc-stac's thread pool (default: eomae's reads in flight, "
        "max_concurrent_reads x the units Ray runs at once).",
    )


@dataclass(frozen=True)
class Job:
    """One unit as the alternatives get it: which scene, on which grid. They search for the rest."""

    unit_id: str
    tile: str
    item_id: str
    grid: dict[str, Any]


def jobs_of(units: Sequence[Unit]) -> list[Job]:
    """The units of eomae's plan, reduced to what the alternatives need to do the same work."""
    return [Job(u.unit_id, u.mgrs_tile, u.s2_item["id"], u.grid) for u in units]


def chip_count(jobs: Sequence[Job], chip_size: int) -> int:
    """Chip-grid cells over all units: Σ (height / chip) x (width / chip)."""
    return sum((j.grid["height"] // chip_size) * (j.grid["width"] // chip_size) for j in jobs)


# --- the naive loop ------------------------------------------------------------------------


def _warp(href: str, grid: Grid, resampling: Resampling, nodata: float, dtype: str) -> np.ndarray:
    """Band 1 of a raster warped onto `grid`, as rasterio's documentation shows it."""
    with (
        rasterio.open(sign(href)) as src,
        WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                  height=grid.height, resampling=resampling, nodata=nodata,
                  dtype=dtype) as vrt,
    ):  # fmt: skip
        return vrt.read(1)


def _footprint(grid: Grid) -> BaseGeometry:
    """The grid's bounds as a lon/lat box."""
    return box(*transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21))


def _search(
    catalog: str, aoi: Sequence[float], datetime: str
) -> tuple[dict[str, pystac.Item], list[pystac.Item], list[pystac.Item]]:
    """S2 items by id, DEM items and WorldCover items (the latest map) over the AOI."""
    client = pystac_client.Client.open(catalog)
    bbox = list(aoi)
    scenes = client.search(collections=[sentinel2.COLLECTION], bbox=bbox, datetime=datetime)
    dems = client.search(collections=[dem.COLLECTION], bbox=bbox)
    lcs = client.search(collections=[worldcover.COLLECTION], bbox=bbox)
    latest = [i for i in lcs.items() if worldcover.item_version(i.to_dict()) == worldcover.LATEST]
    return {i.id: i for i in scenes.items()}, list(dems.items()), latest


def _covering(items: list[pystac.Item], grid: Grid) -> list[pystac.Item]:
    footprint = _footprint(grid)
    return [i for i in items if i.geometry and shape(i.geometry).intersects(footprint)]


def _gdal_defaults() -> None:
    """Drop eomae's GDAL settings from this (fresh) process: GDAL decides, as in any script."""
    for key in GDAL_ENV:
        os.environ.pop(key, None)


def naive_ingest(
    catalog: str, bbox: Sequence[float], datetime: str, jobs: Sequence[Job], cube_url: str,
    chip_size: int,
) -> dict[str, float]:  # fmt: skip
    """Search, then every raster of every unit one after another; seconds per step."""
    _gdal_defaults()
    t0 = time.perf_counter()
    scenes, dems, lcs = _search(catalog, bbox, datetime)
    timings = {"search_s": time.perf_counter() - t0, "read_s": 0.0, "write_s": 0.0}
    cube = open_cube(cube_url)
    for job in jobs:
        t1 = time.perf_counter()
        grid, item = Grid(**job.grid), scenes[job.item_id]
        how = sentinel2.RESAMPLING
        dn = np.stack([_warp(item.assets[b].href, grid, how[b], sentinel2.NODATA, "uint16")
                       for b in sentinel2.BAND_NAMES])  # fmt: skip
        scl = _warp(item.assets[sentinel2.SCL_ASSET].href, grid, Resampling.nearest,
                    sentinel2.NODATA, "uint8")  # fmt: skip
        nan = float("nan")
        elevation = first_valid(
            [_warp(i.assets[dem.ASSET].href, grid, Resampling.bilinear, nan, dem.DTYPE)
             for i in _covering(dems, grid)], grid, nodata=nan, dtype=dem.DTYPE,
        )  # fmt: skip
        landcover = first_valid(
            [_warp(i.assets[worldcover.ASSET].href, grid, Resampling.nearest,
                   worldcover.NODATA, "uint8") for i in _covering(lcs, grid)],
            grid, nodata=worldcover.NODATA, dtype="uint8",
        )  # fmt: skip
        t2 = time.perf_counter()
        baseline = item.properties.get("s2:processing_baseline", "00.00")
        arrays = unit_arrays(dn, scl, elevation, landcover, baseline)
        write_unit(cube, job.unit_id, grid, chip_size, arrays, {"items": {"s2": item.id}})
        timings["read_s"] += t2 - t1
        timings["write_s"] += time.perf_counter() - t2
    timings["seconds"] = time.perf_counter() - t0
    return timings


# --- odc-stac ------------------------------------------------------------------------------


def odc_available() -> bool:
    """Whether odc-stac can be imported (the optional `bench` extra)."""
    try:
        return importlib.util.find_spec("odc.stac") is not None
    except ModuleNotFoundError:  # no `odc` namespace at all
        return False


def _one_group(*_: Any) -> int:
    """odc-stac groupby: every item in one plane (a mosaic), like ingest's DEM/land cover."""
    return 0


def odc_ingest(
    catalog: str, bbox: Sequence[float], datetime: str, jobs: Sequence[Job], cube_url: str,
    chip_size: int, threads: int,
) -> dict[str, float]:  # fmt: skip
    """The same units through odc.stac.load, one call per tile and source; seconds per step."""
    import odc.stac
    from odc.geo.geobox import GeoBox

    _gdal_defaults()
    odc.stac.configure_rio(cloud_defaults=True)
    # The DEM declares no nodata (as on Planetary Computer): say NaN, as ingest does.
    stac_cfg = {dem.COLLECTION: {"assets": {dem.ASSET: {"nodata": float("nan")}}}}
    common: dict[str, Any] = {"pool": threads, "patch_url": sign, "stac_cfg": stac_cfg}
    resampling = {k: r.name for k, r in sentinel2.RESAMPLING.items()}
    t0 = time.perf_counter()
    scenes, dems, lcs = _search(catalog, bbox, datetime)
    timings = {"search_s": time.perf_counter() - t0, "read_s": 0.0, "write_s": 0.0}
    cube = open_cube(cube_url)
    by_tile: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_tile[job.tile].append(job)
    for tile_jobs in by_tile.values():
        t1 = time.perf_counter()
        grid = Grid(**tile_jobs[0].grid)
        geobox = GeoBox((grid.height, grid.width), grid.transform, grid.crs)
        items = [scenes[j.item_id] for j in tile_jobs]
        s2 = odc.stac.load(items, bands=list(sentinel2.RESAMPLING), geobox=geobox, groupby="id",
                           resampling=resampling, **common)  # fmt: skip
        aux = {
            source.COLLECTION: odc.stac.load(
                _covering(found, grid), bands=[source.ASSET], geobox=geobox, groupby=_one_group,
                resampling=how, preserve_original_order=True, **common,
            )[source.ASSET].isel(time=0).values
            for source, found, how in ((dem, dems, "bilinear"), (worldcover, lcs, "nearest"))
        }  # fmt: skip
        timings["read_s"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        times = list(s2.time.values)
        for job, item in zip(tile_jobs, items, strict=True):
            when = np.datetime64(item.datetime.replace(tzinfo=None), "ns")  # type: ignore[union-attr]
            plane = s2.isel(time=times.index(when))
            dn = np.stack([plane[b.name].values for b in sentinel2.BANDS])
            baseline = item.properties.get("s2:processing_baseline", "00.00")
            scl = plane[sentinel2.SCL_ASSET].values
            arrays = unit_arrays(dn, scl, aux[dem.COLLECTION], aux[worldcover.COLLECTION], baseline)
            write_unit(cube, job.unit_id, grid, chip_size, arrays, {"items": {"s2": item.id}})
        timings["write_s"] += time.perf_counter() - t2
    timings["seconds"] = time.perf_counter() - t0
    return timings


# --- eomae ---------------------------------------------------------------------------------


def _clear_worker_caches() -> int:
    clear_http_cache()
    time.sleep(0.3)  # hold this worker, so the other clearing tasks land on the others
    return os.getpid()


def clear_ray_caches() -> int:
    """Clear GDAL's HTTP cache in every Ray worker that can run a unit; how many did."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task: Any = ray.remote(num_cpus=1)(_clear_worker_caches)
    return len(set(ray.get([task.remote() for _ in range(cpus)])))


def eomae_ingest(cfg: IngestConfig, expected: int) -> dict[str, float]:
    """One `run_ingest` into a fresh run directory; its own timings (task seconds summed)."""
    clear_ray_caches()
    t0 = time.perf_counter()
    summary = run_ingest(cfg)
    seconds = time.perf_counter() - t0
    if summary["failed"] or summary["done"] != expected:
        raise BenchError(f"eomae ingested {summary['done']} of {expected} units: "
                         f"{summary['failed']}")  # fmt: skip
    return {"seconds": seconds, "plan_s": summary["plan_s"], "read_s": summary["read_s"],
            "write_s": summary["write_s"]}  # fmt: skip


# --- agreement -----------------------------------------------------------------------------


def _read(group: zarr.Group, name: str) -> np.ndarray:
    arr = group[name]
    assert isinstance(arr, zarr.Array), f"{name} is not an array"
    return np.asarray(arr[...])


def compare_units(ours: str, theirs: str, unit_ids: Sequence[str]) -> dict[str, Any]:
    """Each array of every unit against ours, and whether they agree within TOLERANCE.

    Per array: shapes equal, the fraction of equal pixels in the worst unit, the largest
    and the mean absolute difference. eomae warps a unit in blocks, which moves a pixel a
    hair against a warp of the whole grid: DEM pixels within 1 m count as equal, and S2
    pixels within 1 DN (a bilinear 20 or 60 m value on x.5 may round the other way).
    """
    a_cube, b_cube = open_cube(ours), open_cube(theirs)
    arrays: dict[str, dict[str, Any]] = {
        name: {"shapes_equal": True, "equal_fraction": 1.0, "max_abs_diff": 0.0,
               "mean_abs_diff": 0.0} for name in ARRAYS
    }  # fmt: skip
    pixels = dict.fromkeys(ARRAYS, 0)
    for unit_id in unit_ids:
        a_group, b_group = a_cube[unit_id], b_cube[unit_id]
        assert isinstance(a_group, zarr.Group) and isinstance(b_group, zarr.Group)
        for name in ARRAYS:
            a, b = _read(a_group, name), _read(b_group, name)
            stats = arrays[name]
            if a.shape != b.shape:
                stats.update(shapes_equal=False, equal_fraction=0.0)
                continue
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            equal = diff <= EQUAL_WITHIN.get(name, 0)
            stats["equal_fraction"] = min(stats["equal_fraction"], float(equal.mean()))
            stats["max_abs_diff"] = max(stats["max_abs_diff"], float(diff.max(initial=0.0)))
            stats["mean_abs_diff"] += float(diff.sum())
            pixels[name] += diff.size
    for name, stats in arrays.items():
        stats["mean_abs_diff"] /= max(pixels[name], 1)
    agrees = all(a["shapes_equal"] for a in arrays.values()) and all(
        arrays[n]["mean_abs_diff"] <= TOLERANCE["dem_mean_abs_diff_m"] if n == "dem"
        else arrays[n]["equal_fraction"] >= TOLERANCE["equal_fraction"]
        for n in ARRAYS
    )  # fmt: skip
    return {"agrees": agrees, "units": len(unit_ids), "arrays": arrays}


# --- the cube's write layout ---------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure_cube_write(
    cube_url: str, unit_id: str, chip_size: int, scratch: Path, times: int = 5
) -> list[dict[str, float]]:
    """CPU seconds and bytes to write one unit's arrays: eomae's layout vs a file per chip.

    eomae's layout is `ingest.cube.array_layout` (chip chunks in one shard, Blosc LZ4);
    the other is zarr's default for the same chip chunks (a file per chunk, Zstd), which
    the cube used before. Alternated `times` times in this process, on real arrays.
    """
    group = open_cube(cube_url)[unit_id]
    assert isinstance(group, zarr.Group)
    arrays = {name: _read(group, name) for name in ARRAYS}
    layouts: dict[str, Callable[[tuple[int, ...]], dict[str, Any]]] = {
        "sharded": lambda shape: array_layout(shape, chip_size),
        "file_per_chip": lambda shape: {"chunks": (*shape[:-2], chip_size, chip_size)},
    }
    rows = []
    for _ in range(times):
        row: dict[str, float] = {}
        for name, layout in layouts.items():
            shutil.rmtree(scratch, ignore_errors=True)
            target = zarr.open_group(str(scratch), mode="w", zarr_format=3)
            t0 = time.process_time()
            for key, data in arrays.items():
                target.create_array(key, data=data, **layout(data.shape))
            row[f"{name}_cpu_s"] = time.process_time() - t0
            row[f"{name}_bytes"] = _dir_bytes(scratch)
        rows.append(row)
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


# --- the bench -----------------------------------------------------------------------------


def _warm_then_time(
    fn: Callable[..., dict[str, float]], catalog: str, bbox: Sequence[float], datetime: str,
    jobs: Sequence[Job], cube_url: str, *rest: Any,
) -> dict[str, float]:  # fmt: skip
    """One untimed unit into a scratch cube, GDAL's caches cleared, then the timed run.

    The process is then as warm as eomae's Ray workers after the bench's warm-up (modules
    imported, GDAL, PROJ and the library's own set-up done) and its caches as cold.
    """
    scratch = f"{cube_url}.warmup"
    fn(catalog, bbox, datetime, jobs[:1], scratch, *rest)
    shutil.rmtree(scratch, ignore_errors=True)
    clear_http_cache()
    return fn(catalog, bbox, datetime, jobs, cube_url, *rest)


def _in_fresh_process(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """`fn(*args)` warmed up and timed in a new Python process: nothing shared with us."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_warm_then_time, fn, *args).result()


def ingest_config(cfg: IngestBenchConfig, run_dir: Path) -> IngestConfig:
    """The bench's ingest settings with another run directory."""
    fields = cfg.model_dump(include=set(IngestConfig.model_fields))
    return IngestConfig(**{**fields, "run_dir": str(run_dir)})


def reads_in_flight(cfg: IngestConfig) -> int:
    """Raster reads eomae has in flight at most: units Ray runs at once x reads per unit."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return cfg.max_concurrent_reads * min(cfg.max_concurrent_units, cpus)


def bench_ingest(
    cfg: IngestBenchConfig, work: Path, log: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Run every alternative `cfg.repeats` times on eomae's plan of `cfg`; rows and agreement.

    `work` holds the cubes while measuring and is removed at the end.
    """
    init_ray(cfg.address)
    units = make_plan(cfg, open_catalog(cfg.catalog)).units
    jobs = jobs_of(units)
    chips = chip_count(jobs, cfg.chip_size)
    bbox = list(unary_union(cfg.aois()).bounds)  # as make_plan searches
    threads = cfg.odc_threads or reads_in_flight(cfg)
    with_odc = odc_available()
    if not with_odc:
        log(f"skipping the odc-stac comparison: {ODC_MISSING}")
    log(f"{len(jobs)} units, {chips} chips of {cfg.chip_size} px"
        + (f"; odc-stac with {threads} threads" if with_odc else ""))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    if cfg.warmup:
        eomae_ingest(ingest_config(cfg, work / "warmup"), len(jobs))
    runners: dict[str, Callable[[int], dict[str, float]]] = {
        "eomae": lambda r: eomae_ingest(ingest_config(cfg, work / f"eomae-{r}"), len(jobs)),
        "naive": lambda r: _in_fresh_process(
            naive_ingest, cfg.catalog, bbox, cfg.datetime, jobs,
            str(work / f"naive-{r}" / CUBE_NAME), cfg.chip_size),
        "odc-stac": lambda r: _in_fresh_process(
            odc_ingest, cfg.catalog, bbox, cfg.datetime, jobs,
            str(work / f"odc-stac-{r}" / CUBE_NAME), cfg.chip_size, threads),
    }  # fmt: skip
    if not with_odc:
        del runners["odc-stac"]
    rows = []
    for r in range(cfg.repeats):
        names = list(runners)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate: no fixed order
        row: dict[str, Any] = {"repeat": r, "units": len(jobs), "chips": chips, "order": names,
                               "load_1min": os.getloadavg()[0]}  # fmt: skip
        for name in names:
            timings = runners[name](r)
            row[name] = {**timings, "chips_per_s": chips / timings["seconds"]}
        rows.append(row)
        log(f"repeat {r + 1}/{cfg.repeats}: " + ", ".join(
            f"{n} {row[n]['chips_per_s']:.0f} chips/s ({row[n]['seconds']:.2f} s)" for n in runners
        ))  # fmt: skip
        if r < cfg.repeats - 1:
            for name in names:
                shutil.rmtree(work / f"{name}-{r}", ignore_errors=True)
    last = cfg.repeats - 1
    ours = str(work / f"eomae-{last}" / CUBE_NAME)
    ids = [j.unit_id for j in jobs]
    agreement = {name: compare_units(ours, str(work / f"{name}-{last}" / CUBE_NAME), ids)
                 for name in runners if name != "eomae"}  # fmt: skip
    cube_write = measure_cube_write(ours, ids[0], cfg.chip_size, work / "write")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "rows": rows,
        "agreement": agreement,
        "cube_write": cube_write,
        "odc_stac": with_odc,
        "ray_cpus": int(ray.cluster_resources().get("CPU", 1)),
        "tolerance": TOLERANCE,
        "odc_threads": threads,
        "units": [asdict(j) for j in jobs],
        "chips": chips,
    }


def ingest_ratios(row: dict[str, Any]) -> dict[str, float]:
    """The bench's figures from one repeat: eomae chips/s over each alternative's."""
    return {
        f"eomae/{name}": row["eomae"]["chips_per_s"] / row[name]["chips_per_s"]
        for name in ALTERNATIVES[1:]
        if name in row
    }
