"""`eomae pretrain` and `eomae export`: the training stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import CliPositionalArg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eomae.config import Command
from training.config import PretrainConfig
from training.export import export_encoder
from training.pretrain import run_pretrain

console = Console(stderr=True)


def print_pretrain_summary(summary: dict[str, Any]) -> None:
    """The run's last metrics, checkpoint and figures."""
    table = Table(title=f"pretrain {summary['name']}: {summary['dir']}")
    for key, value in summary["metrics"].items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("checkpoint", str(summary["checkpoint"]))
    table.add_row("metrics", summary["metrics_file"])
    for png in summary["plots"][-2:]:
        table.add_row("figure", png)
    table.add_row("elapsed_s", str(summary["elapsed_s"]))
    out = Console()
    out.width = max(out.width, 120)
    out.print(table)


def run_pretrain_with_progress(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrain with a live line: step of total, epoch, loss, samples/s, elapsed, ETA."""
    columns = (
        TextColumn("pretrain step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn(
            "epoch {task.fields[epoch]} · loss {task.fields[loss]} · {task.fields[rate]} samples/s"
        ),  # fmt: skip
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    console.print(
        f"training on Ray; metrics in RUN/pretrain/NAME/metrics.jsonl and TensorBoard "
        f"(tensorboard --logdir {cfg.run_dir}/pretrain)"
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("pretrain", total=None, epoch="-", loss="-", rate="-")

        def update(row: dict[str, Any]) -> None:
            bar.update(task, completed=row["step"], total=row.get("total_steps"),
                       epoch=row["epoch"], loss=f"{row['loss']:.4g}",
                       rate=f"{row['samples_per_s']:.0f}")  # fmt: skip

        return run_pretrain(cfg, update)


class PretrainCommand(PretrainConfig, Command):
    """Pretrain a MultiMAE on the shards with Ray Train (checkpoints, resume, elastic)."""

    def cli_cmd(self) -> None:
        """Train and print the summary."""
        cfg = PretrainConfig(**self.model_dump(include=set(PretrainConfig.model_fields)))
        print_pretrain_summary(run_pretrain_with_progress(cfg))


class ExportCommand(Command):
    """Write a pretrained encoder (input adapters + ViT) with its config, for evaluation."""

    source: CliPositionalArg[Path] = Field(
        description="A run directory (RUN/pretrain/NAME; its latest checkpoint) or a checkpoint."
    )
    out: Path | None = Field(None, description="Output file (default: SOURCE/encoder.pt).")

    def cli_cmd(self) -> None:
        """Export and say where."""
        out = self.out or self.source / "encoder.pt"
        console.print(f"encoder written to {export_encoder(self.source, out)}")
