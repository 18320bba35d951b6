"""The first data API (`dslc run`, older callers): thin wrappers over datasets.py, which holds
the one implementation of IDX reading and batching."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from dslc.diagnostics import DslError

from . import datasets
from .datasets import ENV_VAR, IMAGES_MAGIC, LABELS_MAGIC, SPLITS, read_idx  # noqa: F401 (re-exported)

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


def load_mnist(split: str = "train", dataset: str = "mnist",
               root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of MNIST or Fashion-MNIST from IDX files."""
    if split not in SPLITS:
        raise DslError(f"unknown split `{split}`", hint="use train or test")
    datasets.dataset_name(dataset)
    arrays = datasets.load_dataset(dataset, split, data_dir(str(root) if root is not None else None))
    return arrays["image"], arrays["label"]


def batches(n: int, batch_size: int, shuffle: bool = False,
            rng: np.random.Generator | None = None, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) in batches; the last one is short unless drop_last."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = (rng or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    if drop_last:
        order = order[:n - n % batch_size]
    return datasets.batches(len(order), batch_size, order)
