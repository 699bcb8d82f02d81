"""The evaluation report: Markdown tables like a paper's, JSON results and figures.

    write_report(rows, Path("runs/eval-1"), "eomae ViT-S, 100 epochs", context)

writes `report.md`, `results.json` and `plots/*.png` under the folder. A row is one
evaluation (task, protocol, inputs, init, label fraction) with its `metrics` from
`evaluation.metrics`; `row["headline"]` names the metric it is ranked by (all of them are
higher-is-better fractions, shown x100 with one decimal). Per (dataset, task) the report
has a table (rows: protocol, inputs, label fraction; columns: init; best per row in bold)
and a bar chart of the same numbers; a segmentation task adds per-class IoU, a scene or
segmentation task a confusion matrix, and rows with "examples" a prediction figure.
Repeated rows (e.g. seeds) are averaged in the tables and bar charts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

DPI = 100
INITS = ("pretrained", "random", "supervised")  # column order; unknown inits follow
INIT_COLOURS = {"pretrained": "tab:blue", "random": "tab:gray", "supervised": "tab:orange"}
PROTOCOLS = ("linear", "knn", "finetune", "frozen-seg", "finetune-seg")  # row order
IGNORE_RGB = (0.0, 0.0, 0.0)  # unlabelled / out-of-range pixels in the example figure
MISSING = "–"  # a cell with no result
ANNOTATE_MAX = 12  # confusion matrices up to this many classes print their percentages

Row = dict[str, Any]
Group = tuple[str, str]  # (dataset, task)
Config = tuple[str, str, float]  # (protocol, inputs, label fraction): one table row


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig).print_png(path)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _json_safe(x: Any) -> Any:
    """Numpy arrays and scalars as Python values, NaN and infinities as None (JSON null)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)  # paths, dates


def headline(row: Row) -> float:
    """The row's headline metric as a fraction; NaN when missing."""
    value = row["metrics"].get(row["headline"])
    return float(value) if value is not None else float("nan")


def _fraction(f: float) -> str:
    return f"{100 * f:g}%"


def _groups(rows: list[Row]) -> dict[Group, list[Row]]:
    """Rows by (dataset, task), in order of first appearance."""
    groups: dict[Group, list[Row]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["task"]), []).append(row)
    return groups


def _order(values: Sequence[str], canonical: Sequence[str]) -> list[str]:
    """Distinct values, the canonical ones first in canonical order, then as they came."""
    seen = list(dict.fromkeys(values))
    return [v for v in canonical if v in seen] + [v for v in seen if v not in canonical]


def _table(rows: list[Row]) -> tuple[list[Config], list[str], dict[tuple[Config, str], float]]:
    """(table rows, init columns, mean headline per cell) of one group."""
    protocols = _order([r["protocol"] for r in rows], PROTOCOLS)
    inputs = _order([r["inputs"] for r in rows], [])
    configs = sorted(
        {(r["protocol"], r["inputs"], float(r["label_fraction"])) for r in rows},
        key=lambda c: (protocols.index(c[0]), inputs.index(c[1]), -c[2]),  # full labels first
    )
    inits = _order([r["init"] for r in rows], INITS)
    return configs, inits, {k: float(np.mean(v)) for k, v in _cell_values(rows).items()}


def _cell_values(rows: list[Row]) -> dict[tuple[Config, str], list[float]]:
    """The headline of every row of each table cell (one per seed)."""
    values: dict[tuple[Config, str], list[float]] = {}
    for r in rows:
        cell = ((r["protocol"], r["inputs"], float(r["label_fraction"])), r["init"])
        values.setdefault(cell, []).append(headline(r))
    return values


def _cell(value: float | None, best: float | None, std: float | None = None) -> str:
    if value is None:
        return MISSING
    if math.isnan(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    bold = f"**{text}**" if best is not None and text == f"{100 * best:.1f}" else text
    return bold if std is None else f"{bold} ± {100 * std:.1f}"


def _markdown_table(rows: list[Row]) -> list[str]:
    """The group's table; the best of a row (ties as printed) is bold if it has rivals."""
    configs, inits, cells = _table(rows)
    lines = [
        "| protocol | inputs | labels | " + " | ".join(inits) + " |",
        "|---|---|---|" + "---:|" * len(inits),
    ]
    spread = _spread(rows)
    for config in configs:
        values = [cells.get((config, init)) for init in inits]
        finite = [v for v in values if v is not None and not math.isnan(v)]
        best = max(finite) if len(finite) > 1 else None
        protocol, inputs, fraction = config
        stds = [spread.get((config, init)) for init in inits]
        body = " | ".join(_cell(v, best, sd) for v, sd in zip(values, stds, strict=True))
        lines.append(f"| {protocol} | {inputs} | {_fraction(fraction)} | {body} |")
    return lines + _intervals(rows)


def _spread(rows: list[Row]) -> dict[tuple[Config, str], float]:
    """The std over seeds of each cell's headline, where a cell has several seeds."""
    return {k: float(np.std(v, ddof=1)) for k, v in _cell_values(rows).items() if len(v) > 1}


def _intervals(rows: list[Row]) -> list[str]:
    """The bootstrap intervals of the cells that have one, as a second table."""
    found: dict[tuple[Config, str], tuple[list[float], int]] = {}
    for r in rows:
        if r.get("interval_95"):
            cell = ((r["protocol"], r["inputs"], float(r["label_fraction"])), r["init"])
            seeds = found.get(cell, (r["interval_95"], 0))[1] + 1
            found[cell] = (r["interval_95"], seeds)
    if not found:
        return []
    seeds = max(n for _, n in found.values())
    lines = ["", f"95 % intervals of the headline (bootstrap over the test samples; of the "
             f"mean over {seeds} seed{'s' * (seeds > 1)}):", "",
             "| protocol | inputs | labels | init | interval |",
             "|---|---|---|---|---|"]  # fmt: skip
    for ((protocol, inputs, fraction), init), ((lo, hi), _) in found.items():
        lines.append(f"| {protocol} | {inputs} | {_fraction(fraction)} | {init} | "
                     f"{100 * lo:.1f} – {100 * hi:.1f} |")  # fmt: skip
    return lines


def _config_label(config: Config, fractions: int) -> str:
    protocol, inputs, fraction = config
    label = f"{protocol}\n{inputs}"
    return label + f" {_fraction(fraction)}" if fractions > 1 else label


def plot_headline(rows: list[Row], title: str, out_png: Path) -> Path:
    """Grouped bars of the headline metric: one group per table row, one bar per init."""
    configs, inits, cells = _table(rows)
    fractions = len({c[2] for c in configs})
    fig = Figure(figsize=(max(4.0, 1.0 + 0.3 * len(configs) * (len(inits) + 1)), 3.2), dpi=DPI)
    ax = fig.add_subplot()
    width = 0.8 / len(inits)
    x = np.arange(len(configs))
    for i, init in enumerate(inits):
        ys = np.array([100 * cells.get((c, init), np.nan) for c in configs])
        bars = ax.bar(
            x + (i - (len(inits) - 1) / 2) * width, np.nan_to_num(ys), width, label=init,
            color=INIT_COLOURS.get(init, f"C{i + 3}"),
        )  # fmt: skip
        labels = ["" if math.isnan(y) else f"{y:.1f}" for y in ys]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_xticks(x, [_config_label(c, fractions) for c in configs], fontsize=8)
    ax.set_ylabel(f"{rows[0]['headline']} (%)")
    top = max([100 * v for v in cells.values() if not math.isnan(v)], default=100.0)
    ax.set_ylim(0, min(108.0, top * 1.15) if top > 0 else 1.0)  # room for the labels
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png)


def _best(rows: list[Row], init: str | None = None, config: Config | None = None) -> Row | None:
    """The row with the highest headline, among those of `init` and `config` if given."""
    pool = [
        r
        for r in rows
        if (init is None or r["init"] == init)
        and (config is None or (r["protocol"], r["inputs"], r["label_fraction"]) == config)
        and not math.isnan(headline(r))
    ]
    return max(pool, key=headline, default=None)


def _describe(row: Row) -> str:
    return f"{row['init']}, {row['protocol']}, {row['inputs']}, {_fraction(row['label_fraction'])}"


def _class_names(row: Row, k: int) -> list[str]:
    names = [str(c) for c in row.get("classes", [])]
    return names + [str(i) for i in range(len(names), k)]


def plot_class_iou(best: Row, other: Row | None, title: str, out_png: Path) -> Path:
    """Horizontal bars of per-class IoU of the best pretrained row against a random one."""
    shown = [r for r in (best, other) if r is not None]
    k = len(best["metrics"]["per_class_iou"])
    names = _class_names(best, k)
    fig = Figure(figsize=(5.5, 1.2 + 0.3 * k * len(shown)), dpi=DPI)
    ax = fig.add_subplot()
    height = 0.8 / len(shown)
    y = np.arange(k)
    for i, row in enumerate(shown):
        iou = 100 * np.array(row["metrics"]["per_class_iou"], dtype=np.float64)
        bars = ax.barh(
            y + (i - (len(shown) - 1) / 2) * height, np.nan_to_num(iou), height,
            color=INIT_COLOURS.get(row["init"], f"C{i}"), label=_describe(row),
        )  # fmt: skip
        labels = ["absent" if math.isnan(v) else f"{v:.1f}" for v in iou]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # class 0 on top, as in the tables
    ax.set_xlim(0, 110)  # room for the labels of full bars
    ax.set_xlabel("IoU (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_confusion(row: Row, title: str, out_png: Path) -> Path:
    """Heat-map of the row's confusion matrix, each true class (row) normalised to 100 %."""
    counts = np.asarray(row["metrics"]["confusion"], dtype=np.float64)  # (K, K) truth x pred
    k = len(counts)
    names = _class_names(row, k)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(10.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    if k <= ANNOTATE_MAX:
        for (i, j), v in np.ndenumerate(share):
            colour = "white" if v > 0.5 else "black"
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(f"{title}\n{_describe(row)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)


def class_palette(k: int, colors: Sequence[str] | None = None) -> np.ndarray:
    """(K, 3) RGB of the classes: the given colours, else a qualitative map (tab10/tab20)."""
    if colors is not None:
        if len(colors) < k:
            raise ValueError(f"{len(colors)} class colours for {k} classes")
        return np.array([to_rgb(c) for c in colors[:k]])
    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(k)])


def _paint(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) classes -> (H, W, 3) RGB; labels outside the palette (ignored) are black."""
    valid = (labels >= 0) & (labels < len(palette))
    return np.where(valid[..., None], palette[np.clip(labels, 0, len(palette) - 1)], IGNORE_RGB)


def plot_examples(
    row: Row, title: str, out_png: Path, colors: Sequence[str] | None = None, n: int = 4
) -> Path:
    """Image | target | prediction for the first n examples, classes in fixed colours."""
    ex = row["examples"]
    image = np.asarray(ex["image"], dtype=np.float64)[:n]  # (n, 3, H, W)
    target = np.asarray(ex["target"], dtype=np.int64)[:n]  # (n, H, W)
    pred = np.asarray(ex["pred"], dtype=np.int64)[:n]
    names = row.get("classes") or []
    k = max(len(names), int(max(target.max(), pred.max())) + 1)
    palette = class_palette(k, colors)
    names = _class_names(row, k)
    cell, legend, top = 1.6, 1.3, 0.55  # inches: panel side, legend and title margins
    width, height = 3 * cell + legend + 0.1, len(image) * cell + top + 0.1
    fig = Figure(figsize=(width, height), dpi=DPI)
    grid = fig.add_gridspec(len(image), 3, left=0.1 / width, right=1 - legend / width,
                            top=1 - top / height, bottom=0.1 / height,
                            wspace=0.04, hspace=0.04)  # fmt: skip
    for i in range(len(image)):
        panels = (np.clip(image[i].transpose(1, 2, 0), 0, 1), _paint(target[i], palette),
                  _paint(pred[i], palette))  # fmt: skip
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(grid[i, j], xticks=[], yticks=[])
            ax.imshow(panel, interpolation="nearest")
            if i == 0:
                ax.set_title(("image", "target", "prediction")[j], fontsize=8)
    seen = np.unique(np.concatenate([target.ravel(), pred.ravel()]))
    handles = [
        Patch(facecolor=palette[c], edgecolor="grey", label=names[c]) for c in seen if 0 <= c < k
    ]
    if ((target < 0) | (target >= k)).any():
        handles.append(Patch(facecolor=IGNORE_RGB, edgecolor="grey", label="ignored"))
    fig.legend(handles=handles, loc="upper right", fontsize=7, frameon=False)
    fig.suptitle(f"{title}: {_describe(row)}", fontsize=8, x=0.1 / width, ha="left")
    return _save(fig, out_png)


def _figures(group: Group, rows: list[Row], plots: Path, context: dict[str, Any]) -> list[Path]:
    """Every figure of one (dataset, task) group, written under `plots`."""
    dataset, task = group
    title = task if task == dataset else f"{dataset} · {task}"
    stem = _slug(dataset) + "_" + _slug(task)
    paths = [plot_headline(rows, title, plots / f"{stem}_headline.png")]
    kind = rows[0]["kind"]
    best = _best(rows, "pretrained") or _best(rows)
    if best is None:
        return paths
    if kind == "segmentation" and "per_class_iou" in best["metrics"]:
        config = (best["protocol"], best["inputs"], best["label_fraction"])
        other = _best(rows, "random", config) or _best(rows, "random")
        other = other if other is not best else None
        paths.append(plot_class_iou(best, other, title, plots / f"{stem}_iou.png"))
    if kind in ("scene", "segmentation") and "confusion" in best["metrics"]:
        paths.append(plot_confusion(best, title, plots / f"{stem}_confusion.png"))
    with_examples = [r for r in rows if r.get("examples") is not None]
    shown = _best(with_examples, "pretrained") or _best(with_examples)
    if kind == "segmentation" and shown is not None:
        colors = (context.get("class_colors") or {}).get(task)
        paths.append(plot_examples(shown, title, plots / f"{stem}_examples.png", colors))
    return paths


def _context_table(context: dict[str, Any]) -> list[str]:
    """The run's context as a two-column table; nested values stay in results.json only."""
    scalars = {k: v for k, v in context.items() if not isinstance(v, dict | list | tuple)}
    lines = ["| | |", "|---|---|"]
    return lines + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in scalars.items()]


def _empty_classes_line(row: Row) -> list[str]:
    """How macro mAP counted the classes the test split has no positive of."""
    metrics = row["metrics"]
    if "empty_classes" not in metrics:
        return []
    scored, total = metrics["classes_scored"], len(metrics["per_class_ap"])
    rule = {"zero": "count 0 in", "skip": "are left out of"}[metrics["empty_classes"]]
    return [
        f"Macro mAP (--empty-classes {metrics['empty_classes']}): classes with no positive "
        f"in the test split {rule} the mean; {scored} of {total} classes have one.",
        "",
    ]


def write_report(rows: list[Row], out_dir: Path, title: str, context: dict[str, Any]) -> Path:
    """Write report.md, results.json and plots/*.png under out_dir; return report.md's path.

    results.json holds the title, context and rows with NaN as null; the rows'
    "examples" (pixels for the figures, not results) are left out of it.
    """
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *_context_table(context), ""]
    seconds = sum(float(r.get("seconds", 0.0)) for r in rows)
    lines += [f"{len(rows)} evaluations, {seconds / 60:.1f} min in all. Scores ×100.", ""]
    for group, group_rows in _groups(rows).items():
        dataset, task = group
        lines += [f"## {task if task == dataset else f'{dataset} · {task}'}", ""]
        lines += [f"{group_rows[0]['kind']}, headline metric: {group_rows[0]['headline']}", ""]
        if group_rows[0].get("split"):
            lines += [f"Split: {group_rows[0]['split']}.", ""]
        lines += _empty_classes_line(group_rows[0])
        lines += [*_markdown_table(group_rows), ""]
        for path in _figures(group, group_rows, plots, context):
            lines += [f"![{path.stem}]({path.relative_to(out_dir).as_posix()})", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    results = {
        "title": title,
        "context": context,
        "rows": [{k: v for k, v in r.items() if k != "examples"} for r in rows],
    }
    text = json.dumps(_json_safe(results), indent=1, allow_nan=False)
    (out_dir / "results.json").write_text(text + "\n")
    return report
