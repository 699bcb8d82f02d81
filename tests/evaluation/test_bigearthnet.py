"""BigEarthNet-S2 reader (v1.0 and v2.0) on tiny datasets in the native layouts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from fixtures import bigearthnet as fixture  # tests/evaluation is on sys.path (rootdir imports)

from evaluation.benchmarks import SPLITS, Benchmark, BenchmarkError, SampleSource
from evaluation.benchmarks.bigearthnet import CLASSES, V1Split, V2Split, read
from ingest.sources.sentinel2 import BAND_NAMES

# The 19-class labels of fixture.V1_LABELS, by hand from BigEarthNet's label_conversion.
V1_EXPECTED = (
    ["Urban fabric"],  # both urban fabrics merge; "Airports" has no 19-class counterpart
    ["Arable land", "Broad-leaved forest", "Inland waters"],
    ["Pastures", "Natural grassland and sparsely vegetated areas"],  # two merge into one
    ["Marine waters"],  # "Sea and ocean" and "Estuaries" merge; "Bare rock" is dropped
)
V1_SPLIT_OF = dict(zip(fixture.v1_patch_names(), fixture.V1_SPLITS, strict=True))


@pytest.fixture(scope="module")
def v1_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture.make(tmp_path_factory.mktemp("ben_v1"), version=1)


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture.make(tmp_path_factory.mktemp("ben_v2"), version=2)


def patches(source: SampleSource) -> list[str]:
    assert isinstance(source, V1Split | V2Split)
    return source.patches


def members(bench: Benchmark) -> dict[str, list[str]]:
    return {s: patches(bench.split(s)) for s in SPLITS}


def label_names(label: np.ndarray) -> list[str]:
    return [CLASSES[i] for i in np.flatnonzero(label)]


def check_samples(bench: Benchmark) -> None:
    """Every sample: shapes, dtypes, and each band holding the fixture's value for it."""
    expected = np.array([fixture.BAND_VALUES[b] for b in bench.bands], np.float32)
    for split in SPLITS:
        source = bench.split(split)
        for i in range(len(source)):
            s2, label = source[i]["s2"], source[i]["label"]
            assert s2.shape == (12, 120, 120) and s2.dtype == np.float32
            assert label.shape == (19,) and label.dtype == np.float32
            assert set(np.unique(label)) <= {0.0, 1.0}
            # Constant bands stay constant through the 20/60 m upsampling.
            assert (s2 == expected[:, None, None]).all()


def test_v1_description_and_samples(v1_root: Path) -> None:
    bench = read(v1_root)
    assert bench.name == "bigearthnet-v1" and bench.task == "multilabel"
    assert bench.metric == "mAP (micro)" and len(bench.classes) == 19
    assert bench.bands == BAND_NAMES and "B10" not in bench.bands
    check_samples(bench)


def test_v1_labels_map_from_43_to_19_classes(v1_root: Path) -> None:
    bench = read(v1_root)
    index_of = {name: i for i, name in enumerate(fixture.v1_patch_names())}
    for split in SPLITS:
        source = bench.split(split)
        for i, patch in enumerate(patches(source)):
            k = index_of[patch] % len(V1_EXPECTED)
            assert label_names(source[i]["label"]) == V1_EXPECTED[k]


def test_v1_splits_from_the_split_files(v1_root: Path) -> None:
    want = {s: [n for n, t in V1_SPLIT_OF.items() if t == s] for s in SPLITS}
    assert members(read(v1_root)) == want


def test_v1_mm_and_torchgeo_split_file_formats(tmp_path: Path) -> None:
    root = fixture.make(tmp_path, version=1)
    want = members(read(root))
    for split in SPLITS:  # BigEarthNet-MM's "<s2>,<s1>" lines, under torchgeo's file names
        lines = (root / f"{split}.csv").read_text().splitlines()
        (root / f"{split}.csv").unlink()
        mm = "".join(
            f"{s2},S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_{i}\n" for i, s2 in enumerate(lines)
        )
        (root / f"bigearthnet-{split}.csv").write_text(mm)
    assert members(read(root)) == want


def test_v1_seeded_split_without_split_files(tmp_path: Path) -> None:
    root = fixture.make(tmp_path, version=1, split_files=False)
    first = members(read(root, seed=1))
    assert first == members(read(root, seed=1))  # deterministic
    assert first != members(read(root, seed=2))
    everything = [p for s in SPLITS for p in first[s]]
    assert len(everything) == len(set(everything)) == 10  # disjoint; the 2 flagged left out
    assert [len(first[s]) for s in SPLITS] == [6, 2, 2]
    flagged = {n for n, t in V1_SPLIT_OF.items() if t in ("snow", "cloud")}
    assert not flagged & set(everything)
    kept = members(read(root, skip_flagged=False))
    assert flagged <= {p for s in SPLITS for p in kept[s]}
    assert [len(m) for m in members(read(root, fractions=(0.5, 0.5, 0.0))).values()] == [5, 5, 0]


def test_v1_root_may_be_the_patch_folder(v1_root: Path) -> None:
    assert members(read(v1_root / "BigEarthNet-v1.0")) == members(read(v1_root))


def test_20_and_60_m_bands_are_upsampled_bilinearly(tmp_path: Path) -> None:
    root = fixture.make(tmp_path, version=1)
    patch = fixture.v1_patch_names()[0]
    folder = root / "BigEarthNet-v1.0" / patch
    for band, size in (("B01", 20), ("B05", 60)):  # 60 m and 20 m: ramps along x
        with rasterio.open(folder / f"{patch}_{band}.tif", "r+") as dst:
            assert dst.shape == (size, size)
            dst.write(np.tile(np.arange(size, dtype=np.uint16) * 10, (size, 1)), 1)
    bench = read(root)
    sample = bench.split("train")[patches(bench.split("train")).index(patch)]["s2"]
    for band, size in (("B01", 20), ("B05", 60)):
        image = sample[bench.bands.index(band)]
        assert image.shape == (120, 120)
        assert (image == image[:1]).all()  # rows alike, as in the source
        row = image[0]
        assert (np.diff(row) >= 0).all() and row[0] == 0 and row[-1] == 10 * (size - 1)
        # Nearest neighbour would repeat the source's `size` values; bilinear blends them.
        assert len(np.unique(row)) > size


def test_v2_description_samples_labels_and_splits(v2_root: Path) -> None:
    bench = read(v2_root)
    assert bench.name == "bigearthnet-v2" and bench.task == "multilabel"
    assert bench.bands == BAND_NAMES and len(bench.classes) == 19
    check_samples(bench)
    table = pq.read_table(v2_root / "metadata.parquet").to_pylist()
    want = {"train": "train", "validation": "val", "test": "test"}
    for split in SPLITS:
        rows = [r for r in table if want[r["split"]] == split]
        source = bench.split(split)
        assert patches(source) == [r["patch_id"] for r in rows]
        for i, row in enumerate(rows):
            assert label_names(source[i]["label"]) == sorted(row["labels"], key=CLASSES.index)
    assert [len(bench.split(s)) for s in SPLITS] == [6, 2, 2]  # both tiles' folders read


def test_missing_path_and_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="not a directory"):
        read(tmp_path / "nowhere")
    (tmp_path / "BigEarthNet-S1-v1.0").mkdir()
    with pytest.raises(BenchmarkError, match="neither metadata.parquet"):
        read(tmp_path)
    (tmp_path / "BigEarthNet-v1.0").mkdir()
    with pytest.raises(BenchmarkError, match="no patch folders"):
        read(tmp_path)


def _v1_band_file(root: Path) -> str:
    patch = fixture.v1_patch_names()[0]
    (root / "BigEarthNet-v1.0" / patch / f"{patch}_B05.tif").unlink()
    return f"{patch}_B05.tif"


def _v1_label_file(root: Path) -> str:
    patch = fixture.v1_patch_names()[0]
    (root / "BigEarthNet-v1.0" / patch / f"{patch}_labels_metadata.json").unlink()
    return "no label file"


def _v1_unknown_label(root: Path) -> str:
    patch = fixture.v1_patch_names()[0]
    path = root / "BigEarthNet-v1.0" / patch / f"{patch}_labels_metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"labels": ["Urban fabric"]}))
    return "outside the 43 classes: \\['Urban fabric'\\]"


def _v2_band_file(root: Path) -> str:
    tile = fixture.V2_TILES[0][0]
    (root / "BigEarthNet-S2" / tile / f"{tile}_26_57" / f"{tile}_26_57_B8A.tif").unlink()
    return f"{tile}_26_57_B8A.tif"


@pytest.mark.parametrize(
    ("version", "damage"),
    [(1, _v1_band_file), (1, _v1_label_file), (1, _v1_unknown_label), (2, _v2_band_file)],
)
def test_a_bad_sample_names_what_is_wrong(
    tmp_path: Path, version: int, damage: Callable[[Path], str]
) -> None:
    root = fixture.make(tmp_path, version=version)
    message = damage(root)
    train = read(root).split("train")
    train[1]  # other samples still read
    with pytest.raises(BenchmarkError, match=message):
        train[0]


def _v1_partial_split_files(root: Path) -> str:
    (root / "val.csv").unlink()
    return "not \\['val.csv'\\]"


def _v1_wrong_split_file(root: Path) -> str:
    (root / "test.csv").write_text("S2B_MSIL2A_20180525T94031_70_12\n")
    return "test.csv names S2B_MSIL2A_20180525T94031_70_12"


def _v2_missing_column(root: Path) -> str:
    table = pq.read_table(root / "metadata.parquet").drop_columns(["split"])
    pq.write_table(table, root / "metadata.parquet")
    return "lacks the columns \\['split'\\]"


def _v2_unknown_label(root: Path) -> str:
    rows = pq.read_table(root / "metadata.parquet").to_pylist()
    rows[3]["labels"] = ["Airports"]  # a 43-class name that v2.0 does not use
    pq.write_table(pa.Table.from_pylist(rows), root / "metadata.parquet")
    return f"{rows[3]['patch_id']} has labels outside the 19: \\['Airports'\\]"


def _v2_no_image_folder(root: Path) -> str:
    shutil.rmtree(root / "BigEarthNet-S2")
    return "no BigEarthNet-S2/ folder"


@pytest.mark.parametrize(
    ("version", "damage"),
    [
        (1, _v1_partial_split_files),
        (1, _v1_wrong_split_file),
        (2, _v2_missing_column),
        (2, _v2_unknown_label),
        (2, _v2_no_image_folder),
    ],
)
def test_a_bad_dataset_names_what_is_wrong(
    tmp_path: Path, version: int, damage: Callable[[Path], str]
) -> None:
    root = fixture.make(tmp_path, version=version)
    message = damage(root)
    with pytest.raises(BenchmarkError, match=message):
        read(root)
