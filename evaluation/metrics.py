"""Scores of the three evaluation kinds: scene accuracy, multi-label mAP, segmentation mIoU.

    multilabel_scores(scores, targets)["mAP_micro"]        # BigEarthNet's headline
    scene_scores(logits, labels)["accuracy"]               # EuroSAT's headline
    meter = SegmentationMeter(num_classes)                 # mIoU without holding every mask
    for pred, target in batches:
        meter.update(pred, target)
    meter.compute()["mIoU"]

Every value is a fraction in [0, 1] (the report multiplies by 100); a score with nothing to
score is NaN, never 0. Inputs may be numpy arrays or torch tensors (on any device); where a
function takes predictions it also takes logits, with the class axis at dimension 1.
`HEADLINE` names the metric each kind is ranked by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
from sklearn.metrics import average_precision_score

HEADLINE = {"scene": "accuracy", "multilabel": "mAP_micro", "segmentation": "mIoU"}
# What a class without positives counts in macro mAP (multilabel_map); "zero" first.
EmptyClasses = Literal["zero", "skip"]
EMPTY_CLASSES: tuple[EmptyClasses, ...] = get_args(EmptyClasses)
IGNORE_INDEX = -100  # torch's cross-entropy default, as the benchmark readers use

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike | list[Any]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(logits_or_pred: ArrayLike, target: np.ndarray) -> np.ndarray:
    """Class indices: logits (one more axis than `target`, classes at axis 1) are arg-maxed."""
    x = _numpy(logits_or_pred)
    if x.ndim == target.ndim + 1:
        x = x.argmax(axis=1)
    if x.shape != target.shape:
        raise ValueError(f"predictions of shape {x.shape} for targets of shape {target.shape}")
    return x.astype(np.int64)


def multilabel_map(
    scores: ArrayLike, targets: ArrayLike, empty: EmptyClasses = "zero"
) -> dict[str, Any]:
    """Average precision of (N, K) scores against (N, K) 0/1 targets, BigEarthNet style.

    "mAP_micro" pools every (sample, class) pair into one ranking. "mAP_macro" is the mean
    of the per-class APs; AP is undefined for a class with no positive in `targets`, and
    `empty` says what such a class counts: "zero" scores it 0 and keeps it in the mean (what
    scikit-learn's and torchmetrics' macro AP do, and so the benchmarks' reference code),
    "skip" leaves it out ("per_class_ap" then holds NaN for it), so a test split that lacks
    a class is not punished for it. "classes_scored" counts the classes with positives.
    Scores may be logits or probabilities (AP depends only on the order).
    """
    if empty not in EMPTY_CLASSES:
        raise ValueError(f"empty={empty!r}: one of {EMPTY_CLASSES}")
    s, t = _numpy(scores).astype(np.float64), _numpy(targets).astype(np.int64)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} must both be (N, K)")
    scored = t.sum(axis=0) > 0  # (K,)
    per_class = np.full(s.shape[1], np.nan if empty == "skip" else 0.0)
    for k in np.flatnonzero(scored):
        per_class[k] = average_precision_score(t[:, k], s[:, k])
    counted = scored if empty == "skip" else np.ones_like(scored)
    micro = average_precision_score(t, s, average="micro") if scored.any() else np.nan
    return {
        "mAP_micro": float(micro),
        "mAP_macro": float(per_class[counted].mean()) if scored.any() else float("nan"),
        "empty_classes": empty,
        "classes_scored": int(scored.sum()),
        "per_class_ap": per_class.tolist(),
    }


def accuracy(logits_or_pred: ArrayLike, targets: ArrayLike) -> float:
    """Share of correct predictions; (N, K) logits or (N,) class indices against (N,)."""
    t = _numpy(targets).astype(np.int64)
    p = _labels(logits_or_pred, t)
    return float((p == t).mean()) if t.size else float("nan")


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    p, t = _numpy(pred).astype(np.int64).ravel(), _numpy(target).astype(np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions for {t.size} targets")
    for name, x in (("prediction", p), ("target", t)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} classes outside 0..{num_classes - 1}: {np.unique(x)}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def scene_scores(
    logits: ArrayLike, target: ArrayLike, num_classes: int | None = None
) -> dict[str, Any]:
    """Single-label scores: "accuracy" and "confusion" (K, K).

    K is the width of (N, K) logits; with (N,) predicted classes pass `num_classes`.
    """
    x, t = _numpy(logits), _numpy(target).astype(np.int64)
    p = _labels(x, t)
    k = x.shape[1] if x.ndim == 2 else num_classes
    if k is None:
        raise ValueError("num_classes is needed when predictions are class indices")
    return {"accuracy": accuracy(p, t), "confusion": confusion_matrix(p, t, k)}


def multilabel_scores(
    scores: ArrayLike, targets: ArrayLike, empty: EmptyClasses = "zero"
) -> dict[str, Any]:
    """The multi-label scores of an evaluation: those of `multilabel_map`."""
    return multilabel_map(scores, targets, empty)


def scores_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of a (K, K) truth x prediction matrix.

    A class absent from both target and prediction has NaN IoU and is left out of the
    mean; one only predicted has IoU 0 and counts (its false positives are real errors).
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp  # tp + fp + fn
    iou = np.full(len(tp), np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    total = confusion.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if (union > 0).any() else float("nan"),
        "per_class_iou": iou.tolist(),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "confusion": confusion.copy(),
    }


class SegmentationMeter:
    """Accumulates a pixel confusion matrix over batches; `compute` scores it.

    Pixels whose target is `ignore_index` are dropped before counting, whatever was
    predicted there.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: (N, H, W) classes or (N, K, H, W) logits against (N, H, W) targets."""
        t = _numpy(target).astype(np.int64)
        p = _labels(pred, t)
        keep = t != self.ignore_index
        self.confusion += confusion_matrix(p[keep], t[keep], self.num_classes)

    def compute(self) -> dict[str, Any]:
        """The scores of every pixel seen so far (see `scores_from_confusion`)."""
        return scores_from_confusion(self.confusion)


def segmentation_scores(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> dict[str, Any]:
    """Scores of one batch of masks: "mIoU", "per_class_iou", "pixel_accuracy", "confusion"."""
    meter = SegmentationMeter(num_classes, ignore_index)
    meter.update(pred, target)
    return meter.compute()


def bootstrap_interval(
    metric: Callable[[Any, torch.Tensor], float],
    outputs: Sequence[Any],
    n: int,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """The percentile interval of a score over test sets resampled with replacement.

    `metric(output, index)` scores one output (a seed's predictions for the n test
    samples) on the samples at `index`; each resample scores every output on the same
    samples and keeps their mean, so the interval is that of the mean over seeds.
    """
    generator = torch.Generator().manual_seed(seed)
    means = []
    for _ in range(resamples):
        index = torch.randint(0, n, (n,), generator=generator)
        means.append(float(np.nanmean([metric(out, index) for out in outputs])))
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(means, [tail, 100 - tail])
    return float(lo), float(hi)
