"""What a user watches during pretraining: rows as they are logged, TensorBoard scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.progress import METRICS, TENSORBOARD, MetricsLog, follow


def rows(first: int, last: int) -> list[dict[str, Any]]:
    return [
        {"step": s, "epoch": 0, "loss": 1.0 / s, "total_steps": 20} for s in range(first, last + 1)
    ]


def test_rows_reach_the_driver_as_they_are_written_and_a_restart_is_followed(
    tmp_path: Path,
) -> None:
    seen: list[int] = []
    log = MetricsLog(tmp_path, 0)
    with follow(tmp_path, lambda row: seen.append(row["step"]), every_s=0.05):
        log.write(rows(1, 4))
        time.sleep(0.3)
        assert seen == [1, 2, 3, 4], "while training runs, not at its end"
        with open(tmp_path / METRICS, "a") as f:
            f.write('{"step": 5, "epoch"')  # a row half written is not read yet
        time.sleep(0.3)
        assert seen == [1, 2, 3, 4]
        log.close()
        log = MetricsLog(tmp_path, 3)  # a restart from the step-3 checkpoint
        log.write([{**r, "loss": 0.5} for r in rows(4, 6)])  # steps 4-6 anew
    log.close()
    assert seen == [1, 2, 3, 4, 4, 5, 6]
    kept = [json.loads(r)["step"] for r in (tmp_path / METRICS).read_text().splitlines()]
    assert kept == [1, 2, 3, 4, 5, 6]


def test_tensorboard_holds_each_step_once_after_a_restart(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, 0)
    log.write(rows(1, 8))
    log.close()
    log = MetricsLog(tmp_path, 4)  # steps 5-8 are redone
    log.write([{**r, "loss": 0.5} for r in rows(5, 10)])
    log.close()
    board = EventAccumulator(str(tmp_path / TENSORBOARD))
    board.Reload()
    losses = {e.step: e.value for e in board.Scalars("loss")}
    assert [e.step for e in board.Scalars("loss")] == list(range(1, 11))
    assert losses[6] == 0.5 and losses[3] == pytest.approx(1.0 / 3)
    assert "total_steps" in board.Tags()["scalars"]


def test_metrics_go_to_an_mlflow_run_that_a_restart_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow is optional (not installed here): a stand-in module records the calls."""
    import sys
    import types

    calls: list[tuple] = []
    fake = types.ModuleType("mlflow")
    fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))  # type: ignore[attr-defined]
    fake.set_experiment = lambda name: calls.append(("experiment", name))  # type: ignore[attr-defined]

    def start_run(run_name: str | None = None, run_id: str | None = None) -> Any:
        calls.append(("start", run_name, run_id))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

    fake.start_run = start_run  # type: ignore[attr-defined]
    fake.log_metrics = lambda m, step: calls.append(("log", step, m))  # type: ignore[attr-defined]
    fake.end_run = lambda: calls.append(("end",))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)

    log = MetricsLog(tmp_path, 0, "file:///tmp/mlruns")
    log.write(rows(1, 2))
    log.close()
    log = MetricsLog(tmp_path, 1, "file:///tmp/mlruns")  # restarted from step 1
    log.write(rows(2, 2))
    log.close()
    assert calls[:3] == [("uri", "file:///tmp/mlruns"), ("experiment", "eomae"),
                         ("start", tmp_path.name, None)]  # fmt: skip
    logged = [(c[1], c[2]["loss"]) for c in calls if c[0] == "log"]
    assert logged == [(1, 1.0), (2, 0.5), (2, 0.5)] and "step" not in calls[3][2]
    assert ("start", None, "r1") in calls  # the same MLflow run continues
    assert calls.count(("end",)) == 2
