"""EuroSAT-MS (Helber et al. 2019): 13-band Sentinel-2 scene classification, 10 classes.

Layout read here (the 13-band GeoTIFF release):

    <root>/EuroSAT_MS/<Class>/<Class>_<n>.tif     Zenodo record 7711097, EuroSAT_MS.zip
    <root>/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif
                                                  the original EuroSATallBands.zip (DFKI),
                                                  as torchgeo's `EuroSAT.base_dir` nests it
    <root>/eurosat-{train,val,test}.txt           optional split lists (also looked for
                                                  beside and one folder above the class folders)

`root` may also be the folder holding the class folders itself. Each file is a 64x64 uint16
GeoTIFF (UTM CRS, ~10 m pixels) with 13 bands in the order B01..B09, B10, B11, B12, B8A:
B8A comes last (phelber/EuroSAT issue #7; torchgeo issue #2458 and PR #2480 corrected
torchgeo's order to this). B10 (cirrus) is dropped and the rest put in our band order.

The split lists are those of "In-domain representation learning for remote sensing"
(Neumann et al. 2019) that torchgeo downloads as `eurosat-train.txt` etc.: one file name
per line. They name the RGB release's JPEGs (torchgeo maps `.jpg` to `.tif`), so names
are matched on their stem. Without split lists, a seeded split stratified by class is
drawn instead, with a warning; the report says which split was used (`split_source`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from evaluation.benchmarks import SPLITS, Benchmark, BenchmarkError, SampleSource, check_bands

log = logging.getLogger(__name__)

NAME = "eurosat"
CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
FILE_BANDS = tuple(f"B{i:02d}" for i in range(1, 13)) + ("B8A",)  # B01..B12, then B8A
# Where the class folders may sit below the given root, tried in this order.
IMAGE_DIRS = (
    Path("."),
    Path("EuroSAT_MS"),
    Path("ds/images/remote_sensing/otherDatasets/sentinel_2/tif"),
)
SPLIT_FILES = {"train": "eurosat-train.txt", "val": "eurosat-val.txt", "test": "eurosat-test.txt"}


@dataclass
class EuroSATSplit:
    """One split's images: file paths, class indices and which file bands to read."""

    files: list[Path]
    labels: list[int]
    band_indexes: list[int]  # 1-based rasterio band indexes, in `Benchmark.bands` order

    def __len__(self) -> int:
        return len(self.files)

    def label(self, index: int) -> np.ndarray:
        """The class index alone, no imagery read."""
        return np.asarray(self.labels[index], dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        with rasterio.open(path) as src:
            if src.count != len(FILE_BANDS):
                raise BenchmarkError(f"{NAME}: {path} has {src.count} bands, not 13")
            s2 = src.read(indexes=self.band_indexes).astype(np.float32)  # [C, 64, 64]
        return {"s2": s2, "label": np.asarray(self.labels[index], dtype=np.int64)}


def read(
    path: Path,
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> Benchmark:
    """EuroSAT-MS under `path`; split lists when present, else a seeded stratified split.

    `fractions` (train, val, test) and `seed` only apply to the fallback split.
    """
    root = Path(path)
    image_dir = find_image_dir(root)
    images = list_images(image_dir)
    searched = list(dict.fromkeys([root, image_dir, image_dir.parent]))
    lists = find_split_files(searched)
    if lists:
        names = {split: read_split_file(file) for split, file in lists.items()}
        members = splits_from_lists(names, images)
        source = f"the official split lists (Neumann et al. 2019) in {lists['train'].parent}"
    else:
        members = stratified_split(images, fractions, seed)
        shares = "/".join(f"{f:g}" for f in fractions)
        source = (f"a seeded random split stratified by class ({shares}, seed {seed}), not "
                  f"the official one: no {', '.join(SPLIT_FILES.values())} in "
                  f"{', '.join(str(f) for f in searched)}")  # fmt: skip
        log.warning("%s: %s", NAME, source)

    bands = check_bands(FILE_BANDS, NAME)  # our order, B10 left out
    indexes = [FILE_BANDS.index(b) + 1 for b in bands]
    splits: dict[str, SampleSource] = {
        split: EuroSATSplit(
            [images[stem][0] for stem in stems], [images[stem][1] for stem in stems], indexes
        )
        for split, stems in members.items()
    }
    return Benchmark(NAME, "scene", CLASSES, bands, splits, metric="accuracy", split_source=source)


def find_image_dir(root: Path) -> Path:
    """The folder holding the ten class folders: `root` itself or one of its known nestings."""
    if not root.is_dir():
        raise BenchmarkError(f"{NAME}: {root} is not a directory")
    for sub in IMAGE_DIRS:
        folder = root / sub
        present = [c for c in CLASSES if (folder / c).is_dir()]
        if present:
            missing = [c for c in CLASSES if c not in present]
            if missing:
                raise BenchmarkError(f"{NAME}: {folder} lacks the class folders {missing}")
            return folder
    tried = ", ".join(str(root / sub) for sub in IMAGE_DIRS)
    raise BenchmarkError(f"{NAME}: no class folders ({', '.join(CLASSES)}) in any of {tried}")


def list_images(image_dir: Path) -> dict[str, tuple[Path, int]]:
    """File stem -> (path, class index) for every `<Class>/<Class>_<n>.tif`."""
    images: dict[str, tuple[Path, int]] = {}
    for label, name in enumerate(CLASSES):
        files = sorted((image_dir / name).glob(f"{name}_*.tif"))
        if not files:
            raise BenchmarkError(f"{NAME}: no {name}_<n>.tif files in {image_dir / name}")
        images.update((f.stem, (f, label)) for f in files)
    return images


def find_split_files(folders: list[Path]) -> dict[str, Path]:
    """The split lists in the first of `folders` that has any; all three or an error.

    {} when no folder has any.
    """
    for folder in folders:
        found = {s: folder / f for s, f in SPLIT_FILES.items() if (folder / f).is_file()}
        if found and len(found) < len(SPLIT_FILES):
            missing = [SPLIT_FILES[s] for s in SPLITS if s not in found]
            raise BenchmarkError(f"{NAME}: {folder} has some split files but not {missing}")
        if found:
            return found
    return {}


def read_split_file(path: Path) -> list[str]:
    """The image stems a split list names (`Forest_12.jpg` and `Forest_12.tif` -> `Forest_12`)."""
    return [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]


def splits_from_lists(
    names: dict[str, list[str]], images: dict[str, tuple[Path, int]]
) -> dict[str, list[str]]:
    """Check the listed images exist and no image is in two splits."""
    seen: dict[str, str] = {}
    for split, stems in names.items():
        unknown = [s for s in stems if s not in images]
        if unknown:
            raise BenchmarkError(
                f"{NAME}: {SPLIT_FILES[split]} names {len(unknown)} images that are not on "
                f"disk, e.g. {unknown[:3]}"
            )
        for stem in stems:
            if seen.setdefault(stem, split) != split:
                raise BenchmarkError(f"{NAME}: {stem} is in both {seen[stem]} and {split}")
    return names


def stratified_split(
    images: dict[str, tuple[Path, int]], fractions: Sequence[float], seed: int
) -> dict[str, list[str]]:
    """A seeded split that gives each class the same train/val/test shares."""
    shares = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    members: dict[str, list[str]] = {s: [] for s in SPLITS}
    for label in range(len(CLASSES)):
        stems = sorted(s for s, (_, lab) in images.items() if lab == label)
        stems = [stems[i] for i in rng.permutation(len(stems))]
        start = 0
        for split, count in zip(SPLITS, split_counts(len(stems), shares), strict=True):
            members[split] += stems[start : start + count]
            start += count
    return members


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """(train, val, test) shares, checked: three, none negative, summing to 1."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise BenchmarkError(f"{NAME}: fractions must be 3 shares summing to 1, not {fractions}")
    train, val, test = fractions
    return train, val, test


def split_counts(n: int, shares: tuple[float, float, float]) -> tuple[int, int, int]:
    """How many of n items go to train, val and test (rounding goes to train)."""
    val, test = round(n * shares[1]), round(n * shares[2])
    return n - val - test, val, test
