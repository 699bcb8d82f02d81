"""The MultiMAE-EO authors' released checkpoint, loaded into `model.preset: multimae-eo`.

Their file (josesosajs/multimae-meets-eo, release v1.0.0) is the reference MultiMAE's
checkpoint: `ckpt["model"]` holds

    global_tokens                                  (1, 1, 768)
    input_adapters.{rgb,ired,sired,ebands,depth}.proj.{weight,bias}, .pos_emb (fixed)
    input_adapters.semseg.class_emb.weight         (12, 64), .proj.*, .pos_emb
    encoder.N.{norm1,norm2}.*, attn.qkv.* (fused: rows q | k | v), attn.proj.*, mlp.fc1/2.*
    output_adapters.{rgb,...,semseg,norm_rgb}.{proj_context, mask_token, task_embeddings.T,
        decoder.{q,kv,proj}, context_norm, query_norm, out_norm, mlp.fc1/2,
        decoder_transformer.N.* (fused qkv), out_proj}.*, .pos_emb (fixed)

Their band groups are found among ours by band name (rgb = B04 B03 B02, ired = B05 B06
B07, sired = B11 B12, ebands = B8A B08; depth = dem, semseg = lc) and their kernels put
in our band order. Fused qkv rows split into our q and kv (k | v, as theirs). The fixed
sin-cos tables are not loaded: ours are built the same way, and checked equal.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from training.adapters_eo import fixed_table
from training.checkpoint import CheckpointError
from training.multimae import NORM_RGB, MultiMAE
from training.vit import split_qkv

# Their input/output names -> the bands they hold (S2, in their channel order) or our name.
BANDS = {
    "rgb": ("B04", "B03", "B02"),
    "ired": ("B05", "B06", "B07"),
    "sired": ("B11", "B12"),
    "ebands": ("B8A", "B08"),
}
NAMED = {"depth": "dem", "semseg": "lc", NORM_RGB: NORM_RGB}
MARKERS = ("global_tokens", "input_adapters.ebands.proj.weight")


def is_released(state: dict[str, Tensor]) -> bool:
    """Whether a state dict has the authors' layout."""
    return all(k in state for k in MARKERS)


def _names(model: MultiMAE) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Their name -> ours, and for band groups the order of their channels in ours."""
    ours, order = dict(NAMED), {}
    for theirs, bands in BANDS.items():
        match = [m for m in model.cfg.all_modalities if set(m.bands) == set(bands)]
        if not match:
            raise CheckpointError(
                f"no modality of the model holds the bands of their {theirs} {bands}; "
                f"the model has {[(m.name, m.bands) for m in model.cfg.all_modalities]}"
            )
        ours[theirs] = match[0].name
        order[theirs] = [bands.index(b) for b in match[0].bands]
    return ours, order


def convert(model: MultiMAE, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Their state dict as ours for `model`; and the keys of theirs left out, with why."""
    ours, order = _names(model)
    out: dict[str, Tensor] = {}
    left: list[str] = []
    for key, value in state.items():
        if key.endswith("pos_emb"):
            dim = value.shape[1]
            if not torch.allclose(value.float(), fixed_table(dim), atol=1e-5):
                raise CheckpointError(f"{key} is not the fixed sin-cos table this preset builds")
            continue  # rebuilt, not loaded
        if key == "global_tokens":
            out["global_token"] = value
            continue
        m = re.fullmatch(r"(input_adapters|output_adapters)\.([^.]+)\.(.+)", key)
        if m:
            part, theirs, rest = m.groups()
            if theirs not in ours:
                left.append(f"{key} (no modality of ours is their {theirs})")
                continue
            rest = re.sub(r"^task_embeddings\.([^.]+)$",
                          lambda t: f"task_embeddings.{ours.get(t[1], t[1])}", rest)  # fmt: skip
            if theirs in order and rest == "proj.weight" and part == "input_adapters":
                value = value[:, order[theirs]]  # their channel order -> ours
            if theirs in order and rest.startswith("out_proj.") and part == "output_adapters":
                value = _reorder_channels(value, order[theirs])
            key = f"{part}.{ours[theirs]}.{rest}"
        if ".qkv." in key:  # fused: our q and kv
            prefix, kind = key.rsplit(".qkv.", 1)
            out[f"{prefix}.q.{kind}"], out[f"{prefix}.kv.{kind}"] = split_qkv(value)
        else:
            out[key] = value
    return out, left


def _reorder_channels(value: Tensor, order: list[int]) -> Tensor:
    """out_proj rows laid out (c, p, p): move whole channel blocks into our band order."""
    blocks = value.reshape(len(order), -1, *value.shape[1:])
    return blocks[order].reshape(value.shape)


def load_released(model: MultiMAE, state: dict[str, Tensor], what: str) -> dict[str, list[str]]:
    """Load their weights into a `multimae-eo` model (in place); a report as `init_from`'s.

    The model's own inputs and targets are filled; output adapters it does not have (an
    encoder for evaluation has none) are left out and listed.
    """
    if not model.reference:
        raise CheckpointError(
            f"{what} is a MultiMAE-EO checkpoint (the authors' layout); it loads into "
            f"--model.preset multimae-eo, not {model.cfg.preset}"
        )
    converted, left = convert(model, state)
    own = model.state_dict()
    problems = [f"{k}: {tuple(v.shape)} in {what}, model has {tuple(own[k].shape)}"
                for k, v in converted.items() if k in own and own[k].shape != v.shape]  # fmt: skip
    problems += [f"missing in {what}: {k}" for k in own if k not in converted]
    if problems:
        raise CheckpointError(f"{what} does not fit the model:\n  " + "\n  ".join(problems[:20]))
    take = {k: v for k, v in converted.items() if k in own}
    model.load_state_dict(take)
    left += [f"{k} (the model has no such part)" for k in converted if k not in own]
    return {"loaded": list(take), "adapted": [], "skipped": left, "kept": []}
