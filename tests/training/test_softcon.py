"""SoftCon's parts: soft targets, the loss and its variants, EMA, masking, two views."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.augment import two_views
from training.config import ModelConfig
from training.multimae import MultiMAE
from training.softcon import (
    SoftConModel,
    ema_momentum,
    ema_update,
    label_vectors,
    siamese_mask,
    soft_targets,
    softcon_loss,
)


def embeddings(batch: int = 8, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def test_label_vectors_threshold_and_fractions() -> None:
    fractions = torch.tensor([[0.5, 0.04, 0.05, 0.41], [0.0, 0.0, 1.0, 0.0]])
    assert label_vectors(fractions).tolist() == [[1, 0, 1, 1], [0, 0, 1, 0]]
    assert torch.equal(label_vectors(fractions, "fractions"), fractions)
    with pytest.raises(ValueError, match="label mode"):
        label_vectors(fractions, "argmax")  # type: ignore[arg-type]


def test_identical_labels_give_a_uniform_soft_target() -> None:
    y = torch.tensor([1.0, 0, 1, 0, 0, 1]).repeat(6, 1)
    assert torch.allclose(soft_targets(y, 1.0), torch.full((6, 6), 1 / 6))
    # With fractions as labels too; and a zero weight is the hard target whatever the labels.
    fractions = torch.tensor([0.7, 0.0, 0.2, 0.1]).repeat(5, 1)
    assert torch.allclose(
        soft_targets(label_vectors(fractions, "fractions"), 1.0), torch.full((5, 5), 0.2)
    )
    assert torch.equal(soft_targets(y, 0.0), torch.eye(6))


def test_soft_target_formula_and_zero_label_vectors() -> None:
    y = torch.tensor([[1.0, 1, 0], [1, 0, 0], [0, 0, 0]])  # sample 2 has no labels
    t = soft_targets(y, 0.5)
    c = 0.5 * 2**-0.5  # weight * cosine of samples 0 and 1
    expected = torch.tensor([[1, c, 0], [c, 1, 0], [0, 0, 1]]) / torch.tensor(
        [[1 + c], [1 + c], [1]]
    )
    assert torch.allclose(t, expected)
    assert torch.allclose(t.sum(dim=1), torch.ones(3))


def test_disjoint_labels_reduce_to_infonce() -> None:
    z, k = embeddings()
    y = torch.eye(11)[:8]  # one distinct class each: no label overlap
    loss, target = softcon_loss(z, k, y, temperature=0.2, return_target=True)
    assert torch.equal(target, torch.eye(8))
    # InfoNCE written out: -log exp(s_ii / t) / sum_j exp(s_ij / t) on cosine similarities.
    s = (z / z.norm(dim=1, keepdim=True)) @ (k / k.norm(dim=1, keepdim=True)).T / 0.2
    infonce = -(s.diagonal() - s.exp().sum(dim=1).log()).mean()
    assert torch.allclose(loss, infonce, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(s, torch.arange(8)), atol=1e-6)


def test_bce_variant_is_finite_and_decreases_as_embeddings_align() -> None:
    z, noise = embeddings(16, 32)
    y = (torch.rand(16, 11, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    losses = [softcon_loss(z, z + eps * noise, y, variant="bce") for eps in (4.0, 1.0, 0.3, 0.0)]
    assert all(torch.isfinite(v) for v in losses)
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), losses
    # Gradient steps on the online side lower it too.
    online = nn.Parameter(noise.clone())
    opt = torch.optim.Adam([online], lr=0.05)
    trace = []
    for _ in range(30):
        loss = softcon_loss(online, z, y, variant="bce")
        trace.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert trace == sorted(trace, reverse=True) and trace[-1] < 0.7 * trace[0]


def test_ema_update_is_exact() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7)).double()
    target = copy.deepcopy(online).requires_grad_(False)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    m = 0.9
    ema_update(target, online, m)
    for t, t0, o in zip(target.parameters(), before, online.parameters(), strict=True):
        assert torch.equal(t, m * t0 + (1 - m) * o)
    ema_update(target, online, 1.0)  # momentum 1: unchanged; 0: a copy
    pairs = zip(target.parameters(), before, online.parameters(), strict=True)
    assert all(torch.equal(t, m * t0 + (1 - m) * o) for t, t0, o in pairs)
    ema_update(target, online, 0.0)
    assert all(
        torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="differ in parameters"):
        ema_update(nn.Linear(5, 7), nn.Sequential(nn.Linear(5, 7)), 0.5)


def test_ema_momentum_is_byols_cosine_schedule() -> None:
    assert ema_momentum(0, 100) == pytest.approx(0.996)
    assert ema_momentum(50, 100) == pytest.approx(0.998)
    assert ema_momentum(100, 100) == 1.0 and ema_momentum(200, 100) == 1.0
    values = [ema_momentum(s, 100) for s in range(101)]
    assert values == sorted(values)


def test_siamese_mask_keeps_the_same_count_per_row() -> None:
    mask = siamese_mask(64, 49, 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (64, 49) and (mask.sum(dim=1) == 12).all()
    assert len({tuple(row.tolist()) for row in mask}) == 64  # independent per sample
    again = siamese_mask(64, 49, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert siamese_mask(2, 4, 0.99, torch.Generator()).sum(dim=1).tolist() == [1, 1]


def test_modality_drop_hides_one_whole_source_from_the_online_view() -> None:
    # 12 s2 tokens then 4 dem tokens; keep 4 of 16: a dropped source leaves room for the other.
    sources = torch.tensor([0] * 12 + [1] * 4)
    g = torch.Generator().manual_seed(0)
    mask = siamese_mask(256, 16, 0.75, g, sources, drop=1.0)
    assert (mask.sum(dim=1) == 4).all()
    sees_s2, sees_dem = mask[:, :12].any(dim=1), mask[:, 12:].any(dim=1)
    assert not (sees_s2 & sees_dem).any()  # every row sees one source only
    assert sees_s2.sum() > 80 and sees_dem.sum() > 80  # either source may be the one dropped

    # Without drop, most rows of this draw see both; drop=0.3 hides a source in about 30 %.
    def both(drop: float) -> float:
        m = siamese_mask(2000, 16, 0.75, torch.Generator().manual_seed(1), sources, drop)
        return (m[:, :12].any(dim=1) & m[:, 12:].any(dim=1)).float().mean().item()

    plain, some = both(0.0), both(0.3)
    assert plain > 0.7 and abs((plain - some) / plain - 0.3) < 0.05


def coordinate_batch(batch: int = 4, size: int = 24) -> dict[str, torch.Tensor]:
    """S2 bands 0/1 hold row/column positions, DEM their sum, land cover the row index."""
    rows, cols = torch.meshgrid(
        torch.arange(size).float(), torch.arange(size).float(), indexing="ij"
    )
    offsets = torch.arange(batch).float()[:, None, None] * 100  # samples must not be mixed up
    s2 = torch.zeros(batch, 12, size, size)
    s2[:, 0], s2[:, 1] = rows + offsets, cols
    return {
        "s2": s2,
        "dem": (rows + cols + offsets)[:, None],
        "lc": (rows + offsets).long(),
        "valid": (rows < size // 2).expand(batch, -1, -1).clone(),
        "lc_fractions": torch.rand(batch, 11),
    }


def test_two_views_keep_modalities_aligned_and_views_independent() -> None:
    batch = coordinate_batch()
    v1, v2 = two_views(batch, 16, torch.Generator().manual_seed(0), noise=0.0, gain=0.0, shift=0.0)
    for v in (v1, v2):
        assert v["s2"].shape == (4, 12, 16, 16) and v["dem"].shape == (4, 1, 16, 16)
        assert v["lc"].shape == (4, 16, 16) and v["lc"].dtype == torch.long
        assert v["valid"].dtype == torch.bool
        assert v["lc_fractions"] is batch["lc_fractions"]
        # Bilinear sampling of linear ramps is exact, so the same crop, flip and turn on S2
        # and DEM leaves DEM = row + column at every output pixel.
        assert torch.allclose(v["dem"][:, 0], v["s2"][:, 0] + v["s2"][:, 1], atol=1e-3)
        # Nearest-neighbour land cover and mask sit within half a pixel of the same place.
        assert ((v["lc"].float() - v["s2"][:, 0]).abs() <= 0.5 + 1e-3).all()
        assert torch.equal(v["valid"], (v["s2"][:, 0] % 100).round() < 12)
    assert not torch.allclose(v1["s2"], v2["s2"])
    # With photometric changes: per band, so S2's constant bands stay constant per sample.
    p1, _ = two_views(batch, 16, torch.Generator().manual_seed(0), noise=0.0)
    flat = p1["s2"][:, 2:].flatten(2)
    assert torch.allclose(flat.std(dim=2), torch.zeros(4, 10), atol=1e-6)
    assert not torch.allclose(flat[:, :, 0], flat[:, :1, 0].expand(-1, 10))


def softcon_model(**kwargs: object) -> SoftConModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        modalities="bandgroups", inputs=["rgb", "nir", "dem"], input_size=16, num_visible=8
    )
    return SoftConModel(MultiMAE(cfg), head_hidden=64, head_out=32, **kwargs)  # type: ignore[arg-type]


def views() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = {
        n: torch.randn(6, c, 24, 24, generator=g) for n, c in (("rgb", 3), ("nir", 2), ("dem", 1))
    }
    v1, v2 = two_views(base, 16, g)
    return v1, v2, label_vectors(torch.rand(6, 11, generator=g))


@pytest.mark.parametrize("variant", ["ce", "bce"])
def test_gradient_flows_only_into_the_online_branch(variant: str) -> None:
    model = softcon_model(variant=variant)
    v1, v2, y = views()
    target_before = copy.deepcopy(model.target.state_dict())
    loss, parts = model(v1, v2, y, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and set(parts) == {"softcon", "top1", "soft_mass"}
    loss.backward()
    online = [*model.online.named_parameters(), *model.online_head.named_parameters()]
    assert online and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in online), [
        n for n, p in online if p.grad is None or p.grad.abs().sum() == 0
    ]
    target = [*model.target.parameters(), *model.target_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in target)
    assert len(model.online.output_adapters) == 0
    # An optimiser step moves only the online branch; the EMA then moves the target exactly.
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for k, v in model.target.state_dict().items():
        assert torch.equal(v, target_before[k])
    model.update_target(0.9)
    online_state = model.online.state_dict()
    for k, v in model.target.state_dict().items():
        assert torch.equal(v, 0.9 * target_before[k] + (1 - 0.9) * online_state[k])
    model.reset_target()
    assert all(torch.equal(v, online_state[k]) for k, v in model.target.state_dict().items())


def test_softcon_model_refuses_land_cover_as_input() -> None:
    with pytest.raises(ValueError, match="land cover"):
        SoftConModel(MultiMAE(ModelConfig(modalities="bandgroups")))
