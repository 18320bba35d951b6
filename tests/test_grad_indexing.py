"""Indexing, slicing and `repeat` in the language, with their gradients: float64 finite differences
on the compiled graphs (onnx.reference), onnxruntime agreeing with onnx.reference, full checks.

Each program returns a scalar `loss` first, then `grad(loss, ...)` of its float inputs. Axes named
N are fed with 5 rows; an i64 input takes the values listed in RUNS."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import dslc
from dslc.emit.onnx_emit import check
from gradcheck import reference

SOURCE = """
fn first_row(x: f64[N, 6]) { loss = sum(x[0] * x[0])
  return loss, grad(loss, x) }
fn last_row(x: f64[N, 6]) { loss = sum(sin(x[-1]) * x[-2])
  return loss, grad(loss, x) }
fn column(x: f64[N, 6]) { loss = sum(x[:, 2] * x[:, -1])
  return loss, grad(loss, x) }
fn inner(x: f64[N, 6]) { loss = sum(x[1:N-1, 1:5] ^ 3)
  return loss, grad(loss, x) }
fn all_but_last(x: f64[N, 6]) { y = x[:x.shape[0] - 1]
  loss = sum(y * cos(y))
  return loss, grad(loss, x) }
fn strided(x: f64[N, 6]) { loss = sum(x[::2] ^ 3) + sum(x[::-2, 1::3] ^ 2) + sum(x[N-1:0:-3, -1] * x[1:3, 0])
  return loss, grad(loss, x) }
fn negative_bounds(x: f64[N, 6]) { loss = sum(x[-4:-1, -5:-1:2] ^ 3) + sum(x[-2:] ^ 2)
  return loss, grad(loss, x) }
fn static_strides(x: f64[5, 6]) { loss = sum(x[4:0:-2, ::-1] ^ 3) + sum(x[1::3, -2::-4] ^ 2)
  return loss, grad(loss, x) }
fn input_bound(x: f64[N, 6], n: i64) { loss = sum(x[:n, n:] ^ 3) + sum(x[n - 1] ^ 2)
  return loss, grad(loss, x) }
fn new_axes(x: f64[N, 6]) { y = x[None, :, 2] * x[:, None, 1] + sum(x[..., None][:, 1:3, 0] * x[:, None, ..., None][:, 0, 2:4, 0])
  loss = sum(y ^ 3)
  return loss, grad(loss, x) }
fn second_order(x: f64[N, 6]) { gx = grad(sum(x[1:N-1, ::2] ^ 3), x)
  loss = sum(gx * gx * x)
  return loss, grad(loss, x) }
fn repeat_constant(x: f64[N, 6]) { y = x
  repeat 3 { y = sin(y) * x }
  loss = sum(y)
  return loss, grad(loss, x) }
fn repeat_run_time(x: f64[N, 6], w: f64[6], n: i64) { h = 0 * x
  y = x
  repeat n { y = tanh(y * w + x)
    h = h + y[:, ::-1] }
  loss = sum(h * y)
  return loss, grad(loss, x), grad(loss, w) }
fn repeat_nested(x: f64[N, 6]) { y = x
  repeat 2 { z = y
    repeat 2 { z = sin(z) + y }
    y = z * x }
  loss = sum(y)
  return loss, grad(loss, x) }
fn repeat_second_order(x: f64[N, 6]) { y = x
  repeat 2 { y = sin(y) * x }
  gx = grad(sum(y), x)
  loss = sum(gx * gx)
  return loss, grad(loss, x) }
fn repeat_random(x: f64[N, 6]) { y = x
  repeat 2 { y = y * random_uniform(like=y, low=0.5, high=1.5) + x }
  loss = sum(y * y)
  return loss, grad(loss, x) }
fn repeat_moving_bound(x: f64[N, 6]) { y = x
  k = x.shape[0] - 1
  repeat 3 { y = y * x + 0.1 * sum(y[k:] ^ 2) - 0.1 * sum(y[:k])
    k = k - 1 }
  loss = sum(y * y)
  return loss, grad(loss, x) }
fn repeat_rotate(x: f64[N, 6]) { y = x
  k = x.shape[0] - 4
  repeat 3 { y = sin(concat(y[k:], y[:k], axis=0)) * x   # rows rotated by k, a run-time amount
    k = k + 1 }
  loss = sum(y * y)
  return loss, grad(loss, x) }
fn repeat_grad_inside(x: f64[N, 6]) { y = x
  repeat 2 { gy = grad(sum(sin(y)[1:]), y)
    z = y
    repeat 2 { z = z * cos(y) }
    y = z + gy }
  loss = sum(y)
  return loss, grad(loss, x) }
model Cell(x: f64[N, 6]) -> h {
  h = dense(x, 6, activation=tanh)
  repeat 3 { h = dense(h, 6, activation=tanh) + x }
}
fn repeat_weights(x: f64[N, 6]) { loss = sum(Cell(x) ^ 2)
  gx, gw, gb = grad(loss, [x, Cell.h_2.weight, Cell.h_2.bias])
  return loss, gx, gw, gb }
"""
TARGETS = ["first_row", "last_row", "column", "inner", "all_but_last", "strided", "negative_bounds",
           "static_strides", "input_bound", "new_axes", "second_order", "repeat_constant", "repeat_run_time",
           "repeat_nested", "repeat_second_order", "repeat_random", "repeat_moving_bound", "repeat_rotate",
           "repeat_grad_inside"]
RUNS = {"input_bound": [1, 2, 4], "repeat_run_time": [1, 3, 0]}


@pytest.fixture(scope="module")
def prog():
    return dslc.loads(SOURCE, "indexing.dsl")


def _feeds(model, rng, n=None):
    feeds = {}
    for v in model.graph.input:
        dims = [d.dim_value or 5 for d in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.elem_type == 7:  # an i64 input: the seed, or the count under test
            feeds[v.name] = np.asarray(0 if v.name == "seed" else n)
        else:
            feeds[v.name] = rng.uniform(-1, 1, dims)
    return feeds


def _check_program(model, n=None, order_tol=1e-6):
    check(model)
    rng = np.random.default_rng(0)
    point = _feeds(model, rng, n)
    floats = [k for k, v in point.items() if v.dtype == np.float64]
    run = reference(model)
    ref = run.run(None, point) if n != 0 else None  # (onnx.reference cannot stack zero Loop passes)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, point)
    for a, r in zip(got, ref or got):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
    # the gradient outputs against central differences of the loss, in a random direction
    direction = {k: rng.standard_normal(point[k].shape) for k in floats}
    eps = 1e-6
    loss_at = [sess.run(None, {**point, **{k: point[k] + s * eps * direction[k] for k in floats}})[0]
               for s in (1, -1)]
    numeric = float(loss_at[0] - loss_at[1]) / (2 * eps)
    grads = got[1:1 + len(floats)]
    analytic = sum(float(np.sum(g * direction[k])) for g, k in zip(grads, floats))
    roundoff = 1e-15 * abs(float(got[0])) / eps  # the loss's float64 rounding (~1e-16 relative) over 2 eps, x20
    assert analytic == pytest.approx(numeric, rel=order_tol, abs=max(1e-8, roundoff))


@pytest.mark.parametrize("target", TARGETS)
def test_gradient(prog, target):
    model = dslc.compile(prog, target)
    for n in RUNS.get(target, [None]):
        _check_program(model, n)


def test_gradient_of_weights_read_inside_a_repeat(prog):
    model = dslc.compile(prog, "repeat_weights")
    check(model)
    rng = np.random.default_rng(1)
    point = _feeds(model, rng)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    loss, gx, gw, gb = sess.run(None, point)
    for a, r in zip((loss, gx, gw, gb), reference(model).run(None, point)):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
    # the weight gradients against differences in the initializers themselves
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    eps = 1e-6
    for name, g in (("Cell.h_2.weight", gw), ("Cell.h_2.bias", gb)):
        d = rng.standard_normal(inits[name].shape)
        at = []
        for s in (1, -1):
            m = model.__class__()
            m.CopyFrom(model)
            for t in m.graph.initializer:
                if t.name == name:
                    t.CopyFrom(numpy_helper.from_array(inits[name] + s * eps * d, name))
            at.append(ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                      .run(None, point)[0])
        assert float(np.sum(g * d)) == pytest.approx(float(at[0] - at[1]) / (2 * eps), rel=1e-6)


def test_shapes_of_run_time_slices(prog):
    model = dslc.compile(dslc.loads("""
fn f(x: f32[N, 6]) { return x[1:N-1], x[:x.shape[0] - 1], x[-1:], x[::-1], x[None, :, 2], x[..., None] }
""", "s.dsl"), "f")
    dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert dims == [["N-2", 6], ["N-1", 6], [1, 6], ["N", 6], [1, "N"], ["N", 6, 1]]


def test_a_repeat_that_is_not_differentiated_keeps_its_loop_plain(prog):
    """No per-pass history unless a gradient goes through the Loop (the filter seed's Loop stays lean)."""
    model = dslc.compile(dslc.loads("""
fn f(x: f32[N, 6]) { y = x
  repeat 3 { g = grad(sum(y * y * x), y)
    y = y - 0.1 * g }
  return y }
""", "plain.dsl"), "f")
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    assert len(loop.output) == 1


STEP = """
model Unrolled(x: f32[N, 4]) -> y {
    h = dense(x, 4, activation=tanh)
    repeat 3 { h = dense(h, 4, activation=tanh) + x[:, ::-1] }
    y = dense(h[1:, None, :2] * h[None, 0, 2:], 1)
}
step train_unrolled(x: f32[N, 4]) updates Unrolled using adam(lr=0.01) {
    minimize mean(Unrolled(x) ^ 2)
}
"""


def test_a_training_step_differentiates_through_repeat_and_indexing():
    """The step's weight and input gradients in float64 (finite differences), and the whole train
    step agreeing between onnxruntime and onnx.reference."""
    from test_spec_gradients import _check_directional_derivative
    from feeds import random_feeds
    prog = dslc.loads(STEP, "unrolled.dsl")
    model = dslc.compile(prog, "train_unrolled", emit="gradients", random="input", float64=True, wrt_inputs=True)
    check(model)
    _check_directional_derivative(model, np.random.default_rng(2))
    train = dslc.compile(prog, "train_unrolled")
    check(train)
    feeds = random_feeds(train, np.random.default_rng(4))
    got = ort.InferenceSession(train.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, r in zip(got, reference(train).run(None, feeds)):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6)
