"""Typed configuration of `eomae ingest`, validated once, before any work."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely.geometry import MultiPolygon, box, shape
from shapely.geometry.base import BaseGeometry

from ingest.catalog import PLANETARY_COMPUTER
from ingest.sources import worldcover

BBox = tuple[float, float, float, float]


def check_bbox(bbox: BBox) -> BBox:
    """Raise ValueError naming the box unless it is a valid west,south,east,north box.

    West > east is a box that crosses the antimeridian (STAC API and GeoJSON convention).
    """
    w, s, e, n = bbox
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise ValueError(f"longitude out of [-180, 180] in {bbox}")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise ValueError(f"latitude out of [-90, 90] in {bbox}")
    if not (w != e and s < n):
        raise ValueError(f"need west != east and south < north in {bbox}")
    return bbox


def group_bbox_numbers(value: Any) -> Any:
    """Boxes as typed, as a list of 4-tuples (a before-validator).

    `W,S,E,N` (one box on the command line) or a flat list of numbers is grouped by four;
    a list of boxes is left as it is.
    """
    if isinstance(value, str):
        value = value.replace("[", "").replace("]", "").split(",")
    if isinstance(value, list | tuple) and value and not isinstance(value[0], list | tuple):
        if len(value) % 4:
            raise ValueError(f"a bbox needs 4 numbers W,S,E,N; got {len(value)}: {value}")
        return [tuple(value[i : i + 4]) for i in range(0, len(value), 4)]
    return value


def bbox_geometry(bbox: BBox) -> BaseGeometry:
    """The box as a lon/lat geometry: split at 180° when it crosses the antimeridian."""
    w, s, e, n = bbox
    if w < e:
        return box(w, s, e, n)
    return MultiPolygon([box(w, s, 180.0, n), box(-180.0, s, e, n)])


class Areas(BaseModel):
    """Areas of interest as a command takes them: boxes, a GeoJSON file, or both."""

    bbox: list[BBox] = Field(
        default_factory=list,
        description="Areas of interest as west,south,east,north in degrees; repeatable.",
    )
    aoi_file: Path | None = Field(None, description="GeoJSON file with AOI polygons.")

    _group_flat_numbers = field_validator("bbox", mode="before")(group_bbox_numbers)

    @field_validator("bbox")
    @classmethod
    def _bboxes_valid(cls, boxes: list[BBox]) -> list[BBox]:
        return [check_bbox(b) for b in boxes]

    @field_validator("aoi_file")
    @classmethod
    def _aoi_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"aoi_file {path} does not exist")
        return path

    def aois(self) -> list[BaseGeometry]:
        """AOI geometries in EPSG:4326, each planned on its own; boxes crossing 180° split."""
        geoms: list[BaseGeometry] = [bbox_geometry(b) for b in self.bbox]
        if self.aoi_file is not None:
            data = json.loads(Path(self.aoi_file).read_text())
            features = data.get("features", [data]) if data.get("type") != "Feature" else [data]
            geoms += [shape(f.get("geometry", f)) for f in features]
        return geoms


class IngestConfig(Areas):
    """What to ingest, from where, and how hard to push the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog: str = Field(
        PLANETARY_COMPUTER, description="`planetary-computer` or the URL of any STAC API."
    )
    catalog_snapshot: Path | None = Field(
        None,
        description="Plan from this STAC GeoParquet snapshot (RUN/ingest/catalog.parquet of "
        "an earlier run) instead of the catalog: no search, the same plan.",
    )
    locations: Path | None = Field(
        None,
        description="A corpus's cells (GeoParquet from `eomae sample`) instead of areas: "
        "each cell is ingested alone, its tile searched once for all its cells.",
    )
    start: date = Field(description="First acquisition date (inclusive), YYYY-MM-DD.")
    end: date = Field(description="Last acquisition date (inclusive), YYYY-MM-DD.")
    max_cloud_cover: float = Field(
        30.0, ge=0, le=100, description="Skip scenes whose eo:cloud_cover exceeds this (percent)."
    )
    scenes_per_tile: int = Field(
        4, ge=1, le=100, description="Keep the N least cloudy scenes of each MGRS tile."
    )
    spread_seasons: bool = Field(
        False, description="Pick the scenes round-robin over seasons before cloud cover."
    )
    seasons: bool = Field(
        False,
        description="One scene per season (DJF, MAM, JJA, SON) of each grid or location, the "
        "clearest of each, as SSL4EO-S12 does, instead of scenes_per_tile; a season without "
        "one is listed as skipped.",
    )
    chip_size: int = Field(
        64, ge=8, le=2048, description="Chip size in 10 m pixels; the grid snaps to it."
    )
    run_dir: str = Field("runs/ingest", description="Output run directory (path or fsspec URL).")
    address: str | None = Field(
        None, description="Ray cluster address; default: $RAY_ADDRESS or a local Ray."
    )
    worldcover_version: worldcover.Version = Field(
        worldcover.LATEST,
        description="Which ESA WorldCover map: v100 (2020) or v200 (2021); one per run, "
        "never mixed.",
    )
    max_concurrent_units: int = Field(
        4, ge=1, le=1024, description="Units (tile x date) processed at once."
    )
    block_size: int = Field(
        512,
        ge=8,
        le=16384,
        description="A unit is read, derived and written in blocks of this many pixels a "
        "side (rounded down to whole chips): a task's memory grows with it (about 250 B per "
        "pixel of a block), not with the tile.",
    )
    max_concurrent_reads: int = Field(
        4, ge=1, le=64, description="Raster reads in flight per unit."
    )

    @model_validator(mode="after")
    def _aoi_and_dates(self) -> IngestConfig:
        areas = bool(self.bbox) or self.aoi_file is not None
        if areas == (self.locations is not None):
            raise ValueError("give areas of interest (--bbox W,S,E,N, --aoi-file FILE) or "
                             "--locations FILE, one of the two")  # fmt: skip
        if self.seasons and self.spread_seasons:
            raise ValueError("give seasons (one scene per season) or spread_seasons "
                             "(scenes_per_tile spread over seasons), not both")  # fmt: skip
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        for name in ("catalog_snapshot", "locations"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self

    @property
    def datetime(self) -> str:
        """The date range as a STAC datetime interval, each end day included whole.

        Real item datetimes carry fractions of a second (23:59:59.024), which an end
        bound of 23:59:59 would drop.
        """
        return f"{self.start}T00:00:00Z/{self.end}T23:59:59.999999Z"
