"""Runtime layer: sessions and checked feeds, weight files, IDX reading, image grids."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dslc.diagnostics import DslError
from dslc.runtime import (batches, cuda_available, data_dir, deprocess, load_mnist, load_weights,
                          make_session, read_idx, run_model, save_grid, save_weights)
from dslc.runtime.data import IMAGES_MAGIC, LABELS_MAGIC

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def dense_relu() -> onnx.ModelProto:
    """y = relu(x @ w + b) with x: f32[N, 4], w and b initializers."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")]
    graph = helper.make_graph(nodes, "dense_relu", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def image_and_label() -> onnx.ModelProto:
    """Two inputs sharing the symbol N: img f32[N, 1, 28, 28], lab i64[N]; outputs their sums."""
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 1, 28, 28])
    lab = helper.make_tensor_value_info("lab", TensorProto.INT64, ["N"])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [])
    t = helper.make_tensor_value_info("t", TensorProto.INT64, [])
    nodes = [helper.make_node("ReduceSum", ["img"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["lab"], ["t"], keepdims=0)]
    graph = helper.make_graph(nodes, "two_inputs", [img, lab], [s, t])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


# ------------------------------------------------------------------ sessions
def test_run_model_cpu_matches_numpy():
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    out = run_model(dense_relu(), {"x": x}, device="cpu")
    np.testing.assert_allclose(out["y"], np.maximum(x @ W + B, 0), rtol=1e-5, atol=1e-6)


def test_run_model_from_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(dense_relu(), path)
    x = np.ones((2, 4), np.float32)
    out = run_model(path, {"x": x}, device="cpu")
    np.testing.assert_allclose(out["y"], np.maximum(x @ W + B, 0), rtol=1e-5, atol=1e-6)


def test_auto_device_is_quiet(capfd):
    x = np.zeros((1, 4), np.float32)
    out = run_model(dense_relu(), {"x": x}, device="auto")
    np.testing.assert_allclose(out["y"], np.maximum(B, 0)[None], rtol=1e-6)
    sess = make_session(dense_relu(), "auto")
    assert sess.get_providers()[0] == ("CUDAExecutionProvider" if cuda_available()
                                       else "CPUExecutionProvider")
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_cuda_request_without_cuda_is_a_clear_error(capfd):
    if cuda_available():
        pytest.skip("CUDA is usable here")
    with pytest.raises(DslError, match="CUDA was requested") as e:
        make_session(dense_relu(), "cuda")
    assert "--device cpu" in e.value.render()
    assert capfd.readouterr().err == ""


def test_unknown_device():
    with pytest.raises(DslError, match="unknown device `gpu`"):
        make_session(dense_relu(), "gpu")


# ------------------------------------------------------------------ feed checks
@pytest.mark.parametrize("feeds, message", [
    ({"img": np.zeros((2, 1, 28, 28), np.float32)}, r"missing input `lab`: i64\[N\]"),
    ({"img": np.zeros((2, 1, 28, 28), np.float32), "lab": np.zeros(2, np.int64),
      "imgs": np.zeros(1, np.float32)}, "unknown input 'imgs'"),
    ({"img": np.zeros((2, 1, 28, 28), np.float64), "lab": np.zeros(2, np.int64)},
     r"input `img` expects f32\[N, 1, 28, 28\], got dtype float64"),
    ({"img": np.zeros((2, 28, 28), np.float32), "lab": np.zeros(2, np.int64)},
     r"input `img` expects f32\[N, 1, 28, 28\], got rank 3"),
    ({"img": np.zeros((2, 1, 28, 27), np.float32), "lab": np.zeros(2, np.int64)},
     r"input `img` expects f32\[N, 1, 28, 28\], got shape \[2, 1, 28, 27\] \(axis 3"),
    ({"img": np.zeros((2, 1, 28, 28), np.float32), "lab": np.zeros(3, np.int64)},
     r"input `lab` expects i64\[N\], got shape \[3\]: `N` is 3 here but 2 in input `img`"),
])
def test_feed_errors_name_the_input(feeds, message):
    with pytest.raises(DslError, match=message):
        run_model(image_and_label(), feeds, device="cpu")


def test_feeds_ok_with_symbolic_dims():
    img = RNG.random((3, 1, 28, 28), dtype=np.float32)
    out = run_model(image_and_label(), {"img": img, "lab": np.arange(3)}, device="cpu")
    assert out["t"] == 3
    np.testing.assert_allclose(out["s"], img.sum(dtype=np.float64), rtol=1e-5)


# ------------------------------------------------------------------ weights
def test_weights_override():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    w2 = np.full((4, 3), 0.5, np.float32)
    model = dense_relu()
    out = run_model(model, {"x": x}, device="cpu", weights={"w": w2})
    np.testing.assert_allclose(out["y"], np.maximum(x @ w2 + B, 0), rtol=1e-5, atol=1e-6)
    # The caller's model is untouched.
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), W)


def test_weights_unknown_name_and_bad_shape():
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(DslError, match="none of the weights.*wx") as e:  # the wrong file altogether
        run_model(dense_relu(), {"x": x}, device="cpu", weights={"wx": W})
    assert "b, w" in e.value.render()
    # A weights file with more weights than the graph uses (a whole trained model) is fine.
    out = run_model(dense_relu(), {"x": x}, device="cpu", weights={"wx": W, "b": np.ones(3, np.float32)})
    np.testing.assert_array_equal(out["y"], np.ones((1, 3), np.float32))
    with pytest.raises(DslError, match=r"`b` has shape \[4\], the model expects \[3\]"):
        run_model(dense_relu(), {"x": x}, device="cpu", weights={"b": np.zeros(4, np.float32)})


def test_save_and_load_weights_roundtrip(tmp_path):
    weights = {"conv1.w": RNG.standard_normal((2, 1, 3, 3)).astype(np.float32),
               "file": np.arange(3, dtype=np.int64), "step": np.array(7, np.int64)}
    path = tmp_path / "sub" / "w.npz"
    save_weights(path, weights)
    save_weights(path, weights)  # overwriting an existing file works too
    back = load_weights(path)
    assert sorted(back) == sorted(weights)
    for k, v in weights.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype
    assert [p.name for p in path.parent.iterdir()] == ["w.npz"]  # no temp file left behind


def test_load_weights_errors(tmp_path):
    with pytest.raises(DslError, match="not found"):
        load_weights(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DslError, match="cannot read weights"):
        load_weights(bad)


# ------------------------------------------------------------------ IDX files
def write_idx(path: Path, magic: int, array: np.ndarray, gz: bool, dims=None) -> Path:
    dims = array.shape if dims is None else dims
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader(tmp_path, gz):
    images = RNG.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    folder = tmp_path / "mnist"
    folder.mkdir()
    ext = ".gz" if gz else ""
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", IMAGES_MAGIC, images, gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", LABELS_MAGIC, labels, gz)
    got_images, got_labels = load_mnist("test", "mnist", root=tmp_path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.shape == (5,)


def test_idx_bad_magic_and_truncated(tmp_path):
    labels = np.arange(4, dtype=np.uint8)
    bad = write_idx(tmp_path / "bad", 2050, labels, gz=False)
    with pytest.raises(DslError, match="magic 2050, expected 2049"):
        read_idx(bad, LABELS_MAGIC)
    short = write_idx(tmp_path / "short.gz", LABELS_MAGIC, labels, gz=True, dims=(5,))
    with pytest.raises(DslError, match="truncated or corrupt"):
        read_idx(short, LABELS_MAGIC)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(DslError, match="cannot read"):
        read_idx(broken, LABELS_MAGIC)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(DslError, match="not found under"):
        load_mnist("train", "fashion", root=tmp_path)
    with pytest.raises(DslError, match="unknown split"):
        load_mnist("valid", root=tmp_path)
    with pytest.raises(DslError, match="data directory not found"):
        data_dir(str(tmp_path / "nowhere"))


def test_data_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("DSLC_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir(str(tmp_path / "..")) == tmp_path / ".."  # explicit wins


# The shared datasets live beside the checkout: <repo>/../shared/data.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "mnist" / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="shared MNIST files not present")
def test_real_mnist(monkeypatch):
    monkeypatch.delenv("DSLC_DATA", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert data_dir().resolve() == SHARED.resolve()
    images, labels = load_mnist("train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.sum() == 60000 and counts.min() > 5000
    test_images, test_labels = load_mnist("test")
    assert test_images.shape == (10000, 28, 28) and len(test_labels) == 10000


# ------------------------------------------------------------------ batches and images
def test_batches():
    got = list(batches(10, 4, shuffle=False))
    assert [b.tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(list(batches(10, 4, drop_last=True))) == 2
    shuffled = np.concatenate(list(batches(10, 3, True, np.random.default_rng(1))))
    assert sorted(shuffled.tolist()) == list(range(10))
    assert shuffled.tolist() != list(range(10))


def test_save_grid_size_and_pixels(tmp_path):
    from PIL import Image

    images = np.zeros((5, 1, 28, 28), np.float32)
    images[0] = 1.0
    path = save_grid(tmp_path / "grid.png", images, nrow=3, pad=2)
    with Image.open(path) as im:
        assert im.mode == "L"
        # 3 per row, 2 rows: 2 + 3 * (28 + 2) wide, 2 + 2 * (28 + 2) high.
        assert im.size == (92, 62)
        px = np.asarray(im)
    assert px[2, 2] == 255 and px[0, 0] == 0 and px[2, 32] == 0
    path = save_grid(tmp_path / "sq.png", np.full((4, 8, 8), 0.5), pad=0)
    with Image.open(path) as im:
        assert im.size == (16, 16)
        assert np.asarray(im)[0, 0] == 128


def test_save_grid_rejects_bad_shape(tmp_path):
    with pytest.raises(DslError, match="save_grid expects"):
        save_grid(tmp_path / "x.png", np.zeros((2, 3, 8, 8)))


def test_deprocess():
    x = RNG.standard_normal((3, 8, 8)) * 40 + 7
    y = deprocess(x)
    assert y.min() >= 0 and y.max() <= 1 and y.shape == x.shape
    expected = np.clip((x - x.mean()) / (x.std() + 1e-7) * 0.1 + 0.5, 0, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
    assert np.all(deprocess(np.ones(4)) == 0.5)  # a constant image is mid-gray, not NaN
