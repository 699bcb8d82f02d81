"""Fixtures for the ingest tests: one full ingest of the sample world per session."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from infra.services import LocalServices
from ingest.config import IngestConfig


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
