"""Planning the ingest of a corpus of locations (`eomae ingest --locations FILE`).

The cells of `eomae sample` (ingest.locations) are grouped by the MGRS tile that holds
them. Each group is searched once, with its own footprint: the tile's Sentinel-2 scenes,
and the DEM and land-cover items meeting its cells. So no request spans more than a tile
and planning grows with the number of tiles and cells, never with the area between
them. Each cell is a grid of one chip (cells that overlap, from a coarser sampling, are
merged as the AOI planner merges grids) and a unit is one scene on one such grid: a unit
reads only the windows of its chip from every raster, so its memory is set by the chip
size, not the tile's.
"""

from __future__ import annotations

import geopandas as gpd
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
    pick_scenes,
    search_scenes,
    units_on,
)
from ingest.sources import dem, sentinel2, worldcover


def make_cells_plan(cfg: IngestConfig, catalog: Searchable, cells: gpd.GeoDataFrame) -> Plan:
    """Units for every cell that has scenes; a tile without any is said in `skipped`."""
    sizes = set(cells["chip_size"])
    if sizes != {cfg.chip_size}:
        raise SampleError(f"the locations are cells of {sorted(sizes)} px; "
                          f"chip_size is {cfg.chip_size}: sample again with it")  # fmt: skip
    skipped: list[Skipped] = []
    units: list[Unit] = []
    for tile, group in cells.groupby("mgrs", sort=True):
        area = _search_area(group)
        scenes = search_scenes(cfg, catalog, [area], skipped, tile=str(tile))
        if not scenes:
            skipped.append(Skipped(f"tile {tile}", f"no scene for its {len(group)} cells"))
            continue
        (epsg, _), items = agreeing(scenes, skipped)
        other = group[group["epsg"] != epsg]
        if len(other):
            why = f"{len(other)} cells in EPSG:{int(other['epsg'].iloc[0])}, the tile's is {epsg}"
            skipped.append(Skipped(f"tile {tile}", why))
        grids = merge_grids([Grid(epsg, float(c.left), float(c.top), cfg.chip_size, cfg.chip_size)
                             for c in group[group["epsg"] == epsg].itertuples()])  # fmt: skip
        dems = covering_items(catalog, dem.COLLECTION, dem.ASSET, area)
        lcs = covering_items(
            catalog, worldcover.COLLECTION, worldcover.ASSET, area,
            lambda i: worldcover.item_version(i) == cfg.worldcover_version,
        )  # fmt: skip
        for grid in grids:
            cell = grid.footprint()
            seen = [i for i in items if shape(i["geometry"]).intersects(cell)]
            chosen = pick_scenes(seen, cfg.scenes_per_tile, cfg.spread_seasons, cell)
            if not chosen:
                name = f"cell {epsg}_{int(grid.left)}_{int(grid.top)}_{grid.width}"
                skipped.append(Skipped(name, f"no scene of tile {tile} covers it"))
                continue
            dem_here = [(i, href) for i, href, g in dems if g.intersects(cell)]
            lc_here = [(i, href) for i, href, g in lcs if g.intersects(cell)]
            units += units_on(grid, grid, str(tile), chosen, dem_here, lc_here, cfg, cell)
    if not units:
        raise NothingMatched(f"no scene of {sentinel2.COLLECTION} at {catalog.url} for any of "
                             f"the {len(cells)} cells in {cfg.datetime}")  # fmt: skip
    return Plan(units, sorted(skipped, key=lambda s: s.item_id))


def _search_area(group: gpd.GeoDataFrame) -> BaseGeometry:
    """One box around a tile's cells, searched once (not once per cell).

    The cells' own footprints where the box would cross 180°.
    """
    west, south, east, north = group.total_bounds
    if east - west > 180:  # cells on both sides of the antimeridian
        return unary_union(list(group.geometry))
    return box(west, south, east, north)
