"""The reordering pass (dslc/passes/reorder.py): MaxPool(Relu(x)) -> Relu(MaxPool(x)) before a graph
is differentiated. The value and the gradient (tied windows included: zeros and negative windows, as
after a relu) are the same before and after it, in onnxruntime and onnx's reference evaluator; the
expected gradient is numpy written from the definition of max-pool routing."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
from dslc.autodiff import vjp
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType
from dslc.ir.verify import verify
from dslc.passes.reorder import pool_before_relu
from test_maxpool_ties import first_max_grad

SHAPE = (2, 3, 6, 7)


def _relu_pool_grad(reorder: bool, extra_use: bool = False):
    """y = max_pool(relu(x)) and dy/dx (against a fed cotangent), the pass run before `vjp` or not."""
    b = Builder(Graph("g"))
    x = b.input("x", TensorType("f32", SHAPE))
    r = b.op("Relu", [x])
    y = b.op("MaxPool", [r], {"kernel_shape": [2, 2], "strides": [2, 2]})
    outs = [y] + ([b.op("ReduceSum", [r], {"keepdims": 0})] if extra_use else [])
    changed = pool_before_relu(b.graph) if reorder else False
    dy = b.input("dy", TensorType("f32", (2, 3, 3, 3)))
    (dx,) = vjp(b, [y], [dy], [x])
    names = ["y"] + ["s"] * extra_use + ["dx"]
    b.graph.outputs = [b.op("Identity", [v], names=[n]) for v, n in zip(outs + [dx], names)]
    verify(b.graph)
    model = to_onnx(b.graph)
    check(model)
    return model, changed, [n.op for n in b.graph.nodes]


def _run_both(model, feeds):
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = ReferenceEvaluator(model).run(None, feeds)
    return got, ref


def test_relu_moves_after_the_pool_and_nothing_changes():
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, SHAPE).astype(np.float32)  # ties, all-negative windows, zeros
    x[0, 0] = 0.0
    dy = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    before, changed_before, _ = _relu_pool_grad(reorder=False)
    after, changed, ops = _relu_pool_grad(reorder=True)
    assert changed and not changed_before
    assert ops.index("Relu") == ops.index("MaxPool") + 1  # the relu now reads the pooled tensor
    want = first_max_grad(np.maximum(x, 0), dy, (2, 2), (2, 2), [0, 0, 0, 0]) * (x > 0)
    for model in (before, after):
        for y, dx in _run_both(model, {"x": x, "dy": dy}):
            np.testing.assert_array_equal(y, np.maximum(x, 0)[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).max((3, 5)))
            np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-6)


def test_a_relu_read_elsewhere_stays():
    _, changed, ops = _relu_pool_grad(reorder=True, extra_use=True)
    assert not changed
    assert ops.index("Relu") < ops.index("MaxPool")


@pytest.mark.parametrize("target", ["train_convnet", "train_mnist_convnet"])
def test_step_graphs_pool_before_the_relu(target):
    """In the convnet steps every conv -> relu -> pool runs its relu (and its mask) at pooled size."""
    model = dslc.compile("specs/convnet.dsl", target)
    ops = [n.op_type for n in model.graph.node]
    pools = [i for i, op in enumerate(ops) if op == "MaxPool"]
    assert pools and all(ops[i + 1] == "Relu" for i in pools)
