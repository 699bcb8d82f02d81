"""Where pretraining's metrics go while it runs: the metrics file, TensorBoard, the driver.

Rank 0 writes every logged row (`MetricsLog`) to RUN/metrics.jsonl, the record
the figures, summaries and benchmarks read, and to TensorBoard event files under
RUN/tensorboard (`tensorboard --logdir RUN`), each number a scalar by its name against
the step; with `--mlflow URI` also to an MLflow run (experiment "eomae", named after the
run; the `mlflow` package is optional). A restarted attempt drops what it will redo from
the file and TensorBoard. On the driver, `follow` hands each new row to a callback while
training runs (the CLI's progress bar).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


class MetricsLog:
    """Rank 0's writer of metric rows, resuming after `step` (0: a fresh run)."""

    def __init__(self, run_dir: Path, step: int, mlflow_uri: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / METRICS
        if self.path.exists():  # rows after the checkpoint: the restarted attempt redoes them
            kept = [r for r in self.path.read_text().splitlines() if _step(r) <= step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(r + "\n" for r in kept))
            tmp.replace(self.path)  # a new file: `follow` sees the rewind by its inode
        # purge_step hides events at or after it that an earlier attempt wrote
        self.board = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=step + 1)
        self.mlflow = _mlflow_run(run_dir, mlflow_uri) if mlflow_uri else None

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to the metrics file and to TensorBoard."""
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for row in rows:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.board.add_scalar(key, value, row["step"])
            if self.mlflow is not None:  # MLflow keys allow "/", as ours have
                numbers = {k: float(v) for k, v in row.items()
                           if k != "step" and isinstance(v, int | float)}  # fmt: skip
                self.mlflow.log_metrics(numbers, step=row["step"])
        self.board.flush()

    def close(self) -> None:
        """Flush and close the event file (and the MLflow run)."""
        self.board.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


MLFLOW_RUN = "mlflow_run_id"  # the run's MLflow run, continued by a restarted attempt


def _mlflow_run(run_dir: Path, uri: str) -> Any:
    """The `mlflow` module with this run's MLflow run started (or resumed after a restart)."""
    import mlflow  # optional: PretrainConfig checks it is installed when asked for

    mlflow.set_tracking_uri(uri)
    known = run_dir / MLFLOW_RUN
    if known.exists():
        mlflow.start_run(run_id=known.read_text().strip())
    else:
        mlflow.set_experiment("eomae")
        run = mlflow.start_run(run_name=run_dir.name)
        known.write_text(run.info.run_id)
    return mlflow


def _step(line: str) -> float:
    """A row's step; a row cut off by a crash counts as after every checkpoint."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every row rank 0 has written so far."""
    path = run_dir / METRICS
    return [json.loads(r) for r in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def follow(
    run_dir: Path, on_row: Callable[[dict[str, Any]], None], every_s: float = 1.0
) -> Iterator[None]:
    """Call `on_row` on the driver for each row written to RUN/metrics.jsonl meanwhile.

    Rows already there (a resumed run's past) are skipped. When a restarted attempt
    rewrites the file (a new inode), the rows it kept (the same bytes as before) are
    skipped and the rest, the steps it redoes, are handed on again.
    """
    path = run_dir / METRICS
    stop = threading.Event()
    inode, offset, seen = _start(path)  # seen: a hash of each row handed on

    def poll() -> None:
        nonlocal inode, offset, seen
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                rewound = stat.st_ino != inode or stat.st_size < offset
                f.seek(0 if rewound else offset)
                data = f.read()
        except FileNotFoundError:
            return
        if rewound:  # rewritten from a checkpoint (or created)
            inode = stat.st_ino
            rows = _complete(data)
            same = 0
            while same < min(len(rows), len(seen)) and hash(rows[same]) == seen[same]:
                same += 1
            seen = seen[:same]
            new, offset = rows[same:], sum(len(r) + 1 for r in rows)
        else:
            new = _complete(data)
            offset += sum(len(r) + 1 for r in new)
        for line in new:
            seen.append(hash(line))
            on_row(json.loads(line))

    def run() -> None:
        while not stop.wait(every_s):
            poll()

    thread = threading.Thread(target=run, name="metrics-follower", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()  # the last rows


def _start(path: Path) -> tuple[int, int, list[int]]:
    """(inode, bytes, row hashes) of the rows already written: where following starts."""
    if not path.exists():
        return -1, 0, []
    data = path.read_bytes()
    rows = _complete(data)
    return path.stat().st_ino, sum(len(r) + 1 for r in rows), [hash(r) for r in rows]


def _complete(data: bytes) -> list[bytes]:
    """The whole lines of `data`; a line still being written waits for the next poll."""
    complete, newline, _ = data.rpartition(b"\n")
    return complete.split(b"\n") if newline else []
