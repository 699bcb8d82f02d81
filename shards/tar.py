"""A shard's tar members and samples, streamed: the loader's read path.

Python's `tarfile` (which webdataset's expander uses) builds a TarInfo per member, ~70 µs
each; with five members of ~30 KB per 64 px sample, that was as much time as decoding
the arrays (docs/benchmarks.md). This reads the tar format directly: a 512-byte header,
its checksum, the member's bytes, the padding to the next block. It reads the tars
`shards.run` writes (GNU format, regular files) and plain ustar/pax tars, from any
file-like stream (local files, fsspec, HTTP), one member at a time.

`samples` groups consecutive members into WebDataset samples as webdataset does: the key
is the member path up to the first dot of its file name, the rest is the field name.

A bad header checksum, a truncated member or a number field that does not parse raises
TarError, which the loader counts and skips like any other corrupt shard data.

The index: `build_index` records where each sample's members lie in a tar, and
`shards.run` writes it beside each shard (`NAME.tar.idx`, JSON). With it,
`indexed_samples` hands out each member as a view: of the memory-mapped file for a local
shard, of one read per sample otherwise; no headers, no per-member reads. That is what
makes the loader keep up with decoding from memory at 64 px (docs/benchmarks.md). The
index holds the tar's size, so an index left beside a rewritten shard is refused
(`parse_index`) and the tar is read by its headers instead; plain WebDataset readers
ignore the file.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from typing import Any, BinaryIO

BLOCK = 512  # tar block; an archive ends with zero blocks
REGULAR = (b"0", b"\0", b"7")  # file, old-style file, contiguous file
GNU_LONGNAME = b"L"
PAX_HEADERS = (b"x", b"g")
INDEX_SUFFIX = ".idx"  # train-000000.tar -> train-000000.tar.idx
INDEX_VERSION = 1
# One sample's members: [field, offset of the member's bytes in the tar, size], in tar order.
IndexedSample = tuple[str, list[tuple[str, int, int]]]


class TarError(ValueError):
    """The stream is not a well-formed tar at this point."""


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value if field[0] == 0x80 else value - (1 << (8 * (len(field) - 1)))
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError as e:
        raise TarError(f"bad numeric field {field!r}") from e


def _checksum_ok(header: bytes) -> bool:
    # The checksum field counts as eight spaces. Some writers sum signed bytes.
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    return stored == unsigned or stored == unsigned - 256 * sum(b >= 128 for b in header)


def _read(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # a network stream may return short reads
        more = stream.read(n - len(data))
        if not more:
            raise TarError(f"truncated {what}: {len(data)} of {n} bytes")
        data += more
    return data


def _pax_path(records: bytes) -> str | None:
    """The `path` of a pax extended header (records "LEN key=value"), if it has one."""
    while records:
        length, _, rest = records.partition(b" ")
        n = int(length)
        key, _, value = rest[: n - len(length) - 2].partition(b"=")
        if key == b"path":
            return value.decode(errors="replace")
        records = records[n:]
    return None


def members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file in the tar, in order; TarError if it is corrupt."""
    for name, _, data in _walk(stream):
        yield name, data


def _walk(stream: BinaryIO) -> Iterator[tuple[str, int, bytes]]:
    """(name, offset of its bytes from where the stream starts, bytes) of each regular file."""
    long_name: str | None = None
    position = 0
    while True:
        header = stream.read(BLOCK)
        if not header:  # end of the file without the end-of-archive blocks
            return
        if len(header) < BLOCK:
            header += _read(stream, BLOCK - len(header), "header")
        if header.count(0) == BLOCK:  # end of archive
            return
        if not _checksum_ok(header):
            raise TarError("header checksum mismatch")
        size, kind = _number(header[124:136]), header[156:157]
        data = _read(stream, size, "member")
        _read(stream, -size % BLOCK, "padding")
        offset, position = position + BLOCK, position + BLOCK + size + -size % BLOCK
        if kind == GNU_LONGNAME:
            long_name = data.rstrip(b"\0").decode(errors="replace")
        elif kind in PAX_HEADERS:
            try:
                long_name = _pax_path(data) if kind == b"x" else long_name
            except ValueError as e:
                raise TarError(f"bad pax header: {e}") from e
        elif kind in REGULAR:
            name = long_name or _header_name(header)
            long_name = None
            yield name, offset, data
        else:  # directories, links: nothing a shard holds
            long_name = None


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode(errors="replace")
    if header[257:263] == b"ustar\0":  # POSIX: a long path is split into prefix / name
        prefix = header[345:500].split(b"\0", 1)[0].decode(errors="replace")
        return f"{prefix}/{name}" if prefix else name
    return name


def split_name(name: str) -> tuple[str, str]:
    """(sample key, field) of a member name: "d/k.s2.npy" -> ("d/k", "s2.npy")."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def samples(stream: BinaryIO, url: str = "") -> Iterator[dict[str, Any]]:
    """WebDataset samples {"__key__", "__url__", field: bytes} of a tar, in order.

    A sample is yielded once the next key starts (or the tar ends), so a tar that breaks
    mid-sample raises TarError before yielding the incomplete sample.
    """
    current: dict[str, Any] | None = None
    for name, data in members(stream):
        key, field = split_name(name)
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if field in current:
            raise TarError(f"{name}: a second {field!r} in sample {key!r}")
        current[field] = data
    if current is not None:
        yield current


def build_index(stream: BinaryIO, tar_bytes: int) -> dict[str, Any]:
    """The index of a tar of `tar_bytes` bytes, read from its start (JSON-ready)."""
    samples: list[list[Any]] = []
    for name, offset, data in _walk(stream):
        key, field = split_name(name)
        if not samples or samples[-1][0] != key:
            samples.append([key, []])
        samples[-1][1].append([field, offset, len(data)])
    return {"version": INDEX_VERSION, "tar_bytes": tar_bytes, "samples": samples}


def parse_index(data: bytes, tar_bytes: int) -> list[IndexedSample]:
    """The samples of an index file, checked against its tar's size; TarError if unusable."""
    try:
        index = json.loads(data)
        if index["version"] != INDEX_VERSION:
            raise TarError(f"index version {index['version']}, not {INDEX_VERSION}")
        if index["tar_bytes"] != tar_bytes:
            raise TarError(f"index is of a tar of {index['tar_bytes']} bytes, not {tar_bytes}")
        samples = [
            (str(key), [(str(f), int(o), int(n)) for f, o, n in fields])
            for key, fields in index["samples"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise TarError(f"malformed index: {type(e).__name__}: {e}") from e
    if any(not m or m[-1][1] + m[-1][2] > tar_bytes for _, m in samples):
        raise TarError("index points past the end of its tar")
    return samples


def indexed_samples(
    stream: BinaryIO, index: list[IndexedSample], url: str = ""
) -> Iterator[dict[str, Any]]:
    """The samples of a seekable tar by its index, members as memoryviews.

    A local file is memory-mapped: members are views of the page cache, no read, copy or
    allocation per sample (numpy decodes them in place). Shards are replaced by rename,
    never rewritten in place, so a mapping stays valid. Other streams (fsspec remote
    files) are read one sample span at a time. Either way, the same samples as `samples`
    yields, which a test checks.
    """
    mapped = _mapped(stream)
    for key, fields in index:
        start, end = fields[0][1], fields[-1][1] + fields[-1][2]
        if mapped is not None:
            if end > len(mapped):
                raise TarError(f"truncated sample: the tar ends at {len(mapped)}, not {end}")
            span, base = mapped, 0
        else:
            stream.seek(start)
            span, base = memoryview(_read(stream, end - start, "sample")), start
        out: dict[str, Any] = {"__key__": key, "__url__": url}
        for field, offset, size in fields:
            out[field] = span[offset - base : offset - base + size]
        yield out


def _mapped(stream: BinaryIO) -> memoryview | None:
    """A read-only view of the whole file behind `stream`, or None if it has no file."""
    try:
        return memoryview(mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ))
    except (AttributeError, OSError, ValueError):  # no fileno (remote), not mappable, empty
        return None
