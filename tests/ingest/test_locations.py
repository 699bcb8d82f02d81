"""`eomae sample`: corpus locations as cells of the chip grid, by each strategy."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
from pyproj import Transformer
from shapely.geometry import Point, box, mapping

from eomae.cli import main
from infra.world.stac import local_items
from ingest.balance import balanced, landcover_at
from ingest.grid import chip_grid
from ingest.locations import (
    EARTH_RADIUS_KM,
    SampleConfig,
    SampleError,
    cells_of,
    grid_points,
    read_cells,
    sample_locations,
    uniform_points,
)
from ingest.snapshot import SnapshotCatalog, write_snapshot

# Innsbruck; Santiago de Chile (south); Bergen (UTM 32V, Norway's exception to zone 31);
# Fiji east of 180°; Alaska west of it
PLACES = np.array([[11.39, 47.27], [-70.65, -33.45], [4.5, 60.4], [179.5, -17.0],
                   [-179.5, 51.9]])  # fmt: skip


def haversine_km(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray):
    lo1, la1, lo2, la2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a))


def test_a_cell_is_the_chip_the_ingest_grid_cuts_there() -> None:
    cells = cells_of(PLACES[:, 0], PLACES[:, 1], 64)
    assert len(cells) == len(PLACES)
    by_place = {}
    for lon, lat in PLACES:
        hit = cells[cells.geometry.contains(Point(lon, lat))]
        assert len(hit) == 1, (lon, lat)
        by_place[(lon, lat)] = hit.iloc[0]
    assert by_place[(4.5, 60.4)].epsg == 32632 and by_place[(4.5, 60.4)].mgrs.startswith("32V")
    assert by_place[(-70.65, -33.45)].epsg == 32719  # south: 327xx
    assert by_place[(179.5, -17.0)].epsg == 32760 and by_place[(-179.5, 51.9)].epsg == 32601
    for cell in cells.itertuples():
        extent = 64 * 10
        assert cell.left % extent == 0 and cell.top % extent == 0
        assert cell.cell == f"{cell.epsg}_{int(cell.left)}_{int(cell.top)}"  # shards' chip_id
        # the ingest planner, given the cell's footprint as AOI inside a tile, cuts this chip
        tile = (cell.left - 50_000, cell.top - 60_000, cell.left + 50_000, cell.top + 40_000)
        grid = chip_grid(cell.epsg, tile, cell.geometry.buffer(1e-7), 64)
        assert grid is not None
        assert (grid.left, grid.top, grid.width, grid.height) == (cell.left, cell.top, 64, 64)
        x, y = Transformer.from_crs(4326, cell.epsg, always_xy=True).transform(cell.lon, cell.lat)
        assert cell.left < x < cell.left + extent and cell.top - extent < y < cell.top


def test_points_from_csv_geojson_and_geoparquet_give_the_same_cells(tmp_path: Path) -> None:
    near = PLACES[0] + [0.0001, 0.0001]  # ~14 m away: the same cell as Innsbruck
    points = np.vstack([PLACES, near])
    csv = tmp_path / "points.csv"
    rows = "".join(f"p{i},{x},{y}\n" for i, (x, y) in enumerate(points))
    csv.write_text("name,Longitude,Latitude\n" + rows)
    geojson = tmp_path / "points.geojson"
    features = [{"type": "Feature", "properties": {}, "geometry": mapping(Point(x, y))}
                for x, y in points]  # fmt: skip
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    parquet = tmp_path / "points.parquet"
    frame = gpd.GeoDataFrame(geometry=gpd.points_from_xy(points[:, 0], points[:, 1]), crs=4326)
    frame.to_crs(3857).to_parquet(parquet)  # another CRS: read back to lon/lat
    found = [sample_locations(SampleConfig(strategy="points", points=p))
             for p in (csv, geojson, parquet)]  # fmt: skip
    assert all(list(f.cell) == list(found[0].cell) for f in found)
    assert len(found[0]) == len(PLACES) and found[0].attrs["duplicates"] == 1

    # a polygon: every cell whose centre lies in it (a 2 x 2 km square: about 9.8 cells)
    square = box(11.39, 47.27, 11.39 + 2 / 75.5, 47.27 + 2 / 111.2)
    geojson.write_text(json.dumps({"type": "Feature", "geometry": mapping(square)}))
    cells = sample_locations(SampleConfig(strategy="points", points=geojson))
    assert 6 <= len(cells) <= 14
    assert all(square.contains(Point(x, y)) for x, y in zip(cells.lon, cells.lat, strict=True))


def test_uniform_locations_keep_their_distance_inside_the_aoi() -> None:
    aoi = box(5, 45, 15, 48)
    lon, lat = uniform_points([aoi], 400, 10.0, seed=3)
    assert len(lon) == 400
    assert all(aoi.contains(Point(x, y)) for x, y in zip(lon, lat, strict=True))
    i, j = np.triu_indices(len(lon), 1)
    assert haversine_km(lon[i], lat[i], lon[j], lat[j]).min() >= 10.0
    again = uniform_points([aoi], 400, 10.0, seed=3)
    assert np.array_equal(lon, again[0]) and np.array_equal(lat, again[1])
    assert not np.array_equal(lon, uniform_points([aoi], 400, 10.0, seed=4)[0])
    # uniform in area: the southern and northern halves (by area) get about half each
    split = math.degrees(math.asin((math.sin(math.radians(45)) + math.sin(math.radians(48))) / 2))
    assert 160 < (lat < split).sum() < 240
    with pytest.raises(SampleError, match=r"only \d+ of 1000 locations fit 50 km apart"):
        uniform_points([aoi], 1000, 50.0, seed=0)  # ~260 000 km² holds ~100 such points


def test_the_grid_is_regular_and_the_same_whatever_the_aoi() -> None:
    lon, lat = grid_points([box(5, 45, 15, 48)], 20.0)
    # about one point per 20 x 20 km of the box's ~257 000 km²
    area = (math.radians(10) * (math.sin(math.radians(48)) - math.sin(math.radians(45)))
            * EARTH_RADIUS_KM**2)  # fmt: skip
    assert abs(len(lon) - area / 400) < 0.05 * area / 400
    row = lat == lat[0]
    steps = haversine_km(lon[row][:-1], lat[row][:-1], lon[row][1:], lat[row][1:])
    assert np.allclose(steps, 20.0, rtol=0.01)
    part_lon, part_lat = grid_points([box(8, 46, 9, 47)], 20.0)
    whole = set(zip(lon.round(9), lat.round(9), strict=True))
    assert part_lon.size and set(zip(part_lon.round(9), part_lat.round(9), strict=True)) <= whole


def test_sample_writes_geoparquet_and_bad_input_is_named(tmp_path: Path) -> None:
    out = tmp_path / "corpus" / "locations.parquet"
    args = ["sample", "--strategy", "grid", "--bbox", "170,-20,-170,-10", "--spacing-km", "50",
            "--chip-size", "128", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    cells = read_cells(out)
    assert cells.crs.to_epsg() == 4326 and (cells.chip_size == 128).all()
    assert {32760, 32701} <= set(cells.epsg)  # both sides of 180°, south
    assert cells.cell.is_unique and len(cells) > 100

    bad = tmp_path / "bad.csv"
    bad.write_text("x_coord,y_coord\n1,2\n")
    assert main(["sample", "--strategy", "points", "--points", str(bad)]) == 2
    with pytest.raises(SampleError, match=r"bad.csv: no lon/lat columns"):
        sample_locations(SampleConfig(strategy="points", points=bad))
    with pytest.raises(SampleError, match="outside lon -180..180, lat -80..84"):
        cells_of(np.array([10.0]), np.array([85.0]), 64)
    assert main(["sample", "--strategy", "uniform", "--bbox", "5,45,15,48"]) == 2  # no --count


def test_balanced_takes_the_classes_in_turn_and_never_nodata() -> None:
    classes = np.array([10] * 90 + [50] * 8 + [80] * 2 + [0] * 5, np.uint8)

    chosen = balanced(classes, 12, seed=0)

    assert len(set(chosen)) == 12
    assert Counter(classes[chosen].tolist()) == {10: 5, 50: 5, 80: 2}
    assert np.array_equal(balanced(classes, 12, seed=0), chosen)  # seeded


def test_balanced_sampling_evens_out_the_worlds_land_cover(
    world_dir: Path, truth: dict, tmp_path: Path
) -> None:
    snapshot = write_snapshot(local_items(world_dir), tmp_path / "catalog.parquet")
    catalog = SnapshotCatalog(snapshot)
    # the overview read gives the class of the world's ground-truth points
    points = truth["points"]
    read = landcover_at(np.array([p["lon"] for p in points]), np.array([p["lat"] for p in points]),
                        catalog, "v200")  # fmt: skip
    assert np.mean(read == np.array([p["landcover"] for p in points])) > 0.9

    base = {"strategy": "uniform", "bbox": [tuple(truth["region"])], "count": 60, "seed": 3,
            "catalog_snapshot": snapshot}  # fmt: skip
    plain = sample_locations(SampleConfig(**base))
    even = sample_locations(SampleConfig(**base, balance_landcover=True))

    def shares(cells: Any) -> Counter[int]:
        return Counter(landcover_at(cells["lon"].to_numpy(), cells["lat"].to_numpy(), catalog,
                                    "v200").tolist())  # fmt: skip

    plain_shares, even_shares = shares(plain), shares(even)
    assert len(even) == 60 and 0 not in even_shares
    assert max(even_shares.values()) < max(plain_shares.values())  # the commonest class less so
    assert len(even_shares) >= len(plain_shares)  # no class lost
