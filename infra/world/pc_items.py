"""STAC items shaped as Planetary Computer serves them, and a catalog that holds them.

Builders for `sentinel-2-l2a`, `cop-dem-glo-30` and `esa-worldcover` item dicts with
PC's ids, asset keys, `proj:*` per asset, blob hrefs and the properties the planner reads
(fractional-second datetimes, `sat:relative_orbit`, `s2:processing_baseline`,
`s2:nodata_pixel_percentage`, `esa_worldcover:product_version`). Geometries are what PC
publishes: a Sentinel-2 item's geometry is its data footprint (a sliver at a swath edge
is a sliver), split at ±180° where it crosses the antimeridian; a DEM item is its 1° cell
(pixel centres on whole degrees, so edges half a pixel off them, with longitude spacing
widened above 50° latitude); a WorldCover item is its 3° tile.

`StaticCatalog` answers searches over such items with the STAC API's semantics (bbox
intersection, closed datetime intervals compared as instants, `eo:cloud_cover` lte), as a
stand-in for Planetary Computer, which no test here can reach.

Tests build their cases from these; `pc_world` builds a catalog of hundreds of real tiles
for benchmarks of the planner.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import pystac
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from ingest.grid import lonlat_footprint, parts
from ingest.sources import dem, sentinel2, worldcover

TILE_PX = 10980  # a real Sentinel-2 tile: 109.8 km at 10 m
BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2"


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def s2_item(
    tile: str,
    epsg: int,
    left: float,
    top: float,
    when: str,
    *,
    orbit: int,
    platform: str = "S2A",
    baseline: str = "05.09",
    cloud: float = 5.0,
    nodata: float = 0.0,
    data: tuple[float, float] = (0.0, 1.0),
    geometry: str = "data",
) -> dict[str, Any]:
    """A Sentinel-2 L2A item of tile `tile` ((left, top) its UTM origin) sensed at `when`.

    `data` is the span (fractions of the tile's width, west to east) that has data; its
    footprint is the geometry (PC) unless `geometry="tile"` (a catalog that publishes
    whole tiles).
    """
    size = TILE_PX * 10.0
    x0, x1 = left + data[0] * size, left + data[1] * size
    tile_bounds = (left, top - size, left + size, top)
    footprint = lonlat_footprint(
        epsg, (x0, top - size, x1, top) if geometry == "data" else tile_bounds
    )
    sensed = when[:19].replace("-", "").replace(":", "")
    item_id = f"{platform}_MSIL2A_{sensed}_R{orbit:03d}_T{tile}_{sensed[:8]}T180331"
    safe = item_id.replace("_R", f"_N{baseline.replace('.', '')}_R", 1)  # ESA's product name
    folder = f"{BLOB}/{tile[:2]}/{tile[2]}/{tile[3:]}/{when[:10].replace('-', '/')}/{safe}.SAFE"
    assets = {}
    for key, res in [(b.name, b.resolution_m) for b in sentinel2.BANDS] + [("SCL", 20)]:
        n = TILE_PX * 10 // res
        assets[key] = {
            "href": f"{folder}/IMG_DATA/R{res}m/T{tile}_{sensed}_{key}_{res}m.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "proj:shape": [n, n],
            "proj:transform": [res, 0.0, left, 0.0, -res, top],
            "proj:bbox": list(tile_bounds),
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": sentinel2.COLLECTION,
        "geometry": mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": when,
            "platform": f"Sentinel-2{platform[-1]}",
            "constellation": "Sentinel 2",
            "instruments": ["msi"],
            "proj:epsg": epsg,
            "eo:cloud_cover": cloud,
            "s2:mgrs_tile": tile,
            "s2:product_type": "S2MSI2A",
            "s2:processing_baseline": baseline,
            "s2:nodata_pixel_percentage": nodata,
            "sat:orbit_state": "descending",
            "sat:relative_orbit": orbit,
        },
        "links": [],
        "assets": assets,
    }


def dem_spacing(lat: int) -> float:
    """Copernicus DEM longitude spacing (degrees) of the cell whose south edge is `lat`."""
    band = max(abs(lat), abs(lat + 1))
    arcsec = 1 if band <= 50 else 1.5 if band <= 60 else 2 if band <= 70 else 3 if band <= 80 \
        else 5 if band <= 85 else 10  # fmt: skip
    return arcsec / 3600


def dem_item(lon: int, lat: int) -> dict[str, Any]:
    """The Copernicus DEM GLO-30 cell whose south-west corner is (lon, lat)."""
    dx, dy = dem_spacing(lat), 1 / 3600
    west, north = lon - dx / 2, lat + 1 + dy / 2  # pixel centres on whole degrees
    cell = box(west, north - 1, west + 1, north)
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    item_id = f"Copernicus_DSM_COG_10_{ns}{abs(lat):02d}_00_{ew}{abs(lon):03d}_00_DEM"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": dem.COLLECTION,
        "geometry": mapping(cell),
        "bbox": list(cell.bounds),
        "properties": {
            "datetime": "2021-04-22T00:00:00Z",
            "platform": "TanDEM-X",
            "proj:epsg": 4326,
            "proj:shape": [3600, round(1 / dx)],
        },  # fmt: skip
        "links": [],
        "assets": {
            dem.ASSET: {
                "href": f"https://elevationeuwest.blob.core.windows.net/copernicus-dem/COP30_hh/{item_id}.tif",
                "proj:transform": [dx, 0.0, west, 0.0, -dy, north],
            }
        },
    }


def worldcover_item(lon: int, lat: int, version: str) -> dict[str, Any]:
    """An ESA WorldCover 3° tile (south-west corner lon, lat) of map v100 (2020) or v200 (2021)."""
    year, product = {"v100": (2020, "1.0.0"), "v200": (2021, "2.0.0")}[version]
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    item_id = f"ESA_WorldCover_10m_{year}_{version}_{ns}{abs(lat):02d}{ew}{abs(lon):03d}"
    cell = box(lon, lat, lon + 3, lat + 3)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": worldcover.COLLECTION,
        "geometry": mapping(cell),
        "bbox": list(cell.bounds),
        "properties": {
            "datetime": None,
            "start_datetime": f"{year}-01-01T00:00:00Z",
            "end_datetime": f"{year}-12-31T23:59:59Z",
            "esa_worldcover:product_version": product,
        },
        "links": [],
        "assets": {
            worldcover.ASSET: {
                "href": f"https://esaworldcover.blob.core.windows.net/esa-worldcover/{version}/{year}/map/{item_id}_Map.tif",
            }
        },
    }


def cells(geometry: BaseGeometry, size: int) -> list[tuple[int, int]]:
    """South-west corners of the size° cells (on whole multiples of size) a geometry meets."""
    out = set()
    for part in parts(geometry):
        w, s, e, n = part.bounds
        for lon in range(int(w // size) * size, int(e // size) * size + 1, size):
            for lat in range(int(s // size) * size, int(n // size) * size + 1, size):
                if part.intersects(box(lon, lat, lon + size, lat + size)) and lon < 180:
                    out.add((lon, lat))
    return sorted(out)


class StaticCatalog:
    """The `ingest.catalog.Catalog` interface over a list of item dicts."""

    url = "https://planetarycomputer.microsoft.com/api/stac/v1"

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.searches: Counter[str] = Counter()
        self.boxes: list[tuple[str, list[float]]] = []

    def search(
        self,
        collection: str,
        *,
        bbox: Any = None,
        datetime: str | None = None,
        max_cloud_cover: float | None = None,
        sortby: str | None = None,
        limit: int = 100,
    ) -> list[pystac.Item]:
        """Items of `collection` matching the filters, as a STAC API answers."""
        self.searches[collection] += 1
        self.boxes.append((collection, list(bbox) if bbox is not None else []))
        found = []
        for item in self.items:
            props = item["properties"]
            if item["collection"] != collection:
                continue
            if bbox is not None and not shape(item["geometry"]).intersects(box(*bbox)):
                continue
            if datetime is not None:
                start, end = (_when(t) for t in datetime.split("/"))
                first = _when(props["datetime"] or props["start_datetime"])
                last = _when(props["datetime"] or props["end_datetime"])
                if last < start or first > end:
                    continue
            cloud = props.get("eo:cloud_cover")  # as ingest.catalog asks: <= limit or null
            if max_cloud_cover is not None and cloud is not None and cloud > max_cloud_cover:
                continue
            found.append(item)
        if sortby:

            def value(item: dict[str, Any]) -> float:
                v = item["properties"].get(sortby)
                return v if isinstance(v, int | float) else float("inf")  # nulls last

            found.sort(key=lambda i: (value(i), i["id"]))
        return [pystac.Item.from_dict(i, migrate=False) for i in found]
