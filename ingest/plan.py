"""Planning an ingest on the driver.

Which scenes of which tiles, with which DEM and land-cover items, on which grid. The plan
is written to the run directory before any raster is read, so a re-run executes exactly
the same units.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pystac_client
from shapely.geometry import box, shape
from shapely.ops import unary_union

from ingest.catalog import CatalogError, search_items
from ingest.config import IngestConfig
from ingest.grid import Grid, chip_grid
from ingest.sources import dem, sentinel2, worldcover


class NothingMatched(CatalogError):
    """The search found no scene; the message shows the query."""


@dataclass(frozen=True)
class Unit:
    """One tile x date: the S2 item, the DEM and WorldCover items covering it, the grid."""

    unit_id: str
    mgrs_tile: str
    datetime: str
    baseline: str
    cloud_cover: float
    grid: dict[str, Any]
    s2_item: dict[str, Any]
    dem_hrefs: list[str] = field(default_factory=list)
    dem_items: list[str] = field(default_factory=list)
    lc_hrefs: list[str] = field(default_factory=list)
    lc_items: list[str] = field(default_factory=list)

    @property
    def target(self) -> Grid:
        """The grid as an object."""
        return Grid(**self.grid)


def _season(when: str) -> int:
    month = datetime.fromisoformat(when.replace("Z", "+00:00")).month
    return (month % 12) // 3  # DJF, MAM, JJA, SON


def pick_scenes(items: list[dict], n: int, spread_seasons: bool) -> list[dict]:
    """The `n` least cloudy scenes; with `spread_seasons`, one per season in turn first."""
    ranked = sorted(items, key=lambda i: (i["properties"]["eo:cloud_cover"], i["id"]))
    if not spread_seasons:
        return ranked[:n]
    by_season: dict[int, list[dict]] = defaultdict(list)
    for item in ranked:
        by_season[_season(item["properties"]["datetime"])].append(item)
    picked: list[dict] = []
    while len(picked) < n and any(by_season.values()):
        for season in sorted(by_season):
            if by_season[season] and len(picked) < n:
                picked.append(by_season[season].pop(0))
    return picked


def make_plan(cfg: IngestConfig, client: pystac_client.Client) -> list[Unit]:
    """Search, group by MGRS tile, pick scenes, find covering DEM and land-cover items."""
    aoi = unary_union(cfg.aois())
    found = search_items(
        client,
        sentinel2.COLLECTION,
        bbox=aoi.bounds,
        datetime=cfg.datetime,
        max_cloud_cover=cfg.max_cloud_cover,
        sortby="eo:cloud_cover",
    )
    scenes = [i.to_dict(transform_hrefs=False) for i in found]
    scenes = [s for s in scenes if shape(s["geometry"]).intersects(aoi)]
    if not scenes:
        raise NothingMatched(
            f"nothing matched: {sentinel2.COLLECTION} at {client.self_href} with "
            f"bbox={list(aoi.bounds)}, datetime={cfg.datetime}, "
            f"eo:cloud_cover <= {cfg.max_cloud_cover}"
        )
    by_tile: dict[str, list[dict]] = defaultdict(list)
    for s in scenes:
        by_tile[s["properties"]["s2:mgrs_tile"]].append(s)

    units = []
    for tile, items in sorted(by_tile.items()):
        chosen = pick_scenes(items, cfg.scenes_per_tile, cfg.spread_seasons)
        first = chosen[0]
        grid = chip_grid(
            sentinel2.item_epsg(first), sentinel2.tile_bounds(first), aoi, cfg.chip_size
        )
        if grid is None:
            continue  # the AOI touches this tile by less than one chip
        footprint = shape(first["geometry"]).intersection(box(*aoi.bounds))
        dems = _covering(client, dem.COLLECTION, dem.ASSET, footprint)
        lcs = _covering(client, worldcover.COLLECTION, worldcover.ASSET, footprint)
        for item in chosen:
            when = item["properties"]["datetime"]
            units.append(
                Unit(
                    unit_id=f"{tile}_{when[:10].replace('-', '')}_{item['id'][:3]}",
                    mgrs_tile=tile,
                    datetime=when,
                    baseline=item["properties"].get("s2:processing_baseline", "00.00"),
                    cloud_cover=float(item["properties"]["eo:cloud_cover"]),
                    grid=grid.to_dict(),
                    s2_item=item,
                    dem_hrefs=[h for _, h in dems],
                    dem_items=[i for i, _ in dems],
                    lc_hrefs=[h for _, h in lcs],
                    lc_items=[i for i, _ in lcs],
                )
            )
    return units


def _covering(
    client: pystac_client.Client, collection: str, asset: str, footprint: Any
) -> list[tuple[str, str]]:
    """(item id, href) of the items of `collection` that intersect the footprint."""
    items = search_items(client, collection, bbox=footprint.bounds)
    return [
        (i.id, i.assets[asset].href)
        for i in items
        if asset in i.assets and shape(i.geometry).intersects(footprint)
    ]


def plan_to_json(units: list[Unit], cfg: IngestConfig) -> str:
    """The plan as written to RUN/ingest/plan.json."""
    return json.dumps(
        {"config": cfg.model_dump(mode="json"), "units": [asdict(u) for u in units]},
        indent=1,
    )


def plan_from_json(text: str) -> list[Unit]:
    """Units back from plan.json."""
    return [Unit(**u) for u in json.loads(text)["units"]]
