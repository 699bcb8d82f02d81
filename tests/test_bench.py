"""`eomae bench`: the commands measure what they say and write their JSON and PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from eomae.cli import main
from shards.bench import from_memory, read_raw
from shards.loader import make_loader
from training.bench import TrainBenchConfig, peak_tflops, step_flops
from training.config import ModelConfig
from training.multimae import MultiMAE


def test_bench_loader_writes_ratios_with_their_spread(shard_set: Any, tmp_path: Path) -> None:
    shards = shard_set[0].out_url
    args = ["bench", "loader", shards, "--workers", "[0,1]", "--samples", "64",
            "--repeats", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "loader.json").read_text())
    assert (tmp_path / "loader.png").stat().st_size > 0
    assert len(record["repeats"]) == 4  # 2 repeats x 2 worker counts
    assert all(r["samples"] == 64 for r in record["repeats"])
    figures = record["figures"]
    assert set(figures) == {"loader/memory 0w", "loader/memory 1w", "shard/array bytes"}
    for f in figures.values():
        assert 0 < f["min"] <= f["median"] <= f["max"]
    # tar and .npy headers cost a few percent at 64 px chips, never less than the arrays
    assert 1.0 < figures["shard/array bytes"]["median"] < 1.1


@pytest.mark.slow
def test_bench_train_compares_ray_with_plain_ddp(
    shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    args = ["bench", "train", "--run-dir", str(tmp_path), "--shards", shard_set[0].out_url,
            "--workers", "2", "--batch-size", "4", "--steps", "3", "--warmup", "1",
            "--repeats", "1", "--loader-workers", "0"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "bench" / "train.json").read_text())
    (row,) = record["repeats"]
    rates = {"ray_real", "ray_synthetic", "ray_model_only", "plain_real", "plain_synthetic"}
    assert set(row) == rates | {"flops_per_sample", "peak_tflops", "tflops_per_worker"}
    assert all(row[k] > 0 for k in rates | {"flops_per_sample", "tflops_per_worker"})
    assert row["tflops_per_worker"] == pytest.approx(
        row["ray_real"] * row["flops_per_sample"] / 2 / 1e12
    )
    assert "mfu" not in record["figures"]  # a CPU has no known peak
    ratio = record["figures"]["ray_vs_plain"]["median"]
    assert ratio == pytest.approx(row["ray_real"] / row["plain_real"])
    outside = record["figures"]["outside_model"]["median"]  # crops etc. outside the model
    assert outside == pytest.approx(1 - row["ray_synthetic"] / row["ray_model_only"])
    assert (tmp_path / "bench" / "train.png").exists()


def test_memory_baseline_yields_the_loaders_batches_with_the_same_workers(shard_set: Any) -> None:
    shards = shard_set[0].out_url
    loader = make_loader(shards, "train", batch_size=4, mode="resampled", epoch_samples=24,
                         shuffle_buffer=0, num_workers=2, rank=0, world_size=1)  # fmt: skip
    streamed = list(loader)
    memory = list(from_memory(loader.stream, read_raw(shards, "train"), workers=2))
    assert len(memory) == len(streamed) == len(loader) == 6
    for ours, theirs in zip(memory, streamed, strict=True):
        assert ours.keys() == theirs.keys()
        for k, v in ours.items():
            if isinstance(v, torch.Tensor):
                assert v.shape == theirs[k].shape and v.dtype == theirs[k].dtype, k
    # both workers took part: each cycles over its own share of the raw samples
    keys = {m["key"] for b in memory for m in b["meta"]}
    assert len(keys) == 24


def test_step_flops_count_one_training_step_per_sample_and_change_nothing(
    shard_set: Any,
) -> None:
    cfg = TrainBenchConfig(shards=shard_set[0].out_url,
                           model=ModelConfig(size="tiny", modalities="bandgroups"))  # fmt: skip
    model = MultiMAE(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sources = sorted({m.source for m in cfg.model.all_modalities})
    batch = next(iter(make_loader(cfg.shards or "", "train", sources, batch_size=4)))
    half = {k: v[:2] if isinstance(v, torch.Tensor | list) else v for k, v in batch.items()}
    cpu = torch.device("cpu")
    per_sample = step_flops(model, batch, cfg, cpu)
    assert per_sample == pytest.approx(step_flops(model, half, cfg, cpu), rel=0.02)
    # At least forward + backward (3 x 2 FLOPs per weight) of every encoder block's
    # weights for each visible token and the global token.
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    assert per_sample > 6 * encoder * (model.num_visible + 1)
    assert per_sample < 20 * 6 * encoder * (model.num_visible + 1)  # decoders included
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert peak_tflops(cfg, cpu) == 0.0  # no MFU on a CPU unless told the peak
    assert peak_tflops(cfg.model_copy(update={"peak_tflops": 2.5}), cpu) == 2.5
