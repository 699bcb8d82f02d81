"""Published weights as evaluation encoders: SoftCon (DINOv2 layout) and SSL4EO-S12 (timm).

No download is possible here: each test writes a state dict of exactly the published
layout (key names, shapes, the containers and prefixes of the released files) with random
values, and checks our encoder's features against a direct forward pass of that
architecture written below, from our Sentinel-2 reflectance through the model's own
normalisation, in float64 within 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures.published import vit_state  # tests/evaluation is on sys.path
from torch import Tensor

from evaluation.run import EvalConfig, check
from shards.modalities import S2
from training.checkpoint import CheckpointError
from training.published import L2A_MEAN, L2A_STD, load_published, split_spec

L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
L2A = [b for b in L1C if b != "B10"]


def their_forward(s: dict[str, Tensor], x13: Tensor, patch: int, heads: int) -> Tensor:
    """DINOv2's / timm's ViT over its 13-band input (B, 13, 224, 224): tokens after norm."""
    return their_layers(s, x13, patch, heads)[-1]


def their_layers(s: dict[str, Tensor], x13: Tensor, patch: int, heads: int) -> list[Tensor]:
    """Every block's tokens after the final norm (DINOv2's get_intermediate_layers, norm=True)."""
    layers = []
    x = F.conv2d(x13, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=patch)
    x = torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + s["pos_embed"]
    b, n, d = x.shape
    for i in range(12):
        p = f"blocks.{i}"
        h = F.layer_norm(x, (d,), s[f"{p}.norm1.weight"], s[f"{p}.norm1.bias"], eps=1e-6)
        qkv = F.linear(h, s[f"{p}.attn.qkv.weight"], s[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        h = F.linear((a @ v).transpose(1, 2).reshape(b, n, d), s[f"{p}.attn.proj.weight"],
                     s[f"{p}.attn.proj.bias"])  # fmt: skip
        x = x + (s[f"{p}.ls1.gamma"] * h if f"{p}.ls1.gamma" in s else h)
        h = F.layer_norm(x, (d,), s[f"{p}.norm2.weight"], s[f"{p}.norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"]))
        h = F.linear(h, s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"])
        x = x + (s[f"{p}.ls2.gamma"] * h if f"{p}.ls2.gamma" in s else h)
        layers.append(F.layer_norm(x, (d,), s["norm.weight"], s["norm.bias"], eps=1e-6))
    return layers


def their_input(dn: Tensor, normalise: str) -> Tensor:
    """Their 13-band input from L2A reflectance (B, 12, H, W) in our band order: their
    normalisation, a zero B10 after it (as their L2A evaluations do), 224 px."""
    if normalise == "two-sigma":  # SoftCon / Copernicus-Bench, SSL4EO-S12's L2A statistics
        m = torch.tensor([L2A_MEAN[L2A.index(b)] for b in S2.bands], dtype=dn.dtype)
        sd = torch.tensor([L2A_STD[L2A.index(b)] for b in S2.bands], dtype=dn.dtype)
        x = ((dn - (m - 2 * sd)[:, None, None]) / (4 * sd)[:, None, None]).clamp(0, 1)
    else:  # SSL4EO-S12: DN / 10000
        x = (dn / 10000).clamp(0, 1)
    full = torch.zeros(dn.shape[0], 13, *dn.shape[2:], dtype=dn.dtype)
    for i, band in enumerate(S2.bands):
        full[:, L1C.index(band)] = x[:, i]
    return F.interpolate(full, size=(224, 224), mode="bilinear", align_corners=True)


def reflectance(n: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """L2A-like DN (n, 12, 64, 64), and the (mean, std) a benchmark z-scores them with."""
    g = torch.Generator().manual_seed(5)
    dn = (torch.rand(n, 12, 64, 64, generator=g) * 4000 + 200).double()
    mean, std = dn.mean(dim=(0, 2, 3)), dn.std(dim=(0, 2, 3))
    return dn, mean, std


@pytest.mark.parametrize(
    ("name", "layout"),
    [("softcon-vits14", "flat"), ("ssl4eo-moco-vits16", "moco"), ("ssl4eo-dino-vits16", "dino"),
     ("ssl4eo-mae-vits16", "mae")],
)  # fmt: skip
def test_published_features_equal_their_architecture(
    name: str, layout: str, tmp_path: Path
) -> None:
    softcon = name.startswith("softcon")
    patch, grid = (14, 16) if softcon else (16, 14)
    state = vit_state(384, patch, grid, layer_scale=softcon)
    if layout == "flat":  # SoftCon's B13_vits14_softcon.pth: the backbone, with its mask token
        payload: dict = {**state, "mask_token": torch.zeros(1, 384)}
    elif layout == "moco":  # MoCo-v3 full checkpoint
        payload = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in state.items()},
                                  "module.base_encoder.head.weight": torch.zeros(19, 384),
                                  "module.momentum_encoder.cls_token": torch.zeros(1, 1, 384)},
                   "epoch": 100}  # fmt: skip
    elif layout == "dino":  # DINO: the teacher, behind the multi-crop wrapper
        payload = {"teacher": {**{f"module.backbone.{k}": v for k, v in state.items()},
                               "module.head.mlp.0.weight": torch.zeros(8, 384)},
                   "student": {}}  # fmt: skip
    else:  # MAE: the encoder under `model`, with its decoder
        payload = {"model": {**state, "mask_token": torch.zeros(1, 1, 512),
                             "decoder_embed.weight": torch.zeros(512, 384)}}  # fmt: skip
    path = tmp_path / f"{name}.pth"
    torch.save(payload, path)

    encoder = load_published(name, path).double()
    dn, mean, std = reflectance()
    encoder.input_stats = (mean, std)
    z = (dn - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        ours = encoder.features({"s2": z})
        x13 = their_input(dn, "two-sigma" if softcon else "dn")
        tokens = their_forward({k: v.double() for k, v in state.items()}, x13, patch, 6)
    theirs = tokens[:, 1:].mean(1) if softcon else tokens[:, 0]  # each family's own pooling
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_softcon_vitb_features_are_dinov2s_four_layer_linear_input(tmp_path: Path) -> None:
    """SoftCon's ViT-B/14 numbers: DINOv2's linear input (class tokens of the last 4 blocks
    and the mean patch token of the last), ViT-B's own dims (768, 12 heads)."""
    state = vit_state(768, 14, 16, layer_scale=True)
    torch.save(state, tmp_path / "B13_vitb14_softcon.pth")
    encoder = load_published("softcon-vitb14", tmp_path / "B13_vitb14_softcon.pth").double()
    dn, mean, std = reflectance()
    encoder.input_stats = (mean, std)
    z = (dn - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        ours = encoder.features({"s2": z})  # its own pooling: last4
        layers = their_layers({k: v.double() for k, v in state.items()},
                              their_input(dn, "two-sigma"), 14, 12)  # fmt: skip
        mean_pool = encoder.features({"s2": z}, pool="mean")
    theirs = torch.cat([x[:, 0] for x in layers[-4:]] + [layers[-1][:, 1:].mean(1)], dim=1)
    assert ours.shape == (2, 5 * 768)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_pool, layers[-1][:, 1:].mean(1), atol=1e-5, rtol=1e-5)


def test_sar_weights_and_wrong_shapes_are_refused_by_name(tmp_path: Path) -> None:
    sar = vit_state(384, 14, 16, layer_scale=True)
    sar["patch_embed.proj.weight"] = torch.zeros(384, 2, 14, 14)  # B2_vits14_softcon.pth
    torch.save(sar, tmp_path / "B2_vits14_softcon.pth")
    with pytest.raises(CheckpointError, match=r"takes 2 bands \(Sentinel-1 VV, VH\)"):
        load_published("softcon-vits14", tmp_path / "B2_vits14_softcon.pth")
    base = vit_state(384, 14, 16, layer_scale=True)  # a ViT-S file named as the ViT-B
    torch.save(base, tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"cls_token: \(1, 1, 384\) in .*has \(1, 1, 768\)"):
        load_published("softcon-vitb14", tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="unknown published encoder 'softcon-vitl14'"):
        split_spec("softcon-vitl14:/x.pth")
    assert split_spec("/runs/a/encoder.pt") is None and split_spec("C:/x") is None


def test_evaluation_takes_a_published_encoder_by_name(tmp_path: Path) -> None:
    torch.save(vit_state(384, 14, 16, layer_scale=True), tmp_path / "softcon.pth")
    spec = f"softcon-vits14:{tmp_path / 'softcon.pth'}"
    cfg = EvalConfig(run_dir=str(tmp_path), encoder=spec, tasks=["scene"], inputs=["s2"])
    assert check(cfg) is None  # loads, inputs fit
    seg = cfg.model_copy(update={"tasks": ["segmentation"]})
    with pytest.raises(Exception, match="pooled features"):
        check(seg)
