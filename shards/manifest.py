"""A shard set on disk: `manifest.json`, `stats.json`, the tar shards, atomic JSON writes.

    SHARDS/manifest.json   shards with split, sample count, bytes and sha256; config; cube
    SHARDS/stats.json      per-band mean/std over valid pixels, class frequencies
    SHARDS/plan.json       the samples of each shard (what a re-run must reproduce)
    SHARDS/{split}-NNNNNN.tar
    SHARDS/{split}-NNNNNN.tar.idx   where each sample's members lie in the tar (shards.tar)

The manifest is written last: a shard set is complete exactly when it exists.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
from pydantic import BaseModel, ValidationError

from shards.config import SPLITS, join_url
from shards.sample import array_bytes

MANIFEST = "manifest.json"
STATS = "stats.json"
PLAN = "plan.json"
FORMAT_VERSION = 1


class ShardSetError(ValueError):
    """A shard set that is missing, incomplete or unreadable."""


class ShardEntry(BaseModel):
    """One tar shard."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    index_bytes: int = 0  # of NAME.tar.idx; 0: none (shard sets from before the index)


class Manifest(BaseModel):
    """What a shard set holds and how it was made."""

    version: int
    created: str
    cube: str
    units: list[str]
    config: dict[str, Any]
    chip_size: int
    modalities: dict[str, dict[str, Any]]
    shards: list[ShardEntry]
    dropped: dict[str, int]

    def split_shards(self, split: str) -> list[ShardEntry]:
        """The shards of one split; ShardSetError naming the splits that exist."""
        if split not in SPLITS:
            raise ShardSetError(f"unknown split {split!r}; splits are {list(SPLITS)}")
        return [s for s in self.shards if s.split == split]

    def samples(self, split: str | None = None) -> int:
        """Number of samples in a split (or in all)."""
        return sum(s.samples for s in self.shards if split in (None, s.split))

    def sizes(self) -> dict[str, float]:
        """Bytes stored (tars and their indexes) against the in-memory bytes of the arrays."""
        raw = self.samples() * sum(array_bytes(self.chip_size).values())
        tars = sum(e.bytes for e in self.shards)
        index = sum(e.index_bytes for e in self.shards)
        return {"shard_bytes": tars + index, "index_bytes": index, "array_bytes": raw,
                "bytes_ratio": (tars + index) / max(raw, 1)}  # fmt: skip


def write_json(url: str, data: Any) -> None:
    """Write JSON atomically (temp file + rename) to a path or fsspec URL."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(fs._parent(path), exist_ok=True)
    with fs.open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    fs.mv(path + ".tmp", path)


def read_json(url: str) -> Any:
    """Read JSON from a path or fsspec URL; ShardSetError if absent or malformed."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError as e:
        raise ShardSetError(f"{url} does not exist") from e
    except ValueError as e:
        raise ShardSetError(f"{url} is not valid JSON: {e}") from e


def read_manifest(shards_url: str) -> Manifest:
    """The manifest of a shard set, with an error saying what is wrong."""
    url = join_url(shards_url, MANIFEST)
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise ShardSetError(f"no complete shard set at {shards_url}; run `eomae shard`")
    try:
        data = read_json(url)
    except ShardSetError as e:
        raise ShardSetError(f"{e}; `eomae shard --force` rewrites the shard set") from e
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise ShardSetError(
            f"{url} is not an eomae manifest ({e.error_count()} problems, first: "
            f"{_first(e)}); `eomae shard --force` rewrites the shard set"
        ) from e
    if manifest.version != FORMAT_VERSION:
        raise ShardSetError(f"{url} has format version {manifest.version}, need {FORMAT_VERSION}")
    return manifest


def _first(error: ValidationError) -> str:
    """The first problem of a validation error, without the (possibly huge) input."""
    first = error.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


def read_stats(shards_url: str) -> dict[str, Any]:
    """The statistics of a shard set (see shards.stats)."""
    return dict(read_json(join_url(shards_url, STATS)))


def sha256_of(url: str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file at a path or fsspec URL, streamed."""
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
