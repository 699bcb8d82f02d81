"""BigEarthNet-S2: multi-label scene classification with the 19-class nomenclature.

Two releases, told apart by what is in the given folder:

v1.0 (Sumbul et al. 2019; torchgeo's `BigEarthNet`, tests/data/bigearthnet/v1)
    <root>/BigEarthNet-v1.0/<patch>/<patch>_B01.tif ... _B12.tif, _B8A.tif   (no B10)
    <root>/BigEarthNet-v1.0/<patch>/<patch>_labels_metadata.json
    <root>/{train,val,test}.csv                       optional; torchgeo: bigearthnet-*.csv
    <root>/patches_with_seasonal_snow.csv, patches_with_cloud_and_shadow.csv   optional
  Patches are named like `S2A_MSIL2A_20170613T101031_61_39`. Band files are single-band
  uint16 GeoTIFFs at their native resolution: 120x120 (10 m), 60x60 (20 m), 20x20 (60 m).
  The JSON has "labels" (CLC level-3 names of the 43-class nomenclature), "coordinates"
  (ulx, uly, lrx, lry), "projection" (WKT), "tile_source" and "acquisition_date". Labels
  map to the 19 classes by `label_conversion` of BigEarthNet's label_indices.json
  (git.tu-berlin.de/rsim/BigEarthNet-S2_19-classes_models); 11 of the 43 (e.g. "Airports",
  "Bare rock") have no 19-class counterpart and are dropped, as there. Split and
  snow/cloud files hold one patch name per line, no header (the BigEarthNet-MM split files
  add the S1 name after a comma; only the first column is read).

v2.0 / reBEN (Clasen et al. 2025; torchgeo's `BigEarthNetV2`, tests/data/bigearthnet/v2)
    <root>/metadata.parquet
    <root>/BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_B01.tif ... _B12.tif, _B8A.tif
  `patch_id` is like `S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57` and <tile> is it
  without the last two fields. The parquet's columns are patch_id, labels (list of
  19-class names), split ("train", "validation", "test"), country, s1_name, s2v1_name,
  contains_seasonal_snow, contains_cloud_or_shadow; patches with snow, cloud or shadow are
  kept out of it (they are listed in metadata_for_patches_with_snow_cloud_or_shadow.parquet,
  which is not read). Band files are per band, as in v1.

20 m and 60 m bands are upsampled bilinearly to the 120x120 grid of the 10 m bands.
Values are returned as stored (DN = reflectance x 10000).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import rasterio
from rasterio.enums import Resampling

from evaluation.benchmarks import SPLITS, Benchmark, BenchmarkError, SampleSource, check_bands

SIZE = 120  # pixels of a patch on the 10 m grid
FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12", "B8A")
BANDS = check_bands(FILE_BANDS, "bigearthnet")  # the same 12 in our order
V1_DIR = "BigEarthNet-v1.0"
V2_DIR = "BigEarthNet-S2"
V2_METADATA = "metadata.parquet"
V1_SPLIT_FILES = {s: (f"{s}.csv", f"bigearthnet-{s}.csv") for s in SPLITS}
V1_FLAGGED = ("patches_with_seasonal_snow.csv", "patches_with_cloud_and_shadow.csv")
V2_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
V2_COLUMNS = ("patch_id", "labels", "split")

CLASSES = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
LABELS_43 = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)
# label_indices.json "label_conversion": for each of the 19 classes, its 43-class indices.
LABEL_CONVERSION = (
    (0, 1), (2,), (11, 12, 13), (14, 15, 16, 18), (17,), (19,), (20,), (21,), (22,), (23,),
    (24,), (25, 31), (26, 27), (28,), (29,), (33, 34), (35, 36), (38, 39), (40, 41, 42),
)  # fmt: skip
TO_19: dict[str, int] = {LABELS_43[i]: c for c, old in enumerate(LABEL_CONVERSION) for i in old}


def read_patch(folder: Path, patch: str) -> np.ndarray:
    """The patch's bands in `BANDS` order on the 120x120 grid, float32 [12, 120, 120]."""
    bands = []
    for band in BANDS:
        path = folder / f"{patch}_{band}.tif"
        if not path.is_file():
            raise BenchmarkError(f"bigearthnet: patch {patch} has no band file {path}")
        with rasterio.open(path) as src:
            # out_shape resamples the 20/60 m bands; 10 m bands already are 120x120.
            bands.append(src.read(1, out_shape=(SIZE, SIZE), resampling=Resampling.bilinear))
    return np.stack(bands).astype(np.float32)


def multi_hot(indices: Sequence[int]) -> np.ndarray:
    """0/1 float32 vector over the 19 classes."""
    target = np.zeros(len(CLASSES), dtype=np.float32)
    target[list(indices)] = 1.0
    return target


@dataclass
class V1Split:
    """v1.0 patches by name; labels come from each patch's JSON when it is read."""

    patch_dir: Path
    patches: list[str]

    def __len__(self) -> int:
        return len(self.patches)

    def label(self, index: int) -> np.ndarray:
        """The patch's multi-hot labels from its JSON alone, no imagery read."""
        patch = self.patches[index]
        return multi_hot(v1_labels(self.patch_dir / patch, patch))

    def __getitem__(self, index: int) -> dict[str, Any]:
        patch = self.patches[index]
        folder = self.patch_dir / patch
        return {"s2": read_patch(folder, patch), "label": multi_hot(v1_labels(folder, patch))}


@dataclass
class V2Split:
    """v2.0 patches by id, with their 19-class labels from metadata.parquet."""

    s2_dir: Path
    patches: list[str]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.patches)

    def label(self, index: int) -> np.ndarray:
        """The patch's multi-hot labels from the metadata, no imagery read."""
        return multi_hot(self.labels[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        patch = self.patches[index]
        tile = patch.rsplit("_", 2)[0]  # the patch id less its row and column
        folder = self.s2_dir / tile / patch
        return {"s2": read_patch(folder, patch), "label": multi_hot(self.labels[index])}


def read(
    path: Path,
    *,
    skip_flagged: bool = True,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> Benchmark:
    """BigEarthNet-S2 v1.0 or v2.0 under `path` (told apart by its contents).

    v1.0: split files when present, else a seeded split with `fractions` (train, val,
    test) and `seed`; `skip_flagged` leaves out the patches the snow and cloud/shadow
    lists name. v2.0: the parquet's split column.
    """
    root = Path(path)
    if not root.is_dir():
        raise BenchmarkError(f"bigearthnet: {root} is not a directory")
    if (root / V2_METADATA).is_file():
        return read_v2(root)
    if (root / V1_DIR).is_dir():
        return read_v1(root, root / V1_DIR, skip_flagged, fractions, seed)
    if any(root.glob("*/*_labels_metadata.json")):  # given BigEarthNet-v1.0 itself
        return read_v1(root, root, skip_flagged, fractions, seed)
    raise BenchmarkError(
        f"bigearthnet: {root} has neither {V2_METADATA} (v2.0) nor {V1_DIR}/ or patch folders "
        "with <patch>_labels_metadata.json (v1.0)"
    )


def benchmark(version: str, splits: dict[str, SampleSource]) -> Benchmark:
    """The Benchmark both releases share: 19 classes, our 12 bands, micro mAP."""
    return Benchmark(f"bigearthnet-{version}", "multilabel", CLASSES, BANDS, splits, "mAP (micro)")


# --- v1.0 -------------------------------------------------------------------------------


def read_v1(
    root: Path, patch_dir: Path, skip_flagged: bool, fractions: Sequence[float], seed: int
) -> Benchmark:
    """v1.0: patch folders, per-patch JSON labels, optional split and snow/cloud lists."""
    folders = list(dict.fromkeys([root, patch_dir.parent]))  # where the csv files may be
    skip = flagged_patches(folders) if skip_flagged else set()
    files = v1_split_files(folders)
    if files:
        members = {s: [p for p in read_names(f) if p not in skip] for s, f in files.items()}
        check_disjoint(members)
        for split, patches in members.items():  # catch a wrong root early, cheaply
            if patches and not (patch_dir / patches[0]).is_dir():
                raise BenchmarkError(
                    f"bigearthnet: {files[split].name} names {patches[0]}, not in {patch_dir}"
                )
    else:
        patches = sorted(d.name for d in patch_dir.iterdir() if d.is_dir() and d.name not in skip)
        if not patches:
            raise BenchmarkError(f"bigearthnet: no patch folders in {patch_dir}")
        members = seeded_split(patches, fractions, seed)
    splits: dict[str, SampleSource] = {s: V1Split(patch_dir, p) for s, p in members.items()}
    return benchmark("v1", splits)


def v1_labels(folder: Path, patch: str) -> list[int]:
    """19-class indices of a v1.0 patch, from the 43-class names in its JSON."""
    path = folder / f"{patch}_labels_metadata.json"
    if not path.is_file():
        raise BenchmarkError(f"bigearthnet: patch {patch} has no label file {path}")
    try:
        names = json.loads(path.read_text()).get("labels")
    except ValueError as err:
        raise BenchmarkError(f"bigearthnet: {path} is not valid JSON: {err}") from err
    if not isinstance(names, list):
        raise BenchmarkError(f"bigearthnet: {path} has no 'labels' list")
    unknown = [n for n in names if n not in LABELS_43]
    if unknown:
        raise BenchmarkError(f"bigearthnet: {path} has labels outside the 43 classes: {unknown}")
    return sorted({TO_19[n] for n in names if n in TO_19})


def v1_split_files(folders: Sequence[Path]) -> dict[str, Path]:
    """train/val/test csv files in the first folder having any ({} if none); all or error."""
    for folder in folders:
        found = {
            s: folder / name
            for s, names in V1_SPLIT_FILES.items()
            for name in names
            if (folder / name).is_file()
        }
        if found and len(found) < len(SPLITS):
            missing = [V1_SPLIT_FILES[s][0] for s in SPLITS if s not in found]
            raise BenchmarkError(f"bigearthnet: {folder} has some split files but not {missing}")
        if found:
            return found
    return {}


def flagged_patches(folders: Sequence[Path]) -> set[str]:
    """Patches the snow and cloud/shadow lists name (those lists that are present)."""
    flagged: set[str] = set()
    for folder in folders:
        for name in V1_FLAGGED:
            if (folder / name).is_file():
                flagged.update(read_names(folder / name))
    return flagged


def read_names(path: Path) -> list[str]:
    """Patch names, one per line; the first column when a line has several."""
    lines = path.read_text().splitlines()
    return [line.split(",")[0].strip() for line in lines if line.strip()]


def check_disjoint(members: dict[str, list[str]]) -> None:
    """Error naming a patch that is listed in two splits."""
    seen: dict[str, str] = {}
    for split, patches in members.items():
        for patch in patches:
            if seen.setdefault(patch, split) != split:
                raise BenchmarkError(f"bigearthnet: {patch} is in both {seen[patch]} and {split}")


def seeded_split(patches: list[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """A seeded random train/val/test split of the patch names by `fractions`."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise BenchmarkError(f"bigearthnet: fractions must be 3 shares summing to 1: {fractions}")
    order = np.random.default_rng(seed).permutation(len(patches))
    n_val, n_test = round(len(patches) * fractions[1]), round(len(patches) * fractions[2])
    cuts = [0, len(patches) - n_val - n_test, len(patches) - n_test, len(patches)]
    return {s: [patches[i] for i in order[cuts[k] : cuts[k + 1]]] for k, s in enumerate(SPLITS)}


# --- v2.0 -------------------------------------------------------------------------------


def read_v2(root: Path) -> Benchmark:
    """v2.0: metadata.parquet (ids, 19-class labels, split) and BigEarthNet-S2/."""
    s2_dir = root / V2_DIR
    if not s2_dir.is_dir():
        raise BenchmarkError(f"bigearthnet: {root} has {V2_METADATA} but no {V2_DIR}/ folder")
    rows = read_metadata(root / V2_METADATA)
    members: dict[str, tuple[list[str], list[list[int]]]] = {s: ([], []) for s in SPLITS}
    for patch, names, split in zip(rows["patch_id"], rows["labels"], rows["split"], strict=True):
        if split not in V2_SPLIT_NAMES:
            raise BenchmarkError(f"bigearthnet: {patch} has unknown split {split!r}")
        unknown = [n for n in names if n not in CLASSES]
        if unknown:
            raise BenchmarkError(f"bigearthnet: {patch} has labels outside the 19: {unknown}")
        patches, labels = members[V2_SPLIT_NAMES[split]]
        patches.append(patch)
        labels.append(sorted(CLASSES.index(n) for n in names))
    splits: dict[str, SampleSource] = {s: V2Split(s2_dir, *pl) for s, pl in members.items()}
    return benchmark("v2", splits)


def read_metadata(path: Path) -> dict[str, list[Any]]:
    """The columns we need from metadata.parquet; error naming any that are missing."""
    try:
        names = pq.read_schema(path).names
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise BenchmarkError(f"bigearthnet: cannot read {path}: {err}") from err
    missing = [c for c in V2_COLUMNS if c not in names]
    if missing:
        raise BenchmarkError(f"bigearthnet: {path} lacks the columns {missing}; it has {names}")
    return pq.read_table(path, columns=list(V2_COLUMNS)).to_pydict()
