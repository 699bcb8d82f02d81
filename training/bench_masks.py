"""`eomae bench masks`: what MultiMAE's masking costs next to the encoder it feeds.

    masks_ms      = one batch's masks (Dirichlet shares, exact K) in milliseconds
    encoder_ratio = forward_encoder (tokens, masking, gather, encoder) ÷ the encoder
                    alone on the same, already chosen, visible tokens

Both on the `bandgroups` model (6 modalities × 49 tokens = 294, 49 visible), without
gradients, the medians of `calls` calls per repeat.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from training.config import ModelConfig
from training.masking import sample_visible
from training.multimae import MultiMAE


def _median_s(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    fn()  # warm-up: allocations, kernels
    times = []
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_masks(
    batch: int = 1024, size: str = "tiny", repeats: int = 3, device: str = "cpu"
) -> list[dict[str, float]]:
    """One row per repeat: masks_ms, forward_encoder_s, encoder_s, encoder_ratio."""
    dev = torch.device(device)
    model = MultiMAE(ModelConfig(size=size, modalities="bandgroups")).to(dev).eval()  # type: ignore[arg-type]
    px = model.input_size
    inputs: dict[str, torch.Tensor] = {}
    for m in model.cfg.input_modalities:
        if m.loss == "ce":
            inputs[m.name] = torch.randint(0, 11, (batch, px, px), device=dev)
        else:
            inputs[m.name] = torch.randn(batch, len(m.bands), px, px, device=dev)
    sizes = [(px // model.patch) ** 2] * len(inputs)
    k = model.num_visible
    generator = torch.Generator(device=dev).manual_seed(0)
    rows = []
    with torch.no_grad():
        tokens = torch.cat(list(model._tokens(inputs).values()), dim=1)
        _, keep = sample_visible(batch, sizes, k, model.cfg.alpha, generator)
        chosen = tokens.gather(1, keep[..., None].expand(-1, -1, model.dim))  # (B, K, D)
        for _ in range(repeats):
            masks_s = _median_s(
                lambda: sample_visible(batch, sizes, k, model.cfg.alpha, generator), 20, dev
            )
            full_s = _median_s(lambda: model.forward_encoder(inputs, generator), 3, dev)
            encoder_s = _median_s(lambda: model._encode_tokens(chosen), 3, dev)
            rows.append({"masks_ms": masks_s * 1e3, "forward_encoder_s": full_s,
                         "encoder_s": encoder_s, "encoder_ratio": full_s / encoder_s})  # fmt: skip
    return rows
