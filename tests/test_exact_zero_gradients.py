"""Exact zeros where the mathematics gives an exact zero gradient (issue 19).

A term constant along a training-mode batch norm's reduced axes (a dense or convolution bias right
before it, or the beta of a batch norm before another) cancels exactly: BN(y + s) = BN(y). Its
gradient is exactly zero, but differentiating x - mean(x) piece by piece gives sum(g - mean(g)), a
float32 round-off of ~1e-8 whose sign each runtime picks for itself; Adam, which moves an element by
about lr whatever its gradient's size once its moments are round-off too, turned that into weights
that drift apart across runtimes. Attention's key bias cancels in the softmax the same way. Units dead for the whole batch (relu) and embedding rows no index
reads must stay exact zeros too. Expected values come from the mathematics (the zeros, the moving
mean) or from PyTorch autograd in float64."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import dslc

SRC = """
model DenseBN(x: f32[N, 5]) -> y {
    h = dense(x, 4)
    y = batch_norm(h)
}
model ConvBN(x: f32[N, 2, 6, 6]) -> y {
    h = conv2d(x, 3, kernel=3, padding=same)
    y = batch_norm(h)
}
model UpBN(x: f32[N, 2, 3, 3]) -> y {
    h = conv2d_transpose(x, 3, kernel=3, strides=2, padding=same)
    y = batch_norm(h)
}
model TwoBN(x: f32[N, 3, 4, 4]) -> y {
    a = batch_norm(x)
    y = batch_norm(a)
}
model DenseReluBN(x: f32[N, 5]) -> y {
    h = dense(x, 4, activation=relu)
    y = batch_norm(h)
}
model Dead(x: f32[N, 5], k: i64[N]) -> y {
    e = embedding(k, 6, 5)
    h = dense(x * e, 4, activation=relu)
    y = dense(h, 2)
}
step fit_dense(x: f32[N, 5], t: f32[N, 4]) updates DenseBN using adam(lr=0.01) {
    minimize mse(DenseBN(x), t)
}
step fit_conv(x: f32[N, 2, 6, 6], t: f32[N, 3, 6, 6]) updates ConvBN using adam(lr=0.01) {
    minimize mse(ConvBN(x), t)
}
step fit_up(x: f32[N, 2, 3, 3], t: f32[N, 3, 6, 6]) updates UpBN using adam(lr=0.01) {
    minimize mse(UpBN(x), t)
}
step fit_two(x: f32[N, 3, 4, 4], t: f32[N, 3, 4, 4]) updates TwoBN using adam(lr=0.01) {
    minimize mse(TwoBN(x), t)
}
step fit_relu(x: f32[N, 5], t: f32[N, 4]) updates DenseReluBN using adam(lr=0.01) {
    minimize mse(DenseReluBN(x), t)
}
step fit_dead(x: f32[N, 5], k: i64[N], t: f32[N, 2]) updates Dead using adam(lr=0.01) {
    minimize mse(Dead(x, k), t)
}
model Attn(x: f32[N, 4, 8]) -> y {
    y = multi_head_attention(x, x, x, 2, causal=true)
}
step fit_attn(x: f32[N, 4, 8], t: f32[N, 4, 8]) updates Attn using adam(lr=0.01) {
    minimize mse(Attn(x), t)
}
"""

N = 6
SHAPES = {"fit_dense": ((N, 5), (N, 4)), "fit_conv": ((N, 2, 6, 6), (N, 3, 6, 6)),
          "fit_up": ((N, 2, 3, 3), (N, 3, 6, 6)), "fit_two": ((N, 3, 4, 4), (N, 3, 4, 4)),
          "fit_relu": ((N, 5), (N, 4)), "fit_attn": ((N, 4, 8), (N, 4, 8))}
# The term that cancels in each step: (weight, the batch norm whose statistics remove it)
CANCELLED = {"fit_dense": "DenseBN.h.bias", "fit_conv": "ConvBN.h.bias", "fit_up": "UpBN.h.bias",
             "fit_two": "TwoBN.a.beta",
             # attention's key bias adds q . bias to all of a query's scores: the softmax removes it
             "fit_attn": "Attn.y.key.bias"}


@pytest.fixture(scope="module")
def prog():
    return dslc.loads(SRC)


def _weights(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _feeds(model, target: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The batch, and every float weight drawn afresh (biases and betas nonzero: not a zero point)."""
    rng = np.random.default_rng(seed)
    xs, ts = SHAPES[target]
    feeds = {"x": rng.standard_normal(xs).astype(np.float32), "t": rng.standard_normal(ts).astype(np.float32)}
    for name, w in _weights(model).items():
        if w.dtype.kind == "f" and not name.startswith(("adam.", "step", "seed")) and "moving" not in name:
            feeds[name] = (rng.standard_normal(w.shape) * 0.5).astype(np.float32)
    if any(w.dtype == np.float64 for w in _weights(model).values()):
        feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    return feeds


def _run(model, feeds) -> list[dict]:
    """Outputs by name in onnxruntime and in onnx.reference."""
    names = [o.name for o in model.graph.output]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    got = [ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)]
    got.append(ReferenceEvaluator(model).run(None, feeds))
    return [dict(zip(names, g)) for g in got]


@pytest.mark.parametrize("target", sorted(CANCELLED))
@pytest.mark.parametrize("float64", [False, True])
def test_term_before_training_batch_norm_has_exact_zero_gradient(prog, target, float64):
    model = dslc.compile(prog, target, emit="gradients", float64=float64)
    for out in _run(model, _feeds(model, target)):
        g = out[f"grad.{CANCELLED[target]}"]
        assert np.all(g == 0), f"{target}: {g}"
        # the other gradients are not zero (the step still learns)
        assert all(np.any(v != 0) for k, v in out.items() if k.startswith("grad.") and k != f"grad.{CANCELLED[target]}")


def test_bias_before_relu_then_batch_norm_keeps_its_gradient(prog):
    """With an activation between them the bias does not cancel: its gradient is not rewritten."""
    model = dslc.compile(prog, "fit_relu", emit="gradients")
    for out in _run(model, _feeds(model, "fit_relu")):
        assert np.all(np.abs(out["grad.DenseReluBN.h.bias"]) > 1e-4)


@pytest.mark.parametrize("target", sorted(CANCELLED))
def test_cancelled_term_never_moves_under_adam(prog, target):
    """Ten Adam steps (lr 0.01) fed back: the cancelled weight keeps its value bit for bit in both
    runtimes (a zero gradient gives zero moments, and 0 / (0 + eps) = 0)."""
    model = dslc.compile(prog, target)
    feeds = _feeds(model, target, seed=1)
    name = CANCELLED[target]
    start = feeds[name].copy()
    for k in range(2):
        state = dict(feeds)
        for _ in range(10):
            out = _run(model, state)[k]
            state.update({n[:-5]: v for n, v in out.items() if n.endswith(".next") and n[:-5] in state or
                          n.endswith(".next") and n[:-5] in {i.name for i in model.graph.input}})
        assert np.array_equal(state[name], start), ("onnxruntime", "onnx.reference")[k]


def test_dense_batch_norm_against_torch(prog):
    """The rewritten batch norm computes the same loss, gradients and moving mean as PyTorch
    (float64 autograd, Keras' eps 1e-3 and momentum 0.99): the moving mean still includes the bias."""
    torch = pytest.importorskip("torch")
    model = dslc.compile(prog, "fit_dense", emit="gradients", float64=True)
    feeds = _feeds(model, "fit_dense")
    out = _run(model, feeds)[0]
    t = {k: torch.tensor(v, requires_grad=k.startswith("DenseBN.")) for k, v in feeds.items()}
    h = t["x"] @ t["DenseBN.h.weight"] + t["DenseBN.h.bias"]
    mean = h.mean(0)
    y = torch.nn.functional.batch_norm(h, None, None, t["DenseBN.y.gamma"], t["DenseBN.y.beta"],
                                       training=True, eps=1e-3)
    loss = ((y - t["t"]) ** 2).mean()
    loss.backward()
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-12)
    for k in ("DenseBN.h.weight", "DenseBN.y.gamma", "DenseBN.y.beta"):
        np.testing.assert_allclose(out[f"grad.{k}"], t[k].grad.numpy(), rtol=1e-9, atol=1e-12)
    assert abs(t["DenseBN.h.bias"].grad.numpy()).max() < 1e-14  # torch: round-off; dslc: exact zero
    np.testing.assert_allclose(out["DenseBN.y.moving_mean.next"], 0.01 * mean.detach().numpy(), rtol=1e-12)


def test_conv_batch_norm_moving_mean_includes_the_bias(prog):
    """0.99 * 0 + 0.01 * the batch mean of conv(x) + bias, the mean written out in numpy."""
    model = dslc.compile(prog, "fit_conv", emit="gradients", float64=True)
    feeds = _feeds(model, "fit_conv")
    out = _run(model, feeds)[0]
    x, w, bias = feeds["x"], feeds["ConvBN.h.weight"], feeds["ConvBN.h.bias"]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((N, 3, 6, 6))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 6, j:j + 6], w[:, :, i, j])
    np.testing.assert_allclose(out["ConvBN.y.moving_mean.next"], 0.01 * (conv.mean((0, 2, 3)) + bias), rtol=1e-12)


def test_dead_units_and_unread_rows_are_exact_zeros(prog):
    """A relu unit dead for the whole batch and embedding rows that no index reads: exact zeros in
    both runtimes (and in float64)."""
    model = dslc.compile(prog, "fit_dead", emit="gradients")
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((N, 5)).astype(np.float32), "k": np.array([0, 1, 1, 3, 0, 3]),
             "t": rng.standard_normal((N, 2)).astype(np.float32)}
    w = _weights(model)
    bias = np.array([1.0, 1.0, -1e3, 1.0], np.float32)  # unit 2 dead for every sample, the others alive
    feeds.update({"Dead.h.bias": bias, "Dead.h.weight": w["Dead.h.weight"], "Dead.y.weight": w["Dead.y.weight"],
                  "Dead.e.weight": w["Dead.e.weight"]})
    for out in _run(model, feeds):
        assert out["grad.Dead.h.bias"][2] == 0 and not out["grad.Dead.h.weight"][:, 2].any()
        assert not out["grad.Dead.y.weight"][2].any()
        assert not out["grad.Dead.e.weight"][[2, 4, 5]].any() and out["grad.Dead.e.weight"][[0, 1, 3]].all()
