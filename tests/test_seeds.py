"""SEEDS.md section 1 and 2: the chain-rule numbers exactly, and the bias gradient as a ReduceSum.

Expected values are the book's hand computations, not outputs of the code under test.
"""
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import dslc
from dslc.emit.onnx_emit import check
from dslc.runtime import run_model

SPEC = Path(__file__).parent.parent / "specs" / "chain_rule.dsl"
V = "Scale.y_pred.weight"
K, B = "Affine.y_pred.weight", "Affine.y_pred.bias"


@pytest.fixture(scope="module")
def scale():
    model = dslc.compile(SPEC, "fit_scale", emit="gradients")
    check(model)
    return model


@pytest.fixture(scope="module")
def affine():
    return dslc.compile(SPEC, "fit_affine", emit="gradients")


def _both(model, feeds):
    """Run in onnxruntime and in onnx.reference; they must agree."""
    ort = run_model(model, feeds, device="cpu")
    ref = dict(zip([o.name for o in model.graph.output], ReferenceEvaluator(model).run(None, feeds)))
    for k in ort:
        np.testing.assert_allclose(ort[k], ref[k], rtol=1e-6, atol=1e-7)
    return ort


def test_one_weight_gradient_is_minus_20(scale):
    x, y = np.array([[2.0]], np.float32), np.array([[5.0]], np.float32)
    out = _both(scale, {"x": x, "y": y, V: np.zeros((1, 1), np.float32)})
    assert out["loss"] == 25.0
    assert out[f"grad.{V}"].item() == -20.0
    v = 0.0 - 0.01 * out[f"grad.{V}"].item()  # one SGD step with lr 0.01
    assert v == pytest.approx(0.2, abs=1e-12)


def test_repeated_sgd_steps_converge_to_2_5(scale):
    x, y = np.array([[2.0]], np.float32), np.array([[5.0]], np.float32)
    v = np.zeros((1, 1), np.float32)
    for _ in range(200):
        v = v - 0.01 * run_model(scale, {"x": x, "y": y, V: v}, device="cpu")[f"grad.{V}"]
    assert v.item() == pytest.approx(2.5, abs=1e-5)


def test_two_weights_share_the_loss_edge(affine):
    x, y = np.array([[2.0]], np.float32), np.array([[5.0]], np.float32)
    out = _both(affine, {"x": x, "y": y, K: np.zeros((1, 1), np.float32), B: np.zeros(1, np.float32)})
    # dloss/dy' = 2 (y' - y) = -10 is shared; dy'/dk = x = 2, dy'/db = 1
    assert out[f"grad.{K}"].item() == -20.0
    assert out[f"grad.{B}"].item() == -10.0


def test_batch_loss_is_the_mean(scale):
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    y = np.array([[2.0], [4.0], [6.0]], np.float32)
    out = _both(scale, {"x": x, "y": y, V: np.zeros((1, 1), np.float32)})
    assert out["loss"] == pytest.approx((4 + 16 + 36) / 3)
    # mean of 2 (v x - y) x = 2 (-2 - 8 - 18) / 3
    assert out[f"grad.{V}"].item() == pytest.approx(-56 / 3, rel=1e-6)


def test_weights_default_to_their_initial_values(scale):
    x, y = np.array([[2.0]], np.float32), np.array([[5.0]], np.float32)
    assert run_model(scale, {"x": x, "y": y}, device="cpu")[f"grad.{V}"].item() == -20.0


def test_bias_gradient_is_a_reduce_sum_over_the_batch_axis(affine):
    """The bias is broadcast over the batch, so its gradient sums the batch axis (generic driver rule)."""
    nodes = {o: n for n in affine.graph.node for o in n.output}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in affine.graph.node
              if n.op_type == "Constant"}
    seen, frontier, sums = set(), [f"grad.{B}"], []
    while frontier:
        name = frontier.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        n = nodes[name]
        if n.op_type == "ReduceSum":
            sums.append(consts.get(n.input[1]).tolist())
        if n.op_type in ("Identity", "Reshape", "ReduceSum"):
            frontier.append(n.input[0])
    assert [0] in sums
