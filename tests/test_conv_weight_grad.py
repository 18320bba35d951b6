"""patterns.conv_weight_grad, both formulations (per-sample MatMuls for many output positions,
channels-last patches and one MatMul for few), against a direct loop over the kernel offsets
written here in numpy: float64 in onnx.reference, float32 in onnxruntime (it has no float64 Conv),
for strides, pads, dilations, groups and a symbolic batch."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir import patterns as P
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType
from gradcheck import reference

# (x shape [N, C, H, W], w shape [O, C/g, kh, kw], strides, pads [top, left, bottom, right], dilations, group)
CASES = [
    ((2, 3, 5, 5), (4, 3, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1),    # 25 positions: channels-last patches
    ((2, 3, 12, 11), (4, 3, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1),  # 132 positions: per-sample MatMuls
    ((3, 2, 9, 8), (5, 2, 3, 2), [2, 1], [1, 0, 1, 1], [1, 2], 1),     # 5 x 5 = 25, strided and dilated
    ((2, 2, 20, 19), (3, 2, 3, 3), [2, 2], [1, 1, 0, 1], [1, 1], 1),   # 9 x 10 = 90 positions, strided
    ((2, 4, 6, 6), (6, 2, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 2),     # grouped (always per-sample)
    ((2, 6, 7, 7), (3, 6, 5, 5), [1, 1], [0, 0, 0, 0], [1, 1], 1),     # 3 x 3 positions, a big kernel
]
IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-g{c[5]}" for c in CASES]


def _out_hw(xs, ws, s, p, d):
    return [(xs[2 + i] + p[i] + p[i + 2] - (ws[2 + i] - 1) * d[i] - 1) // s[i] + 1 for i in range(2)]


def expected(x, dy, ws, s, p, d, group):
    """sum over batch and output positions of dy[n, o, y, x] * xpad[n, c, y*s + i*d, x*s + j*d]."""
    o, cg, kh, kw = ws
    ho, wo = dy.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])])
    dw = np.zeros(ws)
    per_group = o // group
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0], j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]]
            for oc in range(o):
                g = oc // per_group
                dw[oc, :, i, j] = np.einsum("nyx,ncyx->c", dy[:, oc], window[:, g * cg:(g + 1) * cg])
    return dw


def _graph(case, batch, dtype="f64"):
    xs, ws, s, p, d, group = case
    g = Graph("dw")
    b = Builder(g)
    x = b.input("x", TensorType(dtype, (batch, *xs[1:])))
    dy = b.input("dy", TensorType(dtype, (batch, ws[0], *_out_hw(xs, ws, s, p, d))))
    g.outputs = [b.op("Identity", [P.conv_weight_grad(b, x, dy, ws, s, p, d, group)])]
    return to_onnx(g)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("batch", ["static", "N"])
def test_weight_gradient_values(case, batch):
    xs, ws, s, p, d, group = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs)
    dy = rng.standard_normal((xs[0], ws[0], *_out_hw(xs, ws, s, p, d)))
    batch = xs[0] if batch == "static" else "N"
    model, model32 = _graph(case, batch), _graph(case, batch, "f32")
    check(model)
    check(model32)
    want = expected(x, dy, ws, s, p, d, group)
    np.testing.assert_allclose(reference(model).run(None, {"x": x, "dy": dy})[0], want, rtol=1e-12, atol=1e-12)
    feeds32 = {"x": x.astype(np.float32), "dy": dy.astype(np.float32)}
    got = ort.InferenceSession(model32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds32)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_formulation_follows_the_number_of_positions():
    few, many = (_graph(CASES[0], "N"), _graph(CASES[1], "N"))
    assert "ReduceSum" not in {n.op_type for n in few.graph.node}  # one MatMul over batch and positions
    assert "Conv" not in {n.op_type for n in few.graph.node}
    assert {"Conv", "ReduceSum"} <= {n.op_type for n in many.graph.node}  # im2col Conv, per-sample sum
