"""The streaming loader as training and evaluation use it."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shards import tar
from shards.loader import make_loader
from shards.manifest import ShardSetError, read_manifest, read_stats, sha256_of
from shards.modalities import LC, S2


def keys_seen(url: str, split: str, rank: int, world: int, workers: int) -> list[str]:
    loader = make_loader(url, split, batch_size=5, rank=rank, world_size=world, num_workers=workers)
    return [m["key"] for batch in loader for m in batch["meta"]]


@pytest.mark.parametrize("split", ["train", "val"])
def test_finite_mode_yields_every_sample_once_over_ranks_and_workers(
    shard_set: Any, split: str
) -> None:
    cfg, _ = shard_set
    manifest = read_manifest(cfg.out_url)
    # train has more shards than the 4 slots (split by shard), val fewer (split by sample)
    assert (len(manifest.split_shards(split)) >= 4) == (split == "train")
    seen = Counter(k for rank in (0, 1) for k in keys_seen(cfg.out_url, split, rank, 2, 2))
    assert sum(seen.values()) == manifest.samples(split)
    assert set(seen.values()) == {1}
    per_rank = [len(keys_seen(cfg.out_url, split, r, 2, 2)) for r in (0, 1)]
    assert all(n > 0 for n in per_rank)


def test_batches_are_normalised_with_the_stats(shard_set: Any) -> None:
    cfg, _ = shard_set
    stats = read_stats(cfg.out_url)
    name = read_manifest(cfg.out_url).split_shards("val")[0].name
    with tarfile.open(Path(cfg.out_url) / name) as tar:
        first = {}
        for member in tar:
            key, suffix = member.name.split(".", 1)
            if first and key != first["key"]:
                break
            first["key"] = key
            first[suffix] = tar.extractfile(member).read()  # type: ignore[union-attr]
    batch = next(iter(make_loader(cfg.out_url, "val", batch_size=1)))
    assert batch["meta"][0]["key"] == first["key"]
    raw = np.load(io.BytesIO(first["s2.npy"])).astype(np.float32)
    mean = np.array(stats["s2"]["mean"], np.float32)[:, None, None]
    std = np.array(stats["s2"]["std"], np.float32)[:, None, None]
    expected = np.where(raw == 0, 0, (raw - mean) / std)
    np.testing.assert_allclose(batch["s2"][0].numpy(), expected, rtol=1e-5, atol=1e-5)
    lc = np.load(io.BytesIO(first["lc.npy"]))[0]
    index = batch["lc"][0].numpy()
    assert index.dtype == np.int64
    for code in np.unique(lc):
        want = LC.classes.index(code) if code in LC.classes else LC.ignore_index
        assert (index[lc == code] == want).all()
    assert batch["s2"].shape == (1, S2.channels, cfg.chip_size, cfg.chip_size)
    assert batch["valid"].dtype.is_floating_point is False
    fractions = json.loads(first["json"])["lc_fractions"]
    np.testing.assert_allclose(
        batch["lc_fractions"][0].numpy(), [fractions[str(c)] for c in LC.classes], rtol=1e-6
    )


def test_a_modality_subset_is_all_a_batch_holds(shard_set: Any) -> None:
    cfg, _ = shard_set
    batch = next(iter(make_loader(cfg.out_url, "val", ["dem"], batch_size=4)))
    assert set(batch) == {"dem", "valid", "lc_fractions", "meta", "skipped"}


def rewrite_member(tar_path: Path, key: str, suffix: str, data: bytes) -> None:
    """Replace one member of a tar (as a corrupt write or a bad copy would leave it)."""
    tmp = tar_path.with_suffix(".new")
    with tarfile.open(tar_path) as src, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as dst:
        for member in src:
            payload = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == f"{key}.{suffix}":
                payload = data
                member.size = len(data)
            dst.addfile(member, io.BytesIO(payload))
    tmp.replace(tar_path)


@pytest.mark.parametrize("damage", ["garbage", "npy header"])
def test_a_corrupt_sample_is_skipped_and_counted(shard_copy: Path, damage: str) -> None:
    manifest = read_manifest(str(shard_copy))
    entry = manifest.split_shards("train")[0]
    with tarfile.open(shard_copy / entry.name) as tar:
        key = tar.getnames()[0].split(".")[0]
        member = tar.extractfile(f"{key}.s2.npy")
        assert member is not None
        original = member.read()
    payload = (b"\x93NUMPY garbage" if damage == "garbage"
               else original.replace(b"}", b"(", 1))  # numpy's tokenizer fails on it  # fmt: skip
    rewrite_member(shard_copy / entry.name, key, "s2.npy", payload)
    loader = make_loader(str(shard_copy), "train", batch_size=7)
    seen = [m["key"] for batch in loader for m in batch["meta"]]
    assert key not in seen
    assert len(seen) == manifest.samples("train") - 1
    assert loader.skipped == 1


def test_a_sample_skipped_after_the_last_batch_is_still_counted(shard_copy: Path) -> None:
    manifest = read_manifest(str(shard_copy))
    last = manifest.split_shards("val")[-1]
    with tarfile.open(shard_copy / last.name) as tar:
        key = tar.getnames()[-1].split(".")[0]
    rewrite_member(shard_copy / last.name, key, "s2.npy", b"\x93NUMPY garbage")
    n = manifest.samples("val")
    loader = make_loader(str(shard_copy), "val", batch_size=n - 1, num_workers=0)
    seen = [m["key"] for batch in loader for m in batch["meta"]]
    assert key not in seen and len(seen) == n - 1
    assert loader.skipped == 1, "the skip after the last full batch is not lost"


def test_a_truncated_shard_loses_only_its_tail(shard_copy: Path) -> None:
    manifest = read_manifest(str(shard_copy))
    entry = manifest.split_shards("train")[0]
    path = shard_copy / entry.name
    path.write_bytes(path.read_bytes()[: entry.bytes // 2])
    loader = make_loader(str(shard_copy), "train", batch_size=7)
    seen = sum(len(batch["meta"]) for batch in loader)
    assert manifest.samples("train") - entry.samples < seen < manifest.samples("train")
    assert loader.skipped >= 1
    assert sha256_of(str(path)) != entry.sha256


def test_the_loader_reads_by_the_index_and_falls_back_to_the_headers(
    shard_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = read_manifest(str(shard_copy))
    entry = manifest.split_shards("train")[0]
    path, index = shard_copy / entry.name, shard_copy / f"{entry.name}{tar.INDEX_SUFFIX}"
    second_sample = json.loads(index.read_bytes())["samples"][1][1][0][1]  # its first member
    data = bytearray(path.read_bytes())
    data[second_sample - 512 + 20] ^= 0x01  # in that member's header name: checksum fails
    path.write_bytes(bytes(data))
    expected = manifest.samples("train")
    loader = make_loader(str(shard_copy), "train", batch_size=7)
    assert sum(len(b["meta"]) for b in loader) == expected  # no header was read
    assert loader.skipped == 0

    index.write_bytes(index.read_bytes()[:-1])  # unusable now: the headers decide
    loader = make_loader(str(shard_copy), "train", batch_size=7)
    # By headers the shard breaks at its second sample; the first is dropped with it, as
    # the reader cannot know a sample is whole before the next one starts.
    assert sum(len(b["meta"]) for b in loader) == expected - entry.samples
    assert loader.skipped == 1
    assert "reading the shard by its headers" in caplog.text


def test_resampled_mode_keeps_ranks_in_step_under_ray_train(
    shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg, _ = shard_set
    shards = tmp_path / "shards"
    shutil.copytree(cfg.out_url, shards)
    # Uneven shards (the last of a split is smaller): ranks must still stay in step.
    manifest = read_manifest(str(shards))
    assert len({e.samples for e in manifest.split_shards("train")}) > 1

    def loop(config: dict[str, Any]) -> None:
        import json as json_
        from pathlib import Path as Path_

        import ray.train
        import torch.distributed as dist

        from shards.loader import make_loader as make

        rank = ray.train.get_context().get_world_rank()
        loader = make(config["url"], "train", batch_size=8, mode="resampled",
                      epoch_samples=100, num_workers=1)  # fmt: skip
        steps, keys = [], []
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches = list(loader)
            steps.append(len(batches))
            keys.append(sorted(m["key"] for b in batches for m in b["meta"]))
        report = {"steps": steps, "len": len(loader), "world": dist.get_world_size(), "keys": keys}
        Path_(config["out"], f"rank{rank}.json").write_text(json_.dumps(report))

    trainer = TorchTrainer(
        loop,
        train_loop_config={"url": str(shards), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name=f"loader-{uuid.uuid4().hex[:8]}", storage_path=str(tmp_path)),
    )
    trainer.fit()
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in reports:
        assert r["world"] == 2
        assert r["steps"] == [100 // (2 * 8)] * 2 == [r["len"]] * 2
    assert reports[0]["keys"][0] != reports[1]["keys"][0]  # ranks draw differently
    assert reports[0]["keys"][0] != reports[0]["keys"][1]  # and differently each epoch


def resampled_batches(url: str, split: str, rank: int, world: int, workers: int,
                      epoch: int) -> list[list[str]]:  # fmt: skip
    """The keys of each batch one rank trains on in one epoch (resampled, 8 per batch)."""
    loader = make_loader(url, split, batch_size=8, mode="resampled", epoch_samples=320,
                         rank=rank, world_size=world, num_workers=workers)  # fmt: skip
    loader.set_epoch(epoch)
    batches = [[m["key"] for m in b["meta"]] for b in loader]
    assert len(batches) == len(loader)
    return batches


@pytest.mark.parametrize(("split", "world", "workers"), [("train", 2, 1), ("train", 3, 1),
                                                         ("test", 2, 2)])  # fmt: skip
def test_resampled_steps_never_repeat_a_sample_across_ranks_or_within_a_batch(
    shard_set: Any, split: str, world: int, workers: int
) -> None:
    """Each epoch's shards are dealt out to the slots (test: fewer shards than slots, so by
    sample); a share cycled around more than once still never repeats within a batch."""
    cfg, _ = shard_set
    manifest = read_manifest(cfg.out_url)
    assert 320 > manifest.samples(split)  # every share is cycled through more than once
    for epoch in (0, 1):
        ranks = [resampled_batches(cfg.out_url, split, r, world, workers, epoch)
                 for r in range(world)]  # fmt: skip
        for step in zip(*ranks, strict=True):  # one optimiser step: every rank's batch
            keys = [k for batch in step for k in batch]
            assert len(keys) == len(set(keys)) == 8 * world
        shares = [{k for batch in rank for k in batch} for rank in ranks]
        assert sum(len(s) for s in shares) == len(set().union(*shares))  # disjoint shares
    again = resampled_batches(cfg.out_url, split, 0, world, workers, 1)
    assert again == ranks[0]  # deterministic: a restarted epoch trains on the same batches
    assert resampled_batches(cfg.out_url, split, 0, world, workers, 0) != again


def test_a_share_smaller_than_a_batch_is_refused(shard_set: Any) -> None:
    cfg, _ = shard_set
    assert read_manifest(cfg.out_url).samples("val") < 4 * 8  # 4 slots: under 8 samples each
    with pytest.raises(ShardSetError, match=r"slot 0 of 4 .* fewer than a batch of 8"):
        resampled_batches(cfg.out_url, "val", 0, 4, 0, 0)


def test_bad_requests_are_named(shard_set: Any, tmp_path: Path) -> None:
    cfg, _ = shard_set
    with pytest.raises(KeyError, match="optical"):
        make_loader(cfg.out_url, "train", ["s2", "optical"])
    with pytest.raises(ShardSetError, match="holdout"):
        make_loader(cfg.out_url, "holdout")
    with pytest.raises(ShardSetError, match="eomae shard"):
        make_loader(str(tmp_path), "train")
