"""Chips: where they are in a cube unit, their quality, and the spatial train/val/test split.

Chip origins are multiples of the chip extent (chip_size x 10 m) in the unit's UTM CRS,
so a chip location (`chip_id`) is the same in every unit (date) of a tile and in every run.
The split is drawn per block of `block_chips` x `block_chips` chip locations, so nearby
chips share a split; a chip that would touch a chip of another split is dropped from the
lower-priority side (train < val < test), so no evaluation chip overlaps or borders a
training chip, also across UTM zones where tiles of two zones overlap.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

from ingest.cube import COVERAGE_BITS, open_cube
from ingest.grid import RESOLUTION_M, cell_id, lonlat_footprint
from ingest.sources import sentinel2
from shards.config import SPLITS, ShardConfig
from shards.modalities import LC

# Footprints in lon/lat touch within this (degrees, ~1 cm): catches corners shared
# between zones despite rounding in the reprojection.
TOUCH_TOLERANCE_DEG = 1e-7


@dataclass(frozen=True)
class Chip:
    """One chip of one unit: location, window in the unit, quality, land-cover fractions."""

    unit_id: str
    epsg: int
    x0: int  # left edge, CRS metres
    y0: int  # top edge, CRS metres
    row: int  # window origin in the unit's arrays, pixels
    col: int
    invalid_fraction: float
    cloud_fraction: float
    lc_fractions: tuple[float, ...]  # per LC class (registry order), of pixels with land cover
    # Share of the chip each source covered ({"s2": .., "dem": .., "lc": ..}); a cube
    # written before coverage was recorded lacks "dem".
    coverage: dict[str, float] = field(default_factory=dict)

    @property
    def chip_id(self) -> str:
        """The location: the same for every date of a tile."""
        return cell_id(self.epsg, self.x0, self.y0)

    @property
    def key(self) -> str:
        """The sample key: location and unit (tile x date); no dots."""
        return f"{self.unit_id}_{self.x0}_{self.y0}"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


Location = tuple[int, int, int]  # epsg, x0, y0


def array(group: zarr.Group, name: str) -> zarr.Array:
    """An array of a cube unit (TypeError if the name is a group)."""
    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise TypeError(f"{group.name}/{name} is not an array")
    return arr


class CubeDamageError(ValueError):
    """A cube unit marked complete that cannot be read back."""


class UnitReader:
    """A cube unit's arrays, each opened once.

    Opening an array reads its zarr metadata, which costs more than reading a chip's
    window of it (10 against 4 ms per chip of all arrays, measured on the sample world).
    """

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.arrays: dict[str, zarr.Array] = {}

    @classmethod
    def of(cls, cube: zarr.Group, unit_id: str) -> UnitReader:
        """The reader of unit `unit_id` of the cube."""
        group = cube[unit_id]
        if not isinstance(group, zarr.Group):
            raise TypeError(f"{unit_id} in the cube is not a unit group")
        return cls(group)

    def read(self, name: str, window: Any = ...) -> np.ndarray:
        """`window` of array `name`; an error naming the unit and array if it cannot be read.

        zarr raises its codecs' own errors (a checksum mismatch, a failed decompression),
        which say nothing of where they come from.
        """
        try:
            if name not in self.arrays:
                self.arrays[name] = array(self.group, name)
            return np.asarray(self.arrays[name][window])
        except Exception as e:
            unit = self.group.basename
            raise CubeDamageError(
                f"unit {unit} of the cube: array {name} cannot be read ({type(e).__name__}: "
                f"{e}); delete the folder {unit} of the cube and run `eomae ingest` again to "
                "rewrite it"
            ) from e


def read(group: zarr.Group, name: str, window: Any = ...) -> np.ndarray:
    """`window` of array `name` of a cube unit (see `UnitReader.read`)."""
    return UnitReader(group).read(name, window)


def unit_origin(group: zarr.Group) -> tuple[int, float, float]:
    """EPSG, left and top of a cube unit, from its attributes."""
    attrs: dict[str, Any] = dict(group.attrs)
    a, _, left, _, e, top = (float(v) for v in attrs["transform"])
    if (a, e) != (RESOLUTION_M, -RESOLUTION_M):
        raise ValueError(f"unit {group.name} is not on the {RESOLUTION_M} m grid: {a}, {e}")
    return int(attrs["epsg"]), left, top


def _per_chip(mask: np.ndarray, n_rows: int, n_cols: int, size: int) -> np.ndarray:
    """Sum of a (n_rows*size, n_cols*size) array over each chip -> (n_rows, n_cols)."""
    return mask.reshape(n_rows, size, n_cols, size).sum(axis=(1, 3), dtype=np.int64)


def scan_unit(cube_url: str, unit_id: str, chip_size: int) -> list[Chip]:
    """Every whole chip of a unit with its invalid and cloud fractions and class fractions."""
    group = open_cube(cube_url)[unit_id]
    assert isinstance(group, zarr.Group)
    epsg, left, top = unit_origin(group)
    valid = read(group, "valid")
    height, width = valid.shape
    extent = chip_size * RESOLUTION_M
    x_first = math.ceil(left / extent) * extent
    y_first = math.floor(top / extent) * extent
    col0, row0 = round((x_first - left) / RESOLUTION_M), round((top - y_first) / RESOLUTION_M)
    n_cols, n_rows = (width - col0) // chip_size, (height - row0) // chip_size
    if n_cols <= 0 or n_rows <= 0:
        return []
    window = np.s_[row0 : row0 + n_rows * chip_size, col0 : col0 + n_cols * chip_size]
    scl, lc = read(group, "scl", window), read(group, "lc", window)
    area = chip_size * chip_size

    def count(mask: np.ndarray) -> np.ndarray:
        return _per_chip(mask, n_rows, n_cols, chip_size)

    invalid = 1 - count(valid[window]) / area
    observed = count(scl != sentinel2.SceneClass.NO_DATA)
    cloudy = count(np.isin(scl, [int(c) for c in sentinel2.CLOUD_CLASSES]))
    covered = count(lc != LC.nodata)
    per_class = np.stack([count(lc == code) for code in LC.classes], axis=-1)
    cloud = cloudy / np.maximum(observed, 1)
    fractions = per_class / np.maximum(covered, 1)[..., None]
    shares = {"s2": observed / area, "lc": covered / area}
    if "coverage" in group:
        bits = read(group, "coverage", window)
        shares = {name: count((bits & bit) > 0) / area for name, bit in COVERAGE_BITS.items()}
    chips = []
    for r in range(n_rows):
        for c in range(n_cols):
            chips.append(
                Chip(
                    unit_id=unit_id,
                    epsg=epsg,
                    x0=int(x_first + c * extent),
                    y0=int(y_first - r * extent),
                    row=row0 + r * chip_size,
                    col=col0 + c * chip_size,
                    invalid_fraction=round(float(invalid[r, c]), 6),
                    cloud_fraction=round(float(cloud[r, c]), 6),
                    lc_fractions=tuple(round(float(f), 6) for f in fractions[r, c]),
                    coverage={k: round(float(v[r, c]), 6) for k, v in shares.items()},
                )
            )
    return chips


def footprint(epsg: int, x0: float, y0: float, extent: float) -> BaseGeometry:
    """A chip's outline in lon/lat (its corners; split at 180° where it crosses it)."""
    return lonlat_footprint(epsg, (x0, y0 - extent, x0 + extent, y0), points_per_edge=1)


def assign_blocks(locations: list[Location], cfg: ShardConfig) -> dict[Location, str]:
    """Split per location (epsg, x0, y0), drawn per block with the configured fractions.

    Blocks are shuffled with the seed and cut in proportion to the fractions, each split
    with a nonzero fraction getting at least one block when there are enough blocks.
    """
    extent = cfg.chip_size * RESOLUTION_M
    block_extent = cfg.block_chips * extent

    def block_of(loc: Location) -> tuple[int, int, int]:
        epsg, x0, y0 = loc
        return epsg, math.floor(x0 / block_extent), math.floor((y0 - extent) / block_extent)

    blocks = sorted({block_of(loc) for loc in locations})
    order = np.random.default_rng(cfg.seed).permutation(len(blocks))
    counts = {}
    remaining = len(blocks)
    for split in ("test", "val"):
        frac = cfg.fractions()[split]
        n = round(frac * len(blocks))
        if frac > 0 and n == 0 and len(blocks) >= len(SPLITS):
            n = 1
        counts[split] = min(n, max(remaining - 1, 0))
        remaining -= counts[split]
    split_of_block = {}
    position = 0
    for split in ("test", "val"):
        for i in order[position : position + counts[split]]:
            split_of_block[blocks[i]] = split
        position += counts[split]
    for i in order[position:]:
        split_of_block[blocks[i]] = "train"
    return {loc: split_of_block[block_of(loc)] for loc in locations}


def guard(split_of: dict[Location, str], chip_size: int) -> dict[Location, str]:
    """Drop locations touching a location of a higher-priority split; returns the rest."""
    priority = {split: i for i, split in enumerate(SPLITS)}
    locations = sorted(split_of)
    extent = chip_size * RESOLUTION_M
    shapes = [footprint(epsg, x0, y0, extent) for epsg, x0, y0 in locations]
    tree = STRtree(shapes)
    kept = {}
    for i, loc in enumerate(locations):
        near = tree.query(shapes[i].buffer(TOUCH_TOLERANCE_DEG), predicate="intersects")
        mine = priority[split_of[loc]]
        if all(priority[split_of[locations[j]]] <= mine for j in near):
            kept[loc] = split_of[loc]
    return kept


def split_chips(chips: list[Chip], cfg: ShardConfig) -> tuple[dict[str, list[Chip]], dict]:
    """Filter by invalid fraction, assign splits, apply the guard; chips per split + counts."""
    usable = [c for c in chips if c.invalid_fraction <= cfg.max_invalid]
    split_of = assign_blocks(sorted({(c.epsg, c.x0, c.y0) for c in usable}), cfg)
    kept = guard(split_of, cfg.chip_size)
    by_split: dict[str, list[Chip]] = defaultdict(list)
    for c in usable:
        split = kept.get((c.epsg, c.x0, c.y0))
        if split is not None:
            by_split[split].append(c)
    dropped = {
        "invalid": len(chips) - len(usable),
        "split_guard": len(usable) - sum(len(v) for v in by_split.values()),
    }
    return {s: by_split.get(s, []) for s in SPLITS}, dropped
