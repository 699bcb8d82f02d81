"""Fixtures for the shard tests: one shard set cut from the session's ingest of the world."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingest.config import IngestConfig
from shards.config import ShardConfig

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


@pytest.fixture()
def shard_copy(shard_set: tuple[ShardConfig, dict[str, Any]], tmp_path: Path) -> Path:
    """A private copy of the shard set, for tests that corrupt it."""
    import shutil

    src = Path(shard_set[0].out_url)
    dst = tmp_path / "shards"
    shutil.copytree(src, dst)
    return dst
