"""1-D and 3-D pooling (max_pool1d/3d, avg_pool1d/3d, global_avg_pool1d/3d): values and gradients
against numpy written from the definitions (averages do not count padding; a max-pool window sends
its whole gradient to its first maximum in row-major window order), in onnxruntime and in
onnx.reference, on inputs full of ties; with symbolic batch and channels; and a train step with
them and conv3d. (Against torch: tests/test_conformance_torch.py; finite differences of the IR
rules: tests/test_autodiff_ops.py.)"""
from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest

import dslc
from dslc.emit.onnx_emit import check
from gradcheck import reference


def windows(x, kernel, strides, pads):
    """(output index, window slices of the padded input) for each output position."""
    n = len(kernel)
    out = [(x.shape[2 + i] + pads[i] + pads[i + n] - kernel[i]) // strides[i] + 1 for i in range(n)]
    for o in itertools.product(*map(range, out)):
        yield o, tuple(slice(o[i] * strides[i], o[i] * strides[i] + kernel[i]) for i in range(n))


def pooled(x, kernel, strides, pads, kind):
    """Forward pooling and its VJP with a given dy, from the definitions."""
    n = len(kernel)
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)]
    xp = np.pad(x, widths, constant_values=-np.inf if kind == "max" else np.nan)
    items = list(windows(x, kernel, strides, pads))
    out_shape = x.shape[:2] + tuple(np.max([o for o, _ in items], axis=0) + 1)
    y = np.zeros(out_shape)

    def vjp(dy):
        dxp = np.zeros(xp.shape)
        for o, w in items:
            for a, c in np.ndindex(*x.shape[:2]):
                win = xp[(a, c) + w]
                if kind == "max":
                    first = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum
                    dxp[(a, c) + tuple(s.start + f for s, f in zip(w, first))] += dy[(a, c) + o]
                else:
                    inside = ~np.isnan(win)
                    dxp[(a, c) + w] += inside * dy[(a, c) + o] / inside.sum()
        return dxp[(slice(None), slice(None)) + tuple(slice(lo, xp.shape[2 + i] - hi) for i, (lo, hi)
                                                        in enumerate(widths[2:]))]
    for o, w in items:
        win = xp[(slice(None), slice(None)) + w].reshape(*x.shape[:2], -1)
        y[(slice(None), slice(None)) + o] = win.max(-1) if kind == "max" else np.nanmean(win, -1)
    return y, vjp


def tied(rng, shape):
    x = rng.integers(0, 3, shape).astype(np.float32)
    x[0, 0] = 0.0  # whole windows of equal values, as after a relu
    return x


def _dims(shape):
    return ", ".join(map(str, shape))


CASES = [  # (builtin, x shape, arguments, kernel, strides, pads)
    ("max_pool1d", (2, 3, 9), "2", [2], [2], [0, 0]),
    ("max_pool1d", (2, 3, 9), "3, strides=2, padding=same", [3], [2], [1, 1]),
    ("max_pool1d", (2, 3, 9), "3, strides=1, padding=[0, 2]", [3], [1], [0, 2]),
    ("avg_pool1d", (2, 3, 9), "3, strides=2, padding=1", [3], [2], [1, 1]),
    ("max_pool3d", (2, 2, 4, 5, 6), "2", [2, 2, 2], [2, 2, 2], [0] * 6),
    ("max_pool3d", (2, 2, 4, 5, 6), "[3, 2, 3], strides=[2, 1, 2], padding=same", [3, 2, 3], [2, 1, 2],
     [0, 0, 0, 1, 1, 1]),  # TF same: the odd pad at the end
    ("max_pool3d", (1, 2, 4, 4, 4), "3, strides=1, padding=1", [3, 3, 3], [1, 1, 1], [1] * 6),
    ("avg_pool3d", (2, 2, 4, 5, 6), "2", [2, 2, 2], [2, 2, 2], [0] * 6),
    ("avg_pool3d", (2, 2, 4, 5, 6), "[3, 2, 3], strides=[2, 1, 2], padding=same", [3, 2, 3], [2, 1, 2],
     [0, 0, 0, 1, 1, 1]),  # TF same: the odd pad at the end
    ("avg_pool3d", (1, 2, 4, 4, 4), "3, strides=2, padding=[1, 0, 1, 0, 1, 1]", [3, 3, 3], [2, 2, 2],
     [1, 0, 1, 0, 1, 1]),
    ("max_pool3d", (1, 2, 5, 7, 6), "[2, 1, 2], strides=3", [2, 1, 2], [3, 3, 3], [0] * 6),  # gaps
    ("avg_pool3d", (1, 2, 5, 7, 6), "[2, 1, 2], strides=[3, 2, 1]", [2, 1, 2], [3, 2, 1], [0] * 6),
    ("max_pool1d", (2, 3, 11), "4, strides=3, padding=[1, 2]", [4], [3], [1, 2]),
]


@pytest.mark.parametrize("runtime", ["onnxruntime", "reference"])
@pytest.mark.parametrize("name,shape,args,kernel,strides,pads", CASES, ids=[f"{c[0]}({c[2]})" for c in CASES])
def test_pool_values_and_gradients(tmp_path, runtime, name, shape, args, kernel, strides, pads):
    rng = np.random.default_rng(3)
    x = tied(rng, shape)
    y_want, vjp = pooled(x.astype(np.float64), kernel, strides, pads, name[:3])
    dy = rng.standard_normal(y_want.shape).astype(np.float32)
    src = (f"fn probe(x: f32[{_dims(shape)}], dy: f32[{_dims(y_want.shape)}]) {{\n"
           f"    y = {name}(x, {args})\n    return y, grad(sum(y * dy), x)\n}}\n")
    model = dslc.compile(dslc.loads(src, "pools.dsl"), "probe")
    check(model)
    if runtime == "onnxruntime":
        y, dx = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x, "dy": dy})
    else:
        y, dx = reference(model).run(None, {"x": x, "dy": dy})
    np.testing.assert_allclose(y, y_want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, vjp(dy.astype(np.float64)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial", [1, 3])
def test_global_average_pools(spatial):
    shape = (2, 3) + (4, 5, 2)[:spatial]
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    src = (f"fn probe(x: f32[{_dims(shape)}]) {{\n    y = global_avg_pool{spatial}d(x)\n"
           f"    return y, grad(sum(y * y), x)\n}}\n")
    model = dslc.compile(dslc.loads(src, "gap.dsl"), "probe")
    y, dx = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    mean = x.reshape(2, 3, -1).mean(-1)
    np.testing.assert_allclose(y, mean, rtol=1e-6)
    np.testing.assert_allclose(dx, np.broadcast_to((2 * mean / x[0, 0].size).reshape(2, 3, *[1] * spatial), shape),
                               rtol=1e-5)


def test_pool_3d_float64_step_gradients_match_finite_differences():
    """A whole model with max_pool3d and avg_pool3d: its weight gradient by float64 finite differences."""
    src = """
model Vol(x: f64[2, 2, 4, 4, 4]) -> y {
    h = max_pool3d(x * 1.0, 2, strides=1, padding=same) |> avg_pool3d([2, 3, 2], strides=2, padding=1)
    y = dense(flatten(h), 3)
}
fn loss(x: f64[2, 2, 4, 4, 4]) { return sum(Vol(x).y ^ 2) }
fn loss_grad(x: f64[2, 2, 4, 4, 4]) {
    gx, gw = grad(loss(x), [x, Vol.y.weight])
    return gx, gw
}
"""
    prog = dslc.loads(src, "vol.dsl")
    rng = np.random.default_rng(5)
    x = (rng.permutation(256) * 0.1 + rng.uniform(0, 0.02, 256)).reshape(2, 2, 4, 4, 4)  # no ties
    value, grads = reference(dslc.compile(prog, "loss")), reference(dslc.compile(prog, "loss_grad"))
    w_name = "Vol.y.weight"
    w = next(i for i in dslc.compile(prog, "loss").graph.initializer if i.name == w_name)
    from onnx import numpy_helper
    w = numpy_helper.to_array(w)
    gx, gw = grads.run(None, {"x": x, w_name: w})
    tx, tw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    eps = 1e-6

    def at(s):
        return float(value.run(None, {"x": x + s * tx, w_name: w + s * tw})[0])
    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = float(np.sum(gx * tx) + np.sum(gw * tw))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)


STEP = """
model Vol(x: f32[N, 2, 6, 8, 8]) -> y {
    c = conv3d(x, 4, kernel=3, padding=same, activation=relu) |> max_pool3d(2)
    o = max_pool3d(c, 3, strides=2, padding=1) |> avg_pool3d([2, 1, 2], strides=[1, 3, 2])
    y = dense(concat(global_avg_pool3d(c), flatten(o), axis=1), 3)
}
model Seq(x: f32[N, 3, 20]) -> y {
    y = dense(flatten(max_pool1d(x, 3, strides=2, padding=same) |> avg_pool1d(2)), 2)
}
step train(v: f32[N, 2, 6, 8, 8], s: f32[N, 3, 20], t: f32[N, 3]) updates Vol, Seq using adam() {
    minimize mse(Vol(v), t) + mean(Seq(s) ^ 2)
}
"""


def test_a_train_step_with_a_symbolic_batch_passes_the_checks_and_agrees():
    """The rules' Reshapes keep N symbolic (0 = copy); strict shape inference and both runtimes agree."""
    model = dslc.compile(dslc.loads(STEP, "step.dsl"), "train")
    check(model)
    rng = np.random.default_rng(6)
    feeds = {"v": rng.standard_normal((3, 2, 6, 8, 8)).astype(np.float32),
             "s": rng.standard_normal((3, 3, 20)).astype(np.float32), "t": rng.standard_normal((3, 3)).astype(np.float32)}
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = reference(model).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]}),
    ("MaxPool", {"kernel_shape": [3, 2, 3], "strides": [2, 1, 2], "pads": [1, 0, 1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 2, 3], "strides": [2, 1, 2], "pads": [1, 0, 1, 1, 1, 1]}),
], ids=["max-tiles", "max-windows", "avg"])
def test_symbolic_batch_and_channels(op, attrs):
    """The IR rules on [N, C, D, H, W] with N and C unknown until run time."""
    from dslc.autodiff import vjp
    from dslc.emit.onnx_emit import to_onnx
    from dslc.ir.builder import Builder
    from dslc.ir.core import Graph, TensorType
    b = Builder(Graph("sym"))
    x = b.input("x", TensorType("f32", ("N", "C", 4, 5, 6)))
    y = b.op(op, [x], {**attrs, **({"count_include_pad": 0} if op == "AveragePool" else {})})
    dy = b.input("dy", TensorType("f32", ("N", "C", *y.shape[2:])))
    (dx,) = vjp(b, [y], [dy], [x])
    b.graph.outputs = [b.op("Identity", [y]), b.op("Identity", [dx])]
    model = to_onnx(b.graph)
    check(model)
    rng = np.random.default_rng(7)
    xs = tied(rng, (2, 3, 4, 5, 6))
    kind = "max" if op == "MaxPool" else "avg"
    want_y, vjp_np = pooled(xs.astype(np.float64), attrs["kernel_shape"], attrs["strides"],
                            attrs.get("pads", [0] * 6), kind)
    dys = rng.standard_normal(want_y.shape).astype(np.float32)
    got_y, got_dx = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": xs, "dy": dys})
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_dx, vjp_np(dys.astype(np.float64)), rtol=1e-5, atol=1e-6)
