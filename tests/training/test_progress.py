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
