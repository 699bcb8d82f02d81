"""Planning a corpus from a frozen catalog at scale: every cell accounted for, one search
per tile and collection, an indexed snapshot that answers as a full scan would."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from counting import Counting  # tests/ingest is on sys.path
from pyproj import Transformer
from shapely.geometry import box, shape

from infra.world.pc_world import FIRST_DATE, REVISIT_DAYS, pc_world, pick_tiles
from ingest.config import IngestConfig
from ingest.locations import cells_of, read_cells, uniform_points, write_cells
from ingest.plan import Plan, Unit
from ingest.plan_cells import make_cells_plan
from ingest.snapshot import SnapshotCatalog, read_snapshot, write_snapshot
from ingest.sources import dem, sentinel2, worldcover

ALPS = (8.0, 45.0, 14.0, 48.0)  # 28 tiles across the zone 32/33 boundary
TILES, DATES = 6, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The snapshot of a 6-tile world of PC-shaped items."""
    out = tmp_path_factory.mktemp("world")
    return write_snapshot(pc_world(TILES, DATES, seed=0, area=ALPS), out / "catalog.parquet")


def _config(snapshot: Path, locations: Path) -> IngestConfig:
    return IngestConfig(locations=locations, catalog_snapshot=snapshot, start=FIRST_DATE,
                        end=FIRST_DATE + timedelta(days=REVISIT_DAYS * DATES),
                        max_cloud_cover=100.0, scenes_per_tile=2,
                        run_dir=str(snapshot.parent / "run"))  # fmt: skip


def _cell(unit: Unit) -> str:
    """The id of the cell a unit is on (EPSG_LEFT_TOP, as `ingest.locations` names it)."""
    return f"{unit.grid['epsg']}_{unit.grid['left']:.0f}_{unit.grid['top']:.0f}"


def _skipped(plan: Plan, kind: str) -> set[str]:
    """The ids of the cells (kind "cell") or tiles ("tile") the plan says it skipped."""
    return {s.item_id.removeprefix(f"{kind} ") for s in plan.skipped
            if s.item_id.startswith(f"{kind} ")}  # fmt: skip


def test_every_cell_is_planned_or_skipped_with_one_search_per_tile_and_collection(
    world: Path, tmp_path: Path
) -> None:
    tiles = pick_tiles(TILES, seed=0, area=ALPS)
    lon, lat = uniform_points([t.footprint() for t in tiles], 300, 0.0, seed=0)
    locations = write_cells(cells_of(lon, lat, 64), tmp_path / "cells.parquet")
    cells = read_cells(locations)
    catalog = Counting(SnapshotCatalog(world))
    plan = make_cells_plan(_config(world, locations), catalog, cells)

    # every cell has units, or is skipped alone or with its tile, and only one of these
    tiles_of: dict[str, set[str]] = {}  # cell id: the tiles of its scenes
    for u in plan.units:
        tiles_of.setdefault(_cell(u), set()).add(u.mgrs_tile)
    alone, dropped = _skipped(plan, "cell"), _skipped(plan, "tile")
    with_tile = set(cells.loc[cells["mgrs"].isin(dropped), "cell"])
    assert set(tiles_of) | alone | with_tile == set(cells["cell"])
    assert len(tiles_of) + len(alone) + len(with_tile) == len(cells)
    assert all((u.grid["width"], u.grid["height"]) == (64, 64) for u in plan.units)
    # a cell named for one of the world's tiles is planned, that tile's scenes among its
    # own; one past its square's zone edge is named in the next zone, mostly not there
    names = {t.name for t in tiles}
    ours = cells[cells["mgrs"].isin(names)]
    assert len(ours) > len(cells) / 2
    assert all(c.mgrs in tiles_of.get(c.cell, set()) for c in ours.itertuples())
    unplanned = cells[cells["cell"].isin(alone | with_tile)]
    assert len(unplanned) and not set(unplanned["mgrs"]) & names

    # one search per tile of cells and collection, none wider than that tile's cells
    groups = {name: box(*g.total_bounds).buffer(1e-9) for name, g in cells.groupby("mgrs")}
    searched = [c for c, _ in catalog.boxes]
    assert searched.count(sentinel2.COLLECTION) == len(groups)
    for collection in (dem.COLLECTION, worldcover.COLLECTION):
        assert searched.count(collection) == len(groups) - len(dropped)
    assert len(catalog.boxes) == 3 * len(groups) - 2 * len(dropped)
    for _, bbox in catalog.boxes:
        assert any(g.contains(box(*bbox)) for g in groups.values()), bbox


def test_cells_that_overlap_are_merged_into_one_grid(world: Path, tmp_path: Path) -> None:
    tile = pick_tiles(TILES, seed=0, area=ALPS)[0]
    centre = tile.footprint().centroid
    cells = cells_of(np.array([centre.x]), np.array([centre.y]), 64)
    shifted = cells.assign(left=cells["left"] + 320.0, cell="shifted")  # half a chip east
    both = gpd.GeoDataFrame(pd.concat([cells, shifted], ignore_index=True), crs=cells.crs)
    locations = write_cells(both, tmp_path / "cells.parquet")
    plan = make_cells_plan(_config(world, locations), SnapshotCatalog(world), both)
    grids = {(u.grid["left"], u.grid["width"], u.grid["height"]) for u in plan.units}
    assert grids == {(float(cells["left"][0]), 96, 64)}  # one grid over both, never two


def _brute_force(items: list[dict[str, Any]], collection: str, **q: Any) -> list[str]:
    """The ids a STAC API returns, by a scan of every item."""
    lo, hi = (None, None)
    if q.get("datetime"):
        lo, hi = (pd.Timestamp(t) for t in q["datetime"].split("/"))
    found = []
    for item in items:
        props = item["properties"]
        start = pd.Timestamp(props.get("start_datetime") or props["datetime"])
        end = pd.Timestamp(props.get("end_datetime") or props["datetime"])
        cloud = props.get("eo:cloud_cover")
        if (item["collection"] == collection
                and (q.get("bbox") is None or shape(item["geometry"]).intersects(box(*q["bbox"])))
                and (lo is None or (end >= lo and start <= hi))
                and (q.get("max_cloud_cover") is None or cloud is None
                     or cloud <= q["max_cloud_cover"])):  # fmt: skip
            found.append(item)
    if q.get("sortby"):
        c = "eo:cloud_cover"
        found.sort(key=lambda i: (i["properties"].get(c) is None, i["properties"].get(c) or 0,
                                  i["id"]))  # fmt: skip
    return [i["id"] for i in found]


def test_the_indexed_search_returns_what_a_scan_does_in_the_same_order(tmp_path: Path) -> None:
    items = pc_world(TILES, DATES, seed=1, area=ALPS)
    s2 = [i for i in items if i["collection"] == sentinel2.COLLECTION]
    for n, item in enumerate(s2):  # ties in cloud cover and none stated: the sort's edges
        if n % 3 == 0:
            item["properties"]["eo:cloud_cover"] = 10.0
        if n % 5 == 0:
            del item["properties"]["eo:cloud_cover"]
    path = write_snapshot(items, tmp_path / "catalog.parquet")
    snapshot, scanned = SnapshotCatalog(path), read_snapshot(path)
    rng = np.random.default_rng(0)
    w, s, e, n_ = ALPS
    for _ in range(200):
        x0, y0 = rng.uniform(w, e), rng.uniform(s, n_)
        bbox = (x0, y0, x0 + rng.uniform(0, 2), y0 + rng.uniform(0, 1))
        first = FIRST_DATE + timedelta(days=int(rng.integers(-3, 8)))
        days = timedelta(days=int(rng.integers(0, 8)))
        query: dict[str, Any] = {
            "bbox": bbox if rng.random() < 0.8 else None,
            "datetime": f"{first}T00:00:00Z/{first + days}T23:59:59.999999Z"
            if rng.random() < 0.7 else None,
            "max_cloud_cover": float(rng.uniform(0, 80)) if rng.random() < 0.5 else None,
            "sortby": "eo:cloud_cover" if rng.random() < 0.5 else None,
        }  # fmt: skip
        for collection in (sentinel2.COLLECTION, dem.COLLECTION, worldcover.COLLECTION):
            ours = [i.id for i in snapshot.search(collection, **query)]
            assert ours == _brute_force(scanned, collection, **query), (collection, query)


def test_a_cell_at_its_squares_north_edge_takes_the_neighbour_that_holds_it_whole(
    tmp_path: Path,
) -> None:
    from infra.world.pc_items import StaticCatalog, dem_item, s2_item, worldcover_item
    from infra.world.pc_world import mgrs_tiles

    tiles = {(t.epsg, t.left, t.top): t for t in mgrs_tiles(ALPS)}
    own = next(t for t in tiles.values() if (t.epsg, t.left, t.top + 100_000) in tiles)
    north = tiles[(own.epsg, own.left, own.top + 100_000)]
    # a point 100 m inside its square's north edge: named for `own`, its cell reaches north
    to_lonlat = Transformer.from_crs(own.epsg, 4326, always_xy=True)
    lon, lat = to_lonlat.transform(own.left + 50_000, own.top - 100)
    cells = cells_of(np.array([lon]), np.array([lat]), 64)
    assert cells.iloc[0]["mgrs"] == own.name and cells.iloc[0]["top"] > own.top

    when = "2021-06-05T10:20:31.024000Z"  # one take: both tiles' products of it
    scenes = [s2_item(t.name, t.epsg, t.left, t.top, when, orbit=65) for t in (own, north)]
    dems = [dem_item(x, y) for x in range(8, 15) for y in range(44, 50)]
    lcs = [worldcover_item(x, y, "v200") for x in (6, 9, 12) for y in (42, 45, 48)]
    items = [*scenes, *dems, *lcs]
    locations = write_cells(cells, tmp_path / "cells.parquet")
    cfg = IngestConfig(locations=locations, start="2021-06-01", end="2021-06-30",
                       max_cloud_cover=100.0, run_dir=str(tmp_path / "run"))  # fmt: skip

    (unit,) = make_cells_plan(cfg, StaticCatalog(items), read_cells(locations)).units

    assert unit.mgrs_tile == north.name  # own tile's raster ends at the square's edge
