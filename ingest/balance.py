"""Land-cover balance of a corpus's locations: a coarse read of WorldCover, an even draw.

Uniform sampling gives a corpus the land cover of its AOIs: mostly tree cover, grassland
and cropland, little built-up, bare or wetland. To balance it, `eomae sample
--balance-landcover` draws `oversample` times the locations wanted, reads the WorldCover
class at each from a coarse overview of the map (a few reads per 3° tile, not the 10 m
pixels), and keeps `count` of them taking the classes in turn: each class as often as the
others until its candidates run out. A candidate no WorldCover item covers is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial

import numpy as np
import rasterio
from shapely import box, contains_xy

from ingest.catalog import Searchable
from ingest.plan import covering_items
from ingest.raster import read_signed
from ingest.sources import worldcover

log = logging.getLogger(__name__)
OVERVIEW_LEVEL = 3  # 8 x 8 map pixels per read pixel (~80 m): classes of regions, cheaply


def landcover_at(
    lon: np.ndarray,
    lat: np.ndarray,
    catalog: Searchable,
    version: worldcover.Version,
    overview_level: int = OVERVIEW_LEVEL,
) -> np.ndarray:
    """The WorldCover class (code) at each point, read from an overview; NODATA where none."""
    codes = np.full(len(lon), worldcover.NODATA, np.uint8)
    if not len(lon):
        return codes
    area = box(float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))
    items = covering_items(
        catalog, worldcover.COLLECTION, worldcover.ASSET, area.buffer(1e-6),
        lambda i: worldcover.item_version(i) == version,
    )  # fmt: skip
    for _, href, geometry in items:
        todo = np.flatnonzero((codes == worldcover.NODATA) & contains_xy(geometry, lon, lat))
        if todo.size:
            codes[todo] = read_signed(href, partial(_sample, lon=lon[todo], lat=lat[todo],
                                                    overview_level=overview_level))  # fmt: skip
    return codes


def _sample(href: str, lon: np.ndarray, lat: np.ndarray, overview_level: int) -> np.ndarray:
    """Band 1 at the points, from overview `overview_level` (or the coarsest there is)."""
    with rasterio.open(href) as src:
        levels = len(src.overviews(1))
    options = {"overview_level": min(overview_level, levels - 1)} if levels else {}
    with rasterio.open(href, **options) as src:
        values = np.fromiter((v[0] for v in src.sample(zip(lon, lat, strict=True))), np.uint8)
    return values


def balanced(classes: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` candidates taking the classes in turn (NODATA never), seeded.

    Within a class the candidates are taken in a random order; a class whose candidates
    are used up drops out. Fewer than `count` when the candidates run out.
    """
    rng = np.random.default_rng(seed)
    queues = {
        int(c): list(rng.permutation(np.flatnonzero(classes == c)))
        for c in np.unique(classes)
        if c != worldcover.NODATA
    }
    chosen: list[int] = []
    while len(chosen) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop()))
    shares = Counter(int(classes[i]) for i in chosen)
    log.info("land-cover balance: %s", dict(sorted(shares.items())))
    return np.sort(np.asarray(chosen, dtype=np.int64))
