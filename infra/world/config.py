"""Typed configuration of the sample world."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RegionName = Literal["alps", "alaska", "antimeridian"]


class WorldConfig(BaseModel):
    """What `eomae world` generates. The defaults make a world in well under a minute."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Random seed; the same seed gives byte-identical rasters.")
    region: RegionName = Field(
        "alps",
        description="Where the world lies, always across a UTM zone boundary: 'alps' (47.3°N, "
        "12°E, zones 32/33), 'alaska' (61.4°N, -150°, zones 5/6, western hemisphere) or "
        "'antimeridian' (Chukotka, 65.4°N, 180°, zones 60/1, geometries split at ±180°).",
    )
    tiles: int = Field(
        3,
        ge=2,
        le=600,
        description="Sentinel-2 tiles; rows of up to six straddle the region's UTM zone "
        "boundary, half in each zone, one row after the other southwards.",
    )
    dates: int = Field(
        4,
        ge=2,
        le=12,
        description="Acquisitions per tile, spread over 2021-2022 so both processing "
        "baselines (before and after 04.00) occur.",
    )
    tile_size: int = Field(
        600,
        ge=120,
        le=3000,
        description="Tile width and height in 10 m pixels; a multiple of 6 so the 20 m and "
        "60 m grids nest in it, as in the real 10980 px tiles.",
    )
    markers_per_tile: int = Field(
        2,
        ge=0,
        le=8,
        description="Bright 120 m calibration targets per tile with date-invariant "
        "reflectance, kept cloud-free (for co-registration and harmonisation checks).",
    )
    points_per_tile: int = Field(
        25, ge=0, le=500, description="Ground-truth points per tile in homogeneous land cover."
    )

    @field_validator("tile_size")
    @classmethod
    def _nests_60m(cls, v: int) -> int:
        if v % 6:
            raise ValueError(f"must be a multiple of 6 (10/20/60 m grids nest), got {v}")
        return v
