"""`eomae run` for real: every stage, on a Ray head started as its own process.

The pipeline runs as a subprocess connected with `--address` to a `ray start --head`
cluster on loopback, so the path users take to an existing cluster is exercised, not
only a `ray.init()` inside the test. The run directory is a `file://` URL, so the
pipeline's records, ingest and shards go through fsspec.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from eomae.pipeline import KILL_ENV, PIPELINE_DIR
from infra.services import LocalServices
from infra.services.process import free_port

STAGES = ("ingest", "shard", "pretrain", "evaluate")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head in its own process group (killed as a group: `ray stop` would also stop
    the suite's own Ray); yields its address.

    Its own --temp-dir keeps it out of /tmp/ray/ray_current_cluster, which a plain
    `ray.init()` elsewhere in the suite would otherwise join, even after it is gone.
    """
    port = free_port()
    temp_dir = Path(f"/tmp/ray-eomae-{port}")  # short: Ray's socket paths have a length limit
    ray = Path(sys.executable).with_name("ray")
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([str(ray), "status", f"--address={address}"],
                         capture_output=True).returncode != 0:  # fmt: skip
        assert proc.poll() is None, f"ray head exited: {Path(log.name).read_text()[-2000:]}"
        assert time.monotonic() < deadline, "ray head did not come up in 120 s"
        time.sleep(2)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_cli(pipeline: Path, run_dir: str, address: str, kill_after: str | None = None) -> Any:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(KILL_ENV, None)
    if kill_after:
        env[KILL_ENV] = kill_after
    cmd = [sys.executable, "-m", "eomae.cli", "run", str(pipeline), "--run-dir", run_dir,
           "--address", address]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def records(root: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (root / PIPELINE_DIR).glob("*.json")}


def outputs(root: Path) -> dict[str, Any]:
    """What a finished run produced: shard bytes, encoder weights, evaluation numbers."""
    manifest = json.loads((root / "shards/manifest.json").read_text())
    encoder = torch.load(root / "pretrain/pipeline/encoder.pt", map_location="cpu")
    results = json.loads((root / "evaluation/pipeline/results.json").read_text())
    return {
        "shards": sorted((s["name"], s["sha256"]) for s in manifest["shards"]),
        "encoder": encoder["state_dict"],
        "step": encoder["step"],
        "rows": sorted((r["task"], r["protocol"], r["inputs"], r["init"],
                        json.dumps(r["metrics"], sort_keys=True)) for r in results["rows"]),
    }  # fmt: skip


@pytest.mark.slow
def test_killed_at_every_stage_boundary_reruns_to_the_same_outputs(
    ray_head: str, local_services: LocalServices, truth: dict[str, Any], tmp_path: Path
) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "ingest": {"catalog": local_services.stac_url, "bbox": list(truth["region"]),
                   "start": "2021-01-01", "end": "2022-12-31", "max_cloud_cover": 30,
                   "scenes_per_tile": 2, "chip_size": 64},
        "shard": {"chip_size": 64, "shard_bytes": 4_000_000},
        "pretrain": {"model": {"size": "tiny"}, "workers": 2, "batch_size": 8, "epochs": 2,
                     "epoch_samples": 32, "loader_workers": 0, "log_every": 1},
        "evaluate": {"tasks": ["multilabel"], "protocols": ["linear"], "inputs": ["s2"]},
    }))  # fmt: skip
    killed = tmp_path / "killed"
    for stage in STAGES:
        result = run_cli(pipeline, f"file://{killed}", ray_head, kill_after=stage)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        assert records(killed)[stage]["status"] == "running"

    result = run_cli(pipeline, f"file://{killed}", ray_head)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = records(killed)["summary"]
    assert [r["action"] for r in summary["stages"]] == ["skipped"] * 3 + ["resumed"]
    assert summary["report"] and Path(summary["report"]).is_file()
    assert all(r["bytes"] > 0 for r in summary["stages"])

    clean = tmp_path / "clean"
    result = run_cli(pipeline, str(clean), ray_head)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["action"] for r in records(clean)["summary"]["stages"]] == ["ran"] * 4

    got, want = outputs(killed), outputs(clean)
    assert got["shards"] == want["shards"]
    assert got["step"] == want["step"] == 4  # 2 epochs x 32 samples / (2 workers x 8)
    for key, value in want["encoder"].items():
        torch.testing.assert_close(got["encoder"][key], value, rtol=0, atol=1e-6, msg=key)
    assert got["rows"] == want["rows"]
