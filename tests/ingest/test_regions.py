"""Ingest of the sample world's other regions, served by the real local services, driven
through the CLI as a user types it: Alaska (a western-hemisphere box, UTM zones 5/6) and
Chukotka across the antimeridian (a box with west > east, zones 60/1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from pyproj import Transformer
from scipy import ndimage

from eomae.cli import main
from infra.services import LocalServices
from infra.world import WorldConfig, generate_world
from ingest.cube import open_cube


@pytest.mark.slow
@pytest.mark.parametrize("region", ["alaska", "antimeridian"])
def test_a_region_ingests_whole_with_continuous_elevation(
    region: str, ray_session: None, tmp_path: Path
) -> None:
    world = tmp_path / "world"
    generate_world(world, WorldConfig(region=region, tile_size=180, dates=2))  # type: ignore[arg-type]
    truth = json.loads((world / "truth.json").read_text())
    west, south, east, north = truth["region"]
    if region == "antimeridian":
        assert west > east, "the region's STAC bbox crosses 180°"
    with LocalServices(world, tmp_path / "services") as services:
        run = tmp_path / "run"
        bbox = f"{west},{south},{east},{north}"  # typed as is: -150.5,... parses
        args = ["ingest", "--catalog", services.stac_url, "--bbox", bbox,
                "--start", "2021-01-01", "--end", "2022-12-31", "--max-cloud-cover", "100",
                "--chip-size", "32", "--run-dir", str(run)]  # fmt: skip
        assert main(args) == 0
    status = json.loads((run / "ingest" / "status.json").read_text())
    assert status and all(row["status"] == "done" for row in status), status
    cells, cell_transform = _dem_cells(world, unwrap=region == "antimeridian")
    cube = open_cube(str(run / "cube.zarr"))
    zones = set()
    for unit_id, group in cube.groups():
        assert isinstance(group, zarr.Group)
        zones.add(group.attrs["epsg"])
        dem, valid = np.asarray(group["dem"][:]), np.asarray(group["valid"][:])
        assert (np.asarray(group["coverage"][:]) & 2).all(), f"{unit_id}: DEM covers the grid"
        assert valid.any()
        # Every pixel equals bilinear interpolation of the joined cells at its centre (an
        # independent computation): no seam at cell edges, none at 180°.
        a, _, c, _, e, f = group.attrs["transform"]
        rows, cols = np.mgrid[0 : dem.shape[0], 0 : dem.shape[1]] + 0.5
        lon, lat = Transformer.from_crs(group.attrs["epsg"], 4326, always_xy=True).transform(
            c + cols * a, f + rows * e
        )
        if region == "antimeridian":
            lon = np.where(lon < 0, lon + 360.0, lon)
        col, row = ~cell_transform @ (lon, lat)
        expected = ndimage.map_coordinates(cells, [row - 0.5, col - 0.5], order=1)
        assert np.abs(dem - expected).max() < 0.5, unit_id
    assert len(zones) == 2, f"tiles of both UTM zones: {zones}"


def _dem_cells(world: Path, unwrap: bool) -> tuple[np.ndarray, Affine]:
    """The world's DEM cells joined into one array (longitudes past 180 when `unwrap`)."""
    cells = []
    for path in sorted((world / "data" / "cop-dem-glo-30").rglob("*.tif")):
        with rasterio.open(path) as src:
            t = src.transform
            west = t.c + 360.0 if unwrap and t.c < 0 else t.c
            cells.append((west, t.f, src.read(1), t))
    west, north = min(c[0] for c in cells), max(c[1] for c in cells)
    dx, dy = cells[0][3].a, -cells[0][3].e
    h, w = cells[0][2].shape
    joined = Affine(dx, 0, west, 0, -dy, north)
    south, east = min(c[1] for c in cells), max(c[0] for c in cells)  # of the last cells' corners
    shape = (round((north - south) / dy) + h, round((east - west) / dx) + w)
    out = np.full(shape, np.nan, np.float32)
    for cell_west, cell_north, data, _ in cells:
        c0, r0 = (round(v) for v in ~joined @ (cell_west, cell_north))
        out[r0 : r0 + h, c0 : c0 + w] = data
    return out, joined
