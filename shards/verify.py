"""`eomae verify`: re-read every shard of a shard set and report every problem found.

    for p in verify("runs/demo/shards"):
        print(p)        # train-000003.tar 32TPT_..._5240320: missing_member: lacks ['dem.npy']

Each shard is streamed once (so fsspec URLs work and memory stays flat): the bytes are
hashed and counted on the way through the tar reader. Problem kinds: missing_shard,
checksum, size, truncated, count, index (shard level; the member-offset index of a sound
tar must exist where the manifest lists one and match the tar member for member);
missing_member, unexpected_member, duplicate_key, decode, schema, values (per sample).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import IO

import fsspec

from shards import sample, tar
from shards.config import join_url
from shards.manifest import ShardEntry, read_manifest
from shards.tar import BLOCK, INDEX_SUFFIX, split_name

Layout = list[tuple[str, str, int, int]]  # (key, field, offset, size) of each member


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shard set: where (shard, sample key or "") and what."""

    shard: str
    sample: str
    kind: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.shard} {self.sample}" if self.sample else self.shard
        return f"{where}: {self.kind}: {self.detail}"


class _HashingReader:
    """A read-only file wrapper that hashes and counts the bytes passing through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self, chunk: int = 1 << 22) -> None:
        while self.read(chunk):
            pass


def check_sample(
    members: dict[str, bytes], chip_size: int, key: str, split: str
) -> list[tuple[str, str]]:
    """(kind, detail) problems of one sample's members, stored under `key` in a `split` shard."""
    missing = [m for m in sample.MEMBERS if m not in members]
    if missing:
        return [("missing_member", f"lacks {missing}")]
    try:
        arrays, meta = sample.decode(members)
    except sample.SampleError as e:
        return [("decode", str(e))]
    if not isinstance(meta, dict):
        return [("decode", f"json is a {type(meta).__name__}, not an object")]
    problems = [("schema", p) for p in sample.check_schema(arrays, chip_size)]
    if not problems:  # the value checks index arrays by the schema
        problems += [("values", p) for p in sample.check_values(arrays, meta)]
    for field, expected in (("key", key), ("split", split)):
        if field in meta and meta[field] != expected:  # a split mismatch leaks across splits
            problems.append(("values", f"json {field} {meta[field]!r}, stored as {expected!r}"))
    return problems


def _ends_cleanly(url: str, offset: int) -> bool:
    """Whether the tar's end-of-archive block is at `offset`."""
    # tarfile stops quietly at a bad or missing header: a loop that just ends proves nothing.
    with fsspec.open(url, "rb") as f:
        f.seek(offset)
        return bool(f.read(BLOCK) == bytes(BLOCK))


def check_index(url: str, entry: ShardEntry, layout: Layout, tar_bytes: int) -> str | None:
    """What is wrong with a shard's index given the tar's member layout (None: sound)."""
    try:
        with fsspec.open(url + INDEX_SUFFIX, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return f"{url}{INDEX_SUFFIX} is missing" if entry.index_bytes else None
    try:
        index = tar.parse_index(data, tar_bytes)
    except tar.TarError as e:
        return str(e)
    listed = [(key, *member) for key, members in index for member in members]
    for i, (got, want) in enumerate(zip(listed, layout, strict=False)):
        if got != want:
            return f"member {i} is {want} in the tar, {got} in the index"
    if len(listed) != len(layout):
        return f"{len(listed)} members in the index, {len(layout)} in the tar"
    if entry.index_bytes and len(data) != entry.index_bytes:  # 0: not listed (older sets)
        return f"{len(data)} bytes, manifest says {entry.index_bytes}"
    return None


def check_shard(url: str, entry: ShardEntry, chip_size: int) -> tuple[list[Problem], list[str]]:
    """Problems of one shard and the sample keys found in it, in order."""
    problems: list[Problem] = []

    def add(key: str, kind: str, detail: str) -> None:
        problems.append(Problem(entry.name, key, kind, detail))

    def finish(key: str, members: dict[str, bytes]) -> None:
        for kind, detail in check_sample(members, chip_size, key, entry.split):
            add(key, kind, detail)

    try:
        f = fsspec.open(url, "rb").open()
    except FileNotFoundError:
        add("", "missing_shard", f"{url} does not exist")
        return problems, []
    keys: list[str] = []
    seen: set[str] = set()
    key, members = "", dict[str, bytes]()
    layout: Layout = []
    end: int | None = None  # where the tar's members end, if the stream did not break
    with f:
        reader = _HashingReader(f)
        try:
            # Stream mode only calls read(); typeshed asks for a whole file object.
            with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
                for info in archive:
                    k, suffix = split_name(info.name)
                    if info.isfile():
                        layout.append((k, suffix, info.offset_data, info.size))
                    if suffix not in sample.MEMBERS or not info.isfile():
                        add(k, "unexpected_member", f"{info.name} is not a sample member")
                        continue
                    if k != key:  # webdataset makes a sample of each run of one key
                        if key:
                            finish(key, members)
                        if k in seen:
                            add(k, "duplicate_key", "key appears twice in this shard")
                        key, members = k, {}
                        keys.append(k)
                        seen.add(k)
                    if suffix in members:
                        add(k, "duplicate_key", f"member {suffix} appears twice")
                    data = archive.extractfile(info)
                    members[suffix] = data.read() if data else b""
                end = archive.offset
            if key:
                finish(key, members)
        except (tarfile.TarError, EOFError, OSError) as e:
            # A complete pending sample is still checked; a partial one is the break's.
            whole = key and all(m in members for m in sample.MEMBERS)
            if whole:
                finish(key, members)
            add("" if whole else key, "truncated", f"tar breaks after {len(keys)} samples: {e}")
        reader.drain()
    if end is not None and not _ends_cleanly(url, end):
        detail = "a bad header or no end-of-archive block"
        add("", "truncated", f"tar stops at byte {end} of {reader.size}: {detail}")
    if reader.size != entry.bytes:
        add("", "size", f"{reader.size} bytes, manifest says {entry.bytes}")
    if reader.digest.hexdigest() != entry.sha256:
        add("", "checksum", f"sha256 {reader.digest.hexdigest()}, manifest says {entry.sha256}")
    if len(keys) != entry.samples:
        add("", "count", f"{len(keys)} samples, manifest says {entry.samples}")
    tar_sound = not any(p.kind in ("size", "checksum") for p in problems)
    index_problem = check_index(url, entry, layout, reader.size) if tar_sound else None
    if index_problem:  # (a damaged tar is the problem to fix: rewriting it rewrites its index)
        add("", "index", index_problem)
    return problems, keys


def verify(
    shards_url: str, progress: Callable[[int, int], None] | None = None, workers: int = 8
) -> list[Problem]:
    """Every problem of the shard set at `shards_url` (empty: all shards are sound).

    ShardSetError when there is no readable manifest. progress(done, total) per shard.
    """
    manifest = read_manifest(shards_url)
    entries = manifest.shards
    results: dict[str, tuple[list[Problem], list[str]]] = {}
    with ThreadPoolExecutor(max(1, min(workers, len(entries)))) as pool:
        futures = {
            pool.submit(check_shard, join_url(shards_url, e.name), e, manifest.chip_size): e.name
            for e in entries
        }
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress:
                progress(done, len(entries))
    problems: list[Problem] = []
    where: dict[str, str] = {}  # key -> the first shard holding it
    for e in entries:  # manifest order, whatever order the threads finished in
        found, keys = results[e.name]
        problems += found
        for k in dict.fromkeys(keys):
            if k in where and where[k] != e.name:
                problems.append(Problem(e.name, k, "duplicate_key", f"also in {where[k]}"))
            where.setdefault(k, e.name)
    return problems
