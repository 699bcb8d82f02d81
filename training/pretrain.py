"""`eomae pretrain`: MultiMAE, SoftCon or combined pretraining on Ray Train (TorchTrainer, DDP).

    RUN/pretrain/NAME/config.json          the run's PretrainConfig
    RUN/pretrain/NAME/metrics.jsonl        one row per step (losses, lr, samples/s, tokens/s)
    RUN/pretrain/NAME/tensorboard/         the same as TensorBoard scalars
    RUN/pretrain/NAME/plots/               loss.png, reconstruction_EPOCH.png
    RUN/pretrain/NAME/checkpoint_*/        Ray Train checkpoints (see training.checkpoint)

A new run needs a new name; `--resume --name NAME` continues NAME from its last
checkpoint. A worker that dies is replaced and the run resumes from the last checkpoint
(up to `max_failures` times); with `max_workers` the worker group is elastic.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ingest.parallel import init_ray
from shards.config import SHARDS_DIR, join_url
from shards.manifest import read_manifest
from training.config import PretrainConfig
from training.export import latest_intact_checkpoint
from training.loop import PLOTS, train_loop
from training.progress import METRICS, follow

log = logging.getLogger(__name__)

PRETRAIN_DIR = "pretrain"


class PretrainError(ValueError):
    """A pretraining run that cannot start as asked."""


def shards_of(cfg: PretrainConfig) -> str:
    """The shard set a run trains on."""
    return cfg.shards or join_url(cfg.run_dir, SHARDS_DIR)


def run_directory(cfg: PretrainConfig, name: str) -> Path:
    """Where a run's outputs and checkpoints go."""
    return Path(cfg.run_dir).resolve() / PRETRAIN_DIR / name


def check_start(cfg: PretrainConfig) -> str:
    """Validate the run against what is on disk; return its name."""
    if cfg.resume and not cfg.name:
        raise PretrainError("--resume needs --name of the run to continue")
    name = cfg.name or f"{cfg.objective}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out = run_directory(cfg, name)
    if out.exists() and not cfg.resume:
        raise PretrainError(f"{out} exists; --resume continues it, or choose another --name")
    if cfg.resume and not out.exists():
        raise PretrainError(f"nothing to resume: {out} does not exist")
    check_data(cfg)
    return name


def check_data(cfg: PretrainConfig) -> None:
    """The shard set exists and fits the model's input size and the batch size."""
    manifest = read_manifest(shards_of(cfg))
    size = cfg.model.geometry[0]
    if manifest.chip_size < size:
        raise PretrainError(
            f"chips of {manifest.chip_size} px are smaller than the model's input of {size} px; "
            "shard with a larger --chip-size or choose --model.masking/--model.input-size"
        )
    if manifest.samples("train") < cfg.batch_size:
        raise PretrainError(
            f"the train split has {manifest.samples('train')} samples, "
            f"fewer than --batch-size {cfg.batch_size}"
        )


def run_pretrain(
    cfg: PretrainConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    _fail_at_step: int | None = None,
) -> dict[str, Any]:
    """Train on Ray; return a summary (name, directory, steps, last metrics, checkpoint).

    `progress` is called on this process with each metrics row as rank 0 logs it.
    """
    t0 = time.perf_counter()
    name = check_start(cfg)
    out = run_directory(cfg, name)
    out.mkdir(parents=True, exist_ok=True)
    config_json = cfg.model_copy(update={"name": name}).model_dump_json(indent=1)
    if not cfg.resume:  # a resume keeps the run's config until it has succeeded
        (out / "config.json").write_text(config_json)
    resume_from = None
    if cfg.resume:
        resume_from, passed = latest_intact_checkpoint(out)
        for ckpt, problem in passed.items():
            log.warning("%s is damaged (%s); resuming from %s", ckpt, problem, resume_from.name)
    init_ray(cfg.address)
    workers: int | tuple[int, int] = cfg.workers
    if cfg.max_workers is not None:
        workers = (cfg.workers, cfg.max_workers)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_copy(update={"shards": shards_of(cfg)}).model_dump(mode="json"),
            "run_dir": str(out),
            "fail_at_step": _fail_at_step,
            "resume_from": str(resume_from) if resume_from else None,
        },
        # Ray Train V2 takes (min, max) for elastic groups; the annotation is V1's.
        scaling_config=ScalingConfig(
            num_workers=workers,  # type: ignore[arg-type]
            use_gpu=cfg.use_gpu,
            elastic_resize_monitor_interval_s=cfg.elastic_resize_s,  # type: ignore[call-arg]
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(out.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    with follow(out, progress) if progress else nullcontext():
        result = trainer.fit()
    if cfg.resume:
        (out / "config.json").write_text(config_json)
    return {
        "name": name,
        "dir": str(out),
        "metrics": dict(result.metrics or {}),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics_file": str(out / METRICS),
        "plots": sorted(str(p) for p in (out / PLOTS).glob("*.png")),
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
