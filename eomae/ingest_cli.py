"""`eomae world`, `serve`, `search`, `sample`, `ingest`: the commands before the cube exists."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import CliPositionalArg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eomae.config import Command
from infra.services import LocalServices
from infra.world import WorldConfig, generate_world
from ingest.catalog import PLANETARY_COMPUTER, open_catalog
from ingest.config import BBox, IngestConfig, bbox_geometry, check_bbox
from ingest.grid import parts
from ingest.locations import SampleConfig, sample_locations, summary, write_cells
from ingest.run import UnitResult, run_ingest
from ingest.sources import sentinel2

console = Console(stderr=True)


class WorldCommand(WorldConfig, Command):
    """Generate the sample world: Sentinel-2 L2A, Copernicus DEM, WorldCover as COGs + STAC."""

    out: CliPositionalArg[Path] = Field(description="Directory to write the world into.")
    force: bool = Field(False, description="Regenerate even if an identical world is there.")

    def cli_cmd(self) -> None:
        """Generate with a progress bar, then summarise what was written."""
        cfg = WorldConfig(**self.model_dump(include=set(WorldConfig.model_fields)))
        run_world(self.out, cfg, force=self.force)


class ServeCommand(Command):
    """Serve a world: a STAC API (stac-fastapi-pgstac on PostgreSQL) and a COG server."""

    world: CliPositionalArg[Path] = Field(description="World directory made by `eomae world`.")
    state_dir: Path | None = Field(
        None, description="Where the database cluster and logs live (default: WORLD/../services)."
    )
    stac_port: int | None = Field(
        None, ge=1, le=65535, description="STAC API port (default: free)."
    )
    cog_port: int | None = Field(
        None, ge=1, le=65535, description="COG server port (default: free)."
    )
    cog_latency_ms: float = Field(
        0.0, ge=0, description="Delay added to every COG request, as remote storage has."
    )

    def cli_cmd(self) -> None:
        """Start, print the URLs, serve until Ctrl-C or SIGTERM, stop cleanly."""
        state = self.state_dir or self.world.resolve().parent / "services"
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with LocalServices(
            self.world,
            state,
            stac_port=self.stac_port,
            cog_port=self.cog_port,
            cog_latency_ms=self.cog_latency_ms,
        ) as svc:
            console.print(f"STAC API   {svc.stac_url}")
            console.print(f"COG server {svc.cog_url}")
            console.print("serving; Ctrl-C to stop")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
        console.print("services stopped")


class SampleCommand(SampleConfig, Command):
    """Choose a corpus's locations: cells of the chip grid, written as GeoParquet."""

    def cli_cmd(self) -> None:
        """Sample, write, and say how many cells, tiles and zones."""
        cfg = SampleConfig(**self.model_dump(include=set(SampleConfig.model_fields)))
        with console.status(f"sampling locations ({cfg.strategy})"):
            cells = sample_locations(cfg)
            path = write_cells(cells, cfg.out)
        counts = summary(cells)
        merged = (
            f", {counts['duplicates']} points merged into cells" if counts["duplicates"] else ""
        )
        console.print(f"{counts['cells']} cells of {cfg.chip_size} px in {counts['tiles']} MGRS "
                      f"tiles, {counts['zones']} UTM zones{merged}: {path}")  # fmt: skip


class SearchCommand(Command):
    """Search a STAC API and list the items found."""

    catalog: str = Field(
        PLANETARY_COMPUTER, description="`planetary-computer` or the URL of any STAC API."
    )
    collection: str = Field(sentinel2.COLLECTION, description="Collection id to search.")
    bbox: BBox | None = Field(None, description="West, south, east, north in degrees (EPSG:4326).")
    datetime: str | None = Field(None, description="RFC 3339 instant or interval, `a/b`.")
    max_cloud_cover: float | None = Field(
        None, ge=0, le=100, description="Keep items with eo:cloud_cover at most this (percent)."
    )
    limit: int = Field(100, ge=1, le=1000, description="Page size asked of the API.")

    @field_validator("bbox")
    @classmethod
    def _valid_bbox(cls, v: BBox | None) -> BBox | None:
        return None if v is None else check_bbox(v)

    def cli_cmd(self) -> None:
        """Run the search and print a table of the items."""
        catalog = open_catalog(self.catalog)
        sortby = "eo:cloud_cover" if self.collection == sentinel2.COLLECTION else None
        # A box across 180° is searched as its two halves: STAC APIs differ on west > east.
        boxes = [None] if self.bbox is None else [g.bounds for g in parts(bbox_geometry(self.bbox))]
        found: dict[str, Any] = {}
        for bbox in boxes:
            for item in catalog.search(
                self.collection,
                bbox=bbox,
                datetime=self.datetime,
                max_cloud_cover=self.max_cloud_cover,
                sortby=sortby,
                limit=self.limit,
            ):
                found.setdefault(item.id, item)
        items = list(found.values())
        print_items(items, title=f"{self.collection} @ {catalog.url}")


class IngestCommand(IngestConfig, Command):
    """Ingest co-registered Sentinel-2, DEM and WorldCover from a STAC API into a zarr cube."""

    def cli_cmd(self) -> None:
        """Plan, run on Ray with a live progress bar, print the summary."""
        cfg = IngestConfig(**self.model_dump(include=set(IngestConfig.model_fields)))
        summary = run_ingest_with_progress(cfg)
        if summary["failed"]:
            raise IngestFailed(f"{len(summary['failed'])} units failed; see the status table")


def run_world(out: Path, cfg: WorldConfig, *, force: bool) -> None:
    """Generate a world with a progress bar and print a one-line summary."""
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("world", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        made = generate_world(out, cfg, force=force, progress=update)
    if not made:
        console.print(f"world in {out} is up to date (seed {cfg.seed}); --force regenerates it")
        return
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    console.print(
        f"world written to {out}: {cfg.tiles} tiles x {cfg.dates} dates of "
        f"{cfg.tile_size} px, {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s"
    )


class IngestFailed(RuntimeError):
    """Some units failed (the run itself finished and recorded why)."""


def run_ingest_with_progress(cfg: IngestConfig) -> dict[str, Any]:
    """Run an ingest with a live progress bar (units, MB read, rate, ETA) and a summary."""
    columns = (
        TextColumn("ingest {task.completed}/{task.total} units"),
        BarColumn(),
        TextColumn("{task.fields[failed]} failed · {task.fields[mb]:.0f} MB read"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("ingest", total=None, failed=0, mb=0.0)
        failed, mb = 0, 0.0

        def update(result: UnitResult, done: int, total: int) -> None:
            nonlocal failed, mb
            failed += result.status == "failed"
            mb += result.bytes_read / 1e6
            bar.update(task, completed=done, total=total, failed=failed, mb=mb)

        summary = run_ingest(cfg, progress=update)
    table = Table(title=f"ingest: {summary['cube']}")
    for key in ("units", "skipped_complete", "done", "plan_s", "read_s", "write_s",
                "elapsed_s", "mb_read"):  # fmt: skip
        table.add_row(key, str(summary[key]))
    for unit_id, reason in summary["failed"]:
        table.add_row(f"FAILED {unit_id}", reason)
    for item_id, reason in summary["skipped_items"]:
        table.add_row(f"skipped item {item_id}", reason)
    out = Console()
    out.width = max(out.width, 140)
    out.print(table)
    return summary


def world_region(world: Path) -> list[float]:
    """The lon/lat box of a world, from its ground-truth record."""
    return json.loads((world / "truth.json").read_text())["region"]


def print_items(items: list[Any], title: str) -> None:
    """A table of STAC items: id, date, tile, cloud cover, baseline."""
    table = Table(title=f"{title}: {len(items)} items")
    for col in ("id", "datetime", "tile", "cloud %", "baseline"):
        table.add_column(col)
    for it in items:
        p = it.properties
        cloud = p.get("eo:cloud_cover")
        table.add_row(
            it.id,
            str(p.get("datetime") or p.get("start_datetime"))[:19],
            str(p.get("s2:mgrs_tile", "")),
            "" if cloud is None else f"{cloud:.1f}",
            str(p.get("s2:processing_baseline", "")),
        )
    out = Console()
    out.width = max(out.width, 140)  # full item ids even when piped
    out.print(table)
