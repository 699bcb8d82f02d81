"""Initialise a MultiMAE's backbone from an existing model, for continual pretraining.

    report = init_from(model, Path("dinov2_vits14.pth"))   # or a run / checkpoint / export
    report == {"loaded": [...], "adapted": [...], "skipped": [...], "kept": [...]}

`loaded`: our keys set to a source tensor as is (a slice for the split qkv); `adapted`:
our keys set to a transformed source tensor, with how; `skipped`: source keys not used,
with why; `kept`: our keys left as initialised. The backbone is the input adapters, the
global token, the encoder blocks and the final norm; output adapters are always kept.

Sources (`read_source`):
  multimae-eo  the MultiMAE-EO authors' released checkpoint, into `--model.preset
         multimae-eo` (training/released.py), decoders included.
  eomae  a checkpoint directory (model.pt), a run directory (its latest checkpoint), a
         model.pt file, an encoder export (eomae-encoder/1), a SoftCon state dict (its
         `online.` branch). Keys must fit exactly; input adapters of modalities only one
         side has are kept / skipped.
  vit    a ViT state dict in DINOv2 or timm naming, possibly under `state_dict`, `model`
         or `teacher` and behind `module.` / `backbone.` prefixes.

ViT mapping onto our blocks (vit.py; heads cannot be checked from a state dict: ours are
SIZES' and match ViT-S/B):
  blocks.N.norm1/norm2/attn.proj/mlp.fc1/mlp.fc2 -> encoder.N.(same)
  blocks.N.attn.qkv (3D, D)    -> encoder.N.attn.q = rows [0, D), attn.kv = rows [D, 3D)
  blocks.N.ls1.gamma, ls2.gamma (DINOv2 LayerScale) -> folded into attn.proj / mlp.fc2:
                                  W <- diag(gamma) W, b <- gamma * b (exact)
  norm                         -> norm
  cls_token (+ pos_embed[:, 0] when the source adds a position to it) -> global_token
  pos_embed                    -> skipped: ours are fixed 2-D sin-cos
  patch_embed.proj (D, 13, p, p) (SoftCon, SSL4EO-S12: Sentinel-2 L1C) -> each of our bands
       its own kernel, by band name (B10 unused), patch size resized as in 1. below
  patch_embed.proj (D, 3, p, p) -> every Sentinel-2 input adapter's proj, adapted:
    1. patch size p != ours q: FlexiViT's pseudo-inverse resize, W' = pinv(R^T) W with R
       the bilinear p -> q resize, so <resize(x), W'> = <x, W>: a patch resampled to our
       size gives the source's token (exact when upsampling, least squares when not).
    2. bands: K_c = the red/green/blue kernel for B04/B03/B02, the mean of the three
       kernels for any other band, then W_c = (3 / C) K_c for the C bands of the modality.
       For a modality with all three RGB bands or none, sum_c W_c equals the sum of the
       RGB kernels, so an input equal to v in every band gives exactly the source's
       activation for a grey image of value v (the rule of timm's adapt_input_conv). With
       C = 3 (the `rgb` band group) the source's RGB output is reproduced exactly; with
       C = 12 an RGB-only input gives 3 / 12 of it. The bias is copied.
  DEM and land-cover adapters are kept: neither is an image a 3-band kernel describes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from shards.modalities import S2
from training import checkpoint
from training.adapters import InputAdapter
from training.export import ENCODER_PREFIXES, FORMAT, CheckpointError, latest_checkpoint
from training.multimae import MultiMAE
from training.published import L1C
from training.released import is_released, load_released
from training.vit import fold_layer_scale, split_qkv

Report = dict[str, list[str]]
RGB = ("B04", "B03", "B02")  # the source's channel order: red, green, blue
CONTAINERS = ("state_dict", "model", "teacher")
PREFIXES = ("module.", "_orig_mod.", "online.", "teacher.backbone.", "backbone.",
            "base_encoder.")  # fmt: skip  # the last: SSL4EO-S12's MoCo-v3 checkpoints
CORE = ("global_token", "encoder.", "norm.")  # must all come from the source
# Source keys with no counterpart that are expected: why each is skipped.
SKIP = {
    "pos_embed": "ours are fixed 2-D sin-cos; its class position is folded into global_token",
    "mask_token": "no mask token in our encoder",
    "register_tokens": "no register tokens in our encoder",
    "head.": "classification head",
    "fc_norm.": "pooled-feature norm of the classification head",
}
BLOCK_SAME = ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
              "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias",
              "mlp.fc2.weight", "mlp.fc2.bias")  # fmt: skip


def _strip(state: dict[str, Any]) -> dict[str, Any]:
    """Unwrap training containers and wrapper prefixes (DDP, compile, SoftCon, DINO)."""
    for key in CONTAINERS:
        if isinstance(state.get(key), dict) and not any(k.startswith(key + ".") for k in state):
            state = state[key]
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def read_source(path: Path) -> tuple[str, dict[str, Tensor]]:
    """("eomae" | "multimae-eo" | "vit", state dict) of a source.

    A checkpoint, run, export, the MultiMAE-EO authors' checkpoint (training.released)
    or a ViT state dict.
    """
    if path.is_dir():
        ckpt = path if (path / checkpoint.MODEL).exists() else latest_checkpoint(path)
        path = ckpt / checkpoint.MODEL
    payload = checkpoint.read(path, weights_only=True)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a state dict")
    if payload.get("format") == FORMAT:
        return "eomae", payload["state_dict"]
    state = _strip(payload)
    if is_released(state):
        return "multimae-eo", state
    if "global_token" in state:
        return "eomae", state
    if "patch_embed.proj.weight" in state:
        return "vit", state
    raise CheckpointError(
        f"{path} is neither an eomae model nor a ViT state dict (no global_token or "
        f"patch_embed.proj.weight; first keys {list(state)[:8]})"
    )


def init_from(model: MultiMAE, path: Path) -> Report:
    """Load a source's backbone into `model` (in place); a report of what went where.

    Raises CheckpointError naming every mismatched key and shape, and nothing is loaded.
    """
    kind, state = read_source(Path(path))
    if kind == "multimae-eo":
        return load_released(model, state, str(path))
    if kind == "eomae":
        return _load_eomae(model, state, str(path))
    return _load_vit(model, state, str(path))


def _fail(problems: list[str], what: str) -> CheckpointError:
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return CheckpointError(
        f"{what} does not fit the model:\n  " + "\n  ".join(problems[:20]) + more
    )


def _load_eomae(model: MultiMAE, state: dict[str, Tensor], what: str) -> Report:
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    problems = [f"{k}: {tuple(v.shape)} in {what}, model has {tuple(own[k].shape)}"
                for k, v in backbone.items() if k in own and own[k].shape != v.shape]  # fmt: skip
    problems += [f"missing in {what}: {k}" for k in own if k.startswith(CORE) and k not in state]
    if problems:
        raise _fail(problems, what)
    take = {k: v for k, v in backbone.items() if k in own}
    model.load_state_dict(take, strict=False)
    return {
        "loaded": list(take),
        "adapted": [],
        "skipped": [f"{k} (not in the model)" for k in backbone if k not in own]
        + [f"{k} (not part of the backbone)" for k in state if k not in backbone],
        "kept": [k for k in own if k not in take],
    }


def resize_kernel(weight: Tensor, size: int) -> Tensor:
    """FlexiViT's pseudo-inverse resize of patch kernels (D, C, p, p) -> (D, C, size, size).

    With R the bilinear resize of a p x p patch to size x size (antialiased when shrinking),
    W' = pinv(R^T) W solves <R x, W'> = <x, W> for every patch x (least squares if p > size).
    """
    p = weight.shape[-1]
    if p == size:
        return weight
    basis = torch.eye(p * p, dtype=torch.float64).reshape(p * p, 1, p, p)
    resized = F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=size < p)  # fmt: skip  # (p*p, 1, s, s)
    r_t = resized.reshape(p * p, size * size)  # R^T: row i = the resize of basis pixel i
    flat = weight.double().reshape(-1, p * p)  # (D*C, p*p)
    new = flat @ torch.linalg.pinv(r_t).T  # (D*C, s*s)
    return new.reshape(*weight.shape[:2], size, size).to(weight.dtype)


def adapt_patch_embedding(weight: Tensor, bands: tuple[str, ...] | list[str], patch: int) -> Tensor:
    """RGB or 13-band patch kernels (D, 3 | 13, p, p) -> (D, C, patch, patch) for `bands`.

    A 13-band source (Sentinel-2 L1C in its order: SoftCon, SSL4EO-S12) gives each of our
    bands its own kernel; for RGB sources see the module docstring.
    """
    if weight.ndim == 4 and weight.shape[1] == len(L1C):
        w = resize_kernel(weight.double(), patch)
        return w[:, [L1C.index(b) for b in bands]].to(weight.dtype)
    if weight.ndim == 4 and weight.shape[1] == 2:
        raise CheckpointError(f"patch_embed.proj.weight {tuple(weight.shape)} takes 2 bands "
                              "(Sentinel-1 VV, VH): SAR weights fit no input of eomae")  # fmt: skip
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise CheckpointError(
            f"patch_embed.proj.weight {tuple(weight.shape)}: only RGB (3) and Sentinel-2 L1C "
            f"({len(L1C)}: {L1C}) sources are adapted"
        )
    w = resize_kernel(weight.double(), patch)
    kernels = dict(zip(RGB, w.unbind(1), strict=True))
    mean = w.mean(dim=1)
    out = torch.stack([kernels.get(b, mean) for b in bands], dim=1) * (3 / len(bands))
    return out.to(weight.dtype)


class _Mapping:
    """Our key -> (tensor, the source key it came from, how it was adapted or None)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[Tensor, str, str | None]] = {}

    def put(self, key: str, value: Tensor, source: str, how: str | None = None) -> None:
        self.items[key] = (value, source, how)

    def report(self) -> tuple[list[str], list[str]]:
        """(loaded keys, adapted 'key <- source (how)' lines)."""
        loaded = [k for k, (_, _, how) in self.items.items() if how is None]
        adapted = [f"{k} <- {src} ({how})" for k, (_, src, how) in self.items.items() if how]
        return loaded, adapted


def _map_blocks(state: dict[str, Tensor], out: _Mapping) -> list[str]:
    """Map `blocks.N.*` onto `encoder.N.*`; return the block keys with no counterpart."""
    by_block: dict[int, dict[str, Tensor]] = {}
    for k, v in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
        if m:
            by_block.setdefault(int(m[1]), {})[m[2]] = v
    unused = []
    for n, src in sorted(by_block.items()):
        for name in BLOCK_SAME:
            if name in src:
                out.put(f"encoder.{n}.{name}", src[name], f"blocks.{n}.{name}")
        for kind in ("weight", "bias"):
            qkv = src.get(f"attn.qkv.{kind}")
            if qkv is not None:
                q, kv = split_qkv(qkv)
                out.put(f"encoder.{n}.attn.q.{kind}", q, f"blocks.{n}.attn.qkv.{kind}")
                out.put(f"encoder.{n}.attn.kv.{kind}", kv, f"blocks.{n}.attn.qkv.{kind}")
        for ls, layer in (("ls1.gamma", "attn.proj"), ("ls2.gamma", "mlp.fc2")):
            if ls in src and f"{layer}.weight" in src:
                how = f"x blocks.{n}.{ls}: LayerScale folded in"
                folded = fold_layer_scale(src[ls], src[f"{layer}.weight"], src.get(f"{layer}.bias"))
                for kind, value in zip(("weight", "bias"), folded, strict=True):
                    if value is not None:
                        key = f"{layer}.{kind}"
                        out.put(f"encoder.{n}.{key}", value, f"blocks.{n}.{key}", how)
        known = {*BLOCK_SAME, "attn.qkv.weight", "attn.qkv.bias", "ls1.gamma", "ls2.gamma"}
        unused += [f"blocks.{n}.{name}" for name in src if name not in known]
    return unused


def _map_tokens(model: MultiMAE, state: dict[str, Tensor], out: _Mapping) -> None:
    """Final norm, class token -> global token, patch embedding -> the S2 input adapters."""
    for name in ("norm.weight", "norm.bias"):
        if name in state:
            out.put(name, state[name], name)
    if "cls_token" in state:
        cls, pos = state["cls_token"], state.get("pos_embed")
        if pos is not None and pos.shape[1] > 1 and ((pos.shape[1] - 1) ** 0.5).is_integer():
            # 1 + grid^2 positions: the source adds pos_embed[:, 0] to its class token
            out.put("global_token", cls + pos[:, :1], "cls_token", "+ pos_embed[:, 0]")
        else:
            out.put("global_token", cls, "cls_token")
    weight, bias = state["patch_embed.proj.weight"], state.get("patch_embed.proj.bias")
    for name, adapter in model.input_adapters.items():
        assert isinstance(adapter, InputAdapter)
        modality = adapter.modality
        if modality.source != S2.name:
            continue
        c, key = modality.channels, f"input_adapters.{name}.proj"
        bands = "bands by name" if weight.shape[1] == len(L1C) else f"RGB -> {c} bands x 3/{c}"
        how = f"{bands}, patch {weight.shape[-1]} -> {model.patch}"
        value = adapt_patch_embedding(weight, modality.bands, model.patch)
        out.put(f"{key}.weight", value, "patch_embed.proj.weight", how)
        if bias is not None:
            out.put(f"{key}.bias", bias, "patch_embed.proj.bias")


def _why_skipped(key: str) -> str:
    return next((why for p, why in SKIP.items() if key.startswith(p)), "no counterpart")


def _vit_problems(
    model: MultiMAE, state: dict[str, Tensor], mapping: _Mapping, unused: list[str], what: str
) -> list[str]:
    """Width, depth and unmatched keys first, then every mismatched or missing key's shapes."""
    own = model.state_dict()
    width = state["patch_embed.proj.weight"].shape[0]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    problems = [f"width: {what} has {width}, model {model.dim}"] if width != model.dim else []
    if depth != len(model.encoder):
        problems.append(f"depth: {what} has {depth} blocks, model {len(model.encoder)}")
    problems += [f"{k} {tuple(state[k].shape)}: no counterpart in our blocks" for k in unused]
    extra_blocks: set[str] = set()
    for k, (v, src, _) in mapping.items.items():
        block = re.match(r"encoder\.(\d+)\.", k)
        if k not in own and block:
            extra_blocks.add(block[1])
        elif k not in own:
            problems.append(f"{src} {tuple(state[src].shape)} -> {k}: not in the model")
        elif own[k].shape != v.shape:
            problems.append(f"{src} {tuple(state[src].shape)} -> {k}: gives {tuple(v.shape)}, "
                            f"model has {tuple(own[k].shape)}")  # fmt: skip
    problems += [
        f"blocks.{n}.* -> encoder.{n}: not in the model" for n in sorted(extra_blocks, key=int)
    ]
    # All of the encoder must come from the source but qkv biases (timm's qkv_bias=False).
    optional = re.compile(r"encoder\.\d+\.attn\.(q|kv)\.bias")
    return problems + [
        f"{k} {tuple(own[k].shape)}: not in {what}"
        for k in own
        if k.startswith(CORE) and k not in mapping.items and not optional.fullmatch(k)
    ]


def _load_vit(model: MultiMAE, state: dict[str, Tensor], what: str) -> Report:
    mapping = _Mapping()
    unused = _map_blocks(state, mapping)
    _map_tokens(model, state, mapping)
    problems = _vit_problems(model, state, mapping, unused, what)
    if problems:
        raise _fail(problems, what)
    take = {k: v for k, (v, _, _) in mapping.items.items()}
    model.load_state_dict(take, strict=False)
    used = {src for _, src, _ in mapping.items.values()}
    used |= {k for k in state if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)}
    loaded, adapted = mapping.report()
    return {
        "loaded": loaded,
        "adapted": adapted,
        "skipped": [f"{k} ({_why_skipped(k)})" for k in state if k not in used],
        "kept": [k for k in model.state_dict() if k not in take],
    }
