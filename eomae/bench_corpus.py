"""`eomae bench corpus`: what a corpus of scattered locations costs, and the hours it adds up to.

Four measurements, each in its own function, and a cost model from them:

    memory   `memory_per_task`: one unit of a 600 px and of a real-size 10980 px tile
             (`infra.world.big_tile`), each ingested alone in a fresh process: peak RSS,
             CPU seconds, chips per CPU second, cube bytes per pixel
    reads    `reads_per_wanted_pixel`: cells scattered over the served sample world,
             ingested as one `--bbox` per cell and as `--locations`: grid pixels written
             and Sentinel-2 bytes the COG server sent, per pixel of the wanted cells
    plan     `plan_scaling`: corpora of 1k, 10k and 100k cells planned from one frozen
             catalog (`infra.world.pc_world`: the items of a few hundred real Sentinel-2
             tiles, as a snapshot), as `eomae ingest --locations FILE --catalog-snapshot
             FILE` plans them, reading included; searches grow with the tiles, the rest
             with the cells, so seconds per 10k cells should stay flat
    cost     `cost_model`: CPU hours, wall hours on a cluster, and cube size of an
             SSL4EO-S12-size corpus (250k locations x 4 seasons) from the rates above

This module sits above the stages (it imports `infra.world` for its synthetic inputs),
so it lives with the CLI, not in `ingest`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import geopandas as gpd
from shapely.geometry import shape

from infra.world.pc_world import FIRST_DATE, REVISIT_DAYS, S2Tile, pc_world, pick_tiles
from ingest.config import IngestConfig
from ingest.cube import CUBE_NAME
from ingest.grid import RESOLUTION_M, Grid
from ingest.locations import cells_of, read_cells, uniform_points, write_cells
from ingest.plan import make_plan
from ingest.plan_cells import make_cells_plan
from ingest.run import process_unit
from ingest.snapshot import SNAPSHOT_FILE, SnapshotCatalog, write_snapshot
from ingest.sources import sentinel2


class BenchError(RuntimeError):
    """A measured run did not do its work (a unit failed)."""


def plan_scaling(
    out_dir: Path,
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000),
    *,
    n_tiles: int = 200,
    dates: int = 2,
    chip_size: int = 64,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per size: {cells, groups, units, plan_s, s_per_10k}.

    The world (`n_tiles` tiles, `dates` acquisitions each), its snapshot and the cells
    of each size (`_corpus`) are written under `out_dir`; only the plan is timed.
    """
    out_dir = Path(out_dir)
    snapshot = write_snapshot(pc_world(n_tiles, dates, seed), out_dir / "catalog.parquet")
    tiles = pick_tiles(n_tiles, seed)
    rows = []
    for size in sizes:
        cells = _corpus(tiles, size, chip_size, seed)
        locations = write_cells(cells, out_dir / f"cells_{size}.parquet")
        cfg = IngestConfig(
            locations=locations,
            catalog_snapshot=snapshot,
            start=FIRST_DATE,
            end=FIRST_DATE + timedelta(days=REVISIT_DAYS * dates),
            max_cloud_cover=100.0,
            chip_size=chip_size,
            run_dir=str(out_dir / f"run_{size}"),
        )
        began = time.perf_counter()
        cells = read_cells(locations)
        plan = make_cells_plan(cfg, SnapshotCatalog(snapshot), cells)
        seconds = time.perf_counter() - began
        rows.append({
            "cells": len(cells),
            "groups": int(cells["mgrs"].nunique()),
            "units": len(plan.units),
            "plan_s": round(seconds, 2),
            "s_per_10k": round(seconds / len(cells) * 10_000, 2),
        })  # fmt: skip
    return rows


def _corpus(tiles: list[S2Tile], size: int, chip_size: int, seed: int) -> gpd.GeoDataFrame:
    """`size` distinct cells, uniform over the tiles' MGRS squares, each named for one of them.

    A square's corner past its zone's edge is named in the next zone, whose tiles the world
    may lack: such cells would only be skipped, so points are drawn twice over and the
    cells of other tiles dropped.
    """
    lon, lat = uniform_points([t.footprint() for t in tiles], 2 * size, 0.0, seed)
    cells = cells_of(lon, lat, chip_size)
    cells = cells[cells["mgrs"].isin({t.name for t in tiles})]
    if len(cells) < size:
        raise ValueError(f"only {len(cells)} cells of {size} fell in the world's tiles")
    return cells.sample(n=size, random_state=seed).sort_values(["mgrs", "cell"], ignore_index=True)


# --- memory per task ---------------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> float:
    """Set the process's peak RSS (VmHWM) to its RSS now, which it returns (MB).

    Imports peak higher than they stay; from here the peak is the task's own.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _one_unit(items_file: str, scratch: str, chip_size: int, block_size: int) -> dict[str, float]:
    """Plan the tile's one scene from its items and ingest it here: seconds, CPU, peak RSS.

    Run in a fresh interpreter (`memory_per_task`), so the peak is this unit's and the
    imports', nothing else's.
    """
    items = json.loads(Path(items_file).read_text())["features"]
    snapshot = write_snapshot(items, Path(scratch) / SNAPSHOT_FILE)
    s2 = next(i for i in items if i["collection"] == sentinel2.COLLECTION)
    cfg = IngestConfig(bbox=[shape(s2["geometry"]).bounds], catalog_snapshot=snapshot,
                       start=s2["properties"]["datetime"][:10],
                       end=s2["properties"]["datetime"][:10], chip_size=chip_size,
                       run_dir=scratch, max_cloud_cover=100.0)  # fmt: skip
    (unit,) = make_plan(cfg, SnapshotCatalog(snapshot)).units
    rss_before = _reset_peak_rss()
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = process_unit(unit, f"{scratch}/{CUBE_NAME}", chip_size, 4, block_size)
    if result.status != "done":
        raise BenchError(f"the unit of {items_file} failed: {result.reason}")
    grid = unit.target
    cube = Path(scratch) / CUBE_NAME
    return {
        "cube_bytes": sum(f.stat().st_size for f in cube.rglob("*") if f.is_file()),
        "pixels": grid.width * grid.height,
        "chips": (grid.width // chip_size) * (grid.height // chip_size),
        "seconds": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _status_mb("VmHWM"),
    }


def memory_per_task(
    tiles: dict[int, Path], scratch: Path, chip_size: int = 64, block_size: int = 512
) -> list[dict[str, float]]:
    """Peak RSS of ingesting one unit of each tile (tile size → its items.json), each alone.

    Each in a new interpreter (not a fork or spawn of this one, which has imported torch
    for the CLI): its peak is what an ingest task holds, imports included.
    """
    rows = []
    for size, items_file in sorted(tiles.items()):
        work = scratch / f"unit-{size}"
        shutil.rmtree(work, ignore_errors=True)
        call = (
            f"import json; from eomae.bench_corpus import _one_unit; print(json.dumps("
            f"_one_unit({str(items_file)!r}, {str(work)!r}, {chip_size}, {block_size})))"
        )
        done = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
        if done.returncode:
            raise BenchError(f"the unit of {items_file} failed: {done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(work, ignore_errors=True)
        rows.append({"tile_px": size, **row, "chips_per_cpu_s": row["chips"] / row["cpu_s"],
                     "cube_bytes_per_px": row["cube_bytes"] / row["pixels"]})  # fmt: skip
    return rows


# --- pixels read per wanted pixel ----------------------------------------------------------

# A run of `eomae ingest` in its own process (its own Ray), with the STAC searches counted.
_INGEST = """
import json, sys
import pystac_client
from ingest.config import IngestConfig
from ingest.run import run_ingest
searches = []
search = pystac_client.Client.search
pystac_client.Client.search = lambda self, **kw: searches.append(1) or search(self, **kw)
summary = run_ingest(IngestConfig.model_validate_json(sys.argv[1]))
print(json.dumps({**summary, "searches": len(searches)}))
"""
# Bytes of a 10 m pixel's Sentinel-2 data at the bands' native resolutions (uint16 bands,
# uint8 SCL at 20 m): what a reader must fetch at the least, before compression.
S2_NATIVE_BYTES_PER_PX = sum(2 / (b.resolution_m // 10) ** 2 for b in sentinel2.BANDS) + 1 / 4


def _cog_stats(cog_url: str, reset: bool = False) -> dict[str, Any]:
    path = f"{cog_url}/_eomae/stats" + ("/reset" if reset else "")
    request = urllib.request.Request(path, method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wanted_pixels(units: list[dict[str, Any]], cells: gpd.GeoDataFrame, chip_size: int) -> int:
    """Pixels of the cells each unit's grid holds, summed over units (one per unit and cell)."""
    corners = list(zip(cells["epsg"], cells["left"], cells["top"], strict=True))
    extent = chip_size * RESOLUTION_M
    total = 0
    for u in units:
        g = Grid(**u["grid"])
        left, bottom, right, top = g.bounds
        total += sum(e == g.epsg and left <= x and x + extent <= right and bottom <= y - extent
                     and y <= top for e, x, y in corners)  # fmt: skip
    return total * chip_size * chip_size


def reads_per_wanted_pixel(
    catalog: str, cog_url: str, locations: Path, scratch: Path, chip_size: int = 64
) -> list[dict[str, Any]]:
    """The cells ingested as one `--bbox` per cell and as `--locations`, one scene per cell.

    Per run: units, STAC searches, plan seconds, grid pixels written and Sentinel-2 bytes
    the COG server sent, per pixel of the wanted cells.
    """
    cells = read_cells(locations)
    common = {"catalog": catalog, "start": "2021-01-01", "end": "2022-12-31",
              "max_cloud_cover": 100.0, "scenes_per_tile": 1, "chip_size": chip_size}  # fmt: skip
    runs = {
        "aois": {**common, "bbox": [list(g.bounds) for g in cells.geometry]},
        "locations": {**common, "locations": str(locations)},
    }
    rows = []
    for name, fields in runs.items():
        run_dir = scratch / name
        shutil.rmtree(run_dir, ignore_errors=True)
        _cog_stats(cog_url, reset=True)
        done = subprocess.run(
            [sys.executable, "-c", _INGEST, json.dumps({**fields, "run_dir": str(run_dir)})],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        served = _cog_stats(cog_url)["paths"]
        s2_bytes = sum(
            p["bytes_sent"] for path, p in served.items() if sentinel2.COLLECTION in path
        )
        units = json.loads((run_dir / "ingest" / "plan.json").read_text())["units"]
        grid_px = sum(u["grid"]["width"] * u["grid"]["height"] for u in units)
        wanted = _wanted_pixels(units, cells, chip_size)
        rows.append({
            "how": name, "cells": len(cells), "units": len(units), "searches": summary["searches"],
            "plan_s": summary["plan_s"], "grid_px": grid_px, "wanted_px": wanted,
            "task_s_per_unit": (summary["read_s"] + summary["write_s"]) / max(len(units), 1),
            "grid_per_wanted": grid_px / max(wanted, 1),
            "chips_per_unit": wanted / max(len(units), 1) / chip_size**2,
            "s2_bytes_per_wanted_px": s2_bytes / max(wanted, 1),
            "s2_fetched_per_native": s2_bytes / max(wanted, 1) / S2_NATIVE_BYTES_PER_PX,
        })  # fmt: skip
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


# --- the cost of a corpus ------------------------------------------------------------------


def cost_model(
    chips_per_cpu_s: float,
    unit_overhead_cpu_s: float,
    cube_bytes_per_px: float,
    plan_s_per_10k: float,
    *,
    locations: int = 250_000,
    seasons: int = 4,
    location_px: int = 264,
    chip_size: int = 64,
    cores_per_node: int = 16,
    nodes: tuple[int, ...] = (1, 8, 32),
) -> dict[str, Any]:
    """Hours and nodes for `locations` x `seasons` units of `location_px` px a side.

    A unit costs `unit_overhead_cpu_s` (opening 15 rasters, planning its windows) plus its
    chips at `chips_per_cpu_s`; units run one per core. Reading time over the network is
    not in it: on a catalog far away it is latency, which concurrent reads hide
    (`eomae bench ingest --cog-latency-ms`), not CPU.
    """
    units = locations * seasons
    chips = (location_px / chip_size) ** 2
    cpu_s = units * (unit_overhead_cpu_s + chips / chips_per_cpu_s)
    return {
        "locations": locations, "seasons": seasons, "location_px": location_px,
        "units": units, "cpu_hours": cpu_s / 3600,
        "plan_hours": plan_s_per_10k * locations / 10_000 / 3600,
        "cube_tb": units * location_px**2 * cube_bytes_per_px / 1e12,
        "wall_hours": {n: cpu_s / (n * cores_per_node) / 3600 for n in nodes},
        "cores_per_node": cores_per_node,
    }  # fmt: skip
