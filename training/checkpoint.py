"""A training checkpoint directory: model, optimiser, schedule, progress, RNG, config.

model.pt       the model's state dict (no DDP or compile prefixes)
optimizer.pt   AdamW state
scheduler.pt   learning-rate schedule state
state.json     step, epoch, world size, metrics at the checkpoint
rng.pt         torch CPU RNG state
config.json    the PretrainConfig of the run (the model config inside)
"""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import PretrainConfig

MODEL, OPTIMIZER, SCHEDULER, STATE, RNG, CONFIG = (
    "model.pt", "optimizer.pt", "scheduler.pt", "state.json", "rng.pt", "config.json",
)  # fmt: skip


# What torch.load raises on a truncated or foreign file.
READ_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError,
               zipfile.BadZipFile)  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint or encoder file that cannot be used as asked."""


def read(path: Path, map_location: str = "cpu", **kwargs: Any) -> Any:
    """torch.load (onto the CPU); a damaged or foreign file is a CheckpointError naming it."""
    try:
        # Checkpoints of other projects keep their argparse options (the reference
        # MultiMAE's `args`): a plain namespace, safe to rebuild.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, **kwargs)
    except READ_ERRORS as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def damage(directory: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a file missing or unreadable), or None."""
    for name in (MODEL, OPTIMIZER, SCHEDULER, RNG):
        try:
            read(directory / name)
        except CheckpointError as e:
            return str(e)
    try:
        json.loads((directory / STATE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"cannot read {directory / STATE}: {type(e).__name__}: {e}"
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    cfg: PretrainConfig,
) -> None:
    """Write everything needed to continue training into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap(model).state_dict(), directory / MODEL)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER)
    torch.save(scheduler.state_dict(), directory / SCHEDULER)
    torch.save(torch.get_rng_state(), directory / RNG)
    (directory / STATE).write_text(json.dumps(state, indent=1))
    (directory / CONFIG).write_text(cfg.model_dump_json(indent=1))


def load(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimiser, schedule and RNG from `directory`; return its state."""
    unwrap(model).load_state_dict(read(directory / MODEL))
    optimizer.load_state_dict(read(directory / OPTIMIZER))
    scheduler.load_state_dict(read(directory / SCHEDULER))
    torch.set_rng_state(read(directory / RNG))
    return dict(json.loads((directory / STATE).read_text()))


def read_config(directory: Path) -> PretrainConfig:
    """The PretrainConfig a checkpoint was written with."""
    return PretrainConfig.model_validate_json((directory / CONFIG).read_text())
