"""EuroSAT-MS reader on a tiny dataset in the native layout (tests/evaluation/fixtures)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from fixtures import eurosat as fixture  # tests/evaluation is on sys.path (rootdir imports)

from evaluation.benchmarks import SPLITS, BenchmarkError, SampleSource
from evaluation.benchmarks.eurosat import CLASSES, EuroSATSplit, read
from ingest.sources.sentinel2 import BAND_NAMES


@pytest.fixture(scope="module")
def eurosat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images per class under EuroSAT_MS/, with the three split lists."""
    return fixture.make(tmp_path_factory.mktemp("eurosat"))


def stems(source: SampleSource) -> list[str]:
    assert isinstance(source, EuroSATSplit)
    return [f.stem for f in source.files]


def test_benchmark_description(eurosat_root: Path) -> None:
    bench = read(eurosat_root)
    assert bench.task == "scene" and bench.metric == "accuracy"
    assert bench.classes == CLASSES == fixture.CLASSES
    assert bench.bands == BAND_NAMES and "B10" not in bench.bands
    assert set(bench.splits) == set(SPLITS)


def test_sample_shape_band_order_and_label(eurosat_root: Path) -> None:
    bench = read(eurosat_root)
    for split in SPLITS:
        source = bench.split(split)
        for i in range(len(source)):
            sample = source[i]
            s2, label = sample["s2"], sample["label"]
            assert s2.shape == (12, 64, 64) and s2.dtype == np.float32
            assert label.shape == () and label.dtype == np.int64
            # The fixture wrote BAND_VALUES[band] + class index into every pixel of a band:
            # each of our bands must hold its own value (B8A moved from last, B10 gone).
            expected = [fixture.BAND_VALUES[b] + int(label) for b in bench.bands]
            assert s2[:, 0, 0].tolist() == expected
            assert (s2 == s2[:, :1, :1]).all()
            assert CLASSES[int(label)] == stems(source)[i].rsplit("_", 1)[0]


def test_splits_from_the_split_lists(eurosat_root: Path) -> None:
    bench = read(eurosat_root)
    for split in SPLITS:
        got = stems(bench.split(split))
        numbers = {int(s.rsplit("_", 1)[1]) for s in got}
        assert numbers and all(fixture.split_of(n) == split for n in numbers)
        assert len(got) == 10 * sum(fixture.split_of(n) == split for n in range(1, 6))


def test_seeded_stratified_split_when_there_are_no_lists(tmp_path: Path) -> None:
    root = fixture.make(tmp_path, per_class=10, split_files=False)
    first, again = read(root, seed=3), read(root, seed=3)
    members = {s: stems(first.split(s)) for s in SPLITS}
    assert members == {s: stems(again.split(s)) for s in SPLITS}  # deterministic
    assert members != {s: stems(read(root, seed=4).split(s)) for s in SPLITS}
    everything = [x for s in SPLITS for x in members[s]]
    assert len(everything) == len(set(everything)) == 100  # disjoint and complete
    for split, share in zip(SPLITS, (6, 2, 2), strict=True):  # every class split 6/2/2
        per_class = [sum(s.startswith(f"{c}_") for s in members[split]) for c in CLASSES]
        assert per_class == [share] * 10
    custom = read(root, fractions=(0.8, 0.1, 0.1))
    assert [len(custom.split(s)) for s in SPLITS] == [80, 10, 10]
    with pytest.raises(BenchmarkError, match="fractions"):
        read(root, fractions=(0.5, 0.2, 0.2))


@pytest.mark.parametrize("layout", ["zenodo", "dfki"])
def test_root_may_be_the_parent_or_the_image_folder(tmp_path: Path, layout: str) -> None:
    root = fixture.make(tmp_path, per_class=2, layout=layout, split_files=False)
    image_dir = root / fixture.LAYOUTS[layout]
    assert len(read(root).split("train")) == len(read(image_dir).split("train")) > 0


def test_split_lists_are_found_next_to_the_class_folders_too(tmp_path: Path) -> None:
    root = fixture.make(tmp_path, per_class=5)
    for split in SPLITS:
        shutil.move(root / f"eurosat-{split}.txt", root / "EuroSAT_MS")
    assert len(read(root / "EuroSAT_MS").split("val")) == 10  # n = 4 of each class


def test_missing_path_and_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="not a directory"):
        read(tmp_path / "nowhere")
    (tmp_path / "EuroSAT_RGB" / "Forest").mkdir(parents=True)
    with pytest.raises(BenchmarkError, match="no class folders"):
        read(tmp_path)


def _drop_class(root: Path) -> None:
    shutil.rmtree(root / "EuroSAT_MS" / "SeaLake")


def _drop_split_list(root: Path) -> None:
    (root / "eurosat-test.txt").unlink()


def _drop_listed_image(root: Path) -> None:
    (root / "EuroSAT_MS" / "Forest" / "Forest_2.tif").unlink()


def _list_twice(root: Path) -> None:
    with (root / "eurosat-val.txt").open("a") as f:
        f.write("Forest_1.jpg\n")  # Forest_1 is listed for train already


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_class, "lacks the class folders.*SeaLake"),
        (_drop_split_list, "not.*eurosat-test.txt"),
        (_drop_listed_image, "eurosat-train.txt names 1 images.*Forest_2"),
        (_list_twice, "Forest_1 is in both train and val"),
    ],
)
def test_bad_datasets_name_what_is_wrong(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    root = fixture.make(tmp_path, per_class=5)
    damage(root)
    with pytest.raises(BenchmarkError, match=message):
        read(root)


def test_an_image_without_13_bands_is_named(tmp_path: Path) -> None:
    root = fixture.make(tmp_path, per_class=5)
    path = root / "EuroSAT_MS" / "River" / "River_1.tif"
    with rasterio.open(path) as src:
        profile = src.profile | {"count": 3}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint16))
    train = read(root).split("train")
    index = stems(train).index("River_1")
    with pytest.raises(BenchmarkError, match="River_1.tif has 3 bands"):
        train[index]


def test_split_lists_one_folder_above_the_class_folders_are_used(tmp_path: Path) -> None:
    """The lists beside EuroSAT_MS/ when the class folders' own folder is given: before,
    a random split was drawn without a word."""
    root = fixture.make(tmp_path, per_class=5)  # lists in root, classes in root/EuroSAT_MS
    bench = read(root / "EuroSAT_MS")
    assert bench.split_source == f"the official split lists (Neumann et al. 2019) in {root}"
    assert len(bench.split("val")) == 10


def test_a_random_split_is_said_in_the_benchmark_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = fixture.make(tmp_path, per_class=10, split_files=False)
    with caplog.at_level(logging.WARNING):
        bench = read(root)
    assert bench.split_source.startswith("a seeded random split stratified by class (0.6/0.2/0.2")
    assert "not the official one" in bench.split_source and str(root) in bench.split_source
    assert bench.split_source in caplog.text


def test_a_label_fraction_is_chosen_before_any_imagery_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Benchmark splits are read a batch at a time: a 10 % subset reads 10 % of the images."""
    import torch

    from evaluation.data import band_stats, load_benchmark_splits
    from evaluation.run import label_subset

    bench = read(fixture.make(tmp_path, per_class=10))
    splits = load_benchmark_splits(bench, ("train", "test"), patch=8)  # statistics read here
    reads: list[int] = []
    original = EuroSATSplit.__getitem__
    monkeypatch.setattr(EuroSATSplit, "__getitem__",
                        lambda self, i: reads.append(i) or original(self, i))  # fmt: skip
    train = splits["train"]
    part = label_subset(train, 0.1, seed=0)
    assert len(part) == round(0.1 * len(train)) and part.labels.shape == (len(part),)
    assert reads == [], "labels and the subset come without reading an image"
    inputs, labels = part.take(torch.arange(len(part)))
    assert len(reads) == len(part) and torch.equal(labels, part.labels)
    mean, std = band_stats(bench.split("train"))
    image = original(bench.split("train"), int(part.rows[0]))["s2"]
    z = (image - mean[:, None, None]) / std[:, None, None]
    at = [BAND_NAMES.index(b) for b in bench.bands]  # our band positions
    assert np.allclose(inputs["s2"][0, at].numpy(), z[:, :64, :64], atol=1e-4)
