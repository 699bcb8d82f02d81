"""Fixtures shared by the whole suite.

Services
    ``local_services``: the real local services (PostgreSQL + pgstac, stac-fastapi-pgstac,
    COG server) serving the world of the ``world_dir`` fixture, started once per session.

Ray
    ``ray_session``: one local Ray (2 CPUs) for the whole session; Ray is slow to start.

World
    ``world_dir``: the default sample world (``WorldConfig()``), generated once per
    session by the same code as ``eomae world``; tests compute their expectations from
    its items and ``truth.json`` (``truth``).

Ingest
    ``make_config``: an ingest config for the whole sample world; ``ingested``: one
    uninterrupted ingest of it (64 px chip grid), shared by the ingest and shard tests.

Shards
    ``shard_set``: the ingest's cube cut into 64 px chips in small (~4 MB) shards, so
    every split has several; used by the shard, training and evaluation tests.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from infra.services import LocalServices
from infra.services.postgres import RELOCATED_MARKER
from infra.world import WorldConfig, generate_world
from ingest.config import IngestConfig
from shards.config import ShardConfig


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default sample world, generated once per session (about 10 s)."""
    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(out, WorldConfig())
    return out


@pytest.fixture(scope="session")
def local_services(
    world_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServices]:
    """Running services for ``world_dir``; ``.stac_url`` and ``.cog_url`` are live."""
    state_dir = tmp_path_factory.mktemp("services")
    services = LocalServices(world_dir, state_dir).start()
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="session", autouse=True)
def _remove_relocated_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Delete the database clusters this session kept under /tmp.

    pytest's temp dirs are private (0700), so as root a cluster cannot live there and
    PostgresCluster keeps it in /tmp/eomae-pgdata-* instead, naming it in a marker file
    in the requested directory. Only clusters named by this session's markers are
    removed: another test session on the machine may be using its own.
    Set up first, torn down last: after every service has stopped.
    """
    yield
    for marker in tmp_path_factory.getbasetemp().rglob(RELOCATED_MARKER):
        shutil.rmtree(marker.read_text().strip(), ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray shared by every test that needs one."""
    import ray

    from ingest.parallel import init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local": never join a cluster a stale /tmp/ray/ray_current_cluster names.
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def truth(world_dir: Path) -> dict[str, Any]:
    """The sample world's ground-truth record."""
    return json.loads((world_dir / "truth.json").read_text())


@pytest.fixture(scope="session")
def make_config(
    local_services: LocalServices, truth: dict[str, Any]
) -> Callable[..., IngestConfig]:
    """An ingest config for the whole sample world (every scene), with overrides."""

    def make(run_dir: Path, **overrides: Any) -> IngestConfig:
        fields: dict[str, Any] = {
            "catalog": local_services.stac_url,
            "bbox": [tuple(truth["region"])],
            "start": date(2021, 1, 1),
            "end": date(2022, 12, 31),
            "max_cloud_cover": 100.0,
            "scenes_per_tile": 4,
            "chip_size": 64,
            "run_dir": str(run_dir),
        }
        return IngestConfig(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
def ingested(
    ray_session: None,
    make_config: Callable[..., IngestConfig],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[IngestConfig, dict[str, Any]]:
    """One uninterrupted ingest of the sample world: (config, summary)."""
    from ingest.run import run_ingest

    cfg = make_config(tmp_path_factory.mktemp("ingest"))
    return cfg, run_ingest(cfg)


# Small shards, so that every split has several and the loader's splitting is exercised.
CHIP_SIZE = 64
SHARD_BYTES = 4_000_000


@pytest.fixture(scope="session")
def shard_set(
    ingested: tuple[IngestConfig, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ShardConfig, dict[str, Any]]:
    """Shards of the sample world's cube (64 px chips, ~4 MB shards): (config, summary)."""
    from shards.run import run_shard

    ingest_cfg, _ = ingested
    cfg = ShardConfig(
        run_dir=ingest_cfg.run_dir,
        out=str(tmp_path_factory.mktemp("shards") / "shards"),
        chip_size=CHIP_SIZE,
        shard_bytes=SHARD_BYTES,
    )
    return cfg, run_shard(cfg)


@pytest.fixture(scope="session")
def pretrained(
    shard_set: tuple[ShardConfig, dict[str, Any]],
    ray_session: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A tiny MultiMAE briefly pretrained on the sample world's shards: its encoder file.

    4 epochs of the 288 training chips on 2 workers (36 steps): a real pretraining run
    whose encoder the evaluation tests load, not a converged model.
    """
    from training.config import ModelConfig, PretrainConfig
    from training.export import export_encoder
    from training.pretrain import run_pretrain

    run_dir = tmp_path_factory.mktemp("pretrained")
    cfg = PretrainConfig(
        run_dir=str(run_dir),
        shards=shard_set[0].out_url,
        name="tiny",
        model=ModelConfig(size="tiny", modalities="bandgroups"),
        workers=2,
        batch_size=16,
        epochs=4,
        lr=1e-3,
        warmup_epochs=1,
        loader_workers=0,
        log_every=10,
    )
    summary = run_pretrain(cfg)
    return export_encoder(Path(summary["dir"]), run_dir / "encoder.pt")
