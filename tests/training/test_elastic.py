"""Elastic pretraining: a run that loses a node goes on with one worker, then grows back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.loop import warmup_cosine

HERE = Path(__file__).parent


@pytest.mark.slow
def test_a_run_loses_a_worker_goes_on_with_one_and_grows_back_to_two(
    shard_set: Any, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    done = subprocess.run(
        [sys.executable, str(HERE / "elastic_run.py"), shard_set[0].out_url, str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [e["event"] for e in report["events"]] == ["node removed", "node added"]
    rows = [json.loads(line) for line in Path(report["summary"]["metrics_file"]).open()]

    # the step counter goes on through both restarts: every step once, in order
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    worlds = [r["world"] for r in rows]
    changes = [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]]
    assert changes == [2, 1, 2]  # two workers, one after the node left, two again
    # every epoch is 32 samples: 2 steps of two workers or 4 of one, each restarted whole
    # from its checkpoint; all 8 epochs are trained
    per_epoch: dict[int, list[int]] = {}
    for r in rows:
        per_epoch.setdefault(r["epoch"], []).append(r["world"])
    assert sorted(per_epoch) == list(range(8))
    for epoch, w in per_epoch.items():
        assert len(set(w)) == 1 and len(w) * w[0] * 8 == 32, (epoch, w)

    # the schedule follows the samples trained on, not the steps: no jump at a resize
    factor = warmup_cosine(2, 4 * 8, 1e-6 / 1e-3)  # in steps of one worker (4 an epoch)
    progress = 0
    for r in rows:
        progress += r["world"]
        assert r["lr"] == pytest.approx(1e-3 * factor(progress), rel=1e-6), r["step"]
