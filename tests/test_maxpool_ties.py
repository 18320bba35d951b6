"""MaxPool's gradient on tied maxima: all of each window's gradient goes to its first maximum in
row-major window order, as PyTorch and TensorFlow route it; checked against numpy written from
that definition, for tiles (the MatMul formulation) and general windows, in both conv lowerings."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import dslc
from dslc.autodiff import vjp
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.core import Graph, TensorType
from dslc.ir.builder import Builder

SOURCE = """
fn pooled_grad(x: f32[2, 3, 6, 7], dy: f32[2, 3, {ho}, {wo}]) {{
    return grad(sum(max_pool2d(x, {pool}, strides={strides}, padding={padding}) * dy), x)
}}
"""


def first_max_grad(x, dy, kernel, strides, pads):
    """Definition: each window sends its dy to the first position holding its maximum."""
    kh, kw = kernel
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])], constant_values=-np.inf)
    dxp = np.zeros_like(xp)
    n, c, ho, wo = dy.shape
    for a in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    window = xp[a, ch, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw]
                    r, q = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
                    dxp[a, ch, i * strides[0] + r, j * strides[1] + q] += dy[a, ch, i, j]
    return dxp[:, :, pads[0]:xp.shape[2] - pads[2], pads[1]:xp.shape[3] - pads[3]]


def tied_input(rng):
    """Small integers: many ties, and whole windows of equal values (zeros, as after a relu)."""
    x = rng.integers(0, 3, (2, 3, 6, 7)).astype(np.float32)
    x[0, 0] = 0.0
    return x


SETTINGS = [  # (pool, strides, padding)
    ((2, 2), (2, 2), "valid"),   # tiles: the MatMul formulation (rows/cols left over)
    ((3, 3), (3, 3), "valid"),
    ((3, 3), (2, 2), "valid"),   # overlapping windows
    ((3, 2), (1, 2), "same"),
]


@pytest.mark.parametrize("lowering", ["conv", "im2col"])
@pytest.mark.parametrize("pool,strides,padding", SETTINGS, ids=[f"{s[0]}-{s[1]}-{s[2]}" for s in SETTINGS])
def test_ties_go_to_the_first_maximum(tmp_path, lowering, pool, strides, padding):
    rng = np.random.default_rng(0)
    x = tied_input(rng)
    path, pads, dy_shape = _write(tmp_path, pool, strides, padding, x)
    dy = rng.standard_normal(dy_shape).astype(np.float32)
    model = dslc.compile(dslc.load(path), "pooled_grad", conv_lowering=lowering)
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "dy": dy})
    np.testing.assert_allclose(got, first_max_grad(x, dy, pool, strides, pads), rtol=1e-6, atol=1e-6)


def test_symbolic_channels_use_the_general_windows_alike():
    b = Builder(Graph("ties"))
    x = b.input("x", TensorType("f64", (1, "C", 4, 4)))
    y = b.op("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]})
    dy = b.input("dy", TensorType("f64", (1, "C", 2, 2)))
    (dx,) = vjp(b, [y], [dy], [x])
    b.graph.outputs = [b.op("Identity", [dx])]
    model = to_onnx(b.graph)
    check(model)
    xs = np.zeros((1, 2, 4, 4))
    xs[0, 1, 1, 1] = xs[0, 1, 0, 1] = 1.0
    dys = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": xs, "dy": dys})
    np.testing.assert_allclose(got, first_max_grad(xs, dys, (2, 2), (2, 2), [0, 0, 0, 0]))


def _same(size, kernel, strides):
    """TF 'same' padding: the total need split in two, the odd one at the end."""
    begin, end = [], []
    for n, k, s in zip(size, kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def _write(tmp_path, pool, strides, padding, x):
    pads = [0, 0, 0, 0] if padding == "valid" else _same(x.shape[2:], pool, strides)
    ho, wo = [(x.shape[2 + i] + pads[i] + pads[i + 2] - pool[i]) // strides[i] + 1 for i in range(2)]
    path = tmp_path / "ties.dsl"
    path.write_text(SOURCE.format(ho=ho, wo=wo, pool=list(pool), strides=list(strides), padding=padding))
    return str(path), pads, (*x.shape[:2], ho, wo)
