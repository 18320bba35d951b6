"""Float64 models in onnxruntime. Its CPU provider lacks float64 kernels for several ops (the probe
below finds them by trying); dslc rewrites those nodes (passes/float64_ops.py), so every built-in,
compiled in float64 with its gradient, runs in onnxruntime and agrees with onnx.reference; the
rewritten activations match the math library to a few ulps; a model from elsewhere that uses a
missing kernel gets a dslc error naming the op instead of onnxruntime's NOT_IMPLEMENTED."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import dslc
from dslc.diagnostics import DslError
from dslc.emit.onnx_emit import check
from dslc.lower.builtins import BUILTINS
from dslc.passes.float64_ops import REWRITES
from dslc.runtime.session import run_model
from gradcheck import reference

X2, X3, X4, X5 = "x: f64[3, 6]", "x: f64[2, 4, 9]", "x: f64[2, 4, 6, 6]", "x: f64[2, 2, 4, 4, 4]"
I1 = "i: i64[3]"
# builtin -> (inputs, expression); every float built-in of the language (COVERED checks the list)
CASES = {
    "dense": (X2, "dense(x, 3)"), "conv2d": (X4, "conv2d(x, 3, strides=2, padding=same, groups=1)"),
    "conv2d_transpose": (X4, "conv2d_transpose(x, 2, kernel=3, strides=2, padding=1, output_padding=1)"),
    "batch_norm": (X4, "batch_norm(x)"), "embedding": (I1, "cast(embedding(i, 5, 4), f64)"),
    "max_pool2d": (X4, "max_pool2d(x, 3, strides=2, padding=same)"),
    "avg_pool2d": (X4, "avg_pool2d(x, 3, strides=2, padding=1)"), "global_avg_pool2d": (X4, "global_avg_pool2d(x)"),
    "dropout": (X2, "dropout(x, 0.5)"), "flatten": (X4, "flatten(x)"), "reshape": (X4, "reshape(x, [2, -1])"),
    "concat": (X2, "concat(x, x, axis=1)"), "upsample2d": (X4, "upsample2d(x, 2, mode=bilinear)"),
    "sum": (X3, "sum(x, axis=[1, 2])"), "mean": (X3, "mean(x, axis=1)"), "max": (X3, "max(x, axis=2)"),
    "min": (X3, "min(x)"), "argmax": (X2, "cast(argmax(x, axis=1), f64)"), "cast": (X2, "cast(cast(x, f32), f64)"),
    "where": (X2, "where(x > 0, x, 2.0 * x)"), "one_hot": (I1, "cast(one_hot(i, 5), f64)"),
    "transpose": (X3, "transpose(x, [2, 0, 1])"), "random_normal": (X2, "x * random_normal(like=x)"),
    "random_uniform": (X2, "x * random_uniform(like=x)"), "randint": (X2, "x * cast(randint(3, [3, 6]), f64)"),
    "mse": (X2, "mse(x, x * x)"), "mae": (X2, "mae(x, 0.5 * x + 1.0)"), "huber": (X2, "huber(x, x * x)"),
    "binary_crossentropy": (X2, "binary_crossentropy(sigmoid(x), sigmoid(2.0 * x))"),
    "categorical_crossentropy": (X2, "categorical_crossentropy(x, softmax(2.0 * x), from_logits=true, "
                                     "label_smoothing=0.1)"),
    "sparse_categorical_crossentropy": (X2, "sparse_categorical_crossentropy(softmax(x), argmax(x * x, axis=1))"),
    "kl_divergence": (X2, "kl_divergence(softmax(x), softmax(x * x))"),
    "grad": (X2, "grad(sum(exp(x) * x), x)"), "stop_gradient": (X2, "x * stop_gradient(x)"),
    "clip": (X2, "clip(x, -0.5, 0.5)"), "minimum": (X2, "minimum(x, 0.2)"), "maximum": (X2, "maximum(x, x * x)"),
    "log": (X2, "log(x * x + 1.0)"), "sqrt": (X2, "sqrt(x * x + 1.0)"), "square": (X2, "square(x)"),
    "layer_norm": (X3, "layer_norm(x)"), "group_norm": (X4, "group_norm(x, 2)"),
    "conv1d": (X3, "conv1d(x, 4, kernel=3, padding=same, groups=2)"),
    "conv3d": (X5, "conv3d(x, 4, kernel=[2, 3, 2], strides=[1, 2, 1], padding=same, groups=2)"),
    "max_pool1d": (X3, "max_pool1d(x, 3, strides=2, padding=1)"), "avg_pool1d": (X3, "avg_pool1d(x, 3, padding=same)"),
    "global_avg_pool1d": (X3, "global_avg_pool1d(x)"), "max_pool3d": (X5, "max_pool3d(x, 2, padding=same)"),
    "avg_pool3d": (X5, "avg_pool3d(x, 3, strides=2, padding=1)"), "global_avg_pool3d": (X5, "global_avg_pool3d(x)"),
}
CASES.update({  # issue 21 (float values beside f64 ones are f64: arange of floats, zeros, ones, full)
    "arange": (X2, "x * cast(arange(6), f64) + arange(0.0, 3.0, 0.5)"), "zeros": (X2, "x + zeros([3, 6])"),
    "ones": (X2, "x * ones(like=x)"), "full": (X2, "x * full([3, 1], 0.5)"),
    "masked_fill": (X2, "softmax(masked_fill(x, x > 1.5, -inf))"),
    "lstm": (X3, "lstm(x, 3, return_sequences=true)"), "gru": (X3, "gru(x, 3, unroll=false)"),
    # (head size 4: onnxruntime folds the query gradient's scale 1 / sqrt(head size) into a FusedMatMul
    # whose alpha is float32, exact for 1 / sqrt(4) only; README "Conventions")
    "multi_head_attention": (X3, "multi_head_attention(x[:, :, :8], x, x, 2, causal=true)"),
    "positional_embedding": (X3, "x + positional_embedding(x)"),
})
UNARY = ["relu", "sigmoid", "tanh", "softplus", "leaky_relu", "elu", "softmax", "log_softmax", "gelu", "silu",
         "swish", "mish", "exp", "abs", "sin", "cos", "tan", "atan", "erf", "sign", "floor", "ceil", "round",
         "relu6", "hard_sigmoid", "hard_swish"]
CASES.update({name: (X2, f"{name}(x)") for name in UNARY})


def test_every_builtin_is_covered():
    assert set(BUILTINS) == set(CASES)


def _feeds(model, rng):
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.integers(0, 5, shape) if i.name == "i" else rng.uniform(-2, 2, shape)
    return feeds


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_runs_in_float64(name):
    inputs, expr = CASES[name]
    wrt = "" if inputs == I1 else ", grad(sum(y * y), x)"
    src = (f"model M({inputs}) -> y {{\n    y = {expr}\n}}\n"
           f"fn probe({inputs}) {{\n    y = M({inputs.split(':')[0]}, training=true)\n    return y{wrt}\n}}\n")
    model = dslc.compile(dslc.loads(src, f"{name}.dsl"), "probe")
    check(model)
    feeds = _feeds(model, np.random.default_rng(0))
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = reference(model).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_float64_option_runs_the_convnet_train_step():
    model = dslc.compile("specs/convnet.dsl", "train_convnet", float64=True)
    rng = np.random.default_rng(1)
    feeds = {"image": rng.uniform(0, 1, (3, 1, 28, 28)), "label": rng.integers(0, 10, 3)}
    ours = run_model(model, feeds, device="cpu")
    assert all(v.dtype != np.float32 for v in ours.values())
    want = reference(model).run(None, feeds)
    for (name, g), w in zip(ours.items(), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=name)


EDGES = np.concatenate([np.linspace(-40, 40, 81), np.linspace(-3, 3, 61), np.geomspace(1e-12, 1e3, 40),
                        -np.geomspace(1e-12, 1e3, 40), [0.0, 0.66, 2.414213562373095, 8.0, -8.0, 1.0, -1.0]])
MATH = {  # the rewritten activations against the math library
    "softplus": lambda x: np.logaddexp(0, x), "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.3 * x), "erf": np.vectorize(math.erf), "atan": np.arctan,
    "tan": np.tan, "gelu": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
}


@pytest.mark.parametrize("name", sorted(MATH))
def test_rewritten_activations_are_accurate(name):
    src = f"fn f(x: f64[{len(EDGES)}]) {{ return {name}(x) }}\n"
    model = dslc.compile(dslc.loads(src, "acts.dsl"), "f")
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": EDGES})
    want = MATH[name](EDGES)
    # tan: sin / cos loses what cos loses near its zeros (1e-13 at 36.13); gelu: erf(x / sqrt 2)
    ulps = {"tan": 1000, "gelu": 16}.get(name, 4)
    np.testing.assert_allclose(got, want, rtol=ulps * 2.3e-16, atol=1e-300)


def _single_node(op, attrs=None, extra=()):
    inits = [onnx.numpy_helper.from_array(a, f"c{i}") for i, a in enumerate(extra)]
    graph = helper.make_graph([helper.make_node(op, ["x", *[t.name for t in inits]], ["y"], **(attrs or {}))], "p",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


PROBES = {  # op -> (attributes, extra inputs, x's shape)
    "Softplus": ({}, (), (3,)), "Elu": ({}, (), (3,)), "LeakyRelu": ({}, (), (3,)), "Erf": ({}, (), (3,)),
    "Tan": ({}, (), (3,)), "Atan": ({}, (), (3,)), "Conv": ({}, (np.ones((2, 2, 3, 3)),), (1, 2, 4, 4)),
    "ConvTranspose": ({}, (np.ones((2, 2, 3, 3)),), (1, 2, 4, 4)),
    "AveragePool": ({"kernel_shape": [2, 2]}, (), (1, 2, 4, 4)), "GlobalAveragePool": ({}, (), (1, 2, 4, 4)),
    "Resize": ({"mode": "linear"}, (np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)), (1, 2, 4, 4)),
}


@pytest.mark.parametrize("op", sorted(PROBES))
def test_onnxruntime_lacks_the_rewritten_float64_kernels(op):
    """Why each rewrite exists; when onnxruntime gains a kernel, this says which rewrite may go.
    (OneHot's gap is a float64 `values` input with int64 indices: in test_builtin_runs_in_float64.)"""
    assert op in REWRITES
    attrs, extra, shape = PROBES[op]
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(_single_node(op, attrs, extra).SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_foreign_float64_model_gets_a_clear_error():
    with pytest.raises(DslError, match="onnxruntime has no Softplus kernel") as info:
        run_model(_single_node("Softplus"), {"x": np.ones(3)}, device="cpu")
    assert "recompile the .dsl" in info.value.hint
