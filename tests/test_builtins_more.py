"""The issue-12 built-ins (trigonometry, rounding, minimum/maximum, `**`, layer_norm, silu/swish,
mish, mae, huber, label smoothing): numbers against numpy, gradients against float64 finite
differences, and onnxruntime agreeing with onnx.reference on forward values and gradients."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dslc
from dslc.emit.onnx_emit import check
from gradcheck import reference

SOURCE = """
model Norm(x: f64[N, 3, 4]) -> (last, middle) {
    last   = layer_norm(x)
    middle = layer_norm(x, axis=1, eps=1e-5)
}
model Act(x: f64[N, 4]) -> y {
    y = dense(x, 3, activation=silu) |> mish |> swish
}
fn elementwise(x: f64[2, 5], t: f64[2, 5]) {
    return sin(x), cos(x), tan(x), atan(x), erf(x), sign(x), floor(x), ceil(x), round(x),
           minimum(x, t), maximum(x, 0.25), x ** 3, x ** 0, x ^ 2, silu(x), mish(x)
}
fn losses(p: f64[2, 5], t: f64[2, 5]) {
    return mae(p, t), huber(p, t), huber(p, t, delta=0.3),
           categorical_crossentropy(softmax(p), softmax(t), label_smoothing=0.2),
           categorical_crossentropy(p, softmax(t), from_logits=true, label_smoothing=0.1)
}
# (no erf here: onnx.reference computes it in float32, too coarse for float64 differences)
fn everything(x: f64[2, 5], t: f64[2, 5]) {
    a = sin(x) * cos(t) + tan(0.3 * x) + atan(x) + minimum(x, t) + maximum(x, 0.25)
    b = x ** 3 + (t ** 2) ** 0 + silu(x) + swish(t) + mish(x) + floor(x) + round(t) + sign(x)
    return sum(a * b) + mae(x, t) + huber(x, t, delta=0.3)
           + categorical_crossentropy(softmax(x), softmax(t), label_smoothing=0.2)
}
fn everything_grad(x: f64[2, 5], t: f64[2, 5]) {
    a = sin(x) * cos(t) + tan(0.3 * x) + atan(x) + minimum(x, t) + maximum(x, 0.25)
    b = x ** 3 + (t ** 2) ** 0 + silu(x) + swish(t) + mish(x) + floor(x) + round(t) + sign(x)
    loss = sum(a * b) + mae(x, t) + huber(x, t, delta=0.3)
           + categorical_crossentropy(softmax(x), softmax(t), label_smoothing=0.2)
    gx, gt = grad(loss, [x, t])
    return gx, gt
}
model Normed(x: f64[N, 5]) -> y {
    y = layer_norm(dense(x, 4, activation=mish), eps=0.01) |> silu
}
fn norm_loss(x: f64[N, 5]) {
    return sum(Normed(x) * Normed(x))
}
fn norm_grad(x: f64[N, 5]) {
    y = Normed(x)
    gx, gw, gg, gb = grad(sum(y * y), [x, Normed.y.weight, Normed.y_2.gamma, Normed.y_2.beta])
    return gx, gw, gg, gb
}
model Seq(x: f64[N, 4, 12]) -> y {
    y = conv1d(x, 4, kernel=3, strides=2, padding=same, groups=2, activation=mish) |> conv1d(3, dilation=2)
}
fn seq_grad(x: f64[N, 4, 12]) {
    g, w = grad(sum(Seq(x) * Seq(x)), [x, Seq.y.weight])
    return g, w
}
fn powers(x: f64[6]) {
    return grad(sum(x ** 3), x), grad(sum(x ** 1), x), grad(sum(x ** 0), x), grad(sum(x ** 4), x),
           grad(grad(sum(x ** 3), x), x)
}
fn ties(a: f64[4], b: f64[4]) {
    ga, gb = grad(sum(maximum(a, b)), [a, b])
    ha, hb = grad(sum(minimum(a, b)), [a, b])
    return ga, gb, ha, hb
}
"""
RNG = np.random.default_rng(12)


@pytest.fixture(scope="module")
def prog():
    return dslc.loads(SOURCE, "more.dsl")


def run(prog, target, **feeds):
    model = dslc.compile(prog, target)
    check(model)
    return reference(model).run(None, feeds)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_elementwise_values(prog):
    x, t = RNG.standard_normal((2, 5)), RNG.standard_normal((2, 5))
    x[0, :3] = [0.5, -1.5, 2.5]  # round half to even, as numpy and ONNX do
    got = run(prog, "elementwise", x=x, t=t)
    erf = np.vectorize(math.erf)
    want = [np.sin(x), np.cos(x), np.tan(x), np.arctan(x), erf(x), np.sign(x), np.floor(x), np.ceil(x), np.round(x),
            np.minimum(x, t), np.maximum(x, 0.25), x**3, np.ones_like(x), x**2, x * sigmoid(x),
            x * np.tanh(np.log1p(np.exp(x)))]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_losses_values(prog):
    p, t = RNG.standard_normal((2, 5)), RNG.standard_normal((2, 5))
    got = run(prog, "losses", p=p, t=t)
    d = np.abs(p - t)

    def huber(delta):
        return np.mean(np.where(d <= delta, 0.5 * d**2, delta * (d - 0.5 * delta)))

    def softmax(v):
        e = np.exp(v - v.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def cce(probs, target, s):
        target = target * (1 - s) + s / 5
        return -np.mean(np.sum(target * np.log(np.clip(probs, 1e-7, 1 - 1e-7)), -1))

    want = [np.mean(d), huber(1.0), huber(0.3), cce(softmax(p), softmax(t), 0.2), cce(softmax(p), softmax(t), 0.1)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_layer_norm_values(prog):
    x = RNG.standard_normal((2, 3, 4))
    last, middle = run(prog, "Norm", x=x)

    def norm(v, axis, eps):
        return (v - v.mean(axis, keepdims=True)) / np.sqrt(v.var(axis, keepdims=True) + eps)
    np.testing.assert_allclose(last, norm(x, -1, 1e-3), rtol=1e-9)  # gamma 1, beta 0 at the start
    np.testing.assert_allclose(middle, norm(x, 1, 1e-5), rtol=1e-9)
    weights = {w.name: tuple(w.dims) for w in dslc.compile(prog, "Norm").graph.initializer if "." in w.name}
    assert weights == {"Norm.last.gamma": (4,), "Norm.last.beta": (4,), "Norm.middle.gamma": (3,),
                       "Norm.middle.beta": (3,)}


def test_integer_powers_differentiate_at_and_below_zero(prog):
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 3.0])
    g3, g1, g0, g4, h3 = run(prog, "powers", x=x)
    np.testing.assert_array_equal(g3, 3 * x**2)
    np.testing.assert_array_equal(g1, np.ones_like(x))
    np.testing.assert_array_equal(g0, np.zeros_like(x))  # not 0 * inf at 0
    np.testing.assert_array_equal(g4, 4 * x**3)
    np.testing.assert_array_equal(h3, 6 * x)


def test_minimum_maximum_gradient_goes_to_the_selected_side(prog):
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 1.0, 5.0])
    ga, gb, ha, hb = run(prog, "ties", a=a, b=b)
    np.testing.assert_array_equal(ga, [0, 1, 1, 0])  # a tie (2 == 2) goes to the first operand
    np.testing.assert_array_equal(gb, [1, 0, 0, 1])
    np.testing.assert_array_equal(ha, [1, 1, 0, 1])
    np.testing.assert_array_equal(hb, [0, 0, 1, 0])


def _directional_check(prog, value_target, grad_target, feeds, eps=1e-6):
    """<grad, direction> against central differences of the value, float64."""
    value = dslc.compile(prog, value_target)
    grads = run(prog, grad_target, **feeds)  # one gradient per feed, in the feeds' order
    names = list(feeds)
    dirs = {n: RNG.standard_normal(v.shape) for n, v in feeds.items()}
    ev = reference(value)

    def at(step):
        return float(ev.run(None, {n: feeds[n] + step * dirs[n] for n in feeds})[0])
    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * dirs[n])) for g, n in zip(grads, names))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)


def test_gradients_match_finite_differences(prog):
    # away from the kinks of floor/round/sign/minimum/maximum/abs and the huber switch
    x = RNG.uniform(0.3, 0.45, (2, 5)) * RNG.choice([-1, 1], (2, 5)) + 0.01
    t = x + RNG.choice([-1, 1], (2, 5)) * RNG.uniform(0.1, 0.25, (2, 5))
    _directional_check(prog, "everything", "everything_grad", {"x": x, "t": t})


def test_layer_norm_weight_gradients_match_finite_differences(prog):
    model = dslc.compile(prog, "norm_loss")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = RNG.standard_normal((3, 5))
    names = ["x", "Normed.y.weight", "Normed.y_2.gamma", "Normed.y_2.beta"]  # (y_2: the binding's second layer)
    base = {"x": x, **weights}
    base["Normed.y_2.gamma"] = base["Normed.y_2.gamma"] + RNG.uniform(-0.3, 0.3, 4)  # not all ones
    grads = reference(dslc.compile(prog, "norm_grad")).run(None, base)
    dirs = {n: RNG.standard_normal(base[n].shape) for n in names}
    ev, eps = reference(model), 1e-6

    def at(step):
        return float(ev.run(None, {**base, **{n: base[n] + step * dirs[n] for n in names}})[0])
    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * dirs[n])) for g, n in zip(grads, names))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)


@pytest.mark.parametrize("target", ["everything", "everything_grad", "norm_grad", "Act", "losses", "Seq",
                                    "seq_grad"])
def test_onnxruntime_agrees_with_reference(target):
    """In float32: onnxruntime lacks float64 kernels for some of these ops."""
    model = dslc.compile(dslc.loads(SOURCE.replace("f64", "f32"), "more32.dsl"), target)
    check(model)
    feeds = {}
    for i in model.graph.input:
        if any(i.name == w.name for w in model.graph.initializer):
            continue
        shape = [d.dim_value or 3 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = (RNG.uniform(0.3, 0.45, shape) * RNG.choice([-1, 1], shape)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = reference(model).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_conv1d_lowerings_agree(prog):
    x = RNG.standard_normal((2, 4, 12))
    conv, im2col = (reference(dslc.compile(prog, "seq_grad", conv_lowering=c)).run(None, {"x": x})
                    for c in ("conv", "im2col"))
    for a, b in zip(conv, im2col, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_tuple_axes_reduce_like_a_list(tmp_path):
    """`axis=(1, 2)` (and the one-element `(1,)`) is the list `[1, 2]`, as in NumPy and PyTorch."""
    src = """
    fn t(x: f32[N, 3, 4, 5]) { return sum(x, axis=(1, 2)), mean(x, axis=(3,)), grad(sum(max(x, axis=(1, 3))), x) }
    """
    model = dslc.compile(dslc.loads(src), "t")
    check(model)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    s, m, g = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(s, x.sum(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(m, x.mean(axis=3), rtol=1e-6)
    hit = x == x.max(axis=(1, 3), keepdims=True)  # continuous values: one maximum per slice
    np.testing.assert_array_equal(g, hit.astype(np.float32))
