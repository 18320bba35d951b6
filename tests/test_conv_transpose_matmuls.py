"""ConvTranspose as one batch-folded GEMM plus a 0/1 col2im MatMul (patterns.conv_transpose2d_matmuls,
chosen per shape by patterns.conv_transpose_as_matmuls): the same values as ONNX ConvTranspose in
onnxruntime and onnx.reference, float64 gradients of the formulation by finite differences, and a
spec whose layer takes the new path giving the same loss and gradients as with ConvTranspose."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import dslc
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir import patterns as P
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType
from gradcheck import Spec, dot_check, reference

# (x shape, w shape [Cin, Cout, kh, kw], strides, pads [top, left, bottom, right], dilations, output_padding)
CASES = [
    ((2, 8, 3, 3), (8, 4, 5, 5), [1, 1], [0, 0, 0, 0], [1, 1], [0, 0]),  # the ACGAN generator's up1, small
    ((2, 6, 3, 3), (6, 4, 5, 5), [2, 2], [1, 1, 2, 2], [1, 1], [0, 0]),  # its up2 (padding=same), small
    ((2, 3, 4, 3), (3, 2, 4, 3), [2, 3], [1, 0, 1, 0], [1, 1], [0, 0]),
    ((1, 4, 2, 3), (4, 3, 2, 3), [1, 2], [0, 1, 1, 1], [2, 1], [0, 1]),
    ((3, 2, 5, 4), (2, 1, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1], [1, 1]),
]
IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}" for c in CASES]


def _out_hw(x, w, s, p, d, op):
    return [(x[2 + i] - 1) * s[i] + (w[2 + i] - 1) * d[i] + 1 + op[i] - p[i] - p[i + 2] for i in range(2)]


def _graphs(case, dtype="f32", batch=None):
    """(ConvTranspose graph, matmuls graph): x, w, bias -> y."""
    xs, ws, s, p, d, op = case
    out = []
    for matmuls in (False, True):
        g = Graph("ct")
        b = Builder(g)
        x = b.input("x", TensorType(dtype, (batch or xs[0], *xs[1:])))
        w = b.input("w", TensorType(dtype, ws))
        bias = b.input("bias", TensorType(dtype, (ws[1],)))
        if matmuls:
            y = P.conv_transpose2d_matmuls(b, x, w, bias, s, p, d, _out_hw(xs, ws, s, p, d, op))
        else:
            y = b.op("ConvTranspose", [x, w, bias], {"kernel_shape": list(ws[2:]), "strides": s, "pads": p,
                                                    "dilations": d, "output_padding": op})
        g.outputs = [b.op("Identity", [y])]
        out.append(to_onnx(g))
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("batch", [None, "N"])
def test_same_values_as_conv_transpose(case, batch):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(case[0]), "w": rng.standard_normal(case[1]), "bias": rng.standard_normal(case[1][1])}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    before, after = _graphs(case, batch=batch)
    check(after)
    want = ort.InferenceSession(before.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference(after).run(None, feeds)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_finite_differences(case):
    xs, ws, s, p, d, op = case

    def fn(b, args):
        x, w, bias = args
        return [P.conv_transpose2d_matmuls(b, x, w, bias, s, p, d, _out_hw(xs, ws, s, p, d, op))]
    result = dot_check(fn, [Spec(xs, declared=("N", *xs[1:])), Spec(ws), Spec((ws[1],))])
    assert result.close(), (result.fd, result.analytic)


def test_rule_picks_few_pixels_many_channels():
    g = Graph("rule")
    b = Builder(g)
    grid = b.input("x", TensorType("f32", ("N", 384, 3, 3)))
    assert P.conv_transpose_as_matmuls(grid, (384, 192, 5, 5), [1, 1], [0] * 4, [1, 1], (7, 7))  # ACGAN up1: 49 pixels, 384 channels
    bn1 = b.input("y", TensorType("f32", ("N", 192, 7, 7)))
    assert P.conv_transpose_as_matmuls(bn1, (192, 96, 5, 5), [2, 2], [1, 1, 2, 2], [1, 1], (14, 14))  # up2: 4 x 49 pixels
    bn2 = b.input("z", TensorType("f32", ("N", 96, 14, 14)))
    assert not P.conv_transpose_as_matmuls(bn2, (96, 1, 5, 5), [2, 2], [1, 1, 2, 2], [1, 1], (28, 28))  # 4 x 196 pixels
    assert not P.conv_transpose_as_matmuls(bn1, (192, 96, 5, 5), [2, 2], [1, 1, 2, 2], [1, 1], (13, 13))  # phases uneven
    assert not P.conv_transpose_as_matmuls(grid, (384, 192, 5, 5), [1, 1], [0] * 4, [1, 1], (7, 7), group=2)


SOURCE = """
model Up(z: f32[N, 64, 2, 2]) -> y {
    y = conv2d_transpose(z, 6, kernel=3, strides=1, padding=valid, activation=relu)   # [N, 6, 4, 4]
}
fn loss(z: f32[N, 64, 2, 2]) { return sum(Up(z).y ^ 2) }
fn loss_grad(z: f32[N, 64, 2, 2]) {
    gz, gw, gb = grad(loss(z), [z, Up.y.weight, Up.y.bias])
    return loss(z), gz, gw, gb
}
"""


def test_spec_takes_the_matmuls_and_agrees(monkeypatch):
    prog = dslc.loads(SOURCE, "up.dsl")
    after = dslc.compile(prog, "loss_grad")
    assert not any(n.op_type == "ConvTranspose" for n in after.graph.node)
    monkeypatch.setattr(P, "conv_transpose_as_matmuls", lambda *a, **k: False)
    before = dslc.compile(prog, "loss_grad")
    assert any(n.op_type == "ConvTranspose" for n in before.graph.node)
    check(after)
    z = np.random.default_rng(2).standard_normal((3, 64, 2, 2)).astype(np.float32)
    want = ort.InferenceSession(before.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z})
    got = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z})
    ref = reference(after).run(None, {"z": z})
    for a, b, c in zip(want, got, ref, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strides", [[1, 1], [2, 2]])
def test_conv_input_gradient_takes_the_matmuls(strides):
    """A convolution with many output channels over few pixels: its input gradient (a ConvTranspose
    of dy) is built as MatMuls by the same rule; float64 finite differences in onnx.reference."""
    def fn(b, args):
        x, w = args
        return [b.op("Conv", [x, w], {"kernel_shape": [3, 3], "strides": strides, "pads": [1, 1, 1, 1]})]
    result = dot_check(fn, [Spec((2, 3, 4, 4), declared=("N", 3, 4, 4)), Spec((56, 3, 3, 3))])
    assert result.close(), (result.fd, result.analytic)
    ops = {n.op for n in result.graph.nodes}
    assert "ConvTranspose" not in ops and "MatMul" in ops
