"""The GPU check of a pretraining step, as one command.

    python -m training.device_check --out DIR            # on a GPU: ViT-B, bf16, batch 256
    python -m training.device_check --out DIR --tiny     # anywhere: proves it runs

Steps of MultiMAE pretraining (`loop.train_step`: crops, masks, forward, loss, backward,
AdamW) on synthetic 64 px chips already on the device, eager and `torch.compile`d:

    samples_per_s     timed steps after warm-up, between device synchronisations
    tflops            FLOPs per sample (torch.utils.flop_counter) x samples/s
    mfu               tflops ÷ the device's dense bf16 peak (training.bench)
    outside_share     1 - (forward + loss + backward + AdamW on prepared inputs) ÷ step:
                      the share of a step spent preparing the batch (masks are drawn in
                      the forward pass)

Writes DIR/device_check.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from training.bench import known_peak_tflops, step_flops
from training.config import ModelConfig, PretrainConfig
from training.loop import param_groups
from training.multimae import MultiMAE
from training.step import autocast_for, model_step, prepare_step, step_generator, train_step

CHIP = 64


def synthetic_batch(batch: int, device: torch.device) -> dict[str, Any]:
    """A loader-shaped batch of 64 px chips on the device."""
    g = torch.Generator(device=device).manual_seed(0)
    return {
        "s2": torch.randn(batch, 12, CHIP, CHIP, generator=g, device=device),
        "dem": torch.randn(batch, 1, CHIP, CHIP, generator=g, device=device),
        "lc": torch.randint(0, 11, (batch, CHIP, CHIP), generator=g, device=device),
        "valid": torch.ones(batch, CHIP, CHIP, dtype=torch.bool, device=device),
        "lc_fractions": torch.full((batch, 11), 1 / 11, device=device),
        "skipped": 0,
    }


def _timed(fn: Any, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, over `steps` calls between synchronisations."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for step in range(steps):
        fn(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def check(
    cfg: PretrainConfig, device: torch.device, steps: int, warmup: int, compile: bool
) -> dict[str, Any]:
    """One configuration's figures (see the module's docstring)."""
    model = MultiMAE(cfg.model).to(device)
    trained: torch.nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=1e-4, betas=(0.9, 0.95))
    autocast = autocast_for(cfg, device)
    batch = synthetic_batch(cfg.batch_size, device)

    def step(i: int) -> None:
        train_step(
            trained, optimizer, batch, cfg, step_generator(cfg.seed, i, 0, device), device, autocast
        )

    prepared = prepare_step(batch, cfg, step_generator(cfg.seed, 0, 0, device), device)

    def model_only(i: int) -> None:  # the same model work on a batch already prepared
        model_step(trained, optimizer, prepared, cfg, step_generator(cfg.seed, i, 0, device),
                   autocast)  # fmt: skip

    _timed(step, warmup, device)
    step_s = _timed(step, steps, device)
    _timed(model_only, warmup, device)
    model_s = _timed(model_only, steps, device)
    flops = step_flops(model, batch, cfg, device)
    samples_per_s = cfg.batch_size / step_s
    peak = known_peak_tflops(device)
    tflops = flops * samples_per_s / 1e12
    return {
        "compile": compile, "size": cfg.model.size, "batch": cfg.batch_size,
        "precision": cfg.precision, "samples_per_s": samples_per_s, "step_s": step_s,
        "flops_per_sample": flops, "tflops": tflops, "peak_tflops": peak,
        "mfu": tflops / peak if peak else None, "outside_share": max(0.0, 1 - model_s / step_s),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check; write and print DIR/device_check.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--tiny", action="store_true", help="tiny model, batch 8, 2 steps")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    cfg = PretrainConfig(
        model=ModelConfig(size="tiny" if tiny else "base", modalities="bandgroups"),
        batch_size=8 if tiny else args.batch,
        precision="auto",
    )
    steps, warmup = (2, 1) if tiny else (args.steps, 5)
    runs = [check(cfg, device, steps, warmup, compile=False)]
    if not args.no_compile:
        runs.append(check(cfg, device, steps, warmup, compile=True))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {"device": str(device), "gpu": gpu, "torch": torch.__version__, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
