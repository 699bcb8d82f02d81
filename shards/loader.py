"""The streaming loader: a shard set's split -> normalised `{modality: tensor}` batches.

    loader = make_loader("runs/demo/shards", split="train", modalities=["s2", "dem", "lc"],
                         batch_size=64, mode="resampled", num_workers=2)
    for batch in loader:        # batch["s2"]: (B, 12, H, W) float32, z-scored per band
        ...                     # batch["lc"]: (B, H, W) int64 class index (nodata: ignore)

Every batch also holds `valid` (B, H, W) bool, `lc_fractions` (B, classes) float32 (the
multi-label target), `meta` (the samples' JSON) and `skipped` (corrupt samples or shard
errors this worker skipped since its last batch; `loader.skipped` sums them).

Work is split by rank (Ray Train / torch.distributed, or given) and DataLoader worker:
- `finite`: every sample of the split exactly once over all ranks and workers (evaluation).
  With at least as many shards as rank x worker slots, each slot reads its own shards;
  with fewer, every slot reads all shards and keeps every n-th sample.
- `resampled`: an epoch's shards are dealt out to the slots (a permutation seeded by seed
  and epoch, so each slot's share is disjoint from the others'; with fewer shards than
  slots, each slot keeps every n-th sample of all of them), and each slot cycles through
  its share in a new order every pass, through a shuffle buffer; every rank yields exactly
  `len(loader)` batches per epoch, so ranks stay in step however uneven the shards. No
  sample is in two ranks' batches of one step, nor twice in one batch; a new worker count
  (elastic training, at an epoch boundary) deals the next epoch out anew.

Shards are WebDataset tars (webdataset itself reads them); the loader reads them with
`shards.tar`: by the member-offset index beside each shard (a local shard memory-mapped,
a remote one read a sample at a time), or by the tar headers where a shard has no usable
index (older shard sets, a rewritten shard).
Decoding, normalisation and the splitting above are ours, so that corrupt data is
counted rather than fatal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from shards import sample, tar
from shards.config import join_url
from shards.manifest import ShardSetError, read_manifest, read_stats
from shards.modalities import LC, META, MODALITIES, VALID, Modality, get

log = logging.getLogger(__name__)
Mode = Literal["finite", "resampled"]
Sample = dict[str, Any]
MAX_CONSECUTIVE_ERRORS = 1000  # a stream that only fails is broken, not unlucky


class _Skips:
    """Counts what a worker skipped: `handler` is called on every stream or sample error."""

    def __init__(self) -> None:
        self.count = 0
        self.consecutive = 0

    def handler(self, exn: Exception) -> bool:
        self.count += 1
        self.consecutive += 1
        if self.count <= 10:
            log.warning("skipping corrupt shard data: %s", exn)
        if self.consecutive > MAX_CONSECUTIVE_ERRORS:
            raise ShardSetError(f"{self.consecutive} errors in a row reading shards; last: {exn}")
        return True  # go on with the next sample or shard

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


class Normaliser:
    """On-disk arrays -> model inputs: z-scores for continuous modalities, class indices."""

    def __init__(self, stats: dict[str, Any] | None) -> None:
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        for m in MODALITIES.values():
            if m.categorical or stats is None:
                continue
            self.mean[m.name] = np.asarray(stats[m.name]["mean"], np.float32)[:, None, None]
            self.std[m.name] = np.maximum(np.asarray(stats[m.name]["std"], np.float32), 1e-6)[
                :, None, None
            ]
        self.lookup = LC.class_lookup()

    def __call__(self, m: Modality, a: np.ndarray) -> np.ndarray:
        """Normalise one modality's on-disk (C, H, W) array."""
        if m.categorical:
            return self.lookup[a[0]]  # (H, W) class index, nodata -> ignore_index
        x = a.astype(np.float32)
        missing = m.is_nodata(a)
        if m.name in self.mean:
            x = (x - self.mean[m.name]) / self.std[m.name]
        x[missing] = 0.0  # the mean after z-scoring; `valid` tells the model to ignore it
        return x


class ShardStream(IterableDataset):
    """The samples of one split for this rank and DataLoader worker (see module doc)."""

    def __init__(
        self,
        urls: list[str],
        modalities: Sequence[str],
        chip_size: int,
        *,
        mode: Mode,
        batch_size: int,
        batches_per_epoch: int | None,
        shuffle_buffer: int,
        seed: int,
        rank: int,
        world_size: int,
        normaliser: Normaliser,
        transform: Callable[[Sample], Sample] | None,
        drop_last: bool,
    ) -> None:
        super().__init__()
        self.urls, self.modalities, self.chip_size = urls, list(modalities), chip_size
        self.mode, self.batch_size, self.batches_per_epoch = mode, batch_size, batches_per_epoch
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, 0
        self.rank, self.world_size = rank, world_size
        self.normaliser, self.transform, self.drop_last = normaliser, transform, drop_last
        self.unindexed: set[str] = set()  # shards whose index was refused (warned once)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the resampling and shuffling for a new epoch."""
        self.epoch = epoch

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    def _samples(self, urls: Iterator[str]) -> Iterator[Sample]:
        """The raw samples of each shard in turn; a shard that breaks is counted, not fatal."""
        for url in urls:
            try:
                with fsspec.open(url, "rb") as f:
                    index = self._index(url, f)
                    if index is None:
                        yield from tar.samples(f, url)
                    else:
                        yield from tar.indexed_samples(f, index, url)
            except (OSError, tar.TarError) as e:
                self.skips.handler(e)

    def _index(self, url: str, f: Any) -> list[tar.IndexedSample] | None:
        """The shard's member-offset index, or None (read by headers) if it has none usable."""
        try:
            with fsspec.open(url + tar.INDEX_SUFFIX, "rb") as g:
                data = g.read()
        except FileNotFoundError:
            return None
        size = f.seek(0, 2)
        f.seek(0)
        try:
            return tar.parse_index(data, size)
        except tar.TarError as e:  # slower, not wrong: the headers say the same
            if url not in self.unindexed:
                log.warning("%s%s: %s; reading the shard by its headers", url, tar.INDEX_SUFFIX, e)
                self.unindexed.add(url)
            return None

    def _raw_samples(self, slot: int, slots: int) -> Iterator[Sample]:
        if self.mode == "resampled":
            yield from self._dealt_samples(slot, slots)
            return
        share, every = _share(self.urls, slot, slots)
        yield from _every(self._samples(iter(share)), slot, every)

    def _dealt_samples(self, slot: int, slots: int) -> Iterator[Sample]:
        """Resampled mode: this slot's share of the epoch's shards, pass after pass, forever."""
        dealt = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))
        share, every = _share([self.urls[i] for i in dealt], slot, slots)
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        while True:
            # a sample-wise share (every > 1) needs the same shard order in every pass
            order = rng.permutation(len(share)) if every == 1 else range(len(share))
            held = 0
            for raw in _every(self._samples(share[j] for j in order), slot, every):
                held += 1
                yield raw
            if held < self.batch_size:  # a batch of distinct samples could never be filled
                raise ShardSetError(
                    f"the split's share of slot {slot} of {slots} (rank x "
                    f"loader worker) holds {held} readable samples, fewer than a batch of "
                    f"{self.batch_size}: use fewer workers or loader workers, or smaller batches"
                )

    def _decode(self, raw: Sample) -> Sample | None:
        names = [*self.modalities, VALID]
        try:
            arrays, meta = sample.decode(raw, names)
            problems = sample.check_schema(arrays, self.chip_size)
            if problems:
                raise sample.SampleError("; ".join(problems))
        except sample.SampleError as e:
            self.skips.handler(sample.SampleError(f"{raw.get('__key__')}: {e}"))
            return None
        self.skips.consecutive = 0
        out: Sample = {m.name: self.normaliser(m, arrays[m.name]) for m in get(self.modalities)}
        out[VALID] = arrays[VALID].copy()  # writable: transforms may flip it in place
        fractions = meta.get("lc_fractions", {})
        out["lc_fractions"] = np.asarray(
            [fractions.get(str(c), 0.0) for c in LC.classes], np.float32
        )
        out[META] = meta
        return self.transform(out) if self.transform else out

    def _collate(self, batch: list[Sample]) -> Sample:
        # default_collate stacks straight into shared memory in a DataLoader worker, so
        # handing the batch to the main process copies nothing.
        out: Sample = {k: default_collate([s[k] for s in batch]) for k in batch[0] if k != META}
        out["meta"] = [s[META] for s in batch]
        out["skipped"] = self.skips.take()
        return out

    def __iter__(self) -> Iterator[Sample]:
        worker, workers = self._worker()
        slot, slots = self.rank * workers + worker, self.world_size * workers
        self.skips = _Skips()
        samples: Iterator[Sample] = self._raw_samples(slot, slots)
        if self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, slot, 1])
            samples = _shuffled(samples, self.shuffle_buffer, rng)
        limit = self._worker_batches(worker, workers)
        batch: list[Sample] = []
        keys: set[str | None] = set()  # a share cycled around is not used twice in one batch
        produced = 0
        for raw in samples:
            if limit is not None and produced >= limit:
                return
            if raw.get("__key__") in keys:
                continue
            decoded = self._decode(raw)
            if decoded is None:
                continue
            batch.append(decoded)
            keys.add(raw.get("__key__"))
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                produced, batch, keys = produced + 1, [], set()
        if batch and not self.drop_last:
            yield self._collate(batch)
        if self.skips.count:  # skipped after the last batch: counted, with no samples
            yield {"skipped": self.skips.take()}

    def _worker_batches(self, worker: int, workers: int) -> int | None:
        """Batches this worker yields per epoch (resampled: the rank's total, spread out)."""
        if self.batches_per_epoch is None:
            return None
        share, extra = divmod(self.batches_per_epoch, workers)
        return share + (worker < extra)


def _share(urls: list[str], slot: int, slots: int) -> tuple[list[str], int]:
    """A slot's shards, and every how many of their samples it keeps (offset by slot).

    Its own shards when there are enough for every slot, else all of them, keeping every
    slots-th sample.
    """
    return (urls[slot::slots], 1) if len(urls) >= slots else (urls, slots)


def _every(samples: Iterator[Sample], slot: int, every: int) -> Iterator[Sample]:
    """The samples a slot keeps of `_share`'s shards."""
    for i, raw in enumerate(samples):
        if every == 1 or i % every == slot:
            yield raw


def _shuffled(samples: Iterator[Sample], size: int, rng: np.random.Generator) -> Iterator[Sample]:
    """A shuffle buffer: emit a random element once `size` are held."""
    buffer: list[Sample] = []
    for s in samples:
        buffer.append(s)
        if len(buffer) >= size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)  # type: ignore[arg-type]
    yield from buffer


def _as_is(batch: Any) -> Any:
    return batch


class ShardLoader:
    """A DataLoader over a ShardStream that also sums what its workers skipped."""

    def __init__(
        self, stream: ShardStream, num_workers: int, epoch_samples: int | None = None
    ) -> None:
        self.stream = stream
        self.skipped = 0
        self.epoch_samples = epoch_samples  # resampled: samples per epoch over all ranks
        # Batches are made by the stream; DataLoader's default conversion would only walk
        # every metadata dict again.
        self.loader = DataLoader(
            stream, batch_size=None, num_workers=num_workers, collate_fn=_as_is
        )

    def set_epoch(self, epoch: int) -> None:
        """New resampling and shuffle seeds for this epoch (call before iterating)."""
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank (resampled mode only)."""
        if self.stream.batches_per_epoch is None:
            raise TypeError("a finite loader has no fixed length; use mode='resampled'")
        return self.stream.batches_per_epoch

    def __iter__(self) -> Iterator[Sample]:
        for batch in self.loader:
            self.skipped += batch["skipped"]
            if "meta" in batch:  # else only a count of what was skipped after the last batch
                yield batch


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def make_loader(
    shards_url: str,
    split: str = "train",
    modalities: Sequence[str] = tuple(MODALITIES),
    *,
    batch_size: int = 32,
    mode: Mode = "finite",
    epoch_samples: int | None = None,
    num_workers: int = 0,
    shuffle_buffer: int | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    transform: Callable[[Sample], Sample] | None = None,
    normalise: bool = True,
    drop_last: bool = False,
) -> ShardLoader:
    """A loader over one split of a shard set (see the module doc for the modes).

    `epoch_samples` (resampled): samples per epoch over all ranks (default: the split's
    size). `shuffle_buffer`: samples held for shuffling (default 0 when finite, 256 when
    resampled; shards are already shuffled when written). `rank`/`world_size` default to
    torch.distributed's (set up by Ray Train). `transform` runs per sample in the workers,
    after normalisation (e.g. random crops).
    """
    get(list(modalities))  # unknown names fail here, naming them
    if mode not in ("finite", "resampled"):
        raise ValueError(f"mode must be 'finite' or 'resampled', not {mode!r}")
    manifest = read_manifest(shards_url)
    entries = manifest.split_shards(split)
    if not entries or manifest.samples(split) == 0:
        raise ShardSetError(f"split {split!r} of {shards_url} has no samples")
    default_rank, default_world = _rank_and_world()
    rank = default_rank if rank is None else rank
    world_size = default_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    batches, default_buffer, total = None, 0, None
    if mode == "resampled":
        default_buffer = 256
        total = epoch_samples or manifest.samples(split)
        batches = max(1, math.floor(total / (world_size * batch_size)))
    stream = ShardStream(
        [join_url(shards_url, e.name) for e in entries],
        modalities,
        manifest.chip_size,
        mode=mode,
        batch_size=batch_size,
        batches_per_epoch=batches,
        shuffle_buffer=shuffle_buffer if shuffle_buffer is not None else default_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
        normaliser=Normaliser(read_stats(shards_url) if normalise else None),
        transform=transform,
        drop_last=drop_last,
    )
    return ShardLoader(stream, num_workers, total)
