"""The sample world: valid COGs, PC-shaped items consistent with their rasters, truth."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import geometry_mask
from scipy import ndimage
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from eomae.cli import main
from infra.world import WorldConfig, WorldError, generate_world
from infra.world.landscape import CHANGES_2020, bare_parcels, reflectance
from infra.world.layout import dem_lon_factor, processing_baseline, utm_epsg
from infra.world.sentinel2 import MARKER_SPECTRUM
from infra.world.stac import local_items
from ingest.sources import dem, sentinel2, worldcover

SMALL = WorldConfig(tiles=2, dates=2, tile_size=120, markers_per_tile=1, points_per_tile=3)
REGION_WORLD: dict[str, Any] = {
    "tiles": 2, "dates": 2, "tile_size": 180, "markers_per_tile": 1, "points_per_tile": 3
}  # fmt: skip
S2_ID = re.compile(r"^S2[AB]_MSIL2A_(\d{8}T\d{6})_R(\d{3})_T(\w{5})_(\d{8}T\d{6})$")


def _items(world: Path) -> list[pystac.Item]:
    """Items as written (no pystac migration: PC's items use proj:epsg, as ours must)."""
    out = []
    for path in sorted((world / "stac").glob("*/*/*.json")):
        out.append(
            pystac.Item.from_dict(json.loads(path.read_text()), href=str(path), migrate=False)
        )
    return out


@pytest.fixture(scope="module")
def items(world_dir: Path) -> list[pystac.Item]:
    return _items(world_dir)


@pytest.fixture(scope="module")
def truth(world_dir: Path) -> dict:
    return json.loads((world_dir / "truth.json").read_text())


def _by_collection(items: list[pystac.Item], cid: str) -> list[pystac.Item]:
    return [i for i in items if i.collection_id == cid]


def _bbox(item: pystac.Item) -> list[float]:
    assert item.bbox is not None, item.id
    return item.bbox


def _wc(items: list[pystac.Item], version: str) -> list[pystac.Item]:
    """WorldCover items of one map: v100 (2020) or v200 (2021)."""
    product = {"v100": "1.0.0", "v200": "2.0.0"}[version]
    wc = _by_collection(items, worldcover.COLLECTION)
    return [i for i in wc if i.properties["esa_worldcover:product_version"] == product]


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def _utm(geom: BaseGeometry, epsg: int) -> BaseGeometry:
    """A lon/lat geometry in a UTM CRS (parts split at 180° come back side by side)."""
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(to_utm.transform(*xy.T)))


def _bilinear(item: pystac.Item, lon: float, lat: float) -> float:
    """A DEM value interpolated between pixel centres, as a mosaicking reader would."""
    with rasterio.open(item.assets[dem.ASSET].get_absolute_href()) as src:
        col, row = ~src.transform @ (lon, lat)
        data = src.read(1)
    coords = [[row - 0.5], [col - 0.5]]
    return float(ndimage.map_coordinates(data, coords, order=1, mode="nearest")[0])


def _edge_seam(west: pystac.Item, east: pystac.Item) -> tuple[float, float]:
    """How far elevation departs from a smooth continuation across two DEM cells' edge.

    Second differences of the columns either side of the edge, worst over all rows: across
    the edge, and for comparison one column inside the west cell.
    """
    a, b = _read(west, dem.ASSET), _read(east, dem.ASSET)
    cols = np.concatenate([a[:, -3:], b[:, :3]], axis=1).astype(np.float64)  # [H, 6]
    steps = np.diff(cols, axis=1)  # [H, 5]; steps[:, 2] crosses the edge
    across = np.abs(steps[:, 2] - (steps[:, 1] + steps[:, 3]) / 2).max()
    inside = np.abs(steps[:, 1] - (steps[:, 0] + steps[:, 2]) / 2).max()
    return float(across), float(inside)


def test_every_asset_is_a_cog_matching_its_proj_fields(items: list[pystac.Item]) -> None:
    assert len(items) > 0
    for item in items:
        for key, asset in item.assets.items():
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", asset.href
                assert src.profile["tiled"], asset.href
                if max(src.shape) > src.block_shapes[0][0]:
                    assert src.overviews(1), f"{asset.href} has no overviews"
                epsg = asset.extra_fields["proj:epsg"]
                assert src.crs.to_epsg() == epsg
                assert list(src.transform)[:6] == pytest.approx(
                    asset.extra_fields["proj:transform"]
                )
                assert list(src.shape) == asset.extra_fields["proj:shape"]
            if item.collection_id == sentinel2.COLLECTION and key != sentinel2.SCL_ASSET:
                band = sentinel2.BY_NAME[key]
                assert asset.extra_fields["gsd"] == band.resolution_m
                assert src.dtypes[0] == "uint16" and src.nodata == 0


def test_sentinel2_items_have_the_planetary_computer_shape(items: list[pystac.Item]) -> None:
    s2 = _by_collection(items, sentinel2.COLLECTION)
    assert len(s2) == 3 * 4 + 1, "3 tiles x 4 dates and one second-orbit sliver"
    for item in s2:
        assert set(item.assets) == set(sentinel2.BAND_NAMES) | {sentinel2.SCL_ASSET}
        props = item.properties
        for key in ("eo:cloud_cover", "s2:processing_baseline", "s2:mgrs_tile", "proj:epsg"):
            assert key in props, key
        assert item.id.startswith(("S2A_MSIL2A_", "S2B_MSIL2A_"))
        assert f"_T{props['s2:mgrs_tile']}_" in item.id
        assert shape(item.geometry).bounds == pytest.approx(_bbox(item))
    assert {i.properties["proj:epsg"] for i in s2} == {32632, 32633}, "two UTM zones"
    assert {i.properties["s2:processing_baseline"] for i in s2} == {"02.14", "03.01", "04.00"}


def test_cloud_cover_equals_scl_fraction(items: list[pystac.Item]) -> None:
    cloud_codes = [int(c) for c in sentinel2.CLOUD_CLASSES]
    covers = []
    for item in _by_collection(items, sentinel2.COLLECTION):
        with rasterio.open(item.assets[sentinel2.SCL_ASSET].get_absolute_href()) as src:
            scl = src.read(1)
        observed = scl != sentinel2.SceneClass.NO_DATA
        expected = 100 * np.isin(scl, cloud_codes).sum() / observed.sum()
        assert item.properties["eo:cloud_cover"] == pytest.approx(expected, abs=1e-3)
        covers.append(expected)
    # Realistic variety: clear scenes and heavily clouded ones.
    assert min(covers) < 5 and max(covers) > 50


def test_baseline_offset_applied_to_invariant_targets(
    items: list[pystac.Item], truth: dict
) -> None:
    """Markers have the same reflectance on every date: DN differs by exactly the offset."""
    from pyproj import Transformer

    b = sentinel2.BAND_NAMES.index("B04")
    checked: set[str] = set()
    for item in _by_collection(items, sentinel2.COLLECTION):
        tile = item.properties["s2:mgrs_tile"]
        baseline = item.properties["s2:processing_baseline"]
        for marker in (m for m in truth["markers"] if m["tile"] == tile):
            to_utm = Transformer.from_crs(4326, item.properties["proj:epsg"], always_xy=True)
            x, y = to_utm.transform(marker["lon"], marker["lat"])
            with rasterio.open(item.assets["B04"].get_absolute_href()) as src:
                r, c = src.index(x + 5, y - 5)  # a pixel inside the 120 m square
                dn = int(src.read(1)[r, c])
            if dn == sentinel2.NODATA:
                continue  # the marker lies beyond this scene's swath edge
            offset = 1000 if sentinel2.baseline_has_offset(baseline) else 0
            assert dn == MARKER_SPECTRUM[b] + offset
            checked.add(baseline)
    assert checked == {"02.14", "03.01", "04.00"}


def test_scl_marks_clouds_shadows_and_nodata_margins(items: list[pystac.Item]) -> None:
    seen: set[int] = set()
    nodata_scenes = 0
    for item in _by_collection(items, sentinel2.COLLECTION):
        with rasterio.open(item.assets[sentinel2.SCL_ASSET].get_absolute_href()) as src:
            scl = src.read(1)
        seen |= set(np.unique(scl).tolist())
        if (scl == 0).any():
            nodata_scenes += 1
            with rasterio.open(item.assets["B02"].get_absolute_href()) as src:
                b02 = src.read(1)
            # The same margin in a 10 m band: nodata fraction agrees with the SCL's.
            assert (b02 == 0).mean() == pytest.approx((scl == 0).mean(), abs=0.01)
    assert {0, 3, 4, 5, 6, 8, 9, 10, 11} <= seen
    assert nodata_scenes >= 1


def test_dem_and_worldcover_cover_every_tile_and_tiles_need_several_items(
    items: list[pystac.Item],
) -> None:
    layers = {
        "dem": _by_collection(items, dem.COLLECTION),
        "v100": _wc(items, "v100"),
        "v200": _wc(items, "v200"),
    }
    s2 = _by_collection(items, sentinel2.COLLECTION)
    for name, aux in layers.items():
        assert aux, name
        union = unary_union([box(*_bbox(i)) for i in aux])
        hits = []
        for item in s2:
            assert union.contains(shape(item.geometry)), f"{name} does not cover {item.id}"
            if item.properties["s2:nodata_pixel_percentage"] < 99:  # not the sliver
                hits.append(sum(box(*_bbox(i)).intersects(shape(item.geometry)) for i in aux))
        # Mosaicking is exercised: WorldCover tiles are small, and the 1° DEM cell edge at
        # 12°E runs through the tiles next to the UTM zone boundary.
        assert max(hits) >= 2, name
        if name != "dem":
            assert min(hits) >= 2, name


def test_ground_truth_points_match_worldcover_and_dem(
    items: list[pystac.Item], truth: dict
) -> None:
    assert {p["tile"] for p in truth["points"]} == {t["mgrs"] for t in truth["tiles"]}
    _check_truth_points(items, truth)


def _check_truth_points(items: list[pystac.Item], truth: dict) -> None:
    """Each truth point reads its land cover from the v200 map and its elevation from the DEM."""
    wc, dm = _wc(items, "v200"), _by_collection(items, dem.COLLECTION)
    for p in truth["points"]:
        point = shapely.Point(p["lon"], p["lat"])
        item = next(i for i in wc if box(*_bbox(i)).contains(point))
        with rasterio.open(item.assets[worldcover.ASSET].get_absolute_href()) as src:
            assert next(src.sample([(p["lon"], p["lat"])]))[0] == p["landcover"]
        item = next(i for i in dm if box(*_bbox(i)).contains(point))
        assert _bilinear(item, p["lon"], p["lat"]) == pytest.approx(p["elevation"], abs=5.0)


def test_land_cover_has_learnable_structure(world_dir: Path) -> None:
    with rasterio.open(world_dir / "truth" / "landcover.tif") as src:
        lc = src.read(1)
    with rasterio.open(world_dir / "truth" / "elevation.tif") as src:
        elev = src.read(1)
    assert set(np.unique(lc).tolist()) == set(worldcover.CODES), "all 11 classes occur"
    mean = {c: elev[lc == c].mean() for c in (80, 40, 10, 60, 70)}
    assert mean[80] < mean[40] < mean[10] < mean[60] < mean[70], mean


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def digest(world: Path) -> str:
        h = hashlib.sha256()
        for p in sorted((world / "data").rglob("*.tif")):
            h.update(p.read_bytes())
        return h.hexdigest()

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, SMALL)
    generate_world(b, SMALL)
    generate_world(c, SMALL.model_copy(update={"seed": 1}))
    assert digest(a) == digest(b) != digest(c)
    assert not generate_world(a, SMALL), "an identical world is reused"


def test_crash_leaves_no_partial_world(tmp_path: Path) -> None:
    def boom(what: str, done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("killed")

    out = tmp_path / "w"
    with pytest.raises(RuntimeError):
        generate_world(out, SMALL, progress=boom)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["world", str(tmp_path / "w"), "--tile-size", "125"]) == 2
    assert "--tile-size" in capsys.readouterr().err
    assert main(["world", str(tmp_path / "w"), "--region", "mars"]) == 2
    assert "--region" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(WorldError, match="not an eomae world"):
        generate_world(tmp_path / "notes", SMALL)
    assert main(["world", str(tmp_path / "notes")]) == 2
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"


def test_a_class_is_not_one_colour_and_crop_parcels_change_with_the_season() -> None:
    """Within-class variety: a chip's mean spectrum alone must not give its land cover away."""
    nir = sentinel2.BAND_NAMES.index("B08")
    flat = np.ones((1, 101), np.float32)
    variety = np.linspace(0, 1, 101, dtype=np.float32)[None]
    forest = reflectance(np.full((1, 101), 10, np.uint8), flat, 200, variety)
    assert np.ptp(forest[nir]) > 1000, "broadleaf to conifer spans > 10 % NIR reflectance"
    wetland = reflectance(np.full((1, 1), 90, np.uint8), flat[:, :1], 200)[:, 0, 0]
    broadleaf, conifer = forest[:, 0, 0], forest[:, 0, -1]
    # conifers look more like wetland than like broadleaf forest: spectra alone confuse them
    assert np.abs(conifer - wetland).mean() < np.abs(conifer - broadleaf).mean()

    rng = np.random.default_rng(0)
    spring, summer = bare_parcels(4000, 30, rng).mean(), bare_parcels(4000, 200, rng).mean()
    assert 0.6 < spring < 0.75 and 0.25 < summer < 0.4, (spring, summer)
    crops = np.full((1, 2), 40, np.uint8)
    fields = reflectance(crops, flat[:, :2], 200, None, np.array([[False, True]]))
    swir = sentinel2.BAND_NAMES.index("B11")
    assert fields[swir, 0, 1] > fields[swir, 0, 0] + 300, "bare soil is brighter in the SWIR"
    assert fields[nir, 0, 1] < fields[nir, 0, 0] - 500, "and darker in the NIR"


# --- Planetary Computer as it really is -------------------------------------------------


def test_dem_items_are_whole_degree_cells_continuous_across_their_edges(
    items: list[pystac.Item], truth: dict
) -> None:
    cells = _by_collection(items, dem.COLLECTION)
    assert {i.id for i in cells} == set(truth["dem_items"])
    by_corner = {}
    for item in cells:
        w, s, e, n = _bbox(item)
        assert [w, s, e, n] == [round(w), round(s), round(w) + 1, round(s) + 1], item.id
        ns, ew = ("N" if s >= 0 else "S"), ("E" if w >= 0 else "W")
        assert item.id == f"Copernicus_DSM_COG_10_{ns}{abs(s):02.0f}_00_{ew}{abs(w):03.0f}_00_DEM"
        asset = item.assets[dem.ASSET]
        assert asset.extra_fields["proj:epsg"] == 4326 == item.properties["proj:epsg"]
        dx, _, x0, _, dy, y0 = asset.extra_fields["proj:transform"]
        assert (x0, y0) == (w, n) and dx == -dy == pytest.approx(3 / 3600)  # below 50°N
        by_corner[(round(w), round(s))] = item
    # The region straddles 12°E: the 11-12° / 12-13° cell edge runs through it.
    assert {(11, 47), (12, 47)} <= set(by_corner)
    across, inside = _edge_seam(by_corner[(11, 47)], by_corner[(12, 47)])
    assert across < max(2 * inside, 3.0), f"a seam of {across:.1f} m at 12°E"
    # Each cell extrapolated half a pixel to the shared edge: both give the same elevation.
    a, b = _read(by_corner[(11, 47)], dem.ASSET), _read(by_corner[(12, 47)], dem.ASSET)
    from_west = a[:, -1] + (a[:, -1] - a[:, -2]) / 2
    from_east = b[:, 0] - (b[:, 1] - b[:, 0]) / 2
    assert np.abs(from_west - from_east).max() < 3.0


def test_dem_longitude_spacing_widens_towards_the_poles_as_copernicus_does() -> None:
    lats = (0, 47, 49, 50, 59, 60, 65, 70, 79, 80, 84, 85, 89)
    assert [dem_lon_factor(lat) for lat in lats] == [1, 1, 1, 1.5, 1.5, 2, 2, 3, 3, 5, 5, 10, 10]
    assert dem_lon_factor(-51) == 1.5 and dem_lon_factor(-50) == 1.0  # cells 51-50°S, 50-49°S


def test_worldcover_holds_the_2020_and_2021_maps_of_the_same_tiles(
    items: list[pystac.Item], truth: dict
) -> None:
    v100, v200 = _wc(items, "v100"), _wc(items, "v200")
    assert sorted(truth["worldcover_items"]) == ["v100", "v200"]
    assert {i.id for i in v100} == set(truth["worldcover_items"]["v100"])
    assert {i.id for i in v200} == set(truth["worldcover_items"]["v200"])
    assert len(v100) == len(v200) > 0
    confusion = np.zeros(256, np.uint8)
    for code, other in CHANGES_2020.items():
        confusion[code] = other
    changed = total = 0
    for new in v200:
        old = next(i for i in v100 if i.id == new.id.replace("_2021_v200_", "_2020_v100_"))
        assert "_2021_v200_" in new.id and old.bbox == new.bbox
        for item, year in ((old, "2020"), (new, "2021")):
            assert item.properties["start_datetime"].startswith(f"{year}-01-01")
            assert item.properties["end_datetime"].startswith(f"{year}-12-31")
            assert item.datetime is None
        assert old.properties["esa_worldcover:product_version"] == "1.0.0"
        a, b = _read(old, worldcover.ASSET), _read(new, worldcover.ASSET)
        diff = a != b
        assert (a[diff] == confusion[b[diff]]).all(), "2020 differs by the confusion table"
        changed += int(diff.sum())
        total += diff.size
    assert 0.01 < changed / total < 0.06, f"{changed / total:.3f} of pixels differ"


def test_a_second_orbit_images_one_tile_the_same_day_as_a_sliver(
    items: list[pystac.Item], truth: dict
) -> None:
    s2 = {i.id: i for i in _by_collection(items, sentinel2.COLLECTION)}
    slivers = [(t, s) for t in truth["tiles"] for s in t["scenes"] if s["sliver"]]
    assert len(slivers) == 1
    tile, scene = slivers[0]
    sliver = s2[scene["item_id"]]
    assert sliver.datetime is not None
    same_day = [s2[s["item_id"]] for s in tile["scenes"] if not s["sliver"]
                and s["datetime"][:10] == scene["datetime"][:10]]  # fmt: skip
    assert len(same_day) == 1
    full = same_day[0]
    assert full.datetime is not None and sliver.id != full.id
    for item in (sliver, full):
        match = S2_ID.match(item.id)
        assert match, item.id
        sensed, orbit, mgrs, _ = match.groups()
        assert mgrs == tile["mgrs"] == item.properties["s2:mgrs_tile"]
        assert int(orbit) == item.properties["sat:relative_orbit"]
        assert item.datetime is not None
        assert sensed == item.datetime.strftime("%Y%m%dT%H%M%S")
    assert sliver.properties["sat:relative_orbit"] != full.properties["sat:relative_orbit"]
    assert scene["relative_orbit"] == sliver.properties["sat:relative_orbit"]
    assert sliver.properties["platform"] == full.properties["platform"]
    minutes = (sliver.datetime - full.datetime).total_seconds() / 60
    assert 95 < minutes < 105, "one orbit later"
    # Mostly nodata, hardly a cloud: ranking by cloud cover alone would pick it.
    assert sliver.properties["s2:nodata_pixel_percentage"] >= 99.0
    assert sliver.properties["eo:cloud_cover"] < 1.0
    others = [s2[s["item_id"]] for s in tile["scenes"] if not s["sliver"]]
    assert sliver.properties["eo:cloud_cover"] < min(i.properties["eo:cloud_cover"] for i in others)
    assert 0 < (_read(sliver, "B02") != 0).mean() < 0.01


def test_item_geometry_is_the_data_footprint(items: list[pystac.Item]) -> None:
    cut = 0
    for item in _by_collection(items, sentinel2.COLLECTION):
        nodata = item.properties["s2:nodata_pixel_percentage"]
        geom = _utm(shape(item.geometry), item.properties["proj:epsg"])
        b02 = _read(item, "B02")
        data_area = float((b02 != 0).sum()) * 100.0  # m² of 10 m pixels with data
        assert geom.area == pytest.approx(data_area, rel=0.02 if nodata > 99 else 0.002), item.id
        assert shape(item.geometry).bounds == pytest.approx(_bbox(item))
        if nodata > 0:
            cut += 1
            assert geom.area < b02.size * 100.0 * (1 - nodata / 200), "smaller than the tile"
            assert len(geom.exterior.coords) > 8, "densified"  # type: ignore[attr-defined]
    assert cut >= 2, "swath-cut scenes and the sliver"


def test_datetimes_carry_fractions_of_a_second(items: list[pystac.Item]) -> None:
    for item in _by_collection(items, sentinel2.COLLECTION):
        text = item.properties["datetime"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
        assert item.datetime is not None and item.datetime.microsecond > 0, text


def test_dark_pixels_are_stored_at_or_below_the_offset_never_as_nodata(
    items: list[pystac.Item], truth: dict
) -> None:
    recorded = {s["item_id"]: s["dark_pixels"] for t in truth["tiles"] for s in t["scenes"]}
    total = 0
    for item in _by_collection(items, sentinel2.COLLECTION):
        has_offset = sentinel2.baseline_has_offset(item.properties["s2:processing_baseline"])
        footprint = _utm(shape(item.geometry), item.properties["proj:epsg"])
        dark = 0
        for band in sentinel2.BANDS:
            dn = _read(item, band.name)
            transform = rasterio.Affine(*item.assets[band.name].extra_fields["proj:transform"])
            res = band.resolution_m
            inside = ~geometry_mask([footprint.buffer(-res)], dn.shape, transform)
            outside = geometry_mask([footprint.buffer(res)], dn.shape, transform)
            assert (dn[inside] != 0).all(), f"{item.id} {band.name}: DN 0 inside the footprint"
            assert (dn[outside] == 0).all(), f"{item.id} {band.name}: data beyond the footprint"
            if has_offset:
                dark += int(((dn >= 1) & (dn <= 1000)).sum())
        assert dark == recorded[item.id], item.id
        total += dark
    assert total > 0, "water in the SWIR is stored at or below the +1000 offset"


def test_processing_baselines_follow_the_dates_of_esa_production() -> None:
    days = (date(2019, 1, 1), date(2021, 3, 15), date(2021, 5, 1), date(2021, 9, 24),
            date(2022, 1, 25), date(2022, 12, 6), date(2023, 12, 13), date(2025, 1, 1))  # fmt: skip
    expected = ["02.12", "02.14", "03.00", "03.01", "04.00", "05.09", "05.10", "05.10"]
    assert [processing_baseline(d) for d in days] == expected
    assert not sentinel2.baseline_has_offset(processing_baseline(date(2022, 1, 24)))
    assert sentinel2.baseline_has_offset(processing_baseline(date(2022, 1, 25)))


def test_utm_zones_of_any_longitude() -> None:
    lons = (11.99, 12.0, -150.01, -149.99, 179.99, 180.01, -179.99)
    expected = [32632, 32633, 32605, 32606, 32660, 32601, 32601]
    assert [utm_epsg(lon) for lon in lons] == expected


# --- Other regions: the western hemisphere and the antimeridian ---------------------------


@pytest.fixture(scope="module")
def region_worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small worlds in Alaska and across the antimeridian (~2 s each)."""
    out = {}
    for region in ("alaska", "antimeridian"):
        path = tmp_path_factory.mktemp("regions") / region
        generate_world(path, WorldConfig(region=region, **REGION_WORLD))
        out[region] = path
    return out


def _validate(item: pystac.Item) -> None:
    """Check the core STAC item schema (GeoJSON geometry, bbox, datetime) offline.

    pystac ships the core schemas; the extensions' would need the network.
    """
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    data["stac_extensions"] = []
    pystac.Item.from_dict(data, migrate=False).validate()


@pytest.mark.parametrize(
    ("region", "zones"), [("alaska", {32605, 32606}), ("antimeridian", {32660, 32601})]
)
def test_region_tiles_lie_in_both_zones_and_items_validate(
    region_worlds: dict[str, Path], region: str, zones: set[int]
) -> None:
    world = region_worlds[region]
    items = _items(world)
    truth = json.loads((world / "truth.json").read_text())
    s2 = _by_collection(items, sentinel2.COLLECTION)
    assert {i.properties["proj:epsg"] for i in s2} == zones == {t["epsg"] for t in truth["tiles"]}
    assert sum(s["sliver"] for t in truth["tiles"] for s in t["scenes"]) == 1
    for item in items:
        _validate(item)
        w, _, e, _ = _bbox(item)
        assert -180 <= w <= 180 and -180 <= e <= 180, item.id
        geom = shape(item.geometry)
        for part in getattr(geom, "geoms", [geom]):
            assert -180 <= part.bounds[0] <= part.bounds[2] <= 180, item.id
    for item in _by_collection(items, dem.COLLECTION) + _by_collection(
        items, worldcover.COLLECTION
    ):
        assert _bbox(item)[0] < _bbox(item)[2], f"{item.id}: a 4326 cell never crosses 180°"
    # Truth points (wrapped longitudes) agree with the WorldCover tiles and the DEM.
    _check_truth_points(items, truth)


def test_alaska_lies_in_the_western_hemisphere(region_worlds: dict[str, Path]) -> None:
    items = _items(region_worlds["alaska"])
    cells = _by_collection(items, dem.COLLECTION)
    assert {"Copernicus_DSM_COG_10_N61_00_W151_00_DEM",
            "Copernicus_DSM_COG_10_N61_00_W150_00_DEM"} <= {i.id for i in cells}  # fmt: skip
    for item in cells:
        dx, _, _, _, dy, _ = item.assets[dem.ASSET].extra_fields["proj:transform"]
        assert dx == pytest.approx(-2 * dy), "longitude spacing doubled at 60-70°N"
    tiles = {i.properties["s2:mgrs_tile"] for i in _by_collection(items, sentinel2.COLLECTION)}
    assert {t[:2] for t in tiles} == {"05", "06"}
    assert all(_bbox(i)[2] < 0 for i in items)


def test_antimeridian_geometries_are_split_at_180(region_worlds: dict[str, Path]) -> None:
    world = region_worlds["antimeridian"]
    items = _items(world)
    truth = json.loads((world / "truth.json").read_text())
    west, _, east, _ = truth["region"]
    assert west > east, "the region's box crosses 180°: west > east"
    crossing = 0
    tiles: dict[int, BaseGeometry] = {}
    for item in _by_collection(items, sentinel2.COLLECTION):
        geom = shape(item.geometry)
        if _bbox(item)[0] <= _bbox(item)[2]:
            continue
        crossing += 1
        assert geom.geom_type == "MultiPolygon", item.id
        east_part, west_part = sorted(geom.geoms, key=lambda g: g.bounds[0])  # type: ignore[attr-defined]
        assert east_part.bounds[0] == -180 and west_part.bounds[2] == 180
        stac_box = [west_part.bounds[0], geom.bounds[1], east_part.bounds[2], geom.bounds[3]]
        assert _bbox(item) == pytest.approx(stac_box), "bbox: west > east"
        shifted = shapely.transform(east_part, lambda xy: xy + [360.0, 0.0])
        whole = unary_union([west_part, shifted])
        assert whole.geom_type == "Polygon", "the two parts meet at 180°"
        if not item.properties["s2:nodata_pixel_percentage"]:
            tiles[item.properties["proj:epsg"]] = whole
    assert crossing >= 2
    assert tiles[32660].intersection(tiles[32601]).area > 0, "zones 60 and 1 overlap at 180°"
    cells = {i.id: i for i in _by_collection(items, dem.COLLECTION)}
    e179 = cells["Copernicus_DSM_COG_10_N65_00_E179_00_DEM"]
    w180 = cells["Copernicus_DSM_COG_10_N65_00_W180_00_DEM"]
    assert e179.bbox == [179, 65, 180, 66] and w180.bbox == [-180, 65, -179, 66]
    across, inside = _edge_seam(e179, w180)
    assert across < max(2 * inside, 3.0), f"a seam of {across:.1f} m at 180°"
    # The master rasters run on past 180° (unwrapped longitudes), as truth.json says.
    assert truth["master"]["unwrapped_longitudes"]
    with rasterio.open(world / truth["master"]["elevation"]) as src:
        assert src.crs.to_epsg() == 4326 and src.bounds.left < 180 < src.bounds.right


def test_a_relative_output_path_gives_hrefs_that_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eomae world worlds/w1`: hrefs must not point into the temporary build folder."""
    monkeypatch.chdir(tmp_path)
    generate_world(Path("worlds/w1"), SMALL)
    items = _items(tmp_path / "worlds" / "w1")
    assert items
    for item in items:
        for asset in item.assets.values():
            href = asset.get_absolute_href()
            assert href is not None and ".tmp-" not in href, href
            assert Path(href).is_file(), href


def test_a_world_of_many_tiles_is_rows_of_unique_tiles_that_plan_and_ingest(
    tmp_path: Path,
) -> None:
    from ingest.config import IngestConfig
    from ingest.locations import SampleConfig, read_cells, sample_locations, write_cells
    from ingest.plan_cells import make_cells_plan
    from ingest.run import process_unit
    from ingest.snapshot import SnapshotCatalog, write_snapshot

    world = tmp_path / "world"
    generate_world(world, WorldConfig(tiles=30, dates=2, tile_size=120, markers_per_tile=0,
                                      points_per_tile=1))  # fmt: skip
    truth = json.loads((world / "truth.json").read_text())
    tiles = truth["tiles"]
    assert len({t["mgrs"] for t in tiles}) == 30  # unique names
    tops = sorted({round(t["bbox"][3], 3) for t in tiles}, reverse=True)
    assert len(tops) >= 5  # five rows of six, southwards
    for top in tops[:5]:
        row = [t for t in tiles if round(t["bbox"][3], 3) == top]
        assert {t["epsg"] for t in row} == {32632, 32633}  # each row across the boundary

    # its items, with hrefs made absolute, plan a scattered corpus and ingest a unit
    snapshot = write_snapshot(local_items(world), tmp_path / "catalog.parquet")
    sample = SampleConfig(strategy="uniform", bbox=[tuple(truth["region"])], count=40, seed=2)
    locations = write_cells(sample_locations(sample), tmp_path / "cells.parquet")
    cfg = IngestConfig(locations=locations, catalog_snapshot=snapshot, start="2021-01-01",
                       end="2022-12-31", max_cloud_cover=100.0, scenes_per_tile=1,
                       run_dir=str(tmp_path / "run"))  # fmt: skip
    cells = read_cells(locations)
    plan = make_cells_plan(cfg, SnapshotCatalog(snapshot), cells)
    alone = [s for s in plan.skipped if s.item_id.startswith("cell ")]
    assert len({u.target.name for u in plan.units}) + len(alone) == len(cells)
    assert len({u.mgrs_tile for u in plan.units}) > 6  # beyond the first row's tiles
    result = process_unit(plan.units[0], str(tmp_path / "cube.zarr"), 64, 4)
    assert result.status == "done", result.reason
