"""`eomae verify` finds every kind of damage a shard set can suffer, naming shard and sample;
`preview` draws samples and `describe` summarises the set."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from shards import tar
from shards.config import SPLITS
from shards.manifest import MANIFEST, ShardSetError, read_manifest, sha256_of
from shards.preview import describe, figure_inches, preview
from shards.verify import Problem, verify

Members = list[tuple[str, bytes]]


def read_members(tar_path: Path) -> Members:
    with tarfile.open(tar_path) as tar:
        out = []
        for info in tar:
            data = tar.extractfile(info)
            assert data is not None
            out.append((info.name, data.read()))
    return out


def write_members(tar_path: Path, members: Members) -> None:
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def edit_manifest(shards: Path, name: str, **fields: Any) -> None:
    manifest = json.loads((shards / MANIFEST).read_text())
    entry = next(e for e in manifest["shards"] if e["name"] == name)
    entry.update(fields)
    (shards / MANIFEST).write_text(json.dumps(manifest))


def rewrite(shards: Path, name: str, edit: Callable[[Members], Members]) -> None:
    """Rewrite a shard with edited members and update its index, sha256 and size in the
    manifest, so only the damage inside the samples shows."""
    path = shards / name
    write_members(path, edit(read_members(path)))
    size = path.stat().st_size
    with path.open("rb") as f:
        index = json.dumps(tar.build_index(f, size)).encode()
    (shards / f"{name}{tar.INDEX_SUFFIX}").write_bytes(index)
    edit_manifest(shards, name, bytes=size, sha256=sha256_of(str(path)), index_bytes=len(index))


def target(shards: Path) -> tuple[str, list[str]]:
    """A shard with several samples and its keys in order."""
    entry = next(e for e in read_manifest(str(shards)).shards if e.samples >= 3)
    keys = [n.split(".", 1)[0] for n, _ in read_members(shards / entry.name)]
    return entry.name, list(dict.fromkeys(keys))


def where(problems: list[Problem]) -> set[tuple[str, str, str]]:
    return {(p.shard, p.sample, p.kind) for p in problems}


def replace_array(key: str, suffix: str, change: Callable[[np.ndarray], np.ndarray]) -> Any:
    def edit(members: Members) -> Members:
        out = []
        for name, data in members:
            if name == f"{key}.{suffix}":
                buf = io.BytesIO()
                np.save(buf, change(np.load(io.BytesIO(data))))
                data = buf.getvalue()
            out.append((name, data))
        return out

    return edit


def test_a_clean_shard_set_has_no_problems(shard_set: Any) -> None:
    calls: list[tuple[int, int]] = []
    assert verify(shard_set[0].out_url, progress=lambda d, t: calls.append((d, t))) == []
    total = len(read_manifest(shard_set[0].out_url).shards)
    assert sorted(calls) == [(d, total) for d in range(1, total + 1)]


def test_flipped_bytes_fail_the_checksum(shard_copy: Path) -> None:
    name, _ = target(shard_copy)
    path = shard_copy / name
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    path.write_bytes(bytes(data))
    problems = verify(str(shard_copy))
    assert (name, "", "checksum") in where(problems)
    assert {p.shard for p in problems} == {name}
    assert "size" not in {p.kind for p in problems}


@pytest.mark.parametrize("cut", ["mid-member", "at-a-sample-boundary"])
def test_a_truncated_shard_is_reported_with_its_count(shard_copy: Path, cut: str) -> None:
    name, keys = target(shard_copy)
    path = shard_copy / name
    if cut == "mid-member":
        size = path.stat().st_size // 2 + 100
    else:  # tarfile itself sees nothing wrong here: it just ends before the third sample
        with tarfile.open(path) as tar:
            size = next(i.offset for i in tar if i.name.startswith(keys[2]))
    with path.open("r+b") as f:
        f.truncate(size)
    problems = where(verify(str(shard_copy)))
    assert {p[2] for p in problems if p[0] == name} >= {"truncated", "count", "checksum", "size"}
    assert {p[0] for p in problems} == {name}
    if cut == "at-a-sample-boundary":  # the samples before the break are whole and checked
        assert problems == {(name, "", k) for k in ("truncated", "count", "checksum", "size")}


def test_a_missing_member_is_named(shard_copy: Path) -> None:
    name, keys = target(shard_copy)
    rewrite(shard_copy, name, lambda ms: [m for m in ms if m[0] != f"{keys[1]}.dem.npy"])
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, keys[1], "missing_member")}
    assert "dem.npy" in problems[0].detail


def test_a_damaged_npy_header_is_a_decode_problem(shard_copy: Path) -> None:
    """numpy tokenizes a .npy header; a damaged one raised TokenError and crashed verify."""
    name, keys = target(shard_copy)

    def damage(members: Members) -> Members:
        return [(n, d.replace(b"}", b"(", 1) if n == f"{keys[1]}.s2.npy" else d)
                for n, d in members]  # fmt: skip

    rewrite(shard_copy, name, damage)
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, keys[1], "decode")}
    assert "s2.npy" in problems[0].detail and "header" in problems[0].detail


def test_wrong_shape_and_dtype_break_the_schema(shard_copy: Path) -> None:
    name, keys = target(shard_copy)
    rewrite(shard_copy, name, replace_array(keys[0], "s2.npy", lambda a: a[:, :32, :32]))
    rewrite(shard_copy, name, replace_array(keys[2], "s2.npy", lambda a: a.astype(np.float32)))
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, keys[0], "schema"), (name, keys[2], "schema")}
    assert {p.sample: p.detail.split()[1] for p in problems} == {keys[0]: "shape", keys[2]: "dtype"}


def test_nan_at_a_valid_pixel_is_a_value_problem(shard_copy: Path) -> None:
    name, keys = target(shard_copy)
    members = dict(read_members(shard_copy / name))
    valid = np.load(io.BytesIO(members[f"{keys[1]}.valid.npy"]))
    row, col = np.argwhere(valid)[0]

    def poison(dem: np.ndarray) -> np.ndarray:
        dem = dem.copy()
        dem[0, row, col] = np.nan
        return dem

    rewrite(shard_copy, name, replace_array(keys[1], "dem.npy", poison))
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, keys[1], "values")}
    assert "NaN" in problems[0].detail


def test_a_wrong_count_in_the_manifest_is_reported(shard_copy: Path) -> None:
    name, keys = target(shard_copy)
    edit_manifest(shard_copy, name, samples=len(keys) + 1)
    assert where(verify(str(shard_copy))) == {(name, "", "count")}


def test_a_missing_shard_is_reported(shard_copy: Path) -> None:
    name, _ = target(shard_copy)
    (shard_copy / name).unlink()
    assert where(verify(str(shard_copy))) == {(name, "", "missing_shard")}


def test_an_index_that_does_not_match_its_shard_is_reported(shard_copy: Path) -> None:
    name, keys = target(shard_copy)
    index_path = shard_copy / f"{name}{tar.INDEX_SUFFIX}"
    index = json.loads(index_path.read_bytes())
    sound = index_path.read_bytes()
    index["samples"][1][1][0][1] += 512  # the second sample's first member, one block off
    index_path.write_bytes(json.dumps(index).encode().ljust(len(sound)))  # same size
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, "", "index")}
    assert f"{keys[1]}" in problems[0].detail
    index_path.unlink()  # the manifest lists an index: its absence is a problem too
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, "", "index")}
    assert "missing" in problems[0].detail


def test_an_index_overwritten_with_binary_is_named_in_a_line(shard_copy: Path) -> None:
    """A UnicodeDecodeError's repr holds the whole input: 20 KB in one message."""
    name, _ = target(shard_copy)
    (shard_copy / f"{name}{tar.INDEX_SUFFIX}").write_bytes((shard_copy / name).read_bytes())
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, "", "index")}
    assert "malformed index: UnicodeDecodeError" in problems[0].detail
    assert len(problems[0].detail) < 200


def test_a_damaged_manifest_says_what_is_wrong(shard_copy: Path) -> None:
    manifest = shard_copy / MANIFEST
    sound = json.loads(manifest.read_text())
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(ShardSetError, match="is not valid JSON.*shard --force"):
        read_manifest(str(shard_copy))
    manifest.write_text(json.dumps({**sound, "shards": [{"name": 3}] * 2000}))
    with pytest.raises(ShardSetError, match="not an eomae manifest .*shards.0") as raised:
        read_manifest(str(shard_copy))
    assert len(str(raised.value)) < 400
    manifest.unlink()
    with pytest.raises(ShardSetError, match="no complete shard set .*run `eomae shard`"):
        read_manifest(str(shard_copy))


def test_duplicates_strays_and_bad_json_are_all_reported(shard_copy: Path) -> None:
    name, keys = target(shard_copy)
    names = [e.name for e in read_manifest(str(shard_copy)).shards]
    other = names[names.index(name) - 1] if names.index(name) else names[1]
    later = max(name, other, key=names.index)  # a key is reported where it shows up again
    borrowed = read_members(shard_copy / other)[:5]  # the first sample of another shard
    copied = borrowed[0][0].split(".", 1)[0]

    def edit(members: Members) -> Members:
        bad_json = [(n, b"{not json" if n == f"{keys[0]}.json" else d) for n, d in members]
        return [*bad_json, (f"{keys[1]}.notes.txt", b"hello"), *borrowed]

    rewrite(shard_copy, name, edit)
    assert where(verify(str(shard_copy))) == {
        (name, keys[0], "decode"),
        (name, keys[1], "unexpected_member"),
        (later, copied, "duplicate_key"),
        (name, "", "count"),
    }


def test_preview_draws_n_rows_and_describe_names_every_split(
    shard_set: Any, tmp_path: Path
) -> None:
    url = shard_set[0].out_url
    png = preview(url, str(tmp_path / "preview.png"), n=3, seed=1)
    image = matplotlib.image.imread(png)  # [H, W, 4] floats
    width, height = figure_inches(3)
    assert image.shape[0] / image.shape[1] == pytest.approx(height / width, rel=0.02)
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # imagery, not a blank canvas
    text = describe(url)
    assert all(split in text for split in SPLITS)
    assert "Tree cover" in text


def test_metadata_that_disagrees_with_where_the_sample_is_stored(shard_copy: Path) -> None:
    name, keys = target(shard_copy)

    def edit(members: Members) -> Members:
        out = []
        for n, data in members:
            if n == f"{keys[1]}.json":
                data = json.dumps({**json.loads(data), "split": "elsewhere"}).encode()
            out.append((n, data))
        return out

    rewrite(shard_copy, name, edit)
    problems = verify(str(shard_copy))
    assert where(problems) == {(name, keys[1], "values")}
    assert "split" in problems[0].detail
