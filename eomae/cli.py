"""The `eomae` command line.

    eomae world runs/demo/world            generate the sample world (COGs + STAC)
    eomae serve runs/demo/world            serve it: STAC API (pgstac) + COG server
    eomae search --catalog URL --bbox ...  search a STAC API (default Planetary Computer)
    eomae ingest --catalog URL --bbox W,S,E,N --start D --end D --run-dir RUN
                                           STAC -> co-registered zarr cube (Ray)
    eomae shard --run-dir RUN              cube -> chips -> spatial splits -> WebDataset shards
    eomae verify RUN/shards                re-check every shard, sample and member
    eomae inspect RUN/shards               statistics + a PNG of random samples
    eomae pretrain --run-dir RUN           MultiMAE pretraining on Ray Train
    eomae export RUN/pretrain/NAME         the pretrained encoder + its config, for evaluation
    eomae evaluate --run-dir RUN           probes, kNN, fine-tuning per input subset -> report
    eomae bench loader|train               ratios against the alternatives (median, spread)
    eomae demo                             world -> services -> ingest -> shard -> verify

Every command takes `--config FILE.yaml`; flags override the file. Run
`eomae COMMAND --help` for the fields, each with its description.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, CliApp, CliPositionalArg, CliSubCommand
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from eomae.bench_cli import BenchCommand
from eomae.config import Command, ConfigFileError, describe_validation_error, expand_config
from eomae.evaluation_cli import EvaluateCommand
from eomae.shards_cli import (
    InspectCommand,
    ProblemsFound,
    ShardCommand,
    VerifyCommand,
    run_shard_with_progress,
)
from eomae.training_cli import ExportCommand, PretrainCommand
from evaluation.benchmarks import BenchmarkError
from evaluation.run import EvaluationError
from infra.services import LocalServices, ServiceError
from infra.world import WorldConfig, WorldError, generate_world
from ingest.catalog import PLANETARY_COMPUTER, CatalogError, open_catalog, search_items
from ingest.config import BBox, IngestConfig, check_bbox
from ingest.raster import ReadError
from ingest.run import UnitResult, run_ingest
from ingest.sources import dem, sentinel2, worldcover
from shards.config import ShardConfig
from shards.manifest import ShardSetError
from shards.verify import verify
from training.export import CheckpointError
from training.pretrain import PretrainError

console = Console(stderr=True)
DEFAULT_RUN_DIR = Path("runs/demo")


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

    def cli_cmd(self) -> None:
        """Start, print the URLs, serve until Ctrl-C or SIGTERM, stop cleanly."""
        state = self.state_dir or self.world.resolve().parent / "services"
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with LocalServices(
            self.world, state, stac_port=self.stac_port, cog_port=self.cog_port
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
        client = open_catalog(self.catalog)
        sortby = "eo:cloud_cover" if self.collection == sentinel2.COLLECTION else None
        items = search_items(
            client,
            self.collection,
            bbox=self.bbox,
            datetime=self.datetime,
            max_cloud_cover=self.max_cloud_cover,
            sortby=sortby,
            limit=self.limit,
        )
        print_items(items, title=f"{self.collection} @ {client.self_href}")


class IngestCommand(IngestConfig, Command):
    """Ingest co-registered Sentinel-2, DEM and WorldCover from a STAC API into a zarr cube."""

    def cli_cmd(self) -> None:
        """Plan, run on Ray with a live progress bar, print the summary."""
        cfg = IngestConfig(**self.model_dump(include=set(IngestConfig.model_fields)))
        summary = run_ingest_with_progress(cfg)
        if summary["failed"]:
            raise IngestFailed(f"{len(summary['failed'])} units failed; see the status table")


class DemoCommand(Command):
    """The README's first command: sample world, local services, ingest, shards, verify."""

    run_dir: Path = Field(DEFAULT_RUN_DIR, description="Run directory for the world and services.")
    max_cloud_cover: float = Field(
        30.0, ge=0, le=100, description="Cloud filter of the demo search (percent)."
    )

    def cli_cmd(self) -> None:
        """Generate (or reuse) the world, serve it, search, ingest, stop; shard and verify."""
        world = self.run_dir / "world"
        run_world(world, WorldConfig(), force=False)
        t0 = time.perf_counter()
        with LocalServices(world, self.run_dir / "services") as svc:
            console.print(
                f"services up in {time.perf_counter() - t0:.1f} s: STAC API "
                f"{svc.stac_url}, COG server {svc.cog_url}"
            )
            client = open_catalog(svc.stac_url)
            region = world_region(world)
            for coll in (dem.COLLECTION, worldcover.COLLECTION):
                found = search_items(client, coll, bbox=region)
                console.print(f"{coll}: {len(found)} items cover the region {region}")
            scenes = search_items(
                client,
                sentinel2.COLLECTION,
                bbox=region,
                datetime="2021-01-01/2022-12-31",
                max_cloud_cover=self.max_cloud_cover,
                sortby="eo:cloud_cover",
            )
            print_items(scenes, title=f"Sentinel-2 L2A with cloud cover <= {self.max_cloud_cover}%")
            ingest = IngestConfig(
                catalog=svc.stac_url,
                bbox=[tuple(region)],
                start=date(2021, 1, 1),
                end=date(2022, 12, 31),
                max_cloud_cover=self.max_cloud_cover,
                run_dir=str(self.run_dir),
            )
            run_ingest_with_progress(ingest)
        console.print("services stopped")
        shards = ShardConfig(run_dir=str(self.run_dir), chip_size=ingest.chip_size)
        run_shard_with_progress(shards)
        problems = verify(shards.out_url)
        if problems:
            raise ProblemsFound(f"{len(problems)} problems in {shards.out_url}: {problems[:3]}")
        console.print(f"shards in {shards.out_url} verified; `eomae inspect` shows samples")


class Eomae(
    BaseSettings,
    cli_prog_name="eomae",
    cli_kebab_case=True,
    cli_implicit_flags=True,
    env_prefix="EOMAE_CLI_",
):
    """eomae: Earth-observation foundation-model pipeline (STAC -> cube -> shards -> model)."""

    world: CliSubCommand[WorldCommand] = Field(description=WorldCommand.__doc__)
    serve: CliSubCommand[ServeCommand] = Field(description=ServeCommand.__doc__)
    search: CliSubCommand[SearchCommand] = Field(description=SearchCommand.__doc__)
    ingest: CliSubCommand[IngestCommand] = Field(description=IngestCommand.__doc__)
    shard: CliSubCommand[ShardCommand] = Field(description=ShardCommand.__doc__)
    verify: CliSubCommand[VerifyCommand] = Field(description=VerifyCommand.__doc__)
    inspect: CliSubCommand[InspectCommand] = Field(description=InspectCommand.__doc__)
    pretrain: CliSubCommand[PretrainCommand] = Field(description=PretrainCommand.__doc__)
    export: CliSubCommand[ExportCommand] = Field(description=ExportCommand.__doc__)
    evaluate: CliSubCommand[EvaluateCommand] = Field(description=EvaluateCommand.__doc__)
    bench: CliSubCommand[BenchCommand] = Field(description=BenchCommand.__doc__)
    demo: CliSubCommand[DemoCommand] = Field(description=DemoCommand.__doc__)

    def cli_cmd(self) -> None:
        """Dispatch to the chosen subcommand."""
        CliApp.run_subcommand(self)


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
    out = Console()
    out.width = max(out.width, 140)
    out.print(table)
    return summary


def world_region(world: Path) -> list[float]:
    """The lon/lat box of a world, from its ground-truth record."""
    import json

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    # Commands print their own summaries; EOMAE_LOG=INFO shows every phase of the services.
    logging.basicConfig(
        level=os.environ.get("EOMAE_LOG", "WARNING").upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console)],
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry chatter hides our errors
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        CliApp.run(Eomae, cli_args=expand_config(args))
    except ValidationError as e:
        console.print(f"[red]error:[/red] invalid arguments\n{describe_validation_error(e)}")
        return 2
    except ProblemsFound as e:
        console.print(f"[red]{e}[/red]")
        return 1
    except (
        WorldError, CatalogError, ConfigFileError, ServiceError, IngestFailed, ReadError,
        ShardSetError, PretrainError, CheckpointError, EvaluationError, BenchmarkError,
    ) as e:  # fmt: skip
        console.print(f"[red]error:[/red] {e}")
        return 2
    except SystemExit as e:  # argparse: --help (0) or unknown flags (2, message printed)
        return int(e.code or 0)
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
