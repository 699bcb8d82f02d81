"""Evaluation metrics against small inputs whose scores are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from evaluation.metrics import (
    HEADLINE,
    SegmentationMeter,
    accuracy,
    confusion_matrix,
    multilabel_map,
    multilabel_scores,
    scene_scores,
    segmentation_scores,
)

# Four samples, three classes; class 2 has no positive.
SCORES = np.array(
    [
        [0.9, 0.2, 0.95],
        [0.8, 0.7, 0.05],
        [0.3, 0.6, 0.65],
        [0.1, 0.4, 0.35],
    ]
)
TARGETS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_multilabel_map_by_hand() -> None:
    # Class 0 ranks P N P N: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. Class 1 ranks its one positive
    # first: AP = 1. Class 2 has no positive: 0 in the macro mean, or out of it ("skip").
    # Pooled (micro), descending: .95N .9P .8N .7P .65N .6N .4N .35N .3P ... -> positives at
    # ranks 2, 4, 9: AP = (1/2 + 2/4 + 3/9) / 3 = 4/9.
    m = multilabel_map(SCORES, TARGETS)
    assert m["mAP_micro"] == pytest.approx(4 / 9)
    assert m["mAP_macro"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert m["classes_scored"] == 2 and m["empty_classes"] == "zero"
    assert m["per_class_ap"] == pytest.approx([5 / 6, 1.0, 0.0])
    skip = multilabel_map(SCORES, TARGETS, empty="skip")
    assert skip["mAP_macro"] == pytest.approx((5 / 6 + 1) / 2)
    assert skip["mAP_micro"] == m["mAP_micro"]  # micro pools pairs: no class is left out
    assert skip["per_class_ap"][:2] == pytest.approx([5 / 6, 1.0])
    assert math.isnan(skip["per_class_ap"][2])
    from_torch = multilabel_scores(torch.tensor(SCORES), torch.tensor(TARGETS), "skip")
    assert from_torch["mAP_micro"] == pytest.approx(4 / 9)
    assert from_torch["per_class_ap"] == pytest.approx(skip["per_class_ap"], nan_ok=True)
    with pytest.raises(ValueError, match="empty='drop'"):
        multilabel_map(SCORES, TARGETS, empty="drop")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:No positive class found")
def test_zero_convention_is_scikit_learns_macro_average_precision() -> None:
    # torchmetrics' MultilabelAveragePrecision(average="macro") scores a class without
    # positives 0 as well (checked with torchmetrics 1.9 by hand; it is not a dependency).
    rng = np.random.default_rng(0)
    scores, targets = rng.random((60, 5)), (rng.random((60, 5)) < 0.3).astype(int)
    targets[:, [1, 4]] = 0
    m = multilabel_map(scores, targets)
    for average in ("macro", "micro"):
        reference = average_precision_score(targets, scores, average=average)
        assert m[f"mAP_{average}"] == pytest.approx(reference)
    assert m["classes_scored"] == 3


def test_multilabel_map_without_positives_is_nan() -> None:
    m = multilabel_map(SCORES, np.zeros_like(TARGETS))
    assert math.isnan(m["mAP_micro"]) and math.isnan(m["mAP_macro"])
    assert m["classes_scored"] == 0


def test_accuracy_from_logits_and_labels() -> None:
    logits = np.array([[2.0, 1, 0], [0, 3, 1], [1, 0, 0.5], [0, 0, 5]])  # argmax 0, 1, 0, 2
    target = np.array([0, 1, 2, 2])
    assert accuracy(logits, target) == 0.75
    assert accuracy(np.array([0, 1, 0, 2]), target) == 0.75
    assert accuracy(torch.tensor(logits), torch.tensor(target)) == 0.75


def test_confusion_rows_are_truth() -> None:
    cm = confusion_matrix(np.array([1, 1, 2]), np.array([0, 1, 1]), 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 0]]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_scene_scores() -> None:
    logits = np.array([[2.0, 1, 0], [0, 3, 1], [1, 0, 0.5], [0, 0, 5]])
    s = scene_scores(logits, np.array([0, 1, 2, 2]))
    assert s["accuracy"] == 0.75
    assert s["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert set(HEADLINE) == {"scene", "multilabel", "segmentation"}
    assert HEADLINE["scene"] in s


def test_segmentation_by_hand() -> None:
    ign = -100
    target = np.array([[[0, 0, 1, 1], [0, 1, ign, ign]]])  # (1, 2, 4)
    pred = np.array([[[0, 2, 1, 1], [0, 0, 3, 3]]])  # class 3 only where ignored
    s = segmentation_scores(pred, target, num_classes=4, ignore_index=ign)
    # Six valid pixels (truth, pred): (0,0) (0,2) (1,1) (1,1) (0,0) (1,0).
    assert s["confusion"].tolist() == [[2, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    iou = s["per_class_iou"]
    assert iou[0] == pytest.approx(2 / 4)  # tp 2, fp 1, fn 1
    assert iou[1] == pytest.approx(2 / 3)  # tp 2, fp 0, fn 1
    assert iou[2] == 0.0  # predicted only: counts as 0
    assert math.isnan(iou[3])  # absent (its predictions were on ignored pixels)
    assert s["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)


def test_segmentation_takes_logits() -> None:
    target = np.array([[[0, 1], [1, 1]]])
    logits = np.stack([target == 0, target == 1], axis=1).astype(np.float32)  # (1, 2, 2, 2)
    s = segmentation_scores(torch.from_numpy(logits), target, num_classes=2)
    assert s["mIoU"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_meter_accumulates_like_one_shot() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (6, 8, 8))
    target[rng.random(target.shape) < 0.1] = -100
    pred = rng.integers(0, 5, (6, 8, 8))
    meter = SegmentationMeter(5)
    meter.update(pred[:2], target[:2])
    meter.update(pred[2:], target[2:])
    together, once = meter.compute(), segmentation_scores(pred, target, 5)
    assert (together["confusion"] == once["confusion"]).all()
    assert together["mIoU"] == pytest.approx(once["mIoU"])
    assert together["confusion"].sum() == (target != -100).sum()


def test_bootstrap_interval_of_an_accuracy_is_the_binomial_one() -> None:
    """160 of 200 right: the 95 % interval is about 0.8 ± 1.96 * sqrt(0.8 * 0.2 / 200)."""
    from evaluation.metrics import bootstrap_interval

    right = torch.tensor([1.0] * 160 + [0.0] * 40)
    lo, hi = bootstrap_interval(lambda out, idx: float(out[idx].mean()), [right], 200, 2000, 0)
    half = 1.96 * (0.8 * 0.2 / 200) ** 0.5
    assert abs(lo - (0.8 - half)) < 0.01 and abs(hi - (0.8 + half)) < 0.01
    # two seeds: the interval of their mean
    other = torch.tensor([1.0] * 120 + [0.0] * 80)
    lo2, hi2 = bootstrap_interval(lambda out, idx: float(out[idx].mean()), [right, other],
                                  200, 2000, 0)  # fmt: skip
    assert lo2 < 0.7 < hi2 and hi2 - lo2 < hi - lo + 0.05
