"""The cube against the sample world's ground truth: land cover, elevation, band alignment,
harmonisation, grid and format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from pyproj import Transformer

from infra.world.sentinel2 import MARKER_SPECTRUM
from ingest.config import IngestConfig
from ingest.cube import open_cube
from ingest.sources import sentinel2, worldcover

Ingested = tuple[IngestConfig, dict[str, Any]]


def units(cfg: IngestConfig) -> Iterator[tuple[str, zarr.Group]]:
    cube = open_cube(f"{cfg.run_dir}/cube.zarr")
    for name in sorted(cube.group_keys()):
        yield name, cube[name]


def pixel(group: zarr.Group, lon: float, lat: float) -> tuple[float, float]:
    """Fractional (row, col) of a lon/lat point in a unit's grid."""
    x, y = Transformer.from_crs(4326, group.attrs["epsg"], always_xy=True).transform(lon, lat)
    a, _, c, _, e, f = group.attrs["transform"]
    return (y - f) / e, (x - c) / a


def test_every_planned_unit_was_written(ingested: Ingested) -> None:
    cfg, summary = ingested
    assert summary["failed"] == []
    assert summary["done"] == summary["units"] == 12  # 3 tiles x 4 dates, no cloud limit
    assert sum(1 for _ in units(cfg)) == 12


def test_land_cover_at_ground_truth_points(ingested: Ingested, truth: dict) -> None:
    cfg, _ = ingested
    checked = set()
    for _, group in units(cfg):
        lc = group["lc"][:]
        for p in (p for p in truth["points"] if p["tile"] == group.attrs["mgrs_tile"]):
            r, c = (int(v) for v in pixel(group, p["lon"], p["lat"]))
            if 0 <= r < lc.shape[0] and 0 <= c < lc.shape[1]:
                assert lc[r, c] == p["landcover"], (group.attrs["mgrs_tile"], p)
                checked.add(group.attrs["epsg"])
    assert checked == {32632, 32633}, "both UTM zones were checked"


def test_dem_matches_ground_truth_elevation(ingested: Ingested, truth: dict) -> None:
    cfg, _ = ingested
    errors = []
    for _, group in units(cfg):
        dem = group["dem"][:]
        for p in (p for p in truth["points"] if p["tile"] == group.attrs["mgrs_tile"]):
            r, c = (int(v) for v in pixel(group, p["lon"], p["lat"]))
            if 0 <= r < dem.shape[0] and 0 <= c < dem.shape[1]:
                errors.append(abs(float(dem[r, c]) - p["elevation"]))
    assert len(errors) > 50
    assert max(errors) < 10.0, f"elevation off by up to {max(errors):.1f} m"


def _marker_sites(cfg: IngestConfig, truth: dict) -> Iterator[tuple[zarr.Group, float, float]]:
    """(unit, row, col) of every calibration target inside its own tile's unit, clear sky."""
    for _, group in units(cfg):
        valid = group["valid"][:]
        for m in (m for m in truth["markers"] if m["tile"] == group.attrs["mgrs_tile"]):
            row, col = pixel(group, m["lon"], m["lat"])
            r, c = int(row), int(col)
            if 20 <= r < valid.shape[0] - 20 and 20 <= c < valid.shape[1] - 20 and valid[r, c]:
                yield group, row, col


def test_10_20_60_m_bands_are_co_registered(ingested: Ingested, truth: dict) -> None:
    """Each band's copy of a calibration target is centred on its true position (±0.5 px)."""
    cfg, _ = ingested
    n = 0
    for group, row, col in _marker_sites(cfg, truth):
        r0, c0 = int(row) - 20, int(col) - 20
        window = group["s2"][:, r0 : r0 + 40, c0 : c0 + 40]
        for b, band in enumerate(sentinel2.BANDS):
            on_target = np.abs(window[b].astype(float) - MARKER_SPECTRUM[b]) < 1
            rows, cols = np.nonzero(on_target)
            assert rows.size >= 4, f"{band.name}: target not found"
            centre = (rows.mean() + r0 + 0.5, cols.mean() + c0 + 0.5)
            assert centre == pytest.approx((row, col), abs=0.5), band.name
        n += 1
    assert n >= 4


def test_harmonised_values_agree_across_baselines(ingested: Ingested, truth: dict) -> None:
    """An invariant surface reads the same before and after baseline 04.00 (offset removed)."""
    cfg, _ = ingested
    baselines = set()
    for group, row, col in _marker_sites(cfg, truth):
        values = group["s2"][:, int(row), int(col)]
        assert values.tolist() == MARKER_SPECTRUM.astype(int).tolist()
        baselines.add(group.attrs["processing_baseline"])
    offsets = {sentinel2.baseline_has_offset(b) for b in baselines}
    assert offsets == {True, False}, f"scenes with and without the offset: {baselines}"


def test_grid_snaps_to_chips_and_arrays_are_chunked_by_chip(ingested: Ingested) -> None:
    cfg, _ = ingested
    extent = cfg.chip_size * 10
    for _, group in units(cfg):
        a, _, left, _, e, top = group.attrs["transform"]
        assert (a, e) == (10, -10)
        assert left % extent == 0 and top % extent == 0
        assert group["s2"].shape[1] % cfg.chip_size == 0
        assert group["s2"].chunks == (12, cfg.chip_size, cfg.chip_size)
        assert group["valid"].chunks == (cfg.chip_size, cfg.chip_size)
        assert group["s2"].dtype == np.uint16 and group["dem"].dtype == np.float32
        assert set(np.unique(group["lc"][:]).tolist()) <= set(worldcover.CODES)


def test_validity_mask_excludes_clouds_shadows_and_nodata(ingested: Ingested) -> None:
    cfg, _ = ingested
    invalid = [int(c) for c in sentinel2.INVALID_CLASSES]
    for _, group in units(cfg):
        valid, scl = group["valid"][:], group["scl"][:]
        assert not (valid & np.isin(scl, invalid)).any()
        assert group.attrs["valid_fraction"] == pytest.approx(valid.mean(), abs=1e-4)
    fractions = [g.attrs["valid_fraction"] for _, g in units(cfg)]
    assert min(fractions) < 0.5 < max(fractions), "cloudy and clear scenes both present"


def test_valid_pixels_never_hold_the_nodata_value(ingested: Ingested, truth: dict) -> None:
    """Dark pixels stored at or below the +1000 offset stay data after harmonising."""
    cfg, _ = ingested
    dark = {s["item_id"] for t in truth["tiles"] for s in t["scenes"] if s["dark_pixels"]}
    darkest = []
    for _, group in units(cfg):
        s2, valid = group["s2"][:], group["valid"][:]
        assert not ((s2 == sentinel2.NODATA).any(axis=0) & valid).any()
        if group.attrs["items"]["s2"] in dark:
            darkest.append(int(s2[:, valid].min()))
    assert darkest and min(darkest) == 1, "a dark pixel at the offset became 1, not 0"


def test_cube_opens_in_xarray_with_dims_coords_and_crs(ingested: Ingested) -> None:
    cfg, _ = ingested
    name, group = next(units(cfg))
    ds = xr.open_zarr(f"{cfg.run_dir}/cube.zarr", group=name, consolidated=False)
    assert ds["s2"].dims == ("band", "y", "x")
    assert ds["valid"].dims == ("y", "x")
    a, _, left, _, _, top = group.attrs["transform"]
    assert float(ds.x[0]) == left + a / 2 and float(ds.y[0]) == top - a / 2
    assert ds["s2"].attrs["grid_mapping"] == "spatial_ref"
    assert str(group.attrs["epsg"]) in ds["spatial_ref"].attrs["crs_wkt"]
    assert group.attrs["bands"] == list(sentinel2.BAND_NAMES)
    assert group.attrs["items"]["s2"] and group.attrs["hrefs"]["dem"]
