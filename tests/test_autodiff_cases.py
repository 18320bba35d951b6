"""Hand-checked gradients, the driver's bookkeeping, symbolic shapes, the Conv-free convolution
patterns, and onnxruntime agreeing with onnx.reference on a float32 gradient graph."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from dslc.autodiff import grad, vjp
from dslc.diagnostics import DslError, Span
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir import patterns as P
from dslc.ir.core import Graph, TensorType, Value
from dslc.ir.builder import Builder
from gradcheck import Spec, dot_check, reference

RNG = np.random.default_rng(1)


def new_builder() -> Builder:
    return Builder(Graph("case"))


def evaluate(b: Builder, outputs: list[Value], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    b.graph.outputs = [b.op("Identity", [v]) for v in outputs]
    model = to_onnx(b.graph)
    check(model)
    return reference(model).run(None, feeds)


def ort_session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_ort(b: Builder, outputs: list[Value], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    b.graph.outputs = [b.op("Identity", [v]) for v in outputs]
    model = to_onnx(b.graph)
    check(model)
    return ort_session(model).run(None, feeds)


def f64(b: Builder, name: str, shape) -> Value:
    return b.input(name, TensorType("f64", tuple(shape)))


# ------------------------------------------------------------------ exact hand cases
def test_bias_gradient_is_dy_summed_over_the_batch():
    b = new_builder()
    x, bias, dy = f64(b, "x", (4, 3)), f64(b, "bias", (3,)), f64(b, "dy", (4, 3))
    first_new = len(b.graph.nodes) + 1
    y = b.op("Add", [x, bias])
    dx, dbias = vjp(b, [y], [dy], [x, bias])
    assert "ReduceSum" in [n.op for n in b.graph.nodes[first_new:]]
    assert dbias.shape == (3,)
    feeds = {"x": RNG.standard_normal((4, 3)), "bias": RNG.standard_normal(3),
             "dy": RNG.standard_normal((4, 3))}
    got_dx, got_dbias = evaluate(b, [dx, dbias], feeds)
    np.testing.assert_allclose(got_dx, feeds["dy"])
    np.testing.assert_allclose(got_dbias, feeds["dy"].sum(axis=0))


def test_value_used_twice_sums_its_gradients():
    b = new_builder()
    x = f64(b, "x", (5,))
    (dx,) = grad(b, b.op("Mul", [x, x]), [x])
    x_val = RNG.standard_normal(5)
    np.testing.assert_allclose(evaluate(b, [dx], {"x": x_val})[0], 2 * x_val)


def test_unused_input_gets_zeros_and_integer_input_none():
    b = new_builder()
    x, unused = f64(b, "x", (2, 3)), f64(b, "unused", (4,))
    idx = b.input("idx", TensorType("i64", (2,)))
    y = b.op("Gather", [x, idx])
    dx, d_unused, d_idx = grad(b, y, [x, unused, idx])
    assert d_idx is None
    got_dx, got_unused = evaluate(b, [dx, d_unused], {"x": RNG.standard_normal((2, 3)), "unused": np.ones(4),
                                                      "idx": np.array([1, 1])})
    np.testing.assert_array_equal(got_unused, np.zeros(4))
    np.testing.assert_array_equal(got_dx, [[0, 0, 0], [2, 2, 2]])


def test_integer_values_carry_no_gradient():
    b = new_builder()
    x = f64(b, "x", (3,))
    as_int = b.op("Cast", [x], {"to": 7})  # i64: piecewise constant
    y = b.op("Add", [b.op("Cast", [as_int], {"to": 11}), x])
    (dx,) = grad(b, y, [x])
    np.testing.assert_array_equal(evaluate(b, [dx], {"x": np.array([0.5, 1.5, -2.0])})[0], np.ones(3))


def test_stop_gradient_blocks_the_path():
    b = new_builder()
    x = f64(b, "x", (3,))
    frozen = b.op("StopGradient", [x])
    dx_product, dx_frozen = grad(b, b.op("Mul", [x, frozen]), [x])[0], grad(b, frozen, [x])[0]
    x_val = np.array([1.0, -2.0, 3.0])
    got_product, got_frozen = evaluate(b, [dx_product, dx_frozen], {"x": x_val})
    np.testing.assert_allclose(got_product, x_val)  # d(x * c)/dx with c = x frozen: c, not 2x
    np.testing.assert_array_equal(got_frozen, np.zeros(3))


def test_second_derivative_by_grad_of_grad():
    b = new_builder()
    x = f64(b, "x", (4,))
    cube = b.op("Pow", [x, b.const(np.asarray(3.0), "f64")])
    y = b.op("Add", [cube, b.op("Mul", [b.const(np.asarray(2.0), "f64"), b.op("Mul", [x, x])])])
    (dy_dx,) = grad(b, y, [x])
    (d2y_dx2,) = grad(b, dy_dx, [x])
    x_val = np.array([-1.5, 0.0, 0.5, 2.0])
    first, second = evaluate(b, [dy_dx, d2y_dx2], {"x": x_val})
    np.testing.assert_allclose(first, 3 * x_val**2 + 4 * x_val)
    np.testing.assert_allclose(second, 6 * x_val + 4)


def test_hessian_vector_product_through_a_dense_layer():
    """H v for loss = sum(tanh(x @ W + b)^2), against finite differences of the gradient."""
    b = new_builder()
    x, w, bias, v = f64(b, "x", (5, 4)), f64(b, "w", (4, 3)), f64(b, "b", (3,)), f64(b, "v", (4, 3))
    h = b.op("Tanh", [b.op("Add", [b.op("MatMul", [x, w]), bias])])
    loss = b.op("ReduceSum", [b.op("Mul", [h, h])], {"keepdims": 0})
    (dw,) = grad(b, loss, [w])
    (hv,) = vjp(b, [dw], [v], [w])
    b.graph.outputs = [b.op("Identity", [dw]), b.op("Identity", [hv])]
    model = to_onnx(b.graph)
    check(model)
    run = reference(model)
    feeds = {"x": RNG.standard_normal((5, 4)), "w": 0.5 * RNG.standard_normal((4, 3)),
             "b": RNG.standard_normal(3), "v": RNG.standard_normal((4, 3))}
    eps = 1e-5
    g_plus = run.run(None, {**feeds, "w": feeds["w"] + eps * feeds["v"]})[0]
    g_minus = run.run(None, {**feeds, "w": feeds["w"] - eps * feeds["v"]})[0]
    np.testing.assert_allclose(run.run(None, feeds)[1], (g_plus - g_minus) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_backward_nodes_carry_the_forward_span_and_early_stopping_loops_raise_a_located_error():
    b = new_builder()
    x = f64(b, "x", (3,))
    b.span = Span("model.dsl", 7, 5)
    y = b.op("Sin", [x])
    b.span = None
    first_new = len(b.graph.nodes)
    grad(b, y, [x])
    assert any(n.span == Span("model.dsl", 7, 5) for n in b.graph.nodes[first_new:] if n.op == "Cos")

    body = Graph("body")
    bb = b.child(body)
    bb.input("i", TensorType("i64", ()))
    bb.input("cond", TensorType("bool", ()))
    carried = bb.input("h", TensorType("f64", (3,)))
    out = bb.op("Sin", [carried])
    keep_going = bb.op("Less", [bb.op("ReduceSum", [out], {"keepdims": 0}), bb.const(np.asarray(1.0), "f64")])
    body.outputs = [keep_going, out]  # stops once the sum reaches 1: not a `repeat`
    b.span = Span("model.dsl", 9, 3)
    looped = b.op("Loop", [b.ints(2), b.const(np.asarray(True), "bool"), y], {"body": body})
    with pytest.raises(DslError, match="may stop early") as err:
        grad(b, looped, [x])
    assert err.value.span == Span("model.dsl", 9, 3)


def _sin_times_w_loop(b, h0, w, passes):
    """h <- sin(h) * w, `passes` times; w is read from the outer scope (captured), not carried."""
    body = Graph("body")
    bb = b.child(body)
    bb.input("i", TensorType("i64", ()))
    cond, h = bb.input("cond", TensorType("bool", ())), bb.input("h", h0.type)
    body.outputs = [bb.op("Identity", [cond]), bb.op("Mul", [bb.op("Sin", [h]), w])]
    return b.op("Loop", [passes, b.const(np.asarray(True), "bool"), h0], {"body": body})


@pytest.mark.parametrize("order", [1, 2])
def test_loop_gradient_reaches_the_carried_start_and_a_captured_weight(order):
    def fn(b, xs):
        x, w = xs
        return [_sin_times_w_loop(b, x, w, b.ints(3))]
    r = dot_check(fn, [Spec((2, 3)), Spec((3,))], order=order)
    assert r.close(), (r.fd, r.analytic)


def test_loop_gradient_with_a_run_time_pass_count_agrees_with_onnxruntime():
    b = new_builder()
    x, w = f64(b, "x", ("N", 3)), f64(b, "w", (3,))
    n = b.input("n", TensorType("i64", ()))
    h = _sin_times_w_loop(b, x, w, n)
    gx, gw = grad(b, h, [x, w])
    feeds = {"x": RNG.standard_normal((2, 3)), "w": RNG.standard_normal(3)}
    for passes in (0, 1, 4):
        def f(x, w):
            for _ in range(passes):
                x = np.sin(x) * w
            return x.sum()
        got = run_ort(b, [gx, gw], {**feeds, "n": np.asarray(passes)})
        eps = 1e-6
        for name, g in zip(("x", "w"), got):
            fd = np.zeros_like(feeds[name])
            for i in np.ndindex(fd.shape):
                d = np.zeros_like(fd)
                d[i] = eps
                args = dict(feeds, **{name: feeds[name] + d}), dict(feeds, **{name: feeds[name] - d})
                fd[i] = (f(**args[0]) - f(**args[1])) / (2 * eps)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
        if passes:  # (onnx.reference cannot stack zero scan rows: np.vstack of nothing)
            ref = evaluate(b, [gx, gw], {**feeds, "n": np.asarray(passes)})
            for a, r in zip(got, ref):
                np.testing.assert_allclose(a, r, rtol=1e-12)


# ------------------------------------------------------------------ symbolic dims
N = ("N",)


def concat_symbolic(b, xs):
    return [b.op("Concat", [xs[0], b.op("Sin", [xs[1]])], {"axis": 0})]


def mean_over_batch(b, xs):
    return [b.op("ReduceMean", [b.op("Mul", [xs[0], xs[0]]), b.ints([0])], {"keepdims": 0})]


def dense_symbolic(b, xs):
    x, w, bias = xs
    return [b.op("Tanh", [b.op("Add", [b.op("MatMul", [x, w]), bias])])]


def conv_pool_symbolic(b, xs):
    y = b.op("Conv", xs[:2], {"strides": [1, 1], "pads": [1, 1, 1, 1]})
    return [b.op("MaxPool", [y], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})]


def slice_and_split_symbolic(b, xs):
    tail = P.slice_axes(b, xs[0], [1], [2**63 - 1], [0])
    first, second = b.op("Split", [xs[1], b.ints([1, 2])], {"axis": 1})
    return [b.op("Exp", [tail]), b.op("Mul", [second, second]), first]


def gather_rows_symbolic(b, xs):
    return [b.op("Gather", [xs[0], b.ints([[0, -1], [1, 1]])], {"axis": 0})]


SYMBOLIC = {
    "concat": (concat_symbolic, [Spec((3, 2), declared=("N", 2)), Spec((2, 2))]),
    "reduce-mean": (mean_over_batch, [Spec((4, 3), declared=("N", 3))]),
    "dense": (dense_symbolic, [Spec((5, 4), declared=("N", 4)), Spec((4, 3)), Spec((3,))]),
    "conv-maxpool": (conv_pool_symbolic, [Spec((2, 2, 5, 5), "distinct", declared=("N", 2, 5, 5)),
                                          Spec((3, 2, 3, 3))]),
    "slice-split": (slice_and_split_symbolic, [Spec((4, 2), declared=("N", 2)),
                                               Spec((3, 3), declared=("M", 3))]),
    "gather": (gather_rows_symbolic, [Spec((4, 3), declared=("N", 3))]),
}


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", list(SYMBOLIC))
def test_gradients_with_symbolic_dims(name, order):
    fn, specs = SYMBOLIC[name]
    result = dot_check(fn, specs, order=order)
    assert result.close(), (result.fd, result.analytic)


# ------------------------------------------------------------------ convolution without Conv
CONV_SETTINGS = [  # x shape, w shape, strides, pads, dilations, group
    ((2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((1, 4, 7, 6), (6, 2, 3, 2), (2, 1), (0, 1, 1, 0), (1, 2), 2),
    ((2, 3, 5, 5), (3, 1, 2, 2), (2, 2), (0, 0, 0, 0), (2, 2), 3),
]


def conv_graph(x_shape, w_shape, attrs, transpose: bool, via_patterns: bool):
    b = Builder(Graph("conv"))
    x = b.input("x", TensorType("f32", x_shape))
    w = b.input("w", TensorType("f32", w_shape))
    bias = b.input("bias", TensorType("f32", (w_shape[1] * attrs["group"] if transpose else w_shape[0],)))
    if not via_patterns:
        y = b.op("ConvTranspose" if transpose else "Conv", [x, w, bias], attrs)
    elif transpose:
        y = P.conv_transpose2d_im2col(b, x, w, bias, attrs["strides"], attrs["pads"], attrs["dilations"],
                                      attrs["group"], attrs["output_padding"])
    else:
        y = P.conv2d_im2col(b, x, w, bias, attrs["strides"], attrs["pads"], attrs["dilations"],
                            attrs["group"])
    b.graph.outputs = [y]
    model = to_onnx(b.graph)
    check(model)
    return model


@pytest.mark.parametrize("transpose", [False, True], ids=["Conv", "ConvTranspose"])
@pytest.mark.parametrize("setting", CONV_SETTINGS, ids=["plain", "strided-groups", "depthwise-dilated"])
def test_im2col_convolution_equals_onnx_conv(setting, transpose):
    x_shape, w_shape, strides, pads, dilations, group = setting
    attrs = {"strides": list(strides), "pads": list(pads), "dilations": list(dilations), "group": group}
    if transpose:  # the transposed conv maps the conv's output shape back to its input shape
        w_shape = (x_shape[1], w_shape[0] // group, *w_shape[2:])
        attrs["output_padding"] = [strides[0] - 1, 0]
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32),
             "w": rng.standard_normal(w_shape).astype(np.float32)}
    ours = conv_graph(x_shape, w_shape, attrs, transpose, via_patterns=True)
    theirs = conv_graph(x_shape, w_shape, attrs, transpose, via_patterns=False)
    feeds["bias"] = rng.standard_normal(ours.graph.output[0].type.tensor_type.shape.dim[1].dim_value
                                        ).astype(np.float32)
    assert not {n.op_type for n in ours.graph.node} & {"Conv", "ConvTranspose"}
    expected = ort_session(theirs).run(None, feeds)[0]
    got_ort = ort_session(ours).run(None, feeds)[0]
    got_reference = reference(ours).run(None, feeds)[0]
    np.testing.assert_allclose(got_ort, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_reference, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reference(theirs).run(None, feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_im2col_by_conv_equals_im2col_by_slices():
    b = Builder(Graph("patches"))
    x = b.input("x", TensorType("f64", ("N", 2, 6, 5)))
    args = ((3, 2), (2, 1), (1, 0, 0, 1), (1, 2))
    slices, by_conv = P.im2col_slices(b, x, *args), P.im2col_conv(b, x, *args)
    assert slices.shape[1:] == by_conv.shape[1:] == (12, 12)  # Ho = 3, Wo = 4
    got_slices, got_conv = evaluate(b, [slices, by_conv], {"x": RNG.standard_normal((3, 2, 6, 5))})
    np.testing.assert_array_equal(got_slices, got_conv)


def test_upsample_nearest_repeats_pixels():
    b = Builder(Graph("upsample"))
    x = b.input("x", TensorType("f64", ("N", 2, 3, 4)))
    y = P.upsample_nearest(b, x, 2, 3)
    assert y.shape == ("N", 2, 6, 12)
    x_val = RNG.standard_normal((1, 2, 3, 4))
    expected = x_val.repeat(2, axis=2).repeat(3, axis=3)
    np.testing.assert_array_equal(evaluate(b, [y], {"x": x_val})[0], expected)


# ------------------------------------------------------------------ onnxruntime and the reference agree
def small_cnn_gradients() -> tuple[Builder, list[Value]]:
    """conv -> relu -> maxpool -> dense -> log_softmax -> picked class: gradients of every weight."""
    b = Builder(Graph("cnn"))
    x = b.input("x", TensorType("f32", ("N", 1, 6, 6)))
    labels = b.input("labels", TensorType("i64", ("N",)))
    w1 = b.input("w1", TensorType("f32", (4, 1, 3, 3)))
    b1 = b.input("b1", TensorType("f32", (4,)))
    w2 = b.input("w2", TensorType("f32", (36, 3)))
    h = b.op("Relu", [b.op("Conv", [x, w1, b1], {"pads": [1, 1, 1, 1]})])
    h = b.op("MaxPool", [h], {"kernel_shape": [2, 2], "strides": [2, 2]})
    logits = b.op("MatMul", [b.op("Flatten", [h], {"axis": 1}), w2])
    logp = b.op("LogSoftmax", [logits], {"axis": 1})
    picked = b.op("GatherElements", [logp, b.op("Unsqueeze", [labels, b.ints([1])])], {"axis": 1})
    loss = b.op("Neg", [b.op("ReduceMean", [picked], {"keepdims": 0})])
    return b, [loss, *grad(b, loss, [w1, b1, w2])]


def test_float32_gradients_agree_between_onnxruntime_and_reference():
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((3, 1, 6, 6)).astype(np.float32), "labels": np.array([0, 2, 1]),
             "w1": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "b1": rng.standard_normal(4).astype(np.float32),
             "w2": rng.standard_normal((36, 3)).astype(np.float32)}
    b, outputs = small_cnn_gradients()
    got_ort = run_ort(b, outputs, feeds)
    got_reference = reference(to_onnx(b.graph)).run(None, feeds)
    for a, r in zip(got_ort, got_reference):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)
