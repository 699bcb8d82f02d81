"""MultiMAE's behaviour: shapes, masking, losses, learning."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from training.config import ModelConfig
from training.criteria import multimae_loss
from training.masking import sample_masks, visible_counts
from training.modalities import PRESETS, split_batch
from training.multimae import MultiMAE


def smooth(batch: int, channels: int, size: int = 56) -> torch.Tensor:
    """Low-frequency random images: learnable, unlike white noise."""
    return F.interpolate(torch.randn(batch, channels, 7, 7), size=size, mode="bilinear")


def loader_like_batch(batch: int = 4, size: int = 56) -> dict[str, torch.Tensor]:
    """A batch shaped as the shard loader yields it."""
    return {
        "s2": smooth(batch, 12, size),
        "dem": smooth(batch, 1, size),
        "lc": (smooth(batch, 1, size)[:, 0] * 3).round().clamp(0, 11).long(),
        "valid": torch.rand(batch, size, size) > 0.05,
    }


@pytest.mark.parametrize("preset", ["bandgroups", "s2"])
def test_every_input_subset_gives_every_target_with_exactly_k_visible(preset: str) -> None:
    names = [m.name for m in PRESETS[preset]]
    model = MultiMAE(ModelConfig(modalities=preset)).eval()
    inputs = split_batch(loader_like_batch(), model.cfg.all_modalities)
    subsets = [c for r in (1, 2, len(names)) for c in itertools.combinations(names, r)]
    for subset in subsets:
        chosen = {n: inputs[n] for n in subset}
        with torch.no_grad():
            preds, visible = model(chosen, torch.Generator().manual_seed(0))
        assert set(preds) == set(names)
        for m in model.cfg.target_modalities:
            assert preds[m.name].shape == (4, m.out_channels, 56, 56)
        assert set(visible) == set(subset)
        total = sum(v.sum(dim=1) for v in visible.values())
        expected = min(49, 49 * len(subset))
        assert (total == expected).all(), (subset, total)
        features = model.features(chosen)
        assert features.shape == (4, model.dim)


def test_original_multimae_preset_shapes() -> None:
    model = MultiMAE(ModelConfig(modalities="s2", masking="multimae")).eval()
    inputs = split_batch(loader_like_batch(2, 224), model.cfg.all_modalities)
    with torch.no_grad():
        preds, visible = model(inputs, torch.Generator().manual_seed(1))
    assert preds["s2"].shape == (2, 12, 224, 224) and preds["lc"].shape == (2, 11, 224, 224)
    assert all(v.shape == (2, 196) for v in visible.values())
    assert (sum(v.sum(dim=1) for v in visible.values()) == 98).all()


def test_dirichlet_shares_average_to_one_over_modalities() -> None:
    counts = visible_counts(4000, [49] * 6, 49, 1.0, torch.Generator().manual_seed(0))
    assert (counts.sum(dim=1) == 49).all()
    shares = counts.float().mean(dim=0) / 49
    assert torch.allclose(shares, torch.full((6,), 1 / 6), atol=0.01)
    # Small alpha: most samples see mostly one modality, as the paper's ablation describes.
    peaked = visible_counts(2000, [49] * 3, 49, 0.1, torch.Generator().manual_seed(0))
    assert (peaked.max(dim=1).values > 40).float().mean() > 0.6


def test_counts_respect_capacity_and_masks_hold_them() -> None:
    counts = visible_counts(500, [4, 49, 9], 60, 1.0, torch.Generator().manual_seed(0))
    assert (counts.sum(dim=1) == 60).all()
    assert (counts <= torch.tensor([4, 49, 9])).all()
    masks = sample_masks(counts, [4, 49, 9], torch.Generator().manual_seed(0))
    for m, mask in enumerate(masks):
        assert (mask.sum(dim=1) == counts[:, m]).all()


def test_loss_ignores_targets_at_visible_positions() -> None:
    cfg = ModelConfig(modalities="s2")
    model = MultiMAE(cfg).eval()
    batch = loader_like_batch()
    inputs = split_batch(batch, cfg.all_modalities)
    with torch.no_grad():
        preds, visible = model(inputs, torch.Generator().manual_seed(0))
    loss, _ = multimae_loss(cfg, preds, inputs, visible, batch["valid"], model.patch)
    changed = {k: v.clone() for k, v in inputs.items()}
    for name, mask in visible.items():
        pixels = F.interpolate(mask.reshape(4, 1, 7, 7).float(), scale_factor=8)[:, 0].bool()
        if changed[name].ndim == 4:
            changed[name] = changed[name].masked_fill(pixels[:, None], 123.0)
        else:
            changed[name] = changed[name].masked_fill(pixels, 5)
    loss2, _ = multimae_loss(cfg, preds, changed, visible, batch["valid"], model.patch)
    assert torch.allclose(loss, loss2)
    # and the loss does see masked positions
    hidden = {k: v.clone() for k, v in inputs.items()}
    hidden["dem"] = hidden["dem"] + 10
    loss3, _ = multimae_loss(cfg, preds, hidden, visible, batch["valid"], model.patch)
    assert loss3 > loss


def test_missing_and_fully_masked_modalities_work() -> None:
    cfg = ModelConfig(modalities="bandgroups")
    model = MultiMAE(cfg)
    batch = loader_like_batch()
    inputs = split_batch(batch, cfg.all_modalities)
    del inputs["lc"]  # a batch without land cover
    preds, visible = model(inputs, torch.Generator().manual_seed(0), num_visible=3)
    assert "lc" not in visible and any((v.sum(dim=1) == 0).any() for v in visible.values())
    loss, parts = multimae_loss(cfg, preds, inputs, visible, batch["valid"], model.patch)
    loss.backward()
    assert torch.isfinite(loss) and "lc" not in parts
    with pytest.raises(ValueError, match="no input modality"):
        model({}, torch.Generator())


def test_a_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(modalities="s2", norm_pix=False)
    model = MultiMAE(cfg)
    batch = loader_like_batch()
    batch["valid"][:] = True
    inputs = split_batch(batch, cfg.all_modalities)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(80):
        preds, visible = model(inputs, torch.Generator().manual_seed(0))
        loss, _ = multimae_loss(cfg, preds, inputs, visible, batch["valid"], model.patch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_bad_model_configs_are_named() -> None:
    with pytest.raises(ValueError, match="inputs"):
        ModelConfig(inputs=["thermal"])
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ModelConfig(input_size=60)
    with pytest.raises(ValueError, match="num_visible"):
        ModelConfig(inputs=["dem"], num_visible=50)
