"""Dataset statistics of a cube with dask: per-band mean/std over valid pixels, class counts.

Chunk-wise sums (float64) over every unit, combined in one `dask.compute`, so the cube is
never in memory at once. The loader normalises with these numbers.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from ingest.cube import open_cube
from shards.modalities import DEM, LC, S2

STATS_BLOCK = 1024  # pixels per side of a dask task


def _load(group: Any, name: str) -> da.Array:
    # Tasks of many zarr chunks: with the cube's chip-sized chunks, dask's scheduling
    # overhead would dominate the sums.
    arr = group[name]
    return da.from_zarr(arr, chunks=(*arr.shape[:-2], STATS_BLOCK, STATS_BLOCK))


def _moments(x: da.Array, valid: da.Array) -> tuple[da.Array, da.Array, da.Array]:
    """Per-band count, sum and sum of squares of (bands, H, W) over valid pixels."""
    v = valid[None]  # one count for all bands: the mask is per pixel
    xf = da.where(v, x.astype("float64"), 0.0)
    return v.sum(axis=(1, 2)), xf.sum(axis=(1, 2)), (xf * xf).sum(axis=(1, 2))


def _summary(bands: tuple[str, ...], count: np.ndarray, total: np.ndarray, sq: np.ndarray) -> dict:
    n = np.maximum(count, 1)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return {
        "bands": list(bands),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "count": int(count.max()),
    }


def compute_stats(cube_url: str, unit_ids: list[str]) -> dict[str, Any]:
    """Statistics over the given units of the cube (all their valid pixels)."""
    if not unit_ids:
        raise ValueError("no units to compute statistics over")
    cube = open_cube(cube_url)
    parts = []
    for unit_id in unit_ids:
        group = cube[unit_id]
        valid, s2, lc = _load(group, "valid"), _load(group, "s2"), _load(group, "lc")
        dem = _load(group, "dem")[None]
        classes = da.bincount(lc.ravel(), minlength=256)
        parts.append((_moments(s2, valid), _moments(dem, valid), classes, valid.sum(), valid.size))
    (computed,) = dask.compute(parts)
    s2_m = [np.sum([p[0][i] for p in computed], axis=0) for i in range(3)]
    dem_m = [np.sum([p[1][i] for p in computed], axis=0) for i in range(3)]
    codes = np.sum([p[2] for p in computed], axis=0)
    class_counts = codes[list(LC.classes)]
    labelled = max(int(class_counts.sum()), 1)
    return {
        S2.name: _summary(S2.bands, *s2_m),
        DEM.name: _summary(DEM.bands, *dem_m),
        LC.name: {
            "classes": list(LC.classes),
            "counts": [int(c) for c in class_counts],
            "frequency": [float(c) / labelled for c in class_counts],
            "nodata_pixels": int(codes[int(LC.nodata)]),
        },
        "pixels": {
            "total": int(sum(p[4] for p in computed)),
            "valid": int(sum(p[3] for p in computed)),
        },
        "units": len(unit_ids),
    }
