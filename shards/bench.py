"""`eomae bench loader`: the streaming loader against decoding the same samples from memory.

The memory baseline holds every raw sample of the split (the tar members' bytes) in RAM
and runs exactly the loader's own per-sample work on them: decode, check, normalise and
collate into batches of the same size. What the ratio

    loader samples/s ÷ memory samples/s

leaves out is what streaming adds: opening and reading shards, tar parsing, grouping
members, and (with DataLoader workers) moving batches between processes. Also measured:
shard bytes ÷ raw array bytes, the storage overhead of the format (tar headers, .npy
headers, JSON).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec

from shards import sample, tar
from shards.config import join_url
from shards.loader import ShardStream, _Skips, make_loader
from shards.manifest import read_manifest

Sample = dict[str, Any]


def read_raw(shards_url: str, split: str) -> list[Sample]:
    """Every raw sample (member name -> bytes) of a split, in memory."""
    out: list[Sample] = []
    for entry in read_manifest(shards_url).split_shards(split):
        with fsspec.open(join_url(shards_url, entry.name), "rb") as f:
            out.extend(tar.samples(f, entry.name))
    return out


def _from_memory(stream: ShardStream, raws: list[Sample], samples: int) -> Iterator[Sample]:
    """The loader's work after reading (decode, normalise, batch) on `samples` raws in RAM."""
    stream.skips = _Skips()
    batch: list[Sample] = []
    for raw in itertools.islice(itertools.cycle(raws), samples):
        decoded = stream._decode(raw)
        if decoded is not None:
            batch.append(decoded)
        if len(batch) == stream.batch_size:
            yield stream._collate(batch)
            batch = []
    if batch:
        yield stream._collate(batch)


def _rate(batches: Iterator[Sample]) -> tuple[float, float, int]:
    """(steady samples/s after the first batch, seconds to the first batch, samples)."""
    t0 = time.perf_counter()
    first = next(batches)
    t_first = time.perf_counter()
    n = 0
    for batch in batches:
        n += len(batch["meta"])
    return n / (time.perf_counter() - t_first), t_first - t0, n + len(first["meta"])


def size_ratio(shards_url: str) -> dict[str, float]:
    """Shard bytes ÷ in-memory bytes of the arrays they hold (all splits)."""
    manifest = read_manifest(shards_url)
    raw = manifest.samples() * sum(sample.array_bytes(manifest.chip_size).values())
    shard_bytes = sum(e.bytes for e in manifest.shards)
    return {"shard_bytes": shard_bytes, "array_bytes": raw, "bytes_ratio": shard_bytes / raw}


def bench_loader(
    shards_url: str,
    split: str = "train",
    workers: Sequence[int] = (0, 1, 2),
    batch_size: int = 32,
    samples: int = 2048,
    repeats: int = 3,
    log: Any = print,
) -> list[dict[str, float]]:
    """One row per (repeat, worker count): loader and memory samples/s over `samples`.

    The loader runs resampled (shards drawn at random, no shuffle buffer) for exactly
    `samples`; memory cycles over the split's samples as often as needed. Rates are
    steady-state (after the first batch); the first batch's wait, which includes starting
    the DataLoader workers, is reported apart.
    """
    raws = read_raw(shards_url, split)
    rows = []
    for r in range(repeats):
        for n in workers:
            loader = make_loader(shards_url, split, batch_size=batch_size, mode="resampled",
                                 epoch_samples=samples, shuffle_buffer=0, num_workers=n,
                                 rank=0, world_size=1)  # fmt: skip
            memory, _, count_m = _rate(_from_memory(loader.stream, raws, len(loader) * batch_size))
            streamed, first_s, count_l = _rate(iter(loader))
            if count_l != count_m:
                raise RuntimeError(f"loader gave {count_l} samples, memory {count_m}")
            rows.append({"repeat": r, "workers": n, "loader": streamed, "memory": memory,
                         "first_batch_s": first_s, "samples": count_l})  # fmt: skip
            log(f"repeat {r + 1}/{repeats}, {n} workers: loader {streamed:.0f}/s, "
                f"memory {memory:.0f}/s (first batch {first_s:.2f} s)")  # fmt: skip
    return rows
