"""Sentinel-2 L2A as PC serves it: harmonising baselines, masks, scene identity."""

from __future__ import annotations

import numpy as np
import pytest

from infra.world.pc_items import s2_item
from ingest.cube import COVERAGE_BITS
from ingest.run import unit_arrays
from ingest.sources import sentinel2

ALASKA = ("06VVN", 32606, 499980.0, 6800040.0)


@pytest.mark.parametrize(
    ("baseline", "offset"), [("02.12", False), ("03.01", False), ("04.00", True),
                             ("05.09", True), ("05.10", True)],
)  # fmt: skip
def test_harmonising_keeps_dark_pixels_valid_and_nodata_nodata(baseline: str, offset: bool) -> None:
    stored = np.array([0, 1, 500, 1000, 1001, 3000], dtype=np.uint16)
    dn = np.broadcast_to(stored, (12, 6)).copy()
    out = sentinel2.harmonise(dn, baseline)
    assert out.dtype == np.uint16
    if offset:
        # dark water and shadow (DN <= 1000: reflectance <= 0) become the darkest value, 1
        assert out[0].tolist() == [0, 1, 1, 1, 1, 2000]
    else:
        assert out[0].tolist() == stored.tolist()


def test_a_valid_pixel_never_carries_the_nodata_value() -> None:
    rng = np.random.default_rng(0)
    dn = rng.integers(1, 1400, size=(12, 32, 32), dtype=np.uint16)  # dark scene, baseline 05.10
    dn[:, :, :4] = sentinel2.NODATA  # a swath edge
    scl = np.full((32, 32), int(sentinel2.SceneClass.WATER), np.uint8)
    scl[:, :4] = int(sentinel2.SceneClass.NO_DATA)
    elevation = np.full((32, 32), 12.0, np.float32)
    elevation[-2:] = np.nan  # no DEM there
    landcover = np.full((32, 32), 80, np.uint8)
    arrays = unit_arrays(dn, scl, elevation, landcover, "05.10")
    valid, s2 = arrays["valid"], arrays["s2"]
    assert valid.sum() == 28 * 30
    assert (s2[:, valid] != sentinel2.NODATA).all(), "dark water stays data"
    assert (s2[:, :, :4] == sentinel2.NODATA).all()
    coverage = arrays["coverage"]
    assert ((coverage & COVERAGE_BITS["s2"]) > 0).sum() == 32 * 28
    assert ((coverage & COVERAGE_BITS["dem"]) > 0).sum() == 30 * 32
    assert ((coverage & COVERAGE_BITS["lc"]) > 0).all()


def test_scene_identity_from_pc_items() -> None:
    tile, epsg, left, top = ALASKA
    item = s2_item(tile, epsg, left, top, "2021-06-10T22:45:29.125000Z", orbit=73, platform="S2B")
    assert sentinel2.relative_orbit(item) == 73 and sentinel2.platform_code(item) == "S2B"
    del item["properties"]["sat:relative_orbit"]
    assert sentinel2.relative_orbit(item) == 73, "from the id's R073"
    assert sentinel2.baseline_key("05.10") > sentinel2.baseline_key("05.09") > (4, 0)


def test_usable_share_of_slivers_and_whole_tile_geometries() -> None:
    tile, epsg, left, top = ALASKA
    when = "2021-06-10T22:45:29.125000Z"
    full = s2_item(tile, epsg, left, top, when, orbit=1, cloud=10.0)
    sliver = s2_item(tile, epsg, left, top, when, orbit=2, cloud=0.8, nodata=99.6,
                     data=(0.996, 1.0))  # fmt: skip
    boxy = s2_item(tile, epsg, left, top, when, orbit=3, cloud=0.8, nodata=99.6, geometry="tile")
    assert sentinel2.usable_share(full) == pytest.approx(0.9, abs=1e-3)
    assert sentinel2.usable_share(sliver) == pytest.approx(0.004 * 0.992, rel=0.05)
    assert sentinel2.usable_share(boxy) == pytest.approx(0.004 * 0.992, rel=0.05)
