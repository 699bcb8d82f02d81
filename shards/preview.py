"""Look at a shard set: a PNG grid of random samples and a text summary of the dataset.

    preview("runs/demo/shards", "preview.png", n=8, split="val")
    print(describe("runs/demo/shards"))

Each preview row is one sample: Sentinel-2 true colour, a DEM hillshade, land cover in
the official WorldCover colours and the validity mask.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ingest.grid import RESOLUTION_M
from ingest.sources import worldcover
from shards import sample
from shards.config import SPLITS, join_url
from shards.manifest import ShardEntry, read_manifest, read_stats
from shards.modalities import DEM, LC, S2, VALID

CELL_IN = 2.0  # inches per panel side
LABEL_IN = 1.8  # left margin for the row labels
LEGEND_IN = 2.4  # right margin for the land-cover legend
TITLE_IN = 0.4  # top margin for the column titles
BOTTOM_IN = 0.3  # bottom margin for the last row's captions
DPI = 100
COLUMNS = ("Sentinel-2 B04/B03/B02", "DEM hillshade", "WorldCover", "valid")
NODATA_COLOUR = "black"


def figure_inches(n: int) -> tuple[float, float]:
    """(width, height) of a preview of n samples, in inches."""
    return LABEL_IN + len(COLUMNS) * CELL_IN + LEGEND_IN, TITLE_IN + n * CELL_IN + BOTTOM_IN


def true_colour(s2: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] from S2 (12, H, W): B04/B03/B02, 2-98 % stretch of valid pixels."""
    rgb = s2[S2.band_index(("B04", "B03", "B02"))].astype(np.float32)  # [3, H, W]
    pixels = rgb[:, valid] if valid.any() else rgb.reshape(3, -1)
    lo, hi = np.percentile(pixels, [2, 98])  # one stretch for all bands keeps the hue
    return np.clip((rgb - lo) / max(hi - lo, 1.0), 0, 1).transpose(1, 2, 0)  # [H, W, 3]


def hillshade(dem: np.ndarray, azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """Illumination in [0, 1] of a north-up elevation grid (H, W) in metres at 10 m pixels."""
    z = np.where(np.isnan(dem), np.nanmean(dem) if np.isfinite(dem).any() else 0.0, dem)
    d_row, d_col = np.gradient(z, RESOLUTION_M)
    east, north = d_col, -d_row  # rows run south
    az, alt = np.radians(azimuth), np.radians(altitude)
    sun = (np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt))  # east, north, up
    # Dot product of the unit surface normal (-east, -north, 1) with the sun direction.
    shade = (-east * sun[0] - north * sun[1] + sun[2]) / np.sqrt(1 + east**2 + north**2)
    return np.where(np.isnan(dem), 0.0, np.clip(shade, 0, 1))


def land_cover_style() -> tuple[ListedColormap, BoundaryNorm]:
    """Colour map and norm for class indices (LC.class_lookup); the nodata index is black."""
    colours = [worldcover.BY_CODE[c].color for c in LC.classes] + [NODATA_COLOUR]
    bounds = np.arange(len(colours) + 1) - 0.5
    return ListedColormap(colours), BoundaryNorm(bounds, len(colours))


def _choose(entries: list[ShardEntry], n: int, seed: int) -> dict[str, set[int]]:
    """Positions of n samples drawn uniformly without replacement: shard name -> indices."""
    counts = np.array([e.samples for e in entries])
    picks = np.random.default_rng(seed).choice(counts.sum(), min(n, counts.sum()), replace=False)
    starts = np.cumsum(counts) - counts
    chosen: dict[str, set[int]] = {}
    for p in sorted(picks):
        i = int(np.searchsorted(starts, p, side="right")) - 1
        chosen.setdefault(entries[i].name, set()).add(int(p - starts[i]))
    return chosen


def _read(url: str, indices: set[int]) -> Iterator[dict[str, bytes]]:
    """The members of the samples at `indices` of a shard, streamed (stops after the last)."""
    members: dict[str, bytes] = {}
    position, key = -1, ""
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            k, _, suffix = info.name.rpartition("/")[2].partition(".")
            if k != key:
                if position in indices:
                    yield members
                position, key, members = position + 1, k, {}
                if position > max(indices):
                    return
            if position in indices and suffix in sample.MEMBERS:
                data = tar.extractfile(info)
                members[suffix] = data.read() if data else b""
    if position in indices:
        yield members


def _row(axes: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> set[int]:
    """Draw one sample into a row of 4 axes; return the land-cover class indices shown."""
    valid = arrays[VALID]
    dem = arrays[DEM.name][0]
    lc = LC.class_lookup()[arrays[LC.name][0]]
    cmap, norm = land_cover_style()
    axes[0].imshow(true_colour(arrays[S2.name], valid), interpolation="nearest")
    axes[1].imshow(hillshade(dem), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_xlabel(f"{np.nanmin(dem):.0f}-{np.nanmax(dem):.0f} m", fontsize=7)
    axes[2].imshow(lc, cmap=cmap, norm=norm, interpolation="nearest")
    axes[3].imshow(valid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[3].set_xlabel(f"{valid.mean():.0%} valid", fontsize=7)
    key, unit = str(meta.get("key", "?")), str(meta.get("unit_id", "?"))
    if key.startswith(f"{unit}_"):  # two short lines fit the margin
        key = f"{unit}\n{key.removeprefix(unit + '_')}"
    label = f"{key}\n{meta.get('split', '?')} {meta.get('datetime', '?')}"
    axes[0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return {int(i) for i in np.unique(lc) if i < LC.num_classes}


def preview(
    shards_url: str, out_png: str, n: int = 8, seed: int = 0, split: str | None = None
) -> str:
    """Write a PNG grid of n random samples (seeded; one split or all) and return its path."""
    manifest = read_manifest(shards_url)
    entries = manifest.split_shards(split) if split else manifest.shards
    entries = [e for e in entries if e.samples > 0]
    if not entries or n < 1:
        raise ValueError(f"nothing to preview in {shards_url} (split {split}, n {n})")
    chosen = _choose(entries, n, seed)
    samples = []
    for name, indices in chosen.items():
        for members in _read(join_url(shards_url, name), indices):
            samples.append(sample.decode(members))
    width, height = figure_inches(len(samples))
    fig = Figure(figsize=(width, height), dpi=DPI)
    grid = fig.add_gridspec(
        len(samples), len(COLUMNS), left=LABEL_IN / width, right=1 - LEGEND_IN / width,
        top=1 - TITLE_IN / height, bottom=BOTTOM_IN / height, wspace=0.05, hspace=0.12,
    )  # fmt: skip
    shown: set[int] = set()
    for r, (arrays, meta) in enumerate(samples):
        axes = [fig.add_subplot(grid[r, c]) for c in range(len(COLUMNS))]
        shown |= _row(axes, arrays, meta)
        if r == 0:
            for ax, title in zip(axes, COLUMNS, strict=True):
                ax.set_title(title, fontsize=8)
    cmap, _ = land_cover_style()
    handles = [
        Patch(facecolor=cmap(i), edgecolor="gray", label=worldcover.BY_CODE[LC.classes[i]].name)
        for i in sorted(shown)
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="WorldCover", frameon=False)
    with fsspec.open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return out_png


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def describe(shards_url: str) -> str:
    """A text summary of a shard set: splits, sizes, band statistics, class frequencies."""
    manifest = read_manifest(shards_url)
    stats = read_stats(shards_url)
    lines = [
        f"shard set {shards_url}: {manifest.chip_size} px chips, created {manifest.created}",
        f"{'split':<8}{'shards':>8}{'samples':>10}{'size':>12}",
    ]
    for split in [*SPLITS, None]:
        entries = [e for e in manifest.shards if split in (None, e.split)]
        size = sum(e.bytes for e in entries)
        samples = sum(e.samples for e in entries)
        lines.append(f"{split or 'total':<8}{len(entries):>8}{samples:>10}{_mb(size):>12}")
    found = manifest.dropped.get("candidates")
    dropped = ", ".join(f"{k} {v}" for k, v in manifest.dropped.items() if k != "candidates")
    lines += [f"chips found: {found}; dropped: {dropped}", "", "valid pixels of the cube:"]
    lines.append(f"{'band':<12}{'mean':>10}{'std':>10}")
    for m in (S2, DEM):
        st = stats[m.name]
        for band, mean, std in zip(st["bands"], st["mean"], st["std"], strict=True):
            lines.append(f"{m.name + ' ' + band:<12}{mean:>10.1f}{std:>10.1f}")
    lines += ["", f"{'land cover':<32}{'share':>8}"]
    for code, freq in zip(stats[LC.name]["classes"], stats[LC.name]["frequency"], strict=True):
        lines.append(f"{worldcover.BY_CODE[code].name + f' ({code})':<32}{freq:>8.2%}")
    pixels = stats.get("pixels", {})
    if pixels:
        lines.append(f"valid pixels: {pixels['valid']:,} of {pixels['total']:,}")
    return "\n".join(lines)
