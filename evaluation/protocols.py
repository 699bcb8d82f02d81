"""Evaluation protocols: linear probe, kNN and fine-tuning, for classification and segmentation.

Each protocol gets an encoder (a MultiMAE without decoders), the model modalities to feed
it, a train and a test split, and returns the test split's predictions:
(N, K) scores for scene and multi-label tasks, (N, H, W) class indices for segmentation.

- `linear`: frozen encoder, pooled features (mean of patch tokens), standardised with
  the train features' statistics (the BatchNorm without affine of MAE's linear probe),
  one linear layer trained with AdamW. Segmentation: a linear layer on each frozen patch
  token predicting its patch's pixel logits (`frozen-seg`).
- `knn`: cosine similarity of L2-normalised pooled features, the k nearest train samples
  vote with weights exp(similarity / T) (as DINO's kNN); multi-label scores are the
  weighted mean of the neighbours' label vectors.
- `finetune`: encoder and a linear head trained together, the encoder at a lower learning
  rate, random flips as augmentation. From random init this is the supervised baseline.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from evaluation.benchmarks import IGNORE, Task
from evaluation.data import Split
from training.loop import warmup_cosine
from training.modalities import ModelModality, split_batch
from training.multimae import MultiMAE
from training.published import PublishedViT

# Anything with encode / features / dim / patch: ours, or a published ViT.
Encoder = MultiMAE | PublishedViT

Protocol = Literal["linear", "knn", "finetune"]
PROTOCOLS: tuple[Protocol, ...] = ("linear", "knn", "finetune")


class ProbeConfig(BaseModel):
    """Optimisation settings shared by the protocols."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(64, ge=1, description="Samples per step.")
    linear_epochs: int = Field(100, ge=1, description="Epochs of the linear / patch head.")
    linear_lr: float = Field(1e-2, gt=0, description="Learning rate of the frozen-encoder heads.")
    knn_k: int = Field(20, ge=1, description="Neighbours of the kNN vote.")
    knn_temperature: float = Field(0.07, gt=0, description="kNN vote weight exp(sim / T).")
    finetune_epochs: int = Field(10, ge=1, description="Epochs of fine-tuning.")
    finetune_lr: float = Field(1e-3, gt=0, description="Peak learning rate of the head.")
    encoder_lr_scale: float = Field(0.1, gt=0, description="Encoder lr = finetune_lr x this.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed of heads, batches and augmentation.")
    pool: Literal["auto", "mean", "global", "last4"] = Field(
        "auto",
        description="Frozen features: mean of patch tokens, the global token, or (published "
        "ViTs) DINOv2's 4-layer linear input; auto: a published model's own, global for "
        "SoftCon and combined encoders, which train it, mean otherwise.",
    )


def _batches(n: int, size: int, generator: torch.Generator | None = None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(size))


def _take(
    split: Split, index: Tensor, modalities: tuple[ModelModality, ...]
) -> tuple[dict[str, Tensor], Tensor]:
    """The encoder's inputs and the labels of the samples at `index`, read now."""
    sources, labels = split.take(index)
    return split_batch(sources, modalities), labels


@torch.no_grad()
def encode(
    encoder: Encoder,
    split: Split,
    modalities: tuple[ModelModality, ...],
    batch_size: int,
    pool: str = "mean",
    patches: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Pooled features (N, D), and with `patches` the patch tokens (N, g*g, D).

    The patch tokens are averaged over modalities; segmentation needs them, the others do
    not, and they are g*g times larger. `pool`: "mean" of the patch tokens, "global", or
    "last4" (published ViTs only: `training.published.PublishedViT.features`, (N, 5D)).
    """
    if pool == "last4" and not isinstance(encoder, PublishedViT):
        raise ValueError("pool 'last4' (DINOv2's 4-layer input) is for published ViTs only")
    encoder.eval()
    pooled, grids = [], []
    for index in _batches(len(split), batch_size):  # only features are kept
        inputs, _ = _take(split, index, modalities)
        if pool == "last4" and not patches:
            pooled.append(encoder.features(inputs, pool))
            continue
        encoded = encoder.encode(inputs)  # (B, 1 + M*g*g, D)
        tokens = encoded[:, 1:]
        pooled.append(encoded[:, 0] if pool == "global" else tokens.mean(dim=1))
        if patches:
            b, n, d = tokens.shape
            grids.append(tokens.view(b, len(inputs), n // len(inputs), d).mean(dim=1))
    return torch.cat(pooled), torch.cat(grids) if patches else None


def loss_fn(kind: Task, logits: Tensor, target: Tensor) -> Tensor:
    """BCE for multi-label, cross-entropy (ignoring unlabelled pixels) otherwise."""
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


class PatchHead(nn.Module):
    """Patch tokens (B, g*g, D) -> pixel logits (B, K, g*p, g*p): one linear map per token."""

    def __init__(self, dim: int, classes: int, patch: int) -> None:
        super().__init__()
        self.classes, self.patch = classes, patch
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, classes * patch * patch)

    def forward(self, tokens: Tensor) -> Tensor:
        """Pixel logits of every patch, laid out on the image grid."""
        b, n, _ = tokens.shape
        g, p, k = int(n**0.5), self.patch, self.classes
        x = self.proj(self.norm(tokens)).view(b, g, g, k, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(b, k, g * p, g * p)


def fit_head(head: nn.Module, x: Tensor, y: Tensor, kind: Task, cfg: ProbeConfig) -> nn.Module:
    """Train a head on frozen features `x` (N, ...) for labels `y` with AdamW + cosine."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.linear_lr,
                                  weight_decay=cfg.weight_decay)  # fmt: skip
    steps = cfg.linear_epochs * len(_batches(len(x), cfg.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    head.train()
    for _ in range(cfg.linear_epochs):
        for index in _batches(len(x), cfg.batch_size, generator):
            loss = loss_fn(kind, head(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def linear_probe(
    encoder: Encoder,
    modalities: tuple[ModelModality, ...],
    train: Split,
    test: Split,
    kind: Task,
    classes: int,
    cfg: ProbeConfig,
) -> Tensor:
    """Frozen encoder + linear head; the test split's scores or pixel predictions."""
    torch.manual_seed(cfg.seed)
    seg = kind == "segmentation"
    train_pooled, train_patches = encode(encoder, train, modalities, cfg.batch_size, cfg.pool, seg)
    test_pooled, test_patches = encode(encoder, test, modalities, cfg.batch_size, cfg.pool, seg)
    if train_patches is not None and test_patches is not None:
        head = fit_head(PatchHead(encoder.dim, classes, encoder.patch), train_patches,
                        train.labels, kind, cfg)  # fmt: skip
        with torch.no_grad():
            return head(test_patches).argmax(dim=1)
    # A label fraction may leave one training sample: its spread is 0, not NaN.
    spread = train_pooled.std(dim=0) if len(train_pooled) > 1 else torch.zeros_like(train_pooled[0])
    mean, std = train_pooled.mean(dim=0), spread.clamp_min(1e-6)
    head = fit_head(nn.Linear(train_pooled.shape[1], classes), (train_pooled - mean) / std,
                    train.labels, kind, cfg)  # fmt: skip
    with torch.no_grad():
        return head((test_pooled - mean) / std)


def knn(
    encoder: Encoder,
    modalities: tuple[ModelModality, ...],
    train: Split,
    test: Split,
    kind: Task,
    classes: int,
    cfg: ProbeConfig,
) -> Tensor:
    """Weighted k-nearest-neighbour scores (N_test, K) from cosine similarity."""
    if kind == "segmentation":
        raise ValueError("kNN is a classification protocol; use linear or finetune")
    train_x = F.normalize(encode(encoder, train, modalities, cfg.batch_size, cfg.pool)[0], dim=1)
    test_x = F.normalize(encode(encoder, test, modalities, cfg.batch_size, cfg.pool)[0], dim=1)
    sim = test_x @ train_x.T  # (N_test, N_train)
    k = min(cfg.knn_k, len(train))
    top, index = sim.topk(k, dim=1)
    weights = (top / cfg.knn_temperature).exp()  # (N_test, k)
    votes = train.labels.float()[index] if kind == "multilabel" else F.one_hot(
        train.labels[index], classes).float()  # fmt: skip
    return (weights[..., None] * votes).sum(dim=1) / weights.sum(dim=1, keepdim=True)


class Finetuned(nn.Module):
    """Encoder + head: pooled features -> linear for classification, PatchHead for pixels."""

    def __init__(self, encoder: Encoder, kind: Task, classes: int) -> None:
        super().__init__()
        self.encoder, self.kind = encoder, kind
        self.head: nn.Module = (
            PatchHead(encoder.dim, classes, encoder.patch)
            if kind == "segmentation"
            else nn.Sequential(nn.LayerNorm(encoder.dim), nn.Linear(encoder.dim, classes))
        )

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        """Class scores (B, K), or pixel logits (B, K, H, W) for segmentation."""
        tokens = self.encoder.encode(inputs)[:, 1:]
        if self.kind != "segmentation":
            return self.head(tokens.mean(dim=1))
        b, n, d = tokens.shape
        return self.head(tokens.view(b, len(inputs), n // len(inputs), d).mean(dim=1))


def _flip(
    inputs: dict[str, Tensor], labels: Tensor, kind: Task, g: torch.Generator
) -> tuple[dict[str, Tensor], Tensor]:
    """The same random horizontal/vertical flips for inputs (and pixel labels)."""
    for dim in (-1, -2):
        if torch.rand((), generator=g) < 0.5:
            inputs = {k: v.flip(dim) for k, v in inputs.items()}
            if kind == "segmentation":
                labels = labels.flip(dim)
    return inputs, labels


def finetune(
    encoder: Encoder,
    modalities: tuple[ModelModality, ...],
    train: Split,
    test: Split,
    kind: Task,
    classes: int,
    cfg: ProbeConfig,
) -> Tensor:
    """Encoder + head trained end to end; the test split's scores or pixel predictions."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = Finetuned(encoder, kind, classes)
    optimizer = torch.optim.AdamW(
        [{"params": encoder.parameters(), "lr": cfg.finetune_lr * cfg.encoder_lr_scale},
         {"params": model.head.parameters(), "lr": cfg.finetune_lr}],
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    steps = cfg.finetune_epochs * len(_batches(len(train), cfg.batch_size))
    # the pretraining schedule: linear warm-up over the first tenth, then cosine to zero
    factor = warmup_cosine(max(1, steps // 10), steps, 0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    for _ in range(cfg.finetune_epochs):  # batches streamed from the split each epoch
        for index in _batches(len(train), cfg.batch_size, generator):
            x, y = _flip(*_take(train, index, modalities), kind, generator)
            loss = loss_fn(kind, model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(_take(test, i, modalities)[0])
                         for i in _batches(len(test), cfg.batch_size)])  # fmt: skip
    return out.argmax(dim=1) if kind == "segmentation" else out


RUNNERS = {"linear": linear_probe, "knn": knn, "finetune": finetune}
