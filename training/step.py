"""One training step, whatever the objective: the batch made ready, then the model's work.

    prepare_step   crops (ours) or resize + flip (multimae-eo), or SoftCon's two views and
                   label vectors; chips moved to the device first, draws from the step's
                   generator on its device, no loop over samples
    model_step     forward (masks drawn there), loss, backward, clipping, AdamW
    train_step     the two

The loss and its parts stay on the device: `numbers` turns a log interval's rows into
floats at once, the loop's only host-device synchronisation between logs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from shards.modalities import VALID
from training import checkpoint
from training.augment import two_views
from training.combined import CombinedModel
from training.config import PretrainConfig
from training.criteria import multimae_loss
from training.modalities import split_batch, valid_of
from training.multimae import MultiMAE
from training.multimae_eo import multimae_eo_loss, prepare_eo_batch
from training.softcon import label_vectors


def prepare_batch(
    batch: dict[str, Any], cfg: PretrainConfig, generator: torch.Generator, device: torch.device
) -> tuple[dict[str, Tensor], Tensor]:
    """Random crops to the input size, the model's modalities, DEM standardisation.

    The chips go to `device` first; crops are drawn from `generator` on its own device.
    """
    size = cfg.model.geometry[0]
    batch = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
             for k, v in batch.items()}  # fmt: skip
    valid: Tensor = batch[VALID]
    h, w = valid.shape[-2:]
    if (h, w) != (size, size):
        if h < size or w < size:
            raise ValueError(f"chips of {h}x{w} px are smaller than the input size {size}")
        b, at = valid.shape[0], generator.device
        tops = torch.randint(0, h - size + 1, (b,), generator=generator, device=at).to(device)
        lefts = torch.randint(0, w - size + 1, (b,), generator=generator, device=at).to(device)
        span = torch.arange(size, device=device)
        rows = (tops[:, None] + span)[:, :, None]  # (B, S, 1)
        cols = (lefts[:, None] + span)[:, None, :]  # (B, 1, S)
        samples = torch.arange(b, device=device)[:, None, None]

        def crop(x: Tensor) -> Tensor:  # one gather for the batch, no loop over samples
            if x.ndim == 3:  # (B, H, W)
                return x[samples, rows, cols]
            return x[samples, :, rows, cols].permute(0, 3, 1, 2)  # (B, S, S, C) -> (B, C, S, S)

        batch = {
            k: crop(v) if isinstance(v, Tensor) and v.ndim >= 3 else v for k, v in batch.items()
        }
        valid = batch[VALID]
    return standardise_dem(split_batch(batch, cfg.model.all_modalities), cfg), valid


def prepare_inputs(
    batch: dict[str, Any], cfg: PretrainConfig, generator: torch.Generator, device: torch.device
) -> tuple[dict[str, Tensor], Tensor]:
    """The model's inputs and valid pixels: the preset's recipe, or ours (`prepare_batch`)."""
    if cfg.model.preset == "multimae-eo":
        return prepare_eo_batch(batch, cfg.model, generator, device)
    return prepare_batch(batch, cfg, generator, device)


def standardise_dem(inputs: dict[str, Tensor], cfg: PretrainConfig) -> dict[str, Tensor]:
    """With `dem_standardise`: DEM (B, 1, H, W) per sample on its 10-90 % range."""
    if cfg.model.dem_standardise and "dem" in inputs:
        flat = inputs["dem"].flatten(1)
        lo, hi = torch.quantile(flat, 0.1, dim=1), torch.quantile(flat, 0.9, dim=1)
        inputs["dem"] = (inputs["dem"] - lo[:, None, None, None]) / (hi - lo).clamp_min(1e-3)[
            :, None, None, None
        ]
    return inputs


def prepare_views(
    batch: dict[str, Any], cfg: PretrainConfig, generator: torch.Generator, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Two augmented views of the batch at the input size (softcon, combined).

    softcon: the encoder's inputs; combined: every modality and `valid`, since land cover
    (not an input) is a reconstruction target and the losses count valid pixels only.
    """
    if cfg.objective == "softcon":
        inputs = split_batch(batch, cfg.model.input_modalities)
    else:
        inputs = {**split_batch(batch, cfg.model.all_modalities), VALID: valid_of(batch)}
    inputs = standardise_dem(inputs, cfg)
    return two_views({k: v.to(device) for k, v in inputs.items()}, cfg.model.geometry[0],
                     generator)  # fmt: skip


def unwrap_multimae(model: nn.Module) -> MultiMAE:
    """The MultiMAE under DDP / compile wrappers (of a combined model: its online one)."""
    inner = checkpoint.unwrap(model)
    if isinstance(inner, CombinedModel):
        inner = inner.online
    assert isinstance(inner, MultiMAE)
    return inner


def step_generator(
    seed: int, step: int, rank: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of one step's crops and masks on one rank, drawing on `device`."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 1009 + rank)


# What a step's model work takes: inputs and valid pixels, or (softcon, combined) the two
# views and the land-cover label vectors.
Prepared = tuple[Any, ...]


def prepare_step(
    batch: dict[str, Any], cfg: PretrainConfig, generator: torch.Generator, device: torch.device
) -> Prepared:
    """Everything a step does before the model: crops or views, labels, on `device`."""
    if cfg.uses_softcon:  # softcon, combined
        views = prepare_views(batch, cfg, generator, device)
        return *views, label_vectors(batch["lc_fractions"], cfg.softcon.labels,
                                     cfg.softcon.threshold)  # fmt: skip
    return prepare_inputs(batch, cfg, generator, device)


def model_step(
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    prepared: Prepared,
    cfg: PretrainConfig,
    generator: torch.Generator,
    autocast: AbstractContextManager[Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward (masks drawn there), loss, backward, clipping, AdamW: (loss, its parts)."""
    if cfg.uses_softcon:
        view1, view2, y = prepared
        with autocast:
            loss, parts = trained(view1, view2, y, generator)
    elif cfg.model.preset == "multimae-eo":
        inputs, _ = prepared
        with autocast:
            preds, visible = trained(inputs, generator)
        patch = unwrap_multimae(trained).patch
        loss, parts = multimae_eo_loss(cfg.model, preds, inputs, visible, patch)  # fp32
    else:
        inputs, valid = prepared
        with autocast:
            preds, visible = trained(inputs, generator)
            patch = unwrap_multimae(trained).patch
            loss, parts = multimae_loss(cfg.model, preds, inputs, visible, valid, patch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.clip_grad)
    optimizer.step()
    return loss, parts


def train_step(
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    cfg: PretrainConfig,
    generator: torch.Generator,
    device: torch.device,
    autocast: AbstractContextManager[Any],
) -> tuple[Tensor, dict[str, Tensor], int]:
    """One optimiser step on one batch: (loss, per-modality losses, samples in the batch).

    `trained` is the model as trained (DDP and/or compiled); the learning-rate schedule is
    the caller's.
    """
    prepared = prepare_step(batch, cfg, generator, device)
    loss, parts = model_step(trained, optimizer, prepared, cfg, generator, autocast)
    return loss, parts, batch[VALID].shape[0]


def numbers(rows: list[dict[str, Any]]) -> None:
    """In place: the tensors (losses on the device) of logged rows become floats, at once."""
    tensors = [v for row in rows for v in row.values() if isinstance(v, Tensor)]
    if not tensors:
        return
    values = iter(torch.stack([t.float() for t in tensors]).tolist())
    for row in rows:
        for key, value in row.items():
            if isinstance(value, Tensor):
                row[key] = next(values)


def autocast_for(cfg: PretrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast where the config asks for it (auto: on GPU), else nothing."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
