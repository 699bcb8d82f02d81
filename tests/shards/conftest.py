"""Fixtures for the shard tests (the shard set itself, `shard_set`, is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shards.config import ShardConfig


@pytest.fixture()
def shard_copy(shard_set: tuple[ShardConfig, dict[str, Any]], tmp_path: Path) -> Path:
    """A private copy of the shard set, for tests that corrupt it."""
    import shutil

    src = Path(shard_set[0].out_url)
    dst = tmp_path / "shards"
    shutil.copytree(src, dst)
    return dst
