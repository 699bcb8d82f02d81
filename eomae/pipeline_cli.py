"""`eomae run` and `eomae demo`: the whole pipeline from one config (eomae/pipeline.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import CliPositionalArg
from rich.console import Console
from rich.table import Table

from eomae.config import Command
from eomae.ingest_cli import IngestFailed, run_ingest_with_progress, run_world
from eomae.pipeline import (
    SERVICES_DIR,
    WORLD_DIR,
    PipelineConfig,
    PipelineError,
    Runner,
    Stage,
    load_pipeline,
    local_path,
    run_pipeline,
)
from eomae.shards_cli import ProblemsFound, run_shard_with_progress
from eomae.training_cli import print_pretrain_summary, run_pretrain_with_progress
from evaluation.run import EvalConfig, run_evaluation
from infra.services import LocalServices
from infra.world import WorldConfig
from ingest.config import IngestConfig
from shards.config import ShardConfig
from shards.verify import verify
from training.config import PretrainConfig
from training.export import export_encoder, latest_checkpoint
from training.pretrain import run_directory

console = Console(stderr=True)
# The clone's configs/ (editable install), else the working directory's (the image's /app).
DEMO_CONFIGS = (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                Path("configs", "demo.yaml"))  # fmt: skip


def world_stage(cfg: WorldConfig, resume: bool, pipeline: PipelineConfig) -> dict[str, Any]:
    """Generate the sample world under RUN/world (atomic: a killed run leaves none)."""
    run_world(Path(str(local_path(pipeline.run_dir)), WORLD_DIR), cfg, force=False)
    return {}


def ingest_stage(cfg: IngestConfig, resume: bool, pipeline: PipelineConfig) -> dict[str, Any]:
    """Ingest; in world mode with the world served by local services for the duration."""
    if pipeline.world is None:
        summary = run_ingest_with_progress(cfg)
    else:
        root = Path(str(local_path(pipeline.run_dir)))
        with LocalServices(root / WORLD_DIR, root / SERVICES_DIR) as svc:
            console.print(f"serving the sample world: STAC API {svc.stac_url}")
            summary = run_ingest_with_progress(cfg.model_copy(update={"catalog": svc.stac_url}))
    if summary["failed"]:
        raise IngestFailed(f"{len(summary['failed'])} units failed; a re-run retries them")
    return {"units": summary["units"], "mb_read": summary["mb_read"]}


def shard_stage(cfg: ShardConfig, resume: bool, pipeline: PipelineConfig) -> dict[str, Any]:
    """Cut the shards and verify them."""
    summary = run_shard_with_progress(cfg)
    problems = verify(cfg.out_url)
    if problems:
        raise ProblemsFound(f"{len(problems)} problems in {cfg.out_url}: {problems[:3]}")
    splits: dict[str, int] = {}
    for s in summary["shards"]:
        splits[s["split"]] = splits.get(s["split"], 0) + s["samples"]
    return {"samples": splits}


def pretrain_stage(cfg: PretrainConfig, resume: bool, pipeline: PipelineConfig) -> dict[str, Any]:
    """Pretrain (continuing a killed attempt from its last checkpoint); export the encoder."""
    out = run_directory(cfg, str(cfg.name))
    has_checkpoint = resume and out.exists() and any(out.glob("checkpoint_*"))
    if out.exists() and not has_checkpoint:
        import shutil

        shutil.rmtree(out)  # killed before its first checkpoint: nothing worth keeping
    summary = run_pretrain_with_progress(cfg.model_copy(update={"resume": has_checkpoint}))
    print_pretrain_summary(summary)
    encoder = export_encoder(latest_checkpoint(out), out / "encoder.pt")
    return {"encoder": str(encoder), "metrics": summary["metrics"]}


def evaluate_stage(cfg: EvalConfig, resume: bool, pipeline: PipelineConfig) -> dict[str, Any]:
    """Evaluate the pipeline's encoder; the report is the run's result."""
    summary = run_evaluation(cfg, log=console.print)
    return {"report": summary["report"]}


RUNNERS: dict[Stage, Runner] = {
    "world": world_stage,
    "ingest": ingest_stage,
    "shard": shard_stage,
    "pretrain": pretrain_stage,
    "evaluate": evaluate_stage,
}


def print_summary(summary: dict[str, Any]) -> None:
    """A row per stage: what was done, time, output size."""
    table = Table(title=f"eomae run: {summary['run_dir']} ({summary['elapsed_s']} s)")
    for col in ("stage", "action", "time s", "size MB"):
        table.add_column(col, justify="left" if col in ("stage", "action") else "right")
    for row in summary["stages"]:
        took = "" if row["action"] == "skipped" else f"{row['elapsed_s']:.1f}"
        table.add_row(row["stage"], row["action"], took, f"{row['bytes'] / 1e6:.1f}")
    out = Console()
    out.width = max(out.width, 100)
    out.print(table)
    if summary["report"]:
        console.print(f"report: {summary['report']}")


def run_and_report(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the pipeline with the CLI's stage runners; print the summary."""
    summary = run_pipeline(cfg, RUNNERS, log=console.print)
    print_summary(summary)
    return summary


class RunCommand(Command):
    """Run the pipeline of a YAML config: world? -> ingest -> shard -> pretrain -> evaluate."""

    pipeline: CliPositionalArg[Path] = Field(
        description="Pipeline YAML: run_dir, address, and a section per stage (configs/)."
    )
    run_dir: str | None = Field(None, description="Override the config's run directory.")
    address: str | None = Field(None, description="Ray cluster address (e.g. 127.0.0.1:6379).")

    def cli_cmd(self) -> None:
        """Validate everything, then run the stages not already done."""
        run_and_report(load_pipeline(self.pipeline, run_dir=self.run_dir, address=self.address))


class DemoCommand(Command):
    """The README's first command: `eomae run configs/demo.yaml` on the sample world."""

    run_dir: str | None = Field(None, description="Override the demo's run directory.")

    def cli_cmd(self) -> None:
        """Run the demo pipeline."""
        found = [p for p in DEMO_CONFIGS if p.is_file()]
        if not found:
            raise PipelineError("configs/demo.yaml not found: run the demo from a clone of eomae")
        run_and_report(load_pipeline(found[0], run_dir=self.run_dir))
