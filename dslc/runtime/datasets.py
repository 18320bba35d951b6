"""Training data: MNIST / Fashion-MNIST from IDX files, a user's .npz, or the embedded subset.

Where the data comes from (first that applies):
  1. `data` given: a directory of the original IDX files (the dataset folder itself, or a parent
     with mnist/ and fashion/ subfolders, as ../shared/data is laid out), or an .npz file;
  2. $DSLC_DATA, read the same way;
  3. the embedded subset shipped in dslc/data/embedded.npz (see dslc/data/README.md).

An .npz holds named arrays whose names the user chooses (image/label, x/y, ...). The train split
is the plain names (`x`, or `x_train` / `train_x`); the test split is `x_test` or `test_x`.
Either way a split comes back keyed by the plain name.

IDX: a big-endian header (magic, then one uint32 per dimension) followed by the raw uint8 data.
Magic 2051 = 0x00000803: uint8, 3 dims (count, rows, cols); 2049 = 0x00000801: uint8, 1 dim.
"""
from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dslc.diagnostics import DslError, did_you_mean
from dslc.fileio import check_regular

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
ENV_VAR = "DSLC_DATA"
SPLITS = {"train": "train", "test": "t10k"}  # split -> IDX file name prefix
# Canonical dataset name -> (the names a user may write, its folder names, the name people know).
DATASETS = {
    "mnist": (("mnist",), ("mnist",), "MNIST"),
    "fashion": (("fashion", "fashion_mnist", "fashion-mnist"),
                ("fashion", "fashion_mnist", "fashion-mnist"), "Fashion-MNIST"),
}
IMAGE_SIZE = (28, 28)
EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "embedded.npz"


# ------------------------------------------------------------------ names and sources
def dataset_name(name: str) -> str:
    """The canonical name ("mnist" or "fashion") of a dataset as a user may write it."""
    for canonical, (aliases, _, _) in DATASETS.items():
        if name.lower() in aliases:
            return canonical
    known = sorted(a for aliases, _, _ in DATASETS.values() for a in aliases)
    raise DslError(f"unknown dataset `{name}`", hint="use one of: " + ", ".join(known))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DslError(f"unknown split `{split}`", hint="use train or test")


@dataclass(frozen=True)
class Source:
    """Where one dataset's arrays come from: kind is "idx" (a folder), "npz" or "embedded"."""
    kind: str
    dataset: str  # canonical name
    path: Path

    def describe(self) -> str:
        if self.kind == "embedded":
            counts = _embedded_counts(self.dataset)
            return (f"embedded {DATASETS[self.dataset][2]} subset "
                    f"({counts['train']:,} train / {counts['test']:,} test)")
        return str(self.path)


def resolve_source(name: str, data: str | os.PathLike | None = None) -> Source:
    """Where `load_dataset(name, ..., data)` reads from: `data`, else $DSLC_DATA, else embedded."""
    dataset = dataset_name(name)
    what = "data path"
    if data is None and os.environ.get(ENV_VAR):
        data, what = os.environ[ENV_VAR], f"${ENV_VAR}"
    if data is None:
        if not EMBEDDED.is_file():
            raise DslError(f"the embedded dataset is missing from this installation: {EMBEDDED}",
                           hint=f"pass a data directory or set {ENV_VAR}")
        return Source("embedded", dataset, EMBEDDED)
    path = Path(data).expanduser()
    if path.is_dir():
        return Source("idx", dataset, _idx_folder(path, dataset))
    if path.is_file():
        return Source("npz", dataset, path)
    if os.path.lexists(path):  # a FIFO, a device, a dangling link: say which, not "not found"
        check_regular(path, what)
    raise DslError(f"{what} not found: {path}",
                   hint="give a folder of IDX files (e.g. ../shared/data) or an .npz file")


def describe_source(name: str, data: str | os.PathLike | None = None) -> str:
    """One line for the trainer: "embedded MNIST subset (5,000 train / 1,000 test)" or a path."""
    return resolve_source(name, data).describe()


def _idx_folder(root: Path, dataset: str) -> Path:
    # The shared layout is root/<dataset>/<file>; a folder holding the files directly works too.
    folders = [root / sub for sub in DATASETS[dataset][1]] + [root]
    for folder in folders:
        if any(folder.glob("*-images-idx3-ubyte*")):
            _check_not_other_dataset(folder, dataset)
            return folder
    raise DslError(f"{DATASETS[dataset][2]} IDX files not found under {root}",
                   hint=f"expected {root / dataset / 'train-images-idx3-ubyte.gz'} "
                        "(or the files directly in that folder)")


def _check_not_other_dataset(folder: Path, dataset: str) -> None:
    # Both datasets have the same file names: the folder's name is the only clue to a mix-up.
    for other, (_, folder_names, title) in DATASETS.items():
        if other != dataset and folder.name.lower() in folder_names:
            raise DslError(f"{folder} looks like the {title} folder, but this run asks for "
                           f"{DATASETS[dataset][2]}",
                           hint=f"point at its parent folder, or at the {DATASETS[dataset][2]} files")


# ------------------------------------------------------------------ loading
def load_dataset(name: str, split: str, data: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """One split of a dataset as {field: array}. From IDX files or the embedded subset:
    {"image": uint8 [n, 28, 28], "label": uint8 [n]}; from an .npz: its arrays as they are.
    The arrays may be read-only (they view the file's bytes); preprocess() makes new ones."""
    _check_split(split)
    source = resolve_source(name, data)
    if source.kind == "idx":
        return _load_idx(source.path, split)
    if source.kind == "npz":
        return _load_npz(source.path, split)
    with np.load(source.path, allow_pickle=False) as z:
        prefix = f"{source.dataset}_{split}_"
        return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}


def _load_idx(folder: Path, split: str) -> dict[str, np.ndarray]:
    prefix = SPLITS[split]
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != IMAGE_SIZE:
        raise DslError(f"{folder}: {split} images are {images.shape[1]}x{images.shape[2]}, "
                       f"expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
    if len(images) != len(labels):
        raise DslError(f"{folder}: {len(images)} {split} images but {len(labels)} labels "
                       f"in {labels_path.name}")
    return {"image": images, "label": labels}


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    raise DslError(f"`{name}` (.gz or raw) not found under {folder}",
                   hint=f"expected {folder / (name + '.gz')}")


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # Decide by content, not by name: a user may have unpacked without renaming.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DslError(f"cannot read {path}: {e or type(e).__name__}",
                       hint="the file may be truncated or corrupt; download it again") from None


def read_idx(path, magic: int) -> np.ndarray:
    """The uint8 array in IDX file `path` (.gz or raw), checking its magic number and size."""
    path = Path(path)
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DslError(f"{path} is not an IDX file: only {len(data)} bytes")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DslError(f"{path} is not an IDX file of the expected kind: magic {got}, "
                       f"expected {magic}", hint="images have magic 2051, labels 2049")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = math.prod(dims)  # Python integers: 2^31 x 2^31 x 4 must not wrap around to 0
    if len(data) - header != size:
        raise DslError(f"{path} is truncated or corrupt: header says {dims} "
                       f"({size} bytes), the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def _split_field(key: str, split: str) -> str | None:
    """The plain field name `key` stands for in `split`, or None when it belongs to the other."""
    for marker in ("test", "train"):
        if key.endswith("_" + marker) or key.startswith(marker + "_"):
            plain = key[:-len(marker) - 1] if key.endswith("_" + marker) else key[len(marker) + 1:]
            return plain if marker == split else None
    return key if split == "train" else None


def _load_npz(path: Path, split: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DslError(f"{path} is not an .npz file (not a zip archive)",
                       hint="write it with numpy.savez(path, image=..., label=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {}
            for key in z.files:
                field = _split_field(key, split)
                if field is None:
                    continue
                arrays[field] = z[key]
                # np.load hands back a member that is not an .npy file as raw bytes.
                if not isinstance(arrays[field], np.ndarray):
                    raise DslError(f"cannot read {path}: member `{key}` is not a numpy array")
                _check_npz_array(path, key, arrays[field])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DslError(f"cannot read {path}: {e}") from None
    if not arrays:
        example = "x_test or test_x" if split == "test" else "x (or x_train / train_x)"
        raise DslError(f"{path} has no {split} arrays (its arrays: {', '.join(z.files) or 'none'})",
                       hint=f"name the {split} arrays like {example}")
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"`{k}` {n}" for k, n in counts.items())
        raise DslError(f"{path}: the {split} arrays hold different numbers of examples ({listed})")
    return arrays


def _check_npz_array(path: Path, name: str, a: np.ndarray) -> None:
    """An array of examples: one entry per example along its first axis, of real numbers (a complex
    array would lose its imaginary part, a string array cannot be computed with)."""
    if a.ndim == 0:
        raise DslError(f"{path}: the array `{name}` is a single value, not one entry per example",
                       hint="save an array whose first axis counts the examples")
    if a.dtype.kind not in "biuf":
        kind = {"c": "complex numbers", "U": "text", "S": "bytes", "V": "records", "M": "dates",
                "m": "time spans", "O": "Python objects"}.get(a.dtype.kind, a.dtype.name)
        raise DslError(f"{path}: the array `{name}` holds {kind} ({a.dtype.name}), not real numbers",
                       hint="save pixels and labels as integer or float arrays")


def require_fields(arrays: dict[str, np.ndarray], fields, where: str) -> None:
    """A clear error when a split lacks a field the model feeds from (e.g. an .npz without `y`)."""
    for field in fields:
        if field not in arrays:
            hint = did_you_mean(field, arrays) or "its fields are: " + ", ".join(sorted(arrays))
            raise DslError(f"{where} has no field `{field}`", hint=hint)


def _embedded_counts(dataset: str) -> dict[str, int]:
    with np.load(EMBEDDED, allow_pickle=False) as z:
        return {split: len(z[f"{dataset}_{split}_label"]) for split in SPLITS}


# ------------------------------------------------------------------ batching
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch): reruns shuffle alike."""
    if int(seed) < 0 or int(epoch) < 0:
        raise DslError(f"seed and epoch must be non-negative integers, got seed {seed}, epoch {epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batches(n_examples: int, batch_size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Index arrays of `batch_size` taken from `order` (default range(n)); the last may be short."""
    if batch_size <= 0:
        raise DslError(f"batch size must be positive, got {batch_size}")
    order = np.arange(n_examples) if order is None else np.asarray(order)[:n_examples]
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


# ------------------------------------------------------------------ preprocessing
def _one_hot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DslError(f"one_hot expects labels 0..{classes - 1}, got {labels.min()}..{labels.max()}")
    return np.eye(classes, dtype=np.float32)[labels.astype(np.int64)]


def _channels_first(images: np.ndarray) -> np.ndarray:
    if images.ndim != 3:
        raise DslError(f"channels_first expects images [n, h, w], got shape {list(images.shape)}")
    return images[:, None]


# Name -> function; `preprocess` applies them in the order given.
PREPROCESS = {
    "scale01": lambda a: np.asarray(a, np.float32) / np.float32(255),
    "scale11": lambda a: (np.asarray(a, np.float32) - np.float32(127.5)) / np.float32(127.5),
    "flatten": lambda a: np.reshape(a, (len(a), -1)),
    "channels_first": _channels_first,
    "one_hot": _one_hot,
    "int64": lambda a: np.asarray(a, np.int64),
}


def preprocess(array: np.ndarray, ops) -> np.ndarray:
    """`array` passed through the named PREPROCESS steps in order, e.g. ["scale01", "flatten"]."""
    for op in [ops] if isinstance(ops, str) else ops:
        if op not in PREPROCESS:
            known = "known steps: " + ", ".join(PREPROCESS)
            close = did_you_mean(op, PREPROCESS)
            raise DslError(f"unknown preprocessing step `{op}`",
                           hint=f"{close} ({known})" if close else known)
        array = PREPROCESS[op](array)
    return array
