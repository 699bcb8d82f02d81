"""Benchmark (not a test): a corpus of scattered cells, ingested as AOIs and as locations.

    python tests/ingest/bench_corpus.py OUT_DIR [--cells 20] [--tile-size 1200]

Generates a sample world, serves it, samples `--cells` cells of 64 px uniformly over it
(1 km apart), and ingests them twice, one scene per cell: with one `--bbox` AOI per cell
(the AOI planner: a grid per AOI and tile, chip-snapped) and with `--locations` (a unit
per scene and cell). Prints, for each, the units, the cube pixels written and MB read per
unit, the STAC searches and the plan's seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from infra.services import LocalServices  # noqa: E402
from infra.world import WorldConfig, generate_world  # noqa: E402
from ingest.locations import SampleConfig, sample_locations, write_cells  # noqa: E402

RUN = """
import json, sys
import pystac_client
from ingest.config import IngestConfig
from ingest.cube import open_cube
from ingest.run import run_ingest
searches = []
search = pystac_client.Client.search
pystac_client.Client.search = lambda self, **kw: searches.append(1) or search(self, **kw)
cfg = IngestConfig.model_validate_json(sys.argv[1])
summary = run_ingest(cfg)
cube = open_cube(cfg.run_dir + "/cube.zarr")
pixels = sum(cube[u]["valid"].size for u in cube.group_keys())
print(json.dumps({**summary, "pixels": pixels, "searches": len(searches)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--tile-size", type=int, default=1200)
    args = parser.parse_args()
    world = args.out / "world"
    generate_world(world, WorldConfig(tile_size=args.tile_size))
    truth = json.loads((world / "truth.json").read_text())
    cells = sample_locations(SampleConfig(strategy="uniform", bbox=[tuple(truth["region"])],
                                          count=args.cells, min_distance_km=1.0))  # fmt: skip
    locations = write_cells(cells, args.out / "locations.parquet")
    services = LocalServices(world, args.out / "services").start()
    try:
        common = {"catalog": services.stac_url, "start": "2021-01-01", "end": "2022-12-31",
                  "max_cloud_cover": 100.0, "scenes_per_tile": 1, "chip_size": 64}  # fmt: skip
        runs = {
            "aois": {**common, "bbox": [list(g.bounds) for g in cells.geometry]},
            "locations": {**common, "locations": str(locations)},
        }
        for name, fields in runs.items():
            fields["run_dir"] = str(args.out / name)
            done = subprocess.run([sys.executable, "-c", RUN, json.dumps(fields)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            s = json.loads(done.stdout.strip().splitlines()[-1])
            units = max(s["units"], 1)
            print(f"{name:>9}: {s['units']} units, {s['pixels'] / units:.0f} px and "
                  f"{s['mb_read'] / units:.2f} MB read per unit, {s['searches']} searches, "
                  f"plan {s['plan_s']} s, all {s['elapsed_s']} s")  # fmt: skip
    finally:
        services.stop()


if __name__ == "__main__":
    main()
