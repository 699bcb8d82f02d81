"""`eomae evaluate`: protocols, input subsets, baselines, benchmarks and bad input."""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures import bigearthnet as bigearthnet_fixture
from fixtures import eurosat as eurosat_fixture
from fixtures import geobench as geobench_fixture
from fixtures.published import vit_state
from pydantic import ValidationError

from eomae.cli import main
from evaluation.data import EvalSplit, load_shard_split
from evaluation.leaderboard import COLUMNS
from evaluation.protocols import PatchHead, ProbeConfig, knn
from evaluation.run import EvalConfig, EvaluationError, run_evaluation
from training.config import ModelConfig
from training.multimae import MultiMAE


def headline(rows: list[dict[str, Any]], **match: Any) -> float:
    (row,) = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return float(row["metrics"][row["headline"]])


def test_patch_head_lays_pixels_out_on_the_image_grid() -> None:
    head = PatchHead(dim=4, classes=2, patch=2)
    with torch.no_grad():
        head.norm.weight.fill_(1)
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(8.0))  # class k, pixel (i, j) -> 4k + 2i + j
    out = head(torch.randn(1, 9, 4))  # a 3 x 3 grid of patches
    assert out.shape == (1, 2, 6, 6)
    assert out[0, 1, 4:6, 2:4].tolist() == [[4.0, 5.0], [6.0, 7.0]]  # patch (2, 1), class 1


def test_knn_votes_with_the_nearest_neighbours() -> None:
    encoder = MultiMAE(ModelConfig(size="tiny", modalities="s2")).eval()
    encoder.output_adapters = torch.nn.ModuleDict()
    x = torch.randn(6, 12, 16, 16)
    train = EvalSplit({"s2": x}, torch.tensor([0, 1, 2, 0, 1, 2]))
    modalities = encoder.cfg.input_modalities[:1]
    scores = knn(encoder, modalities, train, train.subset(torch.arange(3)), "scene", 3,
                 ProbeConfig(knn_k=1))  # fmt: skip
    assert scores.argmax(dim=1).tolist() == [0, 1, 2]  # each sample is its own nearest


def test_config_rejects_land_cover_as_input_and_bad_fractions() -> None:
    with pytest.raises(ValidationError, match="land cover is the target"):
        EvalConfig(inputs=["s2+lc"])
    with pytest.raises(ValidationError, match="label_fractions"):
        EvalConfig(label_fractions=[0.0])
    with pytest.raises(ValidationError, match="needs --data"):
        EvalConfig(benchmark="eurosat")


def test_missing_encoder_and_missing_benchmark_are_named(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="no pretraining run"):
        run_evaluation(EvalConfig(run_dir=str(tmp_path)))
    assert main(["evaluate", "--run-dir", str(tmp_path), "--encoder", str(tmp_path / "x.pt")]) == 2


def test_benchmark_without_the_encoders_bands_is_refused(pretrained: Path, tmp_path: Path) -> None:
    """m-pv4ger is aerial RGB: an encoder's SWIR or red-edge inputs cannot be fed."""
    data = geobench_fixture.make(tmp_path, "m-pv4ger")
    cfg = EvalConfig(run_dir=str(tmp_path), encoder=str(pretrained), benchmark="geobench",
                     data=data, inputs=["s2"])  # fmt: skip
    summary = run_evaluation(cfg.model_copy(update={"protocols": ["knn"]}))
    assert {r["inputs"] for r in summary["rows"]} == {"s2"}  # rgb group only: it runs
    with pytest.raises(EvaluationError, match=r"has no \[.dem.\]"):
        run_evaluation(cfg.model_copy(update={"inputs": ["s2+dem"]}))
    with pytest.raises(Exception, match="does not exist|not a directory"):
        run_evaluation(cfg.model_copy(update={"data": tmp_path / "nowhere"}))


def test_eurosat_benchmark_end_to_end(pretrained: Path, tmp_path: Path) -> None:
    data = eurosat_fixture.make(tmp_path / "eurosat", per_class=6)
    args = ["evaluate", "--run-dir", str(tmp_path), "--encoder", str(pretrained),
            "--benchmark", "eurosat", "--data", str(data), "--inputs", '["s2"]',
            "--protocols", '["linear", "knn"]', "--name", "eurosat",
            "--probe.linear-epochs", "20", "--seeds", "2", "--bootstrap", "200"]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "evaluation" / "eurosat"
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert sorted((r["protocol"], r["init"], r["seed"]) for r in rows) == sorted(
        (p, i, s) for p in ("linear", "knn") for i in ("pretrained", "random") for s in (0, 1)
    )
    assert all(r["headline"] == "accuracy" and 0 <= r["metrics"]["accuracy"] <= 1 for r in rows)
    for r in rows:  # the interval holds the mean over the two seeds of its cell
        mean = np.mean([x["metrics"]["accuracy"] for x in rows
                        if (x["protocol"], x["init"]) == (r["protocol"], r["init"])])  # fmt: skip
        lo, hi = r["interval_95"]
        assert lo <= mean <= hi
    report = (out / "report.md").read_text()
    assert "eurosat" in report and " ± " in report and "95 % intervals" in report
    assert "Split: the official split lists" in report
    # the same rows in torchgeo-bench's results layout
    with open(out / "torchgeo_bench.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(COLUMNS) and len(table) == len(rows)
    linear = next(t for t in table if t["method"] == "linear" and t["seed"] == "0")
    assert linear["metric_name"] == "accuracy" and linear["partition"] == "default"
    assert 0 <= float(linear["ci_lower"]) <= float(linear["ci_upper"]) <= 1
    assert {t["method"] for t in table} == {"linear", "knn20"}


@pytest.mark.slow
def test_sample_world_every_task_protocol_subset_and_baseline(
    pretrained: Path, shard_set: Any, tmp_path: Path
) -> None:
    cfg = EvalConfig(
        run_dir=str(tmp_path), encoder=str(pretrained), shards=shard_set[0].out_url,
        inputs=["s2+dem", "dem"], name="world",
        probe=ProbeConfig(linear_epochs=20, finetune_epochs=1),
    )  # fmt: skip
    summary = run_evaluation(cfg)
    rows = summary["rows"]
    # (2 classification tasks x 3 protocols + segmentation x 2) x 2 subsets x 2 inits
    # (label fractions: test_eurosat::test_a_label_fraction_is_chosen_before_any_imagery_is_read
    # and the BigEarthNet-10 % preset)
    assert len(rows) == (2 * 3 + 2) * 2 * 2
    seg = [r for r in rows if r["task"] == "segmentation"]
    assert {r["protocol"] for r in seg} == {"frozen-seg", "finetune-seg"}
    assert {r["init"] for r in rows if r["protocol"] in ("finetune", "finetune-seg")} == {
        "pretrained",
        "supervised",
    }
    for r in rows:
        value = r["metrics"][r["headline"]]
        assert 0 <= value <= 1, r
    # Better than always answering the commonest class: land cover is learnable from S2 + DEM.
    test_labels = load_shard_split(shard_set[0].out_url, "test", "scene", patch=8).labels
    majority = torch.bincount(test_labels).max().item() / len(test_labels)
    for init in ("pretrained", "random"):
        scene = headline(rows, task="scene", protocol="linear", inputs="s2+dem", init=init,
                         label_fraction=1.0)  # fmt: skip
        assert scene > majority, (init, scene, majority)
    report = Path(summary["report"])
    text = report.read_text()
    assert "shards · segmentation" in text and "supervised" in text
    # our small spatial test split may lack a land-cover class: out of macro mAP, said so
    assert "Macro mAP (--empty-classes skip): classes with no positive" in text
    assert (report.parent / "results.json").exists()
    assert len(list((report.parent / "plots").glob("*.png"))) >= 7
    print(text)  # the numbers, for the record (pytest -s)


def test_ray_tasks_give_the_same_numbers_as_the_local_loop(
    pretrained: Path, shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    cfg = EvalConfig(
        run_dir=str(tmp_path), encoder=str(pretrained), shards=shard_set[0].out_url,
        tasks=["scene"], protocols=["linear", "knn"], inputs=["s2", "dem"],
        probe=ProbeConfig(linear_epochs=10),
    )  # fmt: skip
    local = run_evaluation(cfg.model_copy(update={"name": "local"}))["rows"]
    remote = run_evaluation(cfg.model_copy(update={"name": "ray", "use_ray": True}))["rows"]
    key = ("protocol", "inputs", "init")
    assert len(remote) == len(local) == 2 * 2 * 2
    by_key = {tuple(r[k] for k in key): r["metrics"]["accuracy"] for r in local}
    assert {tuple(r[k] for k in key): r["metrics"]["accuracy"] for r in remote} == by_key


def _damage_first_sample(tar_path: Path) -> str:
    """Break the .npy header of the shard's first s2 member in place (size unchanged)."""
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar if m.name.endswith(".s2.npy"))
    data = bytearray(tar_path.read_bytes())
    header = data.index(b"}", member.offset_data)
    data[header : header + 1] = b"("
    tar_path.write_bytes(bytes(data))
    return member.name.split(".")[0]


def test_damaged_shards_are_reported_and_a_damaged_test_split_refused(
    pretrained: Path, shard_set: Any, tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(shard_set[0].out_url, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    first = {s["split"]: s["name"] for s in reversed(manifest["shards"])}
    cfg = EvalConfig(
        run_dir=str(tmp_path), encoder=str(pretrained), shards=str(shards), tasks=["scene"],
        protocols=["knn"], inputs=["s2+dem"], inits=["pretrained"], label_fractions=[1.0],
        name="damaged",
    )  # fmt: skip
    _damage_first_sample(shards / first["train"])
    summary = run_evaluation(cfg)
    (row,) = summary["rows"]
    assert row["samples"]["train_skipped"] == 1 and row["samples"]["test_skipped"] == 0
    results = json.loads((Path(summary["report"]).parent / "results.json").read_text())
    assert results["rows"][0]["samples"]["train_skipped"] == 1
    assert "damaged samples skipped" in Path(summary["report"]).read_text()

    _damage_first_sample(shards / first["test"])
    with pytest.raises(EvaluationError, match="test split of shards lost 1 damaged samples"):
        run_evaluation(cfg.model_copy(update={"name": "damaged-test"}))


PRESET_DATA = {  # preset -> published ViT-S/14 and ViT-B/14 numbers, fixture maker
    "softcon-eurosat": ("97.1", "98.0", lambda root: eurosat_fixture.make(root, per_class=6)),
    "softcon-bigearthnet-10": ("85.0", "86.8", bigearthnet_fixture.make),
}


@pytest.mark.parametrize("preset", list(PRESET_DATA))
def test_a_published_protocol_runs_on_a_published_encoder_and_names_its_numbers(
    tmp_path: Path, preset: str
) -> None:
    """Each SoftCon preset with SoftCon's ViT-S/14 layout (random weights), end to end."""
    small, base, make = PRESET_DATA[preset]
    torch.save(vit_state(384, 14, 16, layer_scale=True), tmp_path / "B13_vits14_softcon.pth")
    data = make(tmp_path / "data")
    encoder = f"softcon-vits14:{tmp_path / 'B13_vits14_softcon.pth'}"
    args = ["evaluate", "--run-dir", str(tmp_path), "--encoder", encoder, "--preset",
            preset, "--data", str(data), "--name", "softcon",
            "--probe.linear-epochs", "5"]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "evaluation" / "softcon"
    rows = json.loads((out / "results.json").read_text())["rows"]
    fraction = 0.1 if preset == "softcon-bigearthnet-10" else 1.0
    assert {(r["protocol"], r["init"], r["label_fraction"]) for r in rows} == {
        ("linear", "pretrained", fraction)
    }
    assert rows[0]["pool"] == "mean"  # SoftCon's own: mean of the patch tokens
    report = (out / "report.md").read_text()
    assert f"| preset | {preset} |" in report
    assert f"softcon-vits14 {small}, softcon-vitb14 {base}" in report
    assert f"for this encoder (softcon-vits14): {small}" in report
    if preset == "softcon-bigearthnet-10":  # BigEarthNet's reference code: absent class = 0
        metrics = rows[0]["metrics"]
        assert metrics["empty_classes"] == "zero"
        assert "Macro mAP (--empty-classes zero): classes with no positive" in report
        ap = np.array(metrics["per_class_ap"], dtype=float)
        assert metrics["mAP_macro"] == pytest.approx(ap.mean())
