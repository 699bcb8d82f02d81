"""`eomae run`: config validation, fingerprints, skip / resume / re-run decisions.

These tests drive the real pipeline logic with stage runners that write small files,
so every decision is checked in seconds; tests/test_pipeline_cluster.py runs the real
stages on a separate Ray head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from eomae.cli import main
from eomae.pipeline import (
    STAGES,
    PipelineConfig,
    PipelineError,
    fingerprints,
    load_pipeline,
    run_pipeline,
    stage_outputs,
)

REPO = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = {
    "ingest": {
        "catalog": "http://127.0.0.1:1",
        "bbox": [11.8, 47.2, 12.1, 47.4],
        "start": "2021-01-01",
        "end": "2021-12-31",
    },
    "shard": {"chip_size": 64},
    "pretrain": {"epochs": 2, "model": {"size": "tiny"}},
    "evaluate": {"protocols": ["linear"]},
}


def config(run_dir: str, **sections: Any) -> PipelineConfig:
    data = {"run_dir": run_dir, **{k: dict(v) for k, v in BASE.items()}}
    for name, update in sections.items():
        data[name] = None if update is None else {**data[name], **update}
    return PipelineConfig(**data)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


class FakeStages:
    """Runners that write each stage's output directory and count their calls."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail_at = fail_at

    def runners(self) -> dict[str, Any]:
        def make(stage: str) -> Any:
            def run(cfg: Any, resume: bool, pipeline: PipelineConfig) -> dict[str, Any]:
                self.calls.append((stage, resume))
                out = Path(pipeline.run_dir.removeprefix("file://"))
                target = Path(stage_outputs(str(out), stage)[0])  # type: ignore[arg-type]
                target.mkdir(parents=True, exist_ok=True)
                (target / "out.txt").write_text(cfg.model_dump_json())
                if stage == self.fail_at:
                    raise RuntimeError(f"{stage} crashed")
                return {"note": stage}

            return run

        return {s: make(s) for s in STAGES}


def test_every_section_is_validated_up_front_and_errors_name_the_field(tmp_path: Path) -> None:
    bad = {**BASE, "run_dir": str(tmp_path)}
    bad["pretrain"] = {**BASE["pretrain"], "batch_size": 0, "lr": -1}
    bad["ingest"] = {**BASE["ingest"], "max_cloud_cover": 200}
    with pytest.raises(PipelineError) as e:
        load_pipeline(write_yaml(tmp_path / "p.yaml", bad))
    msg = str(e.value)
    for field in ("ingest.max_cloud_cover", "pretrain.batch_size", "pretrain.lr"):
        assert field in msg
    assert "shard." not in msg

    owned = {**BASE, "shard": {"chip_size": 64, "out": "/elsewhere"}}
    with pytest.raises(PipelineError, match=r"shard\.out: set by the pipeline"):
        load_pipeline(write_yaml(tmp_path / "o.yaml", owned))

    unknown = {**BASE, "evaluate": {"protocol": ["linear"]}}
    with pytest.raises(PipelineError, match=r"evaluate\.protocol: Extra inputs"):
        load_pipeline(write_yaml(tmp_path / "u.yaml", unknown))

    small = {**BASE, "ingest": {**BASE["ingest"], "chip_size": 32}, "shard": {}}
    with pytest.raises(PipelineError, match=r"shard\.chip_size: chips of 32 px .* input of 56 px"):
        load_pipeline(write_yaml(tmp_path / "s.yaml", small))  # the EO preset's 56 px crops
    small["pretrain"] = {**BASE["pretrain"], "model": {"size": "tiny", "input_size": 32}}
    assert load_pipeline(write_yaml(tmp_path / "s.yaml", small)).stage_configs()["shard"]

    no_pretrain = {k: v for k, v in BASE.items() if k != "pretrain"}
    with pytest.raises(PipelineError, match="evaluate: needs a pretrain section"):
        load_pipeline(write_yaml(tmp_path / "n.yaml", no_pretrain))


def test_object_storage_run_dir_is_refused_for_training_but_fine_for_a_corpus() -> None:
    with pytest.raises(ValueError, match="filesystem every node shares"):
        config("s3://bucket/run")
    corpus = config("memory://bucket/run", pretrain=None, evaluate=None)
    assert list(corpus.stage_configs()) == ["ingest", "shard"]
    shard_cfg = corpus.stage_configs()["shard"]
    assert shard_cfg.out_url == "memory://bucket/run/shards"  # type: ignore[attr-defined]


def test_a_changed_setting_changes_its_stage_and_every_later_one(tmp_path: Path) -> None:
    base = fingerprints(config(str(tmp_path)))
    assert list(base) == ["ingest", "shard", "pretrain", "evaluate"]
    shard = fingerprints(config(str(tmp_path), shard={"max_invalid": 0.3}))
    assert shard["ingest"] == base["ingest"]
    assert all(shard[s] != base[s] for s in ("shard", "pretrain", "evaluate"))
    late = fingerprints(config(str(tmp_path), evaluate={"protocols": ["knn"]}))
    assert [s for s in base if late[s] != base[s]] == ["evaluate"]
    # Where the run lives, and settings that do not change outputs, are not part of it.
    assert fingerprints(config(str(tmp_path / "moved"), pretrain={"log_every": 1})) == base


def test_done_stages_are_skipped_and_a_change_reruns_from_its_stage(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/run"  # records go through fsspec
    fake = FakeStages()
    first = run_pipeline(config(run_dir), fake.runners(), log=lambda _: None)
    assert fake.calls == [(s, False) for s in ("ingest", "shard", "pretrain", "evaluate")]
    assert [r["action"] for r in first["stages"]] == ["ran"] * 4
    record = json.loads((tmp_path / "run/pipeline/shard.json").read_text())
    assert record["status"] == "done" and record["note"] == "shard" and record["bytes"] > 0

    fake.calls.clear()
    again = run_pipeline(config(run_dir), fake.runners(), log=lambda _: None)
    assert fake.calls == []
    assert [r["action"] for r in again["stages"]] == ["skipped"] * 4

    stale = tmp_path / "run/pretrain/pipeline/stale.bin"
    stale.write_bytes(b"old")
    changed = config(run_dir, pretrain={"epochs": 3})
    run_pipeline(changed, fake.runners(), log=lambda _: None)
    assert fake.calls == [("pretrain", False), ("evaluate", False)]
    assert not stale.exists(), "a re-run stage starts from empty outputs"
    summary = json.loads((tmp_path / "run/pipeline/summary.json").read_text())
    assert [r["action"] for r in summary["stages"]] == ["skipped", "skipped", "ran", "ran"]


def test_an_interrupted_stage_resumes_and_keeps_its_partial_outputs(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    crashing = FakeStages(fail_at="pretrain")
    with pytest.raises(RuntimeError, match="pretrain crashed"):
        run_pipeline(config(run_dir), crashing.runners(), log=lambda _: None)
    record = json.loads((tmp_path / "run/pipeline/pretrain.json").read_text())
    assert record["status"] == "running"
    partial = tmp_path / "run/pretrain/pipeline/checkpoint_000001"
    partial.mkdir()

    fake = FakeStages()
    summary = run_pipeline(config(run_dir), fake.runners(), log=lambda _: None)
    assert fake.calls == [("pretrain", True), ("evaluate", False)]
    assert partial.exists(), "a resumed stage keeps what it had written"
    assert [r["action"] for r in summary["stages"]] == ["skipped", "skipped", "resumed", "ran"]


def test_example_configs_validate() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_pipeline(path)
        assert "ingest" in cfg.stage_configs(), path


def test_cli_reports_a_bad_config_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**BASE, "shard": {"chip_size": 3}}
    assert main(["run", str(write_yaml(tmp_path / "p.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert "shard.chip_size" in err
