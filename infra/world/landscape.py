"""The ground truth of the sample world: terrain, land cover and how each surface reflects.

Everything is generated once on a geographic master grid (EPSG:4326 at WorldCover's
1/12000°) from smooth random fields, so every product rendered from it (Sentinel-2 in
two UTM zones, the DEM, WorldCover) shows the same ground. The master grid is in
unwrapped longitudes (see `infra.world.layout`): across the antimeridian it runs on
past 180°, and `Landscape.sample` unwraps the longitudes it is given to match.

The structure is what a model can learn: elevation decides the broad land-cover zones
(valleys of crops, towns and lakes, forested slopes, alpine meadows, bare rock and snow
on top), moisture and cultivation fields decide between neighbours, and each class has
its own spectrum, modulated by season and terrain illumination.

A class is not one colour, as on real ground: each pixel mixes two end-members of its
class (broadleaf and conifer forest, lush and dry grass, clear and turbid water, ...) by a
smooth `variety` field, and every crop parcel is green or bare soil depending on the
date. So a chip's mean spectrum does not give its land cover away: conifers look much
like wetland, dry grass like bare fields, and telling them apart takes texture, context
and elevation, what pretraining has to learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage

from ingest.sources import worldcover

MASTER_RES_DEG = worldcover.RESOLUTION_DEG
SUN_AZIMUTH_DEG = 150.0  # a 10:20 overpass in the Alps: sun in the south-east
SUN_ELEVATION_DEG = 40.0

# Surface reflectance x 10^4 per class, in ingest.sources.sentinel2.BANDS order
# (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12); typical library spectra.
SIGNATURES: dict[int, tuple[int, ...]] = {
    10: (250, 300, 500, 300, 800, 2200, 2800, 3000, 3100, 3000, 1500, 700),  # tree cover
    20: (400, 450, 700, 700, 1200, 2000, 2400, 2600, 2700, 2600, 2400, 1500),  # shrubland
    30: (350, 400, 800, 600, 1300, 2800, 3300, 3500, 3600, 3400, 2300, 1300),  # grassland
    40: (400, 500, 850, 800, 1400, 2600, 3000, 3300, 3400, 3200, 2600, 1600),  # cropland
    50: (1200, 1300, 1400, 1500, 1600, 1700, 1800, 1900, 1950, 1900, 2200, 2000),  # built-up
    60: (1400, 1600, 1900, 2300, 2500, 2600, 2700, 2800, 2850, 2800, 3300, 2800),  # bare
    70: (8500, 8800, 8700, 8500, 8300, 8000, 7800, 7500, 7200, 6500, 800, 600),  # snow, ice
    80: (600, 550, 450, 250, 200, 150, 120, 100, 90, 70, 30, 20),  # water
    90: (400, 450, 650, 500, 1000, 1800, 2100, 2200, 2250, 2100, 1300, 700),  # wetland
    95: (250, 300, 550, 300, 900, 2400, 3000, 3200, 3300, 3100, 1400, 600),  # mangroves
    100: (800, 900, 1100, 1200, 1500, 1800, 2000, 2100, 2150, 2100, 2400, 1800),  # moss, lichen
}
# The other end-member of each class: what the same class looks like elsewhere.
VARIANTS: dict[int, tuple[int, ...]] = {
    10: (200, 250, 400, 250, 600, 1400, 1700, 1900, 2000, 1900, 1000, 450),  # conifers
    20: (350, 400, 650, 550, 1100, 2200, 2700, 2900, 3000, 2900, 2000, 1100),  # dense shrubs
    30: (600, 700, 1000, 1200, 1600, 2000, 2200, 2300, 2400, 2300, 2800, 2000),  # dry grass
    40: (900, 1000, 1300, 1600, 1900, 2100, 2200, 2300, 2400, 2300, 3000, 2500),  # bare field
    50: (600, 650, 700, 750, 800, 850, 900, 950, 1000, 950, 1100, 1000),  # asphalt, dark roofs
    60: (700, 800, 950, 1100, 1250, 1350, 1450, 1500, 1550, 1500, 1900, 1600),  # dark rock
    70: (6000, 6300, 6300, 6200, 6000, 5800, 5600, 5300, 5100, 4600, 600, 450),  # old snow
    80: (900, 1000, 1100, 900, 600, 300, 200, 150, 130, 100, 40, 25),  # turbid water
    90: (500, 500, 600, 450, 700, 1100, 1300, 1300, 1300, 1200, 600, 300),  # flooded marsh
    95: (200, 250, 450, 250, 700, 2000, 2500, 2700, 2800, 2600, 1100, 450),  # dense swamp
    100: (600, 700, 900, 900, 1300, 1900, 2200, 2400, 2450, 2300, 2000, 1400),  # lichen crust
}
# What a 2020 (v100) pixel that differs from the 2021 map shows instead: a class the
# two algorithms confuse.
CHANGES_2020: dict[int, int] = {10: 30, 20: 30, 30: 20, 40: 30, 50: 60, 60: 100, 70: 60,
                                80: 90, 90: 80, 95: 10, 100: 60}  # fmt: skip
CROPLAND = 40
PARCEL_PX = 32  # crop parcels of ~270 m on the master grid
VEGETATION = frozenset({10, 20, 30, 40, 90, 95})
# Bands whose reflectance follows the green-up of vegetation (red edge and NIR).
SEASONAL_BANDS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)


@dataclass(frozen=True)
class Landscape:
    """Master rasters on a north-up EPSG:4326 grid."""

    transform: Affine
    landcover: np.ndarray  # [H, W] uint8 WorldCover codes
    elevation: np.ndarray  # [H, W] float32 metres
    shading: np.ndarray  # [H, W] float32 illumination factor, 1 on flat ground
    variety: np.ndarray  # [H, W] float32 in [0, 1], weight of the VARIANTS end-member
    parcel: np.ndarray  # [H, W] int32 crop parcel id

    @property
    def center_lon(self) -> float:
        """Longitude of the master grid's centre (unwrapped)."""
        return float(self.transform.c + self.transform.a * self.landcover.shape[1] / 2)

    def _pixel_coords(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        # Any longitude (wrapped or not) to the master's own, continuous across 180°.
        lon = self.center_lon + (np.asarray(lon) - self.center_lon + 180.0) % 360.0 - 180.0
        col, row = ~self.transform @ (lon, lat)
        return np.stack([np.asarray(row) - 0.5, np.asarray(col) - 0.5])  # centre-based

    def sample(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Land cover (nearest), elevation and shading (bilinear) at lon/lat points."""
        coords = self._pixel_coords(lon, lat)
        lc = ndimage.map_coordinates(self.landcover, coords, order=0, mode="nearest")
        elev = ndimage.map_coordinates(self.elevation, coords, order=1, mode="nearest")
        shade = ndimage.map_coordinates(self.shading, coords, order=1, mode="nearest")
        return lc.astype(np.uint8), elev.astype(np.float32), shade.astype(np.float32)

    def sample_elevation(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Elevation (bilinear) at lon/lat points; beyond the master, its edge extends."""
        coords = self._pixel_coords(lon, lat)
        elev = ndimage.map_coordinates(self.elevation, coords, order=1, mode="nearest")
        return elev.astype(np.float32)

    def sample_variety(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Variety (bilinear) and crop parcel id (nearest) at lon/lat points."""
        coords = self._pixel_coords(lon, lat)
        variety = ndimage.map_coordinates(self.variety, coords, order=1, mode="nearest")
        parcel = ndimage.map_coordinates(self.parcel, coords, order=0, mode="nearest")
        return variety.astype(np.float32), parcel.astype(np.int32)

    @property
    def parcels(self) -> int:
        """How many crop parcel ids there are (ids are 0 .. parcels - 1)."""
        return int(self.parcel.max()) + 1


def smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise, standardised to zero mean and unit variance.

    Filtered on a grid coarser by ~sigma/8 and interpolated back: the same spectrum at a
    fraction of the cost of filtering the full grid with a wide kernel.
    """
    step = max(1, int(sigma // 8))
    coarse = (shape[0] // step + 3, shape[1] // step + 3)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma / step)
    rows = np.arange(shape[0], dtype=np.float32) / step + 1
    cols = np.arange(shape[1], dtype=np.float32) / step + 1
    field = ndimage.map_coordinates(field, np.meshgrid(rows, cols, indexing="ij"), order=3)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def build_landscape(
    region: tuple[float, float, float, float],
    rng: np.random.Generator,
    focus: tuple[float, float, float, float] | None = None,
) -> Landscape:
    """Generate terrain and land cover for `region` (west, south, east, north in degrees).

    Class proportions are set on the `focus` box (the Sentinel-2 tiles), so every class
    occurs where the imagery is, not only in the margins of the DEM/WorldCover tiling.
    """
    west, south, east, north = region
    width = round((east - west) / MASTER_RES_DEG)
    height = round((north - south) / MASTER_RES_DEG)
    transform = Affine(MASTER_RES_DEG, 0.0, west, 0.0, -MASTER_RES_DEG, north)
    shape = (height, width)

    # Terrain: broad massifs plus ridges; sigma in master pixels (~6-9 m each).
    z = 0.8 * smooth_noise(shape, 220, rng) + 0.35 * smooth_noise(shape, 60, rng)
    moisture = smooth_noise(shape, 70, rng)
    cultivation = smooth_noise(shape, 90, rng)
    urban = smooth_noise(shape, 35, rng)
    elevation = (1500.0 + 650.0 * z).astype(np.float32)
    window = (slice(None), slice(None))
    if focus is not None:
        c0, r0 = ~transform @ (focus[0], focus[3])
        c1, r1 = ~transform @ (focus[2], focus[1])
        window = (slice(int(r0), int(np.ceil(r1))), slice(int(c0), int(np.ceil(c1))))
    landcover = classify(elevation, moisture, cultivation, urban, elevation[window])
    elevation[landcover == 80] = elevation[landcover == 80].max()  # lakes are flat
    shading = hillshade(elevation, south + (north - south) / 2)
    variety = np.clip(0.5 + 0.3 * smooth_noise(shape, 25, rng), 0.0, 1.0)
    return Landscape(transform, landcover, elevation, shading, variety, parcels(shape, rng))


def worldcover_2020(landcover: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 2020 map (WorldCover v100) of the same ground: ~3 % of pixels in another class.

    The real v100 and v200 maps differ by their algorithms more than by change on the
    ground; here smooth patches (tens of metres) get a neighbouring class (CHANGES_2020),
    deterministic for a seed, so reading the wrong version is visible.
    """
    field = smooth_noise(landcover.shape, 24, rng)
    patches = field > np.quantile(field, 0.97)
    table = np.arange(256, dtype=np.uint8)
    for code, other in CHANGES_2020.items():
        table[code] = other
    out = landcover.copy()
    out[patches] = table[landcover[patches]]
    return out


def parcels(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Crop parcel ids: a PARCEL_PX grid whose boundaries wander, as field edges do."""
    rows, cols = np.indices(shape, dtype=np.float32)
    rows += 6 * smooth_noise(shape, 40, rng)
    cols += 6 * smooth_noise(shape, 40, rng)
    per_row = shape[1] // PARCEL_PX + 2
    r = np.clip(rows // PARCEL_PX + 1, 0, None)
    c = np.clip(cols // PARCEL_PX + 1, 0, per_row - 1)
    return (r * per_row + c).astype(np.int32)


def classify(
    elevation: np.ndarray,
    moisture: np.ndarray,
    cultivation: np.ndarray,
    urban: np.ndarray,
    reference: np.ndarray,
) -> np.ndarray:
    """Alpine zonation by elevation quantiles of `reference`, refined by moisture, fields, towns."""
    q = {p: np.percentile(reference, p) for p in (7, 30, 45, 75, 86, 94)}
    lc = np.full(elevation.shape, 30, dtype=np.uint8)  # grassland by default
    lc[(elevation < q[75]) & (moisture > -0.4)] = 10  # forested slopes
    lc[(elevation < q[45]) & (cultivation > 0.2)] = 40  # valley fields
    lc[(elevation >= q[75]) & (elevation < q[86]) & (moisture < -0.2)] = 20  # shrubs
    lc[elevation >= q[86]] = 60  # bare rock and scree
    lc[(elevation >= q[86]) & (moisture > 0.7)] = 100  # moss and lichen
    lc[elevation >= q[94]] = 70  # snow and ice
    lc[(elevation < q[30]) & (urban > 1.5)] = 50  # towns in the valleys
    water = elevation < q[7]
    near_water = ndimage.binary_dilation(water, iterations=25) & ~water
    lc[near_water & (moisture > 0.0)] = 90  # wetlands on lake shores
    lc[near_water & (moisture > 0.0) & (urban < -1.2)] = 95  # mangrove-like swamp forest
    lc[water] = 80
    return lc


def hillshade(elevation: np.ndarray, lat: float) -> np.ndarray:
    """Illumination relative to flat ground for the overpass sun position."""
    dy = MASTER_RES_DEG * 111_320.0
    dx = dy * math.cos(math.radians(lat))
    gy, gx = np.gradient(elevation.astype(np.float64), dy, dx)
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)  # direction the slope faces, clockwise from north
    zenith = math.radians(90.0 - SUN_ELEVATION_DEG)
    azimuth = math.radians(SUN_AZIMUTH_DEG)
    cos_i = np.cos(zenith) * np.cos(slope) + np.sin(zenith) * np.sin(slope) * np.cos(
        azimuth - aspect
    )
    return np.clip(cos_i / math.cos(zenith), 0.25, 1.6).astype(np.float32)


def season_factor(day_of_year: int) -> float:
    """Vegetation vigour through the year: low in early spring, peak in July."""
    return 0.8 + 0.2 * math.sin(2 * math.pi * (day_of_year - 110) / 365.0)


def _table(spectra: dict[int, tuple[int, ...]], season: float) -> np.ndarray:
    """(256, 12) spectrum per WorldCover code, vegetation scaled by the season."""
    table = np.zeros((256, 12), dtype=np.float32)
    for code, spectrum in spectra.items():
        table[code] = spectrum
    for code in VEGETATION:
        table[code, SEASONAL_BANDS] *= season
    return table


def bare_parcels(n: int, day_of_year: int, rng: np.random.Generator) -> np.ndarray:
    """Which of `n` crop parcels lie bare on a date: most in early spring, few in summer."""
    return rng.random(n) < 0.7 - 0.4 * (season_factor(day_of_year) - 0.6) / 0.4


def reflectance(
    landcover: np.ndarray,
    shading: np.ndarray,
    day_of_year: int,
    variety: np.ndarray | None = None,
    bare_field: np.ndarray | None = None,
) -> np.ndarray:
    """Noise-free surface reflectance x 10^4, [12, H, W] float32, for a land-cover raster.

    `variety` [H, W] mixes each class's VARIANTS end-member in (default: none);
    `bare_field` [H, W] bool puts cropland pixels on the bare-field end-member instead.
    """
    season = season_factor(day_of_year)
    mix = np.zeros(landcover.shape, np.float32) if variety is None else variety.copy()
    if bare_field is not None:
        crop = landcover == CROPLAND
        mix[crop] = np.where(bare_field[crop], 0.9, 0.1)
    a, b = _table(SIGNATURES, season)[landcover], _table(VARIANTS, season)[landcover]
    refl = (a * (1 - mix[..., None]) + b * mix[..., None]).transpose(2, 0, 1)  # [12, H, W]
    return refl * shading[None]
