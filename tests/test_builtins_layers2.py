"""Issue 12, second part: reductions over several axes, group_norm, embedding's padding_idx and
bilinear upsample2d: numbers against numpy, gradients against float64 finite differences, and
onnxruntime agreeing with onnx.reference."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dslc
from dslc.emit.onnx_emit import check
from gradcheck import reference

RNG = np.random.default_rng(1212)


def run(prog, target, **feeds):
    model = dslc.compile(prog, target)
    check(model)
    return reference(model).run(None, feeds)


def weights_of(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if "." in i.name}


def directional_check(prog, value_target, grad_target, feeds, names=None, eps=1e-6):
    """<grad, direction> against central differences of the value, float64. `feeds` holds the
    inputs and any weights; `names` those differentiated, in the order the grad target returns."""
    names = names or list(feeds)
    grads = reference(dslc.compile(prog, grad_target)).run(None, feeds)
    dirs = {n: RNG.standard_normal(np.shape(feeds[n])) for n in names}
    ev = reference(dslc.compile(prog, value_target))

    def at(step):
        return float(ev.run(None, {**feeds, **{n: feeds[n] + step * dirs[n] for n in names}})[0])
    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * dirs[n])) for g, n in zip(grads, names, strict=True))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)


def ort_agrees(source, target, int_inputs=()):
    """In float32 (onnxruntime lacks float64 kernels for some ops)."""
    model = dslc.compile(dslc.loads(source.replace("f64", "f32"), "layers2_32.dsl"), target)
    check(model)
    init = {w.name for w in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        shape = [d.dim_value or 2 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = (RNG.integers(0, 5, shape) if i.name in int_inputs
                         else RNG.uniform(-1, 1, shape).astype(np.float32))
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = reference(model).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ reductions over several axes
REDUCE = """
fn reduce(x: f64[2, 3, 4]) {
    return sum(x, axis=[1, 2]), mean(x, axis=[0, -1], keepdims=true), max(x, axis=[1, 2]), min(x, axis=[0, 1]),
           sum(x, axis=[2, 0, 1])
}
fn reduce_loss(x: f64[2, 3, 4]) {
    return sum(sum(x, axis=[1, 2]) ** 2) + sum(mean(x, axis=[0, 2]) ** 3) + sum(max(x, axis=[1, 2]) * 3.0)
           + sum(min(x, axis=[0, -1]) ** 2)
}
fn reduce_grad(x: f64[2, 3, 4]) {
    return grad(reduce_loss(x), x)
}
"""


@pytest.fixture(scope="module")
def reduce_prog():
    return dslc.loads(REDUCE, "reduce.dsl")


def test_reductions_over_several_axes(reduce_prog):
    x = RNG.standard_normal((2, 3, 4))
    got = run(reduce_prog, "reduce", x=x)
    want = [x.sum((1, 2)), x.mean((0, 2), keepdims=True), x.max((1, 2)), x.min((0, 1)), x.sum()]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_reductions_over_several_axes_gradients(reduce_prog):
    x = RNG.standard_normal((2, 3, 4))  # distinct values: max/min have one winner per group
    directional_check(reduce_prog, "reduce_loss", "reduce_grad", {"x": x})


def test_reductions_over_several_axes_onnxruntime():
    ort_agrees(REDUCE, "reduce_grad")
