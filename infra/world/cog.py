"""Writing Cloud-Optimized GeoTIFFs with GDAL's COG driver.

`write_cog` takes a whole array; `write_cogs_windowed` streams rasters too large to hold,
window by window, for a bounded memory footprint whatever their size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

BLOCKSIZE = 256
# GDAL's block cache defaults to 5 % of the machine's memory, so a streamed write would
# grow with the machine; this bounds it (MB).
WINDOWED_CACHE_MB = 128


def _cog_options(dtype: str, categorical: bool) -> dict[str, Any]:
    """Tiling, compression and overview resampling of our COGs.

    Overviews use nearest (mode would invent codes at class borders) for categorical rasters,
    average otherwise. GDAL adds overview levels until one fits a block.
    """
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    return {
        "blocksize": BLOCKSIZE,
        "compress": "deflate",
        "predictor": "NO" if categorical else ("FLOATING_POINT" if floating else "STANDARD"),
        "overview_resampling": "nearest" if categorical else "average",
    }


def write_cog(
    path: Path,
    data: np.ndarray,
    *,
    crs: str,
    transform: Affine,
    nodata: float | None,
    categorical: bool = False,
) -> None:
    """Write a single-band [H, W] array as a tiled, compressed COG with overviews."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "COG",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        **_cog_options(data.dtype.name, categorical),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@dataclass(frozen=True)
class CogSpec:
    """One single-band output of `write_cogs_windowed`."""

    path: Path
    dtype: str
    nodata: float | None
    categorical: bool = False


def windows(shape: tuple[int, int], block: int) -> Iterator[Window]:
    """Windows of at most `block` x `block` pixels tiling a (height, width) grid, row-major."""
    height, width = shape
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def write_cogs_windowed(
    specs: Sequence[CogSpec],
    *,
    crs: str,
    transform: Affine,
    shape: tuple[int, int],
    render: Callable[[Window], Sequence[np.ndarray]],
    block: int,
) -> None:
    """Write rasters sharing one grid, `render`ed window by window, as COGs.

    `render(window)` returns one [h, w] array per spec, in order. The COG driver can only
    copy a finished dataset, so the windows go to a tiled GTiff beside each output first,
    which GDAL then copies (streaming, overviews included) into the COG and which is
    deleted. Nothing larger than a window and GDAL's bounded block cache is held, and an
    output path exists only once its COG is complete.
    """
    tmps = [s.path.with_name(f".{s.path.name}.partial") for s in specs]
    # Uncompressed: it lives only until the copy, and compressing it twice costs time.
    staging = {"driver": "GTiff", "tiled": True, "blockxsize": BLOCKSIZE,
               "blockysize": BLOCKSIZE, "bigtiff": "IF_SAFER"}  # fmt: skip
    with rasterio.Env(GDAL_CACHEMAX=WINDOWED_CACHE_MB):
        try:
            with ExitStack() as stack:
                outs = []
                for spec, tmp in zip(specs, tmps, strict=True):
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    outs.append(stack.enter_context(rasterio.open(
                        tmp, "w", height=shape[0], width=shape[1], count=1, dtype=spec.dtype,
                        crs=crs, transform=transform, nodata=spec.nodata, **staging,
                    )))  # fmt: skip
                for window in windows(shape, block):
                    arrays = render(window)
                    for dst, data in zip(outs, arrays, strict=True):
                        dst.write(data, 1, window=window)
            for spec, tmp in zip(specs, tmps, strict=True):
                options = _cog_options(spec.dtype, spec.categorical)
                rasterio.shutil.copy(tmp, spec.path, driver="COG", num_threads="ALL_CPUS",
                                     **options)  # fmt: skip
                tmp.unlink()
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
