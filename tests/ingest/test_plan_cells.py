"""`eomae ingest --locations`: a corpus of scattered cells, planned per MGRS tile, ingested
cell by cell."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from counting import Counting  # tests/ingest is on sys.path
from shapely.geometry import box, shape

from ingest.catalog import open_catalog
from ingest.config import IngestConfig
from ingest.cube import open_cube
from ingest.locations import SampleConfig, SampleError, read_cells, sample_locations, write_cells
from ingest.plan import SEASONS, Plan, Unit, season
from ingest.plan_cells import make_cells_plan
from ingest.run import run_ingest
from ingest.sources import sentinel2
from shards.chips import unit_origin


@pytest.fixture
def corpus(truth: dict, tmp_path: Path) -> Path:
    """12 cells of 64 px scattered over the sample world, at least 1 km apart."""
    cfg = SampleConfig(strategy="uniform", bbox=[tuple(truth["region"])], count=12,
                       min_distance_km=1.0, seed=1)  # fmt: skip
    return write_cells(sample_locations(cfg), tmp_path / "locations.parquet")


def test_cells_are_planned_per_tile_each_on_its_own_chip(
    make_config: Callable[..., IngestConfig], corpus: Path, tmp_path: Path
) -> None:
    cells = read_cells(corpus)
    cfg = make_config(tmp_path / "run", bbox=[], locations=corpus, scenes_per_tile=2)
    catalog = Counting(open_catalog(cfg.catalog))
    plan = make_cells_plan(cfg, catalog, cells)

    by_cell = {(c.epsg, c.left, c.top): c for c in cells.itertuples()}
    planned = {(u.grid["epsg"], u.grid["left"], u.grid["top"]) for u in plan.units}
    assert planned <= set(by_cell)  # every unit is one cell's chip, nothing in between
    assert all((u.grid["width"], u.grid["height"]) == (64, 64) for u in plan.units)
    for u in plan.units:  # a scene of a tile in the cell's zone that shows the cell
        cell = by_cell[(u.grid["epsg"], u.grid["left"], u.grid["top"])]
        assert u.s2_item["properties"]["s2:mgrs_tile"] == u.mgrs_tile
        assert sentinel2.item_epsg(u.s2_item) == cell.epsg
        assert shape(u.s2_item["geometry"]).intersects(cell.geometry)
        assert u.dem_hrefs and u.lc_hrefs
    per_cell = {k: sum((u.grid["epsg"], u.grid["left"], u.grid["top"]) == k for u in plan.units)
                for k in planned}  # fmt: skip
    assert set(per_cell.values()) == {2}  # scenes_per_tile scenes of each cell
    # every cell is planned or said not to be: alone, or with its tile
    alone = [s for s in plan.skipped if s.item_id.startswith("cell ")]
    with_tile = [int(s.reason.split()[4]) for s in plan.skipped if s.item_id.startswith("tile ")]
    assert len(planned) + len(alone) + sum(with_tile) == len(cells)
    assert all(s.reason.startswith("no scene in EPSG:") for s in alone)

    # one search per (named) tile of cells and collection (DEM, land cover: where there are
    # scenes), each within the box of that tile's cells
    tiles = cells.groupby("mgrs")
    searched = [c for c, _ in catalog.boxes]
    assert searched.count(sentinel2.COLLECTION) == tiles.ngroups
    for collection in set(searched) - {sentinel2.COLLECTION}:
        assert searched.count(collection) == tiles.ngroups - len(with_tile)
    groups = [box(*g.total_bounds) for _, g in tiles]
    for _, bbox in catalog.boxes:
        assert any(g.buffer(1e-9).contains(box(*bbox)) for g in groups), bbox


def test_a_corpus_ingests_cell_by_cell(
    make_config: Callable[..., IngestConfig], corpus: Path, ray_session: None, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path / "run", bbox=[], locations=corpus, scenes_per_tile=1)
    summary = run_ingest(cfg)
    assert summary["done"] == summary["units"] > 0 and not summary["failed"]
    cube = open_cube(f"{tmp_path}/run/cube.zarr")
    ids = set(read_cells(corpus)["cell"])
    for unit in cube.group_keys():
        valid = np.asarray(cube[unit]["valid"][...])  # type: ignore[index]
        assert valid.shape == (64, 64)
        assert cube[unit]["s2"].shape == (len(sentinel2.BAND_NAMES), 64, 64)  # type: ignore[union-attr]
        epsg, left, top = unit_origin(cube[unit])  # type: ignore[arg-type]
        assert f"{epsg}_{int(left)}_{int(top)}" in ids  # the chip_id its chip will carry
    # the cells' chip size is the ingest's: a mismatch is named
    with pytest.raises(SampleError, match=r"cells of \[64\] px; chip_size is 32"):
        make_cells_plan(cfg.model_copy(update={"chip_size": 32}), open_catalog(cfg.catalog),
                        read_cells(corpus))  # fmt: skip
    with pytest.raises(ValueError, match="one of the two"):
        make_config(tmp_path / "both", locations=corpus)  # its bbox too


def test_seasons_give_each_cell_the_clearest_scene_of_each_season(
    make_config: Callable[..., IngestConfig], corpus: Path, tmp_path: Path
) -> None:
    cells = read_cells(corpus)
    catalog = open_catalog(make_config(tmp_path).catalog)
    every = make_cells_plan(
        make_config(tmp_path / "a", bbox=[], locations=corpus, scenes_per_tile=100), catalog, cells
    )
    seasonal = make_cells_plan(
        make_config(tmp_path / "b", bbox=[], locations=corpus, seasons=True), catalog, cells
    )

    def by_cell(plan: Plan) -> dict[str, list[Unit]]:
        units: dict[str, list[Unit]] = defaultdict(list)
        for u in plan.units:
            units[u.target.name].append(u)
        return units

    candidates, chosen = by_cell(every), by_cell(seasonal)
    assert chosen.keys() == candidates.keys()
    missing = {s.item_id: s.reason for s in seasonal.skipped if s.item_id.startswith("cell ")}
    for cell, units in chosen.items():
        seasons = [season(u.datetime) for u in units]
        assert len(set(seasons)) == len(seasons)  # one scene per season
        available = {season(u.datetime) for u in candidates[cell]}
        assert set(seasons) == available
        for u in units:  # the clearest of its season
            rivals = [c for c in candidates[cell] if season(c.datetime) == season(u.datetime)]
            assert u.usable_share == max(c.usable_share for c in rivals)
        absent = [s for s in SEASONS if s not in available]
        assert missing.get(f"cell {cell}") == (f"no scene in {', '.join(absent)}" if absent
                                               else None)  # fmt: skip
    assert len(seasonal.units) < len(every.units)  # the sample world has 2 dates a season
