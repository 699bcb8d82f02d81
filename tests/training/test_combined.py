"""The combined objective: MultiMAE reconstruction + weighted SoftCon on one masked pass."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from training import checkpoint
from training.augment import two_views
from training.combined import CombinedModel
from training.config import ModelConfig, PretrainConfig, SoftConConfig
from training.criteria import multimae_loss
from training.export import export_encoder, load_encoder, trained_pool
from training.loop import build_model, param_groups, tokens_per_sample
from training.modalities import split_batch
from training.multimae import MultiMAE
from training.softcon import label_vectors, softcon_loss
from training.step import autocast_for, step_generator, train_step

MODEL = ModelConfig(
    modalities="bandgroups", inputs=["rgb", "nir", "dem"], targets=["rgb", "dem", "lc"],
    input_size=16, num_visible=8, decoder_depth=1,
)  # fmt: skip


def smooth(batch: int, channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Low-frequency random images: learnable, unlike white noise."""
    coarse = torch.randn(batch, channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=size, mode="bilinear")


def loader_batch(batch: int = 6, size: int = 24, seed: int = 0) -> dict[str, Any]:
    """A batch shaped as the shard loader yields it, land-cover fractions included.

    Sample i is mostly of class 3i mod 11 with patches of the next class: labels overlap
    between some samples only, so SoftCon's targets are neither the identity nor uniform.
    """
    g = torch.Generator().manual_seed(seed)
    main = (torch.arange(batch) * 3 % 11)[:, None, None]
    lc = torch.where(smooth(batch, 1, size, g)[:, 0] > 0.5, (main + 1) % 11, main)
    return {
        "s2": smooth(batch, 12, size, g), "dem": smooth(batch, 1, size, g), "lc": lc,
        "valid": torch.rand(batch, size, size, generator=g) > 0.1,
        "lc_fractions": F.one_hot(lc.flatten(1), 11).float().mean(dim=1), "skipped": 0,
    }  # fmt: skip


def views(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    batch = loader_batch(seed=seed)
    inputs = {**split_batch(batch, MODEL.all_modalities), "valid": batch["valid"]}
    v1, v2 = two_views(inputs, 16, torch.Generator().manual_seed(seed))
    return v1, v2, label_vectors(batch["lc_fractions"])


def combined(loss_weight: float = 0.5, symmetric: bool = True) -> CombinedModel:
    torch.manual_seed(0)
    return CombinedModel(MultiMAE(MODEL), loss_weight, head_hidden=64, head_out=32,
                         temperature=0.2, symmetric=symmetric)  # fmt: skip


def test_the_loss_is_the_weighted_sum_of_the_two_parts_computed_separately() -> None:
    model = combined(loss_weight=0.5)
    v1, v2, y = views()
    loss, parts = model(v1, v2, y, torch.Generator().manual_seed(1))
    # The parts one by one, on the same masks: MultiMAE's forward and loss on each view, and
    # SoftCon's loss of the global token of that masked pass against the target's other view.
    g = torch.Generator().manual_seed(1)
    rec, con = [], []
    for online_view, target_view in ((v1, v2), (v2, v1)):
        state = g.get_state()
        preds, visible = model.online(online_view, g)  # consumes the masks' random numbers
        rec.append(multimae_loss(MODEL, preds, online_view, visible, online_view["valid"], 8)[0])
        encoded, visible_again = model.online.forward_encoder(
            online_view, torch.Generator().set_state(state)
        )
        assert all(torch.equal(visible[k], visible_again[k]) for k in visible)
        with torch.no_grad():
            k = model.target_head(model.target.encode(target_view)[:, 0])
        z = model.online_head(encoded[:, 0])
        con.append(softcon_loss(z, k, y, temperature=0.2, soft_weight=1.0))
    rec_loss, con_loss = (rec[0] + rec[1]) / 2, (con[0] + con[1]) / 2
    torch.testing.assert_close(parts["multimae"], rec_loss.detach())
    torch.testing.assert_close(parts["softcon"], con_loss.detach())
    torch.testing.assert_close(loss, rec_loss + 0.5 * con_loss)
    assert {"rgb", "dem", "lc", "top1", "soft_mass"} <= set(parts) and "nir" not in parts
    assert con_loss > 0.1 and rec_loss > 0.1  # neither part is negligible here
    # The weight scales the SoftCon part only.
    model.loss_weight = 2.0
    loss2, parts2 = model(v1, v2, y, torch.Generator().manual_seed(1))
    torch.testing.assert_close(parts2["multimae"], parts["multimae"])
    torch.testing.assert_close(loss2 - loss, 1.5 * con_loss)


@pytest.mark.parametrize("symmetric", [False, True])
def test_weight_zero_gives_exactly_multimaes_gradients(symmetric: bool) -> None:
    model = combined(loss_weight=0.0, symmetric=symmetric)
    reference = copy.deepcopy(model.online)  # the same MultiMAE, decoders included
    v1, v2, y = views()
    loss, parts = model(v1, v2, y, torch.Generator().manual_seed(1))
    assert parts["softcon"] > 0  # computed and logged, but not trained
    loss.backward()
    g = torch.Generator().manual_seed(1)
    rec = []
    for view in (v1, v2) if symmetric else (v1,):
        preds, visible = reference(view, g)
        rec.append(multimae_loss(MODEL, preds, view, visible, view["valid"], 8)[0])
    torch.stack(rec).mean().backward()
    ours = dict(model.online.named_parameters())
    for name, p in reference.named_parameters():
        assert p.grad is not None and ours[name].grad is not None, name
        assert torch.equal(ours[name].grad, p.grad), name  # bit for bit
    assert all(p.grad is not None and not p.grad.any() for p in model.online_head.parameters())


def test_the_target_is_an_encoder_and_follows_the_online_one_by_ema() -> None:
    model = combined()
    assert len(model.online.output_adapters) == 3 and len(model.target.output_adapters) == 0
    assert all(not p.requires_grad for p in model.target.parameters())
    before = copy.deepcopy(model.target.state_dict())
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    model.update_target(0.9)
    online = model.online.state_dict()
    for k, v in model.target.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * online[k])
    with pytest.raises(ValueError, match="nothing to reconstruct"):
        encoder = MultiMAE(MODEL)
        encoder.output_adapters = torch.nn.ModuleDict()
        CombinedModel(encoder)
    with pytest.raises(ValueError, match="land cover"):
        CombinedModel(MultiMAE(ModelConfig(modalities="bandgroups")))


def test_config_keeps_land_cover_a_target_and_never_an_input() -> None:
    cfg = PretrainConfig(objective="combined")
    assert cfg.model.inputs == ["rgb", "rededge", "nir", "swir", "dem"]
    assert "lc" in [m.name for m in cfg.model.target_modalities]
    assert cfg.uses_softcon and cfg.reconstructs and cfg.softcon.loss_weight == 1.0
    with pytest.raises(ValueError, match="combined: land cover"):
        PretrainConfig(objective="combined", model=ModelConfig(inputs=["rgb", "lc"]))
    with pytest.raises(ValueError, match="loss_weight"):
        SoftConConfig(loss_weight=-1)
    assert (trained_pool("combined"), trained_pool("softcon"), trained_pool("multimae")) == (
        "global", "global", "mean",
    )  # fmt: skip


def step_config(**overrides: Any) -> PretrainConfig:
    fields: dict[str, Any] = {
        "objective": "combined", "model": MODEL.model_copy(update={"inputs": None}),
        "softcon": SoftConConfig(head_hidden=64, head_out=32, loss_weight=0.8), "lr": 1e-3,
    }  # fmt: skip
    return PretrainConfig(**{**fields, **overrides})


def test_the_loop_step_trains_both_parts_and_the_export_loads(tmp_path: Path) -> None:
    cfg = step_config()
    assert cfg.model.inputs == ["rgb", "rededge", "nir", "swir", "dem"]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    assert isinstance(model, CombinedModel) and model.loss_weight == 0.8
    assert tokens_per_sample(model) == 2 * (8 + 5 * 4)  # 2 directions: 8 masked + 20 whole
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=cfg.lr)
    batch, rows, cpu = loader_batch(8), [], torch.device("cpu")
    for step in range(1, 51):
        generator = step_generator(cfg.seed, step, 0)
        loss, parts, n = train_step(model, optimizer, batch, cfg, generator, cpu,
                                    autocast_for(cfg, cpu))  # fmt: skip
        model.update_target(0.99)
        rows.append({"loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
    assert n == 8 and {"multimae", "softcon", "rgb", "lc", "dem", "top1"} <= set(rows[0])
    for row in rows:
        assert row["loss"] == pytest.approx(row["multimae"] + 0.8 * row["softcon"], rel=1e-5)
    first, last = rows[:10], rows[-10:]  # both parts learn (the SoftCon one more slowly)
    for key in ("loss", "multimae", "softcon"):
        assert sum(r[key] for r in last) < 0.9 * sum(r[key] for r in first), (key, rows)
    # A checkpoint of it exports the online encoder, which evaluation pools by its token.
    ckpt = tmp_path / "run" / "checkpoint_000000"
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    checkpoint.save(ckpt, model, optimizer, schedule, {"step": 50, "epoch": 0}, cfg)
    out = export_encoder(tmp_path / "run", tmp_path / "encoder.pt")
    payload = torch.load(out)
    assert payload["objective"] == "combined" and payload["step"] == 50
    encoder = load_encoder(out)
    online = model.online.state_dict()
    assert all(torch.equal(v, online[k]) for k, v in encoder.state_dict().items())
    assert json.loads((ckpt / checkpoint.CONFIG).read_text())["softcon"]["loss_weight"] == 0.8
