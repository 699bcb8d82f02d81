"""Figures of a pretraining run: loss curves and masked reconstructions.

    plot_losses(rows, "plots/loss.png")
    plot_reconstruction(cfg, inputs, preds, visible, valid, patch, "plots/recon.png")

A reconstruction row is one (sample, target modality); its columns are MultiMAE's figure:
the masked input (masked patches grey), the prediction, the target, and the prediction
with the visible patches pasted back. With `norm_pix` spectral predictions are per-patch
normalised; they are shown in the target's units using each target patch's mean and std,
as MAE's visualisation does (which borrows the target's brightness, not its detail).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from matplotlib.patches import Patch
from matplotlib.ticker import StrMethodFormatter
from torch import Tensor

from ingest.sources import worldcover
from shards.modalities import DEM
from shards.preview import land_cover_style
from training.adapters import patchify, unpatchify
from training.config import ModelConfig
from training.modalities import ModelModality

DPI = 100
CELL_IN = 1.5  # inches per reconstruction panel side
LABEL_IN = 0.9  # left margin for the row labels
TITLE_IN = 0.35  # top margin for the column titles
PAD_IN = 0.1  # bottom and right margins
LEGEND_IN = 1.9  # right margin for the land-cover legend
COLUMNS = ("input, masked", "prediction", "target", "prediction + visible")
MASK_RGB = (0.55, 0.55, 0.6)  # a bluish grey, so it stands out on grey-scale bands too
TRUE_COLOUR = ("B04", "B03", "B02")
LOG_RANGE = 20.0  # a loss axis spanning more than this factor is logarithmic

Painter = Callable[[np.ndarray], np.ndarray]  # image of a modality -> (H, W, 3) RGB


def _save(fig: Figure, out_png: str | Path) -> Path:
    path = Path(out_png)
    FigureCanvasAgg(fig).print_png(path)
    return path


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows with a finite number under `key`."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(float(row.get("step", i)))
            ys.append(float(value))
    return xs, ys


def _smooth(y: list[float]) -> np.ndarray:
    """Trailing mean over ~2 % of the curve: per-step losses are noisy."""
    window = max(1, len(y) // 50)
    c = np.cumsum(np.concatenate([[0.0], y]))
    lag = np.maximum(np.arange(1, len(y) + 1) - window, 0)
    return (c[1:] - c[lag]) / (np.arange(1, len(y) + 1) - lag)


# What the loss of each objective is, for the figure's axis.
LOSS_LABELS = {
    "multimae": "reconstruction loss (masked patches)",
    "softcon": "soft contrastive loss",
    "combined": "reconstruction + weighted soft contrastive loss",
}


def plot_losses(
    metrics: list[dict[str, Any]], out_png: str | Path, objective: str = "multimae"
) -> Path:
    """Total and per-part loss (top) and learning rate (bottom) against step."""
    fig = Figure(figsize=(8, 5.5), dpi=DPI)
    keys = ["loss", *sorted({k for row in metrics for k in row if k.startswith("loss/")})]
    curves = {k: s for k in keys if (s := _series(metrics, k))[0]}
    if not curves:
        fig.text(0.5, 0.5, "no steps yet", ha="center", va="center", fontsize=20)
        return _save(fig, out_png)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08, left=0.12, right=0.8)
    ax = fig.add_subplot(grid[0])
    lr_ax = fig.add_subplot(grid[1], sharex=ax)
    for key, (x, y) in curves.items():
        total = key == "loss"
        if total and len(y) > 50:
            ax.plot(x, y, color="black", alpha=0.2, lw=0.5)  # raw total under its mean
        style: dict[str, Any] = {"lw": 2.0, "color": "black"} if total else {"lw": 1.2}
        style["marker"] = "o" if len(y) < 10 else ""  # a line of one point is invisible
        ax.plot(x, _smooth(y), label="total" if total else key.removeprefix("loss/"), **style)
    values = [v for _, y in curves.values() for v in y]
    if min(values) > 0 and max(values) / min(values) > LOG_RANGE:
        ax.set_yscale("log")
    x, y = curves.get("loss", next(iter(curves.values())))
    ax.set_title(f"step {x[-1]:.0f}: loss {y[-1]:.4g}", fontsize=10)
    ax.set_ylabel(LOSS_LABELS[objective])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    x, y = _series(metrics, "lr")
    lr_ax.plot(x, y, color="tab:purple", lw=1.2, marker="o" if len(y) < 10 else "")
    lr_ax.set(ylabel="lr", xlabel="step")
    lr_ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.0e}"))
    lr_ax.grid(alpha=0.3)
    return _save(fig, out_png)


def unnormalise_patches(pred: Tensor, target: Tensor, patch: int) -> Tensor:
    """Per-patch normalised prediction (B, C, H, W) -> target units, by the target's patches.

    Inverts the `norm_pix` target of `criteria._pixel_loss`: each patch's statistics are
    taken over its pixels and channels together.
    """
    t = patchify(target, patch)  # (B, N, p*p*C)
    mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
    p = patchify(pred, patch) * (var + 1e-6).sqrt() + mean
    return unpatchify(p, patch, target.shape[-1] // patch, target.shape[1])


def _display_bands(m: ModelModality) -> list[int]:
    """Bands shown: true colour where present, a 3-band group as RGB, else the first band."""
    if set(TRUE_COLOUR) <= set(m.bands):
        return [m.bands.index(b) for b in TRUE_COLOUR]
    return [0, 1, 2] if len(m.bands) == 3 else [0]


def _painter(m: ModelModality, target: np.ndarray, valid: np.ndarray) -> Painter:
    """Image -> RGB for one sample of m, with the 2-98 % stretch of its target's valid pixels."""
    if m.categorical:
        cmap, norm = land_cover_style()
        return lambda x: cmap(norm(x))[..., :3]
    bands = _display_bands(m)
    shown = target[bands]  # (C', H, W)
    lo, hi = np.percentile(shown[:, valid] if valid.any() else shown, [2, 98])

    def scale(x: np.ndarray) -> np.ndarray:
        return np.clip((x[bands] - lo) / max(hi - lo, 1e-6), 0, 1)

    if len(bands) == 3:
        return lambda x: scale(x).transpose(1, 2, 0)
    ramp = colormaps["terrain" if m.source == DEM.name else "gray"]
    return lambda x: ramp(scale(x)[0])[..., :3]


def figure_inches(rows: int, legend: bool) -> tuple[float, float]:
    """(width, height) of a reconstruction figure with `rows` rows, in inches."""
    right = LEGEND_IN if legend else PAD_IN
    return LABEL_IN + len(COLUMNS) * CELL_IN + right, TITLE_IN + rows * CELL_IN + PAD_IN


def _figure(rows: int, legend: bool) -> tuple[Figure, GridSpec]:
    """A figure with a grid of rows x columns square panels, margins for labels and legend."""
    width, height = figure_inches(rows, legend)
    fig = Figure(figsize=(width, height), dpi=DPI)
    right = 1 - (LEGEND_IN if legend else PAD_IN) / width
    grid = fig.add_gridspec(
        rows, len(COLUMNS), left=LABEL_IN / width, right=right, top=1 - TITLE_IN / height,
        bottom=PAD_IN / height, wspace=0.04, hspace=0.04,
    )  # fmt: skip
    return fig, grid


def _panels(
    m: ModelModality, target: Tensor, pred: Tensor, shown: np.ndarray, valid: np.ndarray
) -> tuple[list[np.ndarray], set[int]]:
    """The four RGB panels of one sample of m (`shown`: visible pixels) and classes in them."""
    if m.categorical:
        t, p = target.long().numpy(), pred.argmax(dim=0).numpy()  # (H, W)
    else:
        t, p = target.float().numpy(), pred.numpy()  # (C, H, W)
    paint = _painter(m, t, valid)
    masked = np.where(shown[..., None], paint(t), np.array(MASK_RGB))
    classes = set(np.unique(np.stack([t, p])).tolist()) if m.categorical else set()
    return [masked, paint(p), paint(t), paint(np.where(shown, t, p))], classes


def _legend(fig: Figure, classes: set[int]) -> None:
    cmap, _ = land_cover_style()
    names = [c.name for c in worldcover.CLASSES] + ["nodata"]  # class index i is CLASSES[i]
    patches = [Patch(facecolor=cmap(k), edgecolor="grey", label=names[k]) for k in sorted(classes)]
    fig.legend(handles=patches, loc="upper right", fontsize=7, title="WorldCover", frameon=False)


def _nearest(flat: Tensor, size: int) -> np.ndarray:
    """A square grid flattened (N,) -> (size, size) bool, each cell repeated or sampled."""
    side = round(flat.numel() ** 0.5)
    grid = flat.view(1, 1, side, side)
    return F.interpolate(grid, size=(size, size), mode="nearest")[0, 0].numpy() > 0.5


def plot_reconstruction(
    cfg: ModelConfig,
    inputs: dict[str, Tensor],
    preds: dict[str, Tensor],
    visible: dict[str, Tensor],
    valid: Tensor,
    patch: int,
    out_png: str | Path,
    n: int = 2,
) -> Path:
    """Masked input, prediction, target and pasted prediction of the first n samples.

    One row per (sample, target modality); land cover in the WorldCover colours with a
    legend. A target that was not an input is shown wholly masked.
    """
    targets = [m for m in cfg.target_modalities if m.name in inputs and m.name in preds]
    host = {k: v.detach().cpu() for k, v in inputs.items()}
    out = {k: v.detach().float().cpu() for k, v in preds.items()}
    for m in targets:
        if cfg.norm_pix and m.loss == "mse":
            out[m.name] = unnormalise_patches(out[m.name], host[m.name].float(), patch)
    ok = valid.detach().cpu().bool().numpy()  # (B, H, W)
    n = min(n, len(ok))
    legend = any(m.categorical for m in targets)
    fig, grid = _figure(max(1, n * len(targets)), legend)
    classes: set[int] = set()
    for r, (i, m) in enumerate(itertools.product(range(n), targets)):
        size = host[m.name].shape[-1]  # the preset multimae-eo has land cover at 14 px
        if m.name in visible:
            shown = _nearest(visible[m.name][i].cpu().float(), size)  # (H, W)
        else:  # not an input: every patch was masked
            shown = np.zeros((size, size), dtype=bool)
        valid_here = _nearest(torch.from_numpy(ok[i]).float().flatten(), size)
        panels, seen = _panels(m, host[m.name][i], out[m.name][i], shown, valid_here)
        classes |= seen
        label = f"#{i} {m.name}" + ("" if m.name in visible else "\n(not input)")
        for c, image in enumerate(panels):
            ax = fig.add_subplot(grid[r, c], xticks=[], yticks=[])
            ax.imshow(image, interpolation="nearest")
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if legend:
        _legend(fig, classes)
    return _save(fig, out_png)
