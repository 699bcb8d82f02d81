"""An elastic pretraining run on a two-node Ray cluster that loses a node and gets one back.

    python tests/training/elastic_run.py SHARDS RUN_DIR   # prints the events as JSON

The head and a second node have one CPU each, one per Train worker; `--workers 1
--max-workers 2`. Once the run has trained an epoch on two workers, the second node is
removed (its worker dies with it, as on a lost machine); once it has written a checkpoint
on one worker, a node is added back, and the group grows at its next check. Run by
tests/training/test_elastic.py in a process of its own: Ray's test cluster must own its
process, and nodes are added from the main thread.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "1"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from training.config import ModelConfig, PretrainConfig  # noqa: E402
from training.pretrain import run_pretrain  # noqa: E402

# a node is declared dead after ~1.5 s without answering, not Ray's default ~30 s
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 0}  # fmt: skip


def config(shards: str, run_dir: Path, address: str) -> PretrainConfig:
    """8 samples per worker step, 32 per epoch: 2 steps an epoch on two workers, 4 on one."""
    return PretrainConfig(
        run_dir=str(run_dir), shards=shards, name="elastic", address=address,
        model=ModelConfig(size="tiny", modalities="bandgroups"),
        workers=1, max_workers=2, elastic_resize_s=2, max_failures=3,
        batch_size=8, epochs=8, epoch_samples=32, lr=1e-3, warmup_epochs=0.5,
        log_every=1, loader_workers=0,
    )  # fmt: skip


def rows(metrics: Path) -> list[dict[str, Any]]:
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def main(shards: str, run_dir: Path) -> None:
    head = {"num_cpus": 1, "_system_config": FAST_HEALTH_CHECKS}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    events: list[dict[str, Any]] = []
    try:
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = config(shards, run_dir, cluster.address)
        result: dict[str, Any] = {}
        run = threading.Thread(target=lambda: result.update(run_pretrain(cfg)), daemon=True)
        run.start()
        metrics, t0, phase = run_dir / "pretrain" / "elastic" / "metrics.jsonl", time.time(), 0
        while run.is_alive():
            run.join(0.3)
            last = (rows(metrics) or [{}])[-1]
            if phase == 0 and last.get("world") == 2 and last["epoch"] >= 1:
                cluster.remove_node(second)
                events.append({"event": "node removed", "after_step": last["step"]})
                phase = 1
            elif phase == 1 and last.get("world") == 1 and last["epoch"] >= 2:
                cluster.add_node(num_cpus=1)
                events.append({"event": "node added", "after_step": last["step"]})
                phase = 2
            if time.time() - t0 > 500:
                raise TimeoutError(f"the run did not end in 500 s; events: {events}")
        print(json.dumps({"events": events, "summary": result}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
