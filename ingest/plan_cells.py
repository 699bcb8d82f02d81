"""Planning the ingest of a corpus of locations (`eomae ingest --locations FILE`).

The cells of `eomae sample` (ingest.locations) are grouped by the MGRS tile that holds
them. Each group is searched once per collection, with the box of its cells: Sentinel-2
scenes (its tile's and the overlapping neighbours'), DEM and land-cover items. So no
request spans more than a tile and planning grows with the number of tiles and cells,
never with the area between them. Each cell is a grid of one chip (cells that overlap,
from a coarser sampling, are merged as the AOI planner merges grids) and a unit is one
scene on one such grid: a unit reads only the windows of its chip from every raster, so
its memory is set by the chip size, not the tile's.
"""

from __future__ import annotations

from collections import defaultdict

import geopandas as gpd
from shapely import STRtree
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from ingest.catalog import Searchable
from ingest.config import IngestConfig
from ingest.grid import Grid
from ingest.locations import SampleError
from ingest.plan import (
    NothingMatched,
    Plan,
    Skipped,
    Unit,
    agreeing,
    covering_items,
    merge_grids,
    missing_seasons,
    pick_scenes,
    search_scenes,
    units_on,
)
from ingest.sources import dem, sentinel2, worldcover


def make_cells_plan(cfg: IngestConfig, catalog: Searchable, cells: gpd.GeoDataFrame) -> Plan:
    """Units for every cell that has scenes; a cell or tile without any is said in `skipped`.

    A cell's scenes are those of any tile in its UTM zone that shows it (the tiles
    overlap), one per acquisition, its own tile's first.
    """
    sizes = set(cells["chip_size"])
    if sizes != {cfg.chip_size}:
        raise SampleError(f"the locations are cells of {sorted(sizes)} px; "
                          f"chip_size is {cfg.chip_size}: sample again with it")  # fmt: skip
    skipped: list[Skipped] = []
    units: list[Unit] = []
    for name, group in cells.groupby("mgrs", sort=True):
        area = _search_area(group)
        scenes = search_scenes(cfg, catalog, [area], skipped)  # its tile's and neighbours'
        if not scenes:
            skipped.append(Skipped(f"tile {name}", f"no scene for its {len(group)} cells"))
            continue
        by_tile: dict[str, list[dict]] = defaultdict(list)
        for scene in scenes:
            by_tile[scene["properties"]["s2:mgrs_tile"]].append(scene)
        frames = {tile: agreeing(found, skipped) for tile, found in sorted(by_tile.items())}
        # each scene's geometry once per tile, not once per cell
        outlines = [(tile, epsg, item, shape(item["geometry"]))
                    for tile, ((epsg, _), items) in frames.items() for item in items]  # fmt: skip
        grids = _cell_grids(group, cfg.chip_size)
        dems = covering_items(catalog, dem.COLLECTION, dem.ASSET, area)
        lcs = covering_items(
            catalog, worldcover.COLLECTION, worldcover.ASSET, area,
            lambda i: worldcover.item_version(i) == cfg.worldcover_version,
        )  # fmt: skip
        for grid in grids:
            cell = grid.footprint()
            seen = _one_per_acquisition(
                [(tile, item) for tile, epsg, item, outline in outlines
                 if epsg == grid.epsg and outline.intersects(cell)],
                str(name), grid, cell,
            )  # fmt: skip
            chosen = pick_scenes(seen, cfg.scenes_per_tile, cfg.spread_seasons, cell,
                                 per_season=cfg.seasons)  # fmt: skip
            if not chosen:
                skipped.append(Skipped(f"cell {grid.name}",
                                       f"no scene in EPSG:{grid.epsg} covers it"))  # fmt: skip
                continue
            if cfg.seasons and (missing := missing_seasons(chosen)):
                skipped.append(Skipped(f"cell {grid.name}", f"no scene in {', '.join(missing)}"))
            dem_here = [(i, href) for i, href, g in dems if g.intersects(cell)]
            lc_here = [(i, href) for i, href, g in lcs if g.intersects(cell)]
            for item in chosen:
                tile = item["properties"]["s2:mgrs_tile"]
                units += units_on(grid, grid, tile, [item], dem_here, lc_here, cfg, cell)
    if not units:
        raise NothingMatched(f"no scene of {sentinel2.COLLECTION} at {catalog.url} for any of "
                             f"the {len(cells)} cells in {cfg.datetime}")  # fmt: skip
    # a neighbour's bad item is met by each tile whose cells it covers: said once
    return Plan(units, sorted(set(skipped), key=lambda s: (s.item_id, s.reason)))


def _search_area(group: gpd.GeoDataFrame) -> BaseGeometry:
    """One box around a tile's cells, searched once (not once per cell).

    The cells' own footprints where the box would cross 180°.
    """
    west, south, east, north = group.total_bounds
    if east - west > 180:  # cells on both sides of the antimeridian
        return unary_union(list(group.geometry))
    return box(west, south, east, north)


def _cell_grids(group: gpd.GeoDataFrame, chip_size: int) -> list[Grid]:
    """The cells as one-chip grids, north to south, then west to east; overlapping ones merged.

    Sampled cells never overlap (one row per chip of the lattice), so they are only
    sorted: `merge_grids` compares every pair, which a tile of 10,000 cells cannot afford.
    An index finds the few pairs that touch; a file with cells that overlap is merged.
    """
    grids = [Grid(int(c.epsg), float(c.left), float(c.top), chip_size, chip_size)
             for c in group.itertuples()]  # fmt: skip
    tree = STRtree([box(*g.bounds) for g in grids])
    pairs = tree.query(tree.geometries, predicate="intersects").T  # [(i, j)], touching too
    if any(i != j and grids[i].overlaps(grids[j]) for i, j in pairs):
        return merge_grids(grids)
    return sorted(grids, key=lambda g: (-g.top, g.left))  # as merge_grids orders them


def _one_per_acquisition(
    candidates: list[tuple[str, dict]], tile: str, grid: Grid, cell: BaseGeometry
) -> list[dict]:
    """One scene per acquisition, of the tiles that show the cell.

    Overlapping tiles show a cell in several products of one take: a product whose tile
    holds the whole cell first (a tile begins at its MGRS square's north and west edges,
    so a cell there reaches into the neighbour, which holds it whole), then the cell's own
    tile's, then the one that shows most of the cell.
    """
    best: dict[tuple[str, str, int], tuple[tuple[bool, bool, float, str], dict]] = {}
    for own, item in candidates:
        key = (item["properties"]["datetime"][:19], sentinel2.platform_code(item),
               sentinel2.relative_orbit(item))  # fmt: skip
        rank = (not _holds(item, grid), own != tile, -sentinel2.usable_share(item, cell),
                item["id"])  # fmt: skip
        if key not in best or rank < best[key][0]:
            best[key] = (rank, item)
    return [item for _, item in best.values()]


def _holds(item: dict, grid: Grid) -> bool:
    """Whether the item's tile (its raster, in the grid's CRS) holds the whole grid."""
    left, bottom, right, top = sentinel2.tile_bounds(item)
    g_left, g_bottom, g_right, g_top = grid.bounds
    return left <= g_left and g_right <= right and bottom <= g_bottom and g_top <= top
