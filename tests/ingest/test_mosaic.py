"""Mosaics of geographic items: no seam at item edges, also across the antimeridian."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling

from ingest.grid import RESOLUTION_M, Grid
from ingest.mosaic import mosaic
from ingest.raster import read_into_grid

SPACING = 1 / 120  # 30": coarser than Copernicus' 1", the same layout


def _cell(
    root: Path, lon: int, lat: int, height: Callable[..., np.ndarray], xspacing: float = SPACING
) -> str:
    """A 1° DEM cell as Copernicus lays it out: pixel centres on whole degrees."""
    n_x, n_y = round(1 / xspacing), round(1 / SPACING)
    west, north = lon - xspacing / 2, lat + 1 + SPACING / 2
    transform = Affine(xspacing, 0, west, 0, -SPACING, north)
    cols, rows = np.meshgrid(np.arange(n_x) + 0.5, np.arange(n_y) + 0.5)
    x, y = transform @ (cols, rows)
    path = root / f"cell_{lon}_{lat}.tif"
    profile = {"driver": "COG", "width": n_x, "height": n_y, "count": 1, "dtype": "float32",
               "crs": "EPSG:4326", "transform": transform, "blocksize": 64}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(height(np.asarray(x), np.asarray(y)).astype(np.float32), 1)
    return str(path)


def _centres_lonlat(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    x = grid.left + (np.arange(grid.width) + 0.5) * RESOLUTION_M
    y = grid.top - (np.arange(grid.height) + 0.5) * RESOLUTION_M
    xx, yy = np.meshgrid(x, y)
    return Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(xx, yy)


def _grid_around(epsg: int, lon: float, lat: float, size_px: int = 400) -> Grid:
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    half = size_px * RESOLUTION_M / 2
    return Grid(epsg, float(round(x - half, -1)), float(round(y + half, -1)), size_px, size_px)


def test_elevation_is_continuous_across_a_cell_edge(tmp_path: Path) -> None:
    def plane(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return 800.0 + 3000.0 * (lon - 13.0) - 2000.0 * (lat - 47.5)  # bilinear is exact on it

    hrefs = [_cell(tmp_path, 12, 47, plane), _cell(tmp_path, 13, 47, plane)]
    grid = _grid_around(32633, 13.0, 47.5)  # the 13°E edge runs through the middle
    elevation, nbytes = mosaic(hrefs, grid, Resampling.bilinear, nodata=np.nan, dtype="float32")
    truth = plane(*_centres_lonlat(grid))
    assert np.isfinite(elevation).all()
    assert np.abs(elevation - truth).max() < 0.5, "no seam: within 0.5 m of the plane everywhere"
    assert 0 < nbytes < 2 * 120 * 120 * 4, "only the windows around the grid are read"

    # Warping each cell on its own and stacking them (what ingest did) leaves a seam.
    layers = [read_into_grid(h, grid, Resampling.bilinear, nodata=np.nan, dtype="float32")[0]
              for h in hrefs]  # fmt: skip
    stacked = np.where(np.isfinite(layers[0]), layers[0], layers[1])
    assert not (np.abs(stacked - truth) < 0.5).all()


def test_cells_of_different_spacing_and_across_180_degrees(tmp_path: Path) -> None:
    def ramp(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        unwrapped = np.where(lon < 0, lon + 360.0, lon)  # continuous across 180°
        return 300.0 + 1500.0 * (unwrapped - 180.0) + 900.0 * (lat - 65.0)

    # 65..66°N: Copernicus widens the longitude spacing to 2x there.
    wide = 2 * SPACING
    hrefs = [_cell(tmp_path, lon, lat, ramp, wide) for lon in (179, -180) for lat in (64, 65)]
    for epsg in (32660, 32601):  # the UTM zones west and east of 180°
        grid = _grid_around(epsg, 180.0, 65.0)
        assert grid.footprint().geom_type == "MultiPolygon"
        elevation, _ = mosaic(hrefs, grid, Resampling.bilinear, nodata=np.nan, dtype="float32")
        truth = ramp(*_centres_lonlat(grid))
        assert np.isfinite(elevation).all(), epsg
        assert np.abs(elevation - truth).max() < 0.5, epsg


def test_land_cover_mosaic_keeps_codes_and_leaves_gaps_empty(tmp_path: Path) -> None:
    def classes(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return np.where((lon * 50).astype(int) % 2 == 0, 10, 40)

    hrefs = [_cell(tmp_path, 12, 47, classes)]  # nothing east of 13°E
    grid = _grid_around(32633, 13.0, 47.5)
    lc, _ = mosaic(hrefs, grid, Resampling.nearest, nodata=0, dtype="uint8")
    lon, _ = _centres_lonlat(grid)
    assert set(np.unique(lc)) <= {0, 10, 40}
    assert (lc[lon > 13.0 + SPACING] == 0).all() and (lc[lon < 13.0 - SPACING] != 0).all()


def test_an_item_outside_the_grid_is_not_read(tmp_path: Path) -> None:
    far = _cell(tmp_path, 20, 47, lambda lon, lat: lon * 0 + 1.0)
    grid = _grid_around(32633, 13.0, 47.5)
    elevation, nbytes = mosaic([far], grid, Resampling.bilinear, nodata=np.nan, dtype="float32")
    assert nbytes == 0 and np.isnan(elevation).all()
