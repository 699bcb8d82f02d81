"""MultiMAE's losses, on masked tokens only and valid pixels only.

Spectral modalities: MSE, against targets normalised per patch when `norm_pix` (MAE's
normalised-pixel loss); elevation: L1; land cover: cross-entropy ignoring nodata. A
target modality that was not an input is wholly masked, so its loss covers every patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.adapters import patch_mask, patchify
from training.config import ModelConfig
from training.modalities import ModelModality


def _pixel_loss(
    m: ModelModality, pred: Tensor, target: Tensor, weight: Tensor, patch: int, norm_pix: bool
) -> Tensor:
    """Mean of the per-pixel loss over pixels with weight (B, H, W) > 0."""
    p, t = patchify(pred, patch), patchify(target, patch)  # (B, N, p*p*C)
    if norm_pix and m.loss == "mse":
        mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
        t = (t - mean) / (var + 1e-6).sqrt()
    err = (p - t) ** 2 if m.loss == "mse" else (p - t).abs()
    w = patchify(weight[:, None].float().expand(-1, target.shape[1], -1, -1), patch)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def _class_loss(m: ModelModality, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    labels = target.masked_fill(~weight, m.num_classes)  # excluded pixels -> ignore index
    loss = F.cross_entropy(logits, labels, ignore_index=m.num_classes, reduction="sum")
    counted = (labels != m.num_classes).sum()
    return loss / counted.clamp_min(1)


def multimae_loss(
    cfg: ModelConfig,
    preds: dict[str, Tensor],
    targets: dict[str, Tensor],
    visible: dict[str, Tensor],
    valid: Tensor,
    patch: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the target modalities' losses, and each loss (detached)."""
    total = torch.zeros((), device=valid.device)
    parts = {}
    for m in cfg.target_modalities:
        if m.name not in preds or m.name not in targets:
            continue  # absent from this batch
        pred, target = preds[m.name], targets[m.name]
        if m.name in visible:
            masked = ~patch_mask(visible[m.name], patch)  # (B, H, W)
        else:
            masked = torch.ones_like(valid)
        weight = masked & valid
        if m.loss == "ce":
            loss = _class_loss(m, pred, target, weight)
        else:
            loss = _pixel_loss(m, pred, target, weight, patch, cfg.norm_pix)
        total = total + cfg.loss_weights.get(m.name, 1.0) * loss
        parts[m.name] = loss.detach()
    return total, parts
