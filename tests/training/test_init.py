"""Continual-pretraining initialisation: DINOv2-format ViTs and our own checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shards.modalities import S2
from training.config import ModelConfig
from training.export import FORMAT, CheckpointError, encoder_state
from training.init import init_from, resize_kernel
from training.multimae import MultiMAE
from training.softcon import SoftConModel
from training.vit import sincos_2d

DIM, DEPTH, HEADS = 96, 4, 3  # the "tiny" size


def dinov2_state(dim: int = DIM, depth: int = DEPTH, patch: int = 8, grid: int = 7) -> dict:
    """A random ViT state dict named as DINOv2's (LayerScale, class position, mask token).

    Its patch positions are our sin-cos ones, so a whole forward pass can be compared.
    """
    g = torch.Generator().manual_seed(0)

    def r(*shape: int, std: float = 0.05, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(*shape, generator=g)

    pos = torch.cat([r(1, 1, dim), sincos_2d(dim, grid, grid)[None]], dim=1)  # (1, 1 + N, D)
    state = {
        "cls_token": r(1, 1, dim, std=0.5), "pos_embed": pos, "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch, std=0.1),
        "patch_embed.proj.bias": r(dim), "norm.weight": r(dim, mean=1.0), "norm.bias": r(dim),
    }  # fmt: skip
    for n in range(depth):
        b = f"blocks.{n}."
        state |= {
            b + "norm1.weight": r(dim, mean=1.0), b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim, std=0.1), b + "attn.qkv.bias": r(3 * dim),
            b + "attn.proj.weight": r(dim, dim, std=0.1), b + "attn.proj.bias": r(dim),
            b + "ls1.gamma": r(dim, std=0.2, mean=0.5),
            b + "norm2.weight": r(dim, mean=1.0), b + "norm2.bias": r(dim),
            b + "mlp.fc1.weight": r(4 * dim, dim, std=0.1), b + "mlp.fc1.bias": r(4 * dim),
            b + "mlp.fc2.weight": r(dim, 4 * dim, std=0.1), b + "mlp.fc2.bias": r(dim),
            b + "ls2.gamma": r(dim, std=0.2, mean=0.5),
        }  # fmt: skip
    return state


def dinov2_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """DINOv2's ViT forward written out from the state dict: (B, 1 + N, D)."""
    w = state["patch_embed.proj.weight"]
    t = F.conv2d(x, w, state["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).mT
    t = torch.cat([state["cls_token"].expand(len(x), -1, -1), t], dim=1) + state["pos_embed"]
    b, n, d = t.shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):

        def p(name: str, i: int = i) -> torch.Tensor:
            return state[f"blocks.{i}.{name}"]

        h = F.layer_norm(t, (d,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias"))
        q, k, v = qkv.view(b, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        t = t + p("ls1.gamma") * F.linear(a, p("attn.proj.weight"), p("attn.proj.bias"))
        h = F.layer_norm(t, (d,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))),
                     p("mlp.fc2.weight"), p("mlp.fc2.bias"))  # fmt: skip
        t = t + p("ls2.gamma") * h
    return F.layer_norm(t, (d,), state["norm.weight"], state["norm.bias"], eps=1e-6)


@pytest.fixture
def dinov2_file(tmp_path: Path) -> Path:
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(dinov2_state(), path)
    return path


def test_rgb_band_group_reproduces_the_source_model(dinov2_file: Path) -> None:
    torch.manual_seed(0)
    model = MultiMAE(ModelConfig(modalities="bandgroups")).eval()
    report = init_from(model, dinov2_file)
    assert "input_adapters.rgb.proj.bias" in report["loaded"]
    adapted = " ".join(report["adapted"])
    assert "input_adapters.rgb.proj.weight" in adapted and "LayerScale" in adapted
    assert "global_token <- cls_token (+ pos_embed[:, 0])" in report["adapted"]
    assert any(s.startswith("pos_embed (") for s in report["skipped"])
    assert any(s.startswith("mask_token (") for s in report["skipped"])
    assert "input_adapters.dem.proj.weight" in report["kept"]
    assert "input_adapters.rgb.embedding" in report["kept"]
    # The source had no modality embedding: without ours, RGB goes through the same network.
    with torch.no_grad():
        model.input_adapters["rgb"].embedding.zero_()
        x = torch.randn(2, 3, 56, 56)
        ours = model.encode({"rgb": x})
        theirs = dinov2_forward(dinov2_state(), x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_twelve_band_patch_embedding_keeps_rgb_and_grey_activations(dinov2_file: Path) -> None:
    model = MultiMAE(ModelConfig(modalities="s2"))
    init_from(model, dinov2_file)
    proj = model.input_adapters["s2"].proj
    w, bias = dinov2_state()["patch_embed.proj.weight"], dinov2_state()["patch_embed.proj.bias"]
    rgb = torch.randn(2, 3, 16, 16)
    x = torch.zeros(2, 12, 16, 16)
    x[:, S2.band_index(["B04", "B03", "B02"])] = rgb  # an RGB-only input
    with torch.no_grad():
        source = F.conv2d(rgb, w, stride=8)
        # RGB kernels are copied, then every kernel is scaled by 3 / 12 (module docstring).
        torch.testing.assert_close(
            (proj(x) - bias[:, None, None]) * 12 / 3, source, atol=1e-5, rtol=1e-5
        )
        # The same value in every band: exactly the source's activation for that grey image.
        grey = torch.randn(2, 1, 16, 16)
        expected = F.conv2d(grey.expand(-1, 3, -1, -1), w, bias, stride=8)
        torch.testing.assert_close(
            proj(grey.expand(-1, 12, -1, -1)), expected, atol=1e-5, rtol=1e-5
        )
    others = [i for i, b in enumerate(S2.bands) if b not in ("B04", "B03", "B02")]
    assert torch.allclose(
        proj.weight[:, others], (w.mean(dim=1, keepdim=True) / 4).expand(-1, 9, -1, -1)
    )


def test_patch_kernels_resize_so_that_resampled_patches_keep_their_token(tmp_path: Path) -> None:
    w = torch.randn(5, 3, 4, 4)
    patches = torch.randn(10, 3, 4, 4)
    big = F.interpolate(patches, size=(8, 8), mode="bilinear", align_corners=False)
    w8 = resize_kernel(w, 8)
    torch.testing.assert_close(F.conv2d(big, w8), F.conv2d(patches, w), atol=1e-4, rtol=1e-4)
    # Through init_from: a patch-14 source into our patch-8 model.
    torch.save(dinov2_state(patch=14, grid=16), tmp_path / "p14.pth")
    model = MultiMAE(ModelConfig(modalities="bandgroups"))
    report = init_from(model, tmp_path / "p14.pth")
    assert model.input_adapters["rgb"].proj.weight.shape == (DIM, 3, 8, 8)
    assert any("patch 14 -> 8" in a for a in report["adapted"])


def test_a_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path: Path) -> None:
    model = MultiMAE(ModelConfig(modalities="bandgroups"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(dinov2_state(dim=64), tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError) as e:
        init_from(model, tmp_path / "narrow.pth")
    message = str(e.value)
    assert "width: " in message and "has 64, model 96" in message
    qkv = "blocks.0.attn.qkv.weight (192, 64) -> encoder.0.attn.q.weight: gives (64, 64)"
    assert f"{qkv}, model has (96, 96)" in message
    deep = dinov2_state(depth=6)
    deep["blocks.0.mlp.w12.weight"] = torch.zeros(8, DIM)  # e.g. a SwiGLU block
    torch.save(deep, tmp_path / "deep.pth")
    with pytest.raises(CheckpointError) as e:
        init_from(model, tmp_path / "deep.pth")
    message = str(e.value)
    assert "depth: " in message and "has 6 blocks, model 4" in message
    assert "blocks.5.* -> encoder.5: not in the model" in message
    assert "blocks.0.mlp.w12.weight (8, 96): no counterpart in our blocks" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither an eomae model nor a ViT"):
        init_from(model, tmp_path / "other.pth")


def test_our_checkpoints_exports_and_softcon_state_dicts(tmp_path: Path) -> None:
    cfg = ModelConfig(modalities="bandgroups", inputs=["rgb", "nir", "dem"])
    torch.manual_seed(0)
    source = MultiMAE(cfg)
    run = tmp_path / "run" / "checkpoint_000003"
    run.mkdir(parents=True)
    torch.save(source.state_dict(), run / "model.pt")
    (run / "state.json").write_text(json.dumps({"step": 3}))
    export = {"format": FORMAT, "model": cfg.model_dump(mode="json"), "source": "x", "step": 3,
              "state_dict": encoder_state(source)}  # fmt: skip
    torch.save(export, tmp_path / "encoder.pt")
    softcon = SoftConModel(MultiMAE(cfg), 32, 16)
    torch.save(softcon.state_dict(), tmp_path / "softcon.pt")
    for path in (run, tmp_path / "run", run / "model.pt", tmp_path / "encoder.pt"):
        torch.manual_seed(1)
        model = MultiMAE(ModelConfig(modalities="bandgroups"))  # also takes land cover
        report = init_from(model, path)
        mine = model.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in encoder_state(source).items()), path
        assert "input_adapters.lc.proj.weight" in report["kept"]
        assert any(k.startswith("output_adapters.") for k in report["kept"])
    model = MultiMAE(cfg)
    init_from(model, tmp_path / "softcon.pt")  # its online branch
    mine = model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in encoder_state(softcon.online).items())
    small_patch = MultiMAE(ModelConfig(modalities="bandgroups", patch_size=4))
    with pytest.raises(CheckpointError, match=r"input_adapters.rgb.proj.weight: \(96, 3, 8, 8\)"):
        init_from(small_patch, tmp_path / "encoder.pt")


def test_thirteen_band_sources_give_each_band_its_own_kernel(tmp_path: Path) -> None:
    """SoftCon / SSL4EO-S12 weights (13 L1C bands, patch 14 or 16) for continual
    pretraining: each of our bands takes the kernel of its own band, resized to our patch."""
    from training.published import L1C

    state = dinov2_state(patch=14, grid=16)
    state["patch_embed.proj.weight"] = torch.randn(DIM, 13, 14, 14)
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in state.items()}},
               tmp_path / "moco.pth")  # fmt: skip
    model = MultiMAE(ModelConfig(modalities="bandgroups"))
    report = init_from(model, tmp_path / "moco.pth")
    assert any("bands by name, patch 14 -> 8" in line for line in report["adapted"])
    resized = resize_kernel(state["patch_embed.proj.weight"].double(), 8)
    for name in ("rgb", "nir", "swir"):
        adapter = model.input_adapters[name]
        index = [L1C.index(b) for b in adapter.modality.bands]
        torch.testing.assert_close(adapter.proj.weight.double(), resized[:, index])
    sar = dict(state, **{"patch_embed.proj.weight": torch.randn(DIM, 2, 14, 14)})
    torch.save(sar, tmp_path / "sar.pth")
    with pytest.raises(CheckpointError, match="SAR weights fit no input"):
        init_from(MultiMAE(ModelConfig(modalities="bandgroups")), tmp_path / "sar.pth")
