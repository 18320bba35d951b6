"""`grad` and `stop_gradient` in the language: exact hand-computed values."""
import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
from dslc.emit.onnx_emit import check

SOURCE = """
fn derivatives(x: f64[5]) {
    y  = x^3 + 2 * x^2
    dy = grad(y, x)            # 3x^2 + 4x (y summed, like tf.grad)
    d2 = grad(dy, x)           # 6x + 4: a gradient of a gradient
    return dy, d2
}
fn partial(x: f64[3], w: f64[3]) {
    h      = x * w
    frozen = stop_gradient(h) * x    # d/dx sees only the second factor
    gx, gh = grad(sum(h * h) + sum(frozen), [x, h])
    return gx, gh
}
model Lin(x: f64[N, 3]) -> y {
    y = dense(x, 2, kernel_init=ones)
}
fn weight_grad(x: f64[N, 3]) {
    loss = sum(Lin(x))
    return grad(loss, Lin.y.weight), grad(loss, Lin.y.bias)
}
fn unused(x: f64[2], z: f64[2]) {
    return grad(sum(x * x), z)
}
"""


@pytest.fixture(scope="module")
def prog():
    return dslc.loads(SOURCE, "grads.dsl")


def _run(prog, target, **feeds):
    model = dslc.compile(prog, target)
    check(model)
    return ReferenceEvaluator(model).run(None, feeds)


def test_second_derivative_of_a_polynomial(prog):
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])
    dy, d2 = _run(prog, "derivatives", x=x)
    assert np.array_equal(dy, 3 * x**2 + 4 * x)
    assert np.array_equal(d2, 6 * x + 4)


def test_stop_gradient_and_gradients_of_an_intermediate(prog):
    x, w = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
    gx, gh = _run(prog, "partial", x=x, w=w)
    h = x * w
    # d/dx [sum((xw)^2) + sum(stop(xw) * x)] = 2 x w^2 + x w  (the stopped factor is a constant)
    assert np.allclose(gx, 2 * x * w**2 + h)
    # d/dh of the same, h an intermediate: 2h from the first term; the stopped path gives nothing
    assert np.allclose(gh, 2 * h)


def test_gradient_with_respect_to_a_named_weight(prog):
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    gw, gb = _run(prog, "weight_grad", x=x)
    assert np.array_equal(gw, np.repeat(x.sum(axis=0, keepdims=True).T, 2, axis=1))  # d sum(xW+b)/dW
    assert np.array_equal(gb, [2.0, 2.0])  # the batch size, summed over the batch axis


def test_unreached_value_gets_zero_gradient(prog):
    (g,) = _run(prog, "unused", x=np.ones(2), z=np.ones(2))
    assert np.array_equal(g, np.zeros(2))
