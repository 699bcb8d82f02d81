"""shards.tar reads what tarfile writes, in every format, and refuses corrupt tars."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import fsspec
import pytest
import webdataset as wds

from shards import tar
from shards.config import ShardConfig, join_url
from shards.manifest import read_manifest

MEMBERS = [
    ("k0.s2.npy", b"x" * 1000),
    ("k0.json", b'{"a": 1}'),
    ("empty.txt", b""),
    ("exactly-one-block.bin", bytes(range(256)) * 2),
    ("long-dir-" * 12 + "/k1.s2.npy", b"long"),  # > 100 characters: GNU, pax, ustar prefix
    ("ünïcode.json", b"{}"),
]


def make_tar(fmt: int, members: list[tuple[str, bytes]] = MEMBERS) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        t.addfile(_dir("a-directory"))  # skipped: not a file
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_tarfile(fmt: int) -> None:
    members = MEMBERS
    if fmt == tarfile.USTAR_FORMAT:  # ustar: names split into prefix/name, ASCII only
        members = [(n, d) for n, d in MEMBERS if n.isascii()]
    data = make_tar(fmt, members)
    assert list(tar.members(io.BytesIO(data))) == members


def test_a_flipped_header_byte_is_refused() -> None:
    data = bytearray(make_tar(tarfile.GNU_FORMAT))
    data[512 + 20] ^= 0x01  # inside the first file's name: checksum no longer matches
    with pytest.raises(tar.TarError, match="checksum"):
        list(tar.members(io.BytesIO(bytes(data))))


def test_a_truncated_member_is_refused_after_the_whole_ones() -> None:
    data = make_tar(tarfile.GNU_FORMAT)
    cut = 512 + 512 + 500  # directory header, first file's header, part of its data
    got = []
    with pytest.raises(tar.TarError, match="truncated member"):
        for name, _ in tar.members(io.BytesIO(data[:cut])):
            got.append(name)
    assert got == []
    got = []
    with pytest.raises(tar.TarError, match="truncated"):
        for name, _ in tar.members(io.BytesIO(data[: 512 * 6 + 100])):
            got.append(name)
    assert got == ["k0.s2.npy", "k0.json"]


def test_short_reads_are_completed() -> None:
    class Trickle(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(min(n, 7) if n and n > 0 else n)

    data = make_tar(tarfile.GNU_FORMAT)
    assert list(tar.members(Trickle(data))) == MEMBERS


def test_numbers_octal_and_base256() -> None:
    assert tar._number(b"0000644\x00") == 0o644
    assert tar._number(b"   17 \x00\x00\x00") == 0o17
    assert tar._number(b"\x80" + (5 * 2**33).to_bytes(11, "big")) == 5 * 2**33
    with pytest.raises(tar.TarError):
        tar._number(b"12x45\x00")


def test_samples_group_as_webdataset_does(shard_set: tuple[ShardConfig, Any]) -> None:
    shards_url = shard_set[0].out_url
    manifest = read_manifest(shards_url)
    url = join_url(shards_url, manifest.shards[0].name)
    with fsspec.open(url, "rb") as f:
        ours = list(tar.samples(f, url))
    theirs = list(wds.WebDataset(url, shardshuffle=False))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
    assert len(ours) == manifest.shards[0].samples
    for a, b in zip(ours, theirs, strict=True):
        assert {k: v for k, v in a.items() if k != "__url__"} == {
            k: v for k, v in b.items() if not k.startswith("__") or k == "__key__"
        }


def test_a_repeated_field_in_a_sample_is_refused() -> None:
    data = make_tar(tarfile.GNU_FORMAT, [("k.s2.npy", b"a"), ("k.s2.npy", b"b")])
    with pytest.raises(tar.TarError, match="second 's2.npy'"):
        list(tar.samples(io.BytesIO(data)))


def test_split_name() -> None:
    assert tar.split_name("d.x/k.s2.npy") == ("d.x/k", "s2.npy")
    assert tar.split_name("k.json") == ("k", "json")
    assert tar.split_name("noext") == ("noext", "")


def test_the_index_reads_the_same_samples_as_the_headers(
    shard_set: tuple[ShardConfig, Any],
) -> None:
    shards_url = shard_set[0].out_url
    for entry in read_manifest(shards_url).shards:
        url = join_url(shards_url, entry.name)
        with fsspec.open(url + tar.INDEX_SUFFIX, "rb") as f:
            index = tar.parse_index(f.read(), entry.bytes)
        with fsspec.open(url, "rb") as f:
            by_headers = list(tar.samples(f, url))
            mapped = list(tar.indexed_samples(f, index, url))  # a local file: mmap
            f.seek(0)
            read = list(tar.indexed_samples(io.BytesIO(f.read()), index, url))  # no file
        for by_index in (mapped, read):
            assert len(by_index) == entry.samples
            assert [{k: bytes(v) if isinstance(v, memoryview) else v for k, v in s.items()}
                    for s in by_index] == by_headers  # fmt: skip


def test_an_index_for_another_tar_is_refused() -> None:
    data = make_tar(tarfile.GNU_FORMAT)
    index = tar.build_index(io.BytesIO(data), len(data))
    key, fields = index["samples"][0]
    assert (key, [f[0] for f in fields]) == ("k0", ["s2.npy", "json"])
    assert data[fields[0][1] : fields[0][1] + fields[0][2]] == MEMBERS[0][1]
    encoded = json.dumps(index).encode()
    assert tar.parse_index(encoded, len(data))
    with pytest.raises(tar.TarError, match="not"):  # the shard was rewritten since
        tar.parse_index(encoded, len(data) + 512)
    index["samples"][-1][1][-1][2] = len(data)
    with pytest.raises(tar.TarError, match="past the end"):
        tar.parse_index(json.dumps(index).encode(), len(data))
    with pytest.raises(tar.TarError, match="malformed"):
        tar.parse_index(b'{"version": 1, "tar_bytes": 10}', 10)
    with pytest.raises(tar.TarError, match="malformed"):
        tar.parse_index(b"\x00garbage", 10)
