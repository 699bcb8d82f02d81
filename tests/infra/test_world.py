"""The sample world: valid COGs, PC-shaped items consistent with their rasters, truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from shapely.geometry import box, shape
from shapely.ops import unary_union

from eomae.cli import main
from infra.world import WorldConfig, WorldError, generate_world
from infra.world.landscape import bare_parcels, reflectance
from infra.world.sentinel2 import MARKER_SPECTRUM
from ingest.sources import dem, sentinel2, worldcover

SMALL = WorldConfig(tiles=2, dates=2, tile_size=120, markers_per_tile=1, points_per_tile=3)


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
    assert len(s2) == 3 * 4
    for item in s2:
        assert set(item.assets) == set(sentinel2.BAND_NAMES) | {sentinel2.SCL_ASSET}
        props = item.properties
        for key in ("eo:cloud_cover", "s2:processing_baseline", "s2:mgrs_tile", "proj:epsg"):
            assert key in props, key
        assert item.id.startswith(("S2A_MSIL2A_", "S2B_MSIL2A_"))
        assert f"_T{props['s2:mgrs_tile']}_" in item.id
        assert shape(item.geometry).bounds == pytest.approx(item.bbox)
    assert {i.properties["proj:epsg"] for i in s2} == {32632, 32633}, "two UTM zones"
    assert {i.properties["s2:processing_baseline"] for i in s2} == {"03.01", "04.00"}


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
    assert checked == {"03.01", "04.00"}


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


def test_dem_and_worldcover_cover_every_tile_with_overlapping_items(
    items: list[pystac.Item],
) -> None:
    for cid, asset in ((dem.COLLECTION, dem.ASSET), (worldcover.COLLECTION, worldcover.ASSET)):
        aux = _by_collection(items, cid)
        assert all(asset in i.assets for i in aux)
        union = unary_union([box(*i.bbox) for i in aux])
        for s2 in _by_collection(items, sentinel2.COLLECTION):
            assert union.contains(shape(s2.geometry)), f"{cid} does not cover {s2.id}"
            hits = [i for i in aux if box(*i.bbox).intersects(shape(s2.geometry))]
            assert len(hits) >= 2, "a tile needs several items: mosaicking is exercised"
    dems = [box(*i.bbox) for i in _by_collection(items, dem.COLLECTION)]
    assert any(a.intersection(b).area > 0 for k, a in enumerate(dems) for b in dems[k + 1 :])


def test_ground_truth_points_match_worldcover_and_dem(
    items: list[pystac.Item], truth: dict
) -> None:
    wc = _by_collection(items, worldcover.COLLECTION)
    dm = _by_collection(items, dem.COLLECTION)
    assert {p["tile"] for p in truth["points"]} == {t["mgrs"] for t in truth["tiles"]}
    for p in truth["points"]:
        for coll, key in ((wc, "landcover"), (dm, "elevation")):
            item = next(
                i
                for i in coll
                if box(*i.bbox).contains(box(p["lon"], p["lat"], p["lon"], p["lat"]).centroid)
            )
            with rasterio.open(next(iter(item.assets.values())).get_absolute_href()) as src:
                value = next(src.sample([(p["lon"], p["lat"])]))[0]
            if key == "landcover":
                assert value == p["landcover"]
            else:
                assert value == pytest.approx(p["elevation"], abs=15.0)


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
