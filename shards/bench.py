"""`eomae bench loader`: the streaming loader against decoding the same samples from memory.

The memory baseline is what a user with the split in RAM would run: every raw sample (the
tar members' bytes) held in memory, the loader's own per-sample work on them (decode,
check, normalise, collate into batches of the same size), through a DataLoader with the
same number of workers, each worker taking its share of the batches. What the ratio

    loader samples/s ÷ memory samples/s

leaves out is what streaming adds: opening and reading shards, finding each sample's
members (by the shard's index, or by parsing tar headers where it has none). Moving
batches from workers to the main process is paid by both. Also measured: shard bytes ÷
raw array bytes, the storage overhead of the format (tar headers and padding, .npy
headers, JSON, the index files).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import tar
from shards.config import join_url
from shards.loader import ShardStream, _as_is, _Skips, make_loader
from shards.manifest import read_manifest

Sample = dict[str, Any]


def read_raw(shards_url: str, split: str) -> list[Sample]:
    """Every raw sample (member name -> bytes) of a split, in memory."""
    out: list[Sample] = []
    for entry in read_manifest(shards_url).split_shards(split):
        with fsspec.open(join_url(shards_url, entry.name), "rb") as f:
            out.extend(tar.samples(f, entry.name))
    return out


class InMemory(IterableDataset):
    """The loader's work after reading (decode, normalise, batch) on raw samples in RAM.

    Yields as many batches as the loader, spread over DataLoader workers as the loader
    spreads them; worker w cycles over every n-th raw sample from w.
    """

    def __init__(self, stream: ShardStream, raws: list[Sample]) -> None:
        super().__init__()
        self.stream, self.raws = stream, raws

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = self.stream
        stream.skips = _Skips()
        batches = stream._worker_batches(worker, workers) or 0
        raws = itertools.cycle(self.raws[worker::workers] or self.raws)
        for _ in range(batches):
            batch = [stream._decode(next(raws)) for _ in range(stream.batch_size)]
            yield stream._collate([s for s in batch if s is not None])


def from_memory(stream: ShardStream, raws: list[Sample], workers: int) -> DataLoader:
    """The memory baseline as a DataLoader like the loader's (no re-collation)."""
    return DataLoader(InMemory(stream, raws), batch_size=None, num_workers=workers,
                      collate_fn=_as_is)  # fmt: skip


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
    """Shard bytes (tars and their indexes) ÷ in-memory bytes of their arrays (all splits)."""
    return read_manifest(shards_url).sizes()


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
    `samples`; memory cycles over the split's samples as often as needed, with the same
    worker count; which of the two runs first alternates between repeats. Rates are
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
            # Alternate which runs first: on a shared VM, the second of two runs in a row is
            # often faster or slower (caches, allocator, neighbours) by more than the gap.
            if r % 2 == 0:
                memory, _, count_m = _rate(iter(from_memory(loader.stream, raws, n)))
                streamed, first_s, count_l = _rate(iter(loader))
            else:
                streamed, first_s, count_l = _rate(iter(loader))
                memory, _, count_m = _rate(iter(from_memory(loader.stream, raws, n)))
            if count_l != count_m:
                raise RuntimeError(f"loader gave {count_l} samples, memory {count_m}")
            rows.append({"repeat": r, "workers": n, "loader": streamed, "memory": memory,
                         "first_batch_s": first_s, "samples": count_l})  # fmt: skip
            log(f"repeat {r + 1}/{repeats}, {n} workers: loader {streamed:.0f}/s, "
                f"memory {memory:.0f}/s (first batch {first_s:.2f} s)")  # fmt: skip
    return rows
