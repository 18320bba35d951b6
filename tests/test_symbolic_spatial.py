"""Convolution, pooling and upsampling on symbolic spatial dims (H, W, L, D known only at run time).

Each graph is compiled once and run at two or three sizes: the gradients against float64 finite
differences (onnx.reference), onnxruntime against onnx.reference, MaxPool ties against numpy written
from the first-maximum definition, and whole models against the same source compiled with numbers
for H and W (the static formulations, a different code path)."""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import dslc
from dslc.autodiff import vjp
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType, dim_ceil_div
from gradcheck import Spec, build, op_fn, reference, sample
from test_maxpool_ties import first_max_grad, tied_input


def _size(dim, symbols: dict) -> int:
    return dim if isinstance(dim, int) else eval(dim, {"ceil": math.ceil}, dict(symbols))


def fd_at_sizes(fn, declared: list[tuple], sizes: list[dict], kinds=None, eps=1e-6, order=1):
    """One graph of fn and its VJP (float64, symbolic dims as declared), checked at each binding of
    the symbols by the dot-product test: <c, (f(x + eps t) - f(x - eps t)) / 2 eps> == <vjp(c), t>."""
    kinds = kinds or ["normal"] * len(declared)
    first = [tuple(_size(d, sizes[0]) for d in decl) for decl in declared]
    graph, n_args, n_out = build(fn, [Spec(s, k, declared=d) for s, k, d in zip(first, kinds, declared)], order)
    model = to_onnx(graph)
    check(model)
    run = reference(model)
    for symbols in sizes:
        rng = np.random.default_rng(len(symbols) + sum(symbols.values()))
        feeds = {v.name: sample(rng, tuple(_size(d, symbols) for d in decl), kind)
                 for v, decl, kind in zip(graph.inputs, declared, kinds)}
        for v in graph.inputs[len(declared):]:  # the first-order cotangents (order 2), then the cotangents
            feeds[v.name] = rng.standard_normal([_size(d, symbols) for d in v.shape])
        args = [v.name for v in graph.inputs[:n_args]]
        t = {n: rng.standard_normal(feeds[n].shape) for n in args}

        def at(step):
            return run.run(None, {**feeds, **{n: feeds[n] + step * t[n] for n in args}})

        plus, minus, grads = at(eps)[:n_out], at(-eps)[:n_out], at(0.0)[n_out:]
        for g, n in zip(grads, args):
            assert g.shape == feeds[n].shape, (symbols, n, g.shape)
        cots = [feeds[v.name] for v in graph.inputs[n_args:]]
        fd = sum(float(np.sum(c * (p - m))) for c, p, m in zip(cots, plus, minus)) / (2 * eps)
        analytic = sum(float(np.sum(g * t[n])) for g, n in zip(grads, args))
        assert abs(fd - analytic) <= 1e-6 * max(abs(fd), abs(analytic), 1.0), (symbols, fd, analytic)


SIZES = [{"N": 2, "H": 7, "W": 9, "D": 4}, {"N": 1, "H": 10, "W": 6, "D": 5}]

CASES = {
    "conv-same-stride1": (op_fn("Conv", 3, attrs={"pads": [1, 1, 1, 1]}),
                          [("N", 2, "H", "W"), (3, 2, 3, 3), (3,)], None),
    "conv-strided-dilated-grouped": (op_fn("Conv", 2, attrs={"strides": [2, 1], "dilations": [1, 2],
                                                               "pads": [1, 0, 0, 1], "group": 2}),
                                     [("N", 4, "H", "W"), (4, 2, 3, 2)], None),
    "conv1d-strided": (op_fn("Conv", 2, attrs={"strides": [1, 3], "pads": [0, 2, 0, 1]}),
                       [("N", 2, 1, "W"), (3, 2, 1, 4)], None),
    "conv3d": (op_fn("Conv", 2, attrs={"strides": [1, 2, 1], "pads": [0, 1, 0, 0, 0, 1]}),
               [("N", 2, "D", "H", "W"), (2, 2, 2, 2, 2)], None),
    "conv-transpose": (op_fn("ConvTranspose", 2, attrs={"strides": [2, 2], "pads": [1, 0, 1, 1],
                                                         "output_padding": [1, 0]}),
                       [("N", 2, "H", "W"), (2, 3, 3, 3)], None),
    "maxpool-tiles": (op_fn("MaxPool", 1, attrs={"kernel_shape": [2, 2], "strides": [2, 2]}),
                      [("N", 2, "H", "W")], ["distinct"]),
    "maxpool-overlapping-padded": (op_fn("MaxPool", 1, attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                                                                "pads": [1, 1, 1, 1]}),
                                   [("N", 2, "H", "W")], ["distinct"]),
    "maxpool3d": (op_fn("MaxPool", 1, attrs={"kernel_shape": [2, 2, 2], "strides": [1, 2, 2]}),
                  [("N", 1, "D", "H", "W")], ["distinct"]),
    "avgpool-padded-uncounted": (op_fn("AveragePool", 1, attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                                                                  "pads": [1, 1, 1, 1], "count_include_pad": 0}),
                                 [("N", 2, "H", "W")], None),
    "avgpool-padded-counted": (op_fn("AveragePool", 1, attrs={"kernel_shape": [2, 3], "strides": [1, 2],
                                                                "pads": [1, 1, 0, 1], "count_include_pad": 1}),
                               [("N", 2, "H", "W")], None),
    "avgpool1d": (op_fn("AveragePool", 1, attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
                  [("N", 2, "W")], None),
    "global-avgpool": (op_fn("GlobalAveragePool", 1), [("N", 2, "H", "W")], None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_at_two_sizes(name):
    fn, declared, kinds = CASES[name]
    fd_at_sizes(fn, declared, SIZES, kinds)


@pytest.mark.parametrize("name", ["conv-same-stride1", "conv-strided-dilated-grouped", "conv-transpose",
                                  "avgpool-padded-uncounted"])
def test_second_derivatives_at_two_sizes(name):
    fn, declared, kinds = CASES[name]
    fd_at_sizes(fn, declared, SIZES, kinds, order=2)


def test_shape_rules_name_the_output_sizes():
    g = Graph("shapes")
    b = Builder(g)
    x = b.input("x", TensorType("f32", ("N", 3, "H", "W")))
    w = b.input("w", TensorType("f32", (4, 3, 3, 3)))
    assert b.op("Conv", [x, w], {"pads": [1, 1, 1, 1]}).shape == ("N", 4, "H", "W")  # same, stride 1
    assert b.op("Conv", [x, w]).shape == ("N", 4, "H-2", "W-2")
    assert b.op("Conv", [x, w], {"strides": [2, 2]}).shape[2:] == ("ceil((H-2)/2)", "ceil((W-2)/2)")
    assert b.op("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]}).shape[2:] == (
        "ceil((H-1)/2)", "ceil((W-1)/2)")
    wt = b.input("wt", TensorType("f32", (3, 2, 3, 3)))
    up = b.op("ConvTranspose", [x, wt], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]})
    assert up.shape == ("N", 2, "2*H", "2*W")
    assert dim_ceil_div("2*H", 2) == "H" and dim_ceil_div("H+1", 2) == "ceil((H+1)/2)"


@pytest.mark.parametrize("kernel,strides,pads", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                                                 ((3, 2), (1, 2), (1, 0, 1, 1))])
def test_maxpool_ties_go_to_the_first_maximum(kernel, strides, pads):
    graph = Graph("ties")
    b = Builder(graph)
    x = b.input("x", TensorType("f32", ("N", 3, "H", "W")))
    y = b.op("MaxPool", [x], {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads)})
    dy = b.input("dy", y.type)
    graph.outputs = [b.op("Identity", [vjp(b, [y], [dy], [x])[0]])]
    model = to_onnx(graph)
    check(model)
    rng = np.random.default_rng(3)
    session, ref = ort.InferenceSession(model.SerializeToString()), reference(model)
    for h, w in [(6, 7), (9, 5)]:
        xv = tied_input(rng)[:, :, :h, :w] if h <= 6 else np.round(rng.uniform(0, 2, (2, 3, h, w))).astype(np.float32)
        ho = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        wo = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        dyv = rng.standard_normal((xv.shape[0], 3, ho, wo)).astype(np.float32)
        want = first_max_grad(xv.astype(np.float64), dyv.astype(np.float64), kernel, strides, pads)
        for got in (session.run(None, {"x": xv, "dy": dyv})[0], ref.run(None, {"x": xv, "dy": dyv})[0]):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


MODELS = {
    # the model: `same` at stride 1 (static pads) and at stride 2 (pads computed at run time)
    "conv-maxpool-same": """
model B(x: f32[N, 3, H, W]) -> y { y = conv2d(x, 4, 3, padding=same) |> max_pool2d(2, padding=same) }
fn c(x: f32[N, 3, H, W]) { return grad(sum(B(x) * B(x)), x) }
""",
    "upsample-strided-same-avgpool": """
model U(x: f32[N, 3, H, W]) -> y {
    y = upsample2d(x, 2) |> conv2d(3, 3, strides=2, padding=same) |> avg_pool2d(3, strides=2, padding=same)
}
fn c(x: f32[N, 3, H, W]) { return grad(sum(U(x) * U(x)), x) }
""",
    "transpose-grouped-maxpool3": """
model T(x: f32[N, 3, H, W]) -> y {
    y = conv2d_transpose(x, 2, 3, strides=2, padding=same) |> conv2d(2, 3, strides=2, groups=2, padding=1)
        |> max_pool2d(3, strides=2, padding=same) |> global_avg_pool2d()
}
fn c(x: f32[N, 3, H, W]) { return grad(sum(T(x) * T(x)), x) }
""",
}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_agree_with_their_static_compilation(name):
    source = MODELS[name]
    model_name = re.search(r"model (\w+)", source).group(1)
    for target in (model_name, "c"):
        sym = dslc.compile(dslc.loads(source), target)
        onnx.checker.check_model(sym, full_check=True)
        session, ref = ort.InferenceSession(sym.SerializeToString()), reference(sym)
        for shape in [(2, 3, 8, 10), (1, 3, 7, 5), (2, 3, 9, 6)]:
            static = dslc.compile(dslc.loads(source.replace("f32[N, 3, H, W]", "f32[%d, 3, %d, %d]" % (
                shape[0], shape[2], shape[3]))), target)
            x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
            got = session.run(None, {"x": x})[0]
            want = ort.InferenceSession(static.SerializeToString()).run(None, {"x": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ref.run(None, {"x": x})[0], got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [{"float64": True}, {"conv_lowering": "im2col"}])
def test_model_gradient_against_finite_differences(options):
    """The whole model at two sizes in float64 (onnx.reference), built with the float64 rewrite of
    Conv/AveragePool (window slices) or the im2col lowering."""
    source = MODELS["upsample-strided-same-avgpool"].replace("grad(sum(U(x) * U(x)), x)", "sum(U(x) * U(x))") + """
fn g(x: f32[N, 3, H, W]) { return grad(sum(U(x) * U(x)), x) }
"""
    program = dslc.loads(source)
    f, g = (reference(dslc.compile(program, t, **{"float64": True, **options})) for t in ("c", "g"))
    for shape in [(2, 3, 7, 9), (1, 3, 6, 5)]:
        rng = np.random.default_rng(shape[2])
        x, t = rng.standard_normal(shape), rng.standard_normal(shape)
        eps = 1e-6
        fd = (f.run(None, {"x": x + eps * t})[0] - f.run(None, {"x": x - eps * t})[0]) / (2 * eps)
        analytic = float(np.sum(g.run(None, {"x": x})[0] * t))
        assert abs(float(fd) - analytic) <= 1e-6 * max(abs(analytic), 1.0)


def test_float64_model_runs_in_onnxruntime():
    model = dslc.compile(dslc.loads(MODELS["upsample-strided-same-avgpool"]), "c", float64=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5))
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(model).run(None, {"x": x})[0], rtol=1e-9, atol=1e-12)


def test_bilinear_model_agrees_with_its_static_compilation():
    source = """
model U(x: f32[N, 3, H, W]) -> y { y = upsample2d(x, 2, mode=bilinear) |> conv2d(2, 3, strides=2, padding=same) }
fn c(x: f32[N, 3, H, W]) { return grad(sum(U(x) * U(x)), x) }
"""
    for float64 in (False, True):
        sym = dslc.compile(dslc.loads(source), "c", float64=float64)
        onnx.checker.check_model(sym, full_check=True)
        session, ref = ort.InferenceSession(sym.SerializeToString()), reference(sym)
        for shape in [(2, 3, 5, 4), (1, 3, 1, 3)]:
            static = dslc.compile(dslc.loads(source.replace("f32[N, 3, H, W]", "f32[%d, 3, %d, %d]" % (
                shape[0], shape[2], shape[3]))), "c", float64=float64)
            x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float64 if float64 else np.float32)
            got = session.run(None, {"x": x})[0]
            want = ort.InferenceSession(static.SerializeToString()).run(None, {"x": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ref.run(None, {"x": x})[0], got, rtol=1e-5, atol=1e-5)


ND_SOURCE = """
model S(x: f32[N, 2, L]) -> y {
    y = conv1d(x, 3, 3, strides=2, padding=same) |> max_pool1d(3, strides=2, padding=same)
        |> avg_pool1d(2, padding=same)
}
model V(x: f32[N, 2, D, H, W]) -> y {
    y = conv3d(x, 2, 3, strides=2, padding=same) |> avg_pool3d(2, strides=[1, 2, 2], padding=same)
        |> max_pool3d(2, padding=same)
}
fn s(x: f32[N, 2, L]) { return grad(sum(S(x) * S(x)), x) }
fn v(x: f32[N, 2, D, H, W]) { return grad(sum(V(x) * V(x)), x) }
"""


@pytest.mark.parametrize("target,decl,shapes", [
    ("s", "f32[N, 2, L]", [(2, 2, 9), (1, 2, 6)]),
    ("v", "f32[N, 2, D, H, W]", [(1, 2, 5, 6, 7), (2, 2, 4, 9, 5)])])
def test_1d_and_3d_layers_agree_with_their_static_compilation(target, decl, shapes):
    sym = dslc.compile(dslc.loads(ND_SOURCE), target)
    onnx.checker.check_model(sym, full_check=True)
    session, ref = ort.InferenceSession(sym.SerializeToString()), reference(sym)
    for shape in shapes:
        static = dslc.compile(dslc.loads(ND_SOURCE.replace(decl, "f32[%s]" % ", ".join(map(str, shape)))), target)
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        got = session.run(None, {"x": x})[0]
        want = ort.InferenceSession(static.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ref.run(None, {"x": x})[0], got, rtol=1e-5, atol=1e-5)


def test_bilinear_upsampling_gradient_at_any_size():
    """Resize (linear, half_pixel) by 2 and 3: finite differences at sizes down to one pixel."""
    def fn(b, xs):
        scales = b.const([1.0, 1.0, 2.0, 3.0], "f32")
        return [b.op("Resize", [xs[0], b.const(np.zeros(0), "f32"), scales],
                     {"mode": "linear", "coordinate_transformation_mode": "half_pixel"})]
    fd_at_sizes(fn, [("N", 2, "H", "W")],
                [{"N": 2, "H": 4, "W": 5}, {"N": 1, "H": 1, "W": 2}, {"N": 1, "H": 3, "W": 1}])
