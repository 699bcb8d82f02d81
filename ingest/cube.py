"""The zarr (v3) cube: one group per unit, arrays chunked by chip, readable by xarray.

A unit's group is complete only when its `complete` attribute is true, which is written
after every array: a run killed mid-write leaves a group that the next run rewrites.
With it the unit records how many chunks each array stored (`stored_chunks`), so a chunk
lost later (a deleted file reads as the fill value without error) is found by
`unit_problems`: such a unit is not complete, and the next ingest rewrites it.
Each group carries x/y coordinates, named dimensions and a CF grid mapping
(`spatial_ref`), so `xarray.open_zarr(cube, group=unit_id)` gives a georeferenced dataset.

Layout: each array's chunk is one chip, and all chunks of an array are stored in one
shard (zarr v3 sharding): one file (object) per array and unit instead of one per chip.
A chip is still read on its own (a byte range of the shard). Chunks are compressed with
Blosc LZ4 after a byte shuffle. Against one file per chip with zarr's default Zstd,
writing a unit (the largest part of ingesting it) takes 2.5 x less CPU and the cube is
smaller (measured by `eomae bench ingest`, docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from pyproj import CRS
from zarr.codecs import BloscCodec
from zarr.storage import FsspecStore

from ingest.grid import RESOLUTION_M, Grid

CUBE_NAME = "cube.zarr"
# Bits of a unit's `coverage` array (uint8): which sources have data at each pixel.
COVERAGE_BITS: dict[str, int] = {"s2": 1, "dem": 2, "lc": 4}
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def open_cube(url: str) -> zarr.Group:
    """Open (creating if needed) the cube's root group at a path or fsspec URL."""
    fs, path = fsspec.core.url_to_fs(url)
    # Local paths (file:// included) get zarr's LocalStore; s3://, gs://, ... go via fsspec.
    store: Any = path if isinstance(fs, LocalFileSystem) else FsspecStore.from_url(url)
    return zarr.open_group(store=store, mode="a", zarr_format=3)


def is_complete(cube: zarr.Group, unit_id: str) -> bool:
    """Whether the unit's group exists, was fully written and still holds every chunk."""
    try:
        group = cube[unit_id]
    except KeyError:
        return False
    if not isinstance(group, zarr.Group) or not group.attrs.get("complete"):
        return False
    return not unit_problems(group)


def unit_problems(group: zarr.Group) -> list[str]:
    """What a written unit has lost since: arrays or chunks missing from the store.

    Units written before chunk counts were recorded have nothing to compare: none.
    """
    stored: dict[str, int] = dict(group.attrs.get("stored_chunks") or {})  # type: ignore[arg-type]
    problems = []
    for name, expected in stored.items():
        arr = group.get(name)
        if not isinstance(arr, zarr.Array):
            problems.append(f"array {name} is missing")
        elif (found := arr.nchunks_initialized) < expected:
            problems.append(f"array {name} holds {found} of its {expected} chunks")
    return problems


def array_layout(shape: tuple[int, ...], chip_size: int) -> dict[str, Any]:
    """How a unit's array ([bands,] H, W) is stored: chunk = chip, one shard, Blosc LZ4."""
    chunks = (*shape[:-2], chip_size, chip_size)
    # one shard holds the whole array: its size rounded up to whole chips
    shards = (*shape[:-2], *(-(-n // chip_size) * chip_size for n in shape[-2:]))
    return {"chunks": chunks, "shards": shards, "compressors": COMPRESSOR}


def write_unit(
    cube: zarr.Group,
    unit_id: str,
    grid: Grid,
    chip_size: int,
    arrays: dict[str, np.ndarray],
    attrs: dict[str, Any],
) -> None:
    """Write a unit's arrays ([bands,] H, W) and attributes, then mark it complete."""
    group = cube.create_group(unit_id, overwrite=True)
    crs = CRS.from_epsg(grid.epsg)
    spatial_ref = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    geotransform = " ".join(map(str, grid.transform.to_gdal()))
    spatial_ref.attrs.update(
        {**crs.to_cf(), "spatial_ref": crs.to_wkt(), "GeoTransform": geotransform}
    )
    x = grid.left + (np.arange(grid.width) + 0.5) * RESOLUTION_M
    y = grid.top - (np.arange(grid.height) + 0.5) * RESOLUTION_M
    for name, values in (("x", x), ("y", y)):
        coord = group.create_array(name, data=values, dimension_names=(name,))
        coord.attrs.update({"units": "m", "standard_name": f"projection_{name}_coordinate"})
    for name, data in arrays.items():
        dims = ("band", "y", "x") if data.ndim == 3 else ("y", "x")
        layout = array_layout(data.shape, chip_size)
        arr = group.create_array(name, data=data, dimension_names=dims, **layout)
        arr.attrs["grid_mapping"] = "spatial_ref"
    stored = {name: group[name].nchunks_initialized for name in arrays}  # type: ignore[union-attr]
    group.attrs.update({**attrs, "epsg": grid.epsg, "transform": list(grid.transform)[:6],
                        "stored_chunks": stored})  # fmt: skip
    group.attrs["complete"] = True  # last: the unit counts as done only now
