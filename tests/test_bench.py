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
    assert set(row) == {"ray_real", "ray_synthetic", "plain_real", "plain_synthetic"}
    assert all(v > 0 for v in row.values())
    ratio = record["figures"]["ray_vs_plain"]["median"]
    assert ratio == pytest.approx(row["ray_real"] / row["plain_real"])
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
