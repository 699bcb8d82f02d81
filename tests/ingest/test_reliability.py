"""Ingest under failure: re-runs, crashed tasks, a killed driver, a flaky network, bad
input and bad data. Every interrupted run, once re-run, must give the same cube (array
checksums) as the uninterrupted one of the ``ingested`` fixture.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from fault_proxy import FaultProxy  # tests/ingest is on sys.path (rootdir imports)
from procfs import alive, descendants
from pydantic import ValidationError
from rasterio.enums import Resampling

from infra.services import LocalServices
from ingest.catalog import CatalogError, open_catalog
from ingest.config import IngestConfig
from ingest.cube import is_complete, open_cube
from ingest.plan import NothingMatched, Unit, make_plan, plan_from_json
from ingest.run import UnitResult, process_unit, run_ingest
from ingest.sources import sentinel2

Ingested = tuple[IngestConfig, dict[str, Any]]
MakeConfig = Callable[..., IngestConfig]
SECRET = "s3cr3tSASsig"
ROOT = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------


def checksums(run_dir: str | Path) -> dict[str, dict[str, str]]:
    """sha256 of every array (dtype, shape and bytes) of every unit group in the cube."""
    cube = open_cube(f"{run_dir}/cube.zarr")
    out: dict[str, dict[str, str]] = {}
    for unit_id, group in sorted(cube.groups()):
        assert isinstance(group, zarr.Group)
        out[unit_id] = {}
        for name, array in sorted(group.arrays()):
            data = np.asarray(array[...])
            h = hashlib.sha256(f"{data.dtype}{data.shape}".encode())
            h.update(np.ascontiguousarray(data).tobytes())
            out[unit_id][name] = h.hexdigest()
    return out


def complete_units(run_dir: str | Path) -> list[str]:
    cube = open_cube(f"{run_dir}/cube.zarr")
    return sorted(name for name, _ in cube.groups() if is_complete(cube, name))


def status_rows(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((Path(run_dir) / "ingest" / "status.json").read_text())
    return {r["unit_id"]: r for r in rows}


def planned(run_dir: str | Path) -> list[Unit]:
    return plan_from_json((Path(run_dir) / "ingest" / "plan.json").read_text()).units


def all_attrs(run_dir: str | Path) -> str:
    """Every attribute of the cube (root, groups, arrays) as one JSON text."""
    texts = [p.read_text() for p in Path(run_dir, "cube.zarr").rglob("zarr.json")]
    assert texts
    return "\n".join(texts)


def with_asset(unit: Unit, key: str, href: str | None) -> Unit:
    """The unit with one S2 asset's href replaced (or the asset removed when None)."""
    item = copy.deepcopy(unit.s2_item)
    if href is None:
        del item["assets"][key]
    else:
        item["assets"][key]["href"] = href
    return dataclasses.replace(unit, s2_item=item)


def local_path(href: str, services: LocalServices, world: Path) -> Path:
    """The world file the COG server serves at `href`."""
    assert href.startswith(services.cog_url)
    return world / href[len(services.cog_url) :].lstrip("/")


@pytest.fixture(scope="module")
def clean(ingested: Ingested) -> dict[str, dict[str, str]]:
    """Checksums of the uninterrupted ingest."""
    cfg, summary = ingested
    assert summary["failed"] == [] and summary["done"] == summary["units"]
    sums = checksums(cfg.run_dir)
    assert len(sums) == summary["units"]
    return sums


@pytest.fixture(scope="module")
def a_unit(ingested: Ingested) -> Unit:
    """A unit of the clean plan: the first one."""
    return planned(ingested[0].run_dir)[0]


# -- re-runs and interruptions ----------------------------------------------------------


def test_rerun_skips_done_units(
    ray_session: None, ingested: Ingested, clean: dict[str, dict[str, str]]
) -> None:
    cfg, first = ingested
    cube = Path(cfg.run_dir, "cube.zarr")
    mtimes = {p: p.stat().st_mtime_ns for p in cube.rglob("*") if p.is_file()}

    again = run_ingest(cfg)

    assert again["units"] == first["units"]
    assert again["skipped_complete"] == again["units"]
    assert again["done"] == 0 and again["failed"] == []
    assert checksums(cfg.run_dir) == clean
    assert {p: p.stat().st_mtime_ns for p in cube.rglob("*") if p.is_file()} == mtimes
    assert {r["status"] for r in status_rows(cfg.run_dir).values()} == {"done"}


def test_a_lost_chunk_is_found_refused_by_shard_and_rewritten_by_ingest(
    ray_session: None, ingested: Ingested, clean: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    """A deleted chunk file reads as the fill value without error: zeros in shards."""
    from shards.config import ShardConfig
    from shards.manifest import ShardSetError
    from shards.run import run_shard

    cfg, first = ingested
    run = tmp_path / "run"
    shutil.copytree(cfg.run_dir, run)
    victim = sorted(clean)[1]
    lost = next((run / "cube.zarr" / victim / "s2" / "c").rglob("*"), None)
    while lost is not None and lost.is_dir():
        lost = next(lost.iterdir())
    assert lost is not None
    lost.unlink()
    assert not is_complete(open_cube(str(run / "cube.zarr")), victim)
    with pytest.raises(ShardSetError, match=rf"unit {victim} .*damaged.*array s2 holds \d+ of"):
        run_shard(ShardConfig(run_dir=str(run), chip_size=64))
    again = run_ingest(cfg.model_copy(update={"run_dir": str(run)}))
    assert again["done"] == 1 and again["skipped_complete"] == first["units"] - 1
    assert checksums(run) == clean


def test_task_raising_midway_is_recorded_then_rerun_completes(
    ray_session: None,
    make_config: MakeConfig,
    clean: dict[str, dict[str, str]],
    a_unit: Unit,
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path / "run")
    first = run_ingest(cfg, _fail_units=frozenset({a_unit.unit_id}))

    planned_ids = sorted(u.unit_id for u in planned(cfg.run_dir))
    victim = a_unit.unit_id
    assert victim in planned_ids
    assert first["done"] == len(planned_ids) - 1
    assert [uid for uid, _ in first["failed"]] == [victim]
    rows = status_rows(cfg.run_dir)
    assert rows[victim]["status"] == "failed"
    assert "RuntimeError" in rows[victim]["reason"]
    assert f"injected failure in {victim}" in rows[victim]["reason"]
    assert all(r["status"] == "done" for uid, r in rows.items() if uid != victim)
    assert victim not in complete_units(cfg.run_dir)

    second = run_ingest(cfg)

    assert second["skipped_complete"] == len(planned_ids) - 1
    assert second["done"] == 1 and second["failed"] == []
    assert status_rows(cfg.run_dir)[victim]["status"] == "done"
    assert checksums(cfg.run_dir) == clean


def _ingest_command(cfg: IngestConfig) -> list[str]:
    (bbox,) = cfg.bbox
    return [
        sys.executable, "-m", "eomae.cli", "ingest",
        "--catalog", cfg.catalog,
        "--bbox", ",".join(map(str, bbox)),
        "--start", str(cfg.start), "--end", str(cfg.end),
        "--max-cloud-cover", str(cfg.max_cloud_cover),
        "--scenes-per-tile", str(cfg.scenes_per_tile),
        "--chip-size", str(cfg.chip_size),
        "--run-dir", cfg.run_dir,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_of_driver_then_rerun_loses_and_duplicates_nothing(
    make_config: MakeConfig, clean: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    cfg = make_config(tmp_path / "run")
    command = _ingest_command(cfg)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    env.update(
        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT)
    )  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    status = tmp_path / "run" / "ingest" / "status.json"
    deadline = time.monotonic() + 180
    done = 0
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if status.exists():
                done = sum(r["status"] == "done" for r in json.loads(status.read_text()))
                if done >= 1:
                    break
            time.sleep(0.05)
    finally:
        tree = descendants(driver.pid)  # Ray's GCS, raylet, workers
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had exited already; the assertion below says why
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)  # any that left the process group
            except ProcessLookupError:
                pass
        driver.wait(timeout=30)
        log.close()
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    end = time.monotonic() + 30
    while any(alive(p) for p in tree) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [p for p in tree if alive(p)], "Ray processes of the killed driver survive"
    units = planned(cfg.run_dir)
    assert 1 <= done < len(units), "killed mid-run"
    assert len(complete_units(cfg.run_dir)) < len(units)

    rerun = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )  # fmt: skip

    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert complete_units(cfg.run_dir) == sorted(u.unit_id for u in units)
    assert checksums(cfg.run_dir) == clean  # same groups, same arrays: nothing lost or doubled
    assert {r["status"] for r in status_rows(cfg.run_dir).values()} == {"done"}
    assert len(status_rows(cfg.run_dir)) == len(units)


# -- a flaky network --------------------------------------------------------------------


def test_ingest_through_fault_injecting_proxy_matches_clean_run(
    ray_session: None,
    make_config: MakeConfig,
    local_services: LocalServices,
    clean: dict[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    upstreams = {"/cog": local_services.cog_url, "": local_services.stac_url}
    with FaultProxy(upstreams, fail_rate=0.2, seed=1) as proxy:
        cfg = make_config(tmp_path / "run", catalog=proxy.url)
        summary = run_ingest(cfg)

    assert summary["failed"] == []
    assert summary["done"] == summary["units"] == len(clean)
    assert checksums(cfg.run_dir) == clean
    # Both services were faulted, at about the rate asked for, and reads went through it.
    assert proxy.failed[""] >= 1 and proxy.failed["/cog"] >= 10
    total = sum(proxy.failed.values()) + sum(proxy.forwarded.values())
    assert 0.1 < sum(proxy.failed.values()) / total < 0.3
    assert set(proxy.statuses) >= {429, 500, 503}
    hrefs = json.loads(Path(cfg.run_dir, "cube.zarr", min(clean), "zarr.json").read_text())
    assert proxy.url + "/cog/" in json.dumps(hrefs["attributes"]["hrefs"])


def test_proxy_forwards_ranges_faithfully(local_services: LocalServices, a_unit: Unit) -> None:
    import requests

    href = a_unit.s2_item["assets"]["B04"]["href"]
    direct = requests.get(href, headers={"Range": "bytes=100-1123"}, timeout=10)
    with FaultProxy({"/cog": local_services.cog_url}, fail_rate=0.0) as proxy:
        via = requests.get(
            proxy.url_for(local_services.cog_url) + href[len(local_services.cog_url) :],
            headers={"Range": "bytes=100-1123"},
            timeout=10,
        )
    assert direct.status_code == via.status_code == 206
    assert via.headers["Content-Range"] == direct.headers["Content-Range"]
    assert via.content == direct.content and len(via.content) == 1024


def test_search_retries_5xx_and_gives_up_bounded(local_services: LocalServices) -> None:
    with FaultProxy({"": local_services.stac_url}, fail_rate=0.3, seed=3) as proxy:
        client = open_catalog(proxy.url)
        found = client.search(sentinel2.COLLECTION)
    assert found and proxy.failed[""] >= 1
    direct = open_catalog(local_services.stac_url).search(sentinel2.COLLECTION)
    assert sorted(i.id for i in found) == sorted(i.id for i in direct)

    with FaultProxy({"": local_services.stac_url}, fail_rate=1.0) as proxy:
        t0 = time.monotonic()
        with pytest.raises(CatalogError, match=re.escape(proxy.url)):
            open_catalog(proxy.url)
        assert time.monotonic() - t0 < 30, "retries are bounded"
        assert 2 <= proxy.failed[""] <= 10


# -- bad input: a clear error before any work -------------------------------------------


def _ingest_args(cfg: IngestConfig, **changes: str) -> list[str]:
    args = _ingest_command(cfg)[3:]
    for flag, value in changes.items():
        i = args.index("--" + flag.replace("_", "-"))
        args[i + 1] = value
    return args


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps long lines


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"bbox": "11.8,95,12.1,96"}, ["--bbox", "latitude out of [-90, 90]"]),
        ({"bbox": "12.1,47.2,12.1,47.3"}, ["--bbox", "west != east"]),
        ({"bbox": "11.8,47.3,12.1,47.2"}, ["--bbox", "south < north"]),
        ({"start": "2022-06-01", "end": "2021-06-01"}, ["end 2021-06-01 is before start"]),
        ({"catalog": "http://127.0.0.1:9"}, ["cannot open STAC API http://127.0.0.1:9"]),
    ],
)  # fmt: skip
def test_bad_input_is_refused_before_any_work(
    make_config: MakeConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    expected: list[str],
) -> None:
    from eomae.cli import main

    cfg = make_config(tmp_path / "run")
    t0 = time.monotonic()
    assert main(_ingest_args(cfg, **change)) == 2
    err = _err(capsys)
    for text in expected:
        assert text in err
    assert not (tmp_path / "run").exists(), "nothing written"
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ((11.8, 95.0, 12.1, 96.0), "latitude out of [-90, 90]"),
        ((190.0, 47.2, 191.0, 47.3), "longitude out of [-180, 180]"),
        ((12.1, 47.2, 12.1, 47.3), "need west != east and south < north"),
        ((11.8, 47.3, 12.1, 47.2), "need west != east and south < north"),
    ],
)
def test_bad_bbox_is_named_by_the_config(
    make_config: MakeConfig, tmp_path: Path, bbox: tuple[float, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        make_config(tmp_path, bbox=[bbox])
    text = str(info.value)
    assert "bbox" in text and message in text and str(bbox) in text


def test_empty_search_says_nothing_matched_with_the_query(
    make_config: MakeConfig, local_services: LocalServices, tmp_path: Path, capsys: Any
) -> None:
    from eomae.cli import main

    cfg = make_config(tmp_path / "run", start="2015-01-01", end="2015-12-31")
    with pytest.raises(NothingMatched) as info:
        make_plan(cfg, open_catalog(cfg.catalog))
    message = str(info.value)
    assert message.startswith("nothing matched")
    for part in ("sentinel-2-l2a", local_services.stac_url, "2015-01-01", "2015-12-31", "bbox="):
        assert part in message

    assert main(_ingest_args(cfg)) == 2
    err = _err(capsys)
    assert "nothing matched" in err and "2015-01-01" in err
    assert not (tmp_path / "run").exists()


def test_unknown_collection_is_named(
    local_services: LocalServices, capsys: pytest.CaptureFixture[str]
) -> None:
    from eomae.cli import main

    with pytest.raises(CatalogError, match="'sentinel-3-olci'.*sentinel-2-l2a"):
        open_catalog(local_services.stac_url).search("sentinel-3-olci")
    args = ["search", "--catalog", local_services.stac_url, "--collection", "sentinel-3-olci"]
    assert main(args) == 2
    assert "'sentinel-3-olci'" in _err(capsys)


# -- bad data: the unit fails with a reason, the run goes on -----------------------------


@pytest.fixture(scope="module")
def bad_files(
    tmp_path_factory: pytest.TempPathFactory,
    a_unit: Unit,
    local_services: LocalServices,
    world_dir: Path,
) -> dict[str, Path]:
    """Broken copies of the unit's B04 COG, and rasters in the wrong place."""
    out = tmp_path_factory.mktemp("bad")
    cog = local_path(a_unit.s2_item["assets"]["B04"]["href"], local_services, world_dir)
    data = cog.read_bytes()
    (out / "truncated.tif").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[8:4096] = bytes(4088)  # header and IFDs zeroed
    (out / "corrupt.tif").write_bytes(bytes(corrupt))
    with rasterio.open(cog) as src:
        band, transform = src.read(1), src.transform
    profile = {"driver": "GTiff", "height": band.shape[0], "width": band.shape[1],
               "count": 1, "dtype": band.dtype, "transform": transform}  # fmt: skip
    with rasterio.open(out / "no_crs.tif", "w", **profile) as dst:  # crs left out
        dst.write(band, 1)
    # DEM and land cover of the right kind, but in the Gulf of Guinea.
    far = rasterio.transform.from_origin(1.0, 1.0, 1 / 3600, 1 / 3600)
    for name, dtype, value in (("far_dem.tif", "float32", 500.0), ("far_lc.tif", "uint8", 10)):
        with rasterio.open(
            out / name, "w", driver="GTiff", height=360, width=360, count=1, dtype=dtype,
            crs="EPSG:4326", transform=far,
        ) as dst:  # fmt: skip
            dst.write(np.full((360, 360), value, dtype=dtype), 1)
    return {p.stem: p for p in out.iterdir()}


def _bad_units(unit: Unit, files: dict[str, Path], cog_url: str) -> dict[str, tuple[Unit, str]]:
    """name -> (broken unit, regex the failure reason must match)."""
    replace = dataclasses.replace
    return {
        "missing asset": (with_asset(unit, "B11", None), r"lacks assets \['B11'\]"),
        "404 href": (
            with_asset(unit, "B04", f"{cog_url}/data/nowhere/B04.tif"),
            r"cannot read http://.*/data/nowhere/B04.tif: .*404",
        ),
        "truncated COG": (
            with_asset(unit, "B04", str(files["truncated"])),
            r"cannot read .*truncated.tif: .*(IReadBlock|Read error)",
        ),
        "corrupt COG": (
            with_asset(unit, "B04", str(files["corrupt"])),
            r"cannot read .*corrupt.tif: .*(TIFF|not recognized|not a)",
        ),
        "raster without CRS": (
            with_asset(unit, "B04", str(files["no_crs"])),
            r"no_crs.tif has no CRS",
        ),
        "no DEM item": (
            replace(unit, dem_hrefs=[], dem_items=[]),
            r"no cop-dem-glo-30 item covers unit",
        ),
        "no land-cover item": (
            replace(unit, lc_hrefs=[], lc_items=[]),
            r"no esa-worldcover v200 item covers unit",
        ),
        "DEM elsewhere": (
            replace(unit, dem_hrefs=[str(files["far_dem"])]),
            r"DEM and land cover do not cover unit",
        ),
        "land cover elsewhere": (
            replace(unit, lc_hrefs=[str(files["far_lc"])]),
            r"DEM and land cover do not cover unit",
        ),
    }


def test_a_unit_done_in_blocks_is_the_unit_done_whole(a_unit: Unit, tmp_path: Path) -> None:
    whole_url, blocks_url = str(tmp_path / "whole.zarr"), str(tmp_path / "blocks.zarr")
    grid = a_unit.target
    assert grid.width > 128 and grid.height > 128

    assert process_unit(a_unit, whole_url, 64, 4).status == "done"
    assert process_unit(a_unit, blocks_url, 64, 4, block_size=128).status == "done"

    whole, blocks = open_cube(whole_url)[a_unit.unit_id], open_cube(blocks_url)[a_unit.unit_id]
    assert isinstance(whole, zarr.Group) and isinstance(blocks, zarr.Group)
    for name in ("s2", "scl", "valid", "coverage", "dem", "lc"):
        a, b = whole[name][...], blocks[name][...]  # type: ignore[index]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        # From lon/lat GDAL's warp interpolates the transform along each block's rows, so
        # a pixel lands a hair apart: < 1 m of DEM, a class-border pixel flips now and then.
        if name == "dem":
            np.testing.assert_allclose(a, b, atol=1.0)
        elif name == "lc":
            assert np.mean(a != b) < 0.002
        elif name == "s2":  # 10 m bands copied; 20 and 60 m bilinear, equal to 1 DN
            copied = [b.resolution_m == 10 for b in sentinel2.BANDS]
            assert np.array_equal(a[copied], b[copied])
            assert np.abs(a.astype(np.int32) - b).max() <= 1
        else:
            assert np.array_equal(a, b), f"{name}: {np.mean(a != b):.2%} of pixels differ"
    for key in ("valid_fraction", "cloud_fraction"):
        assert whole.attrs[key] == pytest.approx(blocks.attrs[key]), key
    # a block is a shard: one file per array and block, none read back or rewritten
    n_blocks = len(grid.blocks(128))
    s2_files = [p for p in Path(blocks_url, a_unit.unit_id, "s2", "c").rglob("*") if p.is_file()]
    assert len(s2_files) == n_blocks > 1


BAD_CASES = [
    "missing asset", "404 href", "truncated COG", "corrupt COG", "raster without CRS",
    "no DEM item", "no land-cover item", "DEM elsewhere", "land cover elsewhere",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_fails_the_unit_with_a_reason(
    case: str,
    a_unit: Unit,
    bad_files: dict[str, Path],
    local_services: LocalServices,
    tmp_path: Path,
) -> None:
    unit, reason = _bad_units(a_unit, bad_files, local_services.cog_url)[case]
    cube_url = str(tmp_path / "cube.zarr")

    result = process_unit(unit, cube_url, 64, 4, block_size=128)  # several blocks

    assert isinstance(result, UnitResult)
    assert result.status == "failed" and result.unit_id == unit.unit_id
    assert re.search(reason, result.reason), result.reason
    assert unit.unit_id not in open_cube(cube_url)  # nothing left of a unit that failed


def test_bad_unit_does_not_stop_the_run_and_leaks_no_token(
    ray_session: None,
    make_config: MakeConfig,
    ingested: Ingested,
    clean: dict[str, dict[str, str]],
    local_services: LocalServices,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    units = planned(ingested[0].run_dir)
    signed = f"{local_services.cog_url}/data/nowhere/B04.tif?sv=2021-06-08&sig={SECRET}"
    units[3] = with_asset(units[3], "B04", signed)
    victim = units[3].unit_id
    cfg = make_config(tmp_path / "run")

    with caplog.at_level(logging.DEBUG):
        summary = run_ingest(cfg, units=units)

    assert summary["done"] == len(units) - 1
    assert [uid for uid, _ in summary["failed"]] == [victim]
    rows = status_rows(cfg.run_dir)
    assert rows[victim]["status"] == "failed"
    assert "nowhere/B04.tif" in rows[victim]["reason"] and "404" in rows[victim]["reason"]
    others = sorted(u.unit_id for u in units if u.unit_id != victim)
    assert complete_units(cfg.run_dir) == others
    assert checksums(cfg.run_dir) == {k: clean[k] for k in others}
    status_text = (tmp_path / "run" / "ingest" / "status.json").read_text()
    assert SECRET not in status_text and SECRET not in json.dumps(summary)
    assert SECRET not in all_attrs(cfg.run_dir)
    assert SECRET not in caplog.text


class _FailFirst(FaultProxy):
    """Fails the first `n` requests with 503, then forwards everything."""

    def __init__(self, *args: Any, n: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n = n

    def fault_for(self, key: str) -> int | None:
        with self._lock:
            self.n -= 1
            return 503 if self.n >= 0 else None


def test_signed_href_is_redacted_in_logs_and_attrs_after_retries(
    a_unit: Unit,
    local_services: LocalServices,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cog = local_services.cog_url
    with _FailFirst({"/cog": cog}, n=2) as proxy:
        via = proxy.url_for(cog)
        item = copy.deepcopy(a_unit.s2_item)
        for asset in item["assets"].values():
            if asset["href"].startswith(cog):
                asset["href"] = via + asset["href"][len(cog) :] + f"?sv=2021-06-08&sig={SECRET}"
        unit = dataclasses.replace(a_unit, s2_item=item)
        cube_url = str(tmp_path / "cube.zarr")
        with caplog.at_level(logging.DEBUG):
            result = process_unit(unit, cube_url, 64, 4)
    assert result.status == "done", result.reason
    assert proxy.n < 0, "some requests failed and were retried"
    # The test proxy forwards with requests, whose urllib3 debug log shows the URLs it
    # fetched: that is the proxy's log, not eomae's.
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "Retrying" in ours or "503" in ours  # GDAL said so, redacted
    assert SECRET not in ours
    attrs = all_attrs(tmp_path)
    assert SECRET not in attrs and "?<redacted>" in attrs


class _ForbiddenFirst(_FailFirst):
    """Answers the first request with 403, as Blob Storage does for an expired token."""

    def fault_for(self, key: str) -> int | None:
        status = super().fault_for(key)
        return 403 if status is not None else None


def test_expired_token_is_re_signed_once(
    a_unit: Unit, local_services: LocalServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.raster

    signed: list[str] = []
    real_sign = ingest.raster.sign
    monkeypatch.setattr(ingest.raster, "sign", lambda h: signed.append(h) or real_sign(h))
    cog = local_services.cog_url
    with _ForbiddenFirst({"/cog": cog}, n=1) as proxy:
        href = proxy.url_for(cog) + a_unit.s2_item["assets"]["B04"]["href"][len(cog) :]
        data, _ = ingest.raster.read_into_grid(
            href, a_unit.target, Resampling.nearest, nodata=0, dtype="uint16"
        )
    assert len(signed) == 2, "signed before the first open and again after the 403"
    assert (data != 0).any()


def test_the_status_table_is_written_at_intervals_not_after_every_unit(tmp_path: Path) -> None:
    """A full rewrite per unit is O(units²) a run; the first row still shows at once."""
    from ingest.run import StatusTable

    cfg = IngestConfig(bbox=[(11, 47, 12, 48)], start="2021-01-01", end="2021-02-01",
                       run_dir=str(tmp_path))  # fmt: skip
    now = [0.0]
    table = StatusTable(cfg, every_s=5.0, clock=lambda: now[0])
    path = tmp_path / "ingest" / "status.json"
    for i in range(1000):
        now[0] += 0.01  # a unit every 10 ms: 10 s in all
        table.update({"unit_id": f"u{i:04d}", "status": "done", "reason": ""})
        if i == 0:
            assert [r["unit_id"] for r in json.loads(path.read_text())] == ["u0000"]
    assert table.writes == 2  # at 0.01 s and 5.01 s
    table.flush()
    rows = json.loads(path.read_text())
    assert len(rows) == 1000 and rows[-1]["unit_id"] == "u0999"
