"""Copernicus DEM GLO-30 as Planetary Computer publishes it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.enums import Resampling

from ingest.grid import Grid
from ingest.mosaic import mosaic

COLLECTION = "cop-dem-glo-30"
ASSET = "data"
RESOLUTION_DEG = 1 / 3600  # 1 arc-second, ~30 m
DTYPE = "float32"
RESAMPLING = Resampling.bilinear


def read(hrefs: Sequence[str], grid: Grid) -> tuple[np.ndarray, int]:
    """Elevation (float32 m, NaN where no item covers) mosaicked onto `grid`, bilinear."""
    return mosaic(hrefs, grid, RESAMPLING, nodata=float("nan"), dtype=DTYPE)
