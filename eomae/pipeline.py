"""`eomae run PIPELINE.yaml`: world? -> ingest -> shard -> pretrain -> evaluate, one config.

The config has a section per stage holding that stage's own settings (the fields of
`eomae ingest`, `shard`, `pretrain`, `evaluate`); the pipeline owns what joins them
(the run directory, the Ray address, where each stage reads its input) and validates
every section before any work, naming a bad field as `section.field`.

Each stage writes RUN/pipeline/STAGE.json twice: when it starts (status "running") and
when its outputs are complete ("done", with time and size). Both carry the stage's
fingerprint: a hash of its settings that change its outputs and of the fingerprint of
the stage before it. On a re-run, stage by stage:

- done with the same fingerprint: skipped;
- running with the same fingerprint (the run was killed): resumed through the stage's
  own resume: ingest skips complete units, shard keeps whole shards, pretrain continues
  from its last checkpoint, evaluation starts over;
- anything else (a changed setting here or upstream): its outputs are removed and it
  runs afresh, and so does every stage after it (their fingerprints change too).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluation.run import EVAL_DIR, EvalConfig
from infra.world import WorldConfig
from infra.world.layout import region_bounds, tile_grids
from ingest.config import IngestConfig
from ingest.cube import CUBE_NAME
from shards.config import SHARDS_DIR, ShardConfig, join_url
from training.config import PretrainConfig
from training.pretrain import PRETRAIN_DIR

Stage = Literal["world", "ingest", "shard", "pretrain", "evaluate"]
STAGES: tuple[Stage, ...] = ("world", "ingest", "shard", "pretrain", "evaluate")
PIPELINE_DIR = "pipeline"
WORLD_DIR = "world"
SERVICES_DIR = "services"
RUN_NAME = "pipeline"  # the pretraining run and evaluation report of a pipeline
ENCODER_FILE = "encoder.pt"
# Tests only: SIGKILL ourselves once this stage's outputs are complete but before it is
# recorded as done: the worst moment to die at a stage boundary.
KILL_ENV = "EOMAE_PIPELINE_KILL_AFTER"

# Fields the pipeline sets itself; a section that sets them is refused.
OWNED: dict[Stage, frozenset[str]] = {
    "world": frozenset(),
    "ingest": frozenset({"run_dir", "address"}),
    "shard": frozenset({"run_dir", "address", "cube", "out", "force"}),
    "pretrain": frozenset({"run_dir", "address", "shards", "name", "resume"}),
    "evaluate": frozenset({"run_dir", "address", "encoder", "shards", "name"}),
}
# Fields that do not change a stage's outputs: left out of its fingerprint.
VOLATILE: dict[Stage, frozenset[str]] = {
    "world": frozenset(),
    "ingest": frozenset({"max_concurrent_units", "max_concurrent_reads"}),
    "shard": frozenset({"max_concurrent_tasks"}),
    "pretrain": frozenset({"log_every", "max_failures", "keep_checkpoints"}),
    "evaluate": frozenset({"use_ray"}),
}
WORLD_CATALOG = "sample-world"  # ingest.catalog in world mode until the services are up


class PipelineError(ValueError):
    """A pipeline that cannot run as configured (names the field or stage)."""


class PipelineConfig(BaseModel):
    """The whole job. Sections hold each stage's own fields (see `eomae STAGE --help`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: str = Field("runs/demo", description="Run directory (path or fsspec URL).")
    address: str | None = Field(
        None, description="Ray cluster address; default: $RAY_ADDRESS or a local Ray."
    )
    world: WorldConfig | None = Field(
        None,
        description="Generate this sample world under RUN/world and serve it (STAC API + COG "
        "server) during ingest; ingest.catalog and ingest.bbox then default to it.",
    )
    ingest: dict[str, Any] = Field(description="`eomae ingest` fields.")
    shard: dict[str, Any] = Field(default_factory=dict, description="`eomae shard` fields.")
    pretrain: dict[str, Any] | None = Field(
        None, description="`eomae pretrain` fields; leave out to stop after the shards."
    )
    evaluate: dict[str, Any] | None = Field(
        None, description="`eomae evaluate` fields; leave out to stop after pretraining."
    )

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.evaluate is not None and self.pretrain is None:
            raise ValueError("evaluate: needs a pretrain section (it evaluates that encoder)")
        local = local_path(self.run_dir) is not None
        if not local and (self.world or self.pretrain is not None):
            raise ValueError(
                f"run_dir {self.run_dir}: the sample world, pretraining and evaluation need a "
                "path on a filesystem every node shares (on a cluster: the bucket mounted, "
                "see docs/cluster.md); ingest and shard alone may write to any fsspec URL"
            )
        self.stage_configs()  # every section valid before any work
        return self

    def stage_configs(self) -> dict[Stage, BaseModel]:
        """The typed config of every stage this pipeline runs, in order."""
        errors: list[str] = []
        out: dict[Stage, BaseModel] = {}

        def build(stage: Stage, cls: type[BaseModel], section: dict[str, Any], **own: Any) -> None:
            taken = sorted(OWNED[stage] & set(section))
            if taken:
                errors.append(f"{stage}.{taken[0]}: set by the pipeline, not in a section "
                              f"(owned: {', '.join(sorted(OWNED[stage]))})")  # fmt: skip
                return
            try:
                out[stage] = cls(**{**section, **own})
            except ValidationError as e:
                for err in e.errors():
                    loc = ".".join(str(p) for p in (stage, *err["loc"]))
                    errors.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")

        run = {"run_dir": self.run_dir, "address": self.address}
        ingest = dict(self.ingest)
        if self.world is not None:
            out["world"] = self.world
            ingest.setdefault("catalog", WORLD_CATALOG)
            ingest.setdefault("bbox", [region_bounds(tile_grids(self.world))])
        build("ingest", IngestConfig, ingest, **run)
        chip = ingest.get("chip_size", IngestConfig.model_fields["chip_size"].default)
        build("shard", ShardConfig, {"chip_size": chip, **self.shard}, **run)
        path = local_path(self.run_dir)
        if self.pretrain is not None and path is not None:
            local = {"run_dir": path, "address": self.address}
            shards = join_url(path, SHARDS_DIR)
            build("pretrain", PretrainConfig, self.pretrain, **local, shards=shards,
                  name=RUN_NAME)  # fmt: skip
            if self.evaluate is not None:
                encoder = str(Path(path, PRETRAIN_DIR, RUN_NAME, ENCODER_FILE))
                build("evaluate", EvalConfig, self.evaluate, **local, shards=shards,
                      encoder=encoder, name=RUN_NAME)  # fmt: skip
        errors += _size_mismatches(out)
        if errors:
            raise ValueError("\n".join(errors))
        return out


def _size_mismatches(stages: dict[Stage, BaseModel]) -> list[str]:
    """Chip sizes that would only fail once the stages before them have run."""
    shard, pretrain = stages.get("shard"), stages.get("pretrain")
    if not isinstance(shard, ShardConfig) or not isinstance(pretrain, PretrainConfig):
        return []
    size = pretrain.model.geometry[0]
    if shard.chip_size >= size:
        return []
    return [
        f"shard.chip_size: chips of {shard.chip_size} px are smaller than the model's input of "
        f"{size} px (pretrain.model); raise shard.chip_size (or ingest.chip_size, its default) "
        "or set pretrain.model.input_size"
    ]


def local_path(url: str) -> str | None:
    """The local path of a path or file:// URL; None for any other filesystem."""
    if fsspec.utils.get_protocol(url) not in ("file", "local"):
        return None  # not instantiated: s3fs or gcsfs need not be installed to say so
    return str(LocalFileSystem._strip_protocol(url))


def load_pipeline(path: Path, **overrides: Any) -> PipelineConfig:
    """Read and validate a pipeline YAML; `overrides` (not None) replace top-level fields."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must hold a mapping of section: fields")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PipelineConfig(**data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
        raise PipelineError(f"{path}:\n" + "\n".join(lines)) from e


def fingerprints(cfg: PipelineConfig) -> dict[Stage, str]:
    """Each stage's fingerprint: its output-changing settings chained to the stage before."""
    out: dict[Stage, str] = {}
    upstream = ""
    for stage, stage_cfg in cfg.stage_configs().items():
        drop = VOLATILE[stage] | OWNED[stage]
        if stage == "ingest" and cfg.world is not None:
            drop |= {"catalog"}  # the local services' port changes; the world does not
        content = stage_cfg.model_dump(mode="json", exclude=set(drop))
        payload = json.dumps({"stage": stage, "upstream": upstream, "config": content},
                             sort_keys=True, default=str)  # fmt: skip
        upstream = out[stage] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return out


def stage_outputs(run_dir: str, stage: Stage) -> list[str]:
    """What a stage writes (removed when it must run afresh; measured for the summary)."""
    return {
        "world": [join_url(run_dir, WORLD_DIR), join_url(run_dir, SERVICES_DIR)],
        "ingest": [join_url(run_dir, CUBE_NAME), join_url(run_dir, "ingest")],
        "shard": [join_url(run_dir, SHARDS_DIR)],
        "pretrain": [join_url(run_dir, PRETRAIN_DIR, RUN_NAME)],
        "evaluate": [join_url(run_dir, EVAL_DIR, RUN_NAME)],
    }[stage]


class Records:
    """RUN/pipeline/STAGE.json: what each stage last did, read and written with fsspec."""

    def __init__(self, run_dir: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(join_url(run_dir, PIPELINE_DIR))

    def read(self, stage: str) -> dict[str, Any] | None:
        """The stage's record, or None."""
        path = f"{self.root}/{stage}.json"
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def write(self, stage: str, record: dict[str, Any]) -> None:
        """Replace the stage's record atomically (temp file + rename)."""
        self.fs.makedirs(self.root, exist_ok=True)
        path = f"{self.root}/{stage}.json"
        with self.fs.open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        self.fs.mv(path + ".tmp", path)


def size_of(url: str) -> int:
    """Bytes under a path or URL (0 when absent)."""
    fs, path = fsspec.core.url_to_fs(url)
    return int(fs.du(path)) if fs.exists(path) else 0


def remove(url: str) -> None:
    """Delete a path or URL recursively, if it exists."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# A stage runner: (the stage's config, whether it resumes a killed attempt, the pipeline)
# -> what to add to the stage's record.
Runner = Callable[[Any, bool, PipelineConfig], dict[str, Any]]


def run_pipeline(
    cfg: PipelineConfig,
    runners: dict[Stage, Runner],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage not already done with the same fingerprint; return the summary."""
    t0 = time.perf_counter()
    configs = cfg.stage_configs()
    prints = fingerprints(cfg)
    records = Records(cfg.run_dir)
    rows: list[dict[str, Any]] = []
    for stage, stage_cfg in configs.items():
        rows.append(_run_stage(stage, stage_cfg, prints[stage], records, runners, cfg, log))
    summary = {
        "run_dir": cfg.run_dir,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "stages": rows,
        "report": rows[-1].get("report") if rows and rows[-1]["stage"] == "evaluate" else None,
    }
    records.write("summary", summary)
    return summary


def _run_stage(
    stage: Stage,
    stage_cfg: Any,
    fingerprint: str,
    records: Records,
    runners: dict[Stage, Runner],
    cfg: PipelineConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    record = records.read(stage)
    outputs = stage_outputs(cfg.run_dir, stage)
    same = record is not None and record["fingerprint"] == fingerprint
    if same and record is not None and record["status"] == "done":
        log(f"{stage}: up to date (fingerprint {fingerprint}), skipped")
        return {**record, "action": "skipped"}
    resume = same
    if not same:
        if record is not None:
            log(f"{stage}: settings changed since the last run; running it afresh")
        for url in outputs:
            remove(url)
    else:
        log(f"{stage}: resuming an interrupted run")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    records.write(stage, {"stage": stage, "fingerprint": fingerprint, "status": "running",
                          "started": started})  # fmt: skip
    t0 = time.perf_counter()
    extra = runners[stage](stage_cfg, resume, cfg)
    if os.environ.get(KILL_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
    done = {
        "stage": stage,
        "fingerprint": fingerprint,
        "status": "done",
        "started": started,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "bytes": sum(size_of(u) for u in outputs),
        "outputs": outputs,
        **extra,
    }
    records.write(stage, done)
    return {**done, "action": "resumed" if resume else "ran"}
