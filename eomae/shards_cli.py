"""`eomae shard`, `eomae verify`, `eomae inspect`: the shard stage's commands."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import CliPositionalArg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eomae.config import Command
from shards.config import SPLITS, ShardConfig
from shards.manifest import Manifest
from shards.modalities import MODALITIES, VALID
from shards.preview import describe, preview
from shards.run import run_shard
from shards.verify import verify

console = Console(stderr=True)


class ProblemsFound(RuntimeError):
    """`verify` found problems (exit status 1; they were printed)."""


def summary_table(summary: dict[str, Any]) -> Table:
    """Samples, shards and bytes per split; what was dropped; timings."""
    table = Table(title=f"shards: {summary['config']} from {summary['cube']}")
    for col in ("split", "samples", "shards", "MB"):
        table.add_column(col, justify="right")
    for split in SPLITS:
        entries = [s for s in summary["shards"] if s["split"] == split]
        table.add_row(
            split,
            str(sum(s["samples"] for s in entries)),
            str(len(entries)),
            f"{sum(s['bytes'] for s in entries) / 1e6:.1f}",
        )
    ratio = Manifest.model_validate(summary).sizes()["bytes_ratio"]
    table.add_row("bytes / raw arrays", "", "", f"{ratio:.3f}")
    for reason, n in summary["dropped"].items():
        table.add_row(f"chips: {reason}", str(n), "", "")
    for key in ("plan_s", "write_s", "stats_s", "elapsed_s"):
        if key in summary:
            table.add_row(key, str(summary[key]), "", "")
    return table


def run_shard_with_progress(cfg: ShardConfig) -> dict[str, Any]:
    """Run `eomae shard` with a progress bar per phase, then print the summary table."""
    columns = (
        TextColumn("{task.description} {task.completed}/{task.total}"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(
                    {"scan": "scan units", "write": "write shards", "stats": "statistics"}[phase],
                    total=total,
                )
            bar.update(tasks[phase], completed=done, total=total)

        summary = run_shard(cfg, progress=update)
    if summary["kept"]:
        console.print(f"shard set in {cfg.out_url} is up to date; --force rewrites it")
    out = Console()
    out.width = max(out.width, 120)
    out.print(summary_table(summary))
    return summary


class ShardCommand(ShardConfig, Command):
    """Cut the cube into chips, split them spatially, write WebDataset shards + manifest."""

    def cli_cmd(self) -> None:
        """Shard with progress bars and print the summary."""
        run_shard_with_progress(
            ShardConfig(**self.model_dump(include=set(ShardConfig.model_fields)))
        )


class VerifyCommand(Command):
    """Re-read a shard set and report every problem (exit status 1 if there is any)."""

    shards: CliPositionalArg[str] = Field(description="Shard set directory (path or fsspec URL).")

    def cli_cmd(self) -> None:
        """Verify with a progress bar; print the problems, one per line."""
        columns = (TextColumn("verify {task.completed}/{task.total} shards"), BarColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("verify", total=None)
            problems = verify(
                self.shards, lambda done, total: bar.update(task, completed=done, total=total)
            )
        for p in problems:
            where = f"{p.shard}" + (f" [{p.sample}]" if p.sample else "")
            console.print(f"[red]{p.kind}[/red] {where}: {p.detail}")
        if problems:
            raise ProblemsFound(f"{len(problems)} problems in {self.shards}")
        console.print(f"{self.shards}: every shard, sample and member checks out")


class InspectCommand(Command):
    """Write a PNG of random samples (true colour, hillshade, land cover, mask) + statistics."""

    shards: CliPositionalArg[str] = Field(description="Shard set directory (path or fsspec URL).")
    png: str | None = Field(None, description="Output PNG (default: SHARDS/preview.png).")
    n: int = Field(8, ge=1, le=64, description="Number of samples shown.")
    split: str | None = Field(None, description=f"Only this split ({', '.join(SPLITS)}).")
    seed: int = Field(0, description="Seed of the sample choice.")

    def cli_cmd(self) -> None:
        """Print the dataset statistics and write the preview."""
        print(describe(self.shards))
        png = self.png or f"{self.shards.rstrip('/')}/preview.png"
        written = preview(self.shards, png, n=self.n, seed=self.seed, split=self.split)
        console.print(f"preview of {self.n} samples ({', '.join([*MODALITIES, VALID])}): {written}")
