"""Planning an ingest on the driver.

Which scenes of which tiles, with which DEM and land-cover items, on which grid. The plan
is written to the run directory before any raster is read, so a re-run executes exactly
the same units.

Each AOI is planned on its own: per MGRS tile it gets its own grid (the tile ∩ the AOI's
UTM envelope, on the chip grid); grids of one tile that overlap are merged, so no chip is
ingested twice. A unit is one scene on one grid. Scenes are ranked by the clear share
they show of that grid, and DEM and land cover are searched with the grid's own
footprint, so every pixel of the grid has them when the catalog does.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from ingest.catalog import CatalogError, Searchable
from ingest.config import IngestConfig
from ingest.grid import Grid, chip_grid, parts
from ingest.sources import dem, sentinel2, worldcover


class NothingMatched(CatalogError):
    """The search found no scene; the message shows the query."""


@dataclass(frozen=True)
class Unit:
    """One scene on one grid: the S2 item, the DEM and WorldCover items covering the grid."""

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
    worldcover_version: str = worldcover.LATEST
    usable_share: float = 1.0  # of the grid, expected clear (sentinel2.usable_share)
    baseline_inferred: bool = False  # no usable s2:processing_baseline: from the date

    @property
    def target(self) -> Grid:
        """The grid as an object."""
        return Grid(**self.grid)


@dataclass(frozen=True)
class Skipped:
    """An item the plan could not use, and why."""

    item_id: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """The units to run, and the items left out with their reasons."""

    units: list[Unit]
    skipped: list[Skipped] = field(default_factory=list)


SEASONS = ("DJF", "MAM", "JJA", "SON")  # meteorological seasons, by calendar month


def _season(when: str) -> int:
    month = datetime.fromisoformat(when.replace("Z", "+00:00")).month
    return (month % 12) // 3  # index into SEASONS


def season(when: str) -> str:
    """The season (SEASONS) of an ISO datetime."""
    return SEASONS[_season(when)]


def pick_scenes(
    items: list[dict],
    n: int,
    spread_seasons: bool,
    footprint: BaseGeometry | None = None,
    *,
    per_season: bool = False,
) -> list[dict]:
    """The `n` scenes showing most of `footprint` clear.

    With `spread_seasons`, one per season in turn first; with `per_season`, the clearest
    scene of each season and no more (SSL4EO-S12's four seasons; `n` is not used), in
    season order. Ties go to the less cloudy scene, then the id.
    """
    ranked = sorted(
        items,
        key=lambda i: (
            -round(sentinel2.usable_share(i, footprint), 6),
            i["properties"].get("eo:cloud_cover", 100.0),
            i["id"],
        ),
    )
    if not (spread_seasons or per_season):
        return ranked[:n]
    by_season: dict[int, list[dict]] = defaultdict(list)
    for item in ranked:
        by_season[_season(item["properties"]["datetime"])].append(item)
    if per_season:
        return [by_season[season][0] for season in sorted(by_season)]
    picked: list[dict] = []
    while len(picked) < n and any(by_season.values()):
        for season in sorted(by_season):
            if by_season[season] and len(picked) < n:
                picked.append(by_season[season].pop(0))
    return picked


def missing_seasons(chosen: list[dict]) -> list[str]:
    """The seasons none of the chosen scenes is from."""
    have = {_season(item["properties"]["datetime"]) for item in chosen}
    return [name for i, name in enumerate(SEASONS) if i not in have]


def latest_processing(items: list[dict]) -> list[dict]:
    """One item per acquisition: of products reprocessed under several baselines, the newest."""
    best: dict[tuple[str, str, str, int], dict] = {}
    for item in items:
        props = item["properties"]
        key = (props["s2:mgrs_tile"], props["datetime"][:19], sentinel2.platform_code(item),
               sentinel2.relative_orbit(item))  # fmt: skip
        if key not in best or _rank(item) > _rank(best[key]):
            best[key] = item
    return sorted(best.values(), key=lambda i: i["id"])


def _rank(item: dict) -> tuple[tuple[int, ...], str]:
    baseline = str(item["properties"].get("s2:processing_baseline", ""))
    return sentinel2.baseline_key(baseline), item["id"]


def unit_id(item: dict, grid: Grid | None = None) -> str:
    """TILE_SENSINGTIME_PLATFORM_RORBIT, plus a tag of the grid when a tile has several.

    Unique: two relative orbits of one satellite over one tile on one day (common at high
    latitude) differ in sensing time and orbit. Stable: made of the item and the grid only.
    """
    props = item["properties"]
    sensed = props["datetime"][:19].replace("-", "").replace(":", "")  # 20210315T102031
    base = (f"{props['s2:mgrs_tile']}_{sensed}_{sentinel2.platform_code(item)}"
            f"_R{sentinel2.relative_orbit(item):03d}")  # fmt: skip
    if grid is None:
        return base
    tag = hashlib.sha1(json.dumps(grid.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    return f"{base}_{tag}"


def tile_frame(items: list[dict]) -> tuple[int, tuple[float, float, float, float]]:
    """The tile's CRS and bounds, as most of its items state them (ties: the lowest id's)."""
    frames = [_frame(i) for i in sorted(items, key=lambda i: i["id"])]
    votes = Counter(frames)
    return max(frames, key=lambda f: votes[f])  # the first of the most common


def _frame(item: dict) -> tuple[int, tuple[float, float, float, float]]:
    return sentinel2.item_epsg(item), sentinel2.tile_bounds(item)


def tile_grids(
    epsg: int,
    bounds: tuple[float, float, float, float],
    aois: list[BaseGeometry],
    chip_size: int,
) -> list[Grid]:
    """One grid per AOI that touches the tile; grids that overlap are merged into one."""
    tile = sentinel2.tile_footprint(epsg, bounds)
    return merge_grids([g for a in aois if a.intersects(tile)
                        if (g := chip_grid(epsg, bounds, a, chip_size)) is not None])  # fmt: skip


def merge_grids(grids: list[Grid]) -> list[Grid]:
    """Grids of one tile, those that overlap merged into one (no chip is cut twice).

    North to south, then west to east.
    """
    pending = list(grids)
    merged: list[Grid] = []
    while pending:
        grid = pending.pop()
        hit = next((m for m in merged if m.overlaps(grid)), None)
        if hit is None:
            merged.append(grid)
        else:
            merged.remove(hit)
            pending.append(hit.union(grid))
    return sorted(merged, key=lambda g: (-g.top, g.left))


def search_scenes(
    cfg: IngestConfig, catalog: Searchable, aois: list[BaseGeometry], skipped: list[Skipped]
) -> list[dict]:
    """S2 items touching any AOI, searched AOI by AOI (never one box around all of them).

    An item the planner cannot use goes to `skipped` with its reason; so does an item
    without `eo:cloud_cover` under a cloud limit. With no limit (100 %) it is planned,
    ranked as fully cloudy.
    """
    found: dict[str, dict] = {}
    bad: set[str] = set()  # ids skipped for a problem, not looked at again
    limit = cfg.max_cloud_cover if cfg.max_cloud_cover < 100 else None
    for aoi in (part for a in aois for part in parts(a)):
        for item in catalog.search(
            sentinel2.COLLECTION,
            bbox=aoi.bounds,
            datetime=cfg.datetime,
            max_cloud_cover=limit,
            sortby="eo:cloud_cover",
        ):
            if item.id in found or item.id in bad:
                continue
            data = item.to_dict(transform_hrefs=False)
            problem = sentinel2.item_problem(data)
            if problem is None and limit is not None and _no_cloud_cover(data):
                problem = (f"no eo:cloud_cover: cannot tell whether it is within "
                           f"max_cloud_cover {limit:g}")  # fmt: skip
            if problem is not None:
                bad.add(item.id)
                skipped.append(Skipped(item.id, problem))
            elif shape(data["geometry"]).intersects(aoi):
                found[item.id] = data
    return latest_processing(list(found.values()))


def _no_cloud_cover(item: dict) -> bool:
    return item["properties"].get("eo:cloud_cover") is None


def agreeing(
    items: list[dict], skipped: list[Skipped]
) -> tuple[tuple[int, tuple[float, float, float, float]], list[dict]]:
    """The tile's frame (CRS, bounds) and its items that agree with it; others skipped.

    One item with a wrong proj:epsg or proj:shape must not move or shrink its tile's grid.
    """
    frame = tile_frame(items)
    kept = []
    for item in items:
        if (own := _frame(item)) == frame:
            kept.append(item)
        else:
            why = (f"proj fields EPSG:{own[0]} {own[1]} disagree with the tile's other items "
                   f"(EPSG:{frame[0]} {frame[1]})")  # fmt: skip
            skipped.append(Skipped(item["id"], why))
    return frame, kept


def make_plan(cfg: IngestConfig, catalog: Searchable) -> Plan:
    """Search per AOI, group by MGRS tile, pick scenes per grid, find its DEM and land cover."""
    aois = cfg.aois()
    skipped: list[Skipped] = []
    scenes = search_scenes(cfg, catalog, aois, skipped)
    if not scenes:
        why = "".join(f"; skipped {s.item_id}: {s.reason}" for s in skipped[:5])
        raise NothingMatched(
            f"nothing matched: {sentinel2.COLLECTION} at {catalog.url} with "
            f"bbox={' '.join(str(list(p.bounds)) for a in aois for p in parts(a))}, "
            f"datetime={cfg.datetime}, "
            f"eo:cloud_cover <= {cfg.max_cloud_cover}{why}"
        )
    by_tile: dict[str, list[dict]] = defaultdict(list)
    for s in scenes:
        by_tile[s["properties"]["s2:mgrs_tile"]].append(s)

    units = []
    for tile, found in sorted(by_tile.items()):
        (epsg, bounds), items = agreeing(found, skipped)
        grids = tile_grids(epsg, bounds, aois, cfg.chip_size)
        for grid in grids:
            footprint = grid.footprint()
            seen = [i for i in items if shape(i["geometry"]).intersects(footprint)]
            chosen = pick_scenes(seen, cfg.scenes_per_tile, cfg.spread_seasons, footprint,
                                 per_season=cfg.seasons)  # fmt: skip
            if not chosen:
                continue
            if cfg.seasons and (missing := missing_seasons(chosen)):
                where = f"tile {tile} grid {grid.name}"
                skipped.append(Skipped(where, f"no scene in {', '.join(missing)}"))
            dems = covering(catalog, dem.COLLECTION, dem.ASSET, footprint)
            lcs = covering(
                catalog, worldcover.COLLECTION, worldcover.ASSET, footprint,
                lambda i: worldcover.item_version(i) == cfg.worldcover_version,
            )  # fmt: skip
            tag = grid if len(grids) > 1 else None
            units += units_on(grid, tag, tile, chosen, dems, lcs, cfg, footprint)
    return Plan(units, sorted(skipped, key=lambda s: s.item_id))


def units_on(
    grid: Grid,
    tag: Grid | None,
    tile: str,
    chosen: list[dict],
    dems: list[tuple[str, str]],
    lcs: list[tuple[str, str]],
    cfg: IngestConfig,
    footprint: BaseGeometry,
) -> list[Unit]:
    """The units of the chosen scenes on one grid (`tag`: the grid, when a tile has several)."""
    units = []
    for item in chosen:
        baseline, inferred = sentinel2.processing_baseline(item)
        units.append(
            Unit(
                unit_id=unit_id(item, tag),
                mgrs_tile=tile,
                datetime=item["properties"]["datetime"],
                baseline=baseline,
                cloud_cover=float(item["properties"].get("eo:cloud_cover", 100.0)),
                grid=grid.to_dict(),
                s2_item=item,
                dem_hrefs=[h for _, h in dems],
                dem_items=[i for i, _ in dems],
                lc_hrefs=[h for _, h in lcs],
                lc_items=[i for i, _ in lcs],
                worldcover_version=cfg.worldcover_version,
                usable_share=round(sentinel2.usable_share(item, footprint), 6),
                baseline_inferred=inferred,
            )
        )
    return units


def covering(
    catalog: Searchable,
    collection: str,
    asset: str,
    footprint: BaseGeometry,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> list[tuple[str, str]]:
    """(item id, href) of the items of `collection` whose geometry meets `footprint`.

    Searched part by part (a footprint split at 180° has two), sorted by id. `keep`
    (an item dict -> bool) filters them, e.g. to one WorldCover version.
    """
    return [(i, href) for i, href, _ in covering_items(catalog, collection, asset, footprint, keep)]


def covering_items(
    catalog: Searchable,
    collection: str,
    asset: str,
    footprint: BaseGeometry,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> list[tuple[str, str, BaseGeometry]]:
    """`covering`, with each item's geometry (to pick those of smaller footprints later)."""
    found: dict[str, tuple[str, BaseGeometry]] = {}
    for part in parts(footprint):
        for item in catalog.search(collection, bbox=part.bounds):
            geometry = shape(item.geometry)
            if asset not in item.assets or not geometry.intersects(part):
                continue
            if keep is None or keep(item.to_dict(transform_hrefs=False)):
                found[item.id] = (item.assets[asset].href, geometry)
    return [(i, href, geometry) for i, (href, geometry) in sorted(found.items())]


def plan_to_json(plan: Plan, cfg: IngestConfig) -> str:
    """The plan as written to RUN/ingest/plan.json.

    Each Sentinel-2 item is written once, under "items", and a unit names its item by id:
    a corpus plans many cells on one scene, and an item's JSON is ~20 kB (a plan of 100k
    cells embedding it per unit would be ~4 GB).
    """
    units = [asdict(u) | {"s2_item": u.s2_item["id"]} for u in plan.units]
    return json.dumps(
        {
            "config": cfg.model_dump(mode="json"),
            "items": {u.s2_item["id"]: u.s2_item for u in plan.units},
            "units": units,
            "skipped_items": [asdict(s) for s in plan.skipped],
        },
        indent=1,
    )


def plan_from_json(text: str) -> Plan:
    """The plan back from plan.json (units that name their item, or older ones holding it)."""
    data = json.loads(text)
    items = data.get("items", {})
    units = [Unit(**(u | {"s2_item": items[u["s2_item"]]}) if isinstance(u["s2_item"], str)
                  else u) for u in data["units"]]  # fmt: skip
    return Plan(units, [Skipped(**s) for s in data.get("skipped_items", [])])
