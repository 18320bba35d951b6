"""Regressions for gradients that were silently wrong at exact zeros and for integers carried through
`repeat` (issue 18), each against an expected value written from the mathematics or from PyTorch.

Smooth functions written from pieces with kinks (binary cross-entropy from logits as
max(l, 0) - l t + log(1 + exp(-|l|))) differentiated piece by piece give the wrong slope where the
pieces' kinks meet (l = 0, which a relu output times a zero bias reaches exactly)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import dslc

UNET = """
model UNet(x: f32[N, 1, 16, 16]) -> out {
    h = relu(x)
    out = conv2d(h, 1, kernel=1)
}
step train_unet(x: f32[N, 1, 16, 16], m: f32[N, 1, 16, 16]) updates UNet using sgd() {
    minimize binary_crossentropy(UNet(x), m, from_logits=true)
}
"""

CARRY = """
fn f(x: f32[5]) {
    t = 0
    s = 0.0 * x[0]
    repeat 3 {
        s = s + x[t] * x[t]
        t = t + 1
    }
    return s, t, grad(s, x)
}
"""


def _run_both(model, feeds: dict) -> list[dict]:
    """The outputs by name in onnxruntime and in onnx.reference."""
    names = [o.name for o in model.graph.output]
    ort_out = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    ref_out = ReferenceEvaluator(model).run(None, feeds)
    return [dict(zip(names, ort_out)), dict(zip(names, ref_out))]


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_bce_from_logits_bias_gradient_at_exact_zero_logits():
    """The issue's repro: where relu(x) = 0 and the bias is 0 the logit is exactly 0, and the bias
    gradient is mean(sigmoid(z) - m) (PyTorch's binary_cross_entropy_with_logits), not mean(-m)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    m = (rng.random((2, 1, 16, 16)) > 0.5).astype(np.float32)
    model = dslc.compile(dslc.loads(UNET), "train_unet", emit="gradients", seed=0)
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    assert not w["UNet.out.bias"].any()  # zero-initialised: exact zero logits where relu(x) = 0
    z = np.maximum(x, 0).astype(np.float64) * w["UNet.out.weight"].item()
    assert (z == 0).mean() > 0.4
    expected_bias = np.mean(_sigmoid(z) - m)  # d mean(bce) / d bias
    expected_loss = np.mean(np.logaddexp(0, z) - z * m)
    assert abs(expected_bias - 0.0422) < 1e-4  # the figure (dslc gave -0.2459)
    for out in _run_both(model, {"x": x, "m": m}):
        np.testing.assert_allclose(out["grad.UNet.out.bias"], [expected_bias], rtol=1e-5)
        np.testing.assert_allclose(out["loss"], expected_loss, rtol=1e-6)


@pytest.mark.parametrize("z", [0.0, -0.0, 1e-30, -3.0, 50.0, -120.0])
def test_bce_from_logits_gradient_and_curvature(z):
    """d/dz = sigmoid(z) - t and d2/dz2 = sigmoid(z)(1 - sigmoid(z)) at any logit, and the value
    stays finite far out (no overflow)."""
    src = """
    fn f(z: f64[4], t: f64[4]) {
        g = grad(4 * binary_crossentropy(z, t, from_logits=true), z)
        return 4 * binary_crossentropy(z, t, from_logits=true), g, grad(sum(g), z)
    }
    """
    zs = np.full(4, z)
    t = np.array([0.0, 1.0, 0.25, 1.0])
    model = dslc.compile(dslc.loads(src), "f")
    s = _sigmoid(zs)
    for out in _run_both(model, {"z": zs, "t": t}):  # (onnxruntime's Sigmoid flushes e-53 to 0: atol)
        vals = list(out.values())
        np.testing.assert_allclose(vals[0], np.sum(np.logaddexp(0, zs) - zs * t), rtol=1e-12, atol=1e-40)
        np.testing.assert_allclose(vals[1], s - t, rtol=1e-12, atol=1e-40)
        np.testing.assert_allclose(vals[2], s * (1 - s), rtol=1e-12, atol=1e-40)


def test_huber_second_derivative_at_zero_and_at_delta():
    """huber(d) = d^2 / 2 inside |d| < delta: slope d, curvature 1 there (also at d = 0 exactly,
    where |d| has its kink), delta * sign(d) and curvature 0 from |d| = delta on (torch's huber_loss)."""
    src = """
    fn f(p: f64[5], y: f64[5]) {
        g = grad(5 * huber(p, y, delta=1.0), p)
        return g, grad(sum(g), p)
    }
    """
    p = np.array([0.0, 1.0, -1.0, 2.5, -0.25])
    y = np.zeros(5)
    model = dslc.compile(dslc.loads(src), "f")
    for out in _run_both(model, {"p": p, "y": y}):
        g, h = list(out.values())
        np.testing.assert_array_equal(g, [0.0, 1.0, -1.0, 1.0, -0.25])
        np.testing.assert_array_equal(h, [1.0, 0.0, 0.0, 0.0, 1.0])


def test_pow_exponent_gradient_at_zero_base():
    """d(x^y)/dy = x^y log x, taken as 0 where x = 0 (torch), not 0 * -inf = NaN."""
    src = """
    fn f(x: f64[3], y: f64[3]) {
        return grad(sum(x ^ y), y)
    }
    """
    x, y = np.array([0.0, 2.0, 0.5]), np.array([2.0, 3.0, 1.5])
    model = dslc.compile(dslc.loads(src), "f")
    for out in _run_both(model, {"x": x, "y": y}):
        np.testing.assert_allclose(list(out.values())[0], [0.0, 8 * np.log(2), 0.5 ** 1.5 * np.log(0.5)], rtol=1e-14)


def test_integer_carried_through_repeat_advances():
    """The issue's repro: t = 0 before the loop and t = t + 1 inside; s sums x[0] .. x[2]."""
    x = np.array([1, 10, 100, 1000, 1e4], np.float32)
    model = dslc.compile(dslc.loads(CARRY), "f")
    for out in _run_both(model, {"x": x}):
        s, t, g = out.values()
        assert float(s) == 1 + 100 + 10000 and int(t) == 3
        np.testing.assert_array_equal(g, [2, 20, 200, 0, 0])


def test_a_float_carried_beside_f64_tensors_is_f64():
    src = """
    fn f(x: f64[N, 4]) {
        w = 1.5
        s = x
        repeat 3 {
            s = s * w
            w = w + 1.0
        }
        return s, w
    }
    """
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    model = dslc.compile(dslc.loads(src), "f")
    for out in _run_both(model, {"x": x}):
        s, w = out.values()
        np.testing.assert_array_equal(s, x * 1.5 * 2.5 * 3.5)
        assert w.dtype == np.float64 and float(w) == 4.5


def test_numbers_carried_through_repeat_keep_literal_types():
    """An int literal carries as i64, a float as f32; a pass may leave it a number again (`k = 5`)."""
    src = """
    fn f(x: f32[2]) {
        k = 1
        c = 0.5
        y = x
        repeat 4 {
            y = y * c + cast(k, f32)
            k = k * 2
            c = 0.5
        }
        return y, k
    }
    """
    x = np.array([1.0, -2.0], np.float32)
    expected = x.astype(np.float64)
    k = 1
    for _ in range(4):
        expected, k = expected * 0.5 + k, k * 2
    model = dslc.compile(dslc.loads(src), "f")
    for out in _run_both(model, {"x": x}):
        y, kk = out.values()
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        assert kk.dtype == np.int64 and int(kk) == 16
