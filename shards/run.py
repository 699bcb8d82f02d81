"""`eomae shard`: cube -> chips -> spatial splits -> shuffled WebDataset shards + manifest.

Phases: scan every complete unit for chips (a Ray task per unit), split and filter on the
driver, shuffle each split across tiles and dates and pack it into shards by bytes, write
the shards (a Ray task per shard: temp file + rename, so a shard that exists is whole;
its member-offset index, `NAME.tar.idx`, is renamed into place just before it), compute
statistics (a task per unit), write the manifest last.

A re-run keeps a complete shard set made with the same settings from the same units; a
run that was cut off reuses its plan and the shards already written.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem

from ingest.cube import open_cube, unit_problems
from ingest.grid import RESOLUTION_M
from ingest.parallel import imap_unordered
from shards import sample, tar
from shards.chips import Chip, UnitReader, scan_unit, split_chips
from shards.config import CONTENT_FIELDS, SPLITS, ShardConfig, join_url
from shards.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    PLAN,
    STATS,
    ShardEntry,
    ShardSetError,
    read_json,
    sha256_of,
    write_json,
)
from shards.modalities import LC, MODALITIES, VALID
from shards.stats import combine, unit_sums

log = logging.getLogger(__name__)
TAR_BLOCK = 512


@dataclass
class ShardPlan:
    """One shard to write: its name, split and samples in order."""

    name: str
    split: str
    chips: list[Chip]


def sample_bytes(chip_size: int, meta_bytes: int = 1536) -> int:
    """Bytes a sample takes in a tar: each member's header and padded data."""
    raw = [*sample.array_bytes(chip_size).values(), meta_bytes]
    npy_header = 128
    padded = [-(-(size + npy_header) // TAR_BLOCK) * TAR_BLOCK for size in raw]
    return sum(padded) + TAR_BLOCK * len(raw)


def pack(by_split: dict[str, list[Chip]], cfg: ShardConfig) -> list[ShardPlan]:
    """Shuffle each split (across tiles and dates) and cut it into shards of ~shard_bytes."""
    per_shard = max(1, cfg.shard_bytes // sample_bytes(cfg.chip_size))
    plans = []
    rng = np.random.default_rng(cfg.seed)
    for split in SPLITS:
        chips = sorted(by_split[split], key=lambda c: c.key)
        order = rng.permutation(len(chips))
        shuffled = [chips[i] for i in order]
        for i, start in enumerate(range(0, len(shuffled), per_shard)):
            plans.append(
                ShardPlan(f"{split}-{i:06d}.tar", split, shuffled[start : start + per_shard])
            )
    return plans


def sample_meta(chip: Chip, split: str, unit: dict[str, Any]) -> dict[str, Any]:
    """The `json` member of a sample."""
    return {
        "key": chip.key,
        "chip_id": chip.chip_id,
        "unit_id": chip.unit_id,
        "split": split,
        "epsg": chip.epsg,
        "transform": [RESOLUTION_M, 0, chip.x0, 0, -RESOLUTION_M, chip.y0],
        "datetime": unit["datetime"],
        "mgrs_tile": unit["mgrs_tile"],
        "items": unit["items"],
        "cloud_fraction": chip.cloud_fraction,
        "invalid_fraction": chip.invalid_fraction,
        "lc_fractions": {
            str(code): f for code, f in zip(LC.classes, chip.lc_fractions, strict=True)
        },
        "provenance": {**(unit.get("provenance") or {}), "coverage": chip.coverage},
    }


def read_chip(unit: UnitReader, chip: Chip, size: int) -> dict[str, np.ndarray]:
    """The arrays of one chip from its cube unit, shaped as the sample stores them."""
    rows, cols = slice(chip.row, chip.row + size), slice(chip.col, chip.col + size)
    arrays = {}
    for name in (*MODALITIES, VALID):
        a = unit.read(name, np.s_[..., rows, cols])
        arrays[name] = a[None] if name in MODALITIES and a.ndim == 2 else a
    return arrays


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed: same input, same bytes
    archive.addfile(info, io.BytesIO(data))


def _put(local: bool, fs: Any, tmp: str, path: str) -> None:
    """Move a finished temp file to its place: a rename locally, an upload elsewhere."""
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    if local:
        os.replace(tmp, path)
    else:
        fs.put_file(tmp, path)


def write_shard(
    cube_url: str, out_url: str, plan: ShardPlan, units: dict[str, dict[str, Any]], size: int
) -> dict[str, Any]:
    """Write one shard atomically; return its manifest entry."""
    fs, path = fsspec.core.url_to_fs(join_url(out_url, plan.name))
    local = isinstance(fs, LocalFileSystem)
    tmp_dir = os.path.dirname(path) if local else tempfile.gettempdir()
    fd, tmp = tempfile.mkstemp(prefix=f".{plan.name}.", suffix=".tmp", dir=tmp_dir)
    tmp_index = tmp.removesuffix(".tmp") + tar.INDEX_SUFFIX + ".tmp"
    cube = open_cube(cube_url)
    readers: dict[str, UnitReader] = {}
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as archive,
        ):
            for chip in plan.chips:
                if chip.unit_id not in readers:
                    readers[chip.unit_id] = UnitReader.of(cube, chip.unit_id)
                meta = sample_meta(chip, plan.split, units[chip.unit_id])
                for suffix, data in sample.encode(
                    read_chip(readers[chip.unit_id], chip, size), meta
                ):
                    _add_member(archive, f"{chip.key}.{suffix}", data)
        tar_bytes = os.path.getsize(tmp)
        with open(tmp, "rb") as written, open(tmp_index, "w") as out:
            json.dump(tar.build_index(written, tar_bytes), out, separators=(",", ":"))
        entry = ShardEntry(
            name=plan.name, split=plan.split, samples=len(plan.chips), bytes=tar_bytes,
            sha256=sha256_of(tmp), index_bytes=os.path.getsize(tmp_index),
        )  # fmt: skip
        _put(local, fs, tmp_index, path + tar.INDEX_SUFFIX)  # first: a shard in place has one
        _put(local, fs, tmp, path)
    finally:
        for t in (tmp, tmp_index):
            if os.path.exists(t):
                os.remove(t)
    return entry.model_dump()


def complete_units(cube_url: str) -> list[str]:
    """The units of the cube that were fully written; ShardSetError if there are none."""
    fs, path = fsspec.core.url_to_fs(cube_url)
    if not fs.exists(path):
        raise ShardSetError(f"no cube at {cube_url}; run `eomae ingest` first")
    cube = open_cube(cube_url)
    units = []
    for name in sorted(cube.group_keys()):
        group = cube[name]
        if isinstance(group, zarr.Group) and group.attrs.get("complete"):
            if problems := unit_problems(group):
                raise ShardSetError(
                    f"unit {name} of {cube_url} is damaged ({'; '.join(problems)}); "
                    "run `eomae ingest` again to rewrite it"
                )
            units.append(name)
    if not units:
        raise ShardSetError(f"cube {cube_url} has no complete units; run `eomae ingest` first")
    return units


def _content(cfg: ShardConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k in CONTENT_FIELDS}


def _changed(saved: dict[str, Any], cfg: ShardConfig, units: list[str]) -> list[str]:
    """What differs between a saved manifest/plan and this run (empty: the same)."""
    content = _content(cfg)
    changed = sorted(k for k in CONTENT_FIELDS if saved["config"].get(k) != content[k])
    if saved["units"] != units:
        changed.append("cube units")
    return changed


def _clear(out_url: str) -> None:
    fs, path = fsspec.core.url_to_fs(out_url)
    if fs.exists(path):
        for p in fs.ls(path, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.endswith((".tar", ".tar" + tar.INDEX_SUFFIX, ".tmp")) or name in (
                MANIFEST, STATS, PLAN,
            ):  # fmt: skip
                fs.rm(p)


def make_plan(
    cfg: ShardConfig, units: list[str], progress: Callable[[str, int, int], None] | None
) -> dict[str, Any]:
    """Scan the units for chips on Ray, split, pack; the JSON-ready plan."""
    chips: list[Chip] = []
    calls = [(cfg.cube_url, u, cfg.chip_size) for u in units]
    for done, (index, found, error) in enumerate(
        imap_unordered(scan_unit, calls, cfg.max_concurrent_tasks, address=cfg.address), 1
    ):
        if error is not None:
            raise ShardSetError(f"scanning unit {units[index]} failed: {error}") from error
        chips += found
        if progress:
            progress("scan", done, len(units))
    by_split, dropped = split_chips(chips, cfg)
    if not any(by_split.values()):
        raise ShardSetError(
            f"no chip of {cfg.chip_size} px in {cfg.cube_url} has at most {cfg.max_invalid:.0%} "
            "invalid pixels; lower --chip-size or raise --max-invalid"
        )
    return {
        "config": _content(cfg),
        "units": units,
        "candidates": len(chips),
        "dropped": dropped,
        "shards": [
            {"name": p.name, "split": p.split, "chips": [c.to_dict() for c in p.chips]}
            for p in pack(by_split, cfg)
        ],
    }


def _plans(plan: dict[str, Any]) -> list[ShardPlan]:
    def chip(d: dict[str, Any]) -> Chip:
        return Chip(
            **{**d, "lc_fractions": tuple(d["lc_fractions"]), "coverage": d.get("coverage", {})}
        )

    return [ShardPlan(s["name"], s["split"], [chip(c) for c in s["chips"]]) for s in plan["shards"]]


def run_shard(
    cfg: ShardConfig, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Make (or keep) the shard set of `cfg`; return a summary. progress(phase, done, total)."""
    t0 = time.perf_counter()
    out = cfg.out_url
    units = complete_units(cfg.cube_url)
    fs, out_path = fsspec.core.url_to_fs(out)
    manifest_url, plan_url = join_url(out, MANIFEST), join_url(out, PLAN)
    if cfg.force:
        _clear(out)
    elif fs.exists(fs._strip_protocol(manifest_url)):
        changed = _changed(read_json(manifest_url), cfg, units)
        if changed:
            raise ShardSetError(
                f"{out} holds shards made with other settings ({', '.join(changed)}); "
                "use --force to rewrite them or another --out"
            )
        return {**read_json(manifest_url), "kept": True, "elapsed_s": 0.0}
    plan = read_json(plan_url) if fs.exists(fs._strip_protocol(plan_url)) else None
    if plan is not None and _changed(plan, cfg, units):
        log.info("plan in %s is for other settings; re-planning", out)
        _clear(out)
        plan = None
    if plan is None:
        plan = make_plan(cfg, units, progress)
        fs.makedirs(out_path, exist_ok=True)
        write_json(plan_url, plan)
    t_plan = time.perf_counter() - t0

    shard_plans = _plans(plan)
    cube = open_cube(cfg.cube_url)
    unit_meta = {
        u: {k: cube[u].attrs.get(k) for k in ("datetime", "mgrs_tile", "items", "provenance")}
        for u in units
    }
    entries: dict[str, dict[str, Any]] = {}
    todo = []
    for p in shard_plans:
        url = join_url(out, p.name)
        if fs.exists(fs._strip_protocol(url)):  # renamed into place: whole
            index = fs._strip_protocol(url + tar.INDEX_SUFFIX)  # placed before the shard
            entries[p.name] = ShardEntry(
                name=p.name, split=p.split, samples=len(p.chips),
                bytes=fs.size(fs._strip_protocol(url)), sha256=sha256_of(url),
                index_bytes=fs.size(index) if fs.exists(index) else 0,
            ).model_dump()  # fmt: skip
        else:
            todo.append(p)
    calls = [
        (cfg.cube_url, out, p, {c.unit_id: unit_meta[c.unit_id] for c in p.chips}, cfg.chip_size)
        for p in todo
    ]
    for done, (index, entry, error) in enumerate(
        imap_unordered(write_shard, calls, cfg.max_concurrent_tasks, address=cfg.address), 1
    ):
        if error is not None:
            raise ShardSetError(f"writing {todo[index].name} failed: {error}") from error
        entries[entry["name"]] = entry
        if progress:
            progress("write", done, len(todo))
    t_write = time.perf_counter() - t0 - t_plan

    if progress:
        progress("stats", 0, 1)
    sums = []  # a Ray task per unit: the driver only adds the sums up
    for index, unit_sum, error in imap_unordered(
        unit_sums, [(cfg.cube_url, u) for u in units], cfg.max_concurrent_tasks,
        address=cfg.address,
    ):  # fmt: skip
        if error is not None:
            raise ShardSetError(f"statistics of unit {units[index]} failed: {error}") from error
        sums.append(unit_sum)
    write_json(join_url(out, STATS), combine(sums))
    t_stats = time.perf_counter() - t0 - t_plan - t_write
    manifest = {
        "version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cube": cfg.cube_url,
        "units": units,
        "config": _content(cfg),
        "chip_size": cfg.chip_size,
        "modalities": {
            m.name: {"bands": list(m.bands), "dtype": m.dtype, "classes": list(m.classes)}
            for m in MODALITIES.values()
        },
        "shards": [entries[p.name] for p in shard_plans],
        "dropped": {**plan["dropped"], "candidates": plan["candidates"]},
    }
    write_json(manifest_url, manifest)  # last: the set is complete now
    return {
        **manifest,
        "kept": False,
        "written": len(todo),
        "plan_s": round(t_plan, 2),
        "write_s": round(t_write, 2),
        "stats_s": round(t_stats, 2),
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
