"""`eomae bench loader|train|ingest|masks|corpus`: ratios measured side by side, median and spread.

Every bench writes RUN/bench/NAME.json (configuration, every repeat's raw rates, the
figures as median / min / max) and RUN/bench/NAME.png (a bar chart of the figures),
and prints a table. This machine is shared and noisy, so only ratios of two things
measured in the same run are reported, never bare rates from different runs.
"""

from __future__ import annotations

import json
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
from pydantic import Field, model_validator
from pydantic_settings import CliApp, CliPositionalArg, CliSubCommand
from rich.console import Console
from rich.table import Table

from eomae.bench_corpus import cost_model, memory_per_task, plan_scaling, reads_per_wanted_pixel
from eomae.config import Command
from infra.services import LocalServices
from infra.world import WorldConfig, generate_world
from infra.world.big_tile import write_big_tile
from ingest.bench import (
    ALTERNATIVES,
    ARRAYS,
    ODC_MISSING,
    IngestBenchConfig,
    bench_ingest,
    ingest_ratios,
)
from ingest.locations import SampleConfig, sample_locations, write_cells
from shards.bench import bench_loader, size_ratio
from shards.config import join_url
from training.bench import TrainBenchConfig, bench_train, train_ratios
from training.bench_masks import bench_masks

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

console = Console(stderr=True)
BENCH_DIR = "bench"


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": gpu}  # fmt: skip


def report(
    name: str,
    out_dir: Path,
    figures: dict[str, list[float]],
    rows: list[dict[str, Any]],
    config: dict[str, Any],
    goals: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write NAME.json and NAME.png under `out_dir`, print the table; return the record.

    `extra` (e.g. an agreement check) is stored in the JSON beside the figures.
    """
    summary = {k: spread(v) for k, v in figures.items()}
    record = {
        "bench": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": config,
        "figures": summary,
        "goals": goals,
        "repeats": rows,
        **(extra or {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(summary), 3.2))
    keys = list(summary)
    medians = [summary[k]["median"] for k in keys]
    errors = [[m - summary[k]["min"] for k, m in zip(keys, medians, strict=True)],
              [summary[k]["max"] - m for k, m in zip(keys, medians, strict=True)]]  # fmt: skip
    ax.bar(range(len(keys)), medians, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right", fontsize=8)
    ax.set_title(f"eomae bench {name} (median, min-max of {len(next(iter(figures.values())))})")
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    plt.close(fig)

    table = Table(title=f"bench {name}: {out_dir / (name + '.json')}")
    for col in ("figure", "median", "min", "max", "goal"):
        table.add_column(col)
    for k, s in summary.items():
        table.add_row(k, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}",
                      goals.get(k, ""))  # fmt: skip
    Console().print(table)
    return record


class BenchLoaderCommand(Command):
    """Loader samples/s ÷ decoding the same samples from memory, 0/1/2 workers; bytes ratio."""

    shards: CliPositionalArg[str] = Field(description="Shard set (path or fsspec URL).")
    split: str = Field("train", description="Split to read.")
    workers: list[int] = Field([0, 1, 2], description="DataLoader worker counts to measure.")
    batch_size: int = Field(32, ge=1, description="Samples per batch.")
    samples: int = Field(2048, ge=1, description="Samples per measurement.")
    repeats: int = Field(3, ge=1, description="Repeats per worker count (median, spread).")
    out: Path | None = Field(None, description="Output directory (default: SHARDS/../bench).")

    def cli_cmd(self) -> None:
        """Measure, then report."""
        rows = bench_loader(self.shards, self.split, self.workers, self.batch_size,
                            self.samples, self.repeats, log=console.print)  # fmt: skip
        figures = {
            f"loader/memory {n}w": [r["loader"] / r["memory"] for r in rows if r["workers"] == n]
            for n in self.workers
        }
        sizes = size_ratio(self.shards)
        figures["shard/array bytes"] = [sizes["bytes_ratio"]]
        goals = {k: ">= 0.9" for k in figures} | {"shard/array bytes": "<= 1.05"}
        out = self.out or Path(join_url(self.shards, "..")).resolve() / BENCH_DIR
        config = self.model_dump(mode="json") | sizes
        report("loader", out, figures, rows, config, goals)


class BenchTrainCommand(TrainBenchConfig, Command):
    """Ray Train samples/s ÷ plain DDP; data stall (real vs in-memory batches); MFU."""

    def cli_cmd(self) -> None:
        """Measure, then report."""
        cfg = TrainBenchConfig(**self.model_dump(include=set(TrainBenchConfig.model_fields)))
        rows = bench_train(cfg, log=console.print)
        ratios = [train_ratios(r) for r in rows]
        figures = {k: [r[k] for r in ratios] for k in ratios[0]}
        out = Path(cfg.run_dir).resolve() / BENCH_DIR
        goals = {"ray_vs_plain": ">= 0.97", "data_stall": "<= 0.05", "outside_model": "<= 0.05",
                 "mfu": ">= 0.45"}  # fmt: skip
        report("train", out, figures, rows, cfg.model_dump(mode="json"),
               {k: v for k, v in goals.items() if k in figures})  # fmt: skip


class BenchIngestCommand(IngestBenchConfig, Command):
    """eomae's Ray ingest chips/s ÷ a naive rasterio loop and ÷ odc-stac, on the same units."""

    world: Path | None = Field(
        None,
        description="A sample world (`eomae world DIR`) to serve with the local services and "
        "bench on: the served STAC API is the catalog, and the world's region, 2021-2022 and "
        "every scene (cloud limit 100) are the defaults of --bbox, --start, --end and "
        "--max-cloud-cover.",
    )
    cog_latency_ms: float = Field(
        0.0,
        ge=0,
        description="With --world: delay added to every COG request, standing in for remote "
        "object storage (on localhost a read costs CPU only).",
    )

    @model_validator(mode="before")
    @classmethod
    def _world_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("world"):
            return data
        truth = Path(data["world"]) / "truth.json"
        if not truth.is_file():
            raise ValueError(f"--world {data['world']} is not a sample world (no truth.json); "
                             "make one with `eomae world DIR`")  # fmt: skip
        defaults = {"bbox": [json.loads(truth.read_text())["region"]], "start": "2021-01-01",
                    "end": "2022-12-31", "max_cloud_cover": 100.0}  # fmt: skip
        return defaults | {k: v for k, v in data.items() if v is not None}

    @model_validator(mode="after")
    def _latency_needs_world(self) -> BenchIngestCommand:
        if self.cog_latency_ms and self.world is None:
            raise ValueError("--cog-latency-ms delays the served world's COGs: give --world")
        return self

    def cli_cmd(self) -> None:
        """Serve the world if asked, measure, then report."""
        out = Path(self.run_dir).resolve() / BENCH_DIR
        fields = self.model_dump(include=set(IngestBenchConfig.model_fields))
        if self.world is None:
            run_ingest_bench(IngestBenchConfig(**fields), out)
            return
        latency = self.cog_latency_ms
        with LocalServices(self.world, out / "services", cog_latency_ms=latency) as svc:
            if latency:
                console.print(f"COG server: {latency:g} ms added to every request")
            cfg = IngestBenchConfig(**{**fields, "catalog": svc.stac_url})
            run_ingest_bench(cfg, out, {"world": str(self.world), "cog_latency_ms": latency})


def run_ingest_bench(
    cfg: IngestBenchConfig, out: Path, served: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`eomae bench ingest`: measure, print where the time went and the agreement, report.

    `served`: how the local services were set up (world, latency), kept in the report.
    """
    result = bench_ingest(cfg, out / "ingest-work", log=console.print)
    rows = result.pop("rows")
    ratios = [ingest_ratios(r) for r in rows]
    figures = {k: [r[k] for r in ratios] for k in ratios[0]}
    # the cube's layout against its previous one (a file per chip), CPU to write one unit
    figures["write cpu: per-chip/sharded"] = [
        w["file_per_chip_cpu_s"] / w["sharded_cpu_s"] for w in result["cube_write"]
    ]
    names = [n for n in ALTERNATIVES if n in rows[0]]
    steps = Table(title="seconds per run (median); eomae's read/write are summed over its tasks")
    for col in ("", "total", "search / plan", "read", "write", "chips/s"):
        steps.add_column(col)
    for n in names:
        keys = ("seconds", "search_s", "plan_s", "read_s", "write_s", "chips_per_s")
        med = {k: statistics.median(float(r[n].get(k, 0.0)) for r in rows) for k in keys}
        steps.add_row(n, f"{med['seconds']:.2f}", f"{med['search_s'] + med['plan_s']:.2f}",
                      f"{med['read_s']:.2f}", f"{med['write_s']:.2f}",
                      f"{med['chips_per_s']:.0f}")  # fmt: skip
    agree = Table(title="same arrays as eomae? fraction of equal pixels (worst unit)")
    for col in ("", "agrees", *ARRAYS, "dem mean |diff| m"):
        agree.add_column(col)
    for n, check in result["agreement"].items():
        arrays = check["arrays"]
        agree.add_row(n, "yes" if check["agrees"] else "NO",
                      *(f"{arrays[a]['equal_fraction']:.4f}" for a in ARRAYS),
                      f"{arrays['dem']['mean_abs_diff']:.3f}")  # fmt: skip
    Console().print(steps, agree)
    if not result["odc_stac"]:
        result["odc_stac"] = f"skipped: {ODC_MISSING}"
    goals = {"eomae/naive": ">= 5", "eomae/odc-stac": ">= 1.2"}
    config = cfg.model_dump(mode="json") | (served or {})
    latency = config.get("cog_latency_ms") or 0
    name = f"ingest-{latency:g}ms" if latency else "ingest"  # both settings kept side by side
    return report(name, out, figures, rows, config, goals, result)


class BenchMasksCommand(Command):
    """MultiMAE's masking: ms per batch of masks; forward_encoder ÷ the encoder alone."""

    batch: int = Field(1024, ge=1, description="Samples per batch.")
    size: str = Field("tiny", description="Encoder size (tiny, small, base).")
    repeats: int = Field(3, ge=1, description="Repeats (median, spread).")
    device: str = Field("cpu", description="torch device (cpu, cuda).")
    run_dir: Path = Field(Path("runs/demo"), description="Run directory; RUN/bench gets it.")

    def cli_cmd(self) -> None:
        """Measure, then report."""
        rows = bench_masks(self.batch, self.size, self.repeats, self.device)
        figures = {k: [r[k] for r in rows] for k in ("masks_ms", "encoder_ratio")}
        goals = {"masks_ms": "<= 5 (batch 1024, 2-core CPU)", "encoder_ratio": "<= 1.5"}
        report("masks", self.run_dir.resolve() / BENCH_DIR, figures, rows,
               self.model_dump(mode="json"), goals)  # fmt: skip


class BenchCorpusCommand(Command):
    """A corpus at scale: memory per task, pixels read per wanted pixel, plan time, cost."""

    run_dir: Path = Field(Path("runs/demo"), description="Run directory; RUN/bench gets it.")
    work: Path | None = Field(
        None,
        description="Scratch directory (default RUN/bench/corpus-work); the tiles written "
        "there are kept and reused (the 10980 px one takes ~5 minutes).",
    )
    tiles: list[int] = Field([600, 10980], description="Tile sizes (px) of the memory runs.")
    block_size: int = Field(512, ge=8, description="Ingest's --block-size in the memory runs.")
    cells: int = Field(20, ge=2, description="Scattered cells of the reads run.")
    plan_sizes: list[int] = Field(
        [1_000, 10_000, 100_000], description="Corpus sizes (cells) planned from a snapshot."
    )
    plan_tiles: int = Field(200, ge=1, description="Sentinel-2 tiles of the planned world.")

    def cli_cmd(self) -> None:
        """Measure the four, model the cost, report."""
        out = self.run_dir.resolve() / BENCH_DIR
        work = (self.work or out / "corpus-work").resolve()
        tiles = {}
        for size in self.tiles:
            items = work / f"tile-{size}" / "items.json"
            if not items.exists():
                console.print(f"writing a {size} px tile to {items.parent}")
                write_big_tile(items.parent, size)
            tiles[size] = items
        console.print("memory: one unit of each tile, each in a fresh process")
        memory = memory_per_task(tiles, work, block_size=self.block_size)
        console.print(f"reads: {self.cells} cells over the served sample world")
        reads = self._reads(work)
        console.print(f"plan: {self.plan_sizes} cells from a snapshot of {self.plan_tiles} tiles")
        plan = plan_scaling(work / "plan", tuple(self.plan_sizes), n_tiles=self.plan_tiles)
        small, big = memory[0], memory[-1]
        located = next(r for r in reads if r["how"] == "locations")
        chips = located["chips_per_unit"]
        overhead = max(located["task_s_per_unit"] - chips / big["chips_per_cpu_s"], 0.0)
        cost = cost_model(big["chips_per_cpu_s"], overhead, big["cube_bytes_per_px"],
                          plan[-1]["s_per_10k"])  # fmt: skip
        figures = {
            f"peak rss {big['tile_px']}/{small['tile_px']} px": [
                big["peak_rss_mb"] / small["peak_rss_mb"]
            ],
            f"peak rss MB {big['tile_px']} px": [big["peak_rss_mb"]],
            "grid px / wanted (locations)": [located["grid_per_wanted"]],
            "s2 bytes sent / native (locations)": [located["s2_fetched_per_native"]],
            f"plan s per 10k ({plan[-1]['cells']} cells)": [plan[-1]["s_per_10k"]],
            "chips per cpu s": [big["chips_per_cpu_s"]],
        }
        aims = ("<= 1.2", "<= 1500", "<= 1.2", "", "flat in cells", "")
        goals = dict(zip(figures, aims, strict=True))
        rows = [{"memory": memory, "reads": reads, "plan": plan}]
        report("corpus", out, figures, rows, self.model_dump(mode="json"), goals, {"cost": cost})
        console.print_json(json.dumps(cost))

    def _reads(self, work: Path) -> list[dict[str, Any]]:
        world = work / "world"
        generate_world(world, WorldConfig())
        region = json.loads((world / "truth.json").read_text())["region"]
        sample = SampleConfig(strategy="uniform", bbox=[tuple(region)], count=self.cells,
                              min_distance_km=1.0)  # fmt: skip
        locations = write_cells(sample_locations(sample), work / "locations.parquet")
        with LocalServices(world, work / "services") as services:
            return reads_per_wanted_pixel(services.stac_url, services.cog_url, locations,
                                          work / "reads")  # fmt: skip


class BenchCommand(Command):
    """Benchmarks: ratios against what users would use instead (see docs/benchmarks.md)."""

    loader: CliSubCommand[BenchLoaderCommand] = Field(description=BenchLoaderCommand.__doc__)
    train: CliSubCommand[BenchTrainCommand] = Field(description=BenchTrainCommand.__doc__)
    ingest: CliSubCommand[BenchIngestCommand] = Field(description=BenchIngestCommand.__doc__)
    masks: CliSubCommand[BenchMasksCommand] = Field(description=BenchMasksCommand.__doc__)
    corpus: CliSubCommand[BenchCorpusCommand] = Field(description=BenchCorpusCommand.__doc__)

    def cli_cmd(self) -> None:
        """Dispatch to the chosen benchmark."""
        CliApp.run_subcommand(self)
