"""Rendering Sentinel-2 L2A scenes of the sample world.

Reflectance is rendered at 10 m from the landscape and integrated (block mean) to 20 m
and 60 m, as the sensor's coarser bands see the same ground. Clouds are smooth fields
with soft edges; their shadows are the cloud mask shifted away from the sun. The scene
classification (SCL) marks exactly what was rendered, so cloud cover computed from it is
the truth. Products of baseline 04.00 and later carry the +1000 DN offset, and as in
real ones, dark surfaces (water in the SWIR, more so in cloud shadow) come out at or
below it: noise and atmospheric correction put their reflectance at or under zero, stored
as DN 1..1000; 0 is reserved for nodata.

A scene at a swath edge has nodata beyond a tilted line (`swath_edge`), and its STAC
geometry is the part of the tile with data (`data_footprint`), as Planetary Computer's
are. A sliver is the extreme: the next orbit's swath just touching a tile corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyproj import Transformer
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, box

from infra.world.landscape import VEGETATION, Landscape, reflectance, smooth_noise
from infra.world.layout import Acquisition, TileGrid, day_of_year
from ingest.sources import sentinel2
from ingest.sources.sentinel2 import SceneClass

# Top-of-cloud reflectance x 10^4 per band: bright and flat, darker in the SWIR.
CLOUD_SPECTRUM = np.array(
    [7600, 7700, 7600, 7500, 7400, 7300, 7200, 7100, 7000, 5600, 4500, 3000], dtype=np.float32
)
# Calibration targets: bright, spectrally distinct, invariant between dates.
MARKER_SPECTRUM = np.array(
    [3000, 3500, 4000, 4500, 4800, 5000, 5200, 5400, 5500, 5300, 6000, 5000], dtype=np.float32
)
MARKER_SIZE_M = 120.0
MARKER_CLEAR_RADIUS_PX = 30  # clouds and shadows are kept 300 m away from markers
SHADOW_SHIFT_PX = (-52, -30)  # 600 m towards the north-west: the sun is in the south-east
SHADOW_DARKENING = 0.35
NOISE_RELATIVE = 0.03
NOISE_ABSOLUTE = 25.0
# Swath edge of a sliver: data only in a corner triangle of ~0.4 % of the tile.
SLIVER_CUT = 0.05
# The swath edge: nodata where EDGE_U * u + EDGE_V * v > cut (u, v in [0, 1] east, south).
EDGE_U, EDGE_V = 0.94, 0.34


@dataclass(frozen=True)
class Marker:
    """A square calibration target centred at lon/lat."""

    lon: float
    lat: float
    size_m: float = MARKER_SIZE_M


@dataclass(frozen=True)
class TileSurface:
    """The date-independent ground under one tile."""

    landcover: np.ndarray  # [H, W] WorldCover codes at 10 m pixel centres
    shading: np.ndarray  # [H, W]
    landcover_20m: np.ndarray  # [H/2, W/2], sampled at 20 m centres for the SCL
    shading_20m: np.ndarray  # [H/2, W/2]
    markers: np.ndarray  # [H, W] bool
    variety: np.ndarray  # [H, W] float32, see landscape.VARIANTS
    parcel: np.ndarray  # [H, W] int32 crop parcel id


@dataclass(frozen=True)
class Scene:
    """One rendered product: uint16 DNs per band at native resolution, SCL at 20 m."""

    bands: dict[str, np.ndarray]
    scl: np.ndarray
    cloud_cover: float  # percent of non-nodata SCL pixels that are cloud or cirrus
    nodata_percentage: float
    shadow_percentage: float
    dark_pixels: int  # band pixels with data stored at or below the offset (DN 1..1000)


def pixel_centres_lonlat(tile: TileGrid, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of every pixel centre of the tile grid at `resolution` metres."""
    h, w = tile.shape(resolution)
    x = tile.left + (np.arange(w) + 0.5) * resolution
    y = tile.top - (np.arange(h) + 0.5) * resolution
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(xx, yy)
    return lon, lat


def marker_mask(tile: TileGrid, markers: list[Marker]) -> np.ndarray:
    """10 m pixels whose centres fall inside a marker square (in this tile's CRS)."""
    h, w = tile.shape(10)
    x = tile.left + (np.arange(w) + 0.5) * 10
    y = tile.top - (np.arange(h) + 0.5) * 10
    to_utm = Transformer.from_crs(4326, tile.epsg, always_xy=True)
    mask = np.zeros((h, w), dtype=bool)
    for m in markers:
        cx, cy = to_utm.transform(m.lon, m.lat)
        half = m.size_m / 2
        mask |= (np.abs(y[:, None] - cy) < half) & (np.abs(x[None, :] - cx) < half)
    return mask


def tile_surface(tile: TileGrid, landscape: Landscape, markers: list[Marker]) -> TileSurface:
    """Sample the landscape onto the tile's 10 m and 20 m grids."""
    lonlat = pixel_centres_lonlat(tile, 10)
    lc, _, shade = landscape.sample(*lonlat)
    lc20, _, shade20 = landscape.sample(*pixel_centres_lonlat(tile, 20))
    return TileSurface(lc, shade, lc20, shade20, marker_mask(tile, markers),
                       *landscape.sample_variety(*lonlat))  # fmt: skip


def block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """Integrate [..., H, W] over factor x factor blocks."""
    if factor == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def swath_edge(shape: tuple[int, int], cut: float) -> np.ndarray:
    """Nodata beyond a tilted orbit-swath edge; `cut` in (0, 1.28) sets how much is kept.

    A pixel has data when its centre lies west of the edge; a small `cut` (SLIVER_CUT)
    leaves only a triangle at the north-west corner.
    """
    h, w = shape
    v, u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    return EDGE_U * u + EDGE_V * v > cut


def data_footprint(tile: TileGrid, cut: float | None) -> Polygon:
    """The part of the tile with data, in its UTM CRS: the tile west of the swath edge."""
    outline = box(*tile.bounds)
    if cut is None:
        return outline
    # The half-plane EDGE_U * u + EDGE_V * v <= cut in tile units (u east, v south) ...
    far = 10.0
    edge = [((cut - EDGE_V * v) / EDGE_U, v) for v in (-far, far)]
    half_plane = Polygon([*edge, (-far, far), (-far, -far)])
    # ... in metres: x = left + u * extent, y = top - v * extent.
    extent = tile.size * 10.0
    half_plane = affinity.affine_transform(half_plane, [extent, 0, 0, -extent, tile.left, tile.top])
    kept = outline.intersection(half_plane)
    assert isinstance(kept, Polygon) and not kept.is_empty, f"swath cut {cut} leaves no data"
    return kept


def clouds(
    surface: TileSurface,
    target: float,
    rng: np.random.Generator,
    within: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity [H, W] in [0, 1] and the shadow mask.

    Clouds cover ~`target` of the pixels in `within` [H, W] bool (default: the tile): the
    part of a swath-cut scene with data, so cloud cover means the same on every scene.
    """
    field = smooth_noise(surface.landcover.shape, 40, rng)
    if target <= 0:
        alpha = np.zeros_like(field)
    else:
        threshold = np.quantile(field if within is None else field[within], 1.0 - target)
        alpha = np.clip((field - threshold) / 0.6, 0.0, 1.0)
    keep_clear = ndimage.binary_dilation(surface.markers, iterations=MARKER_CLEAR_RADIUS_PX)
    alpha[keep_clear] = 0.0
    thick = alpha > 0.25
    shadow = ndimage.shift(thick.astype(np.uint8), SHADOW_SHIFT_PX, order=0, cval=0) > 0
    shadow &= (alpha <= 0.05) & ~keep_clear
    return alpha.astype(np.float32), shadow


def scene_classes(
    surface: TileSurface, alpha: np.ndarray, shadow: np.ndarray, nodata: np.ndarray
) -> np.ndarray:
    """SCL at 20 m for what was rendered; later rules win, as in Sen2Cor's precedence."""
    lc = surface.landcover_20m
    scl = np.full(lc.shape, SceneClass.NOT_VEGETATED, dtype=np.uint8)
    scl[np.isin(lc, list(VEGETATION))] = SceneClass.VEGETATION
    scl[lc == 80] = SceneClass.WATER
    scl[lc == 70] = SceneClass.SNOW
    scl[(surface.shading_20m < 0.4) & (lc != 80)] = SceneClass.DARK_AREA
    scl[block_mean(shadow.astype(np.float32), 2) > 0.5] = SceneClass.CLOUD_SHADOW
    alpha20 = block_mean(alpha, 2)
    scl[alpha20 > 0.05] = SceneClass.THIN_CIRRUS
    scl[alpha20 > 0.25] = SceneClass.CLOUD_MEDIUM_PROBABILITY
    scl[alpha20 > 0.6] = SceneClass.CLOUD_HIGH_PROBABILITY
    scl[nodata] = SceneClass.NO_DATA
    return scl


def render_scene(
    tile: TileGrid,
    surface: TileSurface,
    acquisition: Acquisition,
    rng: np.random.Generator,
    cloud_target: float,
    swath_cut: float | None,
    bare_parcels: np.ndarray,
) -> Scene:
    """Render all bands and the SCL of one acquisition of one tile.

    `bare_parcels`: per crop parcel id, whether it lies bare on this date. DNs with data
    are never 0 (nodata); with the offset of baseline 04.00 dark pixels go down to 1.
    """
    refl = reflectance(surface.landcover, surface.shading, day_of_year(acquisition.when),
                       surface.variety, bare_parcels[surface.parcel])  # fmt: skip
    noise = rng.standard_normal(refl.shape, dtype=np.float32)
    refl = refl * (1 + NOISE_RELATIVE * noise) + NOISE_ABSOLUTE * rng.standard_normal(
        refl.shape, dtype=np.float32
    )
    refl[:, surface.markers] = MARKER_SPECTRUM[:, None]
    cut10 = None if swath_cut is None else swath_edge(surface.landcover.shape, swath_cut)
    alpha, shadow = clouds(surface, cloud_target, rng, None if cut10 is None else ~cut10)
    refl = np.where(shadow[None], refl * SHADOW_DARKENING, refl)
    refl = (1 - alpha[None]) * refl + alpha[None] * CLOUD_SPECTRUM[:, None, None]

    offset = sentinel2.BOA_ADD_OFFSET if acquisition.has_offset else 0
    bands = {}
    dark = 0
    for i, band in enumerate(sentinel2.BANDS):
        native = block_mean(refl[i], band.resolution_m // 10)
        dn = np.clip(np.rint(native) + offset, 1, 65535)
        if swath_cut is not None:
            dn[swath_edge(native.shape, swath_cut)] = sentinel2.NODATA
        if offset:
            dark += int(((dn != sentinel2.NODATA) & (dn <= offset)).sum())
        bands[band.name] = dn.astype(np.uint16)

    scl_shape = tile.shape(sentinel2.SCL_RESOLUTION_M)
    nodata20 = (
        swath_edge(scl_shape, swath_cut) if swath_cut is not None else np.zeros(scl_shape, bool)
    )
    scl = scene_classes(surface, alpha, shadow, nodata20)
    observed = scl != SceneClass.NO_DATA
    n_obs = max(int(observed.sum()), 1)
    cloudy = np.isin(scl, [int(c) for c in sentinel2.CLOUD_CLASSES])
    return Scene(
        bands=bands,
        scl=scl,
        cloud_cover=round(100.0 * float(cloudy.sum()) / n_obs, 4),
        nodata_percentage=round(100.0 * float((~observed).sum()) / scl.size, 4),
        shadow_percentage=round(100.0 * float((scl == SceneClass.CLOUD_SHADOW).sum()) / n_obs, 4),
        dark_pixels=dark,
    )
