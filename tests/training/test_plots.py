"""The run's figures: loss curves and reconstructions are written, sized and coloured right."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_hex, to_rgb
from matplotlib.image import imread

from ingest.sources import worldcover
from training.adapters import patchify, unpatchify
from training.config import ModelConfig
from training.modalities import split_batch
from training.multimae import MultiMAE
from training.plots import (
    DPI,
    MASK_RGB,
    figure_inches,
    plot_losses,
    plot_reconstruction,
    unnormalise_patches,
)


def colours(png: Path) -> np.ndarray:
    """The distinct RGB colours (0-255) of a PNG, one per row."""
    rgb = (imread(png)[..., :3] * 255).round().astype(np.uint8)
    return np.unique(rgb.reshape(-1, 3), axis=0)


def has_colour(png: Path, hex_colour: str) -> bool:
    wanted = (np.array(to_rgb(hex_colour)) * 255).round().astype(np.uint8)
    return bool((colours(png) == wanted).all(axis=1).any())


def metric_rows(steps: int) -> list[dict[str, float]]:
    rows = []
    for s in range(1, steps + 1):
        decay = math.exp(-s / 20)
        row = {"step": s, "epoch": s // 10, "loss": 3 * decay + 0.1, "lr": 1e-4 * min(1, s / 5)}
        row |= {f"loss/{m}": w * decay + 0.01 for m, w in [("rgb", 1.0), ("dem", 0.5), ("lc", 2.0)]}
        rows.append(row)
    return rows


def run_model(cfg: ModelConfig, lc_class: int | None = None, batch: int = 3) -> dict:
    """A forward pass of an untrained model on smooth images; lc_class fixes the land cover."""
    torch.manual_seed(0)
    smooth = F.interpolate(torch.randn(batch, 13, 7, 7), size=56, mode="bilinear")
    lc = (smooth[:, 12] * 3).round().clamp(0, 11).long()
    loader_batch = {
        "s2": smooth[:, :12],
        "dem": smooth[:, 12:] * 100,
        "lc": lc if lc_class is None else torch.full_like(lc, lc_class),
    }
    model = MultiMAE(cfg).eval()
    inputs = split_batch(loader_batch, cfg.all_modalities)
    with torch.no_grad():
        preds, visible = model(inputs, torch.Generator().manual_seed(0))
    valid = torch.rand(batch, 56, 56) > 0.05
    return {"inputs": inputs, "preds": preds, "visible": visible, "valid": valid, "patch": 8}


def test_loss_curves_are_drawn(tmp_path: Path) -> None:
    out = plot_losses(metric_rows(60), tmp_path / "loss.png")
    assert out == tmp_path / "loss.png" and out.exists()
    assert len(colours(out)) > 20  # curves in several colours, not a blank page


def test_loss_curves_tolerate_missing_and_odd_values(tmp_path: Path) -> None:
    rows: list[dict] = metric_rows(30)
    for row in rows[::3]:
        del row["loss/dem"], row["lr"]
    rows[5]["loss"] = float("nan")
    rows += [{"epoch": 3}, {"loss/rgb": None}, {"step": 40, "loss": "diverged"}]
    out = plot_losses(rows, tmp_path / "loss.png")
    assert len(colours(out)) > 20


def test_no_steps_yet(tmp_path: Path) -> None:
    empty = plot_losses([], tmp_path / "empty.png")
    assert 2 <= len(colours(empty)) < 300  # just the text, anti-aliased
    no_loss = plot_losses([{"epoch": 0, "lr": 1e-4}], tmp_path / "no_loss.png")
    assert (imread(no_loss) == imread(empty)).all()


@pytest.mark.parametrize("preset", ["bandgroups", "s2"])
def test_reconstruction_has_a_row_per_sample_and_target(preset: str, tmp_path: Path) -> None:
    cfg = ModelConfig(modalities=preset)
    out = plot_reconstruction(cfg, **run_model(cfg), out_png=tmp_path / "r.png", n=2)
    height, width = imread(out).shape[:2]
    w_in, h_in = figure_inches(2 * len(cfg.target_modalities), legend=True)
    assert (width, height) == (round(w_in * DPI), round(h_in * DPI))
    assert height > width  # 12 or 6 rows of 4 panels
    assert len(colours(out)) > 100


def test_reconstruction_takes_bf16_predictions_and_n_beyond_the_batch(tmp_path: Path) -> None:
    cfg = ModelConfig(modalities="s2")
    run = run_model(cfg, batch=1)
    run["preds"] = {k: v.bfloat16() for k, v in run["preds"].items()}
    out = plot_reconstruction(cfg, **run, out_png=tmp_path / "r.png", n=4)
    height = imread(out).shape[0]
    assert height == round(figure_inches(len(cfg.target_modalities), legend=True)[1] * DPI)


def test_land_cover_uses_the_worldcover_colours(tmp_path: Path) -> None:
    assert worldcover.CLASSES[0].color == "#006400"  # class index 0 is tree cover
    cfg = ModelConfig(modalities="s2", inputs=["s2"], targets=["lc"])
    out = plot_reconstruction(cfg, **run_model(cfg, lc_class=0), out_png=tmp_path / "r.png")
    assert has_colour(out, "#006400")
    assert has_colour(out, to_hex(MASK_RGB))  # lc was not an input: its input is all masked
    width = imread(out).shape[1]
    assert width == round(figure_inches(2, legend=True)[0] * DPI)


def test_no_land_cover_no_legend(tmp_path: Path) -> None:
    cfg = ModelConfig(targets=["rgb", "dem"])
    out = plot_reconstruction(cfg, **run_model(cfg), out_png=tmp_path / "r.png", n=1)
    height, width = imread(out).shape[:2]
    w_in, h_in = figure_inches(2, legend=False)
    assert (width, height) == (round(w_in * DPI), round(h_in * DPI))


def test_unnormalise_patches_inverts_the_norm_pix_target() -> None:
    target = torch.randn(2, 3, 16, 16) * 5 + 2
    t = patchify(target, 8)
    normalised = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    pred = unpatchify(normalised, 8, 2, 3)
    assert torch.allclose(unnormalise_patches(pred, target, 8), target, atol=1e-4)
