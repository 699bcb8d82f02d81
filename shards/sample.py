"""One sample in a shard: its tar members, how they are encoded, and what makes one valid.

A sample with key K is the members `K.s2.npy`, `K.dem.npy`, `K.lc.npy` (channels, H, W),
`K.valid.npy` (H, W) bool and `K.json`, in that order. Keys contain no dots (webdataset
splits the member name at the first dot of its basename).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from shards.modalities import META, MODALITIES, VALID

ARRAY_MEMBERS: tuple[str, ...] = (*MODALITIES, VALID)
MEMBERS: tuple[str, ...] = tuple(f"{n}.npy" for n in ARRAY_MEMBERS) + (META,)
# Metadata every sample carries (see shards.write.sample_meta).
META_FIELDS: tuple[str, ...] = (
    "key", "chip_id", "unit_id", "split", "epsg", "transform", "datetime", "mgrs_tile",
    "items", "cloud_fraction", "invalid_fraction", "lc_fractions",
)  # fmt: skip


class SampleError(ValueError):
    """A sample that cannot be decoded or does not match the schema."""


def array_bytes(chip_size: int) -> dict[str, int]:
    """In-memory bytes of each array member of a sample."""
    pixels = chip_size * chip_size
    sizes = {m.name: m.channels * pixels * np.dtype(m.dtype).itemsize for m in MODALITIES.values()}
    return {**sizes, VALID: pixels}


def encode_array(array: np.ndarray) -> bytes:
    """The .npy bytes of an array (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(member suffix, bytes) for each member of a sample, in member order."""
    members = [(f"{n}.npy", encode_array(arrays[n])) for n in ARRAY_MEMBERS]
    return [*members, (META, json.dumps(meta, sort_keys=True).encode())]


def decode(
    members: dict[str, bytes], names: tuple[str, ...] | list[str] = ARRAY_MEMBERS
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The named arrays and the metadata of a sample; SampleError on missing or bad members."""
    missing = [m for m in [*(f"{n}.npy" for n in names), META] if m not in members]
    if missing:
        raise SampleError(f"missing members {missing}")
    arrays = {}
    for name in names:
        try:
            arrays[name] = np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SampleError(f"{name}.npy does not decode: {e}") from e
    try:
        meta = json.loads(members[META])
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(f"json does not decode: {e}") from e
    return arrays, meta


def check_schema(arrays: dict[str, np.ndarray], chip_size: int) -> list[str]:
    """Shape and dtype problems of decoded arrays (cheap; the loader runs it per sample)."""
    problems = []
    for name, m in MODALITIES.items():
        if name not in arrays:
            continue
        a = arrays[name]
        if a.shape != (m.channels, chip_size, chip_size):
            problems.append(
                f"{name} shape {a.shape}, expected {(m.channels, chip_size, chip_size)}"
            )
        if a.dtype != np.dtype(m.dtype):
            problems.append(f"{name} dtype {a.dtype}, expected {m.dtype}")
    valid = arrays.get(VALID, np.zeros((chip_size, chip_size), bool))
    if valid.shape != (chip_size, chip_size) or valid.dtype != np.bool_:
        problems.append(f"valid is {valid.dtype}{valid.shape}, expected bool{(chip_size,) * 2}")
    return problems


def check_values(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> list[str]:
    """Value problems: NaN where the data is valid, metadata fields missing."""
    problems = []
    valid = arrays[VALID]
    for name in MODALITIES:
        a = arrays.get(name, valid)
        if a.dtype.kind == "f" and a.shape[-2:] == valid.shape:
            bad = np.isnan(a) & valid
            if bad.any():
                problems.append(f"{name} has {int(bad.sum())} NaN values at valid pixels")
    absent = [f for f in META_FIELDS if f not in meta]
    if absent:
        problems.append(f"json lacks {absent}")
    return problems
