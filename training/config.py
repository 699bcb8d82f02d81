"""Typed configuration of the MultiMAE model and of `eomae pretrain`, validated once."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shards.config import absolute_url
from training.modalities import PRESETS, ModelModality

# name: (embedding dim, depth, heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (96, 4, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
# What `eomae pretrain` trains: masked reconstruction, soft contrastive, or their weighted sum.
Objective = Literal["multimae", "softcon", "combined"]
WITH_SOFTCON: tuple[Objective, ...] = ("softcon", "combined")  # two views, EMA target, labels
WITH_RECONSTRUCTION: tuple[Objective, ...] = ("multimae", "combined")  # decoders, masked loss
# name: (input px, patch px, visible tokens): the EO paper's (56 px crops of 64 px chips)
# and the original MultiMAE's.
MASKING_PRESETS: dict[str, tuple[int, int, int]] = {
    "eo": (56, 8, 49),
    "multimae": (224, 16, 98),
}


# `model.preset: multimae-eo` fixes these: the MultiMAE-EO authors' configuration
# (josesosajs/multimae-meets-eo, cfgs/pretrain/default-config.yaml and domain_config.py).
# Their model is ViT-B: `size` defaults to base but stays free, for small tests.
MULTIMAE_EO: dict[str, Any] = {
    "modalities": "bandgroups",
    "masking": "eo",
    "input_size": 56,
    "patch_size": 8,
    "num_visible": 49,
    "alpha": 1.0,
    "decoder_dim": 128,
    "decoder_depth": 2,
    "decoder_heads": 8,
    "class_embed_dim": 64,
    "norm_pix": False,
    "dem_standardise": True,
    "loss_weights": {},
}


class ModelConfig(BaseModel):
    """A MultiMAE: modalities in and out, encoder size, masking, decoders, loss weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["eomae", "multimae-eo"] = Field(
        "eomae",
        description="eomae: our model; multimae-eo: the MultiMAE-EO authors' model exactly "
        "(fixes the fields it sets; see docs/multimae-eo.md).",
    )
    size: Literal["tiny", "small", "base"] = Field("tiny", description="Encoder size.")
    modalities: Literal["bandgroups", "s2"] = Field(
        "bandgroups", description="Modality preset: S2 band groups, or all 12 bands as one."
    )
    inputs: list[str] | None = Field(None, description="Input modalities (default: all).")
    targets: list[str] | None = Field(None, description="Reconstructed modalities (default: all).")
    masking: Literal["eo", "multimae"] = Field(
        "eo", description="eo: 56 px, patch 8, 49 visible; multimae: 224 px, patch 16, 98."
    )
    input_size: int | None = Field(None, ge=8, description="Input px (default: the preset's).")
    patch_size: int | None = Field(None, ge=2, description="Patch px (default: the preset's).")
    num_visible: int | None = Field(None, ge=1, description="Visible tokens (default: preset).")
    alpha: float = Field(1.0, gt=0, description="Symmetric Dirichlet concentration of masking.")
    decoder_dim: int = Field(128, ge=16, description="Output adapter width.")
    decoder_depth: int = Field(2, ge=0, description="Transformer blocks per output adapter.")
    decoder_heads: int = Field(4, ge=1, description="Heads in the output adapters.")
    class_embed_dim: int = Field(32, ge=4, description="Land-cover class embedding size.")
    norm_pix: bool = Field(True, description="Spectral targets normalised per patch (MAE).")
    dem_standardise: bool = Field(
        False, description="Standardise DEM per sample on its 10-90 % range."
    )
    loss_weights: dict[str, float] = Field(
        default_factory=dict, description="Loss weight per target modality (default 1)."
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") != "multimae-eo":
            return data
        fixed = [f"{k}={data[k]!r} (the preset's is {v!r})" for k, v in MULTIMAE_EO.items()
                 if data.get(k) is not None and data[k] != v]  # fmt: skip
        if fixed:
            raise ValueError(f"preset multimae-eo fixes {', '.join(fixed)}")
        return {"size": "base", **data, **MULTIMAE_EO}

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        names = [m.name for m in PRESETS[self.modalities]]
        for field in ("inputs", "targets"):
            chosen = getattr(self, field)
            if chosen is not None:
                unknown = [n for n in chosen if n not in names]
                if unknown or not chosen:
                    raise ValueError(f"{field} {chosen}: choose from {names}")
        unknown = [n for n in self.loss_weights if n not in names]
        if unknown:
            raise ValueError(f"loss_weights for unknown modalities {unknown}; have {names}")
        size, patch, visible = self.geometry
        if size % patch:
            raise ValueError(f"input_size {size} is not a multiple of patch_size {patch}")
        tokens = (size // patch) ** 2 * len(self.input_modalities)
        if visible > tokens:
            raise ValueError(f"num_visible {visible} exceeds the {tokens} input tokens")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ValueError(
                f"decoder_dim {self.decoder_dim} must be a multiple of 4 and of decoder_heads"
            )
        return self

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(input px, patch px, visible tokens)."""
        size, patch, visible = MASKING_PRESETS[self.masking]
        return self.input_size or size, self.patch_size or patch, self.num_visible or visible

    @property
    def all_modalities(self) -> tuple[ModelModality, ...]:
        """The preset's modalities."""
        return PRESETS[self.modalities]

    @property
    def input_modalities(self) -> tuple[ModelModality, ...]:
        """Modalities the encoder can take."""
        return tuple(m for m in self.all_modalities if self.inputs is None or m.name in self.inputs)

    @property
    def target_modalities(self) -> tuple[ModelModality, ...]:
        """Modalities the decoders reconstruct."""
        return tuple(
            m for m in self.all_modalities if self.targets is None or m.name in self.targets
        )


class SoftConConfig(BaseModel):
    """SoftCon (`--objective softcon` and `combined`): see training/softcon.py for the loss.

    In `combined` (training/combined.py) the online view is masked by MultiMAE's Dirichlet
    masking (`--model.num-visible`), so `mask_ratio` is unused there, and the total loss is
    the MultiMAE loss + `loss_weight` x the SoftCon loss.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_ratio: float = Field(
        0.5, ge=0, lt=1, description="Siamese masking of the online view (softcon only)."
    )
    modality_drop: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of online views drawn without one input source (s2 or dem), so "
        "each subset embeds alone (softcon only).",
    )
    temperature: float = Field(0.1, gt=0, description="Similarity temperature.")
    soft_weight: float = Field(1.0, ge=0, description="Weight of the label-similarity target.")
    variant: Literal["ce", "bce"] = Field("ce", description="Row softmax CE, or BCE per pair.")
    labels: Literal["threshold", "fractions"] = Field(
        "threshold", description="Multi-label vectors: classes above --threshold, or fractions."
    )
    threshold: float = Field(0.05, gt=0, lt=1, description="Class presence threshold.")
    head_hidden: int = Field(2048, ge=16, description="Projection head hidden width.")
    head_out: int = Field(256, ge=8, description="Projection (embedding) size.")
    ema: float = Field(0.996, ge=0, le=1, description="EMA momentum at the start (cosine to 1).")
    loss_weight: float = Field(
        1.0, ge=0, description="combined: loss = MultiMAE loss + this x SoftCon loss."
    )


class PretrainConfig(BaseModel):
    """`eomae pretrain`: data, model, optimisation, cluster, checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: str = Field("runs/ingest", description="Run directory (path or fsspec URL).")
    shards: str | None = Field(None, description="Shard set (default: RUN/shards).")
    name: str | None = Field(
        None, description="Run name under RUN/pretrain (default: a new timestamped name)."
    )
    resume: bool = Field(False, description="Continue the run NAME from its last checkpoint.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model.")
    objective: Objective = Field(
        "multimae",
        description="multimae: masked reconstruction; softcon: soft contrastive; combined: "
        "both on one masked pass, weighted by --softcon.loss-weight.",
    )
    softcon: SoftConConfig = Field(default_factory=SoftConConfig, description="SoftCon settings.")
    init: str | None = Field(
        None, description="Initialise from a checkpoint, encoder export or ViT state dict."
    )
    workers: int = Field(2, ge=1, description="Ray Train workers (the minimum when elastic).")
    max_workers: int | None = Field(
        None, ge=1, description="Elastic: up to this many workers when the cluster has room."
    )
    elastic_resize_s: float = Field(
        60.0, gt=0, description="Elastic: how often a running group checks for room to grow."
    )
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); else CPU (gloo).")
    batch_size: int = Field(32, ge=1, description="Samples per worker per step.")
    epochs: int = Field(10, ge=1, description="Epochs of `epoch_samples` samples.")
    epoch_samples: int | None = Field(
        None, ge=1, description="Samples per epoch over all workers (default: train split size)."
    )
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    min_lr: float = Field(1e-6, ge=0, description="Learning rate at the end of the cosine.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length, in epochs.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on norms/biases).")
    clip_grad: float | None = Field(1.0, gt=0, description="Gradient-norm clip (none: off).")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the model.")
    loader_workers: int = Field(1, ge=0, description="DataLoader worker processes per worker.")
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every N epochs (and last).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept in storage.")
    max_failures: int = Field(3, ge=0, description="Worker failures survived (restart + resume).")
    log_every: int = Field(10, ge=1, description="Report metrics to Ray every N steps.")
    mlflow: str | None = Field(
        None,
        description="MLflow tracking URI: the metrics go to an MLflow run there too "
        "(needs `pip install mlflow`).",
    )
    seed: int = Field(0, description="Seed of initialisation, masking, crops and data order.")
    address: str | None = Field(
        None, description="Ray cluster address; default: $RAY_ADDRESS or a local Ray."
    )

    @field_validator("run_dir", "shards", "init")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else absolute_url(value)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.mlflow and importlib.util.find_spec("mlflow") is None:
            raise ValueError(f"mlflow {self.mlflow}: the mlflow package is not installed "
                             "(pip install mlflow)")  # fmt: skip
        if self.max_workers is not None and self.max_workers < self.workers:
            raise ValueError(f"max_workers {self.max_workers} < workers {self.workers}")
        if self.uses_softcon:  # SoftCon's labels come from land cover: not an input
            inputs = [m.name for m in self.model.input_modalities]
            labels = [m.name for m in self.model.all_modalities if m.categorical]
            if self.model.inputs is None:
                keep = [n for n in inputs if n not in labels]  # validated again: num_visible
                model = ModelConfig.model_validate({**self.model.model_dump(), "inputs": keep})
                object.__setattr__(self, "model", model)
            elif set(labels) & set(inputs):
                raise ValueError(f"--objective {self.objective}: land cover {labels} gives the "
                                 f"labels and cannot be in --model.inputs {inputs}")  # fmt: skip
        return self

    @property
    def uses_softcon(self) -> bool:
        """Whether the objective has a SoftCon part (two views, EMA target, land-cover labels)."""
        return self.objective in WITH_SOFTCON

    @property
    def reconstructs(self) -> bool:
        """Whether the objective has a MultiMAE reconstruction part (decoders, masked loss)."""
        return self.objective in WITH_RECONSTRUCTION
