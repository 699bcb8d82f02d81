"""Writing Cloud-Optimized GeoTIFFs with GDAL's COG driver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

BLOCKSIZE = 256


def write_cog(
    path: Path,
    data: np.ndarray,
    *,
    crs: str,
    transform: Affine,
    nodata: float | None,
    categorical: bool = False,
) -> None:
    """Write a single-band [H, W] array as a tiled, compressed COG with overviews.

    Overviews use nearest (mode would invent codes at class borders) for categorical rasters,
    average otherwise. GDAL adds overview levels until one fits a block.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    floating = np.issubdtype(data.dtype, np.floating)
    profile = {
        "driver": "COG",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "blocksize": BLOCKSIZE,
        "compress": "deflate",
        "predictor": "NO" if categorical else ("FLOATING_POINT" if floating else "STANDARD"),
        "overview_resampling": "nearest" if categorical else "average",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
