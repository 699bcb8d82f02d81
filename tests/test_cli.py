"""The `eomae` command line as a user runs it: exit codes, messages, the demo, serve."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from eomae.cli import main
from infra.services import LocalServices

CLI = [sys.executable, "-m", "eomae.cli"]


def test_search_lists_the_items_of_the_local_api(
    local_services: LocalServices, world_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    truth = json.loads((world_dir / "truth.json").read_text())
    clear = [s["item_id"] for t in truth["tiles"] for s in t["scenes"] if s["cloud_cover"] <= 20]
    args = ["search", "--catalog", local_services.stac_url, "--max-cloud-cover", "20"]
    assert main([*args, "--bbox", ",".join(map(str, truth["region"]))]) == 0
    out = capsys.readouterr().out
    assert f": {len(clear)} items" in out
    assert all(item_id in out for item_id in clear)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--bbox", "10,95,11,96"], "--bbox"),
        (["search", "--catalog", "http://127.0.0.1:9"], "cannot open STAC API"),
        (["serve", "/nonexistent/world"], "/nonexistent/world"),
        (["world", "out", "--tiles", "1"], "--tiles"),
    ],
)
def test_bad_input_exits_non_zero_naming_it(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unknown_collection_is_named(
    local_services: LocalServices, capsys: pytest.CaptureFixture
) -> None:
    args = ["search", "--catalog", local_services.stac_url, "--collection", "landsat-c2-l2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "landsat-c2-l2" in err and "sentinel-2-l2a" in err


def test_config_file_values_sit_under_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "world.yaml"
    config.write_text("tiles: 2\ndates: 2\ntile_size: 120\n")
    out = tmp_path / "w"
    assert main(["world", str(out), "--config", str(config), "--dates", "3"]) == 0
    made = json.loads((out / "world.json").read_text())["config"]
    assert (made["tiles"], made["dates"], made["tile_size"]) == (2, 3, 120)
    # Booleans are switches on the command line (--force / --no-force), None is null.
    capsys.readouterr()
    for force, said in [(True, "world written"), (False, "up to date")]:
        config.write_text(f"tiles: 2\ndates: 3\ntile_size: 120\nforce: {str(force).lower()}\n")
        assert main(["world", str(out), "--config", str(config)]) == 0
        assert said in " ".join(capsys.readouterr().err.split())
    config.write_text("tiles: 2\nbogus: 1\n")
    assert main(["world", str(out), "--config", str(config)]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_runs_until_sigterm_and_stops_cleanly(world_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "serve", str(world_dir), "--state-dir", str(tmp_path / "state")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"STAC API\s+(http://\S+)", line)
            url = match.group(1) if match else None
        assert url, "serve never printed the STAC API URL"
        assert requests.get(f"{url}/collections", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_twice(tmp_path: Path) -> None:
    run = [*CLI, "demo", "--run-dir", str(tmp_path / "demo")]
    # A crashed `ray start` leaves its address behind; the demo must start its own Ray
    # instead of dialling it. Short path: Ray's unix sockets live under RAY_TMPDIR.
    ray_tmp = Path(tempfile.mkdtemp(prefix="r-", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    env = {**os.environ, "COLUMNS": "200", "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    first = subprocess.run(run, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "world written" in first.stderr
    demo = tmp_path / "demo"
    report = demo / "evaluation" / "pipeline" / "report.md"
    assert report.is_file() and "report:" in first.stderr
    summary = json.loads((demo / "pipeline" / "summary.json").read_text())
    assert [s["action"] for s in summary["stages"]] == ["ran"] * 5
    # What the demo is for: pretraining beats random init on multi-label mAP. The rows
    # checked are those where it did for every modality-drop setting measured (linear:
    # mean of 3 probe seeds; docs/pipeline.md); on DEM alone it ties random init.
    rows = json.loads((report.parent / "results.json").read_text())["rows"]
    score = {
        (r["protocol"], r["inputs"], r["init"]): r["metrics"][r["headline"]]
        for r in rows
        if r["task"] == "multilabel"
    }
    for protocol, inputs in [("linear", "s2"), ("linear", "s2+dem"), ("knn", "s2+dem")]:
        ours, baseline = score[protocol, inputs, "pretrained"], score[protocol, inputs, "random"]
        assert ours > baseline, (protocol, inputs, ours, baseline)

    second = subprocess.run(run, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "up to date" in second.stderr
    summary = json.loads((demo / "pipeline" / "summary.json").read_text())
    assert [s["action"] for s in summary["stages"]] == ["skipped"] * 5
    shutil.rmtree(ray_tmp, ignore_errors=True)
