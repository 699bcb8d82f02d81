"""Planning: scene choice, the chip grid, AOIs from GeoJSON, fsspec run directories."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box, shape

from infra.world.pc_items import StaticCatalog, cells, dem_item, s2_item, worldcover_item
from ingest.config import IngestConfig
from ingest.grid import chip_grid, lonlat_footprint
from ingest.plan import Plan, Unit, make_plan, pick_scenes, plan_from_json, plan_to_json
from ingest.sources import dem, sentinel2


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


# --- Planning against items shaped as Planetary Computer serves them ---------------------

ALASKA = ("06VVN", 32606, 499980.0, 6800040.0)  # ~61°N, -147..-145°
WEST_OF_180 = ("60WWT", 32660, 600000.0, 7300000.0)  # zone 60, crosses 180° at ~65°N
EAST_OF_180 = ("01WCN", 32601, 300000.0, 7300000.0)  # zone 1, crosses 180° from the east


def _plan(items: list[dict], **fields: Any) -> tuple[list[Unit], StaticCatalog]:
    catalog = StaticCatalog(items)
    cfg = IngestConfig(**{"start": "2021-06-01", "end": "2021-06-30", "max_cloud_cover": 100,
                          "scenes_per_tile": 4, **fields})  # fmt: skip
    return make_plan(cfg, catalog).units, catalog  # type: ignore[arg-type]


def _aux(footprint: Any, versions: tuple[str, ...] = ("v100", "v200")) -> list[dict]:
    """DEM cells and WorldCover tiles (both maps) around a footprint, a margin included."""
    area = footprint.buffer(1.0)
    dems = [dem_item(lon, lat) for lon, lat in cells(area, 1)]
    lcs = [worldcover_item(lon, lat, v) for lon, lat in cells(area, 3) for v in versions]
    return dems + lcs


def test_dem_and_land_cover_are_searched_with_each_grids_footprint() -> None:
    """A sliver chosen first no longer decides which DEM cells a whole tile gets."""
    tile, epsg, left, top = ALASKA
    sliver = s2_item(tile, epsg, left, top, "2021-06-03T21:15:21.024000Z", orbit=72,
                     cloud=0.1, nodata=98.0, data=(0.98, 1.0))  # fmt: skip
    full = s2_item(tile, epsg, left, top, "2021-06-05T21:25:19.024000Z", orbit=29, cloud=2.0)
    bbox = (-148.0, 60.0, -144.0, 62.0)  # the whole tile
    grid_area = lonlat_footprint(epsg, (left, top - 109800, left + 109800, top))
    units, catalog = _plan([sliver, full, *_aux(grid_area)], bbox=[bbox])
    assert len(units) == 2
    grid = units[0].target
    assert units[1].target == grid, "one grid per tile and AOI, whichever scene"
    expected = {dem_item(lon, lat)["id"] for lon, lat in cells(grid.footprint(), 1)
                if dem_item(lon, lat)["geometry"] and shape(dem_item(lon, lat)["geometry"])
                .intersects(grid.footprint())}  # fmt: skip
    assert len(expected) >= 3, "the grid spans several 1° cells"
    for unit in units:
        assert set(unit.dem_items) == expected
        assert unit.lc_items and all("_v200_" in i for i in unit.lc_items)
    # No DEM search reaches beyond the grid's footprint.
    fw, fs, fe, fn = grid.footprint().bounds
    for collection, (w, s, e, n) in catalog.boxes:
        if collection == dem.COLLECTION:
            assert fw - 1e-9 <= w and e <= fe + 1e-9 and fs - 1e-9 <= s and n <= fn + 1e-9


def test_each_aoi_gets_its_own_grid_and_search() -> None:
    tile, epsg, left, top = ALASKA
    scene = s2_item(tile, epsg, left, top, "2021-06-05T21:25:19.024000Z", orbit=29)
    corner_a = (-146.95, 61.2, -146.9, 61.22)  # near the tile's north-west corner
    corner_b = (-145.3, 60.4, -145.25, 60.42)  # near its south-east corner
    alps = (11.9, 47.2, 11.95, 47.25)  # another AOI far away, nothing there
    units, catalog = _plan([scene, *_aux(box(-147, 60, -145, 62))],
                           bbox=[corner_a, corner_b, alps])  # fmt: skip
    assert len(units) == 2, "one unit per AOI grid"
    assert units[0].unit_id != units[1].unit_id
    for unit in units:
        assert unit.target.width * unit.target.height < 200_000, "a grid per AOI, not their union"
    s2_boxes = [b for c, b in catalog.boxes if c == sentinel2.COLLECTION]
    assert sorted(s2_boxes) == sorted([list(corner_a), list(corner_b), list(alps)])


def test_a_box_across_the_antimeridian_is_planned_on_both_sides() -> None:
    bbox = (179.8, 65.0, -179.8, 65.1)  # west > east: crosses 180°
    scenes = [s2_item(t, e, x, y, "2021-06-10T23:05:41.024000Z", orbit=1)
              for t, e, x, y in (WEST_OF_180, EAST_OF_180)]  # fmt: skip
    aux = _aux(box(178, 64, 180, 66)) + _aux(box(-180, 64, -178, 66))
    units, _ = _plan([*scenes, *aux], bbox=[bbox])
    assert sorted(u.mgrs_tile for u in units) == ["01WCN", "60WWT"]
    for unit in units:
        grid = unit.target
        assert grid.width * grid.height < 3_000_000, "the AOI's grid, not a box around the globe"
        assert {"Copernicus_DSM_COG_10_N65_00_E179_00_DEM",
                "Copernicus_DSM_COG_10_N65_00_W180_00_DEM"} <= set(unit.dem_items)  # fmt: skip
        assert grid.footprint().geom_type == "MultiPolygon"


def test_two_orbits_of_one_tile_on_one_day_are_two_units_with_stable_ids() -> None:
    tile, epsg, left, top = ALASKA
    morning = s2_item(tile, epsg, left, top, "2021-06-10T21:05:41.024000Z", orbit=72)
    later = s2_item(tile, epsg, left, top, "2021-06-10T22:45:29.125000Z", orbit=73)
    aux = _aux(box(-147, 60, -145, 62))
    units, _ = _plan([morning, later, *aux], bbox=[(-149.0, 60.0, -146.0, 62.0)])
    ids = [u.unit_id for u in units]
    assert len(ids) == len(set(ids)) == 2
    assert all("." not in i for i in ids), "unit ids go into sample keys, which have no dots"
    again, _ = _plan([later, *reversed(aux), morning], bbox=[(-149.0, 60.0, -146.0, 62.0)])
    assert sorted(u.unit_id for u in again) == sorted(ids)


def test_one_worldcover_version_never_mixed() -> None:
    tile, epsg, left, top = ALASKA
    scene = s2_item(tile, epsg, left, top, "2021-06-05T21:25:19.024000Z", orbit=29)
    items = [scene, *_aux(box(-147, 60, -145, 62))]
    for version, year in (("v200", "2021"), ("v100", "2020")):
        fields = {} if version == "v200" else {"worldcover_version": version}
        (unit,), _ = _plan(items, bbox=[(-149.0, 60.0, -146.0, 62.0)], **fields)
        assert unit.lc_items and all(f"_{year}_{version}_" in i for i in unit.lc_items)
        assert unit.worldcover_version == version


def test_a_sliver_with_low_cloud_loses_to_a_full_scene() -> None:
    tile, epsg, left, top = ALASKA
    for geometry in ("data", "tile"):  # PC's data footprints, or whole-tile geometries
        sliver = s2_item(
            tile,
            epsg,
            left,
            top,
            "2021-06-03T21:15:21.024000Z",
            orbit=72,
            cloud=0.8,
            nodata=99.6,
            data=(0.996, 1.0),
            geometry=geometry,
        )
        full = s2_item(tile, epsg, left, top, "2021-06-05T21:25:19.024000Z", orbit=29,
                       cloud=1.0, nodata=0.0)  # fmt: skip
        (unit,), _ = _plan([sliver, full, *_aux(box(-147, 60, -145, 62))],
                           bbox=[(-149.0, 60.0, -146.0, 62.0)], scenes_per_tile=1)  # fmt: skip
        assert unit.s2_item["id"] == full["id"], geometry
        assert unit.usable_share == pytest.approx(0.99, abs=0.01)


def test_scenes_late_on_the_end_day_are_kept() -> None:
    tile, epsg, left, top = ALASKA
    late = s2_item(tile, epsg, left, top, "2021-06-30T23:59:59.024000Z", orbit=29)
    (unit,), _ = _plan([late, *_aux(box(-147, 60, -145, 62))],
                       bbox=[(-149.0, 60.0, -146.0, 62.0)])  # fmt: skip
    assert unit.datetime == "2021-06-30T23:59:59.024000Z"


def test_a_reprocessed_product_is_planned_once_with_the_newest_baseline() -> None:
    tile, epsg, left, top = ALASKA
    when = "2021-06-05T21:25:19.024000Z"
    old = s2_item(tile, epsg, left, top, when, orbit=29, baseline="02.12")
    new = s2_item(tile, epsg, left, top, when, orbit=29, baseline="05.10")
    new["id"] = new["id"].replace("T180331", "T235959")  # processed later
    (unit,), _ = _plan([old, new, *_aux(box(-147, 60, -145, 62))],
                       bbox=[(-149.0, 60.0, -146.0, 62.0)])  # fmt: skip
    assert unit.baseline == "05.10" and unit.s2_item["id"] == new["id"]


def test_a_western_hemisphere_bbox_parses_as_typed() -> None:
    from pydantic_settings import CliApp

    from eomae.config import attach_negative_values
    from eomae.ingest_cli import IngestCommand

    parsed: list[IngestConfig] = []

    class Parsed(IngestCommand):
        def cli_cmd(self) -> None:
            parsed.append(self)

    typed = ["--bbox", "-149,60,-146,62", "--bbox", "179.8,65,-179.8,65.1",
             "--start", "2021-06-01", "--end", "2021-06-30"]  # fmt: skip
    CliApp.run(Parsed, cli_args=attach_negative_values(typed))
    assert parsed[0].bbox == [(-149.0, 60.0, -146.0, 62.0), (179.8, 65.0, -179.8, 65.1)]
    west, across = parsed[0].aois()
    assert across.geom_type == "MultiPolygon", "the box across 180° is split in two halves"


def test_a_plan_lists_the_collections_once(
    make_config: Callable[..., IngestConfig], tmp_path: Path
) -> None:
    """Planetary Computer's /collections describes every collection: fetch it once a run."""
    from urllib.parse import urlparse

    from ingest.catalog import open_catalog

    cfg = make_config(tmp_path)
    catalog = open_catalog(cfg.catalog)
    paths: list[str] = []
    session = catalog.client._stac_io.session  # type: ignore[attr-defined]
    session.hooks["response"].append(lambda r, *a, **k: paths.append(urlparse(r.url).path))
    units = make_plan(cfg, catalog).units
    assert len({u.mgrs_tile for u in units}) >= 3, "several tiles, so several searches"
    assert sum(p.rstrip("/").endswith("/collections") for p in paths) == 1
    assert sum(p.endswith("/search") for p in paths) >= 1 + 2 * 3


def test_the_worlds_sliver_and_second_orbit_are_planned_right(
    make_config: Callable[..., IngestConfig], tmp_path: Path, truth: dict
) -> None:
    """On the sample world: the sliver ranks last; with room for it, the second orbit of
    its day is a unit of its own; land cover is one map."""
    from ingest.catalog import open_catalog

    scenes = {s["item_id"]: s for t in truth["tiles"] for s in t["scenes"]}
    (sliver,) = [i for i, s in scenes.items() if s["sliver"]]
    catalog = open_catalog(make_config(tmp_path).catalog)
    # 8 px chips: the grid reaches into the tile's corner where the sliver has its data.
    units = make_plan(make_config(tmp_path, scenes_per_tile=4, chip_size=8), catalog).units
    assert sliver not in {u.s2_item["id"] for u in units}, "4 full scenes beat the sliver"
    units = make_plan(make_config(tmp_path, scenes_per_tile=5, chip_size=8), catalog).units
    tile = next(u.mgrs_tile for u in units if u.s2_item["id"] == sliver)
    same_day = [
        u
        for u in units
        if u.mgrs_tile == tile and u.datetime[:10] == scenes[sliver]["datetime"][:10]
    ]
    assert len(same_day) == 2 and len({u.unit_id for u in same_day}) == 2
    ranked = [u.s2_item["id"] for u in units if u.mgrs_tile == tile]
    assert min(u.usable_share for u in units if u.s2_item["id"] == sliver) < 0.01
    assert len(ranked) == 5
    lc_items = {i for u in units for i in u.lc_items}
    assert lc_items and lc_items <= set(truth["worldcover_items"]["v200"])


def _break(item: dict, how: str) -> dict:
    """A copy of `item` with one field damaged as real catalogs damage them."""
    item = json.loads(json.dumps(item))
    props, b02 = item["properties"], item["assets"]["B02"]
    if how == "no proj:transform":
        del b02["proj:transform"]
    elif how == "no EPSG":
        del props["proj:epsg"]
    elif how == "cloud cover as a string":
        props["eo:cloud_cover"] = "3.5"
    elif how == "self-intersecting geometry":
        (ring,) = item["geometry"]["coordinates"]
        w, s, e, n = item["bbox"]
        item["geometry"]["coordinates"] = [[(w, s), (e, n), (e, s), (w, n), (w, s)]]
    elif how == "no s2:mgrs_tile":
        del props["s2:mgrs_tile"]
    elif how == "wrong proj:epsg":
        props["proj:epsg"] = 32607
    elif how == "wrong proj:shape":
        b02["proj:shape"] = [5490, 5490]
    item["id"] = item["id"].replace("T180331", f"T18{len(how):04d}")
    return item


@pytest.mark.parametrize(
    "how",
    ["no proj:transform", "no EPSG", "cloud cover as a string", "self-intersecting geometry",
     "no s2:mgrs_tile", "wrong proj:epsg", "wrong proj:shape"],
)  # fmt: skip
def test_a_bad_item_is_skipped_with_its_reason_and_its_tile_goes_on(how: str) -> None:
    tile, epsg, left, top = ALASKA
    good = [s2_item(tile, epsg, left, top, f"2021-06-{d:02d}T21:25:19.024000Z", orbit=29 + d)
            for d in (3, 5)]  # fmt: skip
    bad = _break(s2_item(tile, epsg, left, top, "2021-06-07T21:25:19.024000Z", orbit=1), how)
    catalog = StaticCatalog([*good, bad, *_aux(box(-148, 60, -144, 62))])
    cfg = IngestConfig(bbox=[(-148.0, 60.0, -144.0, 62.0)], start="2021-06-01",
                       end="2021-06-30", max_cloud_cover=100)  # fmt: skip
    plan = make_plan(cfg, catalog)  # type: ignore[arg-type]
    assert [s.item_id for s in plan.skipped] == [bad["id"]], plan.skipped
    assert plan.skipped[0].reason
    assert sorted(u.s2_item["id"] for u in plan.units) == sorted(i["id"] for i in good)
    grid = plan.units[0].target
    assert grid.epsg == epsg and grid.width * grid.height > 100_000_000, "the whole tile"


def test_a_missing_baseline_is_inferred_from_the_date_and_said_so() -> None:
    tile, epsg, left, top = ALASKA
    items = [
        s2_item(tile, epsg, left, top, when, orbit=29)
        for when in ("2021-06-05T21:25:19.024000Z", "2023-06-05T21:25:19.024000Z")
    ]
    for item in items:  # no property, no product name in the hrefs: only the date is left
        del item["properties"]["s2:processing_baseline"]
        for asset in item["assets"].values():
            asset["href"] = asset["href"].replace("_N0509_", "_")
    catalog = StaticCatalog([*items, *_aux(box(-148, 60, -144, 62))])
    cfg = IngestConfig(bbox=[(-148.0, 60.0, -144.0, 62.0)], start="2021-01-01",
                       end="2023-12-31", max_cloud_cover=100)  # fmt: skip
    units = sorted(make_plan(cfg, catalog).units, key=lambda u: u.datetime)  # type: ignore[arg-type]
    assert [(u.baseline, u.baseline_inferred) for u in units] == [("00.00", True), ("04.00", True)]


def test_an_item_without_cloud_cover_is_planned_last_not_dropped() -> None:
    tile, epsg, left, top = ALASKA
    known = s2_item(tile, epsg, left, top, "2021-06-05T21:25:19.024000Z", orbit=29, cloud=60.0)
    unknown = s2_item(tile, epsg, left, top, "2021-06-07T21:25:19.024000Z", orbit=30)
    del unknown["properties"]["eo:cloud_cover"]
    units, _ = _plan([unknown, known, *_aux(box(-147, 60, -145, 62))],
                     bbox=[(-149.0, 60.0, -146.0, 62.0)])  # fmt: skip
    assert [u.s2_item["id"] for u in units] == [known["id"], unknown["id"]]


def test_under_a_cloud_limit_an_item_without_cloud_cover_is_skipped_and_said_so() -> None:
    tile, epsg, left, top = ALASKA
    known = s2_item(tile, epsg, left, top, "2021-06-05T21:25:19.024000Z", orbit=29, cloud=10.0)
    unknown = s2_item(tile, epsg, left, top, "2021-06-07T21:25:19.024000Z", orbit=30)
    del unknown["properties"]["eo:cloud_cover"]
    catalog = StaticCatalog([unknown, known, *_aux(box(-147, 60, -145, 62))])
    cfg = IngestConfig(bbox=[(-149.0, 60.0, -146.0, 62.0)], start="2021-06-01",
                       end="2021-06-30", max_cloud_cover=20)  # fmt: skip
    plan = make_plan(cfg, catalog)  # type: ignore[arg-type]
    assert [u.s2_item["id"] for u in plan.units] == [known["id"]]
    assert [(s.item_id, s.reason) for s in plan.skipped] == [
        (unknown["id"], "no eo:cloud_cover: cannot tell whether it is within max_cloud_cover 20")
    ]


def test_the_cloud_limit_is_a_filter_the_local_api_answers(
    make_config: Callable[..., IngestConfig], local_services: Any, tmp_path: Path
) -> None:
    """The limit goes as CQL2 (<= limit or null); a `query` drops undeclared items silently."""
    from pypgstac.load import Loader, Methods

    from infra.services.postgres import pgstac_db
    from ingest.catalog import open_catalog
    from ingest.sources import sentinel2

    catalog = open_catalog(make_config(tmp_path).catalog)
    every = catalog.search(sentinel2.COLLECTION)
    undeclared = json.loads(json.dumps(every[0].to_dict(transform_hrefs=False)))
    undeclared["id"] += "_NO_CLOUD_COVER"
    del undeclared["properties"]["eo:cloud_cover"]
    with pgstac_db(local_services.postgres.dsn()) as db:
        Loader(db).load_items(iter([undeclared]), Methods.insert)
        try:
            clear = catalog.search(sentinel2.COLLECTION, max_cloud_cover=20)
        finally:  # the world is shared by the session's tests
            db.connect().execute(
                "SELECT pgstac.delete_item(%s, %s)", [undeclared["id"], sentinel2.COLLECTION]
            )
    expected = {i.id for i in every if i.properties["eo:cloud_cover"] <= 20}
    assert 0 < len(expected) < len(every)
    assert {i.id for i in clear} == expected | {undeclared["id"]}


def test_an_item_in_the_projection_v2_layout_is_planned() -> None:
    """PC's items now follow STAC 1.1 / projection v2, as a published fixture of one shows
    (S2B_MSIL2A_20230101T102339_R065_T32UPC_20240806T223544): `proj:code` instead of
    `proj:epsg`, and no `s2:processing_baseline`, the product name (..._N0510_...) in the
    hrefs stating it."""
    tile, epsg, left, top = ALASKA
    item = s2_item(tile, epsg, left, top, "2023-06-05T21:25:19.024000Z", orbit=29,
                   baseline="05.10")  # fmt: skip
    item["stac_version"] = "1.1.0"
    props = item["properties"]
    del props["proj:epsg"], props["s2:processing_baseline"]
    props["proj:code"] = f"EPSG:{epsg}"
    assert "_N0510_R029_" in item["assets"]["B04"]["href"]
    (unit,), _ = _plan([item, *_aux(box(-147, 60, -145, 62))], start="2023-06-01",
                       end="2023-06-30", bbox=[(-149.0, 60.0, -146.0, 62.0)])  # fmt: skip
    assert unit.target.epsg == epsg
    assert (unit.baseline, unit.baseline_inferred) == ("05.10", False)


def test_plan_json_holds_each_scene_once_and_reads_back_equal(tmp_path: Path) -> None:
    scene = s2_item("32TPT", 32632, 600000.0, 5300040.0, "2021-06-05T10:20:31.024000Z", orbit=65)
    units = [Unit(unit_id=f"u{i}", mgrs_tile="32TPT", datetime=scene["properties"]["datetime"],
                  baseline="03.00", cloud_cover=1.0,
                  grid={"epsg": 32632, "left": 600000.0 + 640 * i, "top": 5300000.0,
                        "width": 64, "height": 64}, s2_item=scene)
             for i in range(50)]  # fmt: skip
    cfg = IngestConfig(bbox=[(11, 47, 12, 48)], start="2021-01-01", end="2021-12-31",
                       run_dir=str(tmp_path))  # fmt: skip
    text = plan_to_json(Plan(units), cfg)

    assert text.count('"stac_version"') == 1  # the item once, not once per cell
    back = plan_from_json(text).units
    as_json = json.loads(json.dumps(scene))  # tuples become lists
    assert back == [dataclasses.replace(u, s2_item=as_json) for u in units]
    assert plan_to_json(Plan(back), cfg) == text
