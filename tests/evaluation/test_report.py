"""The evaluation report: tables with the right numbers and bold, JSON with nulls, figures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from evaluation.report import write_report

SCENE_CLASSES = ["Forest", "River", "Residential"]
SEG_CLASSES = ["tree", "grass", "water", "built-up"]
SEG_COLOURS = ["#006400", "#ffff4c", "#0064c8", "#fa0000"]
# (task, protocol, init) -> headline; in finetune-seg random beats pretrained.
HEADLINES = {
    ("eurosat", "linear", "pretrained"): 0.8534,
    ("eurosat", "linear", "random"): 0.6012,
    ("eurosat", "finetune", "pretrained"): 0.9751,
    ("eurosat", "finetune", "random"): 0.9349,
    ("segmentation", "frozen-seg", "pretrained"): 0.4567,
    ("segmentation", "frozen-seg", "random"): 0.2222,
    ("segmentation", "finetune-seg", "pretrained"): 0.5049,
    ("segmentation", "finetune-seg", "random"): 0.5121,
}


RANDOM_SPLIT = "a seeded random split stratified by class (0.6/0.2/0.2, seed 0)"


def _row(task: str, protocol: str, init: str, value: float) -> dict[str, Any]:
    if task == "eurosat":
        metrics = {"accuracy": value, "confusion": np.array([[8, 1, 1], [0, 9, 1], [2, 0, 8]])}
        return {"task": task, "kind": "scene", "dataset": "eurosat", "protocol": protocol,
                "inputs": "s2", "init": init, "label_fraction": 1.0, "headline": "accuracy",
                "metrics": metrics, "classes": SCENE_CLASSES, "seconds": 12.5,
                "split": RANDOM_SPLIT}  # fmt: skip
    rng = np.random.default_rng(len(protocol) + len(init))
    target = rng.integers(0, 3, (3, 16, 16))  # class 3 never present
    target[:, :2] = -100
    pred = np.where(rng.random(target.shape) < 0.8, target, rng.integers(0, 3, target.shape))
    metrics = {
        "mIoU": value,
        "per_class_iou": [value + 0.1, value - 0.1, value, float("nan")],
        "pixel_accuracy": value + 0.2,
        "confusion": np.array([[50, 5, 0, 0], [4, 40, 6, 0], [0, 3, 30, 0], [0, 0, 0, 0]]),
    }
    examples = {"image": rng.random((3, 3, 16, 16)), "target": target, "pred": pred.clip(0)}
    return {"task": task, "kind": "segmentation", "dataset": "shards", "protocol": protocol,
            "inputs": "s2+dem", "init": init, "label_fraction": 1.0, "headline": "mIoU",
            "metrics": metrics, "classes": SEG_CLASSES, "seconds": 30.0,
            "examples": examples}  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [_row(task, protocol, init, v) for (task, protocol, init), v in HEADLINES.items()]
    context = {
        "model": "vit-s",
        "checkpoint": Path("runs/pre/encoder.pt"),
        "seed": 0,
        "class_colors": {"segmentation": SEG_COLOURS},
    }
    return write_report(rows, tmp_path_factory.mktemp("eval"), "eval test", context)


def _table_rows(text: str, heading: str) -> dict[str, dict[str, str]]:
    """Cells after (protocol, inputs, labels) of each row of the table under a heading."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    cells: dict[str, dict[str, str]] = {}
    for line in rows[1:]:
        c = [c.strip() for c in line.strip("|").split("|")]
        cells[c[0]] = dict(zip(header[3:], c[3:], strict=True))
    return cells


def test_tables_hold_headlines_with_best_bold(report: Path) -> None:
    text = report.read_text()
    assert "| model | vit-s |" in text and "| seed | 0 |" in text
    assert "encoder.pt" in text
    scene = _table_rows(text, "eurosat")
    assert scene == {
        "linear": {"pretrained": "**85.3**", "random": "60.1"},
        "finetune": {"pretrained": "**97.5**", "random": "93.5"},
    }
    seg = _table_rows(text, "shards · segmentation")
    assert seg == {
        "frozen-seg": {"pretrained": "**45.7**", "random": "22.2"},
        "finetune-seg": {"pretrained": "50.5", "random": "**51.2**"},
    }
    assert "| frozen-seg | s2+dem | 100% |" in text
    eurosat = text.split("## eurosat\n", 1)[1].split("\n## ", 1)[0]
    assert f"Split: {RANDOM_SPLIT}." in eurosat


def test_results_json_has_null_for_nan(report: Path) -> None:
    text = (report.parent / "results.json").read_text()

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in results.json")

    results = json.loads(text, parse_constant=no_constants)
    assert results["context"]["model"] == "vit-s"
    assert len(results["rows"]) == len(HEADLINES)
    seg = [r for r in results["rows"] if r["kind"] == "segmentation"][0]
    assert seg["metrics"]["per_class_iou"][3] is None
    assert seg["metrics"]["confusion"][0] == [50, 5, 0, 0]
    assert "examples" not in seg


def test_every_linked_png_exists(report: Path) -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    names = {Path(link).name for link in links}
    assert names == {
        "eurosat_eurosat_headline.png",
        "eurosat_eurosat_confusion.png",
        "shards_segmentation_headline.png",
        "shards_segmentation_iou.png",
        "shards_segmentation_confusion.png",
        "shards_segmentation_examples.png",
    }
    for link in links:
        png = report.parent / link
        assert png.is_file() and png.stat().st_size > 0
        assert imread(png).ndim == 3


def test_examples_use_given_class_colours(report: Path) -> None:
    rgb = (imread(report.parent / "plots/shards_segmentation_examples.png")[..., :3] * 255).round()
    for hex_colour in SEG_COLOURS[:3]:  # classes in the examples
        wanted = (np.array(to_rgb(hex_colour)) * 255).round()
        assert (rgb == wanted).all(axis=-1).any(), hex_colour
