"""Datasets: IDX folders, .npz files and the embedded subset; their error messages; batching and
preprocessing."""
from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dslc.diagnostics import DslError
from dslc.runtime.datasets import (EMBEDDED, IMAGES_MAGIC, LABELS_MAGIC, PREPROCESS, batches,
                                   describe_source, epoch_order, load_dataset, preprocess,
                                   require_fields, resolve_source)

# The shared datasets live beside the checkout: <repo>/../shared/data.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file(),
                                  reason=f"shared MNIST/Fashion-MNIST files not present at {SHARED}")
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("DSLC_DATA", raising=False)


def idx_bytes(magic: int, array: np.ndarray, dims=None) -> bytes:
    dims = array.shape if dims is None else dims
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    return head + array.astype(np.uint8).tobytes()


def write_split(folder: Path, split="t10k", n=5, gz=True, n_labels=None, magic=IMAGES_MAGIC,
                size=(28, 28)):
    """Small IDX files (images and labels of one split) in `folder`; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, *size)).astype(np.uint8)
    labels = RNG.integers(0, 10, n if n_labels is None else n_labels).astype(np.uint8)
    ext = ".gz" if gz else ""
    for name, data in ((f"{split}-images-idx3-ubyte", idx_bytes(magic, images)),
                       (f"{split}-labels-idx1-ubyte", idx_bytes(LABELS_MAGIC, labels))):
        (folder / (name + ext)).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


# ------------------------------------------------------------------ IDX folders
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["parent", "folder"])
def test_idx_folder(tmp_path, gz, layout):
    folder = tmp_path / "fashion" if layout == "parent" else tmp_path
    images, labels = write_split(folder, gz=gz)
    for name in ("fashion", "fashion_mnist"):
        got = load_dataset(name, "test", tmp_path)
        assert set(got) == {"image", "label"}
        np.testing.assert_array_equal(got["image"], images)
        np.testing.assert_array_equal(got["label"], labels)
        assert got["image"].dtype == np.uint8 and got["label"].shape == (5,)
    assert describe_source("fashion", tmp_path) == str(folder)


def test_env_var_is_used(tmp_path, monkeypatch):
    images, _ = write_split(tmp_path / "mnist")
    monkeypatch.setenv("DSLC_DATA", str(tmp_path))
    np.testing.assert_array_equal(load_dataset("mnist", "test")["image"], images)
    assert describe_source("mnist") == str(tmp_path / "mnist")


def _corrupt(tmp_path, what):
    folder = tmp_path / "mnist"
    if what == "truncated":
        write_split(folder, gz=False)
        path = folder / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    elif what == "bad magic":
        write_split(folder, magic=2049)
    elif what == "count mismatch":
        write_split(folder, n=5, n_labels=4)
    elif what == "wrong dims":
        write_split(folder, size=(32, 32))
    elif what == "gzip corrupt":
        write_split(folder)
        path = folder / "t10k-labels-idx1-ubyte.gz"
        path.write_bytes(path.read_bytes()[:20])
    elif what == "gzip bad data":
        write_split(folder)
        path = folder / "t10k-images-idx3-ubyte.gz"
        raw = bytearray(path.read_bytes())
        raw[12:40] = b"\xff" * 28
        path.write_bytes(bytes(raw))
    elif what == "missing labels":
        write_split(folder)
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()


@pytest.mark.parametrize("what, message", [
    ("truncated", r"t10k-images-idx3-ubyte is truncated or corrupt: header says \[5, 28, 28\] "
                  r"\(3920 bytes\), the file holds 3820"),
    ("bad magic", r"t10k-images-idx3-ubyte.gz is not an IDX file of the expected kind: "
                  r"magic 2049, expected 2051"),
    ("count mismatch", r"5 test images but 4 labels in t10k-labels-idx1-ubyte.gz"),
    ("wrong dims", r"test images are 32x32, expected 28x28"),
    ("gzip corrupt", r"cannot read .*t10k-labels-idx1-ubyte.gz"),
    ("gzip bad data", r"cannot read .*t10k-images-idx3-ubyte.gz"),
    ("missing labels", r"`t10k-labels-idx1-ubyte` \(.gz or raw\) not found under .*mnist"),
])
def test_idx_errors_name_file_and_problem(tmp_path, what, message):
    _corrupt(tmp_path, what)
    with pytest.raises(DslError, match=message):
        load_dataset("mnist", "test", tmp_path)


def test_source_errors(tmp_path):
    with pytest.raises(DslError, match="MNIST IDX files not found under"):
        load_dataset("fashion", "train", tmp_path)
    with pytest.raises(DslError, match="data path not found: .*nowhere"):
        load_dataset("mnist", "train", tmp_path / "nowhere")
    with pytest.raises(DslError, match="unknown dataset `cifar`"):
        load_dataset("cifar", "train")
    with pytest.raises(DslError, match="unknown split `valid`"):
        load_dataset("mnist", "valid")
    write_split(tmp_path / "fashion")
    with pytest.raises(DslError, match="fashion looks like the Fashion-MNIST folder, but this run "
                                       "asks for MNIST"):
        load_dataset("mnist", "test", tmp_path / "fashion")


# ------------------------------------------------------------------ .npz files
def test_npz_splits(tmp_path):
    x, y = np.zeros((6, 4), np.float32), np.arange(6)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, x_test=x[:2], test_y=y[:2])
    train = load_dataset("mnist", "train", path)
    assert set(train) == {"x", "y"} and train["x"].shape == (6, 4)
    test = load_dataset("mnist", "test", path)
    assert set(test) == {"x", "y"} and test["y"].tolist() == [0, 1]
    assert describe_source("mnist", path) == str(path)
    np.savez(path, x_train=x, y_train=y)
    assert set(load_dataset("mnist", "train", path)) == {"x", "y"}


def test_npz_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(DslError, match="bad.npz is not an .npz file"):
        load_dataset("mnist", "train", bad)
    only_train = tmp_path / "train.npz"
    np.savez(only_train, x=np.zeros(3))
    with pytest.raises(DslError, match="train.npz has no test arrays") as e:
        load_dataset("mnist", "test", only_train)
    assert "x_test or test_x" in e.value.hint
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, x=np.zeros(3), y=np.zeros(4))
    with pytest.raises(DslError, match="different numbers of examples"):
        load_dataset("mnist", "train", uneven)
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("x.npy", b"garbage")
    with pytest.raises(DslError, match="cannot read .*broken.npz"):
        load_dataset("mnist", "train", broken)
    with pytest.raises(DslError, match="train.npz has no field `label`"):
        require_fields(load_dataset("mnist", "train", only_train), ["label"], str(only_train))


# ------------------------------------------------------------------ embedded and real data
def test_embedded_default():
    assert EMBEDDED.is_file() and EMBEDDED.stat().st_size < 4.5e6
    for name, title in (("mnist", "MNIST"), ("fashion_mnist", "Fashion-MNIST")):
        assert resolve_source(name).kind == "embedded"
        assert describe_source(name) == f"embedded {title} subset (5,000 train / 1,000 test)"
        for split, n in (("train", 5000), ("test", 1000)):
            got = load_dataset(name, split)
            assert got["image"].shape == (n, 28, 28) and got["image"].dtype == np.uint8
            assert got["label"].shape == (n,) and got["label"].dtype == np.uint8
            assert np.bincount(got["label"], minlength=10).min() > n // 20  # every class present


@needs_shared
@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_shared_data_and_embedded_agree(name):
    test = load_dataset(name, "test", SHARED)
    assert test["image"].shape == (10000, 28, 28) and test["label"].shape == (10000,)
    train = load_dataset(name, "train", SHARED)
    assert train["image"].shape == (60000, 28, 28)
    embedded = load_dataset(name, "train")
    np.testing.assert_array_equal(embedded["image"], train["image"][:5000])
    np.testing.assert_array_equal(embedded["label"], train["label"][:5000])
    assert describe_source(name, SHARED) == str(SHARED / name)


# ------------------------------------------------------------------ batching and preprocessing
def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_order(100, seed=7, epoch=1)
    assert sorted(a.tolist()) == list(range(100))
    np.testing.assert_array_equal(a, epoch_order(100, seed=7, epoch=1))
    assert a.tolist() != epoch_order(100, seed=7, epoch=2).tolist()
    assert a.tolist() != epoch_order(100, seed=8, epoch=1).tolist()
    with pytest.raises(DslError, match="non-negative"):
        epoch_order(10, seed=-1, epoch=0)


def test_batches_keep_the_last_partial_batch():
    assert [b.tolist() for b in batches(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    order = epoch_order(10, 0, 0)
    got = list(batches(10, 3, order))
    assert [len(b) for b in got] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(got), order)
    with pytest.raises(DslError, match="batch size must be positive"):
        list(batches(10, 0))


def test_preprocess():
    images = np.array([[[0, 255], [51, 102]]], np.uint8)
    assert preprocess(images, ["scale01"]).dtype == np.float32
    np.testing.assert_allclose(preprocess(images, ["scale01", "flatten"]), [[0, 1, 0.2, 0.4]])
    np.testing.assert_allclose(preprocess(images, "scale11")[0, 0], [-1, 1])
    assert preprocess(images, ["scale01", "channels_first"]).shape == (1, 1, 2, 2)
    labels = np.array([3, 0], np.uint8)
    hot = preprocess(labels, ["one_hot"])
    assert hot.dtype == np.float32 and hot.shape == (2, 10) and hot[0, 3] == 1 and hot.sum() == 2
    assert preprocess(labels, ["int64"]).dtype == np.int64
    with pytest.raises(DslError, match="unknown preprocessing step `scale"):
        preprocess(images, ["scale"])
    with pytest.raises(DslError) as e:
        preprocess(images, ["normalize"])
    assert all(name in e.value.hint for name in PREPROCESS)
    with pytest.raises(DslError, match="one_hot expects labels 0..9"):
        preprocess(np.array([10]), ["one_hot"])
