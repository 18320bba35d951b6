"""Dropout's keep mask compared on the generator's integer bits (random.keep_mask) against the float
form it replaced (uniform(x) >= rate): the same mask bit for bit, in onnxruntime and onnx.reference,
for many elements, several rates and both float widths; plus the threshold's equivalence over every
possible 24-bit draw, in numpy's IEEE arithmetic (what Cast, Mul and GreaterOrEqual compute)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType
from dslc.lower import random as R

RATES = [0.1, 0.25, 0.3, 0.5, 0.7, 0.999, 1e-9, 1 - 1e-9, 0.1 + 2 ** -30]
NP = {"f32": np.float32, "f64": np.float64}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("rate", RATES)
def test_threshold_equals_float_comparison_for_every_draw(rate, dtype):
    top = np.arange(2 ** 24, dtype=np.uint32)  # every value of bits >> 8
    f = NP[dtype]
    want = (top.astype(f) * f(2.0 ** -24)) >= f(rate)  # the float form, operation by operation
    got = top >= np.uint32(R.at_least_threshold(rate, dtype))
    assert np.array_equal(got, want)


def _graph(rate: float, dtype: str):
    """seed -> (float-form mask, integer-form mask) of one f32/f64 tensor [64, 4096], same key."""
    g = Graph("masks")
    b = Builder(g)
    seed = b.input("seed", TensorType("i64", ()))
    like = b.input("x", TensorType(dtype, (64, 4096)))
    key = R.site_key(b, seed, None, 3, None)
    old = b.op("GreaterOrEqual", [R.uniform(b, like, [key], dtype), b.const(rate, dtype)])
    new = R.keep_mask(b, like, [key], rate, dtype)
    g.outputs = [b.op("Identity", [old]), b.op("Identity", [new])]
    return to_onnx(g)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.999, 1e-9])
def test_same_mask_as_the_float_form(rate, dtype):
    model = _graph(rate, dtype)
    check(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(model)
    for seed in (0, 7):
        feeds = {"seed": np.array(seed, np.int64), "x": np.zeros((64, 4096), NP[dtype])}
        old, new = sess.run(None, feeds)
        assert new.dtype == np.bool_ and np.array_equal(old, new)
        assert 0 < new.sum() < new.size or rate in (0.999, 1e-9)
        r_old, r_new = ref.run(None, feeds)
        assert np.array_equal(r_old, old) and np.array_equal(r_new, new)
