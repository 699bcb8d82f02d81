"""Benchmark (not a test): evaluation's peak memory is flat in the benchmark's size.

    python tests/evaluation/bench_memory.py OUT_DIR [--patches 300 3000]

For each size, writes a BigEarthNet v2.0 layout of that many patches (the fixture's
per-band GeoTIFFs, metadata.parquet; 60/20/20 train/validation/test), a tiny encoder, and
runs `eomae evaluate --benchmark bigearthnet` (linear probe, every label) in a process of
its own, whose peak RSS (ru_maxrss) is printed with the ratio to the smallest size's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.bigearthnet import PATCH_M, V2_LABELS, V2_TILES, write_patch  # noqa: E402

from training.config import ModelConfig  # noqa: E402
from training.export import FORMAT, encoder_state  # noqa: E402
from training.multimae import MultiMAE  # noqa: E402

RUN = """
import resource, sys
from eomae.cli import main
status = main(sys.argv[1:])
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(status)
"""


def make_bigearthnet(root: Path, patches: int) -> Path:
    """A v2.0 layout of `patches` patches on one tile; returns root."""
    tile, crs, left0, top0, country = V2_TILES[0]
    records = []
    for i in range(patches):
        row, col = divmod(i, 100)
        patch = f"{tile}_{row}_{col}"
        write_patch(root / "BigEarthNet-S2" / tile / patch, patch, crs,
                    left0 + PATCH_M * col, top0 - PATCH_M * row)  # fmt: skip
        split = ("train", "train", "train", "validation", "test")[i % 5]
        records.append({"patch_id": patch, "labels": V2_LABELS[i % len(V2_LABELS)],
                        "split": split, "country": country, "s1_name": f"S1_{i}",
                        "s2v1_name": patch, "contains_seasonal_snow": False,
                        "contains_cloud_or_shadow": False})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records), root / "metadata.parquet")
    return root


def tiny_encoder(path: Path) -> Path:
    model = MultiMAE(ModelConfig(size="tiny", modalities="s2"))
    payload = {"format": FORMAT, "objective": "multimae", "model": model.cfg.model_dump(),
               "state_dict": encoder_state(model), "source": "random", "step": 0}  # fmt: skip
    torch.save(payload, path)
    return path


def peak_kib(data: Path, encoder: Path, run_dir: Path) -> int:
    args = ["evaluate", "--run-dir", str(run_dir), "--encoder", str(encoder), "--benchmark",
            "bigearthnet", "--data", str(data), "--protocols", '["linear"]', "--inputs",
            '["s2"]', "--inits", '["pretrained"]', "--bootstrap", "0",
            "--probe.linear-epochs", "2"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    peak = next(line for line in done.stdout.splitlines() if line.startswith("PEAK_KIB"))
    return int(peak.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--patches", type=int, nargs="+", default=[300, 3000])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    encoder = tiny_encoder(args.out / "encoder.pt")
    rows = []
    for n in args.patches:
        data = make_bigearthnet(args.out / f"ben-{n}", n)
        rows.append(
            {"patches": n, "peak_mib": peak_kib(data, encoder, args.out / f"run-{n}") / 1024}
        )
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["ratio_to_smallest"] = r["peak_mib"] / rows[0]["peak_mib"]
    (args.out / "memory.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
