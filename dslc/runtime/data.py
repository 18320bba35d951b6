"""MNIST and Fashion-MNIST from their original IDX files, and minibatch indices.

IDX: a big-endian header (magic, then one uint32 per dimension) followed by the raw uint8 data.
Magic 2051 = 0x00000803: uint8, 3 dims (count, rows, cols); 2049 = 0x00000801: uint8, 1 dim.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from dslc.diagnostics import DslError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
DATASETS = ("mnist", "fashion")
SPLITS = {"train": "train", "test": "t10k"}  # split -> file name prefix
ENV_VAR = "DSLC_DATA"

# dslc/runtime/data.py -> the repository root is two folders above dslc/.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(explicit: str | None = None) -> Path:
    """The dataset folder: `explicit`, else $DSLC_DATA, else ../shared/data beside cwd or the repo."""
    for given, what in ((explicit, "data directory"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if given:
            path = Path(given).expanduser()
            if not path.is_dir():
                raise DslError(f"{what} not found: {path}")
            return path
    candidates = [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    raise DslError("no dataset directory found (looked in: "
                   + ", ".join(str(p) for p in candidates) + ")",
                   hint=f"pass --data DIR or set {ENV_VAR} to a folder holding mnist/ and fashion/")


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # Decide by content, not by name: a user may have unpacked without renaming.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DslError(f"cannot read {path}: {e}") from None


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
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DslError(f"{path} is truncated or corrupt: header says {dims} "
                       f"({size} bytes), the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def _find(root: Path, dataset: str, name: str) -> Path:
    # Accept root/<dataset>/<file> (the shared layout) or the files directly in root.
    for folder in (root / dataset, root):
        for candidate in (folder / (name + ".gz"), folder / name):
            if candidate.is_file():
                return candidate
    raise DslError(f"{dataset} file `{name}` (.gz or raw) not found under {root}",
                   hint=f"expected {root / dataset / (name + '.gz')}")


def load_mnist(split: str = "train", dataset: str = "mnist",
               root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of MNIST or Fashion-MNIST."""
    if split not in SPLITS:
        raise DslError(f"unknown split `{split}`", hint="use train or test")
    if dataset not in DATASETS:
        raise DslError(f"unknown dataset `{dataset}`", hint="use mnist or fashion")
    base = data_dir(str(root) if root is not None else None)
    prefix = SPLITS[split]
    images = read_idx(_find(base, dataset, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels = read_idx(_find(base, dataset, f"{prefix}-labels-idx1-ubyte"), LABELS_MAGIC)
    if len(images) != len(labels):
        raise DslError(f"{dataset} {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def batches(n: int, batch_size: int, shuffle: bool = False,
            rng: np.random.Generator | None = None, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) in batches; the last one is short unless drop_last."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = (rng or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
