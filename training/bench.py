"""`eomae bench train`: Ray Train's loop against a plain DDP loop, real data against memory.

Both loops run the same function, `measure`, in the same number of worker processes:
once under Ray Train (`TorchTrainer`, gloo/NCCL set up by Ray) and once under plain
`torch.multiprocessing` with a process group we set up ourselves. `measure` takes the
same steps as pretraining (`loop.train_step`: same model, crops, masking, AdamW) in two
phases: real batches streamed from the shard loader, then the very same batches replayed
from memory (synthetic: no data loading at all). So one run gives two ratios:

    ray_vs_plain = Ray Train samples/s ÷ plain DDP samples/s   (real data, both)
    data_stall   = 1 - real samples/s ÷ synthetic samples/s    (under Ray Train)
    outside_model = 1 - synthetic samples/s ÷ samples/s of the model's work alone (the
                    same batches prepared beforehand: crops, views): the share of a step
                    spent outside the model's forward and backward

Each rate times `steps` steps after `warmup` untimed ones, between barriers, so it is
the slowest rank's rate. Every worker uses the same number of intra-op threads (cores ÷
workers) in both loops: Ray's default, made explicit for the plain one.

Model FLOPs utilisation: before timing, each worker counts the FLOPs of one training step
(forward, loss and backward, as `torch.utils.flop_counter` counts matmuls, convolutions
and attention) on a copy of the model, per sample. With a device peak (`--peak-tflops`,
or the bf16 dense peak of a known GPU) the bench reports

    mfu = Ray Train samples/s (real data) x FLOPs per sample ÷ (workers x peak FLOP/s)

and, on any device, the achieved TFLOP/s per worker.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import Field
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ingest.parallel import init_ray
from training.config import PretrainConfig
from training.loop import param_groups
from training.multimae import MultiMAE
from training.pretrain import check_data, shards_of
from training.step import autocast_for, model_step, prepare_step, step_generator, train_step

RATES = "rates.json"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a part of the name torch reports;
# the first match wins. What MFU divides by when --peak-tflops is not given.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0}


class TrainBenchConfig(PretrainConfig):
    """`eomae bench train`: a pretraining config, timed for a few steps per loop."""

    steps: int = Field(20, ge=1, description="Timed steps per phase.")
    warmup: int = Field(3, ge=0, description="Untimed steps before each phase.")
    repeats: int = Field(3, ge=1, description="Repeats of (Ray Train, plain DDP); medians.")
    peak_tflops: float | None = Field(
        None, gt=0,
        description="Peak TFLOP/s of one worker's device, for MFU (default: the bf16 dense "
        "peak of a known GPU; none on CPU).",
    )  # fmt: skip


def known_peak_tflops(device: torch.device) -> float:
    """The dense bf16 peak of a known GPU, else 0 (unknown; every CPU)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)
    return 0.0


def peak_tflops(cfg: TrainBenchConfig, device: torch.device) -> float:
    """The peak MFU divides by: the config's, a known GPU's bf16 peak, else 0 (unknown)."""
    return cfg.peak_tflops if cfg.peak_tflops is not None else known_peak_tflops(device)


def step_flops(model: nn.Module, batch: dict[str, Any], cfg: PretrainConfig,
               device: torch.device) -> float:  # fmt: skip
    """FLOPs per sample of one training step (forward, loss, backward) on `batch`.

    Counted on a copy of the model with a zero-rate optimiser, so nothing the timed steps
    see changes (SoftCon's target encoder moves in the forward pass).
    """
    scratch = copy.deepcopy(model)
    optimizer = torch.optim.SGD(scratch.parameters(), lr=0.0)
    counter = FlopCounterMode(display=False)
    with counter:
        samples = train_step(scratch, optimizer, batch, cfg, step_generator(cfg.seed, 0, 0, device),
                             device, autocast_for(cfg, device))[2]  # fmt: skip
    return float(counter.get_total_flops()) / samples


def _threads(world: int) -> int:
    return max(1, (os.cpu_count() or 1) // world)


def measure(cfg: TrainBenchConfig, rank: int, world: int, device: torch.device,
            wrap: Any) -> dict[str, float]:  # fmt: skip
    """samples/s of real then synthetic batches on this worker; `wrap` makes the DDP model."""
    from shards.loader import make_loader  # the worker process imports the data stack

    torch.set_num_threads(_threads(world))
    torch.manual_seed(cfg.seed)
    per_phase = cfg.warmup + cfg.steps
    loader = make_loader(
        shards_of(cfg), "train", sorted({m.source for m in cfg.model.all_modalities}),
        batch_size=cfg.batch_size, mode="resampled", num_workers=cfg.loader_workers,
        epoch_samples=per_phase * cfg.batch_size * world, seed=cfg.seed, rank=rank,
        world_size=world,
    )  # fmt: skip
    model = MultiMAE(cfg.model).to(device)
    trained: nn.Module = wrap(model)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    autocast = autocast_for(cfg, device)
    kept: list[dict[str, Any]] = []

    def phase(batches: Any, keep: bool) -> float:
        samples, t0, step = 0, time.perf_counter(), 0
        for step, batch in enumerate(batches, start=1):
            if keep:
                kept.append(batch)
            if step == cfg.warmup + 1:
                dist.barrier()
                samples, t0 = 0, time.perf_counter()
            generator = step_generator(cfg.seed, step, rank, device)
            samples += train_step(trained, optimizer, batch, cfg, generator, device, autocast)[2]
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        if step != per_phase:
            raise RuntimeError(f"rank {rank}: {step} batches, expected {per_phase}")
        return samples * world / (time.perf_counter() - t0)

    def model_phase() -> float:  # the model's work alone: every batch prepared beforehand
        ready = [prepare_step(b, cfg, step_generator(cfg.seed, i, rank, device), device)
                 for i, b in enumerate(kept, start=1)]  # fmt: skip
        samples, t0 = 0, time.perf_counter()
        for step, prepared in enumerate(ready, start=1):
            if step == cfg.warmup + 1:
                dist.barrier()
                samples, t0 = 0, time.perf_counter()
            generator = step_generator(cfg.seed, step, rank, device)
            model_step(trained, optimizer, prepared, cfg, generator, autocast)
            samples += cfg.batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        return samples * world / (time.perf_counter() - t0)

    real = phase(loader, keep=True)
    synthetic = phase(kept, keep=False)
    model_only = model_phase()
    flops = step_flops(model, kept[0], cfg, device)
    return {"real": real, "synthetic": synthetic, "model_only": model_only,
            "flops_per_sample": flops, "peak_tflops": peak_tflops(cfg, device)}  # fmt: skip


def _ray_worker(config: dict[str, Any]) -> None:
    cfg = TrainBenchConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    rates = measure(
        cfg, rank, ctx.get_world_size(), ray.train.torch.get_device(),
        ray.train.torch.prepare_model,
    )  # fmt: skip
    # Ray Train keeps what comes with a checkpoint, so rank 0's rates travel as one.
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            (Path(tmp) / RATES).write_text(json.dumps(rates))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(rates, checkpoint=ckpt)


def run_ray(cfg: TrainBenchConfig, storage: Path) -> dict[str, float]:
    """One Ray Train run of `measure`; rank 0's rates."""
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        # a fresh name each time: Ray would otherwise resume an earlier run's state
        run_config=RunConfig(name=f"bench-{uuid.uuid4().hex[:8]}", storage_path=str(storage)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train bench run reported no rates: {result.error}")
    with result.checkpoint.as_directory() as d:
        rates: dict[str, float] = json.loads((Path(d) / RATES).read_text())
    return rates


def _plain_worker(rank: int, cfg_json: str, world: int, port: int, out: str) -> None:
    cfg = TrainBenchConfig.model_validate_json(cfg_json)
    torch.set_num_threads(_threads(world))  # before any work, as Ray does for its workers
    backend = "nccl" if cfg.use_gpu else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        device = torch.device(f"cuda:{rank}" if cfg.use_gpu else "cpu")
        ids = [rank] if cfg.use_gpu else None
        rates = measure(
            cfg, rank, world, device,
            lambda m: nn.parallel.DistributedDataParallel(m, device_ids=ids),
        )  # fmt: skip
        if rank == 0:
            Path(out).write_text(json.dumps(rates))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_plain(cfg: TrainBenchConfig) -> dict[str, float]:
    """One plain DDP run of `measure` in `cfg.workers` spawned processes; rank 0's rates."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rates.json"
        args = (cfg.model_dump_json(), cfg.workers, _free_port(), str(out))
        mp.spawn(_plain_worker, args=args, nprocs=cfg.workers, join=True)
        rates: dict[str, float] = json.loads(out.read_text())
    return rates


def bench_train(cfg: TrainBenchConfig, log: Any = print) -> list[dict[str, float]]:
    """Alternate Ray Train and plain DDP runs `repeats` times; one row of rates per repeat."""
    check_data(cfg)
    init_ray(cfg.address)
    storage = Path(cfg.run_dir).resolve() / "bench" / "ray"
    rows = []
    for r in range(cfg.repeats):
        ray_rates = run_ray(cfg, storage)
        plain_rates = run_plain(cfg)
        row = {
            "ray_real": ray_rates["real"],
            "ray_synthetic": ray_rates["synthetic"],
            "ray_model_only": ray_rates["model_only"],
            "plain_real": plain_rates["real"],
            "plain_synthetic": plain_rates["synthetic"],
            "flops_per_sample": ray_rates["flops_per_sample"],
            "peak_tflops": ray_rates["peak_tflops"],
        }
        row["tflops_per_worker"] = row["ray_real"] * row["flops_per_sample"] / cfg.workers / 1e12
        log(f"repeat {r + 1}/{cfg.repeats}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        rows.append(row)
    return rows


def train_ratios(row: dict[str, float]) -> dict[str, float]:
    """The benchmark's figures from one repeat's rates (MFU where the peak is known)."""
    figures = {
        "ray_vs_plain": row["ray_real"] / row["plain_real"],
        "data_stall": 1 - row["ray_real"] / row["ray_synthetic"],
        # the share of a step (batches in memory) spent before the model: crops, views
        "outside_model": 1 - row["ray_synthetic"] / row["ray_model_only"],
    }
    if row["peak_tflops"] > 0:
        figures["mfu"] = row["tflops_per_worker"] / row["peak_tflops"]
    return figures
