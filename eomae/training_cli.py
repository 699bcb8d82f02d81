"""`eomae pretrain` and `eomae export`: the training stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import CliPositionalArg
from rich.console import Console
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


class PretrainCommand(PretrainConfig, Command):
    """Pretrain a MultiMAE on the shards with Ray Train (checkpoints, resume, elastic)."""

    def cli_cmd(self) -> None:
        """Train and print the summary."""
        cfg = PretrainConfig(**self.model_dump(include=set(PretrainConfig.model_fields)))
        console.print("training on Ray; per-step metrics go to RUN/pretrain/NAME/metrics.jsonl")
        print_pretrain_summary(run_pretrain(cfg))


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
