"""`eomae evaluate`: a pretrained encoder on downstream tasks, against random and supervised.

    RUN/evaluation/NAME/report.md      tables (task x protocol x inputs x init) + figures
    RUN/evaluation/NAME/results.json   every number
    RUN/evaluation/NAME/plots/*.png

Work is grouped by (task, protocol, inputs); each group evaluates every init and label
fraction and is one Ray task (`use_ray`) or one step of a local loop. Inits: the
pretrained encoder and the same architecture at random init; fine-tuning from random
init is the supervised-from-scratch baseline and is reported as `supervised`. Label
fractions subsample the train split (seeded), as the papers' low-label settings.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from evaluation.benchmarks import Benchmark, Task, bigearthnet, eurosat, geobench
from evaluation.data import (
    SHARD_TASKS,
    Split,
    TaskSpec,
    benchmark_task,
    landcover_task,
    load_benchmark_splits,
    load_shard_split,
)
from evaluation.leaderboard import write_leaderboard_csv
from evaluation.metrics import (
    HEADLINE,
    EmptyClasses,
    bootstrap_interval,
    multilabel_scores,
    scene_scores,
    segmentation_scores,
)
from evaluation.presets import PRESETS, apply_preset, reference
from evaluation.protocols import PROTOCOLS, RUNNERS, Encoder, ProbeConfig, Protocol
from evaluation.report import write_report
from shards.config import SHARDS_DIR, join_url
from shards.modalities import DEM, LC, S2
from training import checkpoint
from training.export import CheckpointError, export_encoder, load_encoder, trained_pool
from training.modalities import ModelModality
from training.multimae import MultiMAE
from training.published import FAMILIES, PublishedViT, fresh, load_published, split_spec

Init = Literal["pretrained", "random"]
READERS: dict[str, Callable[[Path], Benchmark]] = {
    "eurosat": eurosat.read,
    "bigearthnet": bigearthnet.read,
    "geobench": geobench.read,
}
EVAL_DIR = "evaluation"
ENCODER_FILE = "encoder.pt"


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (names what is wrong)."""


class EvalConfig(BaseModel):
    """`eomae evaluate`: encoder, data, tasks, protocols, input subsets, inits, label fractions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: str = Field("runs/demo", description="Run directory (path).")
    preset: str | None = Field(
        None,
        description=f"A published protocol by name ({', '.join(PRESETS)}): sets its fields "
        "(benchmark, protocols, inputs, inits, label fractions) and the report names the "
        "published numbers to compare with (evaluation/presets.py). Give --data.",
    )
    encoder: str | None = Field(
        None,
        description="Exported encoder file, pretraining run directory or checkpoint "
        "(default: the newest run under RUN/pretrain); the MultiMAE-EO authors' checkpoint; "
        "or a published model as NAME:PATH, NAME one of softcon-vits14, softcon-vitb14, "
        "ssl4eo-moco-vits16, ssl4eo-dino-vits16, ssl4eo-mae-vits16.",
    )
    shards: str | None = Field(None, description="Shard set (default: RUN/shards).")
    benchmark: Literal["eurosat", "bigearthnet", "geobench"] | None = Field(
        None, description="Evaluate on a public benchmark in its native format, not shards."
    )
    data: Path | None = Field(None, description="The benchmark's directory (with --benchmark).")
    tasks: list[Task] = Field(list(SHARD_TASKS), description="Tasks on the shards' land cover.")
    protocols: list[Protocol] = Field(list(PROTOCOLS), description="Evaluation protocols.")
    inputs: list[str] = Field(
        ["s2", "s2+dem", "dem"], description="Input subsets: shard modalities joined by '+'."
    )
    inits: list[Init] = Field(["pretrained", "random"], description="Encoder initialisations.")
    label_fractions: list[float] = Field([1.0], description="Fractions of train labels used.")
    threshold: float = Field(
        0.05, gt=0, lt=1, description="Multi-label: a class is present above this fraction."
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="Protocol settings.")
    seeds: int = Field(
        1,
        ge=1,
        description="Repeat each probe with seeds probe.seed, +1, ...: the report "
        "gives mean ± std (the label subset stays the one of probe.seed).",
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        description="Resamples of the test set for the headline's 95 % interval "
        "(of the mean over seeds); 0: none.",
    )
    empty_classes: EmptyClasses | None = Field(
        None,
        description="Macro mAP: a class with no positive in the test split counts 0 ('zero', "
        "as scikit-learn and torchmetrics, so the benchmarks' reference code) or is left "
        "out ('skip'). Default: the benchmark's convention (zero); on the shard set, skip.",
    )
    name: str | None = Field(None, description="Report name (default: a timestamp).")
    use_ray: bool = Field(False, description="One Ray task per (task, protocol, inputs).")
    address: str | None = Field(None, description="Ray cluster address (with --use-ray).")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.benchmark and self.data is None:
            raise ValueError(f"--benchmark {self.benchmark} needs --data, its directory")
        bad = [f for f in self.label_fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"label_fractions must be in (0, 1], not {bad}")
        for subset in self.inputs:
            sources = subset.split("+")
            if LC.name in sources:
                raise ValueError(f"inputs {subset!r}: land cover is the target, not an input")
            unknown = [s for s in sources if s not in (S2.name, DEM.name)]
            if unknown:
                raise ValueError(f"inputs {subset!r}: unknown modalities {unknown} (s2, dem)")
        return self


def resolve_encoder(cfg: EvalConfig) -> str:
    """The encoder to evaluate.

    A file (exported from a run or checkpoint when needed), or a published model as
    `NAME:PATH` (training.published).
    """
    if cfg.encoder is not None and split_spec(cfg.encoder):
        return cfg.encoder
    if cfg.encoder is None:
        runs = sorted(Path(cfg.run_dir, "pretrain").glob("*/"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise EvaluationError(f"no pretraining run in {cfg.run_dir}/pretrain; give --encoder")
        source = runs[-1]
    else:
        source = Path(cfg.encoder)
    if source.is_file():
        return str(source)
    if not source.exists():
        raise EvaluationError(f"encoder {source} does not exist")
    # Exported afresh every time: a resumed run may have newer checkpoints than an old export.
    return str(export_encoder(source, source / ENCODER_FILE))


def open_encoder(spec: str) -> Encoder:
    """The encoder `resolve_encoder` named."""
    published = split_spec(spec)
    return load_published(*published) if published else load_encoder(Path(spec))


def build_encoder(spec: str, init: Init, seed: int) -> Encoder:
    """The pretrained encoder, or the same architecture freshly initialised."""
    encoder = open_encoder(spec)
    if init == "pretrained":
        return encoder
    torch.manual_seed(seed)
    if isinstance(encoder, PublishedViT):
        return fresh(encoder)
    new = MultiMAE(encoder.cfg)
    new.output_adapters = nn.ModuleDict()
    return new


def modalities_for(encoder: Encoder, subset: str, spec: TaskSpec) -> tuple[ModelModality, ...]:
    """The encoder's input modalities fed from `subset` whose bands the dataset has."""
    sources = subset.split("+")
    absent = [s for s in sources if s not in spec.sources]
    if absent:
        raise EvaluationError(f"inputs {subset!r}: {spec.dataset} has no {absent}; it has "
                              f"{list(spec.sources)}")  # fmt: skip
    chosen = tuple(
        m for m in encoder.cfg.input_modalities
        if m.source in sources and (m.source != S2.name or set(m.bands) <= set(spec.bands))
    )  # fmt: skip
    missing = [s for s in sources if not any(m.source == s for m in chosen)]
    if missing:
        have = [m.name for m in encoder.cfg.input_modalities]
        raise EvaluationError(
            f"inputs {subset!r}: the encoder has no usable input for {missing} on {spec.dataset} "
            f"(encoder inputs {have}, dataset bands {list(spec.bands)})"
        )
    return chosen


@functools.cache
def _load(cfg_json: str, task: str) -> tuple[TaskSpec, Split, Split]:
    """(spec, train, test) of a task; cached per process, shared by its groups."""
    cfg = EvalConfig.model_validate_json(cfg_json)
    patch = open_encoder(resolve_encoder(cfg)).patch
    if cfg.benchmark:
        assert cfg.data is not None
        bench = READERS[cfg.benchmark](cfg.data)
        splits = load_benchmark_splits(bench, ("train", "test"), patch)
        return benchmark_task(bench), splits["train"], splits["test"]
    shards = cfg.shards or join_url(cfg.run_dir, SHARDS_DIR)
    kind: Task = task  # type: ignore[assignment]
    return (
        landcover_task(kind),
        load_shard_split(shards, "train", kind, patch, cfg.threshold),
        load_shard_split(shards, "test", kind, patch, cfg.threshold),
    )


def label_subset(split: Split, fraction: float, seed: int) -> Split:
    """A seeded random `fraction` of the samples (at least one)."""
    if fraction >= 1:
        return split
    n = max(1, round(fraction * len(split)))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[:n])


def score(
    kind: Task, output: Tensor, labels: Tensor, classes: int, empty: EmptyClasses = "zero"
) -> dict[str, Any]:
    """Metrics of the test predictions (`empty`: see `evaluation.metrics.multilabel_map`)."""
    if kind == "multilabel":
        return multilabel_scores(output.numpy(), labels.numpy(), empty)
    if kind == "scene":
        return scene_scores(output.numpy(), labels.numpy(), classes)
    return segmentation_scores(output.numpy(), labels.numpy(), classes)


def _rgb(split: Split, n: int) -> np.ndarray:
    """True-colour images in [0, 1] (2-98 % stretch of the z-scored bands) for figures."""
    s2 = split.take(torch.arange(min(n, len(split))))[0][S2.name]
    rgb = s2[:, S2.band_index(("B04", "B03", "B02"))].numpy()
    lo, hi = np.percentile(rgb, [2, 98], axis=(1, 2, 3), keepdims=True)
    return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def evaluate_group(
    cfg_json: str, task: str, protocol: Protocol, subset: str
) -> list[dict[str, Any]]:
    """Every init and label fraction of one (task, protocol, inputs): report rows."""
    cfg = EvalConfig.model_validate_json(cfg_json)
    spec, train, test = _load(cfg_json, task)
    if test.skipped:
        raise EvaluationError(
            f"the test split of {spec.dataset} lost {test.skipped} damaged samples "
            f"({len(test)} read): scores on part of a test set compare with nothing; run "
            "`eomae verify` on the shard set and re-shard it"
        )
    path = resolve_encoder(cfg)
    probe = cfg.probe
    published = split_spec(path)
    if probe.pool == "auto" and published:
        probe = probe.model_copy(update={"pool": FAMILIES[published[0]].pool})
    elif probe.pool == "auto":
        objective = checkpoint.read(Path(path)).get("objective", "multimae")
        probe = probe.model_copy(update={"pool": trained_pool(objective)})
    rows = []
    seg = spec.kind == "segmentation"
    empty = cfg.empty_classes or spec.empty_classes
    for init in cfg.inits:
        for fraction in cfg.label_fractions:
            train_part = label_subset(train, fraction, cfg.probe.seed)  # the same for all seeds
            outputs, group_rows = [], []
            for seed in range(probe.seed, probe.seed + cfg.seeds):
                t0 = time.perf_counter()
                encoder = build_encoder(path, init, seed)
                if isinstance(encoder, PublishedViT):  # it needs reflectance back
                    encoder.input_stats = train.stats[S2.name]
                modalities = modalities_for(encoder, subset, spec)
                seeded = probe.model_copy(update={"seed": seed})
                output = RUNNERS[protocol](encoder, modalities, train_part, test, spec.kind,
                                           len(spec.classes), seeded)  # fmt: skip
                outputs.append(output)
                row = {
                    "task": spec.name, "kind": spec.kind, "dataset": spec.dataset,
                    "split": spec.split,
                    "protocol": {"linear": "frozen-seg", "finetune": "finetune-seg"}[protocol]
                    if seg else protocol,
                    "inputs": subset,
                    "init": "supervised" if init == "random" and protocol == "finetune" else init,
                    "label_fraction": fraction, "headline": HEADLINE[spec.kind], "seed": seed,
                    "metrics": score(spec.kind, output, test.labels, len(spec.classes), empty),
                    "classes": list(spec.classes), "pool": probe.pool,
                    "knn_k": probe.knn_k if protocol == "knn" else None,
                    "samples": {"train": len(train_part), "test": len(test),
                                "train_skipped": train.skipped, "test_skipped": test.skipped},
                    "seconds": round(time.perf_counter() - t0, 2),
                }  # fmt: skip
                if seg and S2.name in subset and seed == probe.seed:
                    row["examples"] = {"image": _rgb(test, 4), "target": test.labels[:4].numpy(),
                                       "pred": output[:4].numpy()}  # fmt: skip
                group_rows.append(row)
            if cfg.bootstrap:
                interval = bootstrap_interval(
                    lambda out, idx: score(spec.kind, out[idx], test.labels[idx],
                                           len(spec.classes), empty)[HEADLINE[spec.kind]],
                    outputs, len(test), cfg.bootstrap, probe.seed,
                )  # fmt: skip
                for row in group_rows:
                    row["interval_95"] = list(interval)
            rows += group_rows
    return rows


def plan(cfg: EvalConfig, spec: TaskSpec | None) -> list[tuple[str, Protocol, str]]:
    """The (task, protocol, inputs) groups; kNN is for classification only."""
    kinds: dict[str, Task] = {spec.name: spec.kind} if spec else {t: t for t in cfg.tasks}
    return [
        (task, protocol, subset)
        for task, kind in kinds.items()
        for protocol in cfg.protocols
        if not (protocol == "knn" and kind == "segmentation")
        for subset in cfg.inputs
    ]


def encoder_description(encoder: Encoder, name: str, cfg: EvalConfig) -> dict[str, Any]:
    """What the leaderboard CSV says of the encoder (evaluation.leaderboard)."""
    if isinstance(encoder, PublishedViT):
        return {"model": f"training.published.{encoder.name}", "name": name, "dim": encoder.dim,
                "size": encoder.family.image, "normalization": "model_native",
                "interpolation": "bilinear", "bootstrap": cfg.bootstrap}  # fmt: skip
    return {"model": "training.multimae.MultiMAE", "name": name, "dim": encoder.dim,
            "size": encoder.input_size, "normalization": "bandspec_zscore",
            "interpolation": "none", "bootstrap": cfg.bootstrap}  # fmt: skip


def check(cfg: EvalConfig) -> TaskSpec | None:
    """Fail early: encoder loads, benchmark reads, inputs fit (before any training)."""
    path = resolve_encoder(cfg)
    try:
        encoder = open_encoder(path)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from e
    spec = None
    if cfg.benchmark:
        assert cfg.data is not None
        spec = benchmark_task(READERS[cfg.benchmark](cfg.data))
        for subset in cfg.inputs:
            modalities_for(encoder, subset, spec)
    else:
        for subset in cfg.inputs:
            modalities_for(encoder, subset, landcover_task("scene"))
    kinds = [spec.kind] if spec else list(cfg.tasks)
    if isinstance(encoder, PublishedViT) and "segmentation" in kinds:
        raise EvaluationError(f"{encoder.name} is evaluated on pooled features (scene and "
                              "multi-label tasks); it has no per-pixel protocol here")  # fmt: skip
    return spec


def run_evaluation(cfg: EvalConfig, log: Any = print) -> dict[str, Any]:
    """Evaluate every group, write the report; return where it is and the rows."""
    t0 = time.perf_counter()
    # Resolved (and exported) once here: the groups, maybe on other processes, get the file.
    cfg = cfg.model_copy(update={"encoder": resolve_encoder(cfg)})
    spec = check(cfg)
    groups = plan(cfg, spec)
    cfg_json = cfg.model_dump_json()
    rows: list[dict] = []
    if cfg.use_ray:
        import ray

        from ingest.parallel import init_ray

        init_ray(cfg.address)
        remote = ray.remote(num_cpus=1)(evaluate_group)
        refs = [remote.remote(cfg_json, *g) for g in groups]
        for i, ref in enumerate(refs):
            rows.extend(ray.get(ref))  # type: ignore[arg-type]
            log(f"{i + 1}/{len(groups)} groups done")
    else:
        for i, group in enumerate(groups):
            rows += evaluate_group(cfg_json, *group)
            log(f"{i + 1}/{len(groups)} {'/'.join(group)} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    name = cfg.name or f"eval-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out = Path(cfg.run_dir).resolve() / EVAL_DIR / name
    encoder = resolve_encoder(cfg)
    context = {
        "encoder": str(encoder), "data": str(cfg.data) if cfg.benchmark else
        (cfg.shards or join_url(cfg.run_dir, SHARDS_DIR)),
        "seed": cfg.probe.seed, "date": dt.datetime.now().isoformat(timespec="seconds"),
        "class_colors": {} if spec else {t: list(landcover_task(t).colors) for t in cfg.tasks},
        **({"preset": cfg.preset, "published": reference(cfg.preset, encoder)} if cfg.preset
           else {}),
        "damaged samples skipped (train)": max(
            (r.get("samples", {}).get("train_skipped", 0) for r in rows), default=0),
    }  # fmt: skip
    title = encoder.split(":")[0] if split_spec(encoder) else Path(encoder).parent.name
    report = write_report(rows, out, f"eomae evaluation: {title}", context)
    write_leaderboard_csv(rows, out, encoder_description(open_encoder(encoder), title, cfg))
    return {"report": str(report), "rows": rows, "elapsed_s": round(time.perf_counter() - t0, 1)}
