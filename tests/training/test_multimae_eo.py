"""`model.preset: multimae-eo` is the MultiMAE-EO authors' model: their released checkpoint
loads into it, and it computes what their architecture computes.

No download is possible here: the checkpoint is a state dict of exactly their layout
(josesosajs/multimae-meets-eo, the reference MultiMAE's keys and shapes for ViT-B) with
random values, and "their architecture" is a direct forward pass over that state dict
written below from their code's description (fused qkv, global token last, no encoder
norm, decoders whose queries are the target's own tokens, no cross-attention residual).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from training.checkpoint import CheckpointError
from training.config import ModelConfig, PretrainConfig
from training.export import load_encoder
from training.init import init_from
from training.loop import param_groups, warmup_cosine
from training.multimae import MultiMAE
from training.multimae_eo import multimae_eo_loss, prepare_eo_batch, trimmed_standardise

D, DEPTH, HEADS = 768, 12, 12  # ViT-B
DD, DDEPTH, DHEADS = 128, 2, 8  # their decoders
# in our modality order (rgb, rededge, nir, swir, dem, lc): their token order is a dict's,
# and attention does not depend on it
CHANNELS = {"rgb": 3, "ired": 3, "ebands": 2, "sired": 2, "depth": 1}
TASKS = [*CHANNELS, "semseg"]
OUTPUTS = {**{t: (c, 8) for t, c in CHANNELS.items()}, "semseg": (12, 2), "norm_rgb": (3, 8)}
OURS = {
    "rgb": "rgb",
    "ired": "rededge",
    "sired": "swir",
    "ebands": "nir",
    "depth": "dem",
    "semseg": "lc",
    "norm_rgb": "norm_rgb",
}


def their_table(dim: int) -> Tensor:
    """Their fixed 2-D sin-cos table (1, dim, 28, 28): [sin, cos] of the row, then the column."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    parts = [f(c[..., None] * omega) for c in (rows, cols) for f in (np.sin, np.cos)]
    return torch.tensor(np.concatenate(parts, -1), dtype=torch.float32).permute(2, 0, 1)[None]


def their_state(seed: int = 0) -> dict[str, Tensor]:
    """Random weights in the released checkpoint's exact keys and shapes."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int, scale: float = 0.05) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str, dim: int) -> dict[str, Tensor]:
        return {f"{prefix}.weight": 1 + w(dim), f"{prefix}.bias": w(dim)}

    def block(prefix: str, dim: int) -> dict[str, Tensor]:
        return {
            **norm(f"{prefix}.norm1", dim),
            **norm(f"{prefix}.norm2", dim),
            f"{prefix}.attn.qkv.weight": w(3 * dim, dim),
            f"{prefix}.attn.qkv.bias": w(3 * dim),
            f"{prefix}.attn.proj.weight": w(dim, dim),
            f"{prefix}.attn.proj.bias": w(dim),
            f"{prefix}.mlp.fc1.weight": w(4 * dim, dim),
            f"{prefix}.mlp.fc1.bias": w(4 * dim),
            f"{prefix}.mlp.fc2.weight": w(dim, 4 * dim),
            f"{prefix}.mlp.fc2.bias": w(dim),
        }

    s: dict[str, Tensor] = {"global_tokens": w(1, 1, D, scale=0.02)}
    for t, c in CHANNELS.items():
        s |= {
            f"input_adapters.{t}.proj.weight": w(D, c, 8, 8),
            f"input_adapters.{t}.proj.bias": w(D),
            f"input_adapters.{t}.pos_emb": their_table(D),
        }
    s |= {
        "input_adapters.semseg.class_emb.weight": w(12, 64),
        "input_adapters.semseg.proj.weight": w(D, 64, 2, 2),
        "input_adapters.semseg.proj.bias": w(D),
        "input_adapters.semseg.pos_emb": their_table(D),
    }
    for n in range(DEPTH):
        s |= block(f"encoder.{n}", D)
    for t, (c, p) in OUTPUTS.items():
        o = f"output_adapters.{t}"
        s |= {
            f"{o}.mask_token": w(1, 1, DD),
            f"{o}.pos_emb": their_table(DD),
            f"{o}.proj_context.weight": w(DD, D),
            f"{o}.proj_context.bias": w(DD),
            f"{o}.decoder.q.weight": w(DD, DD),
            f"{o}.decoder.q.bias": w(DD),
            f"{o}.decoder.kv.weight": w(2 * DD, DD),
            f"{o}.decoder.kv.bias": w(2 * DD),
            f"{o}.decoder.proj.weight": w(DD, DD),
            f"{o}.decoder.proj.bias": w(DD),
            **norm(f"{o}.context_norm", DD),
            **norm(f"{o}.query_norm", DD),
            **norm(f"{o}.out_norm", DD),
            f"{o}.mlp.fc1.weight": w(4 * DD, DD),
            f"{o}.mlp.fc1.bias": w(4 * DD),
            f"{o}.mlp.fc2.weight": w(DD, 4 * DD),
            f"{o}.mlp.fc2.bias": w(DD),
            f"{o}.out_proj.weight": w(c * p * p, DD),
            f"{o}.out_proj.bias": w(c * p * p),
        }
        s |= {f"{o}.task_embeddings.{task}": w(1, 1, DD, scale=0.02) for task in TASKS}
        for n in range(DDEPTH):
            s |= block(f"{o}.decoder_transformer.{n}", DD)
    return s


# --- their forward pass, written from their code's description -------------------------


def attention(
    q_in: Tensor,
    ctx: Tensor,
    q: tuple[Tensor, Tensor],
    kv: tuple[Tensor, Tensor],
    proj: tuple[Tensor, Tensor],
    heads: int,
) -> Tensor:
    b, n, d = q_in.shape
    hd = d // heads
    qh = F.linear(q_in, *q).reshape(b, n, heads, hd).permute(0, 2, 1, 3)
    k, v = F.linear(ctx, *kv).reshape(b, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
    a = (qh @ k.transpose(-2, -1) * hd**-0.5).softmax(-1)
    return F.linear((a @ v).transpose(1, 2).reshape(b, n, d), *proj)


def ln(x: Tensor, s: dict[str, Tensor], p: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], s[f"{p}.weight"], s[f"{p}.bias"], eps=1e-6)


def block(x: Tensor, s: dict[str, Tensor], p: str, heads: int) -> Tensor:
    d = x.shape[-1]
    qkv_w, qkv_b = s[f"{p}.attn.qkv.weight"], s[f"{p}.attn.qkv.bias"]
    h = ln(x, s, f"{p}.norm1")
    x = x + attention(
        h,
        h,
        (qkv_w[:d], qkv_b[:d]),
        (qkv_w[d:], qkv_b[d:]),
        (s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"]),
        heads,
    )
    h = F.gelu(F.linear(ln(x, s, f"{p}.norm2"), s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"]))
    return x + F.linear(h, s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"])


def table_at(table: Tensor, mode: str) -> Tensor:
    return (
        F.interpolate(table, size=(7, 7), mode=mode, align_corners=False).flatten(2).transpose(1, 2)
    )


def their_forward(
    s: dict[str, Tensor], x: dict[str, Tensor], keep: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """(encoder output (B, K + 1, D) with the global token last, {their output: prediction})."""
    tokens = []
    for t in TASKS:
        a = f"input_adapters.{t}"
        img = x[t]
        if t == "semseg":
            img = F.embedding(img, s[f"{a}.class_emb.weight"]).permute(0, 3, 1, 2)
        p = s[f"{a}.proj.weight"].shape[-1]
        tok = (
            F.conv2d(img, s[f"{a}.proj.weight"], s[f"{a}.proj.bias"], stride=p)
            .flatten(2)
            .transpose(1, 2)
        )
        tokens.append(tok + table_at(s[f"{a}.pos_emb"], "bilinear" if t == "semseg" else "bicubic"))
    all_tokens = torch.cat(tokens, dim=1)  # (B, 294, D)
    b = all_tokens.shape[0]
    enc = all_tokens.gather(1, keep[..., None].expand(-1, -1, D))
    enc = torch.cat([enc, s["global_tokens"].expand(b, -1, -1)], dim=1)  # global token last
    for n in range(DEPTH):
        enc = block(enc, s, f"encoder.{n}", HEADS)
    preds = {}
    for out, (c, p) in OUTPUTS.items():
        o = f"output_adapters.{out}"
        ctx = F.linear(enc, s[f"{o}.proj_context.weight"], s[f"{o}.proj_context.bias"])
        full = s[f"{o}.mask_token"].expand(b, 294, DD).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, DD), ctx[:, :-1])
        emb = torch.cat(
            [
                s[f"{o}.task_embeddings.{t}"] + table_at(s[f"{o}.pos_emb"], "bilinear")
                for t in TASKS
            ],
            dim=1,
        )
        full = full + emb
        context = torch.cat([full.gather(1, keep[..., None].expand(-1, -1, DD)), ctx[:, -1:]], 1)
        task = "rgb" if out == "norm_rgb" else out
        start = TASKS.index(task) * 49
        queries = full[:, start : start + 49]
        y = attention(
            ln(queries, s, f"{o}.query_norm"),
            ln(context, s, f"{o}.context_norm"),
            (s[f"{o}.decoder.q.weight"], s[f"{o}.decoder.q.bias"]),
            (s[f"{o}.decoder.kv.weight"], s[f"{o}.decoder.kv.bias"]),
            (s[f"{o}.decoder.proj.weight"], s[f"{o}.decoder.proj.bias"]),
            DHEADS,
        )
        h = F.gelu(
            F.linear(ln(y, s, f"{o}.out_norm"), s[f"{o}.mlp.fc1.weight"], s[f"{o}.mlp.fc1.bias"])
        )
        y = y + F.linear(h, s[f"{o}.mlp.fc2.weight"], s[f"{o}.mlp.fc2.bias"])
        for n in range(DDEPTH):
            y = block(y, s, f"{o}.decoder_transformer.{n}", DHEADS)
        y = F.linear(y, s[f"{o}.out_proj.weight"], s[f"{o}.out_proj.bias"])  # (B, 49, c*p*p)
        preds[out] = (
            y.reshape(b, 7, 7, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 7 * p, 7 * p)
        )
    return enc, preds


def inputs(batch: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = {t: torch.randn(batch, c, 56, 56, generator=g) for t, c in CHANNELS.items()}
    return x | {"semseg": torch.randint(0, 12, (batch, 14, 14), generator=g)}


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    """Their checkpoint file: weights under "model", with the optimiser, epoch and args."""
    state = their_state()
    path = tmp_path_factory.mktemp("released") / "checkpoint-999.pth"
    torch.save(
        {
            "model": state,
            "optimizer": {},
            "epoch": 999,
            "scaler": {},
            "args": argparse.Namespace(input_size=56, patch_size=8),
            "loss_balancer": {},
        },
        path,
    )
    return path, state


def test_the_released_checkpoint_loads_and_computes_what_their_model_computes(
    released: tuple[Path, dict[str, Tensor]],
) -> None:
    path, state = released
    model = MultiMAE(ModelConfig(preset="multimae-eo")).eval()
    report = init_from(model, path)
    assert len(report["loaded"]) == len(model.state_dict()) and not report["kept"]
    # In float64, so that the two differ by rounding only, far below the tolerance.
    x = {t: v.double() if v.is_floating_point() else v for t, v in inputs().items()}
    ours_in = {OURS[t]: v for t, v in x.items()}
    with torch.no_grad():
        model.double()
        encoded, visible = model.forward_encoder(ours_in, torch.Generator().manual_seed(0))
        preds = model.forward_decoder(encoded, visible)
        mask = torch.cat([visible[OURS[t]] for t in TASKS], dim=1)
        keep = mask.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :49]
        their_enc, their_preds = their_forward({k: v.double() for k, v in state.items()}, x, keep)
        model.float()
    torch.testing.assert_close(encoded[:, 1:], their_enc[:, :-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoded[:, :1], their_enc[:, -1:], atol=1e-5, rtol=1e-5)
    assert set(preds) == {OURS[t] for t in OUTPUTS}
    for t in OUTPUTS:
        torch.testing.assert_close(preds[OURS[t]], their_preds[t], atol=1e-5, rtol=1e-5, msg=t)
    assert preds["lc"].shape == (2, 12, 14, 14)  # nodata is the 12th class, at 14 px

    # Evaluation takes the same file as an encoder: the same tokens, every one of them.
    encoder = load_encoder(path).double()
    assert not encoder.output_adapters
    with torch.no_grad():
        every = encoder.encode(ours_in)  # (B, 1 + 294, D)
        their_every, _ = their_forward(
            {k: v.double() for k, v in state.items()}, x, torch.arange(294).expand(2, -1)
        )
    torch.testing.assert_close(every[:, 1:], their_every[:, :-1], atol=1e-5, rtol=1e-5)


def test_a_checkpoint_that_does_not_fit_is_refused_by_key_and_shape(
    released: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    path, state = released
    with pytest.raises(CheckpointError, match="--model.preset multimae-eo, not eomae"):
        init_from(MultiMAE(ModelConfig(size="base")), path)
    bad = dict(state)
    bad["input_adapters.rgb.proj.weight"] = torch.zeros(D, 3, 16, 16)  # patch 16
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"input_adapters\.rgb\.proj\.weight: \(768, 3, 16, 16\)"
    ):
        init_from(MultiMAE(ModelConfig(preset="multimae-eo")), tmp_path / "bad.pth")


def test_the_preset_is_their_architecture_and_recipe() -> None:
    model = MultiMAE(ModelConfig(preset="multimae-eo"))
    names = set(model.state_dict())
    assert not any(k.startswith("norm.") for k in names), "no norm after the encoder"
    assert not any(k.endswith(".embedding") for k in names), "no modality embedding on inputs"
    trainable = sum(p.numel() for p in model.parameters())
    assert abs(trainable - 90.78e6) < 0.01e6  # as their model measures
    with pytest.raises(ValueError, match="fixes decoder_heads=4"):
        ModelConfig(preset="multimae-eo", decoder_heads=4)
    # AdamW decays every parameter; the warm-up starts from 0.
    groups = param_groups(model, 0.05, decay_all=True)
    assert sum(len(g["params"]) for g in groups if g["weight_decay"] == 0.05) == len(
        list(model.parameters())
    )
    factor = warmup_cosine(10, 100, 0.0, from_zero=True)
    assert (
        factor(0) == 0
        and factor(9) == 1
        and math.isclose(factor(99), 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    )


def test_their_inputs_and_loss() -> None:
    cfg = PretrainConfig(model=ModelConfig(preset="multimae-eo", size="tiny")).model
    g = torch.Generator().manual_seed(0)
    lc = torch.zeros(4, 64, 64, dtype=torch.long)
    lc[:, :, 29:] = 7  # a boundary between classes 0 and 7 that falls between samples
    batch = {
        "s2": torch.randn(4, 12, 64, 64, generator=g),
        "dem": torch.randn(4, 1, 64, 64, generator=g) * 100,
        "lc": lc,
        "valid": torch.ones(4, 64, 64, dtype=torch.bool),
    }
    x, valid = prepare_eo_batch(batch, cfg, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert (
        x["rgb"].shape == (4, 3, 56, 56)
        and x["lc"].shape == (4, 14, 14)
        and valid.shape == (4, 56, 56)
    )
    assert set(x["lc"].unique().tolist()) - {0, 7}, (
        "bilinear then truncated: in-between ids, as theirs"
    )
    flat = x["dem"].flatten(1).sort(1).values[:, 313:2822]  # their int(0.1 N):int(0.9 N), N = 3136
    assert torch.allclose(flat.mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(flat.var(1), torch.ones(4), atol=1e-4)
    assert torch.allclose(trimmed_standardise(x["dem"]), x["dem"], atol=1e-4)  # idempotent

    model = MultiMAE(cfg)
    preds, visible = model(x, torch.Generator().manual_seed(0))
    loss, parts = multimae_eo_loss(cfg, preds, x, visible, model.patch)
    assert set(parts) == {"rgb", "rededge", "nir", "swir", "dem", "lc", "norm_rgb"}
    assert torch.isclose(loss, sum(parts.values()))  # unweighted
    # A sample's loss is the mean over its own masked pixels: a perfect sample adds 0.
    target = x["dem"].clone()
    masked = ~F.interpolate(visible["dem"].view(4, 1, 7, 7).float(), scale_factor=8)[:, 0].bool()
    preds["dem"] = torch.where(masked[:, None], target + 1.0, target)
    preds["dem"][0] = target[0]
    _, parts = multimae_eo_loss(cfg, {"dem": preds["dem"]}, x, visible, model.patch)
    assert math.isclose(float(parts["dem"]), 3 / 4, rel_tol=1e-6)  # mean over samples of 1, 1, 1, 0
