"""The real-size tile writer: rasters as the items say, plannable, ingestible, bounded memory.

Written small (1200 px, 256 px windows): the same code writes the 10980 px tile.
"""

from __future__ import annotations

import tracemalloc
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import box, shape

from infra.world.big_tile import SENSED, Ground, to_dn, utm_centres, write_big_tile
from ingest.config import IngestConfig
from ingest.plan import make_plan
from ingest.run import process_unit
from ingest.snapshot import SnapshotCatalog, write_snapshot
from ingest.sources import dem, sentinel2, worldcover
from ingest.sources.sentinel2 import SceneClass

TILE_PX, BLOCK = 1200, 256
DEM_SPACING_DEG = 3 / 3600  # a 1" DEM cell is 13 Mpx, 10x the tile: slow to write


def _write_traced(out: Path, tile_size: int) -> tuple[list[dict[str, Any]], int, list[tuple]]:
    """The items, the writer's peak of traced (Python and numpy) memory, its progress calls."""
    calls: list[tuple] = []
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        items = write_big_tile(out, tile_size, block=BLOCK, dem_spacing_deg=DEM_SPACING_DEG,
                               progress=lambda *a: calls.append(a))  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return items, peak, calls


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], int, list]:
    return _write_traced(tmp_path_factory.mktemp("big_tile") / "tile", TILE_PX)


@pytest.fixture(scope="module")
def items(written: tuple[list[dict[str, Any]], int, list]) -> list[dict[str, Any]]:
    return written[0]


def _of(items: list[dict[str, Any]], collection: str) -> list[dict[str, Any]]:
    return [i for i in items if i["collection"] == collection]


def test_items_and_progress(items: list[dict[str, Any]], written: tuple) -> None:
    assert [len(_of(items, c)) for c in (sentinel2.COLLECTION, dem.COLLECTION,
                                          worldcover.COLLECTION)] == [1, 1, 1]  # fmt: skip
    s2 = _of(items, sentinel2.COLLECTION)[0]
    props = s2["properties"]
    assert props["s2:mgrs_tile"] == "32TPT" and props["datetime"].startswith("2023-07-14")
    assert props["s2:processing_baseline"] == "05.09"
    assert 0 < props["eo:cloud_cover"] < 15 and props["s2:nodata_pixel_percentage"] == 0
    calls = written[2]
    assert calls[-1] == ("done", len(calls) - 1, len(calls) - 1)
    assert [c[1] for c in calls] == list(range(len(calls)))


def test_every_asset_opens_as_its_item_says(items: list[dict[str, Any]]) -> None:
    for item in items:
        for key, asset in item["assets"].items():
            assert Path(asset["href"]).is_absolute()
            epsg = asset.get("proj:epsg", item["properties"].get("proj:epsg"))
            with rasterio.open(asset["href"]) as src:
                assert src.crs.to_epsg() == epsg, (item["id"], key)
                assert [src.height, src.width] == asset["proj:shape"], (item["id"], key)
                assert list(src.transform)[:6] == pytest.approx(asset["proj:transform"])
                assert src.overviews(1) or max(src.shape) <= 512  # a COG: overviews
                if item["collection"] == sentinel2.COLLECTION:
                    res = 20 if key == sentinel2.SCL_ASSET else sentinel2.BY_NAME[key].resolution_m
                    assert src.res == (res, res)
                    assert src.dtypes[0] == ("uint8" if key == sentinel2.SCL_ASSET else "uint16")
                    assert src.read(1).min() > sentinel2.NODATA  # no nodata inside the tile
                elif item["collection"] == dem.COLLECTION:
                    assert src.res == pytest.approx((DEM_SPACING_DEG, DEM_SPACING_DEG))
                    assert src.bounds == pytest.approx((10, 47, 11, 48))  # the whole 1° cell
                else:
                    assert src.res == pytest.approx(2 * (worldcover.RESOLUTION_DEG,))
                    assert set(np.unique(src.read(1)).tolist()) <= set(worldcover.CODES)
                    assert box(*src.bounds).equals_exact(shape(item["geometry"]), 1e-6)


def test_bands_are_plausible_and_seamless(items: list[dict[str, Any]]) -> None:
    """Reflectance with the +1000 offset, mostly clear SCL; windows join without seams."""
    s2 = _of(items, sentinel2.COLLECTION)[0]
    with rasterio.open(s2["assets"]["B08"]["href"]) as src:
        b08, transform = src.read(1), src.transform
    with rasterio.open(s2["assets"][sentinel2.SCL_ASSET]["href"]) as src:
        scl = src.read(1)
    assert 1000 < np.median(b08) < 6000
    clear = np.isin(scl, [SceneClass.VEGETATION, SceneClass.NOT_VEGETATED, SceneClass.WATER])
    assert clear.mean() > 0.8 and np.isin(scl, [8, 9]).any()
    # The same ground rendered in one piece: what the windows wrote, pixel for pixel.
    centres = utm_centres(transform, Window(0, 0, TILE_PX, TILE_PX))
    whole, _ = Ground(0, pixel_m=10).scene(*centres, [7])
    np.testing.assert_array_equal(b08, to_dn(whole[0]))
    other, _ = Ground(1, pixel_m=10).scene(*centres, [7])  # the seed decides the ground
    assert (to_dn(other[0]) != b08).mean() > 0.5


def test_refuses_a_tile_whose_60m_bands_would_not_nest(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 6"):
        write_big_tile(tmp_path, 1000)
    assert not any(tmp_path.iterdir())


def test_planner_plans_the_tile_and_ingest_reads_it(
    items: list[dict[str, Any]], tmp_path: Path
) -> None:
    s2 = _of(items, sentinel2.COLLECTION)[0]
    assert sentinel2.item_problem(s2) is None
    snapshot = write_snapshot(items, tmp_path / "catalog.parquet")
    cfg = IngestConfig(bbox=[tuple(s2["bbox"])], catalog_snapshot=snapshot,
                       start=SENSED.date(), end=date(2023, 7, 31), chip_size=64)  # fmt: skip
    plan = make_plan(cfg, SnapshotCatalog(snapshot))
    assert len(plan.units) == 1 and not plan.skipped
    unit = plan.units[0]
    left, bottom, right, top = sentinel2.tile_bounds(s2)
    grid = unit.target.bounds
    assert left <= grid[0] < left + 640 and top - 640 < grid[3] <= top  # whole chips inside
    assert right - 640 < grid[2] <= right and bottom <= grid[1] < bottom + 640
    assert unit.dem_hrefs == [i["assets"]["data"]["href"] for i in _of(items, dem.COLLECTION)]
    assert unit.lc_hrefs == [i["assets"]["map"]["href"] for i in _of(items, worldcover.COLLECTION)]

    result = process_unit(unit, str(tmp_path / "cube.zarr"), chip_size=64, max_reads=4)
    assert result.status == "done", result.reason
    assert result.valid_fraction > 0.5


def test_peak_memory_does_not_grow_with_the_tile(written: tuple, tmp_path: Path) -> None:
    """Twice the tile's edge (4x the pixels), the same windows: the same peak."""
    small = written[1]
    _, large, _ = _write_traced(tmp_path / "tile", 2 * TILE_PX)
    assert large < 1.1 * small and small < 1.1 * large, (small, large)
