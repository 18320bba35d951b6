"""Reshape's gradient reshapes dy back with a constant shape (-1 for x's one symbolic dim) rather
than Shape(x), which kept x alive until the backward (autodiff/rules/shape._reshape_back); and the IR's
-1 inference cancelling factors of product dims ([N*49, 192] -> [-1, 7, 7, 192] is [N, 7, 7, 192]).
Values: the old formulation (Reshape to Shape(x)) and the new one agree in onnxruntime and
onnx.reference, and the gradient matches finite differences."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from dslc.autodiff.driver import vjp
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType
from gradcheck import Spec, dot_check, reference


def _fold_batch(b, x):
    """[N, 7, 2, 3] -> [N*7, 6] (a Reshape whose -1 dim is a product), then a product with a weight."""
    flat = b.op("Reshape", [x, b.ints([-1, 6])])
    return flat, b.op("Reshape", [flat, b.ints([-1, 7, 2, 3])])


def test_minus_one_cancels_factors_of_a_product_dim():
    b = Builder(Graph("g"))
    x = b.input("x", TensorType("f32", ("N", 7, 2, 3)))
    flat, back = _fold_batch(b, x)
    assert flat.shape == ("7*N", 6)
    assert back.shape == ("N", 7, 2, 3)


def _graph(old: bool):
    g = Graph("g")
    b = Builder(g)
    x = b.input("x", TensorType("f64", ("N", 7, 2, 3)))
    flat = b.op("Reshape", [x, b.ints([-1, 6])])
    y = b.op("Mul", [flat, b.const(np.arange(6.0), "f64")])
    dy = b.input("dy", y.type)
    if old:
        dx = b.op("Reshape", [b.op("Mul", [dy, b.const(np.arange(6.0), "f64")]), b.op("Shape", [x])])
    else:
        (dx,) = vjp(b, [y], [dy], [x])
    g.outputs = [b.op("Identity", [dx])]
    return g, to_onnx(g)


def test_no_shape_read_and_same_values_as_reshaping_to_shape_of_x():
    (g_new, new), (_, old) = _graph(False), _graph(True)
    check(new)
    assert not any(n.op == "Shape" for n in g_new.nodes)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((5, 7, 2, 3)), "dy": rng.standard_normal((35, 6))}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    want = (feeds["dy"] * np.arange(6.0)).reshape(5, 7, 2, 3)
    np.testing.assert_array_equal(run(old), want)
    np.testing.assert_array_equal(run(new), want)
    np.testing.assert_array_equal(reference(new).run(None, feeds)[0], want)


def test_gradient_by_finite_differences():
    def fn(b, args):
        flat, back = _fold_batch(b, args[0])
        return [b.op("Mul", [back, back]), b.op("Sin", [flat])]
    result = dot_check(fn, [Spec((4, 7, 2, 3), declared=("N", 7, 2, 3))])
    assert result.close(), (result.fd, result.analytic)
