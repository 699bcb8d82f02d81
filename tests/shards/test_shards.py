"""`eomae shard` as a user relies on it: chips equal the cube, splits do not leak, stats
are right, re-runs keep or resume the set, bad input is named."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from pyproj import Transformer
from shapely import STRtree, transform
from shapely.geometry import box

from ingest.cube import open_cube, write_unit
from ingest.grid import Grid
from shards.config import SPLITS, ShardConfig
from shards.manifest import ShardSetError, read_manifest
from shards.modalities import LC, MODALITIES
from shards.run import run_shard
from shards.stats import compute_stats
from shards.verify import verify


def read_samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """Members of every sample of a tar, by key (independent of the loader)."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, suffix = member.name.split(".", 1)
            data = tar.extractfile(member)
            assert data is not None
            samples[key][suffix] = data.read()
    return dict(samples)


def all_metas(shards_dir: Path) -> list[dict[str, Any]]:
    metas = []
    for entry in read_manifest(str(shards_dir)).shards:
        for members in read_samples(shards_dir / entry.name).values():
            metas.append(json.loads(members["json"]))
    return metas


def test_every_split_has_samples_and_the_manifest_counts_them(shard_set: Any) -> None:
    cfg, summary = shard_set
    manifest = read_manifest(cfg.out_url)
    assert {s.split for s in manifest.shards} == set(SPLITS)
    for entry in manifest.shards:
        samples = read_samples(Path(cfg.out_url) / entry.name)
        assert len(samples) == entry.samples
        assert all(
            set(m) == {"s2.npy", "dem.npy", "lc.npy", "valid.npy", "json"} for m in samples.values()
        )
    assert summary["dropped"]["invalid"] > 0  # the world has clouds: the filter did work
    assert (
        sum(e.samples for e in manifest.shards)
        + sum(v for k, v in summary["dropped"].items() if k != "candidates")
        == summary["dropped"]["candidates"]
    )


def test_a_chip_from_a_shard_equals_its_cube_window(shard_set: Any) -> None:
    cfg, _ = shard_set
    cube = open_cube(cfg.cube_url)
    checked = 0
    for entry in read_manifest(cfg.out_url).shards:
        for key, members in list(read_samples(Path(cfg.out_url) / entry.name).items())[:5]:
            meta = json.loads(members["json"])
            unit = cube[meta["unit_id"]]
            assert isinstance(unit, zarr.Group)
            _, _, left, _, _, top = unit.attrs["transform"]  # type: ignore[misc]
            _, _, x0, _, _, y0 = meta["transform"]
            col, row = round((x0 - left) / 10), round((top - y0) / 10)
            window = np.s_[row : row + cfg.chip_size, col : col + cfg.chip_size]
            for name in (*MODALITIES, "valid"):
                got = np.load(io.BytesIO(members[f"{name}.npy"]))
                expected = unit[name][(..., *window)]  # type: ignore[index]
                np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=key)
                assert got.dtype == expected.dtype
            assert meta["key"] == key and meta["epsg"] == unit.attrs["epsg"]
            assert meta["datetime"] == unit.attrs["datetime"]
            valid = np.load(io.BytesIO(members["valid.npy"]))
            assert meta["invalid_fraction"] == pytest.approx(1 - valid.mean(), abs=1e-6)
            assert meta["invalid_fraction"] <= cfg.max_invalid
            lc = np.load(io.BytesIO(members["lc.npy"]))
            for code, fraction in meta["lc_fractions"].items():
                assert fraction == pytest.approx(
                    (lc == int(code)).sum() / (lc != 0).sum(), abs=1e-6
                )
            checked += 1
    assert checked >= 10


def test_each_sample_says_how_it_was_made(shard_set: Any) -> None:
    """Provenance: resampling per source, WorldCover version, harmonisation, DEM items,
    and the share of the chip each source covered (equal to the chip's own arrays)."""
    cfg, _ = shard_set
    cube = open_cube(cfg.cube_url)
    entry = read_manifest(cfg.out_url).shards[0]
    for members in read_samples(Path(cfg.out_url) / entry.name).values():
        meta = json.loads(members["json"])
        made = meta["provenance"]
        nearest, bilinear = "nearest", "bilinear"
        assert made["resampling"] == {"s2_10m": nearest, "s2_20m_60m": bilinear,
                                      "scl": nearest, "dem": bilinear, "lc": nearest}  # fmt: skip
        assert made["worldcover_version"] == "v200"
        assert made["dem_items"] == meta["items"]["dem"] and made["dem_items"]
        attrs = cube[meta["unit_id"]].attrs
        offset = 1000 if attrs["processing_baseline"] >= "04.00" else 0
        baseline = attrs["processing_baseline"]
        assert made["harmonisation"] == {
            "processing_baseline": baseline,
            "baseline_inferred": False,
            "offset_removed": offset,
        }
        lc = np.load(io.BytesIO(members["lc.npy"]))
        s2 = np.load(io.BytesIO(members["s2.npy"]))
        assert made["coverage"]["lc"] == pytest.approx((lc != 0).mean(), abs=1e-6)
        assert made["coverage"]["s2"] == pytest.approx((s2 != 0).all(axis=0).mean(), abs=1e-6)
        assert 0 < made["coverage"]["dem"] <= 1


def test_splits_neither_overlap_nor_touch(shard_set: Any) -> None:
    cfg, _ = shard_set
    metas = all_metas(Path(cfg.out_url))
    split_of_chip: dict[str, set[str]] = defaultdict(set)
    outlines: dict[str, Any] = {}
    for m in metas:
        split_of_chip[m["chip_id"]].add(m["split"])
        _, _, x0, _, _, y0 = m["transform"]
        size = cfg.chip_size * 10
        to_lonlat = Transformer.from_crs(m["epsg"], 4326, always_xy=True).transform
        outlines[m["chip_id"]] = transform(
            box(x0, y0 - size, x0 + size, y0), to_lonlat, interleaved=False
        )
    assert all(len(s) == 1 for s in split_of_chip.values()), "a location in two splits"
    ids = sorted(outlines)
    tree = STRtree([outlines[i] for i in ids])
    for chip in ids:
        near = tree.query(outlines[chip].buffer(1e-6), predicate="intersects")  # ~10 cm
        splits = {next(iter(split_of_chip[ids[j]])) for j in near}
        assert splits == split_of_chip[chip], f"{chip} touches a chip of {splits}"
    counts = Counter(m["split"] for m in metas)
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_the_split_is_seeded(shard_set: Any, tmp_path: Path) -> None:
    cfg, _ = shard_set
    first = {m["chip_id"]: m["split"] for m in all_metas(Path(cfg.out_url))}
    other = cfg.model_copy(update={"out": str(tmp_path / "s"), "seed": 1})
    run_shard(other)
    second = {m["chip_id"]: m["split"] for m in all_metas(tmp_path / "s")}
    assert first != second


def make_small_cube(path: Path) -> list[str]:
    """Two units of random data with masks: a cube small enough for NumPy references."""
    rng = np.random.default_rng(3)
    cube = open_cube(str(path))
    for i, unit_id in enumerate(["T1_20210101_S2A", "T2_20210601_S2B"]):
        h, w = 96, 128
        valid = rng.random((h, w)) > 0.3
        arrays = {
            "s2": rng.integers(1, 12000, (12, h, w)).astype(np.uint16),
            "scl": np.full((h, w), 4, np.uint8),
            "dem": rng.normal(500 + 200 * i, 50, (h, w)).astype(np.float32),
            "lc": rng.choice(np.array([0, *LC.classes], np.uint8), (h, w)),
            "valid": valid,
        }
        write_unit(cube, unit_id, Grid(32632, 640.0 * i, 6400.0, w, h), 32, arrays, {})
    return ["T1_20210101_S2A", "T2_20210601_S2B"]


@pytest.mark.parametrize("block", [1024, 7])  # whole units, or blocks with ragged edges
def test_stats_equal_numpy_over_valid_pixels(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shards.stats.STATS_BLOCK", block)
    units = make_small_cube(tmp_path / "cube.zarr")
    stats = compute_stats(str(tmp_path / "cube.zarr"), units)
    cube = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")
    groups = [cube[u] for u in units]
    s2 = np.concatenate([g["s2"][...][:, g["valid"][...]] for g in groups], axis=1)  # type: ignore[index]
    dem = np.concatenate([g["dem"][...][g["valid"][...]] for g in groups]).astype(np.float64)  # type: ignore[index]
    lc = np.concatenate([g["lc"][...].ravel() for g in groups])  # type: ignore[index]
    np.testing.assert_allclose(stats["s2"]["mean"], s2.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["s2"]["std"], s2.std(axis=1), rtol=1e-7)
    np.testing.assert_allclose(stats["dem"]["mean"], [dem.mean()], rtol=1e-9)
    np.testing.assert_allclose(stats["dem"]["std"], [dem.std()], rtol=1e-6)
    counts = [(lc == c).sum() for c in LC.classes]
    assert stats["lc"]["counts"] == counts
    np.testing.assert_allclose(stats["lc"]["frequency"], np.array(counts) / sum(counts))
    assert stats["pixels"]["valid"] == sum(int(g["valid"][...].sum()) for g in groups)  # type: ignore[index]


def test_a_complete_set_is_kept_and_other_settings_are_refused(shard_set: Any) -> None:
    cfg, _ = shard_set
    stamp = os.stat(Path(cfg.out_url) / "manifest.json").st_mtime_ns
    again = run_shard(cfg)
    assert again["kept"] is True
    assert os.stat(Path(cfg.out_url) / "manifest.json").st_mtime_ns == stamp
    with pytest.raises(ShardSetError, match="max_invalid"):
        run_shard(cfg.model_copy(update={"max_invalid": 0.5}))


def test_a_cut_off_run_resumes_with_identical_shards(shard_set: Any, tmp_path: Path) -> None:
    cfg, _ = shard_set
    out = tmp_path / "shards"
    first = run_shard(cfg.model_copy(update={"out": str(out)}))
    shas = {e["name"]: e["sha256"] for e in first["shards"]}
    # As a kill leaves it: no manifest, some shards missing, a temp file half written.
    (out / "manifest.json").unlink()
    lost = [e["name"] for e in first["shards"]][::3]
    for name in lost:
        (out / name).unlink()
    (out / f".{lost[0]}.abc.tmp").write_bytes(b"half a shard")
    kept_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = run_shard(cfg.model_copy(update={"out": str(out)}))
    assert second["written"] == len(lost)
    assert {e["name"]: e["sha256"] for e in second["shards"]} == shas  # deterministic bytes
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept_before.items())
    keys = [k for e in second["shards"] for k in read_samples(out / e["name"])]
    assert len(keys) == len(set(keys)) == read_manifest(str(out)).samples()
    assert verify(str(out)) == []  # indexes included: each matches its rewritten shard


def test_force_rewrites_with_new_settings(shard_set: Any, tmp_path: Path) -> None:
    cfg, _ = shard_set
    out = tmp_path / "shards"
    run_shard(cfg.model_copy(update={"out": str(out)}))
    summary = run_shard(cfg.model_copy(update={"out": str(out), "chip_size": 128, "force": True}))
    assert summary["chip_size"] == 128
    assert read_manifest(str(out)).chip_size == 128
    assert all(len(read_samples(out / e["name"])) == e["samples"] for e in summary["shards"])


def test_missing_cube_and_impossible_filters_are_named(shard_set: Any, tmp_path: Path) -> None:
    cfg, _ = shard_set
    with pytest.raises(ShardSetError, match="no cube at"):
        run_shard(ShardConfig(run_dir=str(tmp_path / "nothing")))
    strict = cfg.model_copy(update={"out": str(tmp_path / "s"), "chip_size": 512})
    with pytest.raises(ShardSetError, match="--chip-size"):
        run_shard(strict)


def test_bad_fractions_are_rejected_before_work() -> None:
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        ShardConfig(val_fraction=0.6, test_fraction=0.5)


def test_a_corrupt_cube_chunk_is_named_by_unit_and_array(shard_set: Any, tmp_path: Path) -> None:
    """zarr's own error (a checksum mismatch) says nothing of where it comes from."""
    import shutil

    cfg, _ = shard_set
    run = tmp_path / "run"
    shutil.copytree(Path(cfg.run_dir) / "cube.zarr", run / "cube.zarr")
    unit = sorted(p.name for p in (run / "cube.zarr").iterdir() if p.is_dir())[0]
    stored = next(p for p in (run / "cube.zarr" / unit / "s2" / "c").rglob("*") if p.is_file())
    stored.write_bytes(b"garbage" * 50)
    with pytest.raises(ShardSetError) as raised:
        run_shard(cfg.model_copy(update={"run_dir": str(run), "out": str(run / "shards")}))
    message = str(raised.value)
    assert f"unit {unit} of the cube: array s2 cannot be read" in message
    assert "checksum" in message and "eomae ingest" in message
