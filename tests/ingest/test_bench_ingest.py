"""`eomae bench ingest`: the alternatives write the same arrays as eomae; the report has ratios."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eomae.bench_cli import BenchIngestCommand
from eomae.cli import main
from infra.services import LocalServices
from ingest.bench import compare_units, odc_available
from ingest.cube import open_cube, write_unit
from ingest.grid import Grid


def test_bench_ingest_on_a_subset(
    ray_session: None, local_services: LocalServices, truth: dict[str, Any], tmp_path: Path
) -> None:
    west, south, east, north = truth["region"]
    # one scene per tile: 3 units, one per tile, both UTM zones
    args = ["bench", "ingest", "--catalog", local_services.stac_url,
            "--bbox", f"{west},{south},{east},{north}", "--start", "2021-01-01",
            "--end", "2022-12-31", "--max-cloud-cover", "100", "--scenes-per-tile", "1",
            "--repeats", "1", "--no-warmup", "--run-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "bench"
    record = json.loads((out / "ingest.json").read_text())
    assert (out / "ingest.png").stat().st_size > 0
    assert not (out / "ingest-work").exists(), "the cubes it measured are removed"

    (row,) = record["repeats"]
    assert row["units"] == 3
    assert row["chips"] == sum((u["grid"]["height"] // 64) * (u["grid"]["width"] // 64)
                               for u in record["units"])  # fmt: skip
    for name in ("eomae", "naive"):
        assert row[name]["chips_per_s"] == pytest.approx(row["chips"] / row[name]["seconds"])
    figure = record["figures"]["eomae/naive"]
    assert figure["median"] == pytest.approx(
        row["eomae"]["chips_per_s"] / row["naive"]["chips_per_s"]
    )
    assert record["goals"]["eomae/naive"] == ">= 5"
    # the cube's layout against a file per chip, on one unit's real arrays
    assert len(record["cube_write"]) == 5
    assert record["figures"]["write cpu: per-chip/sharded"]["median"] > 0

    # The naive loop reads the same rasters through the same GDAL warper: identical arrays,
    # except next to DEM cell and WorldCover tile edges, where it warps each item on its
    # own (a DEM seam; nearest-neighbour ties in land cover) and eomae warps their mosaic.
    naive = record["agreement"]["naive"]
    assert naive["units"] == 3 and naive["agrees"]
    for name, check in naive["arrays"].items():
        assert check["shapes_equal"], name
        if name == "dem":
            assert check["equal_fraction"] > 0.98 and check["mean_abs_diff"] < 0.1, check
        elif name == "lc":  # and eomae's blocks: a class-border pixel flips now and then
            assert check["equal_fraction"] > 0.999, check
        else:  # S2 within 1 DN: bilinear rounding in eomae's blocks (compare_units)
            assert check["equal_fraction"] == 1.0, (name, check)
            assert check["max_abs_diff"] <= (1.0 if name == "s2" else 0.0), (name, check)

    if odc_available():
        assert record["figures"]["eomae/odc-stac"]["median"] > 0
        odc = record["agreement"]["odc-stac"]
        assert odc["agrees"], odc
        assert odc["arrays"]["s2"]["equal_fraction"] == 1.0
    else:
        assert "eomae/odc-stac" not in record["figures"]
        assert record["odc_stac"].startswith("skipped")


def test_compare_units_finds_a_changed_array(tmp_path: Path) -> None:
    grid = Grid(32632, 0.0, 1280.0, 128, 128)
    rng = np.random.default_rng(0)
    arrays = {
        "s2": rng.integers(1, 5000, (12, 128, 128)).astype(np.uint16),
        "scl": np.full((128, 128), 4, np.uint8),
        "dem": rng.normal(500, 50, (128, 128)).astype(np.float32),
        "lc": np.full((128, 128), 10, np.uint8),
        "valid": np.ones((128, 128), bool),
    }
    for name in ("a", "b"):
        write_unit(open_cube(str(tmp_path / name)), "u", grid, 64, arrays, {})
    same = compare_units(str(tmp_path / "a"), str(tmp_path / "b"), ["u"])
    assert same["agrees"] and same["arrays"]["dem"]["max_abs_diff"] == 0.0

    changed = {**arrays, "s2": arrays["s2"].copy(), "dem": arrays["dem"] + 2.0}
    changed["s2"][3, :64] += 2  # half the rows of one of 12 bands: 1/24 of the S2 pixels
    write_unit(open_cube(str(tmp_path / "b")), "u", grid, 64, changed, {})
    check = compare_units(str(tmp_path / "a"), str(tmp_path / "b"), ["u"])
    assert not check["agrees"]
    assert check["arrays"]["s2"]["equal_fraction"] == pytest.approx(1 - 1 / 24)
    assert check["arrays"]["dem"]["mean_abs_diff"] == pytest.approx(2.0, abs=1e-3)
    assert check["arrays"]["lc"]["equal_fraction"] == 1.0


def test_bench_ingest_world_fills_region_and_dates(world_dir: Path, truth: dict[str, Any]) -> None:
    cmd = BenchIngestCommand(world=world_dir, run_dir="runs/x")  # type: ignore[call-arg]
    assert cmd.bbox == [tuple(truth["region"])]
    assert (cmd.start, cmd.end) == (date(2021, 1, 1), date(2022, 12, 31))
    assert cmd.max_cloud_cover == 100.0
    with pytest.raises(ValueError, match="not a sample world"):
        BenchIngestCommand(world=world_dir / "nowhere", run_dir="runs/x")  # type: ignore[call-arg]
    # latency is added by the COG server the bench starts for a world; without one it is a
    # setting that would silently do nothing
    with pytest.raises(ValueError, match="give --world"):
        BenchIngestCommand(cog_latency_ms=20, catalog="http://stac", start=date(2021, 1, 1),
                           end=date(2022, 1, 1), bbox=[(11, 46, 12, 47)])  # fmt: skip
    assert BenchIngestCommand(world=world_dir, cog_latency_ms=20).cog_latency_ms == 20  # type: ignore[call-arg]
