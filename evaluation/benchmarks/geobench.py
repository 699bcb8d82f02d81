"""GEO-Bench (Lacoste et al. 2023) classification and segmentation tasks, read natively.

`path` is one task directory of the published benchmark, laid out as the `geobench`
package writes it (github.com/ServiceNow/geo-bench, geobench/dataset.py)::

    classification_v1.0/m-eurosat/          (or segmentation_v1.0/m-cashew-plantation/, ...)
        default_partition.json              {"train": [names], "valid": [...], "test": [...]}
        0.01x_train_partition.json ...      "<fraction>x_train": train subsampled, same valid/test
        <sample name>.hdf5                  one file per sample
        label_stats.json                    {sample: per-class vector}: a class count
        band_stats.json, task_specs.pkl     (not read)

A sample file has one dataset per band, named after the band ("02 - Blue"; dated bands get
"_<YYYY-MM-DD>" appended), and a "label" dataset for segmentation tasks. Its root attribute
"pickle" is `str(pickle.dumps(meta))`: "bands_order", per-band metadata whose "band_info" is
a geobench class (Sentinel2, Sentinel1, Landsat8, SpectralBand, ...) carrying the band name
and, for classification, "label" (an int, or a 0/1 numpy vector for multi-label tasks).
That pickle is read with an unpickler that rebuilds numpy arrays and plain dates only; every
other class becomes an inert stand-in, so neither geobench nor its code is needed.
task_specs.pkl is not read at all: class names come out as "0", "1", ... and the class count
from `num_classes=`, the published tasks' counts below, or label_stats.json.

Bands: Sentinel2 bands map by number ("08A - ..." is B8A; B10 is dropped); Sentinel-1,
Landsat-8, elevation, cloud-probability and hyperspectral bands are dropped. A task without
Sentinel-2 bands but with red/green/blue (aerial RGB) gets them as B04/B03/B02, in their own
units (8-bit for m-pv4ger); m-forestnet (Landsat-8 only) has no band of ours and is refused.
m-eurosat and m-brick-kiln were published with wrong band names (geo-bench issues #28, #29;
README "Known issues"); their channels are renamed as the README says. m-so2sat stores
reflectance, scaled here by 10 000. Bands smaller than the sample's largest band are
resampled to it (bilinear).

Tasks and metrics: "scene" (accuracy), "multilabel" (m-bigearthnet; we report micro mAP,
GEO-Bench reports F1) and "segmentation" (mIoU). The "no data" class of segmentation tasks
that have one becomes IGNORE and the other classes are renumbered (`nodata_to_ignore=False`
keeps it, as geobench's label type counts it). Splits: GEO-Bench's "valid" is our "val".
"""

from __future__ import annotations

import ast
import io
import json
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from evaluation.benchmarks import IGNORE, Benchmark, BenchmarkError, Task, check_bands

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

OPTIONS = ("num_classes", "nodata_to_ignore")
METRICS: dict[Task, str] = {
    "scene": "accuracy",
    "multilabel": "mAP (micro)",
    "segmentation": "mIoU",
}
_SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test"}  # GEO-Bench -> ours

# Class counts of the published v1.0 tasks (from the geo-bench converters), since the only
# file that records them, task_specs.pkl, is a pickle of geobench objects we do not load.
_NUM_CLASSES = {
    "m-bigearthnet": 43, "m-brick-kiln": 2, "m-eurosat": 10, "m-forestnet": 12,
    "m-pv4ger": 2, "m-so2sat": 17, "m-pv4ger-seg": 2, "m-chesapeake-landcover": 7,
    "m-cashew-plantation": 7, "m-cashew-plant": 7, "m-SA-crop-type": 10, "m-nz-cattle": 2,
    "m-NeonTree": 2,
}  # fmt: skip
# The class the converters call "no data" / "No Data" / "no-data".
_NODATA_CLASS = {
    "m-cashew-plantation": 0, "m-cashew-plant": 0, "m-SA-crop-type": 0,
    "m-chesapeake-landcover": 6,
}  # fmt: skip
_REFLECTANCE_SCALE = {"m-so2sat": 10_000.0}  # stored as reflectance, ours is x 10 000

# The 13 Sentinel-2 names geobench gives, in its order. m-eurosat and m-brick-kiln list
# exactly these, but their channels hold other bands (None: a true-colour composite).
_PUBLISHED_13 = (
    "01 - Coastal aerosol", "02 - Blue", "03 - Green", "04 - Red", "05 - Vegetation Red Edge",
    "06 - Vegetation Red Edge", "07 - Vegetation Red Edge", "08 - NIR",
    "08A - Vegetation Red Edge", "09 - Water vapour", "10 - SWIR - Cirrus", "11 - SWIR",
    "12 - SWIR",
)  # fmt: skip
_MISNAMED: dict[str, dict[str, str | None]] = {
    "m-eurosat": dict(zip(_PUBLISHED_13[8:], ("B09", "B10", "B11", "B12", "B8A"), strict=True)),
    "m-brick-kiln": dict(
        zip(_PUBLISHED_13[5:], ("B07", "B8A", "B08", "B11", "B12", None, None, None), strict=True)
    ),
}
_Index = dict[str, tuple[str, str]]  # band name -> (geobench band class, dataset key)
_S2_NUMBER = re.compile(r"^(\d{2}A?) - ")  # "08A - Vegetation Red Edge" -> "08A"
_RGB = {"red": "B04", "green": "B03", "blue": "B02"}


def read(path: Path, partition: str = "default", **options: Any) -> Benchmark:
    """One GEO-Bench task directory as a `Benchmark`, its splits from `<partition>_partition.json`.

    Options: `num_classes` (int) for tasks other than the published ones; `nodata_to_ignore`
    (default True) turns the "no data" segmentation class into IGNORE.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown GEO-Bench options {unknown}; known: {list(OPTIONS)}")
    directory = Path(path)
    if not directory.is_dir():
        raise BenchmarkError(f"GEO-Bench task directory {directory} does not exist")
    splits = _read_partition(directory, partition)
    first = next((names[0] for names in splits.values() if names), None)
    if first is None:
        raise BenchmarkError(f"{directory.name}: partition {partition!r} lists no samples")
    layout = _layout(directory, first, options)
    return Benchmark(
        name=directory.name,
        task=layout.task,
        classes=layout.classes,
        bands=layout.bands,
        splits={split: _Samples(directory, names, layout) for split, names in splits.items()},
        metric=METRICS[layout.task],
    )


def _read_partition(directory: Path, partition: str) -> dict[str, list[str]]:
    """Our split -> sample names, checking that every listed sample has its .hdf5 file."""
    suffix = "_partition.json"
    file = directory / f"{partition}{suffix}"
    if not file.is_file():
        there = sorted(p.name.removesuffix(suffix) for p in directory.glob(f"*{suffix}"))
        if not there:  # not a task folder: perhaps the benchmark's or a suite's folder
            tasks = sorted(p.parent.name for p in directory.glob(f"*/*{suffix}"))
            inside = (f"task folders inside it: {tasks}" if tasks else
                      "no task folder inside it either (each holds *_partition.json)")  # fmt: skip
            raise BenchmarkError(f"{directory} is not a GEO-Bench task folder; {inside}")
        raise BenchmarkError(f"{directory.name}: no {file.name}; partitions there: {there}")
    try:
        content = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"{file}: not readable JSON ({e})") from e
    if not (
        isinstance(content, dict)
        and set(content) <= set(_SPLIT_NAMES)
        and all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in content.values()
        )
    ):
        raise BenchmarkError(f"{file}: expected {{'train'|'valid'|'test': [sample names]}}")
    splits = {ours: content[theirs] for theirs, ours in _SPLIT_NAMES.items() if theirs in content}
    missing = [n for names in splits.values() for n in names if not _file(directory, n).is_file()]
    if missing:
        raise BenchmarkError(
            f"{directory.name}: {len(missing)} sample(s) in {file.name} have no file, "
            f"e.g. {_file(directory, missing[0]).name}"
        )
    return splits


def _file(directory: Path, sample: str) -> Path:
    # Not with_suffix: m-forestnet sample names contain dots.
    return directory / f"{sample}.hdf5"


@dataclass(frozen=True)
class _Layout:
    """What every sample of a task shares: task, classes, which stored band is which of ours."""

    task: Task
    classes: tuple[str, ...]
    bands: tuple[str, ...]  # ours, in our order
    sources: tuple[str, ...]  # the GEO-Bench band name of each of `bands`
    scale: float
    num_classes: int  # stored classes, "no data" included
    lut: np.ndarray  # segmentation: stored class -> our class or IGNORE


def _layout(directory: Path, sample: str, options: dict[str, Any]) -> _Layout:
    """The task's layout, read off its first sample."""
    path = _file(directory, sample)
    with _open(path) as (f, meta):
        index = _band_index(f, meta, path)
        segmentation = "label" in f  # a label band; classification labels are in the metadata
        label = np.asarray(meta.get("label"))
    mapping = _our_bands(index, _misnaming(directory.name, index))
    stored = [f"{name} ({kind})" for name, (kind, _) in index.items()]
    bands = check_bands(list(mapping), f"{path}: bands {stored}")
    if not segmentation and (label.dtype == object or label.ndim > 1):
        raise BenchmarkError(f"{path}: label {meta.get('label')!r} is neither a class nor a vector")
    task: Task = "segmentation" if segmentation else "multilabel" if label.ndim else "scene"
    k = _num_classes(directory, task, label, options.get("num_classes"))
    nodata = _NODATA_CLASS.get(directory.name) if options.get("nodata_to_ignore", True) else None
    kept = [c for c in range(k) if task != "segmentation" or c != nodata]
    lut = np.full(k, IGNORE, dtype=np.int64)
    lut[kept] = np.arange(len(kept))
    return _Layout(
        task=task,
        classes=tuple(str(c) for c in kept),
        bands=bands,
        sources=tuple(mapping[b] for b in bands),
        scale=_REFLECTANCE_SCALE.get(directory.name, 1.0),
        num_classes=k,
        lut=lut,
    )


def _num_classes(directory: Path, task: Task, label: np.ndarray, option: Any) -> int:
    """Class count: the option, the label vector's length, the published count, label_stats."""
    if option is not None:
        if not isinstance(option, int) or option < 1:
            raise BenchmarkError(f"num_classes must be a positive int, not {option!r}")
        return option
    if task == "multilabel":
        return len(label)
    if directory.name in _NUM_CLASSES:
        return _NUM_CLASSES[directory.name]
    try:  # {sample: per-class vector}, written for multi-label and segmentation tasks
        vectors = json.loads((directory / "label_stats.json").read_text())
        return len(next(iter(vectors.values())))
    except (OSError, ValueError, TypeError, StopIteration, AttributeError):
        raise BenchmarkError(
            f"{directory.name}: class count unknown (not a published task, no usable "
            "label_stats.json); pass num_classes="
        ) from None


def _misnaming(task: str, index: _Index) -> dict[str, str | None]:
    """The published naming error of `task`, if its bands are named exactly as published."""
    s2 = tuple(name for name, (kind, _) in index.items() if kind == "Sentinel2")
    return _MISNAMED.get(task, {}) if s2 == _PUBLISHED_13 else {}


def _our_bands(index: _Index, misnamed: dict[str, str | None]) -> dict[str, str]:
    """Our band -> GEO-Bench band name, for the bands we keep."""
    s2 = [name for name, (kind, _) in index.items() if kind == "Sentinel2"]
    if s2:
        ours = {n: misnamed[n] if n in misnamed else _s2_band(n) for n in s2}
    else:  # no Sentinel-2 at all: take an aerial (or other) red, green and blue
        ours = {n: _RGB.get(n.lower()) for n, (kind, _) in index.items() if kind == "SpectralBand"}
    return {band: name for name, band in ours.items() if band is not None}


def _s2_band(name: str) -> str | None:
    """Our name of a geobench Sentinel-2 band name: "02 - Blue" -> "B02", "08A - ..." -> "B8A"."""
    match = _S2_NUMBER.match(name)
    if match is None:
        return None
    number = match.group(1)
    return "B8A" if number == "08A" else f"B{number}"


class _Samples:
    """One split's samples, each read from its .hdf5 file when asked for."""

    def __init__(self, directory: Path, names: list[str], layout: _Layout) -> None:
        self.directory = directory
        self.names = names
        self.layout = layout

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = _file(self.directory, self.names[index])
        with _open(path) as (f, meta):
            bands = _band_index(f, meta, path)
            s2 = _read_bands(f, bands, self.layout.sources, path) * self.layout.scale
            label = f["label"][()] if "label" in f else meta.get("label")
        return {"s2": s2, "label": _label(label, self.layout, s2.shape[1:], path)}


def _read_bands(f: h5py.File, index: _Index, sources: tuple[str, ...], path: Path) -> np.ndarray:
    """The `sources` bands as float32 (C, H, W), smaller ones resampled to the largest."""
    arrays = []
    for name in sources:
        if name not in index:
            raise BenchmarkError(f"{path}: no band {name!r}; it has {list(index)}")
        array = np.asarray(f[index[name][1]][()], dtype=np.float32)
        if array.ndim != 2:
            raise BenchmarkError(f"{path}: band {name!r} has shape {array.shape}, not (H, W)")
        arrays.append(array)
    shape = max((a.shape for a in arrays), key=lambda s: s[0] * s[1])
    return np.stack([a if a.shape == shape else _resample(a, shape) for a in arrays])


def _resample(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear resampling of a (h, w) band to `shape`, pixel centres aligned."""
    t = torch.from_numpy(array)[None, None]  # [1, 1, h, w]
    out = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def _label(value: Any, layout: _Layout, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """The label in our form (see the package docstring), checked against the classes."""
    if value is None:
        raise BenchmarkError(f"{path}: no label")
    array = np.asarray(value)
    k = layout.num_classes
    if layout.task == "segmentation":
        if array.shape != shape or array.dtype.kind not in "iu":
            raise BenchmarkError(f"{path}: label {array.dtype} {array.shape}, expected int {shape}")
        if array.size and (array.min() < 0 or array.max() >= k):
            raise BenchmarkError(f"{path}: label classes outside 0..{k - 1}")
        return layout.lut[array]
    if layout.task == "multilabel":
        if array.shape != (k,) or not np.isin(array, (0, 1)).all():
            raise BenchmarkError(f"{path}: label {array.tolist()} is not {k} zeros and ones")
        return array.astype(np.float32)
    if array.shape != () or array.dtype.kind not in "iu" or not 0 <= int(array) < k:
        raise BenchmarkError(f"{path}: label {value!r} is not a class index below {k}")
    return np.asarray(int(array), dtype=np.int64)


@contextmanager
def _open(path: Path) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """An open sample file and its metadata; read errors become BenchmarkError naming it."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BenchmarkError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        try:
            yield f, _metadata(f, path)
        except (OSError, KeyError) as e:  # h5py: a damaged or missing dataset
            raise BenchmarkError(f"{path}: {e}") from e


def _metadata(f: h5py.File, path: Path) -> dict[str, Any]:
    """The sample's metadata dict, from the "pickle" root attribute."""
    raw = f.attrs.get("pickle")
    if raw is None:
        raise BenchmarkError(f"{path}: no 'pickle' attribute (not a geobench sample file)")
    try:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        data = ast.literal_eval(text)  # the repr of a bytes object, b'\x80\x04...'
        meta = _Unpickler(data).load() if isinstance(data, bytes) else None
    except Exception as e:  # anything malformed: a syntax, pickle or numpy error
        raise BenchmarkError(f"{path}: unreadable 'pickle' metadata ({e})") from e
    if not isinstance(meta, dict):
        raise BenchmarkError(f"{path}: 'pickle' metadata is not a pickled dict")
    return meta


def _band_index(f: h5py.File, meta: dict[str, Any], path: Path) -> _Index:
    """Band name -> (geobench band class, dataset key), for the image bands of a sample."""
    index: _Index = {}
    for key in meta.get("bands_order") or list(f.keys()):
        if key.startswith("label"):
            continue
        attrs = meta.get(key)
        info = attrs.get("band_info") if isinstance(attrs, dict) else None
        name = getattr(info, "name", None)
        if not isinstance(name, str):
            raise BenchmarkError(f"{path}: no band name in the metadata of {key!r}")
        if name in index:  # one date per sample in the published tasks
            raise BenchmarkError(f"{path}: band {name!r} at several dates (a time series)")
        index[name] = (type(info).__name__, key)
    return index


class _Stub:
    """Inert stand-in for a class named in a metadata pickle: keeps its state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


@cache
def _stub(module: str, name: str) -> type:
    """One stand-in class per pickled class, named like it (the band class tells S2 apart)."""
    return type(name, (_Stub,), {"pickled_from": f"{module}.{name}"})


def _dtype(*args: Any) -> np.dtype:
    # Object arrays would make numpy unpickle their items with the unrestricted pickle.
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    if subtype is not np.ndarray:  # a subclass could bring its own unpickling code
        raise pickle.UnpicklingError(f"array subclass {subtype!r} is not allowed")
    return _multiarray._reconstruct(np.ndarray, shape, _dtype(dtype))


def _scalar(dtype: np.dtype, data: bytes) -> Any:
    return _multiarray.scalar(_dtype(dtype), data)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x, 2.x pickles
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar
_PLAIN = {("datetime", "date"), ("datetime", "datetime"), ("collections", "OrderedDict")}


class _Unpickler(pickle.Unpickler):
    """Unpickles geobench metadata: numpy arrays and dates for real, all else as `_Stub`s."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        return _stub(module, name)
