"""Published Sentinel-2 ViTs as eomae encoders, each with its own bands and normalisation.

    encoder = load_published("softcon-vitb14", Path("B13_vitb14_softcon.pth"))
    encoder.input_stats = (mean, std)        # how our inputs were z-scored (DN units)
    encoder.features({"s2": x})              # x: (B, 12, H, W), our bands, z-scored

Families (`FAMILIES`; `eomae evaluate --encoder NAME:PATH`):

  softcon-vit{s,b}14   SoftCon (Wang, Albrecht, Zhu 2024; zhu-xlab/softcon): DINOv2 layout
                       (LayerScale, no registers), patch 14, 224 px, 13 L1C bands; inputs
                       per band clamp((DN - (m - 2 s)) / 4 s, 0, 1) with SSL4EO-S12's
                       statistics (the L2A ones for our 12-band L2A input: Copernicus-Bench,
                       the same author's evaluation); features: ViT-S the mean of the
                       final-normed patch tokens (Copernicus-Bench's probe), ViT-B DINOv2's
                       4-layer linear input (its README's protocol; `features`).
  ssl4eo-{moco,dino,mae}-vits16
                       SSL4EO-S12 (Wang et al. 2022): timm ViT-S/16, 224 px, 13 L1C bands,
                       inputs DN / 10000 (their uint8 step left out, values clipped to [0, 1]
                       instead of wrapping); the file as released (`state_dict` with
                       `module.base_encoder.`, `teacher` with `backbone.`, `model`) or flat.
                       Features: the final-normed class token, as their MoCo / MAE probes.

Band B10 (cirrus) is not in L2A: both authors' evaluations give it a zero input after
normalisation, which is the same as leaving its kernel channel out; we leave it out.
Inputs are resized (bilinear) to the family's 224 px, as their evaluations do, so the
position table is used at its own 16 x 16 / 14 x 14 grid. The 2-band SAR weights
(SoftCon's B2_*) fit no input we have and are refused. Every other mismatch names the keys
and shapes. Nothing is downloaded: give the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shards.modalities import S2
from training import checkpoint
from training.checkpoint import CheckpointError
from training.export import load_state_checked
from training.modalities import PRESETS, ModelModality
from training.vit import Block, fold_layer_scale, init_weights, split_qkv

L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
# SSL4EO-S12's band statistics (zhu-xlab/SSL4EO-S12, ssl4eo_dataset_lmdb.py 14-16): L2A, 12
# bands in L1C's order without B10, which Copernicus-Bench uses for SoftCon on L2A data.
L2A_BANDS = tuple(b for b in L1C if b != "B10")
L2A_MEAN = (752.40087073, 884.29673756, 1144.16202635, 1297.47289228, 1624.90992062,
            2194.6423161, 2422.21248945, 2517.76053101, 2581.64687018, 2645.51888987,
            2368.51236873, 1805.06846033)  # fmt: skip
L2A_STD = (1108.02887453, 1155.15170768, 1183.6292542, 1368.11351514, 1370.265037,
           1355.55390699, 1416.51487101, 1474.78900051, 1439.3086061, 1582.28010962,
           1455.52084939, 1343.48379601)  # fmt: skip


@dataclass(frozen=True)
class Family:
    """How one published model is built, fed and pooled."""

    dim: int
    heads: int
    patch: int
    normalise: str  # "two-sigma" (SoftCon) or "dn" (SSL4EO-S12)
    pool: str  # "mean" of patch tokens, "global" (class token) or "last4" (see `features`)
    prefixes: tuple[str, ...] = ()  # stripped from the released file's keys
    image: int = 224
    depth: int = 12


FAMILIES = {
    "softcon-vits14": Family(384, 6, 14, "two-sigma", "mean"),
    "softcon-vitb14": Family(768, 12, 14, "two-sigma", "last4"),
    "ssl4eo-moco-vits16": Family(384, 6, 16, "dn", "global", ("module.base_encoder.",)),
    "ssl4eo-dino-vits16": Family(384, 6, 16, "dn", "global", ("module.", "backbone.")),
    "ssl4eo-mae-vits16": Family(384, 6, 16, "dn", "global"),
}
CONTAINERS = ("state_dict", "teacher", "model")
NOT_BACKBONE = ("head.", "mask_token", "decoder", "momentum_encoder.", "predictor.", "fc_norm.")


@dataclass(frozen=True)
class PublishedInputs:
    """What evaluation asks of an encoder's config: its inputs (all of S2 as one)."""

    input_modalities: tuple[ModelModality, ...] = (PRESETS["s2"][0],)


class PublishedViT(nn.Module):
    """A published 13-band ViT over our 12 S2 bands (B10's kernel channel left out).

    The interface evaluation uses: `encode` (B, 1 + N, D) with the class token first,
    `features`, `dim`, `patch`, `cfg`-like `input_modalities`, no output adapters.
    """

    def __init__(self, name: str, family: Family) -> None:
        super().__init__()
        self.name, self.family = name, family
        self.dim, self.patch = family.dim, family.patch
        grid = family.image // family.patch
        self.patch_embed = nn.Conv2d(S2.channels, family.dim, family.patch, family.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, family.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, family.dim))
        self.blocks = nn.ModuleList([Block(family.dim, family.heads) for _ in range(family.depth)])
        self.norm = nn.LayerNorm(family.dim, eps=1e-6)
        self.output_adapters = nn.ModuleDict()
        self.cfg = PublishedInputs()
        # (mean, std) per band of how the inputs were z-scored, to get DN back
        self.input_stats: tuple[Tensor, Tensor] | None = None

    def prepare(self, x: Tensor) -> Tensor:
        """Our z-scored bands (B, 12, H, W) -> the model's input at its size."""
        if self.input_stats is None:
            raise CheckpointError(f"{self.name}: set input_stats (the z-score's mean, std) "
                                  "before encoding: the model needs reflectance")  # fmt: skip
        mean, std = (t.to(x)[None, :, None, None] for t in self.input_stats)
        dn = x * std + mean
        if self.family.normalise == "two-sigma":
            order = [L2A_BANDS.index(b) for b in S2.bands]  # their statistics, our band order
            m, s = (torch.tensor(v, device=x.device, dtype=x.dtype)[order][None, :, None, None]
                    for v in (L2A_MEAN, L2A_STD))  # fmt: skip
            x = ((dn - (m - 2 * s)) / (4 * s)).clamp(0, 1)
        else:
            x = (dn / 10000).clamp(0, 1)
        size = (self.family.image, self.family.image)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def encode(self, inputs: dict[str, Tensor]) -> Tensor:
        """Tokens (B, 1 + N, D) after the final norm, class token first."""
        return self.encode_layers(inputs, 1)[-1]

    def encode_layers(self, inputs: dict[str, Tensor], n: int) -> list[Tensor]:
        """The tokens (B, 1 + N, D) of the last `n` blocks, each after the final norm."""
        if set(inputs) != {S2.name}:
            raise ValueError(f"{self.name} takes Sentinel-2 ({S2.name}) only, not {list(inputs)}")
        x = self.patch_embed(self.prepare(inputs[S2.name])).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        layers = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - n:
                layers.append(self.norm(x))
        return layers

    def features(self, inputs: dict[str, Tensor], pool: str = "auto") -> Tensor:
        """Frozen features for a probe: the family's own pooling unless `pool` says otherwise.

        "mean" of the patch tokens (B, D); "global", the class token (B, D); "last4", DINOv2's
        linear-evaluation input that SoftCon's ViT-B/14 numbers were measured with (its
        README: "linear head with 4 output layers", DINOv2 appendix B.3): the class tokens
        of the last 4 blocks and the mean of the last block's patch tokens, (B, 5D). DINOv2
        also tries it without the patch mean; SoftCon's evaluation code is not released, so
        which of the two the numbers used is our inference.
        """
        pool = self.family.pool if pool == "auto" else pool
        if pool == "last4":
            layers = self.encode_layers(inputs, 4)
            return torch.cat([x[:, 0] for x in layers] + [layers[-1][:, 1:].mean(dim=1)], dim=1)
        x = self.encode(inputs)
        return x[:, 0] if pool == "global" else x[:, 1:].mean(dim=1)


def fresh(encoder: PublishedViT) -> PublishedViT:
    """The same architecture, randomly initialised (evaluation's `random` init)."""
    model = PublishedViT(encoder.name, encoder.family)
    model.apply(init_weights)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    model.input_stats = encoder.input_stats
    return model


def split_spec(value: str) -> tuple[str, Path] | None:
    """`NAME:PATH` -> (family, path) when NAME is a published family; else None."""
    name, sep, path = value.partition(":")
    if not sep or name not in FAMILIES:
        if name.startswith(("softcon", "ssl4eo")) and sep:
            raise CheckpointError(f"unknown published encoder {name!r}; known: {list(FAMILIES)}")
        return None
    return name, Path(path)


def _backbone(payload: Any, family: Family, what: str) -> dict[str, Tensor]:
    """The backbone's keys of a released file: unwrapped, unprefixed, heads left out."""
    state = payload
    for key in CONTAINERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} holds a {type(state).__name__}, not a state dict")
    for prefix in family.prefixes:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith(NOT_BACKBONE)}


def convert(state: dict[str, Tensor], family: Family, what: str) -> dict[str, Tensor]:
    """Their keys as ours: qkv split into q | kv, LayerScale folded, B10's channel dropped."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None:
        raise CheckpointError(f"{what}: no patch_embed.proj.weight; keys {list(state)[:8]}")
    if proj.shape[1] == 2:
        raise CheckpointError(
            f"{what}: patch_embed.proj.weight {tuple(proj.shape)} takes 2 bands (Sentinel-1 "
            "VV, VH): SAR weights fit no input of eomae"
        )
    if proj.shape[1] != len(L1C):
        raise CheckpointError(f"{what}: patch_embed.proj.weight {tuple(proj.shape)}: expected "
                              f"{len(L1C)} bands {L1C}")  # fmt: skip
    keep = [L1C.index(b) for b in S2.bands]  # our band order, B10 left out
    out = {"patch_embed.weight": proj[:, keep], "patch_embed.bias": state["patch_embed.proj.bias"]}
    for key, value in state.items():
        if key.startswith("patch_embed.") or ".ls1." in key or ".ls2." in key:
            continue
        if ".attn.qkv." in key:
            prefix, kind = key.rsplit(".qkv.", 1)
            out[f"{prefix}.q.{kind}"], out[f"{prefix}.kv.{kind}"] = split_qkv(value)
        else:
            out[key] = value
    for key in [k for k in state if k.endswith((".ls1.gamma", ".ls2.gamma"))]:
        block, which = key.rsplit(".", 2)[0], key.split(".")[-2]
        layer = f"{block}.{'attn.proj' if which == 'ls1' else 'mlp.fc2'}"
        weight, bias = fold_layer_scale(state[key], state[f"{layer}.weight"],
                                        state[f"{layer}.bias"])  # fmt: skip
        assert bias is not None  # the published ViTs' layers have biases
        out[f"{layer}.weight"], out[f"{layer}.bias"] = weight, bias
    return out


def load_published(name: str, path: Path) -> PublishedViT:
    """A published encoder from its released file (see the module docstring)."""
    family = FAMILIES[name]
    state = convert(_backbone(checkpoint.read(path, weights_only=True), family, str(path)),
                    family, str(path))  # fmt: skip
    model = PublishedViT(name, family)
    load_state_checked(model, state, f"{path} (as {name})")
    return model.eval()
