"""GEO-Bench reader on tiny tasks in the native layout (tests/evaluation/fixtures/geobench.py)."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures import geobench as fixture  # tests/evaluation is on sys.path (rootdir imports)

from evaluation.benchmarks import IGNORE, SPLITS, BenchmarkError
from evaluation.benchmarks.geobench import read
from ingest.sources.sentinel2 import BAND_NAMES

READABLE = [task for task in fixture.TASKS if task != "m-forestnet"]  # Landsat-8: refused
OURS = {"valid": "val", "train": "train", "test": "test"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every fixture task, written once; tests that damage one copy it first."""
    out = tmp_path_factory.mktemp("geobench")
    for task in fixture.TASKS:
        fixture.make(out, task)
    return out


def task_dir(root: Path, task: str) -> Path:
    return root / fixture.TASKS[task].benchmark / task


def copy(root: Path, task: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(task_dir(root, task), tmp_path / task))


def held(task: str) -> list[str | None]:
    """The band each channel of `task` really holds, in stored order."""
    return [band for _, _, band in fixture.TASKS[task].bands]


@pytest.mark.parametrize("task", READABLE)
def test_description(root: Path, task: str) -> None:
    spec = fixture.TASKS[task]
    bench = read(task_dir(root, task))
    kind = {"scene": "accuracy", "multilabel": "mAP (micro)", "segmentation": "mIoU"}
    assert (bench.name, bench.task, bench.metric) == (task, spec.label, kind[spec.label])
    assert bench.bands == tuple(b for b in BAND_NAMES if b in held(task))
    assert "B10" not in bench.bands
    assert list(bench.splits) == list(SPLITS)
    assert {s: len(bench.split(s)) for s in SPLITS} == {"train": 10, "val": 3, "test": 3}
    nodata = 1 if spec.label == "segmentation" else 0  # cashew's class 0 is "no data"
    assert bench.classes == tuple(str(c) for c in range(nodata, spec.num_classes))


@pytest.mark.parametrize("task", READABLE)
def test_bands_hold_what_their_names_say(root: Path, task: str) -> None:
    bench = read(task_dir(root, task))
    for split in SPLITS:
        sample = bench.split(split)[0]
        s2 = sample["s2"]
        assert s2.dtype == np.float32 and s2.shape == (len(bench.bands), fixture.SIZE, fixture.SIZE)
        for band, channel in zip(bench.bands, s2, strict=True):
            assert channel == pytest.approx(np.full_like(channel, fixture.value(band))), band


def test_published_band_name_errors_are_undone(root: Path) -> None:
    # m-eurosat's channel stored as "12 - SWIR" holds B8A; m-brick-kiln has no B06 and its
    # last three channels are true-colour composites (geo-bench issues #28, #29).
    eurosat = read(task_dir(root, "m-eurosat")).split("train")[0]["s2"]
    assert eurosat[BAND_NAMES.index("B8A"), 0, 0] == fixture.value("B8A")
    kiln = read(task_dir(root, "m-brick-kiln"))
    assert kiln.bands == ("B01", "B02", "B03", "B04", "B05", "B07", "B08", "B8A", "B11", "B12")


def test_scene_and_multilabel_labels(root: Path) -> None:
    for task in ("m-eurosat", "m-bigearthnet"):
        spec = fixture.TASKS[task]
        bench = read(task_dir(root, task))
        numbers = {n: i for i, n in enumerate(sum(fixture.sample_names(spec).values(), []))}
        names = {OURS[s]: n for s, n in fixture.sample_names(spec).items()}
        for split in SPLITS:
            for index, name in enumerate(names[split]):
                got = bench.split(split)[index]["label"]
                want = fixture.label(spec, numbers[name])
                if spec.label == "scene":
                    assert got.dtype == np.int64 and got.shape == () and got == want
                else:
                    assert got.dtype == np.float32 and got.shape == (43,)
                    assert (got == want).all() and got.sum() == 2


def test_segmentation_labels_with_no_data_ignored(root: Path) -> None:
    spec = fixture.TASKS["m-cashew-plantation"]
    directory = task_dir(root, "m-cashew-plantation")
    stored = fixture.label(spec, 0)  # train sample 0
    got = read(directory).split("train")[0]["label"]
    assert got.dtype == np.int64 and got.shape == (fixture.SIZE, fixture.SIZE)
    assert (got[stored == 0] == IGNORE).all() and (got[stored > 0] == stored[stored > 0] - 1).all()
    kept = read(directory, nodata_to_ignore=False)
    assert kept.classes == tuple(str(c) for c in range(7))
    assert (kept.split("train")[0]["label"] == stored).all()


def test_partitions_map_valid_to_val(root: Path) -> None:
    directory = task_dir(root, "m-eurosat")
    for partition in ("default", "0.10x_train", "0.50x_train", "1.00x_train"):
        files = json.loads((directory / f"{partition}_partition.json").read_text())
        bench = read(directory, partition)
        sizes = {OURS[theirs]: len(names) for theirs, names in files.items()}
        assert {s: len(bench.split(s)) for s in SPLITS} == sizes
        for theirs, names in files.items():
            labels = [int(bench.split(OURS[theirs])[i]["label"]) for i in range(len(names))]
            assert labels == [int(n.removeprefix("id_")) % 10 for n in names]
    assert len(read(directory, "0.10x_train").split("train")) == 1
    assert len(read(directory, "0.01x_train").split("train")) == 0


def test_lower_resolution_bands_are_resampled(tmp_path: Path) -> None:
    directory = fixture.make(tmp_path, "m-bigearthnet", coarse=("B01", "B09"))
    bench = read(directory)
    s2 = bench.split("val")[0]["s2"]
    assert s2.shape == (12, fixture.SIZE, fixture.SIZE)
    assert (s2[BAND_NAMES.index("B09")] == fixture.value("B09")).all()
    # Replace B01 by a 4 x 4 left-right ramp 0 -> 100: bilinear with aligned pixel centres.
    sample = directory / f"{fixture.sample_names(fixture.TASKS['m-bigearthnet'])['valid'][0]}.hdf5"
    with h5py.File(sample, "r+") as f:
        f["01 - Coastal aerosol"][...] = np.repeat([[0.0, 0.0, 100.0, 100.0]], 4, axis=0)
    ramp = read(directory).split("val")[0]["s2"][0]
    assert ramp[0] == pytest.approx([0, 0, 0, 25, 75, 100, 100, 100])
    assert (ramp == ramp[0]).all()


def test_non_sentinel2_bands_are_dropped(root: Path) -> None:
    so2sat = read(task_dir(root, "m-so2sat"))  # 8 Sentinel-1 bands first, S2 reflectance
    assert len(so2sat.bands) == 10 and so2sat.split("test")[0]["s2"].max() == pytest.approx(120)
    with pytest.raises(BenchmarkError, match=r"04 - Red \(Landsat8\).*no Sentinel-2 band"):
        read(task_dir(root, "m-forestnet"))  # Landsat-8 named like Sentinel-2; dots in names


def test_missing_directory_and_partition(root: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="does not exist"):
        read(tmp_path / "m-nothing")
    with pytest.raises(BenchmarkError, match=r"no 0.30x_train_partition.json.*'0.10x_train'"):
        read(task_dir(root, "m-eurosat"), "0.30x_train")
    with pytest.raises(TypeError, match="unknown GEO-Bench options"):
        read(task_dir(root, "m-eurosat"), bands="rgb")
    suite = task_dir(root, "m-eurosat").parent  # the benchmark's folder, not a task's
    with pytest.raises(
        BenchmarkError,
        match=r"not a GEO-Bench task folder; task folders inside it: \[.*'m-eurosat'",
    ):
        read(suite)
    with pytest.raises(BenchmarkError, match="no task folder inside it either"):
        read(tmp_path)


def test_bad_partition_and_missing_sample_file(root: Path, tmp_path: Path) -> None:
    directory = copy(root, "m-eurosat", tmp_path)
    (directory / "id_0011.hdf5").unlink()
    with pytest.raises(BenchmarkError, match=r"1 sample\(s\) in default_partition.json.*id_0011"):
        read(directory)
    (directory / "default_partition.json").write_text(json.dumps({"training": ["id_0000"]}))
    with pytest.raises(BenchmarkError, match="default_partition.json: expected"):
        read(directory)


def test_bad_sample_files(root: Path, tmp_path: Path) -> None:
    directory = copy(root, "m-eurosat", tmp_path)
    (directory / "id_0000.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(BenchmarkError, match="id_0000.hdf5: not a readable HDF5 file"):
        read(directory)
    bench = read(directory, "0.01x_train")  # no train samples: id_0000 is not looked at
    with h5py.File(directory / "id_0014.hdf5", "r+") as f:
        del f["04 - Red"]
    with pytest.raises(BenchmarkError, match="id_0014.hdf5.*04 - Red"):
        bench.split("test")[1]


def test_metadata_pickle_runs_no_code(root: Path, tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (shutil.rmtree, (str(target),))

    target = tmp_path / "precious"
    target.mkdir()
    directory = copy(root, "m-eurosat", tmp_path)
    with h5py.File(directory / "id_0000.hdf5", "r+") as f:
        f.attrs["pickle"] = str(pickle.dumps({"bands_order": [], "label": Exploit()}))
    with pytest.raises(BenchmarkError, match="id_0000.hdf5"):
        read(directory)
    assert target.is_dir()


def as_numpy_1(data: bytes) -> bytes:
    """A protocol-4 pickle as numpy 1.x writes it: arrays rebuilt by numpy.core, not numpy._core."""
    header, body = data[:11], data[11:]  # PROTO 4, FRAME <8-byte length>: one frame here
    assert header[:3] == b"\x80\x04\x95" and struct.unpack("<Q", header[3:])[0] == len(body)
    old = body.replace(b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray")
    assert old != body
    return header[:3] + struct.pack("<Q", len(old)) + old


def test_numpy_1_pickles_as_published(root: Path, tmp_path: Path) -> None:
    directory = copy(root, "m-bigearthnet", tmp_path)
    for sample in directory.glob("*.hdf5"):
        with h5py.File(sample, "r+") as f:
            f.attrs["pickle"] = str(as_numpy_1(ast.literal_eval(f.attrs["pickle"])))
    bench = read(directory)
    assert [bench.split("train")[i]["label"].sum() for i in range(10)] == [2] * 10
