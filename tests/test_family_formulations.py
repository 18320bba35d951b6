"""The choice points issue 23 added for the model families (attention_mask, matmul_weight_grad,
layer_norm), in float32 as the family specs train: every option forced, the step's gradients
against PyTorch float64 autograd (float32 tolerance), in onnxruntime and onnx.reference; and the
emitted forms are the ones each option names. (tests/test_opinfo.py checks the same options in
float64, with second derivatives and finite differences.)"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import dslc
from dslc.ir.formulations import recording
from dslc.runtime.session import make_session

torch = pytest.importorskip("torch")
F = torch.nn.functional

# pre-norm causal self-attention with a residual, then a dense layer over the sequence (as charlm)
SOURCE = """
model M(x: f32[N, 5, 8]) -> y {
    n = layer_norm(x)
    y = dense(x + multi_head_attention(n, n, n, 2, causal=true), 3)
}
step train(x: f32[N, 5, 8], t: f32[N, 5, 3]) updates M using sgd(lr=0.1) {
    minimize mse(M(x), t)
}
"""

OPTIONS = [("attention_mask", "where"), ("attention_mask", "additive"), ("matmul_weight_grad", "batched"),
           ("matmul_weight_grad", "flattened"), ("layer_norm", "ops"), ("layer_norm", "onnx")]


def _feeds(model) -> dict:
    rng = np.random.default_rng(0)
    feeds = {"x": (3 + 2 * rng.standard_normal((2, 5, 8))).astype(np.float32),  # a mean away from 0
             "t": rng.standard_normal((2, 5, 3)).astype(np.float32)}
    for init in model.graph.initializer:  # weights off their initial values (gamma 1, biases 0)
        w = onnx.numpy_helper.to_array(init)
        feeds[init.name] = (w + 0.3 * rng.standard_normal(w.shape)).astype(np.float32)
    return feeds


def _torch_grads(feeds: dict) -> dict:
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k != "t") for k, v in feeds.items()}
    n = F.layer_norm(t["x"], (8,), t["M.n.gamma"], t["M.n.beta"], eps=1e-3)
    w = {k: t[f"M.y.{k}.weight"] for k in ("query", "key", "value", "output")}
    b = {k: t[f"M.y.{k}.bias"] for k in ("query", "key", "value", "output")}
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # torch's mask: true where not allowed
    a, _ = F.multi_head_attention_forward(
        n.transpose(0, 1), n.transpose(0, 1), n.transpose(0, 1), 8, 2,
        torch.cat([w["query"].T, w["key"].T, w["value"].T]), torch.cat([b["query"], b["key"], b["value"]]),
        None, None, False, 0.0, w["output"].T, b["output"], training=False, need_weights=False, attn_mask=causal)
    y = (t["x"] + a.transpose(0, 1)) @ t["M.y_2.weight"] + t["M.y_2.bias"]
    loss = F.mse_loss(y, t["t"])
    names = [k for k in t if k != "t"]
    grads = torch.autograd.grad(loss, [t[k] for k in names])
    return {"loss": loss.detach().numpy(), **{f"grad.{k}": g.numpy() for k, g in zip(names, grads)}}


@pytest.mark.parametrize("runtime", ["ort", "ref"])
@pytest.mark.parametrize("point,option", OPTIONS)
def test_each_option_matches_torch_float64_in_float32(point, option, runtime):
    with recording() as taken:
        model = dslc.compile(dslc.loads(SOURCE), "train", emit="gradients", wrt_inputs=True,
                             formulations={point: option})
    assert (point, option) in taken
    feeds = _feeds(model)
    feeds = {i.name: feeds[i.name] for i in model.graph.input}
    names = [o.name for o in model.graph.output]
    if runtime == "ort":
        got = make_session(model, "cpu").run(names, feeds)
    else:
        from onnx.reference import ReferenceEvaluator
        got = ReferenceEvaluator(model).run(names, feeds)
    want = _torch_grads(feeds)
    for name, value in zip(names, got):
        if name == "grad.t":
            continue
        scale = float(np.max(np.abs(want[name])))
        if name.endswith("key.bias"):  # mathematically zero (softmax ignores a shift along keys): round-off
            assert float(np.max(np.abs(value))) < 1e-6
            continue
        np.testing.assert_allclose(value, want[name], rtol=2e-4, atol=2e-5 * scale, err_msg=name)


def test_each_option_emits_its_form():
    def ops(point, option):
        return {n.op_type for n in dslc.compile(dslc.loads(SOURCE), "train", formulations={point: option}).graph.node}
    assert "LayerNormalization" in ops("layer_norm", "onnx")
    assert "LayerNormalization" not in ops("layer_norm", "ops")
    # the additive mask has no Where on the scores' gradient: the only Where builds the [T, T] bias
    # (folded to a constant), against one forward and one backward Where on [N, H, T, T]
    where = dslc.compile(dslc.loads(SOURCE), "train", formulations={"attention_mask": "where"})
    additive = dslc.compile(dslc.loads(SOURCE), "train", formulations={"attention_mask": "additive"})
    assert sum(n.op_type == "Where" for n in additive.graph.node) < sum(n.op_type == "Where" for n in where.graph.node)
    # one 2-D GEMM per dense weight instead of a batched MatMul and a ReduceSum
    batched = dslc.compile(dslc.loads(SOURCE), "train", formulations={"matmul_weight_grad": "batched"})
    flat = dslc.compile(dslc.loads(SOURCE), "train", formulations={"matmul_weight_grad": "flattened"})
    assert (sum(n.op_type == "ReduceSum" for n in flat.graph.node)
            < sum(n.op_type == "ReduceSum" for n in batched.graph.node))


def test_float64_layer_normalization_is_written_out():
    """A float64 graph has no LayerNormalization (no kernel in onnxruntime; ONNX's statistics would
    be float32): passes/float64_ops.py writes it in float64 ops, Mean and InvStdDev included."""
    src = SOURCE.replace("f32", "f64")
    model = dslc.compile(dslc.loads(src), "train", formulations={"layer_norm": "onnx"})
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    make_session(model, "cpu")  # loads
