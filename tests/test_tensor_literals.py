"""Issue 21's language items: `return grad(loss, [a, b])`, list literals as tensors anywhere (built-in
arguments, arithmetic, typed parameters), `inf` / `-inf`, float64 `embedding` / `one_hot` beside
float64 values, and the shapes of `arange` / `zeros` / `full` on dims known at run time. Expected
values from numpy."""
import numpy as np
import onnxruntime as ort
import pytest

import dslc
from dslc.diagnostics import DslError


def _run(source: str, target: str, **feeds):
    model = dslc.compile(dslc.loads(source, "t.dsl"), target)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, sess.run(None, feeds)


def test_return_of_a_multi_gradient_grad():
    src = """fn f(x: f64[3], w: f64[3]) {
        loss = sum(x * w * w)
        return grad(loss, [x, w]), loss
    }"""
    x, w = np.array([1.0, 2, 3]), np.array([0.5, -1, 2])
    model, (gx, gw, loss) = _run(src, "f", x=x, w=w)
    assert [o.name for o in model.graph.output] == ["output_0", "output_1", "loss"]
    np.testing.assert_allclose(gx, w * w)
    np.testing.assert_allclose(gw, 2 * x * w)
    np.testing.assert_allclose(loss, np.sum(x * w * w))


def test_list_literals_are_tensors_everywhere():
    src = """model M(x: f32[3], k: i64[2]) -> y {
        y = x * [1, 2, 3] + cast([1, 2, 3], f32) + sum(cast(k + [1, 2], f32)) + maximum(x, [0, 1, 2])
            + sum(embedding([0, 1, 2], 4, 2), axis=1) * 0
    }
    fn f(x: f32[3]) { return M(x, [4, 5]) }"""
    x = np.array([1, -1, 0], np.float32)
    _, (y,) = _run(src, "f", x=x)
    np.testing.assert_allclose(y, x * [1, 2, 3] + [1, 2, 3] + 12 + np.maximum(x, [0, 1, 2]))


def test_a_float_list_for_an_integer_parameter_is_an_error():
    src = """model M(k: i64[2]) -> y { y = k * 2 }
    fn f(x: f32[2]) { return cast(M([1.5, 2]), f32) * x }"""
    with pytest.raises(DslError, match="list of floats"):
        dslc.compile(dslc.loads(src, "t.dsl"), "f")


def test_inf_and_minus_inf():
    src = """fn f(x: f32[4]) { return where(x > 0, x, -inf), minimum(x, inf), full([2], -inf) }"""
    x = np.array([1, -1, 0, 2], np.float32)
    _, (a, b, c) = _run(src, "f", x=x)
    np.testing.assert_array_equal(a, np.where(x > 0, x, -np.inf))
    np.testing.assert_array_equal(b, x)
    np.testing.assert_array_equal(c, [-np.inf, -np.inf])


def test_embedding_and_one_hot_are_f64_beside_f64_values():
    src = """model M(x: i64[2, 4], s: f64[2, 4, 1]) -> y {
        y = embedding(x, 6, 3) * s + one_hot(x, 6)[:, :, :3] + cast(embedding(x, 6, 3, dtype=f32), f64)[:, :, :1] * 0
    }"""
    model = dslc.compile(dslc.loads(src, "t.dsl"), "M")
    types = {i.name: i.data_type for i in model.graph.initializer if i.name.startswith("M.")}
    assert types == {"M.y.weight": 11, "M.y_2.weight": 1}  # DOUBLE, then FLOAT as asked
    assert model.graph.output[0].type.tensor_type.elem_type == 11


def test_arange_and_fills_on_run_time_dims():
    src = """fn f(x: f32[N, 3], n: i64) {
        return arange(1, N), arange(n, 0, -2), cast(arange(N), f32)[:, None] * x + ones([N, 3]) + zeros(like=x)
    }"""
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    model, (a, b, c) = _run(src, "f", x=x, n=np.array(7))
    dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert dims == [["N-1"], ["ceil((n)/2)"], ["N", 3]]
    np.testing.assert_array_equal(a, np.arange(1, 5))
    np.testing.assert_array_equal(b, np.arange(7, 0, -2))
    np.testing.assert_allclose(c, np.arange(5)[:, None] * x + 1)
