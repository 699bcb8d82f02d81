"""`eomae pretrain` on a 2-worker Ray Train run over the sample world's shards."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from training.config import ModelConfig, PretrainConfig
from training.export import CheckpointError, export_encoder, latest_checkpoint, load_encoder
from training.pretrain import PretrainError, run_pretrain
from training.progress import TENSORBOARD


def short_run(shard_set: Any, run_dir: Path, name: str, **overrides: Any) -> PretrainConfig:
    """A tiny model, 4 steps per epoch on 2 workers (64 samples / (2 x 8))."""
    fields: dict[str, Any] = {
        "run_dir": str(run_dir),
        "shards": shard_set[0].out_url,
        "name": name,
        "model": ModelConfig(size="tiny", modalities="bandgroups"),
        "workers": 2,
        "batch_size": 8,
        "epochs": 3,
        "epoch_samples": 64,
        "lr": 1e-3,
        "warmup_epochs": 0.5,
        "log_every": 2,
        "loader_workers": 0,
        "max_failures": 1,
    }
    return PretrainConfig(**{**fields, **overrides})


def metric_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]


def board_steps(run: Path, tag: str) -> list[int]:
    """The steps of a TensorBoard scalar, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / TENSORBOARD))
    board.Reload()
    return [e.step for e in board.Scalars(tag)]


def test_a_short_run_learns_and_writes_checkpoints_metrics_and_figures(
    shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    seen: list[int] = []  # what the CLI's progress line shows, while training runs
    summary = run_pretrain(short_run(shard_set, tmp_path, "short", epochs=4),
                           lambda row: seen.append(row["step"]))  # fmt: skip
    rows = metric_rows(summary)
    assert [r["step"] for r in rows] == list(range(1, 17)) == seen
    assert rows[0]["total_steps"] == 16
    assert board_steps(Path(summary["dir"]), "loss") == list(range(1, 17))
    first, last = rows[:4], rows[-4:]
    assert sum(r["loss"] for r in last) < 0.8 * sum(r["loss"] for r in first), rows
    assert {"loss/rgb", "loss/dem", "loss/lc", "samples_per_s", "tokens_per_s", "lr"} <= set(
        rows[0]
    )
    ckpts = [p for p in Path(summary["dir"]).glob("checkpoint_*") if p.is_dir()]
    assert len(ckpts) == 2  # keep_checkpoints
    assert summary["metrics"]["step"] == 16
    assert summary["metrics"]["skipped_total"] == 0, "every rank's count, summed"
    names = {Path(p).name for p in summary["plots"]}
    assert {"loss.png", "reconstruction_0003.png"} <= names
    # The encoder exports and encodes any input subset.
    encoder = load_encoder(export_encoder(Path(summary["dir"]), tmp_path / "encoder.pt"))
    x = {"rgb": torch.randn(2, 3, 56, 56), "dem": torch.randn(2, 1, 56, 56)}
    assert encoder.features(x).shape == (2, encoder.dim)
    assert encoder.features({"rgb": x["rgb"]}, pool="global").shape == (2, encoder.dim)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_training_resumes(
    shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    summary = run_pretrain(short_run(shard_set, tmp_path, "faulty"), _fail_at_step=6)
    assert (Path(summary["dir"]) / ".failed-once").exists()  # the worker did die at step 6
    rows = metric_rows(summary)
    assert [r["step"] for r in rows] == list(range(1, 13))  # continuous, no duplicates
    assert board_steps(Path(summary["dir"]), "loss") == list(range(1, 13))  # TensorBoard too
    assert summary["metrics"]["step"] == 12


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(latest_checkpoint(run_dir) / "model.pt"))


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run(
    shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    whole = run_pretrain(short_run(shard_set, tmp_path, "whole", epochs=2))
    stopped = short_run(shard_set, tmp_path, "stopped", epochs=2, max_failures=0)
    with pytest.raises(Exception, match="(?i)fail|error"):
        run_pretrain(stopped, _fail_at_step=6)  # dies after the epoch-0 checkpoint
    resumed = run_pretrain(stopped.model_copy(update={"resume": True}))
    assert resumed["metrics"]["step"] == whole["metrics"]["step"] == 8
    a, b = final_weights(Path(whole["dir"])), final_weights(Path(resumed["dir"]))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_runs_are_never_mixed_up(shard_set: Any, tmp_path: Path) -> None:
    cfg = short_run(shard_set, tmp_path, "taken")
    (tmp_path / "pretrain" / "taken").mkdir(parents=True)
    with pytest.raises(PretrainError, match="--resume continues it"):
        run_pretrain(cfg)
    with pytest.raises(PretrainError, match="nothing to resume"):
        run_pretrain(cfg.model_copy(update={"name": "other", "resume": True}))
    with pytest.raises(PretrainError, match="smaller than the model's input"):
        big = ModelConfig(masking="multimae", modalities="s2")
        run_pretrain(cfg.model_copy(update={"name": "big", "model": big}))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_encoder(tmp_path / "pretrain" / "taken", tmp_path / "e.pt")


def test_softcon_continues_from_a_multimae_encoder_and_evaluation_loads_it(
    shard_set: Any, ray_session: None, pretrained: Path, tmp_path: Path
) -> None:
    """`--objective softcon --init ENCODER`: continual pretraining on 2 workers."""
    from evaluation.run import EvalConfig, run_evaluation
    from training.config import SoftConConfig

    cfg = short_run(
        shard_set, tmp_path, "softcon", objective="softcon", init=str(pretrained), epochs=4,
        lr=5e-4, softcon=SoftConConfig(head_hidden=128, head_out=32),
    )  # fmt: skip
    assert cfg.model.inputs == ["rgb", "rededge", "nir", "swir", "dem"]  # land cover: labels only
    summary = run_pretrain(cfg)
    rows = metric_rows(summary)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert sum(r["loss"] for r in rows[-4:]) < sum(r["loss"] for r in rows[:4]), rows
    assert {"loss/softcon", "loss/top1", "tokens_per_s"} <= set(rows[0])
    assert [p for p in Path(summary["dir"]).glob("checkpoint_*") if p.is_dir()]
    # The online encoder is exported, and it started from the MultiMAE's weights.
    encoder_file = export_encoder(Path(summary["dir"]), tmp_path / "softcon.pt")
    assert torch.load(encoder_file)["objective"] == "softcon"
    encoder, source = load_encoder(encoder_file), load_encoder(pretrained)
    assert not torch.equal(encoder.global_token, source.global_token)  # trained on
    assert torch.allclose(encoder.global_token, source.global_token, atol=0.05)  # from there
    evaluation = run_evaluation(
        EvalConfig(run_dir=str(tmp_path), encoder=str(encoder_file), shards=shard_set[0].out_url,
                   tasks=["multilabel"], protocols=["linear"], inputs=["s2"], inits=["pretrained"])
    )  # fmt: skip
    (row,) = evaluation["rows"]
    assert row["pool"] == "global" and 0 < row["metrics"]["mAP_micro"] <= 1


def test_combined_objective_learns_logs_both_parts_and_evaluation_loads_it(
    shard_set: Any, ray_session: None, tmp_path: Path
) -> None:
    """`--objective combined`: reconstruction + weighted SoftCon on 2 workers, from scratch."""
    from evaluation.run import EvalConfig, run_evaluation
    from training.config import SoftConConfig

    cfg = short_run(
        shard_set, tmp_path, "combined", objective="combined", epochs=4,
        softcon=SoftConConfig(head_hidden=128, head_out=32, loss_weight=0.5),
    )  # fmt: skip
    assert cfg.model.inputs == ["rgb", "rededge", "nir", "swir", "dem"]  # land cover: labels only
    summary = run_pretrain(cfg)
    rows = metric_rows(summary)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert sum(r["loss"] for r in rows[-4:]) < 0.8 * sum(r["loss"] for r in rows[:4]), rows
    assert {"loss/multimae", "loss/softcon", "loss/rgb", "loss/lc", "loss/top1"} <= set(rows[0])
    for r in rows:  # the total is the weighted sum of the two logged parts
        assert r["loss"] == pytest.approx(r["loss/multimae"] + 0.5 * r["loss/softcon"], rel=1e-5)
    assert len([p for p in Path(summary["dir"]).glob("checkpoint_*") if p.is_dir()]) == 2
    assert {"loss.png", "reconstruction_0003.png"} <= {Path(p).name for p in summary["plots"]}
    encoder_file = export_encoder(Path(summary["dir"]), tmp_path / "combined.pt")
    assert torch.load(encoder_file)["objective"] == "combined"
    evaluation = run_evaluation(
        EvalConfig(run_dir=str(tmp_path), encoder=str(encoder_file), shards=shard_set[0].out_url,
                   tasks=["multilabel"], protocols=["linear"], inputs=["s2"], inits=["pretrained"])
    )  # fmt: skip
    (row,) = evaluation["rows"]
    assert row["pool"] == "global" and 0 < row["metrics"]["mAP_micro"] <= 1


def test_softcon_refuses_land_cover_as_input() -> None:
    with pytest.raises(ValueError, match="land cover"):
        PretrainConfig(objective="softcon", model=ModelConfig(inputs=["rgb", "lc"]))


def test_local_paths_are_resolved_where_the_command_was_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = PretrainConfig(run_dir="runs/alps", shards="runs/alps/shards", init="encoder.pt")
    assert cfg.run_dir == str(tmp_path / "runs" / "alps")
    assert cfg.shards == str(tmp_path / "runs" / "alps" / "shards")
    assert cfg.init == str(tmp_path / "encoder.pt")
    remote = PretrainConfig(run_dir="s3://bucket/runs/alps", shards="file:///data/shards")
    assert (remote.run_dir, remote.shards) == ("s3://bucket/runs/alps", "file:///data/shards")


@pytest.mark.slow
def test_pretrain_with_a_relative_run_dir_as_the_readme_types_it(
    shard_set: Any, ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train workers run in another directory: `--run-dir runs/alps` must still work."""
    from eomae.cli import main

    (tmp_path / "runs" / "alps").mkdir(parents=True)
    (tmp_path / "runs" / "alps" / "shards").symlink_to(shard_set[0].out_url)
    monkeypatch.chdir(tmp_path)
    args = ["pretrain", "--run-dir", "runs/alps", "--name", "relative", "--model.size", "tiny",
            "--workers", "1", "--batch-size", "8", "--epochs", "1", "--epoch-samples", "16",
            "--loader-workers", "0"]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((tmp_path / "runs/alps/pretrain/relative/config.json").read_text())
    assert saved["run_dir"] == str(tmp_path / "runs" / "alps")


@pytest.mark.slow
def test_a_damaged_checkpoint_is_passed_over_and_a_failed_resume_keeps_the_config(
    shard_set: Any, ray_session: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = short_run(shard_set, tmp_path, "damaged", epochs=2)  # checkpoints at steps 4 and 8
    first = run_pretrain(cfg)
    run = Path(first["dir"])
    newest = latest_checkpoint(run)
    model = newest / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated

    with pytest.raises(CheckpointError, match=rf"cannot read {re.escape(str(model))}"):
        export_encoder(run, tmp_path / "encoder.pt")  # names the file, not just "RuntimeError"

    with caplog.at_level(logging.WARNING):
        resumed = run_pretrain(cfg.model_copy(update={"resume": True, "epochs": 3}))
    assert f"{newest.name} is damaged" in caplog.text
    assert resumed["metrics"]["step"] == 12, "from the intact step-4 checkpoint, 2 more epochs"
    assert json.loads((run / "config.json").read_text())["epochs"] == 3, "written on success"

    for ckpt in (p for p in run.glob("checkpoint_*") if p.is_dir()):  # none intact left
        (ckpt / "model.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        run_pretrain(cfg.model_copy(update={"resume": True, "epochs": 4, "workers": 1}))
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["workers"]) == (3, 2), "a failed resume leaves the config"


def test_a_garbage_encoder_file_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "encoder.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=re.escape(str(garbage))):
        load_encoder(garbage)
