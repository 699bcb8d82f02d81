"""`eomae ingest`: plan on the driver, one Ray task per unit, zarr cube, status table.

    RUN/ingest/plan.json     the units (tile x date) with their item ids and hrefs
    RUN/ingest/status.json   one row per unit: done / failed + reason + timings
    RUN/cube.zarr            the cube (see ingest.cube)

Re-running skips complete units; units that failed or were cut off run again.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from ingest.catalog import open_catalog
from ingest.config import IngestConfig
from ingest.cube import COVERAGE_BITS, CUBE_NAME, UnitWriter, block_size_for, is_complete, open_cube
from ingest.grid import Grid
from ingest.locations import read_cells
from ingest.parallel import imap_unordered
from ingest.plan import Plan, Unit, make_plan, plan_to_json
from ingest.plan_cells import make_cells_plan
from ingest.raster import ReadError, redact
from ingest.signing import TokenError
from ingest.snapshot import SNAPSHOT_FILE, RecordingCatalog, SnapshotCatalog, write_snapshot
from ingest.sources import dem, sentinel2, worldcover

log = logging.getLogger(__name__)


@dataclass
class UnitResult:
    """What a unit task reports back to the driver."""

    unit_id: str
    status: str  # "done" | "failed" | "skipped"
    reason: str = ""
    read_s: float = 0.0
    write_s: float = 0.0
    bytes_read: int = 0
    valid_fraction: float = 0.0


def _url(run_dir: str, *parts: str) -> str:
    return "/".join([run_dir.rstrip("/"), *parts])


def unit_arrays(
    dn: np.ndarray, scl: np.ndarray, elevation: np.ndarray, landcover: np.ndarray, baseline: str
) -> dict[str, np.ndarray]:
    """A unit's cube arrays from what was read onto its grid.

    `dn` [12, H, W] uint16 as stored, `scl` [H, W], `elevation` [H, W] float32 with NaN
    where no DEM covers, `landcover` [H, W] WorldCover codes. Returns `s2` harmonised,
    `scl`, `dem` (0 where no DEM), `lc`, `valid` (clear S2 with DEM and land cover) and
    `coverage` (uint8, COVERAGE_BITS of the sources with data at each pixel).
    """
    has = {
        "s2": (dn != sentinel2.NODATA).all(axis=0),
        "dem": np.isfinite(elevation),
        "lc": landcover != worldcover.NODATA,
    }
    coverage = np.zeros(scl.shape, np.uint8)
    for name, bit in COVERAGE_BITS.items():
        coverage |= has[name].astype(np.uint8) * np.uint8(bit)
    return {
        "s2": sentinel2.harmonise(dn, baseline),
        "scl": scl,
        "dem": np.nan_to_num(elevation, nan=0.0).astype(np.float32),
        "lc": landcover,
        "valid": sentinel2.valid_mask(dn, scl) & has["dem"] & has["lc"],
        "coverage": coverage,
    }


def provenance(unit: Unit) -> dict[str, Any]:
    """How a unit's arrays were made, for a user to trust a corpus built from it."""
    offset = sentinel2.baseline_has_offset(unit.baseline)
    return {
        "resampling": {
            "s2_10m": sentinel2.RESAMPLING["B02"].name,
            "s2_20m_60m": sentinel2.RESAMPLING["B05"].name,
            "scl": sentinel2.RESAMPLING[sentinel2.SCL_ASSET].name,
            "dem": dem.RESAMPLING.name,
            "lc": worldcover.RESAMPLING.name,
        },
        "harmonisation": {
            "processing_baseline": unit.baseline,
            "baseline_inferred": unit.baseline_inferred,
            "offset_removed": sentinel2.BOA_ADD_OFFSET if offset else 0,
        },
        "worldcover_version": unit.worldcover_version,
        "dem_items": unit.dem_items,
        "lc_items": unit.lc_items,
    }


@dataclass
class Tally:
    """Pixel counts of a unit, added up over its blocks."""

    pixels: int = 0
    valid: int = 0
    observed: int = 0  # SCL other than NO_DATA
    cloudy: int = 0
    covered: int = 0  # with DEM and land cover
    bytes_read: int = 0

    def add(self, arrays: dict[str, np.ndarray], covered: np.ndarray, nbytes: int) -> None:
        """Count a block's pixels."""
        scl = arrays["scl"]
        self.pixels += scl.size
        self.valid += int(arrays["valid"].sum())
        self.observed += int((scl != sentinel2.SceneClass.NO_DATA).sum())
        self.cloudy += int(np.isin(scl, [int(c) for c in sentinel2.CLOUD_CLASSES]).sum())
        self.covered += int(covered.sum())
        self.bytes_read += nbytes


def read_block(
    unit: Unit, block: Grid, max_reads: int
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """A block's cube arrays (`unit_arrays`), where DEM and land cover cover it, bytes read."""
    dn, scl, n_s2 = sentinel2.read_scene(unit.s2_item, block, max_reads)
    elevation, n_dem = dem.read(unit.dem_hrefs, block)
    landcover, n_lc = worldcover.read(unit.lc_hrefs, block)
    covered = np.isfinite(elevation) & (landcover != worldcover.NODATA)
    return unit_arrays(dn, scl, elevation, landcover, unit.baseline), covered, n_s2 + n_dem + n_lc


def process_unit(
    unit: Unit,
    cube_url: str,
    chip_size: int,
    max_reads: int,
    block_size: int | None = None,
    inject_failure: bool = False,
) -> UnitResult:
    """Read, co-register, harmonise, mask and write one unit. Never raises for bad data.

    The unit is done in `block_size` px blocks (default: one block), each read, derived and
    written before the next is read, so a task's memory is set by the block, not the tile.
    A unit that fails part-way leaves nothing in the cube. `inject_failure` (tests only)
    raises a RuntimeError after the first block's reads, as a bug would.
    """
    t0 = time.perf_counter()
    grid = unit.target
    tally, read_s, writer = Tally(), 0.0, None
    try:
        if not unit.dem_hrefs:
            raise ReadError(f"no {dem.COLLECTION} item covers unit {unit.unit_id}")
        if not unit.lc_hrefs:
            raise ReadError(
                f"no {worldcover.COLLECTION} {unit.worldcover_version} item covers unit "
                f"{unit.unit_id}"
            )
        for row, col, block in grid.blocks(block_size or max(grid.width, grid.height)):
            t = time.perf_counter()
            arrays, covered, nbytes = read_block(unit, block, max_reads)
            read_s += time.perf_counter() - t
            if inject_failure:
                raise RuntimeError(f"injected failure in {unit.unit_id}")
            tally.add(arrays, covered, nbytes)
            if writer is None:
                writer = UnitWriter(open_cube(cube_url), unit.unit_id, grid, chip_size, block_size)
            writer.write(row, col, arrays)
        if not tally.covered:
            raise ReadError(f"DEM and land cover do not cover unit {unit.unit_id}")
    except (ReadError, TokenError, ValueError, KeyError) as e:
        if writer is not None:
            writer.discard()
        return UnitResult(unit.unit_id, "failed", redact(str(e)), time.perf_counter() - t0)
    valid_fraction = tally.valid / tally.pixels
    attrs = {
        "bands": list(sentinel2.BAND_NAMES),
        "datetime": unit.datetime,
        "mgrs_tile": unit.mgrs_tile,
        "processing_baseline": unit.baseline,
        "harmonised": True,
        "items": {"s2": unit.s2_item["id"], "dem": unit.dem_items, "lc": unit.lc_items},
        "hrefs": {
            "s2": {k: redact(a["href"]) for k, a in unit.s2_item["assets"].items()},
            "dem": [redact(h) for h in unit.dem_hrefs],
            "lc": [redact(h) for h in unit.lc_hrefs],
        },
        "provenance": provenance(unit),
        "scene_cloud_cover": unit.cloud_cover,
        "cloud_fraction": tally.cloudy / max(tally.observed, 1),
        "valid_fraction": valid_fraction,
    }
    assert writer is not None  # a grid has at least one block
    writer.finish(attrs)
    elapsed = time.perf_counter() - t0
    return UnitResult(
        unit.unit_id, "done", "", read_s, elapsed - read_s, tally.bytes_read, valid_fraction
    )


STATUS_EVERY_S = 5.0  # status.json is rewritten at most this often while units finish

# What a run directory's data depends on; the catalog URL, Ray address and concurrency
# may change between runs (the local services get new ports on every start).
PLAN_FIELDS = frozenset(
    {"bbox", "aoi_file", "locations", "start", "end", "max_cloud_cover", "scenes_per_tile",
     "spread_seasons", "seasons", "chip_size", "worldcover_version"}
)  # fmt: skip


def plan_or_load(cfg: IngestConfig) -> Plan:
    """Plan afresh (hrefs current), refusing a run dir planned with other data settings.

    A re-run searches again rather than trusting saved hrefs: signed or locally served
    URLs go stale, while the selection of units is the same for the same settings.
    """
    fs, path = fsspec.core.url_to_fs(_url(cfg.run_dir, "ingest", "plan.json"))
    if fs.exists(path):
        saved = json.loads(fs.cat_file(path))["config"]
        current = cfg.model_dump(mode="json")
        changed = sorted(k for k in PLAN_FIELDS if saved.get(k) != current.get(k))
        if changed:
            raise ValueError(
                f"{cfg.run_dir} holds an ingest with other settings ({', '.join(changed)}); "
                "use a new run directory"
            )
    source = SnapshotCatalog(cfg.catalog_snapshot) if cfg.catalog_snapshot else None
    catalog = RecordingCatalog(source or open_catalog(cfg.catalog))
    if cfg.locations is not None:
        plan = make_cells_plan(cfg, catalog, read_cells(cfg.locations))
    else:
        plan = make_plan(cfg, catalog)
    fs.makedirs(fs._parent(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the items planned from, for a re-plan
        written = write_snapshot(catalog.items(), Path(tmp) / SNAPSHOT_FILE)
        fs.put_file(str(written), f"{fs._parent(path)}/{SNAPSHOT_FILE}")
    with fs.open(path + ".tmp", "w") as f:
        f.write(plan_to_json(plan, cfg))
    fs.mv(path + ".tmp", path)
    return plan


class StatusTable:
    """RUN/ingest/status.json: a row per unit, read when a run starts.

    While units finish it is written at most every `every_s` seconds: rewriting the whole
    table after each unit costs O(units) per unit, O(units²) a run. The cube's completion
    markers, not this table, decide what a re-run redoes, so a crash loses at most
    `every_s` of rows, which the re-run writes again.
    """

    def __init__(
        self,
        cfg: IngestConfig,
        every_s: float = STATUS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fs, self.path = fsspec.core.url_to_fs(_url(cfg.run_dir, "ingest", "status.json"))
        self.rows: dict[str, dict[str, Any]] = {}
        if self.fs.exists(self.path):  # an earlier run's rows
            self.rows = {r["unit_id"]: r for r in json.loads(self.fs.cat_file(self.path))}
        self.every_s, self.clock = every_s, clock
        self.written_at = -math.inf
        self.writes = 0

    def update(self, row: dict[str, Any]) -> None:
        """Record a unit's row; write the table if the last write is old enough."""
        self.rows[row["unit_id"]] = row
        if self.clock() - self.written_at >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Replace the file now, atomically (temp file + rename)."""
        self.fs.makedirs(self.fs._parent(self.path), exist_ok=True)
        with self.fs.open(self.path + ".tmp", "w") as f:
            json.dump(sorted(self.rows.values(), key=lambda r: r["unit_id"]), f, indent=1)
        self.fs.mv(self.path + ".tmp", self.path)
        self.written_at, self.writes = self.clock(), self.writes + 1


def run_ingest(
    cfg: IngestConfig,
    progress: Callable[[UnitResult, int, int], None] | None = None,
    *,
    units: list[Unit] | None = None,
    _fail_units: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Plan, run every incomplete unit on Ray, return a summary.

    `units` runs a plan the caller already made (and wrote) instead of planning here.

    A unit whose task raises (a bug, a crashed worker) is recorded as failed with the
    error and the run goes on. `_fail_units` (tests only): substrings of unit ids whose
    task raises after reading.
    """
    t0 = time.perf_counter()
    plan = plan_or_load(cfg) if units is None else Plan(units)
    units = plan.units
    t_plan = time.perf_counter() - t0
    cube_url = _url(cfg.run_dir, CUBE_NAME)
    cube = open_cube(cube_url)
    todo = [u for u in units if not is_complete(cube, u.unit_id)]
    status = StatusTable(cfg)
    todo_ids = {u.unit_id for u in todo}
    for u in units:
        if u.unit_id not in todo_ids:
            status.rows.setdefault(
                u.unit_id, {"unit_id": u.unit_id, "status": "done", "reason": ""}
            )

    calls = [
        (u, cube_url, cfg.chip_size, cfg.max_concurrent_reads,
         block_size_for(cfg.chip_size, cfg.block_size), any(s in u.unit_id for s in _fail_units))
        for u in todo
    ]  # fmt: skip
    results: list[UnitResult] = []
    for index, result, error in imap_unordered(
        process_unit, calls, cfg.max_concurrent_units, address=cfg.address
    ):
        if error is not None:
            reason = redact(f"{type(error).__name__}: {error}")
            log.warning("unit %s raised: %s", todo[index].unit_id, reason)
            result = UnitResult(todo[index].unit_id, "failed", reason)
        results.append(result)
        status.update({
            "unit_id": result.unit_id, "status": result.status, "reason": result.reason,
            "read_s": round(result.read_s, 3), "write_s": round(result.write_s, 3),
            "bytes_read": result.bytes_read, "valid_fraction": round(result.valid_fraction, 4),
        })  # fmt: skip
        if progress:
            progress(result, len(results), len(todo))
    status.flush()
    done = [r for r in results if r.status == "done"]
    elapsed = time.perf_counter() - t0
    return {
        "units": len(units),
        "skipped_complete": len(units) - len(todo),
        "done": len(done),
        "failed": [(r.unit_id, r.reason) for r in results if r.status == "failed"],
        "skipped_items": [(s.item_id, s.reason) for s in plan.skipped],
        "plan_s": round(t_plan, 2),
        "read_s": round(sum(r.read_s for r in done), 2),
        "write_s": round(sum(r.write_s for r in done), 2),
        "elapsed_s": round(elapsed, 2),
        "mb_read": round(sum(r.bytes_read for r in done) / 1e6, 1),
        "cube": cube_url,
    }
