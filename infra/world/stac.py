"""STAC collections and items shaped like Planetary Computer's, for the sample world.

Built as plain dicts, field for field what PC serves for `sentinel-2-l2a`,
`cop-dem-glo-30` and `esa-worldcover` (ids, asset keys, `proj:*` per asset, `eo:bands`,
`raster:bands` with scale/offset, `s2:*` properties), then checked by pystac.

Geometries follow RFC 7946 as PC's do: a Sentinel-2 item's geometry is its data
footprint, and one that crosses the antimeridian is a MultiPolygon split at ±180° with a
bbox whose west is greater than its east (`stac_geometry`). DEM cells and WorldCover
tiles end at 180°, so theirs never cross it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry

from infra.world.layout import Acquisition, TileGrid, processing_time
from ingest.grid import wrap_lon
from ingest.sources import dem, sentinel2, worldcover

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v1.0.0/schema.json",
}
LICENSE = "proprietary"  # PC's value for these collections; here: synthetic, CC0 in spirit


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _proj(epsg: int, transform: Affine, shape: tuple[int, int]) -> dict[str, Any]:
    return {
        "proj:epsg": epsg,
        "proj:transform": list(transform)[:6],
        "proj:shape": list(shape),
    }


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    return [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]


def stac_geometry(poly: Polygon) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON geometry and bbox of a lon/lat polygon given in unwrapped longitudes.

    Shifted into [-180, 180); a polygon that then crosses 180° is cut there into a
    MultiPolygon whose eastern part is shifted by -360°, and its bbox has west > east.
    """
    shift = float(wrap_lon(poly.bounds[0])) - poly.bounds[0]
    poly = shapely.transform(poly, lambda xy: xy + [shift, 0.0])
    w, s, e, n = poly.bounds
    if e <= 180.0:
        return mapping(poly), [round(v, 7) for v in (w, s, e, n)]
    west = _polygons(poly.intersection(box(w - 1, -90, 180, 90)))
    east = _polygons(poly.intersection(box(180, -90, e + 1, 90)))
    east = [shapely.transform(g, lambda xy: xy - [360.0, 0.0]) for g in east]
    multi = MultiPolygon(west + east)
    bbox = [min(g.bounds[0] for g in west), s, max(g.bounds[2] for g in east), n]
    return mapping(multi), [round(v, 7) for v in bbox]


def sentinel2_item_id(tile: TileGrid, acq: Acquisition, platform: str, orbit: int) -> str:
    """PC's id: mission, product, sensing time, relative orbit, tile, processing time."""
    sensed = acq.when.strftime("%Y%m%dT%H%M%S")
    processed = processing_time(acq.when).strftime("%Y%m%dT%H%M%S")
    return f"{platform}_MSIL2A_{sensed}_R{orbit:03d}_T{tile.mgrs}_{processed}"


def sentinel2_item(
    tile: TileGrid,
    acq: Acquisition,
    *,
    platform: str,
    orbit: int,
    hrefs: dict[str, str],
    stats: dict[str, float],
    footprint: Polygon,
) -> dict[str, Any]:
    """The item of one scene; `hrefs` maps asset key (band names and SCL) to a file path.

    `footprint`: where the scene has data, in lon/lat (unwrapped longitudes).
    """
    geometry, bbox = stac_geometry(footprint)
    offset = -sentinel2.BOA_ADD_OFFSET * sentinel2.REFLECTANCE_SCALE if acq.has_offset else 0.0
    assets: dict[str, Any] = {}
    for band in sentinel2.BANDS:
        res = band.resolution_m
        assets[band.name] = {
            "href": hrefs[band.name],
            "type": COG,
            "roles": ["data"],
            "title": f"Band {band.name[1:].lstrip('0')} - {band.common_name} - {res}m",
            "gsd": float(res),
            "eo:bands": [
                {
                    "name": band.name,
                    "common_name": band.common_name,
                    "center_wavelength": band.center_wavelength,
                    "full_width_half_max": band.full_width_half_max,
                }
            ],
            "raster:bands": [
                {
                    "nodata": sentinel2.NODATA,
                    "data_type": "uint16",
                    "spatial_resolution": float(res),
                    "scale": sentinel2.REFLECTANCE_SCALE,
                    "offset": offset,
                }
            ],
            **_proj(tile.epsg, tile.transform(res), tile.shape(res)),
        }
    res = sentinel2.SCL_RESOLUTION_M
    assets[sentinel2.SCL_ASSET] = {
        "href": hrefs[sentinel2.SCL_ASSET],
        "type": COG,
        "roles": ["data"],
        "title": "Scene classfication map (SCL)",
        "gsd": float(res),
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": float(res)}],
        **_proj(tile.epsg, tile.transform(res), tile.shape(res)),
    }
    properties = {
        "datetime": _iso(acq.when),
        "platform": "Sentinel-2A" if platform == "S2A" else "Sentinel-2B",
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        "eo:cloud_cover": stats["cloud_cover"],
        "proj:epsg": tile.epsg,
        "sat:orbit_state": "descending",
        "sat:relative_orbit": orbit,
        "s2:mgrs_tile": tile.mgrs,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": acq.baseline,
        "s2:nodata_pixel_percentage": stats["nodata_percentage"],
        "s2:cloud_shadow_percentage": stats["shadow_percentage"],
        "s2:datatake_type": "INS-NOBS",
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [EXT["eo"], EXT["proj"], EXT["raster"], EXT["sat"]],
        "id": sentinel2_item_id(tile, acq, platform, orbit),
        "collection": sentinel2.COLLECTION,
        "geometry": geometry,
        "bbox": bbox,
        "properties": properties,
        "links": [],
        "assets": assets,
    }


def _aux_item(
    collection: str,
    item_id: str,
    asset_key: str,
    href: str,
    transform: Affine,
    shape: tuple[int, int],
    properties: dict[str, Any],
    asset_extra: dict[str, Any],
) -> dict[str, Any]:
    h, w = shape
    west, north = transform.c, transform.f
    east, south = west + w * transform.a, north + h * transform.e
    geometry, bbox = stac_geometry(box(west, south, east, north))
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [EXT["proj"], EXT["raster"], EXT["classification"]],
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {**properties, **_proj(4326, transform, shape)},
        "links": [],
        "assets": {
            asset_key: {
                "href": href,
                "type": COG,
                "roles": ["data"],
                **asset_extra,
                **_proj(4326, transform, shape),
            }
        },
    }


def dem_item_id(lon: float, lat: float) -> str:
    """PC's DEM id of the cell whose south-west corner is lon/lat (whole degrees)."""
    lat_d, lat_f = divmod(round(abs(lat) * 100), 100)
    lon_d, lon_f = divmod(round(abs(lon) * 100), 100)
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    return f"Copernicus_DSM_COG_10_{ns}{lat_d:02d}_{lat_f:02d}_{ew}{lon_d:03d}_{lon_f:02d}_DEM"


def dem_item(lon: float, lat: float, href: str, transform: Affine, shape: tuple[int, int]) -> dict:
    """A Copernicus DEM GLO-30 item for the 1° cell whose south-west corner is lon/lat."""
    return _aux_item(
        dem.COLLECTION,
        dem_item_id(lon, lat),
        dem.ASSET,
        href,
        transform,
        shape,
        {"datetime": "2021-04-22T00:00:00Z", "platform": "TanDEM-X", "gsd": 30},
        {"title": "data", "raster:bands": [{"data_type": dem.DTYPE, "unit": "metre"}]},
    )


# The two maps in PC's `esa-worldcover`: version tag -> (year, esa_worldcover:product_version).
WORLDCOVER_MAPS: dict[str, tuple[int, str]] = {"v100": (2020, "1.0.0"), "v200": (2021, "2.0.0")}


def worldcover_item_id(lon: float, lat: float, version: str = "v200") -> str:
    """PC's WorldCover id (year, version tag), fractional degrees for the scaled-down tiling.

    E.g. ESA_WorldCover_10m_2021_v200_N47.30E011.95.
    """
    year = WORLDCOVER_MAPS[version][0]
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    return f"ESA_WorldCover_10m_{year}_{version}_{ns}{abs(lat):05.2f}{ew}{abs(lon):06.2f}"


def worldcover_item(
    lon: float,
    lat: float,
    href: str,
    transform: Affine,
    shape: tuple[int, int],
    version: str = "v200",
) -> dict:
    """An ESA WorldCover item of the 2020 (v100) or 2021 (v200) map, asset `map`."""
    year, product = WORLDCOVER_MAPS[version]
    classes = [
        {"value": c.code, "description": c.name, "color_hint": c.color.lstrip("#").upper()}
        for c in worldcover.CLASSES
    ]
    return _aux_item(
        worldcover.COLLECTION,
        worldcover_item_id(lon, lat, version),
        worldcover.ASSET,
        href,
        transform,
        shape,
        {
            "datetime": None,
            "start_datetime": f"{year}-01-01T00:00:00Z",
            "end_datetime": f"{year}-12-31T23:59:59Z",
            "esa_worldcover:product_version": product,
            "mission": "sentinel-1, sentinel-2",
        },
        {
            "title": "Land Cover Classes",
            "raster:bands": [{"nodata": worldcover.NODATA, "data_type": "uint8"}],
            "classification:classes": classes,
        },
    )


def collection(collection_id: str, bbox: list[float], start: str, end: str) -> dict[str, Any]:
    """A collection with PC's id; extents from the world."""
    titles = {
        sentinel2.COLLECTION: "Sentinel-2 Level-2A (sample world)",
        dem.COLLECTION: "Copernicus DEM GLO-30 (sample world)",
        worldcover.COLLECTION: "ESA WorldCover (sample world)",
    }
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": collection_id,
        "title": titles[collection_id],
        "description": f"{titles[collection_id]}: synthetic data generated by `eomae world`, "
        "shaped like the Planetary Computer collection of the same id.",
        "license": LICENSE,
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[start, end]]},
        },
        "links": [],
    }


def local_items(world: Path) -> list[dict[str, Any]]:
    """A written world's items with absolute file paths as hrefs: a catalog with no server.

    Written as a snapshot (`ingest.snapshot.write_snapshot`), they plan and ingest as the
    served world does.
    """
    items = []
    for path in sorted((Path(world) / "stac").glob("*/*/*.json")):
        item = json.loads(path.read_text())
        for asset in item["assets"].values():
            asset["href"] = str((path.parent / asset["href"]).resolve())
        items.append(item)
    return items
