"""`eomae bench corpus`: its measurements measure what they say, and its cost model adds up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eomae.bench_corpus import _wanted_pixels, cost_model, memory_per_task
from infra.world.big_tile import write_big_tile
from ingest.locations import cells_of


def test_memory_per_task_ingests_one_whole_unit_alone(tmp_path: Path) -> None:
    write_big_tile(tmp_path / "tile", 600, block=256)

    (row,) = memory_per_task({600: tmp_path / "tile" / "items.json"}, tmp_path / "work")

    assert row["tile_px"] == 600
    assert row["pixels"] >= 512 * 512 and row["chips"] == row["pixels"] // 64**2
    assert 0 < row["rss_before_mb"] <= row["peak_rss_mb"] < 2000
    assert row["chips_per_cpu_s"] > 0 and 5 < row["cube_bytes_per_px"] < 40
    assert not (tmp_path / "work" / "unit-600").exists()  # its cube is removed


def test_wanted_pixels_count_the_cells_inside_each_units_grid() -> None:
    cells = cells_of(np.array([11.5, 11.6]), np.array([47.3, 47.3]), 64)
    first = cells.iloc[0]
    unit = {"grid": {"epsg": int(first.epsg), "left": float(first.left), "top": float(first.top),
                     "width": 128, "height": 64}}  # fmt: skip

    assert _wanted_pixels([unit], cells, 64) == 64 * 64  # the other cell is 7 km away
    assert _wanted_pixels([unit, unit], cells, 64) == 2 * 64 * 64


def test_cost_model_adds_up() -> None:
    cost = cost_model(chips_per_cpu_s=100.0, unit_overhead_cpu_s=0.5, cube_bytes_per_px=16.0,
                      plan_s_per_10k=10.0, locations=1000, seasons=4, location_px=128,
                      chip_size=64, cores_per_node=8, nodes=(1, 2))  # fmt: skip

    units = 4000
    cpu_s = units * (0.5 + 4 / 100.0)  # 4 chips of 64 px in 128 px
    assert cost["units"] == units
    assert cost["cpu_hours"] == pytest.approx(cpu_s / 3600)
    assert cost["wall_hours"][2] == pytest.approx(cpu_s / 16 / 3600)
    assert cost["plan_hours"] == pytest.approx(1.0 / 3600)
    assert cost["cube_tb"] == pytest.approx(units * 128**2 * 16 / 1e12)
