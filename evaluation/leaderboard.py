"""Results in the CSV layout of torchgeo-bench, so they line up with its public table.

torchgeo-bench (torchgeo/torchgeo-bench, src/torchgeo_bench/main.py `EvaluationResult`,
docs/user/results-format.rst) appends one row per (dataset, method, model, config) to
`results/all_results.csv`, columns in the order of `COLUMNS`, metric values as fractions,
`ci_lower` / `ci_upper` a bootstrap 95 % interval, `partition` the label fraction as
GEO-Bench names it ("default", "0.10x_train"). We write the same columns to
RUN/evaluation/NAME/torchgeo_bench.csv, one row per evaluation (and seed); what we do not
measure (their logistic-regression C sweep, calibration) is left empty.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = (
    "dataset,method,metric_name,metric_value,ci_lower,ci_upper,feature_dim,best_c,best_lr,"
    "best_batch_size,n_train,n_val,n_test,seed,model,name,normalization,image_size,"
    "interpolation,partition,bands,c_range_start,c_range_stop,c_range_num,merge_val,bootstrap,"
    "fw_iou,precision,recall,f1,ece,rms_ce,mce,ece_ts,rms_ce_ts,mce_ts,temperature,"
    "calibration_n_bins"
).split(",")
# our headline metric -> their metric name
METRIC_NAMES = {"accuracy": "accuracy", "mAP_micro": "micro_mAP", "mIoU": "mIoU"}
FILE = "torchgeo_bench.csv"


def partition(fraction: float) -> str:
    """A label fraction as GEO-Bench's partition name."""
    return "default" if fraction >= 1 else f"{fraction:.2f}x_train"


def leaderboard_row(row: dict[str, Any], encoder: dict[str, Any]) -> dict[str, Any]:
    """One report row in torchgeo-bench's columns.

    `encoder`: model, name, dim, size, normalization, interpolation, bootstrap (how many
    resamples made the interval).
    """
    protocol = row["protocol"]
    k = row.get("knn_k")
    method = f"knn{k}" if protocol == "knn" and k else protocol
    lo, hi = row.get("interval_95") or (None, None)
    return {
        "dataset": row["dataset"], "method": method,
        "metric_name": METRIC_NAMES.get(row["headline"], row["headline"]),
        "metric_value": row["metrics"].get(row["headline"]), "ci_lower": lo, "ci_upper": hi,
        "feature_dim": encoder["dim"], "n_train": row["samples"]["train"],
        "n_test": row["samples"]["test"], "seed": row.get("seed", 0), "model": encoder["model"],
        "name": encoder["name"], "normalization": encoder["normalization"],
        "image_size": encoder["size"], "interpolation": encoder["interpolation"],
        "partition": partition(float(row["label_fraction"])), "bands": row["inputs"],
        "bootstrap": encoder["bootstrap"] if lo is not None else None,
    }  # fmt: skip


def write_leaderboard_csv(
    rows: list[dict[str, Any]], out_dir: Path, encoder: dict[str, Any]
) -> Path:
    """Write FILE under out_dir (every row of the report); return its path."""
    path = Path(out_dir) / FILE
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            values = leaderboard_row(row, encoder)
            writer.writerow({k: "" if values.get(k) is None else values[k] for k in COLUMNS})
    return path
