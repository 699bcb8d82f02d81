"""Mosaics of items in geographic coordinates (DEM cells, land-cover tiles) onto a grid.

The items covering a grid are first put together in their own CRS, at the finest
resolution among them, and the mosaic is warped onto the grid once. Warping each item on
its own and stacking the results leaves a seam along every item edge: there the
bilinear kernel lacks the neighbouring item's pixels. A grid whose footprint crosses
180° is mosaicked in longitudes centred on 180°, so cells from both sides (E179, W180)
join without a gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window, from_bounds

from ingest.grid import Grid, parts, wrap_lon
from ingest.raster import ReadError, read_signed, redact, retry_transient

MARGIN_PX = 2  # source pixels around the footprint, so the kernel has neighbours at its edge
Bounds = tuple[float, float, float, float]


def geographic_crs(lon0: float) -> CRS:
    """WGS 84 lon/lat with longitudes counted from `lon0` (EPSG:4326 when it is 0)."""
    if lon0 == 0:
        return CRS.from_epsg(4326)
    return CRS.from_proj4(f"+proj=longlat +datum=WGS84 +lon_0={lon0:g} +no_defs")


def footprint_bounds(grid: Grid) -> tuple[float, Bounds]:
    """(lon0, bounds of the grid's footprint in longitudes counted from lon0).

    lon0 is 180 for a footprint split at the antimeridian, else 0.
    """
    footprint = grid.footprint()
    polygons = parts(footprint)
    lon0 = 180.0 if len(polygons) > 1 else 0.0
    xs, ys = [], []
    for part in polygons:
        for x, y in part.exterior.coords:
            xs.append(wrap_lon(x - lon0))
            ys.append(y)
    return lon0, (min(xs), min(ys), max(xs), max(ys))


@retry_transient
def _read_piece(href: str, lon0: float, want: Bounds) -> tuple[np.ndarray, Affine] | None:
    """The part of `href` inside `want` (plus a margin), with its transform counted from lon0.

    None when the item does not reach into `want`.
    """
    with rasterio.open(href) as src:
        if src.crs is None or not src.crs.is_geographic:
            raise ReadError(f"{redact(href)} is not in geographic coordinates")
        t = src.transform
        shifted = Affine(t.a, t.b, wrap_lon(t.c - lon0), t.d, t.e, t.f)
        mx, my = MARGIN_PX * abs(t.a), MARGIN_PX * abs(t.e)
        window = from_bounds(want[0] - mx, want[1] - my, want[2] + mx, want[3] + my, shifted)
        col0, row0 = max(math.floor(window.col_off), 0), max(math.floor(window.row_off), 0)
        col1 = min(math.ceil(window.col_off + window.width), src.width)
        row1 = min(math.ceil(window.row_off + window.height), src.height)
        if col1 <= col0 or row1 <= row0:
            return None
        win = Window(col0, row0, col1 - col0, row1 - row0)
        return src.read(1, window=win), shifted @ Affine.translation(col0, row0)


def mosaic(
    hrefs: Sequence[str],
    grid: Grid,
    resampling: Resampling,
    *,
    nodata: float,
    dtype: str,
) -> tuple[np.ndarray, int]:
    """The items' band 1 mosaicked in their CRS, then warped onto `grid` once.

    Pixels no item covers get `nodata`. Returns the array and the bytes read.
    """
    lon0, want = footprint_bounds(grid)
    pieces = []
    for href in hrefs:
        piece = read_signed(href, lambda signed: _read_piece(signed, lon0, want))
        if piece is not None:
            pieces.append(piece)
    out = np.full((grid.height, grid.width), nodata, dtype=dtype)
    if not pieces:
        return out, 0
    crs = geographic_crs(lon0)
    xres = min(abs(t.a) for _, t in pieces)
    yres = min(abs(t.e) for _, t in pieces)
    west = min(t.c for _, t in pieces)
    north = max(t.f for _, t in pieces)
    east = max(t.c + a.shape[1] * abs(t.a) for a, t in pieces)
    south = min(t.f - a.shape[0] * abs(t.e) for a, t in pieces)
    canvas_transform = Affine(xres, 0, west, 0, -yres, north)
    canvas = np.full(
        (round((north - south) / yres), round((east - west) / xres)), nodata, dtype=dtype
    )
    for array, transform in pieces:  # items of one product overlap with equal values
        reproject(
            array.astype(dtype, copy=False), canvas,
            src_transform=transform, src_crs=crs, src_nodata=nodata,
            dst_transform=canvas_transform, dst_crs=crs, dst_nodata=nodata,
            resampling=resampling, init_dest_nodata=False,
        )  # fmt: skip
    reproject(
        canvas, out,
        src_transform=canvas_transform, src_crs=crs, src_nodata=nodata,
        dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=nodata,
        resampling=resampling,
    )  # fmt: skip
    return out, sum(a.nbytes for a, _ in pieces)
