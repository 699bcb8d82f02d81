"""MultiMAE's behaviour: shapes, masking, losses, learning."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from training.config import ModelConfig
from training.criteria import multimae_loss
from training.masking import rounded_counts, sample_visible
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


def test_rounded_counts_follow_the_dirichlet_marginal() -> None:
    """round(K * s) with s ~ Beta(alpha, (M - 1) alpha), the marginal of a symmetric
    Dirichlet: P(count = j) = F((j + 1/2) / K) - F((j - 1/2) / K)."""
    k, m, draws = 49, 6, 40_000
    counts = rounded_counts(draws, m, k, 1.0, torch.Generator().manual_seed(0))
    observed = torch.bincount(counts.flatten(), minlength=k + 1).numpy()
    edges = np.clip((np.arange(k + 2) - 0.5) / k, 0, 1)
    expected = np.diff(stats.beta(1.0, m - 1.0).cdf(edges)) * draws * m
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # The bug of the largest-remainder version: a 1.5 % share of 49 rounds to 1 token.
    assert abs(observed[0] / (draws * m) - expected[0] / (draws * m)) < 0.003


def _reference_visible(counts: np.ndarray, tokens: list[int], k: int, rng: Any) -> np.ndarray:
    """MultiMAE's rule sample by sample: counts[m] tokens of each modality, then the
    chosen shuffled before the rest, the first k kept."""
    chosen = np.concatenate([rng.permutation(n) < c for n, c in zip(tokens, counts, strict=True)])
    order = np.concatenate([rng.permutation(np.flatnonzero(chosen)),
                            rng.permutation(np.flatnonzero(~chosen))])  # fmt: skip
    visible = np.zeros(sum(tokens), bool)
    visible[order[:k]] = True
    return visible


@pytest.mark.parametrize(("tokens", "k"), [([49] * 6, 49), ([4, 49, 9], 30)])
def test_masks_keep_exactly_k_with_the_references_distribution(tokens: list[int], k: int) -> None:
    draws = 20_000
    visible, keep = sample_visible(draws, tokens, k, 1.0, torch.Generator().manual_seed(0))
    assert (visible.sum(dim=1) == k).all()
    assert torch.equal(visible.nonzero()[:, 1].reshape(draws, k), keep)  # ascending
    ours = torch.stack([v.sum(dim=1) for v in visible.split(tokens, dim=1)], dim=1).numpy()

    rng = np.random.default_rng(0)
    counts = rounded_counts(draws, len(tokens), k, 1.0, torch.Generator().manual_seed(1)).numpy()
    theirs = np.stack([
        [v.sum() for v in np.split(_reference_visible(c, tokens, k, rng), np.cumsum(tokens)[:-1])]
        for c in counts
    ])  # fmt: skip
    for m, n in enumerate(tokens):  # each modality's count distribution, ours vs theirs
        a, b = np.bincount(ours[:, m], minlength=n + 1), np.bincount(theirs[:, m], minlength=n + 1)
        seen = (a + b) > 0
        assert stats.chi2_contingency(np.stack([a[seen], b[seen]])).pvalue > 1e-3, m
    if tokens == [49] * 6:  # the figure: no token for a modality in 4.7 % of samples
        assert abs((ours == 0).mean() - 0.047) < 0.003
    for part in visible.split(tokens, dim=1):  # within a modality every token as likely
        assert stats.chisquare(part.sum(dim=0).numpy()).pvalue > 1e-3


def test_masks_are_reproducible_from_the_generator() -> None:
    def draw(seed: int) -> Tensor:
        return sample_visible(8, [49, 49, 9], 40, 1.0, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    with pytest.raises(ValueError, match="63 visible tokens asked of 62"):
        sample_visible(2, [49, 4, 9], 63, 1.0, torch.Generator())


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


def test_land_cover_tokens_equal_the_projection_of_the_embedded_image() -> None:
    """class_patch_tokens skips the (B, E, H, W) image; values and gradients are the same."""
    from training.adapters import class_patch_tokens

    torch.manual_seed(0)
    classes, proj = torch.nn.Embedding(12, 32), torch.nn.Conv2d(32, 48, 8, 8)
    labels = torch.randint(0, 12, (3, 56, 56))
    direct = proj(classes(labels).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    fast = class_patch_tokens(labels, classes, proj)
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(t.square().sum(), [classes.weight, proj.weight, proj.bias])
             for t in (fast, direct)]  # fmt: skip
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_compiled_model_computes_what_the_eager_one_does() -> None:
    """`--compile` (torch.compile, inductor on this CPU): same predictions and loss."""
    cfg = ModelConfig(size="tiny", modalities="bandgroups")
    model = MultiMAE(cfg).eval()
    compiled = torch.compile(model)
    batch = loader_like_batch(4)
    inputs = split_batch(batch, cfg.all_modalities)
    with torch.no_grad():
        eager, visible = model(inputs, torch.Generator().manual_seed(0))
        fast, visible_c = compiled(inputs, torch.Generator().manual_seed(0))
    assert all(torch.equal(visible[k], visible_c[k]) for k in visible)
    for name in eager:
        torch.testing.assert_close(fast[name], eager[name], atol=1e-4, rtol=1e-4, msg=name)
    loss, _ = multimae_loss(cfg, eager, inputs, visible, batch["valid"], model.patch)
    loss_c, _ = multimae_loss(cfg, fast, inputs, visible, batch["valid"], model.patch)
    torch.testing.assert_close(loss_c, loss, atol=1e-5, rtol=1e-4)
