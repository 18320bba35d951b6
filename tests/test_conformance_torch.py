"""dslc against PyTorch: each layer, activation and loss compiled by dslc (run in onnxruntime) and
its PyTorch counterpart, with identical weights on the same inputs, must agree on forward values
and on gradients with respect to inputs and weights, at float32 tolerance (max |diff| / max |torch|).

Layouts (README, "Conventions"): a dense weight is [in, out] (torch Linear: [out, in], so W.T);
conv2d weights are [out, in/groups, kh, kw] and conv2d_transpose weights [in, out, kh, kw], both
as in torch. Skipped where torch is not installed (it is in the `bench` extra).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dslc

torch = pytest.importorskip("torch")
F = torch.nn.functional
RTOL = 1e-4


@dataclass
class Case:
    name: str
    expr: str                      # dslc, of `x`
    shape: tuple                   # x's shape
    torch_fn: Callable             # (x, weights by short name) -> y
    weights: tuple = ()            # short names: "weight", "bias", "gamma", ...
    training: bool = False
    integer_input: bool = False
    relu_input: bool = False       # many exact ties (zeros), as after a relu


def dense_t(x, w):
    return F.linear(x, w["weight"].T, w["bias"])  # dslc: [in, out]; torch: [out, in]


def conv_t(**kw):
    return lambda x, w: F.conv2d(x, w["weight"], w["bias"], **kw)


def bn_t(training):
    def fn(x, w):
        mean, var = (None, None) if training else (w["moving_mean"], w["moving_variance"])
        return F.batch_norm(x, mean, var, w["gamma"], w["beta"], training=training, eps=1e-3)
    return fn


IMG = (2, 4, 8, 8)
SEQ = (2, 4, 20)
VOL = (2, 3, 6, 5, 6)


def convt_t(**kw):
    return lambda x, w: F.conv_transpose2d(x, w["weight"], w["bias"], **kw)
ACTIVATIONS = {
    "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": F.softplus,
    "gelu": F.gelu, "silu": F.silu, "swish": F.silu, "mish": F.mish, "elu": F.elu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.3),  # Keras' default alpha
    "softmax": lambda x: F.softmax(x, -1), "log_softmax": lambda x: F.log_softmax(x, -1),
    "relu6": F.relu6, "hard_sigmoid": F.hardsigmoid, "hard_swish": F.hardswish,
}
LAYERS = [
    Case("dense", "dense(x, 5)", (3, 6), dense_t, ("weight", "bias")),
    Case("conv2d", "conv2d(x, 6, kernel=3)", IMG, conv_t(), ("weight", "bias")),
    Case("conv2d-stride-pad", "conv2d(x, 6, kernel=3, strides=2, padding=1)", IMG, conv_t(stride=2, padding=1),
         ("weight", "bias")),
    Case("conv2d-dilation-same", "conv2d(x, 3, kernel=3, dilation=2, padding=same)", IMG,
         conv_t(dilation=2, padding=2), ("weight", "bias")),
    Case("conv2d-groups", "conv2d(x, 6, kernel=[3, 2], strides=[1, 2], padding=[1, 0], groups=2)", IMG,
         conv_t(stride=(1, 2), padding=(1, 0), groups=2), ("weight", "bias")),
    Case("conv2d-depthwise", "conv2d(x, 4, kernel=3, groups=4, use_bias=false)", IMG,
         lambda x, w: F.conv2d(x, w["weight"], groups=4), ("weight",)),
    Case("conv2d_transpose", "conv2d_transpose(x, 3, kernel=3, strides=2, padding=1)", IMG,
         lambda x, w: F.conv_transpose2d(x, w["weight"], w["bias"], stride=2, padding=1), ("weight", "bias")),
    Case("conv2d_transpose-dilation", "conv2d_transpose(x, 2, kernel=2, strides=1, dilation=2)", IMG,
         lambda x, w: F.conv_transpose2d(x, w["weight"], w["bias"], dilation=2), ("weight", "bias")),
    Case("conv2d_transpose-padding-output_padding", "conv2d_transpose(x, 3, kernel=3, strides=2, padding=1, "
         "output_padding=1)", IMG, convt_t(stride=2, padding=1, output_padding=1), ("weight", "bias")),
    Case("conv2d_transpose-asymmetric-output_padding",
         "conv2d_transpose(x, 2, kernel=[4, 3], strides=[3, 2], padding=[2, 1], output_padding=[2, 1])", IMG,
         convt_t(stride=(3, 2), padding=(2, 1), output_padding=(2, 1)), ("weight", "bias")),
    Case("conv2d_transpose-output_padding-below-dilation",
         "conv2d_transpose(x, 3, kernel=3, strides=1, dilation=2, padding=1, output_padding=1)", IMG,
         convt_t(stride=1, dilation=2, padding=1, output_padding=1), ("weight", "bias")),
    Case("conv2d_transpose-output_padding-past-the-windows",
         "conv2d_transpose(x, 2, kernel=2, strides=1, dilation=3, output_padding=2)", IMG,
         convt_t(stride=1, dilation=3, output_padding=2), ("weight", "bias")),
    Case("conv2d_transpose-4-pads", "conv2d_transpose(x, 3, kernel=3, strides=2, padding=[0, 1, 2, 1])", IMG,
         lambda x, w: F.conv_transpose2d(x, w["weight"], w["bias"], stride=2)[:, :, 0:-2, 1:-1],
         ("weight", "bias")),
    Case("conv1d", "conv1d(x, 6, kernel=3)", SEQ, lambda x, w: F.conv1d(x, w["weight"], w["bias"]),
         ("weight", "bias")),
    Case("conv1d-same-stride-groups", "conv1d(x, 4, kernel=5, strides=2, padding=same, groups=2)", SEQ,
         lambda x, w: F.conv1d(F.pad(x, (1, 2)), w["weight"], w["bias"], stride=2, groups=2),  # TF same: 1 + 2
         ("weight", "bias")),
    Case("conv1d-dilation-pad", "conv1d(x, 2, kernel=3, dilation=2, padding=2, use_bias=false)", SEQ,
         lambda x, w: F.conv1d(x, w["weight"], dilation=2, padding=2), ("weight",)),
    Case("conv3d", "conv3d(x, 4, kernel=3)", VOL, lambda x, w: F.conv3d(x, w["weight"], w["bias"]), ("weight", "bias")),
    Case("conv3d-stride-pad-dilation-groups",
         "conv3d(x, 6, kernel=[3, 2, 3], strides=[2, 1, 2], padding=1, dilation=[1, 2, 1], groups=3)", VOL,
         lambda x, w: F.conv3d(x, w["weight"], w["bias"], stride=(2, 1, 2), padding=1, dilation=(1, 2, 1), groups=3),
         ("weight", "bias")),
    Case("max_pool2d", "max_pool2d(x, 2)", IMG, lambda x, w: F.max_pool2d(x, 2)),
    Case("max_pool2d-ties", "max_pool2d(x, 2)", IMG, lambda x, w: F.max_pool2d(x, 2), relu_input=True),
    Case("max_pool2d-overlap-ties", "max_pool2d(x, 3, strides=2, padding=1)", IMG,
         lambda x, w: F.max_pool2d(x, 3, 2, padding=1), relu_input=True),
    Case("avg_pool2d", "avg_pool2d(x, 2)", IMG, lambda x, w: F.avg_pool2d(x, 2)),
    Case("avg_pool2d-pad", "avg_pool2d(x, 3, strides=2, padding=1)", IMG,
         lambda x, w: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)),  # Keras: pads not counted
    Case("global_avg_pool2d", "global_avg_pool2d(x)", IMG, lambda x, w: x.mean((2, 3))),
    Case("max_pool1d", "max_pool1d(x, 3, strides=2, padding=1)", SEQ, lambda x, w: F.max_pool1d(x, 3, 2, 1)),
    Case("max_pool1d-ties", "max_pool1d(x, 2)", SEQ, lambda x, w: F.max_pool1d(x, 2), relu_input=True),
    Case("avg_pool1d", "avg_pool1d(x, 3, strides=2, padding=1)", SEQ,
         lambda x, w: F.avg_pool1d(x, 3, 2, 1, count_include_pad=False)),
    Case("global_avg_pool1d", "global_avg_pool1d(x)", SEQ, lambda x, w: x.mean(2)),
    Case("max_pool3d", "max_pool3d(x, 2)", VOL, lambda x, w: F.max_pool3d(x, 2)),
    Case("max_pool3d-overlap-ties", "max_pool3d(x, 3, strides=2, padding=1)", VOL,
         lambda x, w: F.max_pool3d(x, 3, 2, 1), relu_input=True),
    Case("max_pool3d-ties", "max_pool3d(x, [2, 1, 2])", VOL, lambda x, w: F.max_pool3d(x, (2, 1, 2)),
         relu_input=True),
    Case("avg_pool3d", "avg_pool3d(x, 2)", VOL, lambda x, w: F.avg_pool3d(x, 2)),
    Case("avg_pool3d-pad", "avg_pool3d(x, [3, 3, 2], strides=[2, 1, 2], padding=[1, 1, 0])", VOL,
         lambda x, w: F.avg_pool3d(x, (3, 3, 2), (2, 1, 2), (1, 1, 0), count_include_pad=False)),
    Case("global_avg_pool3d", "global_avg_pool3d(x)", VOL, lambda x, w: x.mean((2, 3, 4))),
    Case("batch_norm-training", "batch_norm(x)", IMG, bn_t(True), ("gamma", "beta"), training=True),
    Case("batch_norm-inference", "batch_norm(x)", IMG, bn_t(False), ("gamma", "beta")),
    Case("layer_norm", "layer_norm(x)", (3, 4, 6),
         lambda x, w: F.layer_norm(x, (6,), w["gamma"], w["beta"], eps=1e-3), ("gamma", "beta")),
    Case("group_norm", "group_norm(x, 2)", IMG,
         lambda x, w: F.group_norm(x, 2, w["gamma"], w["beta"], eps=1e-3), ("gamma", "beta")),
    Case("embedding", "embedding(x, 10, 4)", (3, 5), lambda x, w: F.embedding(x, w["weight"]), ("weight",),
         integer_input=True),
    Case("embedding-padding_idx", "embedding(x, 10, 4, padding_idx=0)", (3, 5),
         # (torch keeps the padding row at zero by never updating it; _randomize fills it, and dslc's
         # lookups of that row give zeros whatever it holds: the mask makes torch's lookups match)
         lambda x, w: F.embedding(x, w["weight"], padding_idx=0) * (x != 0).unsqueeze(-1), ("weight",),
         integer_input=True),
    Case("dropout-0", "dropout(x, 0.0)", (3, 6), lambda x, w: F.dropout(x, 0.0, training=True), training=True),
    Case("upsample2d", "upsample2d(x, 2)", IMG, lambda x, w: F.interpolate(x, scale_factor=2, mode="nearest")),
    Case("upsample2d-bilinear", "upsample2d(x, 2, mode=bilinear)", IMG,
         lambda x, w: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
] + [Case(name, f"{name}(x)", (3, 7), lambda x, w, f=f: f(x)) for name, f in ACTIVATIONS.items()] + [
    # issue 21: the kinks of relu6 / hard_* reached, tensors made from numbers, masks filled with -inf
    Case("relu6-wide", "relu6(x * 5)", (3, 7), lambda x, w: F.relu6(x * 5)),
    Case("hard_swish-hard_sigmoid-wide", "hard_swish(x * 3) + hard_sigmoid(x * 3)", (3, 7),
         lambda x, w: F.hardswish(x * 3) + F.hardsigmoid(x * 3)),
    Case("arange-zeros-ones-full", "x * cast(arange(7), f32) + full([3, 1], 0.5) * x + ones([7]) + zeros(like=x)"
         " + arange(0.0, 1.4, 0.2)", (3, 7),
         lambda x, w: x * torch.arange(7).float() + 0.5 * x + 1 + torch.arange(0.0, 1.4, 0.2)),
    Case("masked_fill-causal", "softmax(masked_fill(x, arange(7)[None, :] > arange(3)[:, None], -inf))", (3, 7),
         lambda x, w: F.softmax(x.masked_fill(torch.arange(7)[None, :] > torch.arange(3)[:, None], -float("inf")), -1)),
]


def rnn_t(kind, units, return_sequences):
    """torch LSTM / GRU with dslc's Keras-layout weights (README "Sequence layers"): W.T, and for the
    GRU Keras' gate order z, r, h permuted to torch's r, z, n; dslc's LSTM has one bias (torch's
    bias_hh = 0)."""
    def fn(x, w):
        k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
        if kind == "lstm":
            mod = torch.nn.LSTM(x.shape[2], units, batch_first=True)
            params = {"weight_ih_l0": k.T, "weight_hh_l0": r.T, "bias_ih_l0": b, "bias_hh_l0": torch.zeros_like(b)}
        else:
            perm = list(range(units, 2 * units)) + list(range(units)) + list(range(2 * units, 3 * units))
            mod = torch.nn.GRU(x.shape[2], units, batch_first=True)
            params = {"weight_ih_l0": k[:, perm].T, "weight_hh_l0": r[:, perm].T, "bias_ih_l0": b[perm],
                      "bias_hh_l0": w["recurrent_bias"][perm]}
        out, state = torch.func.functional_call(mod, params, (x,))
        return out if return_sequences else (state[0] if kind == "lstm" else state)[0]
    return fn


# (not key.bias: its gradient is exactly zero, softmax being blind to q . key.bias added to every score
# of a row, so both sides hold round-off there; tests/opinfo.py checks it in float64)
MHA_WEIGHTS = tuple(f"{p}.{k}" for p in ("query", "key", "value", "output") for k in ("weight", "bias")
                    if f"{p}.{k}" != "key.bias")


def mha_t(heads, kv=lambda x: x, causal=False):
    """torch nn.MultiheadAttention(batch_first=True) with dslc's weights: in_proj = [Wq.T; Wk.T; Wv.T]
    (q/k/v_proj_weight when k, v have other widths), out_proj = Wo.T; torch's attn_mask is true where
    attention is NOT allowed."""
    def fn(x, w):
        k = kv(x)
        e = x.shape[2]
        mod = torch.nn.MultiheadAttention(e, heads, batch_first=True, kdim=k.shape[2], vdim=k.shape[2])
        params = {"in_proj_bias": torch.cat([w["query.bias"], w["key.bias"], w["value.bias"]]),
                  "out_proj.weight": w["output.weight"].T, "out_proj.bias": w["output.bias"]}
        if k.shape[2] == e:
            params["in_proj_weight"] = torch.cat([w["query.weight"].T, w["key.weight"].T, w["value.weight"].T])
        else:
            params.update({"q_proj_weight": w["query.weight"].T, "k_proj_weight": w["key.weight"].T,
                           "v_proj_weight": w["value.weight"].T})
        mask = torch.ones(x.shape[1], k.shape[1], dtype=torch.bool).triu(1) if causal else None
        out, _ = torch.func.functional_call(mod, params, (x, k, k), {"attn_mask": mask, "need_weights": False})
        return out
    return fn


SEQUENCE_LAYERS = [
    Case("lstm-unrolled-sequences", "lstm(x, 5, return_sequences=true)", (2, 6, 3), rnn_t("lstm", 5, True),
         ("kernel", "recurrent_kernel", "bias")),
    Case("lstm-loop-last", "lstm(x, 4, unroll=false)", (2, 20, 3), rnn_t("lstm", 4, False),
         ("kernel", "recurrent_kernel", "bias")),
    Case("gru-unrolled-last", "gru(x, 5)", (2, 6, 3), rnn_t("gru", 5, False),
         ("kernel", "recurrent_kernel", "bias", "recurrent_bias")),
    Case("gru-loop-sequences", "gru(x, 4, return_sequences=true, unroll=false)", (2, 20, 3), rnn_t("gru", 4, True),
         ("kernel", "recurrent_kernel", "bias", "recurrent_bias")),
    Case("multi_head_attention-causal", "multi_head_attention(x, x, x, 2, causal=true)", (2, 5, 8),
         mha_t(2, causal=True), MHA_WEIGHTS),
    Case("multi_head_attention-cross", "multi_head_attention(x, x[:, :3, :6], x[:, :3, :6], 4)", (2, 5, 8),
         mha_t(4, kv=lambda x: x[:, :3, :6]), MHA_WEIGHTS),
    Case("positional_embedding", "x + positional_embedding(x)", (2, 5, 4), lambda x, w: x + w["weight"], ("weight",)),
]
LAYERS += SEQUENCE_LAYERS


def _randomize(model, rng):
    """Weights away from their initial values (zero biases, unit gammas) so that every one matters."""
    for init in model.graph.initializer:
        if not init.name.startswith("L."):
            continue
        a = numpy_helper.to_array(init)
        if init.name.endswith(("gamma", "moving_variance")):
            a = rng.uniform(0.5, 1.5, a.shape)
        elif a.dtype.kind == "f":
            a = rng.uniform(-0.5, 0.5, a.shape)
        init.CopyFrom(numpy_helper.from_array(a.astype(np.float32), init.name))


def _run_dslc(source: str, feeds, rng):
    model = dslc.compile(dslc.loads(source, "conformance.dsl"), "probe")
    _randomize(model, rng)
    outs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return outs, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _compare(name, ours, theirs):
    worst = max(_rel(a, b.detach().numpy()) for a, b in zip(ours, theirs, strict=True))
    print(f"{name}: worst relative difference {worst:.2e}")
    assert worst < RTOL


def _dims(shape):
    return ", ".join(map(str, shape))


@pytest.mark.parametrize("c", LAYERS, ids=[c.name for c in LAYERS])
def test_layer_matches_torch(c: Case):
    rng = np.random.default_rng(0)
    dtype = "i64" if c.integer_input else "f32"
    model_src = f"model L(x: {dtype}[{_dims(c.shape)}]) -> y {{\n    y = {c.expr}\n}}\n"
    out_shape = [d.dim_value for d in dslc.compile(dslc.loads(model_src, "c.dsl"), "L").graph.output[0]
                 .type.tensor_type.shape.dim]
    wrt = ([] if c.integer_input else ["x"]) + [f"L.y.{w}" for w in c.weights]
    grads = ", ".join(f"g{i}" for i in range(len(wrt)))
    probe = (f"fn probe(x: {dtype}[{_dims(c.shape)}], dy: f32[{_dims(out_shape)}]) {{\n"
             f"    y = L(x, training={'true' if c.training else 'false'})\n"
             + (f"    {grads} = grad(sum(y * dy), [{', '.join(wrt)}])\n    return y, {grads}\n}}\n" if wrt else
                "    return y\n}\n"))
    if c.integer_input:
        x = rng.integers(0, 10, c.shape)
    else:
        x = rng.standard_normal(c.shape).astype(np.float32)
        if c.relu_input:
            x = np.maximum(np.round(x), 0).astype(np.float32)  # whole windows of zeros, tied ones
    dy = rng.standard_normal(out_shape).astype(np.float32)
    ours, weights = _run_dslc(model_src + probe, {"x": x, "dy": dy}, rng)

    xt = torch.tensor(x, requires_grad=not c.integer_input)
    wt = {k[len("L.y."):]: torch.tensor(v, requires_grad=k[len("L.y."):] in c.weights)  # ("query.weight")
          for k, v in weights.items() if k.startswith("L.y.")}
    y = c.torch_fn(xt, wt)
    (y * torch.tensor(dy)).sum().backward()
    theirs = [y] + ([] if c.integer_input else [xt.grad]) + [wt[w].grad for w in c.weights]
    _compare(c.name, ours, theirs)


def _soft(rng, shape=(4, 5)):
    e = np.exp(rng.standard_normal(shape))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


LOSSES = [  # (name, dslc expression of p and t, torch function, target maker)
    ("mse", "mse(p, t)", F.mse_loss, lambda rng: rng.standard_normal((4, 5))),
    ("mae", "mae(p, t)", F.l1_loss, lambda rng: rng.standard_normal((4, 5))),
    ("huber", "huber(p, t, delta=0.5)", lambda p, t: F.huber_loss(p, t, delta=0.5),
     lambda rng: rng.standard_normal((4, 5))),
    ("binary_crossentropy", "binary_crossentropy(sigmoid(p), t)",
     lambda p, t: F.binary_cross_entropy(torch.sigmoid(p), t), lambda rng: rng.uniform(0, 1, (4, 5))),
    ("binary_crossentropy-logits", "binary_crossentropy(p, t, from_logits=true)",
     F.binary_cross_entropy_with_logits, lambda rng: rng.uniform(0, 1, (4, 5))),
    ("categorical_crossentropy", "categorical_crossentropy(softmax(p), t)", F.cross_entropy, _soft),
    ("categorical_crossentropy-logits-smoothing", "categorical_crossentropy(p, t, from_logits=true, label_smoothing=0.1)",
     lambda p, t: F.cross_entropy(p, t, label_smoothing=0.1), _soft),
    ("sparse_categorical_crossentropy", "sparse_categorical_crossentropy(softmax(p), t)", F.cross_entropy,
     lambda rng: rng.integers(0, 5, (4,))),
    ("sparse_categorical_crossentropy-logits", "sparse_categorical_crossentropy(p, t, from_logits=true)",
     F.cross_entropy, lambda rng: rng.integers(0, 5, (4,))),
    ("kl_divergence", "kl_divergence(t, softmax(p))",
     lambda p, t: F.kl_div(F.log_softmax(p, -1), t, reduction="batchmean"), _soft),
]


@pytest.mark.parametrize("name,expr,torch_fn,target", LOSSES, ids=[c[0] for c in LOSSES])
def test_loss_matches_torch(name, expr, torch_fn, target):
    rng = np.random.default_rng(1)
    p = rng.standard_normal((4, 5)).astype(np.float32)
    t = target(rng)
    t = t.astype(np.int64) if t.dtype.kind == "i" else t.astype(np.float32)
    t_type = "i64[4]" if t.dtype == np.int64 else "f32[4, 5]"
    source = f"fn probe(p: f32[4, 5], t: {t_type}) {{\n    loss = {expr}\n    return loss, grad(loss, p)\n}}\n"
    ours, _ = _run_dslc(source, {"p": p, "t": t}, rng)
    pt = torch.tensor(p, requires_grad=True)
    loss = torch_fn(pt, torch.tensor(t))
    loss.backward()
    _compare(name, ours, [loss, pt.grad])
