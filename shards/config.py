"""Typed configuration of `eomae shard`, validated once, before any work."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.cube import CUBE_NAME

SPLITS: tuple[str, ...] = ("train", "val", "test")
SHARDS_DIR = "shards"


def join_url(base: str, *parts: str) -> str:
    """A path or fsspec URL with parts appended."""
    return "/".join([base.rstrip("/"), *parts])


def absolute_url(url: str) -> str:
    """A local path made absolute; an fsspec URL (s3://, file://, ...) as it is.

    Ray workers run in directories of their own, so a path relative to where the user
    typed the command must be resolved there, once, at the edge.
    """
    if "://" in url:
        return url
    return str(Path(url).expanduser().resolve())


class ShardConfig(BaseModel):
    """How to cut the cube into chips, split them, and pack them into shards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: str = Field(
        "runs/ingest", description="Run directory holding cube.zarr (path or fsspec URL)."
    )
    cube: str | None = Field(None, description="The cube to read (default: RUN/cube.zarr).")
    out: str | None = Field(None, description="Where the shard set goes (default: RUN/shards).")
    chip_size: int = Field(224, ge=8, le=4096, description="Chip size in 10 m pixels.")
    max_invalid: float = Field(
        0.1, ge=0, le=1, description="Drop chips whose invalid (cloud, nodata) share exceeds this."
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of split blocks for val.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of split blocks for test.")
    block_chips: int = Field(
        4, ge=1, le=1024, description="Side of a spatial split block, in chips."
    )
    seed: int = Field(0, description="Seed of the split assignment and the shuffle.")
    shard_bytes: int = Field(
        256_000_000, ge=1, description="Target shard size in bytes (a shard holds >= 1 sample)."
    )
    force: bool = Field(False, description="Rewrite an existing shard set.")
    address: str | None = Field(
        None, description="Ray cluster address; default: $RAY_ADDRESS or a local Ray."
    )
    max_concurrent_tasks: int = Field(
        8, ge=1, le=4096, description="Ray tasks (units scanned or shards written) in flight."
    )

    @model_validator(mode="after")
    def _fractions(self) -> ShardConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must leave some train blocks "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self

    @property
    def cube_url(self) -> str:
        """The cube this shard set is cut from."""
        return self.cube or join_url(self.run_dir, CUBE_NAME)

    @property
    def out_url(self) -> str:
        """The shard set's directory."""
        return self.out or join_url(self.run_dir, SHARDS_DIR)

    def fractions(self) -> dict[str, float]:
        """Fraction of split blocks per split."""
        train = 1 - self.val_fraction - self.test_fraction
        return {"train": train, "val": self.val_fraction, "test": self.test_fraction}


# What a shard set's content depends on; the Ray address, concurrency and paths may change.
CONTENT_FIELDS = frozenset(
    {"chip_size", "max_invalid", "val_fraction", "test_fraction", "block_chips", "seed",
     "shard_bytes"}
)  # fmt: skip
