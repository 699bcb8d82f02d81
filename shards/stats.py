"""Dataset statistics of a cube: per-band mean/std over valid pixels, land-cover counts.

Each unit's sums (float64: count, sum and sum of squares per band, a class histogram) are
computed where the unit is, a block of pixels at a time, so no unit is ever in memory
whole; `eomae shard` runs one Ray task per unit and only adds the sums up. The loader
normalises with these numbers.

    parts = [unit_sums(cube_url, u) for u in units]     # or one task each
    stats = combine(parts)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ingest.cube import open_cube
from shards.chips import UnitReader, array
from shards.modalities import DEM, LC, S2

STATS_BLOCK = 1024  # pixels per side of the block read at once (12 bands: 100 MB as float64)
Sums = dict[str, Any]


def _moments(x: np.ndarray, valid: np.ndarray) -> list[np.ndarray]:
    """Per-band count, sum and sum of squares of (bands, H, W) over valid pixels."""
    xf = np.where(valid[None], x, 0).astype(np.float64)
    count = np.full(x.shape[0], valid.sum(), np.float64)  # the mask is per pixel
    return [count, xf.sum(axis=(1, 2)), (xf * xf).sum(axis=(1, 2))]


def unit_sums(cube_url: str, unit_id: str) -> Sums:
    """The sums of one unit of the cube, read block by block."""
    unit = UnitReader.of(open_cube(cube_url), unit_id)
    height, width = array(unit.group, "valid").shape[-2:]
    sums: Sums = {
        S2.name: [np.zeros(len(S2.bands)) for _ in range(3)],
        DEM.name: [np.zeros(1) for _ in range(3)],
        "codes": np.zeros(256, np.int64),
        "valid": 0,
        "total": height * width,
    }
    for top in range(0, height, STATS_BLOCK):
        for left in range(0, width, STATS_BLOCK):
            window = np.s_[top : top + STATS_BLOCK, left : left + STATS_BLOCK]
            valid = unit.read("valid", window).astype(bool)
            s2 = unit.read("s2", (slice(None), *window))
            dem = unit.read("dem", window)[None]
            lc = unit.read("lc", window)
            for name, x in ((S2.name, s2), (DEM.name, dem)):
                sums[name] = [a + b for a, b in zip(sums[name], _moments(x, valid), strict=True)]
            sums["codes"] += np.bincount(lc.ravel(), minlength=256)
            sums["valid"] += int(valid.sum())
    return sums


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


def combine(parts: list[Sums]) -> dict[str, Any]:
    """The statistics of several units' sums (stats.json)."""
    if not parts:
        raise ValueError("no units to compute statistics over")
    s2_m = [np.sum([p[S2.name][i] for p in parts], axis=0) for i in range(3)]
    dem_m = [np.sum([p[DEM.name][i] for p in parts], axis=0) for i in range(3)]
    codes = np.sum([p["codes"] for p in parts], axis=0)
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
            "total": int(sum(p["total"] for p in parts)),
            "valid": int(sum(p["valid"] for p in parts)),
        },
        "units": len(parts),
    }


def compute_stats(cube_url: str, unit_ids: list[str]) -> dict[str, Any]:
    """Statistics over the given units of the cube, in this process."""
    return combine([unit_sums(cube_url, u) for u in unit_ids])
