"""Encoder export: a pretrained MultiMAE's input adapters + encoder, with their config.

    torch.load(FILE) == {"format": "eomae-encoder/1",
                         "objective": "multimae" | "softcon" | "combined",
                         "model": ModelConfig as dict, "state_dict": {...},
                         "source": checkpoint path, "step": N}

`load_encoder` gives back a MultiMAE without output adapters whose `encode` and
`features` take any subset of the input modalities; evaluation builds on it, pooling
what the objective trained (`trained_pool`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from training import checkpoint
from training.checkpoint import CheckpointError
from training.config import SIZES, WITH_SOFTCON, ModelConfig
from training.multimae import MultiMAE
from training.released import is_released, load_released

FORMAT = "eomae-encoder/1"
ENCODER_PREFIXES = ("input_adapters.", "global_token", "encoder.", "norm.")
SOFTCON_ONLINE = "online."  # the online encoder of SoftConModel (and CombinedModel)


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the most steps in a pretraining run directory."""
    return _by_step(run_dir)[0]


def latest_intact_checkpoint(run_dir: Path) -> tuple[Path, dict[str, str]]:
    """The newest checkpoint whose every file reads, and why newer ones were passed over."""
    passed: dict[str, str] = {}
    for ckpt in _by_step(run_dir):
        problem = checkpoint.damage(ckpt)
        if problem is None:
            return ckpt, passed
        passed[ckpt.name] = problem
    raise CheckpointError(f"no intact checkpoint in {run_dir}: {passed}")


def _by_step(run_dir: Path) -> list[Path]:
    """A run's checkpoints, the most steps first (an unreadable state.json last)."""
    found = [p for p in Path(run_dir).glob("checkpoint_*") if (p / checkpoint.STATE).exists()]
    if not found:
        raise CheckpointError(f"no checkpoint in {run_dir}")

    def step(path: Path) -> int:
        try:
            return int(json.loads((path / checkpoint.STATE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    return sorted(found, key=step, reverse=True)


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's part of a MultiMAE state dict."""
    state = checkpoint.unwrap(model).state_dict()
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}


def export_encoder(source: Path, out: Path) -> Path:
    """Write the encoder of a checkpoint (or of a run's latest one) to `out`."""
    source = Path(source)
    ckpt = source if (source / checkpoint.MODEL).exists() else latest_checkpoint(source)
    cfg = checkpoint.read_config(ckpt)
    state = checkpoint.read(ckpt / checkpoint.MODEL)
    if cfg.uses_softcon:  # the online encoder is the one trained by gradient
        state = {k.removeprefix(SOFTCON_ONLINE): v for k, v in state.items()
                 if k.startswith(SOFTCON_ONLINE)}  # fmt: skip
    step = json.loads((ckpt / checkpoint.STATE).read_text())["step"]
    payload = {
        "format": FORMAT,
        "objective": cfg.objective,
        "model": cfg.model.model_dump(mode="json"),
        "state_dict": {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)},
        "source": str(ckpt),
        "step": step,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    return out


def trained_pool(objective: str) -> Literal["global", "mean"]:
    """The frozen features an objective trains: `global` token or `mean` of patch tokens.

    SoftCon's loss acts on the global token only (softcon, combined); MultiMAE's decoders
    read every token and its linear probes pool the patch tokens, as MAE's do.
    """
    return "global" if objective in WITH_SOFTCON else "mean"


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `model`, naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    problems = [f"{k}: {tuple(v.shape)} in {what}, model has {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and own[k].shape != v.shape]  # fmt: skip
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if problems or missing or unexpected:
        lines = (
            problems + [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
        )
        raise CheckpointError(f"{what} does not fit the model:\n  " + "\n  ".join(lines[:20]))
    model.load_state_dict(state)


def released_encoder(state: dict[str, torch.Tensor], what: str) -> MultiMAE:
    """The encoder of the MultiMAE-EO authors' checkpoint, as `model.preset: multimae-eo`."""
    dim = state["global_tokens"].shape[-1]
    size = next((name for name, (d, _, _) in SIZES.items() if d == dim), None)
    if size is None:
        raise CheckpointError(f"{what}: global_tokens of width {dim}; known sizes {SIZES}")
    model = MultiMAE(ModelConfig(preset="multimae-eo", size=size))  # type: ignore[arg-type]
    model.output_adapters = nn.ModuleDict()
    load_released(model, state, what)
    return model.eval()


def load_encoder(path: Path, map_location: str = "cpu") -> MultiMAE:
    """A MultiMAE encoder (no output adapters), ready for `features`.

    From an exported file, or from the MultiMAE-EO authors' checkpoint.
    """
    payload: dict[str, Any] = checkpoint.read(path, map_location)
    if isinstance(payload, dict) and is_released(payload.get("model") or {}):
        return released_encoder(payload["model"], str(path))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an eomae encoder export ({FORMAT}) nor a "
                              "MultiMAE-EO checkpoint")  # fmt: skip
    cfg = ModelConfig.model_validate(payload["model"])
    model = MultiMAE(cfg)
    model.output_adapters = nn.ModuleDict()
    load_state_checked(model, payload["state_dict"], str(path))
    return model.eval()
