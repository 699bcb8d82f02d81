"""The per-worker training loop that Ray Train runs (`train_loop_per_worker`).

Each worker: build the model (seeded, so every rank starts equal), restore the latest
checkpoint if Ray hands one over (a restart after a failure, or `--resume`), wrap it in
DDP, stream resampled batches (every rank takes the same number of steps), and step
AdamW under a warm-up + cosine schedule. Rank 0 appends per-step metrics to
`metrics.jsonl`, and at each checkpoint writes the checkpoint, a loss curve and a
reconstruction figure. Masks and crops come from a generator seeded by (seed, step,
rank), so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from shards.loader import make_loader
from shards.manifest import ShardSetError
from training import checkpoint
from training.combined import CombinedModel
from training.config import PretrainConfig
from training.init import init_from
from training.multimae import MultiMAE
from training.plots import plot_losses, plot_reconstruction
from training.progress import MetricsLog, read_metrics
from training.softcon import SoftConModel, ema_momentum
from training.step import (
    autocast_for,
    numbers,
    prepare_inputs,
    step_generator,
    train_step,
    unwrap_multimae,
)

PLOTS = "plots"


def warmup_cosine(warmup: int, total: int, floor: float, from_zero: bool = False) -> Any:
    """LambdaLR factor: linear warm-up, then cosine from 1 down to `floor`.

    `from_zero`: the warm-up runs from 0 to 1 inclusive, as the reference MultiMAE's
    (np.linspace(0, lr, warmup)); else from 1 / warmup.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup - 1) if from_zero else (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ProgressSchedule:
    """Learning rates as a function of training progress measured in samples, not steps.

    Progress is counted in steps of the configured worker count (`reference_world`), so a
    fixed-size run follows `factor` step by step, and an elastic run whose worker count
    changes (and with it the samples per step) follows it without a jump: a step of `world`
    workers advances it by world / reference_world.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Any, reference_world: int):
        self.optimizer, self.factor, self.reference_world = optimizer, factor, reference_world
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.progress = 0.0
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * self.factor(self.progress)

    def step(self, world: int) -> None:
        """After an optimiser step of `world` workers."""
        self.progress += world / self.reference_world
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group now."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint keeps: the progress."""
        return {"progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's progress (older ones hold LambdaLR's step count)."""
        self.progress = float(state["progress"] if "progress" in state else state["last_epoch"])
        self._apply()


def param_groups(
    model: nn.Module, weight_decay: float, decay_all: bool = False
) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, embeddings and tokens (as MAE).

    `decay_all`: every parameter decays, as the reference MultiMAE's optimiser factory does.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or "embedding" in name or "token" in name or "classes" in name
        flat = flat and not decay_all
        (no_decay if flat else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_model(cfg: PretrainConfig) -> nn.Module:
    """What the objective trains: a MultiMAE, SoftCon around a MultiMAE encoder, or both."""
    model = MultiMAE(cfg.model)
    if cfg.init:  # every rank reads it: on a cluster, a path all nodes see
        init_from(model, Path(cfg.init))
    s = cfg.softcon
    if cfg.objective == "softcon":
        return SoftConModel(model, s.head_hidden, s.head_out, s.mask_ratio, s.temperature,
                            s.soft_weight, s.variant, modality_drop=s.modality_drop)  # fmt: skip
    if cfg.objective == "combined":
        return CombinedModel(model, s.loss_weight, s.head_hidden, s.head_out, s.temperature,
                             s.soft_weight, s.variant)  # fmt: skip
    return model


def tokens_per_sample(model: nn.Module) -> int:
    """Encoder tokens one sample costs per step (both views and directions of two-view ones)."""
    inner = checkpoint.unwrap(model)
    if isinstance(inner, SoftConModel):
        size, patch, visible = inner.online.cfg.geometry
        n = (size // patch) ** 2 * len(inner.online.input_adapters)
        if not isinstance(inner, CombinedModel):  # Siamese masking, not MultiMAE's
            visible = max(1, round(n * (1 - inner.mask_ratio)))
        return (2 if inner.symmetric else 1) * (min(visible, n) + n)
    return unwrap_multimae(inner).num_visible


def _figures(
    run_dir: Path, model: nn.Module, cfg: PretrainConfig, epoch: int, device: torch.device
) -> None:
    """Loss curve and (multimae, combined) a reconstruction of a fixed validation batch."""
    plots = run_dir / PLOTS
    plots.mkdir(exist_ok=True)
    plot_losses(read_metrics(run_dir), plots / "loss.png", cfg.objective)
    if not cfg.reconstructs:
        return
    shards = cfg.shards or f"{cfg.run_dir.rstrip('/')}/shards"
    try:
        batch = next(iter(make_loader(shards, "val", batch_size=4, rank=0, world_size=1)))
    except ShardSetError:  # no val split: show training chips
        batch = next(iter(make_loader(shards, "train", batch_size=4, rank=0, world_size=1)))
    inner = unwrap_multimae(model)
    inputs, valid = prepare_inputs(batch, cfg, step_generator(cfg.seed, 0, 0), device)
    with torch.no_grad():
        preds, visible = inner(inputs, step_generator(cfg.seed, 0, 0))
    plot_reconstruction(
        cfg.model,
        inputs,
        preds,
        visible,
        valid,
        inner.patch,
        plots / f"reconstruction_{epoch:04d}.png",
    )


def skipped_total(skipped: int, device: torch.device) -> int:
    """Samples skipped so far by every rank and its loader workers (every rank calls it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return skipped
    total = torch.tensor([skipped], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's entry point: train one worker's share of the run.

    config: "cfg" (PretrainConfig as JSON), "run_dir" (local directory of the run),
    "resume_from" (checkpoint directory or None), "fail_at_step" (tests only: rank 1
    exits abruptly once at that step).
    """
    cfg = PretrainConfig.model_validate(config["cfg"])
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # equal initial weights on every rank

    shards = cfg.shards or f"{cfg.run_dir.rstrip('/')}/shards"
    sources = sorted({m.source for m in cfg.model.all_modalities})
    loader = make_loader(
        shards, "train", sources, batch_size=cfg.batch_size, mode="resampled",
        epoch_samples=cfg.epoch_samples, num_workers=cfg.loader_workers, seed=cfg.seed,
        rank=rank, world_size=world,
    )  # fmt: skip
    steps_per_epoch = len(loader)
    # the schedule's length in steps of the configured worker count (ProgressSchedule)
    epoch_samples = loader.epoch_samples or 0  # set: the loader is resampled
    reference_steps = max(1, epoch_samples // (cfg.workers * cfg.batch_size))
    reference_total = reference_steps * cfg.epochs

    model = build_model(cfg)
    reference = cfg.model.preset == "multimae-eo"  # the authors' optimiser and schedule
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, decay_all=reference), lr=cfg.lr, betas=(0.9, 0.95)
    )
    warmup = round(cfg.warmup_epochs * reference_steps)
    schedule = ProgressSchedule(
        optimizer,
        warmup_cosine(warmup, reference_total, cfg.min_lr / cfg.lr, from_zero=reference),
        cfg.workers,
    )
    step, start_epoch = 0, 0
    state = None
    restored = ray.train.get_checkpoint()  # after a worker failure, or Ray's own restore
    if restored is not None:
        try:
            with restored.as_directory() as d:
                state = checkpoint.load(Path(d), model, optimizer, schedule)
        except checkpoint.CheckpointError:
            # Ray restores a resumed run's newest checkpoint; --resume chose the newest
            # intact one (training.export.latest_intact_checkpoint) when that is damaged.
            if not config.get("resume_from"):
                raise
    if state is None and config.get("resume_from"):  # --resume of a stopped run
        state = checkpoint.load(Path(config["resume_from"]), model, optimizer, schedule)
    if state is not None:
        step, start_epoch = state["step"], state["epoch"] + 1
    metrics_log = MetricsLog(run_dir, step, cfg.mlflow) if rank == 0 else None
    trained: nn.Module = ray.train.torch.prepare_model(model)  # DDP
    if cfg.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    autocast = autocast_for(cfg, device)
    fail_at = config.get("fail_at_step") or 0  # tests: rank 1 dies once at this step
    tokens = tokens_per_sample(model)
    total = step + (cfg.epochs - start_epoch) * steps_per_epoch  # at this worker count

    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        rows: list[dict[str, Any]] = []  # not yet in the metrics file
        last_row: dict[str, Any] = {}
        t_last = time.perf_counter()
        for batch in loader:
            step += 1
            generator = step_generator(cfg.seed, step, rank, device)
            loss, parts, samples = train_step(
                trained, optimizer, batch, cfg, generator, device, autocast
            )
            schedule.step(world)
            if isinstance(model, SoftConModel):  # the target follows the online encoder
                progress = schedule.progress
                model.update_target(ema_momentum(progress, reference_total, cfg.softcon.ema))
            now = time.perf_counter()
            samples *= world
            row = {
                "step": step, "epoch": epoch, "loss": loss.detach(),  # numbers when logged
                **{f"loss/{k}": v.detach() for k, v in parts.items()},
                "total_steps": total, "world": world, "lr": schedule.get_last_lr()[0],
                "samples_per_s": samples / (now - t_last),
                "tokens_per_s": samples * tokens / (now - t_last),
                "skipped": batch["skipped"],
            }  # fmt: skip
            t_last = now
            rows.append(row)
            last_row = row
            if step % cfg.log_every == 0:
                numbers(rows)  # the interval's only host-device synchronisation
                row["skipped_total"] = skipped_total(loader.skipped, device)
                ray.train.report(row)
                if metrics_log is not None:
                    metrics_log.write(rows)
                    rows = []
            if (
                fail_at
                and step == fail_at
                and rank == 1
                and not (run_dir / ".failed-once").exists()
            ):
                (run_dir / ".failed-once").touch()
                os._exit(1)  # a worker dying mid-epoch, as a lost node would
        numbers(rows)
        if metrics_log is not None:
            metrics_log.write(rows)
        last = epoch == cfg.epochs - 1
        if (epoch + 1) % cfg.checkpoint_every and not last:
            continue
        skipped = skipped_total(loader.skipped, device)
        metrics = {**{k: v for k, v in last_row.items() if k != "skipped"}, "step": step,
                   "epoch": epoch, "skipped_total": skipped}  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                state = {"step": step, "epoch": epoch, "world_size": world, "metrics": metrics}
                checkpoint.save(Path(tmp), model, optimizer, schedule, state, cfg)
                _figures(run_dir, model, cfg, epoch, device)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
    if metrics_log is not None:
        metrics_log.close()
