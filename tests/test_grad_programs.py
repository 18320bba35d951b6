"""Gradients of generated programs: hypothesis writes random expressions in the language (activations,
arithmetic with broadcasting, reductions, softmax, matmul, slicing), dslc compiles `grad` of them
into the graph, and finite differences in float64 check every input's gradient.

The expressions keep the shape [3, 4]; broadcasting enters through the inputs `w: f64[4]` and
`c: f64[3, 1]` and through reductions with keepdims. (gelu is left out: onnx.reference computes
Erf in float32, too coarse for these differences; its own check in test_autodiff_ops is looser.)
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

import dslc

# Every leaf is [3, 4]; w and c join by broadcasting.
LEAVES = st.sampled_from(["x", "(x * w)", "(c - x)", "(w + c)", "x"])
UNARY = ["tanh({})", "sigmoid({})", "softplus({})", "exp(clip({}, -3, 3))", "sqrt(square({}) + 1)",
         "log(square({}) + 1)", "({})^2", "-({})", "elu({})", "leaky_relu({}, 0.1)",
         "softmax({}, axis=1)", "log_softmax({}, axis=0)", "({}) @ m", "({}) + mean({}, axis=1, keepdims=true)",
         "({}) * sum({}, axis=0)", "({}) - max({}, axis=1, keepdims=true)",
         "concat(({})[:, 0:2], ({})[:, 2:], axis=1)", "transpose(transpose({}))"]
BINARY = ["({}) + ({})", "({}) * ({})", "({}) - ({})", "({}) / (square({}) + 1)"]


def _unary(inner):
    return st.sampled_from(UNARY).map(lambda t: t.replace("{}", "%s") % ((inner,) * t.count("{}")))


EXPRS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        inner.flatmap(_unary),
        st.tuples(st.sampled_from(BINARY), inner, inner).map(lambda t: t[0].format(t[1], t[2])),
    ),
    max_leaves=8,
)

PROGRAM = """
fn f(x: f64[3, 4], w: f64[4], c: f64[3, 1], m: f64[4, 4]) {{
    y = x * 0 + ({expr})
    loss = sum(y * y) + sum(y)
    gx, gw, gc, gm = grad(loss, [x, w, c, m])
    return loss, gx, gw, gc, gm
}}
"""
INPUTS = {"x": (3, 4), "w": (4,), "c": (3, 1), "m": (4, 4)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=EXPRS, seed=st.integers(0, 2**16))
def test_gradients_of_generated_programs(expr, seed):
    model = dslc.compile(dslc.loads(PROGRAM.format(expr=expr), "gen.dsl"), "f")
    run = ReferenceEvaluator(model)
    rng = np.random.default_rng(seed)
    point = {k: rng.uniform(-1, 1, shape) for k, shape in INPUTS.items()}
    loss, *grads = run.run(None, point)
    direction = {k: rng.standard_normal(shape) for k, shape in INPUTS.items()}
    eps = 1e-6
    plus = run.run(None, {k: point[k] + eps * direction[k] for k in INPUTS})[0]
    minus = run.run(None, {k: point[k] - eps * direction[k] for k in INPUTS})[0]
    numeric = float((plus - minus) / (2 * eps))
    analytic = sum(float(np.sum(g * direction[k])) for g, k in zip(grads, INPUTS))
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), expr
