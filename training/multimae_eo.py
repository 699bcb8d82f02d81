"""MultiMAE-EO's training recipe around the model (`model.preset: multimae-eo`).

As the authors' code does it (josesosajs/multimae-meets-eo: utils/datasets.py,
engine_pretraining.py, and the reference MultiMAE's multimae/criterion.py):

inputs   64 px chips -> 56 px, bilinear (land cover too, as numbers), one horizontal flip
         per sample with p = 0.5 for every modality; land cover on to 14 px, bilinear, then
         truncated to integers (so a class boundary can produce an in-between id: their
         code, reproduced); elevation standardised per sample by the mean and (unbiased)
         variance of its middle 10-90 % of sorted values, input and target alike.
loss     per target, on masked patches only: MSE on the four spectral groups, MSE on
         patch-normalised RGB for `norm_rgb`, L1 on elevation, cross-entropy (fp32) on
         land cover with nodata as a 12th class; each the mean over a sample's masked
         pixels, then the mean over samples that have any; the seven summed unweighted.
         No pixel is left out for being invalid: their data has no validity mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from shards.modalities import VALID
from training.adapters import patchify, unpatchify
from training.config import ModelConfig
from training.modalities import split_batch
from training.multimae import LC_STRIDE, NORM_RGB, RGB

CHIP_TO = 56  # their input size


def prepare_eo_batch(
    batch: dict[str, Any], cfg: ModelConfig, generator: torch.Generator, device: torch.device
) -> tuple[dict[str, Tensor], Tensor]:
    """Loader batch -> the model's inputs at 56 px (land cover at 14 px) and valid pixels."""
    tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items()
               if isinstance(v, Tensor)}  # fmt: skip
    b = tensors[VALID].shape[0]
    flip = torch.rand(b, generator=generator, device=generator.device).to(device) < 0.5
    inputs = {}
    for name, x in split_batch(tensors, cfg.all_modalities).items():
        categorical = not x.is_floating_point()
        image = x[:, None].float() if categorical else x  # (B, C, H, W)
        image = F.interpolate(image, size=(CHIP_TO, CHIP_TO), mode="bilinear", align_corners=False)
        image = torch.where(flip[:, None, None, None], image.flip(-1), image)
        if categorical:
            side = CHIP_TO // LC_STRIDE
            image = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
            inputs[name] = image[:, 0].to(torch.long)  # truncation, as theirs
        else:
            inputs[name] = image
    if cfg.dem_standardise and "dem" in inputs:
        inputs["dem"] = trimmed_standardise(inputs["dem"])
    valid = F.interpolate(tensors[VALID][:, None].float(), size=(CHIP_TO, CHIP_TO), mode="nearest")
    valid = torch.where(flip[:, None, None, None], valid.flip(-1), valid)[:, 0].bool()
    return inputs, valid


def trimmed_standardise(x: Tensor) -> Tensor:
    """Per sample: (x - mean) / sqrt(var + 1e-6) over its middle 10-90 % of sorted values."""
    flat = x.flatten(1)
    n = flat.shape[1]
    middle = flat.sort(dim=1).values[:, int(0.1 * n) : int(0.9 * n)]
    mean, var = middle.mean(dim=1), middle.var(dim=1)  # unbiased, as torch.var
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - mean.view(shape)) / (var + 1e-6).sqrt().view(shape)


def _masked_mean(per_pixel: Tensor, masked: Tensor) -> Tensor:
    """Mean over each sample's masked pixels, then over samples that have any (0 if none).

    Their nanmean over per-sample means, written without dividing by zero.
    """
    counts = masked.flatten(1).sum(1).float()  # (B,)
    per_sample = (per_pixel * masked).flatten(1).sum(1) / counts.clamp_min(1)
    has = (counts > 0).float()
    return (per_sample * has).sum() / has.sum().clamp_min(1)


def _pixels(token_mask: Tensor, size: int) -> Tensor:
    """Token mask (B, N) -> (B, size, size), each token covering its patch (nearest)."""
    grid = round(token_mask.shape[1] ** 0.5)
    m = token_mask.view(-1, 1, grid, grid).float()
    return F.interpolate(m, size=(size, size), mode="nearest")[:, 0] > 0.5


def _norm_pix(target: Tensor, patch: int) -> Tensor:
    """The target normalised per patch (over the patch's pixels and channels), unbiased var."""
    t = patchify(target, patch)  # (B, N, p*p*C)
    t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    return unpatchify(t, patch, round(t.shape[1] ** 0.5), target.shape[1])


def multimae_eo_loss(
    cfg: ModelConfig,
    preds: dict[str, Tensor],
    targets: dict[str, Tensor],
    visible: dict[str, Tensor],
    patch: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The unweighted sum of every decoder's loss, and each loss (detached)."""
    total = torch.zeros((), device=next(iter(preds.values())).device)
    parts = {}
    for name, pred in preds.items():
        source = RGB if name == NORM_RGB else name
        if source not in targets:
            continue
        pred, target = pred.float(), targets[source]
        size = target.shape[-1]
        if source in visible:
            masked = ~_pixels(visible[source], size)
        else:  # a target that was not an input: every patch is masked
            masked = torch.ones(target.shape[0], size, size, dtype=torch.bool, device=pred.device)
        m = next(x for x in cfg.all_modalities if x.name == source)
        if m.categorical:
            per_pixel = F.cross_entropy(pred, target, reduction="none")  # (B, h, w), fp32
        else:
            target = target.float()
            if name == NORM_RGB:
                target = _norm_pix(target, patch)
            err = (pred - target) ** 2 if m.loss == "mse" else (pred - target).abs()
            per_pixel = err.mean(dim=1)  # the channel mean first, as theirs
        loss = _masked_mean(per_pixel, masked)
        total = total + loss
        parts[name] = loss.detach()
    return total, parts
