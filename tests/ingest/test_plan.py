"""Planning: scene choice, the chip grid, AOIs from GeoJSON, fsspec run directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from shapely.geometry import box

from ingest.config import IngestConfig
from ingest.grid import chip_grid
from ingest.plan import pick_scenes


def _item(i: int, month: int, cloud: float) -> dict:
    return {"id": f"s{i}", "properties": {"datetime": f"2021-{month:02d}-10T10:00:00Z",
                                          "eo:cloud_cover": cloud}}  # fmt: skip


def test_best_n_by_cloud_cover_and_spread_over_seasons() -> None:
    items = [_item(0, 7, 1.0), _item(1, 7, 2.0), _item(2, 8, 3.0), _item(3, 1, 50.0),
             _item(4, 4, 40.0), _item(5, 10, 30.0)]  # fmt: skip
    assert [i["id"] for i in pick_scenes(items, 3, False)] == ["s0", "s1", "s2"]
    spread = pick_scenes(items, 4, True)
    months = sorted(int(i["properties"]["datetime"][5:7]) for i in spread)
    assert months == [1, 4, 7, 10], "one scene per season, the clearest of each"


def test_chip_grid_is_snapped_inside_tile_and_aoi() -> None:
    tile = (715620.0, 5239620.0, 721620.0, 5245620.0)  # a 6 km UTM tile, 60 m aligned
    aoi = box(11.85, 47.25, 12.1, 47.35)
    grid = chip_grid(32632, tile, aoi, 64)
    assert grid is not None
    extent = 640
    assert grid.left % extent == 0 and grid.top % extent == 0
    assert grid.width % 64 == 0 and grid.height % 64 == 0
    left, bottom, right, top = grid.bounds
    assert tile[0] <= left and right <= tile[2] and tile[1] <= bottom and top <= tile[3]
    assert chip_grid(32632, tile, box(0, 0, 0.001, 0.001), 64) is None


def test_aoi_from_geojson(tmp_path: Path) -> None:
    feature = {"type": "Feature", "properties": {},
               "geometry": box(11.9, 47.28, 11.95, 47.31).__geo_interface__}  # fmt: skip
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    cfg = IngestConfig(aoi_file=path, start="2021-01-01", end="2021-12-31")
    (geom,) = cfg.aois()
    assert geom.bounds == pytest.approx((11.9, 47.28, 11.95, 47.31))
    with pytest.raises(ValueError, match="does not exist"):
        IngestConfig(aoi_file=tmp_path / "missing.geojson", start="2021-01-01", end="2021-12-31")


def test_bbox_accepts_flat_numbers_as_typed_on_the_command_line() -> None:
    cfg = IngestConfig(bbox="11.85,47.25,12.1,47.35", start="2021-01-01", end="2021-12-31")
    assert cfg.bbox == [(11.85, 47.25, 12.1, 47.35)]
    with pytest.raises(ValueError, match="4 numbers"):
        IngestConfig(bbox=[1, 2, 3], start="2021-01-01", end="2021-12-31")


def test_fsspec_run_dir(
    ray_session: None, make_config: Callable[..., IngestConfig], tmp_path: Path, truth: dict
) -> None:
    from ingest.cube import open_cube
    from ingest.run import run_ingest

    west, south, east, north = truth["region"]
    aoi = (west, south, (west + east) / 2, north)
    cfg = make_config(tmp_path, bbox=[aoi], scenes_per_tile=1)
    cfg = cfg.model_copy(update={"run_dir": f"file://{tmp_path}/run"})
    summary = run_ingest(cfg)
    assert summary["done"] == summary["units"] >= 1 and not summary["failed"]
    assert (tmp_path / "run" / "ingest" / "status.json").is_file()
    assert len(list(open_cube(f"{tmp_path}/run/cube.zarr").group_keys())) == summary["units"]
