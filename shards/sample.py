"""One sample in a shard: its tar members, how they are encoded, and what makes one valid.

A sample with key K is the members `K.s2.npy`, `K.dem.npy`, `K.lc.npy` (channels, H, W),
`K.valid.npy` (H, W) bool and `K.json`, in that order. Keys contain no dots (webdataset
splits the member name at the first dot of its basename).
"""

from __future__ import annotations

import functools
import io
import json
import math
import tokenize
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
    return [*members, (META, json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())]


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, Fortran order) from a .npy header, parsed by numpy."""
    f = io.BytesIO(header)
    version = np.lib.format.read_magic(f)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ValueError(f".npy version {version} is not supported")
    try:
        shape, fortran, dtype = readers[version](f)
    except (SyntaxError, tokenize.TokenError) as e:  # numpy tokenizes the header's dict
        raise ValueError(f"damaged .npy header: {e}") from e
    if dtype.hasobject:
        raise ValueError("object arrays (pickles) are not allowed")
    return dtype, shape, fortran


def decode_array(data: bytes) -> np.ndarray:
    """A .npy member as a read-only array over its bytes (no copy).

    Every sample of a modality has the same header, so numpy parses each distinct header
    once (`np.load` spends most of a 64 px sample's decode time parsing it again).
    """
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise ValueError("not a .npy file")
    end = 10 if data[6] == 1 else 12  # the header length is a uint16 in v1, uint32 after
    offset = end + int.from_bytes(data[8:end], "little")
    dtype, shape, fortran = _npy_header(bytes(data[:offset]))
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{len(data) - offset} data bytes for {shape} {dtype}")
    array = np.frombuffer(data, dtype, count, offset)
    return array.reshape(shape, order="F" if fortran else "C")


def decode(
    members: dict[str, bytes], names: tuple[str, ...] | list[str] = ARRAY_MEMBERS
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The named arrays (read-only) and the metadata; SampleError on missing or bad members."""
    missing = [m for m in [*(f"{n}.npy" for n in names), META] if m not in members]
    if missing:
        raise SampleError(f"missing members {missing}")
    arrays = {}
    for name in names:
        try:
            arrays[name] = decode_array(members[f"{name}.npy"])
        except (ValueError, OSError, EOFError) as e:
            raise SampleError(f"{name}.npy does not decode: {e}") from e
    try:
        meta = json.loads(bytes(members[META]))  # bytes or a view (shards.tar)
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
