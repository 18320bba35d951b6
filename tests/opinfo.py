"""One table of sample inputs for every built-in of the language and every IR op with a VJP rule,
in the manner of PyTorch's OpInfo (and JAX's check_grads over every primitive): each `Sample` is
a small model (dslc source), the same computation in PyTorch float64, and samplers for its inputs.

`tests/test_opinfo.py` compiles each sample into a probe function

    fn probe(<model inputs>, cot_, dir_<k> for each differentiable input and weight) {
        y = M(<inputs>)
        g0, g1, ... = grad(sum(y * cot_), [<differentiable inputs>, <weights>])
        h0, h1, ... = grad(sum(g0 * dir_0) + sum(g1 * dir_1) + ..., [...])   # Hessian-vector products
        return y, g..., h...
    }

(the weights become graph inputs, so finite differences can move them) under each `Variant`: the
default compile, all passes off, each option of each formulation point the sample reaches (forced
and asserted taken, with passes on and off), and im2col where it has convolutions; and checks y, g
and h in onnxruntime and in onnx.reference against torch autograd (create_graph=True for h) and,
for samples away from kinks (`smooth`), against central finite differences. At a kink the
expected value is torch's autograd convention. Expected values never come from dslc.

Besides: `StepSample`s (whole steps, emit="gradients" with wrt_inputs and emit="train": the
optimizer's formulation point) and `IRSample`s (IR ops with a VJP rule that no built-in lowers to,
and attributes no built-in emits).

To add a sample: one `S(name, covers, body, inputs, torch_fn, ...)` line in SAMPLES; if forcing
an option that its shapes cannot take, list it in NOT_APPLICABLE.

`python tests/opinfo.py --count` prints the number of (op, sample, formulation) cases.
"""
from __future__ import annotations

import contextlib
import functools
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

import dslc  # noqa: E402
from dslc.autodiff import rules as _rules  # noqa: E402
from dslc.ir import formulations as FORMS  # noqa: E402

try:  # the table needs torch only to compute expected values
    import torch
    F = torch.nn.functional
except ImportError:  # pragma: no cover
    torch = F = None


# ------------------------------------------------------------------ samplers
def _normal(rng, shape):
    return rng.standard_normal(shape)


def _positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def _away(rng, shape):  # away from 0 (abs, relu, division)
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 1.5, shape)


def _distinct(rng, shape):  # no near-ties: max pools and reductions away from kinks
    n = int(np.prod(shape))
    return ((rng.permutation(n) * 0.1 + rng.uniform(0, 0.02, n)).reshape(shape) - 0.05 * n) / max(1.0, 0.02 * n)


def _zeros(rng, shape):  # a blank image: every relu at its kink, every max-pool window tied
    return np.zeros(shape)


def _relu_ints(rng, shape):  # as after a relu of integers: many exact zeros, tied windows
    return np.maximum(np.round(rng.standard_normal(shape)), 0.0)


def _ints(rng, shape):  # integer-valued: exact zeros and exact ties
    return np.round(rng.standard_normal(shape) * 1.5)


def _blocks(rng, shape):  # piecewise-constant image: 2x2 blocks of one value (max-pool windows tied)
    small = np.round(rng.standard_normal(tuple(shape[:2]) + tuple((s + 1) // 2 for s in shape[2:])) * 2)
    out = small
    for axis in range(2, len(shape)):
        out = np.repeat(out, 2, axis=axis)
    return out[tuple(slice(0, s) for s in shape)]


def _probs(rng, shape):  # probabilities inside (0, 1), away from the clip bounds
    return rng.uniform(0.05, 0.95, shape)


def _softmaxed(rng, shape):
    e = np.exp(rng.standard_normal(shape))
    return e / e.sum(-1, keepdims=True)


def _labels(high):
    return lambda rng, shape: rng.integers(0, high, shape)


def _tan_domain(rng, shape):
    return rng.uniform(-1.2, 1.2, shape)


def _pick(*values):  # exact values, kinks among them (relu6 at 0 and 6, hard_swish at +-3)
    return lambda rng, shape: rng.choice(np.asarray(values, np.float64), shape)


def _avoid(*kinks, scale=3.0):  # spread out, at least 0.1 from every kink
    def draw(rng, shape):
        x = rng.standard_normal(shape) * scale
        for k in kinks:
            near = np.abs(x - k) < 0.1
            x = np.where(near, k + np.where(x >= k, 0.1, -0.1) + (x - k), x)
        return x
    return draw


SAMPLERS = {"normal": _normal, "positive": _positive, "away": _away, "distinct": _distinct, "zeros": _zeros,
            "relu": _relu_ints, "ints": _ints, "blocks": _blocks, "probs": _probs, "softmaxed": _softmaxed,
            "tan": _tan_domain}


# ------------------------------------------------------------------ the record
@dataclass
class Inp:
    """A model input: its name, the dslc type (dims as declared, symbols allowed), the shape it is
    sampled at, and its sampler. Float inputs are differentiated; integer and bool ones are not."""
    name: str
    dtype: str
    declared: tuple
    shape: tuple
    kind: str | Callable = "normal"

    @property
    def diff(self) -> bool:
        return self.dtype == "f64"

    def draw(self, rng) -> np.ndarray:
        a = (SAMPLERS[self.kind] if isinstance(self.kind, str) else self.kind)(rng, self.shape)
        return np.asarray(a, {"f64": np.float64, "f32": np.float32, "i64": np.int64, "bool": np.bool_}[self.dtype])


@dataclass
class Sample:
    """One sample: `body` defines `y` inside `model M(<inputs>) -> y`; `torch_fn(inputs, weights)`
    is the same computation in PyTorch float64 (inputs by name, weights by their name without
    the `M.` prefix: `y.weight`, `y.bias`, `y.gamma`, ...).

    covers: the built-ins (and language features) the sample exercises.
    smooth: no input sits at (or within the finite-difference step of) a kink, so central finite
        differences are checked too; at kinks only torch's autograd convention is.
    training: run M in training mode (batch_norm on batch statistics, dropout).
    weights: how to fill the weights (default: `uniform` from -0.5 to 0.5, gammas and variances in
        [0.5, 1.5]); {"y.bias": "zeros"} keeps a bias at exact zero.
    not_applicable: (point, option) pairs the sample reaches whose option does not apply to its
        shapes (forcing them must leave the rule's option), with the reason in a comment.
    """
    name: str
    covers: tuple
    body: str
    inputs: list
    torch_fn: Callable
    smooth: bool = True
    training: bool = False
    weights: dict = field(default_factory=dict)
    not_applicable: frozenset = frozenset()
    rtol: float = 1e-8
    fd_rtol: float = 1e-5
    widen: bool = False  # compile with float64=True (an f32 value the source cannot avoid: an embedding table)
    randoms: dict = field(default_factory=dict)  # the random draws as inputs (random="input"): name -> Inp

    @property
    def symbolic(self) -> bool:
        """Some dim is known only at run time: a symbol, or a bound read from an integer scalar input."""
        return any(isinstance(d, str) for i in self.inputs for d in i.declared) or any(
            i.dtype == "i64" and not i.declared for i in self.inputs)

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())

    def source(self) -> str:
        args = ", ".join(f"{i.name}: {_type(i.dtype, i.declared)}" for i in self.inputs)
        body = "\n".join("    " + line.strip() for line in self.body.strip().splitlines())
        return f"model M({args}) -> y {{\n{body}\n}}\n"


def _type(dtype, dims) -> str:
    return f"{dtype}[{', '.join(map(str, dims))}]" if dims else dtype


# ------------------------------------------------------------------ constructors
def X(shape, kind="normal", declared=None, name="x", dtype="f64") -> Inp:
    return Inp(name, dtype, tuple(declared or shape), tuple(shape), kind)


def S(name, covers, body, inputs, torch_fn, **kw) -> Sample:
    if isinstance(inputs, Inp):
        inputs = [inputs]
    if isinstance(covers, str):
        covers = (covers,)
    if not re.match(r"\s*\w+\s*=[^=]", body):
        body = f"y = {body}"
    return Sample(name, tuple(covers), body, list(inputs), torch_fn, **kw)


def conv_t(dim, pad=None, **kw):
    """torch conv{dim}d of input x with weights y.weight / y.bias; `pad` an F.pad list applied first."""
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dim] if F else None

    def fn(i, w):
        x = i["x"] if pad is None else F.pad(i["x"], pad)
        return conv(x, w["y.weight"], w.get("y.bias"), **kw)
    return fn


def convt_t(crop=None, **kw):
    def fn(i, w):
        y = F.conv_transpose2d(i["x"], w["y.weight"], w.get("y.bias"), **kw)
        if crop:  # [top, left, bottom, right] cropped from the full transposed convolution
            t, l, b, r = crop
            y = y[:, :, t:y.shape[2] - b, l:y.shape[3] - r]
        return y
    return fn


def _minimum(a, b):  # dslc: ties go to a (TensorFlow); torch.minimum splits them
    return torch.where(a <= b, a, b)


def _maximum(a, b):
    return torch.where(a >= b, a, b)


def _bn(training):
    def fn(i, w):
        mean, var = (None, None) if training else (w["y.moving_mean"], w["y.moving_variance"])
        return F.batch_norm(i["x"], mean, var, w["y.gamma"], w["y.beta"], training=training, eps=1e-3)
    return fn


def _cce(p, t):  # Keras: renormalize, clip to [1e-7, 1 - 1e-7]
    p = p / p.sum(-1, keepdim=True)
    return -(t * torch.log(p.clamp(1e-7, 1 - 1e-7))).sum(-1).mean()


def _bce(p, t):
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()


def _kl(p, q):  # Keras: sum over the last axis of p log(p / q), both clipped to [1e-7, 1], batch mean
    p, q = p.clamp(1e-7, 1), q.clamp(1e-7, 1)
    return (p * torch.log(p / q)).sum(-1).mean()


def _bilinear(i, w):
    return F.interpolate(i["x"], scale_factor=2, mode="bilinear", align_corners=False)


def _repeat_t(x, a):
    h = x
    for _ in range(3):
        h = torch.tanh(h * a) + h
    return h


def _grad_inside(i, w):
    x = i["x"]
    (g,) = torch.autograd.grad((x ** 3).sum() + (torch.sin(x) * x).sum(), x, create_graph=True)
    return g * x


IMG = (2, 3, 5, 5)
# options that do not apply to a sample's shapes (forcing them must leave the rule's option everywhere)
TILES = frozenset({("max_pool_grad", "tiles")})        # windows that do not tile the input
CIG = frozenset({("conv_input_grad", "matmuls")})      # groups, or the output phases do not tile dx
FLIP = frozenset({("conv_input_grad", "flipped_conv")})  # a stride above 1
CT = frozenset({("conv_transpose", "matmuls")})        # the output phases do not tile the output

# ------------------------------------------------------------------ the table
SAMPLES: list[Sample] = [
    # ---- dense
    S("dense", "dense", "dense(x, 4)", X((3, 5)), lambda i, w: i["x"] @ w["y.weight"] + w["y.bias"]),
    S("dense-relu-ints-zero-bias", ("dense", "relu"), "dense(x, 4, activation=relu)",
      X((3, 5), "ints"), lambda i, w: F.relu(i["x"] @ w["y.weight"] + w["y.bias"]),
      weights={"y.weight": "ints", "y.bias": "zeros"}, smooth=False),
    S("dense-no-bias-batch1-symbolic", "dense", "dense(x, 3, use_bias=false)", X((1, 4), declared=("N", 4)),
      lambda i, w: i["x"] @ w["y.weight"]),
    S("dense-3d", "dense", "dense(x, 2) |> tanh", X((2, 3, 4)),
      lambda i, w: torch.tanh(i["x"] @ w["y.weight"] + w["y.bias"])),
    # ---- conv2d: kernels 1x1 / even / odd, strides, dilation, groups, paddings, sizes
    S("conv2d-k3-valid", "conv2d", "conv2d(x, 4, kernel=3)", X(IMG), conv_t(2)),
    S("conv2d-1x1-batch1", "conv2d", "conv2d(x, 3, kernel=1)", X((1, 2, 4, 3)), conv_t(2)),
    S("conv2d-even-k2-s2", "conv2d", "conv2d(x, 3, kernel=2, strides=2)", X((2, 2, 6, 6)), conv_t(2, stride=2)),
    S("conv2d-stride-gt-kernel", "conv2d", "conv2d(x, 2, kernel=2, strides=3)", X((1, 2, 7, 8)),
      conv_t(2, stride=3)),
    S("conv2d-stride2-pad1", "conv2d", "conv2d(x, 4, kernel=3, strides=2, padding=1)", X(IMG),
      conv_t(2, stride=2, padding=1)),
    S("conv2d-dilation-same", "conv2d", "conv2d(x, 2, kernel=3, dilation=2, padding=same)", X((2, 2, 7, 6)),
      conv_t(2, dilation=2, padding=2)),
    S("conv2d-same-stride2-odd-total", "conv2d", "conv2d(x, 3, kernel=3, strides=2, padding=same)",
      X((2, 2, 6, 6)), conv_t(2, pad=(0, 1, 0, 1), stride=2)),  # TF same: the odd pixel at the end
    S("conv2d-asymmetric-list-pads", "conv2d", "conv2d(x, 3, kernel=[3, 2], padding=[1, 0, 2, 1])",
      X((1, 2, 5, 4)), conv_t(2, pad=(0, 1, 1, 2))),
    S("conv2d-groups-rect", "conv2d", "conv2d(x, 6, kernel=[3, 2], strides=[1, 2], padding=[1, 0], groups=2)",
      X((2, 4, 6, 5)), conv_t(2, stride=(1, 2), padding=(1, 0), groups=2)),
    S("conv2d-depthwise-no-bias", "conv2d", "conv2d(x, 4, kernel=3, groups=4, use_bias=false)",
      X((1, 4, 5, 5)), conv_t(2, groups=4)),
    S("conv2d-1-pixel", "conv2d", "conv2d(x, 3, kernel=3, padding=1)", X((2, 2, 1, 1)), conv_t(2, padding=1)),
    S("conv2d-many-positions", "conv2d", "conv2d(x, 2, kernel=2)", X((1, 2, 10, 11)), conv_t(2)),
    S("conv2d-blank-relu", ("conv2d", "relu"), "conv2d(x, 3, kernel=3, padding=same, activation=relu)",
      X((2, 2, 4, 4), "zeros"), lambda i, w: F.relu(conv_t(2, padding=1)(i, w)),
      weights={"y.bias": "zeros"}, smooth=False),
    S("conv2d-symbolic-same-stride2", "conv2d", "conv2d(x, 3, kernel=3, strides=2, padding=same)",
      X((2, 2, 6, 5), declared=("N", 2, "H", "W")), conv_t(2, pad=(1, 1, 0, 1), stride=2)),
    S("conv2d-symbolic-valid-dilation", "conv2d", "conv2d(x, 2, kernel=2, dilation=2)",
      X((1, 3, 5, 6), declared=("N", 3, "H", "W")), conv_t(2, dilation=2)),
    S("conv2d-symbolic-same-even-kernel", "conv2d", "conv2d(x, 2, kernel=2, padding=same)",
      X((1, 2, 3, 4), "relu", declared=("N", 2, "H", "W")), conv_t(2, pad=(0, 1, 0, 1))),
    S("conv2d-symbolic-batch", "conv2d", "conv2d(x, 2, kernel=3, padding=1)",
      X((2, 2, 4, 4), declared=("N", 2, 4, 4)), conv_t(2, padding=1)),
    # ---- conv1d / conv3d
    S("conv1d", "conv1d", "conv1d(x, 3, kernel=3)", X((2, 2, 9)), conv_t(1)),
    S("conv1d-same-stride2-groups", "conv1d", "conv1d(x, 4, kernel=4, strides=2, padding=same, groups=2)",
      X((2, 4, 9)), conv_t(1, pad=(1, 2), stride=2, groups=2)),
    S("conv1d-dilation-pad-k1", "conv1d", "conv1d(x, 2, kernel=3, dilation=2, padding=2, use_bias=false) |> conv1d(2, kernel=1)",
      X((1, 2, 6)), lambda i, w: F.conv1d(F.conv1d(i["x"], w["y.weight"], dilation=2, padding=2),
                                          w["y_2.weight"], w["y_2.bias"])),
    S("conv1d-symbolic", "conv1d", "conv1d(x, 2, kernel=3, strides=2)", X((2, 2, 8), declared=("N", 2, "L")),
      conv_t(1, stride=2)),
    S("conv3d", "conv3d", "conv3d(x, 2, kernel=2)", X((1, 2, 3, 4, 3)), conv_t(3)),
    S("conv3d-stride-pad-dilation-groups", "conv3d",
      "conv3d(x, 4, kernel=[3, 2, 2], strides=[2, 1, 2], padding=1, dilation=[1, 2, 1], groups=2)",
      X((2, 2, 4, 5, 4)), conv_t(3, stride=(2, 1, 2), padding=1, dilation=(1, 2, 1), groups=2)),
    S("conv3d-asymmetric-pads", "conv3d", "conv3d(x, 2, kernel=2, padding=[0, 1, 0, 1, 0, 1])",
      X((1, 1, 3, 3, 3)), conv_t(3, pad=(0, 1, 1, 0, 0, 1))),
    S("conv3d-symbolic", "conv3d", "conv3d(x, 2, kernel=2, strides=2)", X((1, 2, 4, 5, 4), declared=("N", 2, "D", "H", "W")),
      conv_t(3, stride=2)),
    # ---- conv2d_transpose
    S("conv2d_transpose-k3-s2-p1", "conv2d_transpose", "conv2d_transpose(x, 3, kernel=3, strides=2, padding=1)",
      X((2, 4, 3, 3)), convt_t(stride=2, padding=1)),
    S("conv2d_transpose-output_padding", "conv2d_transpose",
      "conv2d_transpose(x, 2, kernel=3, strides=2, padding=1, output_padding=1)",
      X((1, 3, 3, 2)), convt_t(stride=2, padding=1, output_padding=1)),
    S("conv2d_transpose-stride-gt-kernel", "conv2d_transpose",
      "conv2d_transpose(x, 2, kernel=[2, 1], strides=[3, 2], output_padding=[2, 1])",
      X((1, 3, 2, 3)), convt_t(stride=(3, 2), output_padding=(2, 1))),
    S("conv2d_transpose-dilation", "conv2d_transpose", "conv2d_transpose(x, 2, kernel=2, dilation=2)",
      X((2, 2, 3, 3)), convt_t(dilation=2)),
    S("conv2d_transpose-dilation-output_padding", "conv2d_transpose",
      "conv2d_transpose(x, 2, kernel=3, dilation=2, padding=1, output_padding=1)",
      X((1, 2, 3, 3)), convt_t(dilation=2, padding=1, output_padding=1)),
    S("conv2d_transpose-4-pads", "conv2d_transpose", "conv2d_transpose(x, 2, kernel=3, strides=2, padding=[0, 1, 2, 1])",
      X((1, 3, 3, 3)), convt_t(crop=(0, 1, 2, 1), stride=2)),
    S("conv2d_transpose-same", "conv2d_transpose", "conv2d_transpose(x, 2, kernel=4, strides=2, padding=same)",
      X((1, 2, 3, 3)), convt_t(crop=(1, 1, 1, 1), stride=2)),
    S("conv2d_transpose-1x1-1-pixel", "conv2d_transpose", "conv2d_transpose(x, 3, kernel=1)",
      X((2, 4, 1, 1)), convt_t()),
    S("conv2d_transpose-many-channels", "conv2d_transpose",  # the rule's matmuls form (pixels*3 <= Cin)
      "conv2d_transpose(x, 2, kernel=2, strides=2, use_bias=false)", X((2, 12, 2, 2)), convt_t(stride=2)),
    S("conv2d_transpose-symbolic", "conv2d_transpose", "conv2d_transpose(x, 2, kernel=3, strides=2, padding=1)",
      X((1, 2, 3, 4), declared=("N", 2, "H", "W")), convt_t(stride=2, padding=1)),
    # ---- pools
    S("max_pool2d-tiles", "max_pool2d", "max_pool2d(x, 2)", X((2, 2, 4, 6), "distinct"), lambda i, w: F.max_pool2d(i["x"], 2)),
    S("max_pool2d-tiles-ties", "max_pool2d", "max_pool2d(x, 2)", X((2, 2, 4, 4), "relu"),
      lambda i, w: F.max_pool2d(i["x"], 2), smooth=False),
    S("max_pool2d-tiles-blocks", "max_pool2d", "max_pool2d(x, [2, 3])", X((1, 2, 4, 6), "blocks"),
      lambda i, w: F.max_pool2d(i["x"], (2, 3)), smooth=False),
    S("max_pool2d-blank", "max_pool2d", "max_pool2d(x, 2, strides=1)", X((1, 1, 3, 3), "zeros"),
      lambda i, w: F.max_pool2d(i["x"], 2, 1), smooth=False),
    S("max_pool2d-overlap-pad-ties", "max_pool2d", "max_pool2d(x, 3, strides=2, padding=1)", X((2, 2, 5, 5), "ints"),
      lambda i, w: F.max_pool2d(i["x"], 3, 2, 1), smooth=False),
    S("max_pool2d-overlap", "max_pool2d", "max_pool2d(x, 3, strides=2, padding=1)", X((1, 2, 6, 5), "distinct"),
      lambda i, w: F.max_pool2d(i["x"], 3, 2, 1)),
    S("max_pool2d-stride-gt-pool", "max_pool2d", "max_pool2d(x, 2, strides=3)", X((1, 2, 7, 8), "distinct"),
      lambda i, w: F.max_pool2d(i["x"], 2, 3)),
    S("max_pool2d-same-odd", "max_pool2d", "max_pool2d(x, 2, padding=same)", X((1, 2, 5, 5), "distinct"),
      lambda i, w: F.max_pool2d(F.pad(i["x"], (0, 1, 0, 1), value=-np.inf), 2)),
    S("max_pool2d-1-pixel", "max_pool2d", "max_pool2d(x, 1)", X((2, 3, 1, 1)), lambda i, w: F.max_pool2d(i["x"], 1)),
    S("max_pool2d-symbolic-ties", "max_pool2d", "max_pool2d(x, 2)", X((2, 2, 4, 6), "relu", declared=("N", 2, "H", "W")),
      lambda i, w: F.max_pool2d(i["x"], 2), smooth=False),
    S("max_pool2d-symbolic-overlap", "max_pool2d", "max_pool2d(x, 3, strides=2, padding=1)",
      X((1, 2, 5, 6), "distinct", declared=("N", 2, "H", "W")), lambda i, w: F.max_pool2d(i["x"], 3, 2, 1)),
    S("avg_pool2d", "avg_pool2d", "avg_pool2d(x, 2)", X((2, 2, 4, 5)), lambda i, w: F.avg_pool2d(i["x"], 2)),
    S("avg_pool2d-pad-uncounted", "avg_pool2d", "avg_pool2d(x, 3, strides=2, padding=1)", X(IMG),
      lambda i, w: F.avg_pool2d(i["x"], 3, 2, 1, count_include_pad=False)),
    S("avg_pool2d-same-symbolic", "avg_pool2d", "avg_pool2d(x, 2, strides=1, padding=same)",
      X((1, 2, 3, 4), declared=("N", 2, "H", "W")),
      lambda i, w: F.avg_pool2d(F.pad(i["x"], (0, 1, 0, 1)), 2, 1) / F.avg_pool2d(
          F.pad(torch.ones_like(i["x"]), (0, 1, 0, 1)), 2, 1)),
    S("global_avg_pool2d", "global_avg_pool2d", "global_avg_pool2d(x)", X((2, 3, 4, 3)), lambda i, w: i["x"].mean((2, 3))),
    S("global_avg_pool2d-symbolic", "global_avg_pool2d", "global_avg_pool2d(x)", X((2, 3, 2, 5), declared=("N", 3, "H", "W")),
      lambda i, w: i["x"].mean((2, 3))),
    S("max_pool1d", "max_pool1d", "max_pool1d(x, 3, strides=2, padding=1)", X((2, 2, 7), "distinct"),
      lambda i, w: F.max_pool1d(i["x"], 3, 2, 1)),
    S("max_pool1d-ties", "max_pool1d", "max_pool1d(x, 2)", X((2, 2, 8), "relu"), lambda i, w: F.max_pool1d(i["x"], 2),
      smooth=False),
    S("max_pool1d-symbolic", "max_pool1d", "max_pool1d(x, 2)", X((1, 2, 6), "distinct", declared=("N", 2, "L")),
      lambda i, w: F.max_pool1d(i["x"], 2)),
    S("avg_pool1d", "avg_pool1d", "avg_pool1d(x, 3, strides=2, padding=1)", X((2, 2, 7)),
      lambda i, w: F.avg_pool1d(i["x"], 3, 2, 1, count_include_pad=False)),
    S("global_avg_pool1d", "global_avg_pool1d", "global_avg_pool1d(x)", X((2, 3, 5)), lambda i, w: i["x"].mean(2)),
    S("max_pool3d-tiles", "max_pool3d", "max_pool3d(x, 2)", X((1, 2, 4, 4, 4), "distinct"), lambda i, w: F.max_pool3d(i["x"], 2)),
    S("max_pool3d-overlap-ties", "max_pool3d", "max_pool3d(x, 3, strides=2, padding=1)", X((1, 2, 5, 4, 5), "relu"),
      lambda i, w: F.max_pool3d(i["x"], 3, 2, 1), smooth=False),
    S("max_pool3d-blocks", "max_pool3d", "max_pool3d(x, [2, 1, 2])", X((1, 1, 4, 3, 4), "blocks"),
      lambda i, w: F.max_pool3d(i["x"], (2, 1, 2)), smooth=False),
    S("avg_pool3d-pad", "avg_pool3d", "avg_pool3d(x, [3, 3, 2], strides=[2, 1, 2], padding=[1, 1, 0])", X((1, 2, 4, 5, 4)),
      lambda i, w: F.avg_pool3d(i["x"], (3, 3, 2), (2, 1, 2), (1, 1, 0), count_include_pad=False)),
    S("avg_pool3d", "avg_pool3d", "avg_pool3d(x, 2)", X((2, 1, 4, 2, 4)), lambda i, w: F.avg_pool3d(i["x"], 2)),
    S("global_avg_pool3d", "global_avg_pool3d", "global_avg_pool3d(x)", X((2, 2, 2, 3, 2)), lambda i, w: i["x"].mean((2, 3, 4))),
    # ---- normalization, embedding, upsampling, dropout
    S("batch_norm-training", "batch_norm", "batch_norm(x)", X((3, 2, 3, 3)), _bn(True), training=True),
    S("batch_norm-inference", "batch_norm", "batch_norm(x)", X((2, 3, 2, 2)), _bn(False)),
    S("batch_norm-dense-training", "batch_norm", "batch_norm(x)", X((4, 3)), _bn(True), training=True),
    S("layer_norm", "layer_norm", "layer_norm(x)", X((2, 3, 5)),
      lambda i, w: F.layer_norm(i["x"], (5,), w["y.gamma"], w["y.beta"], eps=1e-3)),
    S("layer_norm-axis1", "layer_norm", "layer_norm(x, axis=1)", X((3, 4)),
      lambda i, w: F.layer_norm(i["x"], (4,), w["y.gamma"], w["y.beta"], eps=1e-3)),
    S("group_norm", "group_norm", "group_norm(x, 2)", X((2, 4, 3, 2)),
      lambda i, w: F.group_norm(i["x"], 2, w["y.gamma"], w["y.beta"], eps=1e-3)),
    S("group_norm-1d", "group_norm", "group_norm(x, 3)", X((1, 3, 4)),
      lambda i, w: F.group_norm(i["x"], 3, w["y.gamma"], w["y.beta"], eps=1e-3)),
    # (an i64 input gives an f32 table: widened to f64 by float64=True)
    S("embedding", "embedding", "cast(embedding(x, 6, 3), f64)", X((2, 4), _labels(6), dtype="i64"),
      lambda i, w: F.embedding(i["x"], w["y.weight"]), widen=True),
    S("embedding-padding_idx", "embedding", "cast(embedding(x, 5, 2, padding_idx=0), f64)",
      X((3, 3), _labels(5), dtype="i64"),
      lambda i, w: F.embedding(i["x"], w["y.weight"]) * (i["x"] != 0).unsqueeze(-1), widen=True),
    S("upsample2d-nearest", "upsample2d", "upsample2d(x, 2)", X((2, 2, 3, 2)),
      lambda i, w: F.interpolate(i["x"], scale_factor=2, mode="nearest")),
    S("upsample2d-nearest-rect", "upsample2d", "upsample2d(x, [1, 3])", X((1, 2, 2, 2)),
      lambda i, w: F.interpolate(i["x"], scale_factor=(1, 3), mode="nearest")),
    S("upsample2d-bilinear", "upsample2d", "upsample2d(x, 2, mode=bilinear)", X((2, 2, 3, 4)), _bilinear),
    S("upsample2d-bilinear-1-pixel", "upsample2d", "upsample2d(x, 2, mode=bilinear)", X((1, 1, 1, 2)), _bilinear),
    S("upsample2d-bilinear-symbolic", "upsample2d", "upsample2d(x, 2, mode=bilinear)",
      X((1, 2, 3, 2), declared=("N", 2, "H", "W")), _bilinear),
    S("upsample2d-nearest-symbolic", "upsample2d", "upsample2d(x, 2)", X((1, 2, 2, 3), declared=("N", 2, "H", "W")),
      lambda i, w: F.interpolate(i["x"], scale_factor=2, mode="nearest")),
    S("dropout-rate0", "dropout", "dropout(x, 0.0) * x", X((3, 4)), lambda i, w: i["x"] * i["x"], training=True),
    # (the mask's uniform draw fed as random.0: kept where u >= rate, u = rate exactly among them)
    S("dropout-rate-fed-mask", "dropout", "dropout(x, 0.25) * x", X((3, 4)),
      lambda i, w: i["x"] * (i["random.0"] >= 0.25).double() / 0.75 * i["x"], training=True,
      randoms={"random.0": X((3, 4), lambda r, s: np.where(r.random(s) < 0.2, 0.25, r.random(s)), name="random.0")}),
    S("flatten", ("flatten", "reshape"), "flatten(x) |> reshape([-1, 2, 6])", X((2, 3, 2, 2)),
      lambda i, w: i["x"].flatten(1).reshape(-1, 2, 6)),
    S("concat", "concat", "concat(x, sin(x), a, axis=1)", [X((2, 3)), X((2, 2), name="a")],
      lambda i, w: torch.cat([i["x"], torch.sin(i["x"]), i["a"]], 1)),
    S("concat-neg-axis", "concat", "concat(x * x, a)", [X((2, 1, 3)), X((2, 1, 1), name="a")],
      lambda i, w: torch.cat([i["x"] * i["x"], i["a"]], -1)),
    S("transpose", "transpose", "transpose(x, [2, 0, 1]) + transpose(transpose(sin(x)), [0, 2, 1])", X((2, 3, 4)),
      lambda i, w: i["x"].permute(2, 0, 1) + torch.sin(i["x"]).permute(2, 1, 0).permute(0, 2, 1)),
]

# ---- activations: ordinary values, and integer-valued ones with exact zeros (the kinks)
_ACT = {
    "relu": lambda x: F.relu(x), "sigmoid": lambda x: torch.sigmoid(x), "tanh": lambda x: torch.tanh(x),
    "softplus": lambda x: F.softplus(x), "gelu": lambda x: F.gelu(x), "silu": lambda x: F.silu(x),
    "swish": lambda x: F.silu(x), "mish": lambda x: F.mish(x), "elu": lambda x: F.elu(x),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.3),
    "softmax": lambda x: F.softmax(x, -1), "log_softmax": lambda x: F.log_softmax(x, -1),
}
SAMPLES += [S(f"{a}", a, f"{a}(x)", X((3, 4), "away" if a in ("relu", "leaky_relu", "elu") else "normal"),
              lambda i, w, f=f: f(i["x"])) for a, f in _ACT.items()]
SAMPLES += [S(f"{a}-ints", a, f"{a}(x)", X((3, 5), "ints"), lambda i, w, f=f: f(i["x"]), smooth=False)
            for a, f in _ACT.items()]
SAMPLES += [
    S("leaky_relu-alpha", "leaky_relu", "leaky_relu(x, alpha=0.1)", X((2, 5), "ints"),
      lambda i, w: F.leaky_relu(i["x"], 0.1), smooth=False),
    S("elu-alpha", "elu", "elu(x, alpha=0.5)", X((2, 5), "away"), lambda i, w: F.elu(i["x"], 0.5)),
    S("softmax-axis0", "softmax", "softmax(x, axis=0)", X((3, 2, 2)), lambda i, w: F.softmax(i["x"], 0)),
    S("log_softmax-axis1-ties", "log_softmax", "log_softmax(x, axis=1)", X((2, 4, 2), "zeros"),
      lambda i, w: F.log_softmax(i["x"], 1)),
    S("softplus-large", "softplus", "softplus(x * 30)", X((2, 4)), lambda i, w: F.softplus(i["x"] * 30)),
]

# ---- issue 21: relu6, hard_sigmoid, hard_swish (torch's: hardtanh's derivative is 0 at both bounds;
# hardsigmoid as relu6(x + 3) / 6, its definition, since torch has no double backward for F.hardsigmoid)
_KINKS = _pick(-7.0, -3.0, -1.5, 0.0, 1.0, 3.0, 4.5, 6.0, 8.0)
SAMPLES += [
    S("relu6", "relu6", "relu6(x)", X((3, 4), _avoid(0.0, 6.0)), lambda i, w: F.relu6(i["x"])),
    S("relu6-kinks", "relu6", "relu6(x) * x", X((3, 6), _KINKS), lambda i, w: F.relu6(i["x"]) * i["x"], smooth=False),
    S("hard_sigmoid", "hard_sigmoid", "hard_sigmoid(x)", X((3, 4), _avoid(-3.0, 3.0)),
      lambda i, w: F.relu6(i["x"] + 3) / 6),
    S("hard_swish", "hard_swish", "hard_swish(x)", X((3, 4), _avoid(-3.0, 3.0)), lambda i, w: F.hardswish(i["x"])),
    S("hard-kinks", ("hard_sigmoid", "hard_swish"), "hard_sigmoid(x) * x + hard_swish(x) * x",
      X((3, 6), _KINKS), lambda i, w: F.relu6(i["x"] + 3) / 6 * i["x"] + F.hardswish(i["x"]) * i["x"], smooth=False),
    S("dense-hard_swish-activation", ("dense", "hard_swish", "relu6"),
      "dense(x, 3, activation=hard_swish) |> dense(2, activation=relu6)", X((2, 4)),
      lambda i, w: F.relu6(F.hardswish(i["x"] @ w["y.weight"] + w["y.bias"]) @ w["y_2.weight"] + w["y_2.bias"])),
]

# ---- issue 21: tensors made from numbers, list literals, inf, masked_fill, float64 embedding / one_hot
SAMPLES += [
    S("creation", ("arange", "zeros", "ones", "full"),
      "x * cast(arange(3), f64) + zeros([2, 3]) + ones([3]) * x * x + full([2, 1], 0.5) * x + arange(0.5, 2, 0.5) * x"
      " + x * full(like=x, value=2.0)", X((2, 3)),
      lambda i, w: i["x"] * torch.arange(3).double() + i["x"] * i["x"] + 0.5 * i["x"]
      + torch.arange(0.5, 2, 0.5, dtype=torch.float64) * i["x"] + 2 * i["x"]),
    S("creation-symbolic", ("arange", "zeros", "ones"),
      "x * cast(arange(N), f64)[:, None] + ones([N, 3]) * x + sum(cast(arange(1, N + 1, 2), f64)) * x + zeros(like=x)",
      X((4, 3), declared=("N", 3)),
      lambda i, w: i["x"] * torch.arange(4).double()[:, None] + i["x"] + 4 * i["x"]),
    S("masked_fill-causal-inf", ("masked_fill", "arange", "softmax"),
      "softmax(masked_fill(x, arange(4)[None, :] > arange(3)[:, None], -inf), axis=-1)", X((3, 4)),
      lambda i, w: F.softmax(i["x"].masked_fill(torch.arange(4)[None, :] > torch.arange(3)[:, None], -np.inf), -1)),
    S("masked_fill-tensor-value", "masked_fill", "masked_fill(x, x > 0, a) * x + masked_fill(x, x < 0, 2)",
      [X((3, 4), "ints"), X((), name="a")],
      lambda i, w: i["x"].masked_fill(i["x"] > 0, i["a"]) * i["x"] + i["x"].masked_fill(i["x"] < 0, 2.0), smooth=False),
    S("list-literals", ("embedding", "cast"),
      "x * [1.5, -2, 0.1] + embedding([2, 0, 2], 4, 3) + cast([1, 2, 3], f64) * x + [[1], [2], [3]]", X((3, 3)),
      lambda i, w: i["x"] * torch.tensor([1.5, -2, 0.1], dtype=torch.float64) + w["y.weight"][[2, 0, 2]]
      + torch.tensor([1.0, 2, 3], dtype=torch.float64) * i["x"] + torch.tensor([[1.0], [2], [3]], dtype=torch.float64)),
    # (f64 beside f64 values without float64=True: the table and the rows are f64)
    S("embedding-one_hot-f64", ("embedding", "one_hot"), "embedding(x, 6, 3) * v + one_hot(x, 6)[:, :, :3] * v",
      [X((2, 4), _labels(6), dtype="i64"), X((2, 4, 1), name="v")],
      lambda i, w: F.embedding(i["x"], w["y.weight"]) * i["v"] + F.one_hot(i["x"], 6)[:, :, :3].double() * i["v"]),
]

# ---- issue 21: sequence layers against torch's modules (functional_call: the weights are the sample's)
def _torch_rnn(kind, units, return_sequences):
    """torch LSTM / GRU with dslc's Keras-layout weights mapped in (README "Sequence layers")."""
    def fn(i, w):
        x = i["x"]
        k, r, b = w["y.kernel"], w["y.recurrent_kernel"], w["y.bias"]
        if kind == "lstm":
            mod = torch.nn.LSTM(x.shape[2], units, batch_first=True).double()
            params = {"weight_ih_l0": k.T, "weight_hh_l0": r.T, "bias_ih_l0": b, "bias_hh_l0": torch.zeros_like(b)}
        else:  # Keras' gate order z, r, h to torch's r, z, n
            perm = list(range(units, 2 * units)) + list(range(units)) + list(range(2 * units, 3 * units))
            mod = torch.nn.GRU(x.shape[2], units, batch_first=True).double()
            params = {"weight_ih_l0": k[:, perm].T, "weight_hh_l0": r[:, perm].T, "bias_ih_l0": b[perm],
                      "bias_hh_l0": w["y.recurrent_bias"][perm]}
        out, state = torch.func.functional_call(mod, params, (x,))
        h = state[0] if kind == "lstm" else state
        return out if return_sequences else h[0]
    return fn


def _torch_mha(heads, causal=False, mask=None):
    def fn(i, w):
        q, k, v = i["q"], i.get("k", i["q"]), i.get("v", i.get("k", i["q"]))
        e = q.shape[2]
        mod = torch.nn.MultiheadAttention(e, heads, batch_first=True, kdim=k.shape[2], vdim=v.shape[2]).double()
        wq, wk, wv = w["y.query.weight"], w["y.key.weight"], w["y.value.weight"]
        params = {"in_proj_bias": torch.cat([w["y.query.bias"], w["y.key.bias"], w["y.value.bias"]]),
                  "out_proj.weight": w["y.output.weight"].T, "out_proj.bias": w["y.output.bias"]}
        if k.shape[2] == e and v.shape[2] == e:
            params["in_proj_weight"] = torch.cat([wq.T, wk.T, wv.T])
        else:
            params.update({"q_proj_weight": wq.T, "k_proj_weight": wk.T, "v_proj_weight": wv.T})
        attn_mask = None  # torch: true where attention is NOT allowed
        if causal:
            attn_mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).triu(1)
        if mask is not None:
            m = ~mask(i)
            attn_mask = m if attn_mask is None else attn_mask | m
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.repeat_interleave(heads, 0)
        # (the math kernel: torch's fused CPU attention has no double backward)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            out, _ = torch.func.functional_call(mod, params, (q, k, v), {"attn_mask": attn_mask, "need_weights": False})
        return out
    return fn


SAMPLES += [
    S("lstm-unrolled-sequences", "lstm", "lstm(x, 3, return_sequences=true)", X((2, 3, 2)),
      _torch_rnn("lstm", 3, True)),
    S("lstm-loop-symbolic-last", "lstm", "lstm(x, 2)", X((2, 4, 3), declared=("N", "T", 3)),
      _torch_rnn("lstm", 2, False)),
    S("gru-unrolled-last", "gru", "gru(x, 3)", X((2, 3, 2)), _torch_rnn("gru", 3, False)),
    S("lstm-loop-static-sequences", "lstm", "lstm(x, 2, return_sequences=true, unroll=false)", X((1, 3, 2)),
      _torch_rnn("lstm", 2, True)),
    S("gru-loop-symbolic-sequences", "gru", "gru(x, 2, return_sequences=true)", X((1, 4, 2), declared=("N", "T", 2)),
      _torch_rnn("gru", 2, True)),
    # (head sizes 4: 1 / sqrt(4) is exact in float32, the type of the alpha of onnxruntime's FusedMatMul,
    # into which it folds the scale of the query gradient's MatMul even in a float64 graph)
    S("multi_head_attention-self", "multi_head_attention", "multi_head_attention(q, q, q, 1)",
      [X((2, 3, 4), name="q")], _torch_mha(1)),
    S("multi_head_attention-causal-cross", "multi_head_attention", "multi_head_attention(q, k, k, 2, causal=true)",
      [X((1, 3, 8), name="q"), X((1, 4, 3), name="k")], _torch_mha(2, causal=True)),
    S("multi_head_attention-mask-symbolic", "multi_head_attention",
      "multi_head_attention(q, k, v, 1, mask=m)",
      [X((2, 3, 4), declared=("N", "T", 4), name="q"), X((2, 2, 3), declared=("N", "S", 3), name="k"),
       X((2, 2, 2), declared=("N", "S", 2), name="v"),
       X((2, 3, 2), lambda r, s: np.array([[[1, 0], [1, 1], [0, 1]], [[1, 1], [0, 1], [1, 0]]], bool),
         declared=("N", "T", "S"), name="m", dtype="bool")],
      _torch_mha(1, mask=lambda i: i["m"])),
    S("positional_embedding", ("positional_embedding",), "x + positional_embedding(x)", X((2, 3, 4)),
      lambda i, w: i["x"] + w["y.weight"]),
    S("positional_embedding-symbolic", ("positional_embedding",), "x * positional_embedding(x, max_len=5)",
      X((2, 3, 2), declared=("N", "T", 2)), lambda i, w: i["x"] * w["y.weight"][:3]),
]

# ---- math
_UNARY = {"exp": (torch.exp, "normal"), "log": (torch.log, "positive"), "sqrt": (torch.sqrt, "positive"),
          "abs": (torch.abs, "away"), "square": (torch.square, "normal"), "sin": (torch.sin, "normal"),
          "cos": (torch.cos, "normal"), "tan": (torch.tan, "tan"), "atan": (torch.atan, "normal"),
          "erf": (torch.erf, "normal")} if torch else {}
SAMPLES += [S(n, n, f"{n}(x)", X((2, 3), kind), lambda i, w, f=f: f(i["x"])) for n, (f, kind) in _UNARY.items()]
SAMPLES += [
    S("abs-zeros", "abs", "abs(x) * x", X((3, 4), "ints"), lambda i, w: torch.abs(i["x"]) * i["x"], smooth=False),
    S("sqrt-plus", "sqrt", "sqrt(x * x + 1)", X((3, 3), "ints"), lambda i, w: torch.sqrt(i["x"] * i["x"] + 1)),
    S("erf-wide", "erf", "erf(x * 3)", X((3, 4)), lambda i, w: torch.erf(i["x"] * 3)),
    S("atan-wide", "atan", "atan(x * 4)", X((3, 4)), lambda i, w: torch.atan(i["x"] * 4)),
    S("piecewise-constant", ("sign", "floor", "ceil", "round"),
      "(sign(x) + floor(x) + ceil(x) + round(x)) * x", X((3, 4), "away"),
      lambda i, w: (torch.sign(i["x"]) + torch.floor(i["x"]) + torch.ceil(i["x"]) + torch.round(i["x"])) * i["x"]),
    S("clip", "clip", "clip(x, -0.5, 0.7)", X((3, 4), "away"), lambda i, w: torch.clamp(i["x"], -0.5, 0.7)),
    S("clip-at-bounds", "clip", "clip(x, -1, 1) * x", X((4, 4), "ints"),
      lambda i, w: torch.clamp(i["x"], -1, 1) * i["x"], smooth=False),
    S("clip-tensor-bounds", "clip", "clip(x, a, b)", [X((3, 4)), X((), name="a", kind=lambda r, s: np.asarray(-0.3)),
                                                      X((), name="b", kind=lambda r, s: np.asarray(0.4))],
      lambda i, w: torch.clamp(i["x"], i["a"], i["b"])),
    S("minimum-maximum-broadcast", ("minimum", "maximum"), "minimum(x, a) + 2 * maximum(x, a)",
      [X((3, 4)), X((4,), name="a")], lambda i, w: _minimum(i["x"], i["a"]) + 2 * _maximum(i["x"], i["a"])),
    S("minimum-maximum-ties", ("minimum", "maximum"), "minimum(x, a) + 2 * maximum(a, x) + 5 * minimum(a, x)",
      [X((3, 4), "ints"), X((3, 4), "ints", name="a")],
      lambda i, w: _minimum(i["x"], i["a"]) + 2 * _maximum(i["a"], i["x"]) + 5 * _minimum(i["a"], i["x"]), smooth=False),
    S("sum-mean-axes", ("sum", "mean"), "sum(x, axis=1) * mean(x, axis=[0, 2], keepdims=true)[0, 0] + mean(x)",
      X((2, 3, 4)), lambda i, w: i["x"].sum(1) * i["x"].mean((0, 2), keepdim=True)[0, 0] + i["x"].mean()),
    S("sum-all", "sum", "sum(x * x) * x", X((2, 3)), lambda i, w: (i["x"] * i["x"]).sum() * i["x"]),
    S("max-min", ("max", "min"), "max(x, axis=1) - 2 * min(x, axis=(0, 1), keepdims=true)[0]", X((2, 3, 4), "distinct"),
      lambda i, w: i["x"].amax(1) - 2 * i["x"].amin((0, 1), keepdim=True)[0]),
    S("max-min-ties", ("max", "min"), "max(x, axis=1) * 3 + min(x) + max(x)", X((3, 4), "ints"),
      lambda i, w: i["x"].amax(1) * 3 + i["x"].amin() + i["x"].amax(), smooth=False),
    S("max-blank", "max", "max(x, axis=[1, 2])", X((2, 3, 2), "zeros"), lambda i, w: i["x"].amax((1, 2)), smooth=False),
    S("argmax-one_hot", ("argmax", "one_hot"), "cast(one_hot(argmax(x, axis=1), 4), f64) * x", X((3, 4), "distinct"),
      lambda i, w: F.one_hot(i["x"].argmax(1), 4).double() * i["x"]),
    S("cast", "cast", "cast(cast(x, f32), f64) * x + cast(cast(x * 3, i64), f64)", X((2, 3), "away"),
      lambda i, w: i["x"].float().double() * i["x"] + (i["x"] * 3).long().double(), smooth=False),  # f32 rounding
    S("where", ("where",), "where(x > a, x * x, sin(a))", [X((3, 4)), X((4,), name="a")],
      lambda i, w: torch.where(i["x"] > i["a"], i["x"] * i["x"], torch.sin(i["a"]))),
    S("where-bool-input", ("where",), "where(c, x, 2 * x)", [X((3, 4)), X((3, 4), lambda r, s: r.random(s) > 0.5, name="c",
                                                                       dtype="bool")],
      lambda i, w: torch.where(i["c"], i["x"], 2 * i["x"])),
    S("arithmetic", ("+", "-", "*", "/", "neg"), "(x + a) * (x - a) / (a * a + 1) - x / 3",
      [X((2, 3)), X((3,), name="a")], lambda i, w: (i["x"] + i["a"]) * (i["x"] - i["a"]) / (i["a"] * i["a"] + 1) - i["x"] / 3),
    S("matmul", "@", "x @ a", [X((2, 3, 4)), X((4, 2), name="a")], lambda i, w: i["x"] @ i["a"]),
    S("power", ("^", "**"), "x ^ 3 + x ** 2 + x ^ 0 + a ^ 2.5", [X((2, 3), "ints"), X((2, 3), "positive", name="a")],
      lambda i, w: i["x"] ** 3 + i["x"] ** 2 + i["x"] ** 0 + i["a"] ** 2.5),
    # (a tensor exponent away from 0: torch's pow backward masks exponent == 0 with a `where`, so its
    # d/dx of x a^(x-1) is 0 there where the true value, which finite differences confirm, is 1/a)
    S("power-tensor-exponent", "^", "a ^ x * 0.5", [X((2, 3), "away"), X((2, 3), "positive", name="a")],
      lambda i, w: i["a"] ** i["x"] * 0.5),
    S("compare-constants", ("==", "!=", "<", "<=", ">=", ">"),
      "x * cast(x == a, f64) + cast(x != a, f64) + cast(x < 0, f64) * x + cast(x <= 0, f64) + cast(x >= a, f64) * 2",
      [X((3, 4), "ints"), X((3, 4), "ints", name="a")],
      lambda i, w: i["x"] * (i["x"] == i["a"]).double() + (i["x"] != i["a"]).double() + (i["x"] < 0).double() * i["x"]
      + (i["x"] <= 0).double() + (i["x"] >= i["a"]).double() * 2, smooth=False),
    # ---- indexing and reshaping
    S("index-int-slices", "indexing", "x[0] * x[-1, ::-1] + x[1, None, :][0] + x[:, 1:][0, ::2][0]",
      X((3, 4)), lambda i, w: i["x"][0] * i["x"][-1].flip(0) + i["x"][1] + i["x"][0, 1:][::2][0]),
    S("index-steps-ellipsis", "indexing", "x[..., 1:4:2] + x[None, :, :, -2:][0]", X((2, 3, 5)),
      lambda i, w: i["x"][..., 1:4:2] + i["x"][None, :, :, -2:][0]),
    S("index-negative-step", "indexing", "x[3:0:-2, ::-2]", X((5, 4)), lambda i, w: torch.flip(i["x"], (0, 1))[1:5:2, ::2]),
    S("index-tensor-gather", "indexing", "x[:, k] + x[k]",
      [X((3, 3)), X((3,), lambda r, s: np.array([2, 0, 2]), name="k", dtype="i64")],
      lambda i, w: i["x"][:, i["k"]] + i["x"][i["k"]]),
    S("index-symbolic-slice", "indexing", "x[1:N-1] * x[:N-2]", X((5, 3), declared=("N", 3)),
      lambda i, w: i["x"][1:4] * i["x"][:3]),
    S("index-symbolic-last", "indexing", "x[-1] + x[0]", X((4, 3), declared=("N", 3)), lambda i, w: i["x"][-1] + i["x"][0]),
    S("reshape-symbolic", "reshape", "reshape(x, [N, 6]) |> sin", X((2, 2, 3), declared=("N", 2, 3)),
      lambda i, w: torch.sin(i["x"].reshape(2, 6))),
    # ---- losses (batch means)
    S("mse", "mse", "mse(p, t)", [X((4, 3), name="p"), X((4, 3), name="t")], lambda i, w: F.mse_loss(i["p"], i["t"])),
    S("mae", "mae", "mae(p, t)", [X((4, 3), name="p"), X((4, 3), name="t")], lambda i, w: F.l1_loss(i["p"], i["t"])),
    S("mae-ties", "mae", "mae(p, t)", [X((4, 3), "ints", name="p"), X((4, 3), "ints", name="t")],
      lambda i, w: F.l1_loss(i["p"], i["t"]), smooth=False),
    S("huber", "huber", "huber(p, t, delta=0.5)", [X((4, 3), name="p"), X((4, 3), name="t")],
      lambda i, w: F.huber_loss(i["p"], i["t"], delta=0.5)),
    S("huber-at-delta", "huber", "huber(p, t)", [X((3, 4), "ints", name="p"), X((3, 4), "ints", name="t")],
      lambda i, w: F.huber_loss(i["p"], i["t"], delta=1.0), smooth=False),
    S("binary_crossentropy", "binary_crossentropy", "binary_crossentropy(p, t)",
      [X((4, 3), "probs", name="p"), X((4, 3), "probs", name="t")], lambda i, w: _bce(i["p"], i["t"])),
    S("binary_crossentropy-logits", "binary_crossentropy", "binary_crossentropy(p, t, from_logits=true)",
      [X((4, 3), name="p"), X((4, 3), "probs", name="t")],
      lambda i, w: F.binary_cross_entropy_with_logits(i["p"], i["t"])),
    S("binary_crossentropy-logits-at-zero", "binary_crossentropy", "binary_crossentropy(p, t, from_logits=true)",
      [X((3, 4), "ints", name="p"), X((3, 4), "probs", name="t")],
      lambda i, w: F.binary_cross_entropy_with_logits(i["p"], i["t"]), smooth=False),
    S("categorical_crossentropy", "categorical_crossentropy", "categorical_crossentropy(p, t)",
      [X((3, 4), "softmaxed", name="p"), X((3, 4), "softmaxed", name="t")], lambda i, w: _cce(i["p"], i["t"])),
    S("categorical_crossentropy-logits-smoothing", "categorical_crossentropy",
      "categorical_crossentropy(p, t, from_logits=true, label_smoothing=0.1)",
      [X((3, 4), name="p"), X((3, 4), "softmaxed", name="t")],
      lambda i, w: F.cross_entropy(i["p"], i["t"], label_smoothing=0.1)),
    S("sparse_categorical_crossentropy", "sparse_categorical_crossentropy", "sparse_categorical_crossentropy(p, t)",
      [X((4, 3), "softmaxed", name="p"), X((4,), _labels(3), name="t", dtype="i64")],
      lambda i, w: _cce(i["p"], F.one_hot(i["t"], 3).double())),
    S("sparse_categorical_crossentropy-logits", "sparse_categorical_crossentropy",
      "sparse_categorical_crossentropy(p, t, from_logits=true)",
      [X((4, 3), name="p"), X((4,), _labels(3), name="t", dtype="i64")], lambda i, w: F.cross_entropy(i["p"], i["t"])),
    S("sparse_categorical_crossentropy-logits-ties", "sparse_categorical_crossentropy",
      "sparse_categorical_crossentropy(p, t, from_logits=true)",
      [X((2, 3), "zeros", name="p"), X((2,), _labels(3), name="t", dtype="i64")], lambda i, w: F.cross_entropy(i["p"], i["t"])),
    S("kl_divergence", "kl_divergence", "kl_divergence(p, q)",
      [X((3, 4), "softmaxed", name="p"), X((3, 4), "softmaxed", name="q")], lambda i, w: _kl(i["p"], i["q"])),
    # ---- random draws, fed as inputs (random="input"): random.0 a standard normal, random.1 and
    # random.2 uniforms in [0, 1) from which random_uniform and randint are made
    S("random", ("random_normal", "random_uniform", "randint"),
      "x * random_normal(like=x, mean=1, stddev=2) + cast(random_uniform([2, 3], -1, 3), f64) * cast(randint(5, [2, 3]), f64) * x",
      X((2, 3)), lambda i, w: i["x"] * (1 + 2 * i["random.0"])
      + (-1 + 4 * i["random.1"]).double() * torch.floor(5 * i["random.2"]).double() * i["x"],
      randoms={"random.0": X((2, 3), name="random.0"),
               "random.1": X((2, 3), lambda r, s: r.uniform(0, 1, s).astype(np.float32), name="random.1", dtype="f32"),
               "random.2": X((2, 3), lambda r, s: r.uniform(0, 1, s).astype(np.float32), name="random.2", dtype="f32")},
      rtol=1e-7),
    # ---- gradients inside the language
    S("grad-inside", "grad", "x * grad(sum(x ^ 3) + sum(sin(x) * x), x)", X((2, 3)), _grad_inside),
    S("stop_gradient", "stop_gradient", "x * stop_gradient(x * x) + x", X((2, 3)),
      lambda i, w: i["x"] * (i["x"] * i["x"]).detach() + i["x"], smooth=False),  # finite differences see through it
    # ---- more shapes: asymmetric pool pads, symbolic dims through the other layers, repeat
    S("max_pool2d-asymmetric-pads", "max_pool2d", "max_pool2d(x, 2, padding=[1, 0, 0, 1])", X((1, 2, 5, 5), "distinct"),
      lambda i, w: F.max_pool2d(F.pad(i["x"], (0, 1, 1, 0), value=-np.inf), 2)),
    S("avg_pool2d-asymmetric-pads-ints", "avg_pool2d", "avg_pool2d(x, [2, 3], strides=[1, 2], padding=[1, 0, 0, 2])",
      X((2, 1, 4, 5), "ints"),
      lambda i, w: F.avg_pool2d(F.pad(i["x"], (0, 2, 1, 0)), (2, 3), (1, 2)) / F.avg_pool2d(
          F.pad(torch.ones_like(i["x"]), (0, 2, 1, 0)), (2, 3), (1, 2))),
    S("avg_pool1d-symbolic", "avg_pool1d", "avg_pool1d(x, 2, strides=1, padding=same)", X((2, 2, 5), declared=("N", 2, "L")),
      lambda i, w: F.avg_pool1d(F.pad(i["x"], (0, 1)), 2, 1) / F.avg_pool1d(F.pad(torch.ones_like(i["x"]), (0, 1)), 2, 1)),
    S("max_pool3d-symbolic", "max_pool3d", "max_pool3d(x, 2)", X((1, 1, 4, 4, 2), "relu", declared=("N", 1, "D", "H", "W")),
      lambda i, w: F.max_pool3d(i["x"], 2), smooth=False),
    S("avg_pool3d-symbolic", "avg_pool3d", "avg_pool3d(x, [1, 2, 2])", X((1, 2, 3, 4, 4), declared=("N", 2, "D", "H", "W")),
      lambda i, w: F.avg_pool3d(i["x"], (1, 2, 2))),
    S("global_avg_pool1d-3d-symbolic", ("global_avg_pool1d", "global_avg_pool3d"),
      "global_avg_pool1d(x) * global_avg_pool3d(v)",
      [X((2, 3, 5), declared=("N", 3, "L")), X((2, 3, 2, 3, 2), declared=("N", 3, "D", "H", "W"), name="v")],
      lambda i, w: i["x"].mean(2) * i["v"].mean((2, 3, 4))),
    S("batch_norm-symbolic-batch1", "batch_norm", "batch_norm(x)", X((1, 2, 3, 3), declared=("N", 2, "H", "W")),
      _bn(True), training=True),
    S("layer_norm-symbolic", "layer_norm", "layer_norm(x)", X((3, 2, 4), declared=("N", "T", 4)),
      lambda i, w: F.layer_norm(i["x"], (4,), w["y.gamma"], w["y.beta"], eps=1e-3)),
    S("group_norm-symbolic", "group_norm", "group_norm(x, 2)", X((2, 4, 3, 2), declared=("N", 4, "H", "W")),
      lambda i, w: F.group_norm(i["x"], 2, w["y.gamma"], w["y.beta"], eps=1e-3)),
    S("conv2d-activations", ("conv2d", "gelu", "elu"),
      "conv2d(x, 2, kernel=1, activation=gelu) |> conv2d(2, kernel=2, activation=elu)", X((1, 2, 3, 3)),
      lambda i, w: F.elu(F.conv2d(F.gelu(F.conv2d(i["x"], w["y.weight"], w["y.bias"])), w["y_2.weight"], w["y_2.bias"]))),
    S("concat-symbolic", "concat", "concat(x, x * x, axis=0)", X((2, 3), declared=("N", 3)),
      lambda i, w: torch.cat([i["x"], i["x"] * i["x"]], 0)),
    S("index-runtime-bound", "indexing", "x[:n] * 2", [X((5, 3)), X((), lambda r, s: np.asarray(3), name="n", dtype="i64")],
      lambda i, w: i["x"][:3] * 2),
    S("repeat", "repeat", """h = x
        repeat 3 {
            h = tanh(h * a) + h
        }
        y = h""", [X((2, 3)), X((3,), name="a")],
      lambda i, w: _repeat_t(i["x"], i["a"])),
    # ---- layers composed (a small network: dense weights and conv weights get second derivatives together)
    S("convnet", ("conv2d", "max_pool2d", "flatten", "dense", "relu", "softmax"),
      """h = conv2d(x, 2, kernel=3, padding=same, activation=relu) |> max_pool2d(2) |> flatten
         y = dense(h, 3) |> softmax""",
      X((2, 1, 4, 4), "away"),
      lambda i, w: F.softmax(F.max_pool2d(F.relu(F.conv2d(i["x"], w["h.weight"], w["h.bias"], padding=1)), 2).flatten(1)
                             @ w["y.weight"] + w["y.bias"], -1), smooth=False),
]


# Options a sample reaches the point of but whose preconditions its shapes miss: forcing them must
# leave the rule's option at every site (test_opinfo asserts both ways).
NOT_APPLICABLE = {
    # max_pool_grad=tiles needs windows that tile the input (pool = strides, no padding)
    **{n: TILES for n in ("max_pool2d-blank", "max_pool2d-overlap-pad-ties", "max_pool2d-overlap",
                          "max_pool2d-stride-gt-pool", "max_pool2d-same-odd", "max_pool2d-symbolic-overlap",
                          "max_pool1d", "max_pool3d-overlap-ties", "max_pool2d-asymmetric-pads")},
    # conv_input_grad=matmuls needs group 1 and dx's stride phases to tile it evenly, each with a
    # tap, and static sizes; flipped_conv needs stride 1
    **{n: CIG | FLIP for n in ("conv2d-stride-gt-kernel", "conv2d-stride2-pad1", "conv2d-groups-rect",
                               "conv1d-same-stride2-groups")},
    **{n: FLIP for n in ("conv2d-even-k2-s2", "conv2d-same-stride2-odd-total", "conv2d_transpose-same",
                         "conv2d_transpose-output_padding")},
    **{n: CIG for n in ("conv2d-symbolic-same-even-kernel", "conv2d-symbolic-valid-dilation")},
    # conv_transpose=matmuls (and its input gradient, a Conv): the same phase condition on the output
    **{n: CIG | CT | FLIP for n in ("conv2d_transpose-k3-s2-p1", "conv2d_transpose-stride-gt-kernel",
                                    "conv2d_transpose-4-pads")},
}
for _name, _na in NOT_APPLICABLE.items():
    [_s for _s in SAMPLES if _s.name == _name][0].not_applicable = _na


# ================================================================== the harness

BY_NAME = {s.name: s for s in SAMPLES}
COT, DIR = "cot_", "dir_"  # the probe's cotangent and direction inputs


@contextlib.contextmanager
def vjp_recording():
    """Collect the IR ops whose VJP rule runs inside the block (first and second derivatives)."""
    seen: set = set()
    saved = dict(_rules.VJP)

    def wrap(op, rule):
        def recorded(b, node, dys):
            seen.add(op)
            return rule(b, node, dys)
        return recorded

    for op, rule in saved.items():
        _rules.VJP[op] = wrap(op, rule)
    try:
        yield seen
    finally:
        _rules.VJP.update(saved)


@dataclass
class Weight:
    name: str       # M.y.weight
    short: str      # y.weight
    shape: tuple
    trainable: bool
    dtype: str = "f64"  # as the source has it (float64=True widens an f32 one in the ONNX file)


@dataclass
class Prepared:
    sample: Sample
    weights: list
    source: str
    feeds: dict            # every probe input and every weight
    diff: list             # the probe-feed names differentiated: float inputs, then trainable weights
    expected: list         # torch: y, g..., h...
    n_diff: int

    @property
    def outputs(self) -> list[str]:
        return ["y"] + [f"g{i}" for i in range(self.n_diff)] + [f"h{i}" for i in range(self.n_diff)]


def _fill(rng, w: Weight, how: str | None) -> np.ndarray:
    leaf = w.short.rsplit(".", 1)[-1]
    if how == "zeros":
        return np.zeros(w.shape)
    if how == "ints":
        return np.round(rng.standard_normal(w.shape) * 1.5)
    if leaf.startswith(("gamma", "moving_variance")):
        return rng.uniform(0.5, 1.5, w.shape)
    return rng.uniform(-0.5, 0.5, w.shape)


def _dims(shape) -> str:
    return ", ".join(map(str, shape))


@functools.lru_cache(maxsize=None)
def prepare(name: str) -> Prepared:
    """The probe's source, its feeds, and torch's y, first and second derivatives."""
    s = BY_NAME[name]
    rng = np.random.default_rng(s.seed)
    src = s.source()
    forward = dslc.compile(dslc.loads(src, f"{name}.dsl"), "M")
    weights = []
    for init in forward.graph.initializer:
        if init.name.startswith("M."):
            short = init.name[2:]
            dtype = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64"}[init.data_type]
            weights.append(Weight(init.name, short, tuple(init.dims), "moving_" not in short, dtype))
    feeds = {i.name: i.draw(rng) for i in s.inputs}
    feeds.update({name: r.draw(rng) for name, r in s.randoms.items()})
    feeds.update({w.name: _fill(rng, w, s.weights.get(w.short)) for w in weights})

    # torch's y, then the gradient of sum(y * cot) and its derivative along the directions
    ti = {i.name: torch.tensor(feeds[i.name], requires_grad=i.diff) for i in s.inputs}
    ti.update({name: torch.tensor(feeds[name]) for name in s.randoms})
    tw = {w.short: torch.tensor(feeds[w.name], requires_grad=w.trainable) for w in weights}
    y = s.torch_fn(ti, tw)
    assert y.dtype == torch.float64, (name, y.dtype)
    diff_t = [ti[i.name] for i in s.inputs if i.diff] + [tw[w.short] for w in weights if w.trainable]
    diff = [i.name for i in s.inputs if i.diff] + [w.name for w in weights if w.trainable]
    cot = rng.standard_normal(tuple(y.shape))
    dirs = [rng.standard_normal(tuple(t.shape)) for t in diff_t]
    expected = [y.detach().numpy()]
    if diff:
        total = (y * torch.tensor(cot)).sum()
        gs = torch.autograd.grad(total, diff_t, create_graph=True, allow_unused=True) if total.requires_grad \
            else [None] * len(diff_t)
        gs = [torch.zeros_like(t) if g is None else g for g, t in zip(gs, diff_t)]
        second = sum((g * torch.tensor(d)).sum() for g, d in zip(gs, dirs))
        hs = torch.autograd.grad(second, diff_t, allow_unused=True) if second.requires_grad else [None] * len(diff_t)
        hs = [torch.zeros_like(t) if h is None else h for h, t in zip(hs, diff_t)]
        expected += [g.detach().numpy(force=True) for g in gs] + [h.detach().numpy(force=True) for h in hs]

    # the probe
    if s.symbolic:  # the cotangent's dims: fresh symbols (dslc names a symbolic output's dims itself)
        cot_decl = _type("f64", [f"Q{k}" for k in range(cot.ndim)]) if cot.ndim else "f64"
    else:
        cot_decl = _type("f64", cot.shape)
    args = [f"{i.name}: {_type(i.dtype, i.declared)}" for i in s.inputs] + [f"{COT}: {cot_decl}"]
    decl_of = {i.name: _type(i.dtype, i.declared) for i in s.inputs}
    decl_of.update({w.name: _type(w.dtype, w.shape) for w in weights})
    args += [f"{DIR}{k}: {decl_of[n]}" for k, n in enumerate(diff)]
    call = ", ".join(i.name for i in s.inputs) + (", training=true" if s.training else "")
    lines = [f"y = M({call})"]
    if diff:
        gnames = ", ".join(f"g{k}" for k in range(len(diff)))
        hnames = ", ".join(f"h{k}" for k in range(len(diff)))
        wrt = diff[0] if len(diff) == 1 else f"[{', '.join(diff)}]"
        lines += [f"{gnames} = grad(sum(y * {COT}), {wrt})",
                  "s = " + " + ".join(f"sum(g{k} * {DIR}{k})" for k in range(len(diff))),
                  f"{hnames} = grad(s, {wrt})",
                  f"return y, {gnames}, {hnames}"]
    else:
        lines.append("return y")
    source = src + f"fn probe({', '.join(args)}) {{\n" + "".join(f"    {ln}\n" for ln in lines) + "}\n"
    feeds[COT] = cot
    feeds.update({f"{DIR}{k}": d for k, d in enumerate(dirs)})
    return Prepared(s, weights, source, feeds, diff, expected, len(diff))


@dataclass(frozen=True)
class Variant:
    """One way to compile a sample: forced formulations, passes switched off, the conv lowering."""
    label: str
    forced: tuple = ()        # ((point, option),)
    passes_off: tuple = ()
    conv_lowering: str = "conv"

    def expects_taken(self, sample: Sample) -> list:
        return [po for po in self.forced if po not in sample.not_applicable]


def compile_probe(p: Prepared, v: Variant, record_vjp: bool = False):
    """The probe as ONNX with the weights turned into graph inputs; the (point, option) pairs taken;
    the IR ops whose VJP ran (when record_vjp)."""
    prog = dslc.loads(p.source, f"{p.sample.name}.dsl")
    vjps: set = set()
    with FORMS.recording() as taken, (vjp_recording() if record_vjp else contextlib.nullcontext(set())) as vjps:
        model = dslc.compile(prog, "probe", formulations=dict(v.forced), passes_off=v.passes_off,
                             conv_lowering=v.conv_lowering, float64=p.sample.widen, random="input")
    names = {w.name for w in p.weights}
    keep = [i for i in model.graph.initializer if i.name not in names]
    moved = [i for i in model.graph.initializer if i.name in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for init in moved:
        model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    assert all(i.data_type == onnx.TensorProto.DOUBLE for i in moved), "the weights must be float64"
    return model, set(taken), set(vjps)


@functools.lru_cache(maxsize=None)
def reached(name: str) -> tuple:
    """What the default compile of a sample reaches: its (point, option) pairs, whether it has
    convolutions (IR ops whose VJP ran: Conv / ConvTranspose), and the VJP-ruled IR ops."""
    try:
        p = prepare(name)
        _, taken, vjps = compile_probe(p, Variant("default"), record_vjp=True)
    except Exception:  # noqa: BLE001 -- the sample's default case fails and says why
        return frozenset(), frozenset()
    return frozenset(taken), frozenset(vjps)


def variants(name: str, full: bool = False) -> list[Variant]:
    """default, all passes off, each option of each point reached, and im2col where convolutions are.
    full: also every forced option and im2col with all passes off."""
    taken, vjps = reached(name)
    points = sorted({point for point, _ in taken})
    out = [Variant("default"), Variant("passes-off", passes_off=FORMS.PASSES)]
    forced = [((point, option),) for point in points for option in FORMS.CHOICES[point]]
    out += [Variant("+".join(f"{p}={o}" for p, o in f), forced=f) for f in forced]
    convs = bool({"Conv", "ConvTranspose"} & vjps)
    if convs:
        out.append(Variant("im2col", conv_lowering="im2col"))
    if full:
        out += [Variant("+".join(f"{p}={o}" for p, o in f) + "+passes-off", forced=f, passes_off=FORMS.PASSES)
                for f in forced]
        if convs:
            out.append(Variant("im2col+passes-off", passes_off=FORMS.PASSES, conv_lowering="im2col"))
    return out


def run_model(model, feeds: dict, runtime: str) -> list[np.ndarray]:
    names = {i.name for i in model.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in names}
    if runtime == "ort":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return lambda f: sess.run(None, {k: v for k, v in f.items() if k in names})
    from gradcheck import reference
    ref = reference(model)
    return lambda f: ref.run(None, {k: v for k, v in f.items() if k in names})


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-3))


@functools.lru_cache(maxsize=None)
def _checked(name: str, v: Variant):
    """The compiled probe, once per (sample, variant) for both runtimes, after the formulation and
    checker assertions (a failure is not cached: the next runtime's case raises it again)."""
    p = prepare(name)
    s = p.sample
    model, taken, _ = compile_probe(p, v)
    for po in v.expects_taken(s):
        assert po in taken, f"forcing {po} did not take it (taken: {sorted(taken)})"
    for po in v.forced:
        if po in s.not_applicable:
            assert po not in taken, f"{po} is marked not applicable to {name} but was taken"
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == p.outputs[:len(model.graph.output)]
    return model


def check(name: str, v: Variant, runtime: str = "ort", fd: bool = True) -> dict:
    """Compile one sample under one variant and check it; raises AssertionError with what differs.
    Returns the measured errors."""
    p = prepare(name)
    s = p.sample
    model = _checked(name, v)
    run = run_model(model, p.feeds, runtime)
    outs = run(p.feeds)
    errs = {}
    for out, exp, label in zip(outs, p.expected, p.outputs, strict=True):
        errs[label] = rel_err(out, exp)
    bad = {k: e for k, e in errs.items() if not e <= s.rtol}
    assert not bad, f"{name} [{v.label}, {runtime}] differs from torch: " + ", ".join(
        f"{k}: {e:.3g}" for k, e in bad.items())
    if fd and s.smooth and p.n_diff:
        errs.update(_finite_differences(p, run, outs))
    return errs


def _finite_differences(p: Prepared, run, outs, eps: float = 1e-5) -> dict:
    """Central differences along random directions t: <cot, dy> against sum <g_i, t_i>, and
    sum <dir_i, dg_i> against sum <h_i, t_i> (the Hessian-vector product, by its symmetry)."""
    rng = np.random.default_rng(p.sample.seed + 1)
    t = {n: rng.standard_normal(np.shape(p.feeds[n])) for n in p.diff}
    plus = run({**p.feeds, **{n: np.asarray(p.feeds[n] + eps * t[n]) for n in p.diff}})
    minus = run({**p.feeds, **{n: np.asarray(p.feeds[n] - eps * t[n]) for n in p.diff}})
    k = p.n_diff
    g, h = outs[1:1 + k], outs[1 + k:]
    fd1 = float(np.sum(p.feeds[COT] * (plus[0] - minus[0]))) / (2 * eps)
    an1 = sum(float(np.sum(gi * t[n])) for gi, n in zip(g, p.diff))
    fd2 = sum(float(np.sum(p.feeds[f"{DIR}{j}"] * (plus[1 + j] - minus[1 + j]))) for j in range(k)) / (2 * eps)
    an2 = sum(float(np.sum(hi * t[n])) for hi, n in zip(h, p.diff))
    tol = p.sample.fd_rtol
    e1 = abs(fd1 - an1) / max(abs(fd1), abs(an1), 1e-2)
    e2 = abs(fd2 - an2) / max(abs(fd2), abs(an2), 1e-2)
    assert e1 <= tol, f"{p.sample.name}: first derivative {an1} vs finite differences {fd1}"
    assert e2 <= tol, f"{p.sample.name}: second derivative {an2} vs finite differences {fd2}"
    return {"fd1": e1, "fd2": e2}


# ================================================================== IR-level samples
# IR ops with a VJP rule that no built-in lowers to (ReduceProd, GatherElements, ScatterElements, ...)
# are sampled as IR functions, with the same probe (y, the VJP, the VJP of the VJP) built by the
# autodiff driver, and the same torch twin and finite-difference checks.
@dataclass
class IRSample:
    name: str
    op: str
    fn: Callable              # (builder, [x0, x1, ...]) -> y
    inputs: list              # Inp records (f64, differentiated)
    torch_fn: Callable        # ([tensors]) -> y
    smooth: bool = True
    rtol: float = 1e-8
    fd_rtol: float = 1e-5
    runtimes: tuple = ("ort", "ref")

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def _ir_op(op, consts=None, attrs=None):
    """y = op(inputs in order, with `consts` {position: builder -> Value} spliced in)."""
    consts = consts or {}

    def fn(b, xs):
        it = iter(xs)
        ins = [consts[k](b) if k in consts else next(it) for k in range(len(xs) + len(consts))]
        return b.op(op, ins, attrs or {})
    return fn


def _ints(values):
    return lambda b: b.ints(values)


def _split_fn(b, xs):
    a, c = b.op("Split", [xs[0], b.ints([2, 3])], {"axis": 1}, n_out=2)
    return b.op("Mul", [a, b.op("Slice", [c, b.ints([1]), b.ints([3]), b.ints([1])])])


def _scatter_add_t(x, idx, u, axis):
    return x.scatter_add(axis, torch.tensor(idx), u)


IR_SAMPLES = [
    IRSample("ir-Identity", "Identity", lambda b, xs: b.op("Mul", [b.op("Identity", [xs[0]]), xs[0]]),
             [X((2, 3))], lambda t: t[0] * t[0]),
    # (exact Gelu in float64: onnxruntime has no float64 Erf, which its Gelu expands to, and
    # onnx.reference computes Erf in float32: the reference evaluator alone, at float32 accuracy)
    IRSample("ir-Gelu", "Gelu", _ir_op("Gelu"), [X((2, 5))], lambda t: F.gelu(t[0]), smooth=False, rtol=1e-6,
             runtimes=("ref",)),
    IRSample("ir-Gelu-tanh", "Gelu", _ir_op("Gelu", attrs={"approximate": "tanh"}), [X((2, 5))],
             lambda t: F.gelu(t[0], approximate="tanh")),
    IRSample("ir-ReduceProd", "ReduceProd", _ir_op("ReduceProd", {1: _ints([1])}, {"keepdims": 0}), [X((2, 3), "away")],
             lambda t: t[0].prod(1)),
    IRSample("ir-ReduceProd-all", "ReduceProd", _ir_op("ReduceProd"), [X((2, 2), "away")],
             lambda t: t[0].prod().reshape(1, 1)),
    IRSample("ir-GatherElements", "GatherElements",
             _ir_op("GatherElements", {1: _ints([[0, 3, 3], [1, 1, 0], [2, 0, 1]])}, {"axis": 1}), [X((3, 4))],
             lambda t: t[0].gather(1, torch.tensor([[0, 3, 3], [1, 1, 0], [2, 0, 1]]))),
    IRSample("ir-GatherND", "GatherND", _ir_op("GatherND", {1: _ints([[0, 1], [2, 3], [0, 1]])}), [X((3, 4, 2))],
             lambda t: t[0][torch.tensor([0, 2, 0]), torch.tensor([1, 3, 1])]),
    IRSample("ir-ScatterElements", "ScatterElements",
             _ir_op("ScatterElements", {1: _ints([[1, 3], [0, 2], [2, 0]])}, {"axis": 1}), [X((3, 4)), X((3, 2), name="u")],
             lambda t: t[0].scatter(1, torch.tensor([[1, 3], [0, 2], [2, 0]]), t[1])),
    IRSample("ir-ScatterElements-add", "ScatterElements",
             _ir_op("ScatterElements", {1: _ints([[0, 0], [3, 1], [2, 2]])}, {"axis": 1, "reduction": "add"}),
             [X((3, 4)), X((3, 2), name="u")], lambda t: _scatter_add_t(t[0], [[0, 0], [3, 1], [2, 2]], t[1], 1)),
    IRSample("ir-ScatterND", "ScatterND", _ir_op("ScatterND", {1: _ints([[3], [1]])}), [X((4, 3)), X((2, 3), name="u")],
             lambda t: t[0].index_put((torch.tensor([3, 1]),), t[1])),
    # attributes no built-in emits: ConvTranspose groups, MaxPool dilations (with ties), AveragePool
    # counting its padding
    IRSample("ir-ConvTranspose-groups", "ConvTranspose",
             _ir_op("ConvTranspose", attrs={"group": 2, "dilations": [2, 1], "strides": [1, 2], "pads": [0, 1, 1, 0]}),
             [X((1, 4, 3, 2)), X((4, 2, 2, 3), name="w")],
             lambda t: F.conv_transpose2d(t[0], t[1], groups=2, dilation=(2, 1), stride=(1, 2))[:, :, 0:-1, 1:]),
    IRSample("ir-MaxPool-dilated-ties", "MaxPool",
             _ir_op("MaxPool", attrs={"kernel_shape": [2, 2], "dilations": [2, 1]}), [X((1, 2, 5, 4), "ints")],
             lambda t: F.max_pool2d(t[0], 2, stride=1, dilation=(2, 1)), smooth=False),
    IRSample("ir-AveragePool-counted", "AveragePool",
             _ir_op("AveragePool", attrs={"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 1, 0, 1],
                                          "count_include_pad": 1}), [X((2, 2, 4, 5))],
             lambda t: F.avg_pool2d(F.pad(t[0], (1, 1, 1, 0)), (3, 2), (1, 2))),
    IRSample("ir-Split", "Split", lambda b, xs: _split_fn(b, xs), [X((2, 5))], lambda t: t[0][:, :2] * t[0][:, 3:5]),
]
IR_BY_NAME = {s.name: s for s in IR_SAMPLES}


@functools.lru_cache(maxsize=None)
def _ir_expected(name: str):
    s = IR_BY_NAME[name]
    rng = np.random.default_rng(s.seed)
    xs = [i.draw(rng) for i in s.inputs]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    y = s.torch_fn(ts)
    cot = rng.standard_normal(tuple(y.shape))
    dirs = [rng.standard_normal(x.shape) for x in xs]
    gs = torch.autograd.grad((y * torch.tensor(cot)).sum(), ts, create_graph=True, allow_unused=True)
    gs = [torch.zeros_like(t) if g is None else g for g, t in zip(gs, ts)]
    second = sum((g * torch.tensor(d)).sum() for g, d in zip(gs, dirs))
    hs = torch.autograd.grad(second, ts, allow_unused=True) if second.requires_grad else [None] * len(ts)
    hs = [torch.zeros_like(t) if h is None else h for h, t in zip(hs, ts)]
    expected = [y.detach().numpy()] + [g.detach().numpy(force=True) for g in gs] + [h.detach().numpy(force=True) for h in hs]
    feeds = {f"x{k}": x for k, x in enumerate(xs)}
    feeds[COT] = cot
    feeds.update({f"{DIR}{k}": d for k, d in enumerate(dirs)})
    return feeds, expected


def compile_ir(name: str, passes_off=()):
    """The IR probe (y, first and second derivatives) as ONNX, with the float64 rewrites and the passes."""
    from dslc.autodiff import vjp
    from dslc.emit.onnx_emit import to_onnx
    from dslc.ir.builder import Builder
    from dslc.ir.core import Graph, TensorType
    from dslc.passes import optimize
    from dslc.passes.float64_ops import rewrite_float64_ops
    s = IR_BY_NAME[name]
    feeds, expected = _ir_expected(name)
    graph = Graph("probe")
    b = Builder(graph)
    xs = [b.input(f"x{k}", TensorType("f64", i.shape)) for k, i in enumerate(s.inputs)]
    with vjp_recording() as seen, FORMS.forcing(passes_off=passes_off):
        y = s.fn(b, xs)
        cot = b.input(COT, TensorType("f64", tuple(np.shape(feeds[COT]))))
        gs = vjp(b, [y], [cot], xs)
        dirs = [b.input(f"{DIR}{k}", x.type) for k, x in enumerate(xs)]
        parts = [b.op("ReduceSum", [b.op("Mul", [g, d])], {"keepdims": 0}) for g, d in zip(gs, dirs)]
        total = functools.reduce(lambda p, q: b.op("Add", [p, q]), parts)
        hs = vjp(b, [total], [b.const(np.asarray(1.0), "f64")], xs)
        graph.outputs = [b.op("Identity", [v]) for v in [y, *gs, *hs]]
        rewrite_float64_ops(graph)
        optimize(graph)
    return to_onnx(graph), set(seen)


def check_ir(name: str, runtime: str = "ort", passes_off=(), fd: bool = True) -> dict:
    s = IR_BY_NAME[name]
    feeds, expected = _ir_expected(name)
    model, seen = compile_ir(name, passes_off)
    assert s.op in seen, f"{name}: the {s.op} rule did not run"
    onnx.checker.check_model(model, full_check=True)
    run = run_model(model, feeds, runtime)
    outs = run(feeds)
    labels = ["y"] + [f"g{k}" for k in range(len(s.inputs))] + [f"h{k}" for k in range(len(s.inputs))]
    errs = {label: rel_err(o, e) for o, e, label in zip(outs, expected, labels, strict=True)}
    bad = {k: e for k, e in errs.items() if not e <= s.rtol}
    assert not bad, f"{name} [{runtime}] differs from torch: " + ", ".join(f"{k}: {e:.3g}" for k, e in bad.items())
    if fd and s.smooth:
        diff = [f"x{k}" for k in range(len(s.inputs))]
        p = Prepared(Sample(name, (), "", [], None, fd_rtol=s.fd_rtol), [], "", feeds, diff, expected, len(diff))
        errs.update(_finite_differences(p, run, outs))
    return errs


# ================================================================== step samples
# Whole steps: `emit="gradients", wrt_inputs=True` (loss, the weights' and float inputs' gradients,
# batch-norm statistics) and `emit="train"` with SGD (weights - lr * gradient): these reach the
# optimizer's formulation point (optimizer_update) that a fn cannot.
@dataclass
class StepSample:
    name: str
    covers: tuple
    body: str                 # model M's body, defining y
    model_inputs: list        # Inp records of M
    step_inputs: list         # Inp records of the step beyond M's (targets, labels)
    loss: str                 # dslc, of M(...) and the step's inputs
    torch_fn: Callable        # (inputs, weights) -> (loss, {output name: expected value})
    lr: float = 0.1
    smooth: bool = True
    weights: dict = field(default_factory=dict)
    not_applicable: frozenset = frozenset()
    rtol: float = 1e-8
    fd_rtol: float = 1e-5

    @property
    def inputs(self) -> list:
        return self.model_inputs + self.step_inputs

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())

    def source(self) -> str:
        m = Sample(self.name, (), self.body, self.model_inputs, None).source()
        args = ", ".join(f"{i.name}: {_type(i.dtype, i.declared)}" for i in self.inputs)
        return m + (f"step s({args}) updates M using sgd(lr={self.lr}) {{\n"
                    f"    minimize {self.loss}\n}}\n")


def _keras_moving(x, moving_mean, moving_var, axes):
    """Keras batch-norm statistics after one step: 0.99 old + 0.01 batch (biased variance)."""
    return (0.99 * moving_mean + 0.01 * x.mean(axes),
            0.99 * moving_var + 0.01 * x.var(axes, unbiased=False))


def _step_convnet(i, w):
    h = F.conv2d(i["x"], w["h.weight"], w["h.bias"], padding=1)
    mm, mv = _keras_moving(h.detach(), w["h_2.moving_mean"], w["h_2.moving_variance"], (0, 2, 3))
    h = F.batch_norm(h, None, None, w["h_2.gamma"], w["h_2.beta"], training=True, eps=1e-3)
    y = F.relu(h).flatten(1) @ w["y.weight"] + w["y.bias"]
    return F.cross_entropy(y, i["t"]), {"M.h_2.moving_mean.next": mm, "M.h_2.moving_variance.next": mv}


def _step_transpose_pool(i, w):
    h = F.relu(F.conv_transpose2d(i["x"], w["h.weight"], w["h.bias"], stride=2))
    return F.mse_loss(F.max_pool2d(h, 2), i["t"]), {}


STEP_SAMPLES = [
    StepSample("step-convnet-batchnorm", ("conv2d", "batch_norm", "relu", "flatten", "dense",
                                          "sparse_categorical_crossentropy"),
               """h = conv2d(x, 3, kernel=3, padding=same) |> batch_norm |> relu |> flatten
                  y = dense(h, 3)""",
               [X((2, 2, 4, 4), declared=("N", 2, 4, 4))], [X((2,), _labels(3), declared=("N",), name="t", dtype="i64")],
               "sparse_categorical_crossentropy(M(x), t, from_logits=true)", _step_convnet, smooth=False),
    StepSample("step-dense-tanh-mse", ("dense", "tanh", "mse"), "y = dense(x, 4, activation=tanh) |> dense(2)",
               [X((3, 5))], [X((3, 2), name="t")], "mse(M(x), t)",
               lambda i, w: (F.mse_loss(torch.tanh(i["x"] @ w["y.weight"] + w["y.bias"]) @ w["y_2.weight"]
                                        + w["y_2.bias"], i["t"]), {})),
    StepSample("step-transpose-pool-ties", ("conv2d_transpose", "relu", "max_pool2d", "mse"),
               "y = conv2d_transpose(x, 2, kernel=2, strides=2, activation=relu) |> max_pool2d(2)",
               [X((1, 3, 2, 2), "relu")], [X((1, 2, 2, 2), name="t")], "mse(M(x), t)",
               lambda i, w: (F.mse_loss(F.max_pool2d(F.relu(F.conv_transpose2d(i["x"], w["y.weight"], w["y.bias"],
                                                                               stride=2)), 2), i["t"]), {}),
               weights={"y.weight": "ints", "y.bias": "zeros"}, smooth=False),
]
STEP_BY_NAME = {s.name: s for s in STEP_SAMPLES}


@dataclass(frozen=True)
class StepVariant:
    label: str
    emit: str
    forced: tuple = ()
    passes_off: tuple = ()
    conv_lowering: str = "conv"

    def expects_taken(self, sample) -> list:
        return [po for po in self.forced if po not in sample.not_applicable]


@functools.lru_cache(maxsize=None)
def prepare_step(name: str):
    """Feeds, torch's loss and gradients, and the expected outputs by name for each emit."""
    s = STEP_BY_NAME[name]
    rng = np.random.default_rng(s.seed)
    model = dslc.compile(dslc.loads(s.source(), f"{name}.dsl"), "s", emit="gradients", wrt_inputs=True)
    weights = [Weight(i.name, i.name[2:], tuple(i.dims), "moving_" not in i.name)
               for i in model.graph.initializer if i.name.startswith("M.")]
    feeds = {i.name: i.draw(rng) for i in s.inputs}
    feeds.update({w.name: _fill(rng, w, s.weights.get(w.short)) for w in weights})
    ti = {i.name: torch.tensor(feeds[i.name], requires_grad=i.diff) for i in s.inputs}
    tw = {w.short: torch.tensor(feeds[w.name], requires_grad=w.trainable) for w in weights}
    loss, extra = s.torch_fn(ti, tw)
    diff = [i.name for i in s.inputs if i.diff] + [w.name for w in weights if w.trainable]
    diff_t = [ti[i.name] for i in s.inputs if i.diff] + [tw[w.short] for w in weights if w.trainable]
    gs = torch.autograd.grad(loss, diff_t)
    grads = {n: g.numpy() for n, g in zip(diff, gs)}
    common = {"loss": loss.detach().numpy(), **{k: v.detach().numpy() for k, v in extra.items()}}
    expected = {
        "gradients": {**common, **{f"grad.{n}": g for n, g in grads.items()}},
        "train": {**common, "step.next": np.asarray(1),
                  **{f"{w.name}.next": feeds[w.name] - s.lr * grads[w.name] for w in weights if w.trainable}},
    }
    return feeds, expected, diff


def compile_step(name: str, v: StepVariant, record_vjp: bool = False):
    s = STEP_BY_NAME[name]
    with FORMS.recording() as taken, (vjp_recording() if record_vjp else contextlib.nullcontext(set())) as vjps:
        model = dslc.compile(dslc.loads(s.source(), f"{name}.dsl"), "s", emit=v.emit, wrt_inputs=v.emit == "gradients",
                             formulations=dict(v.forced), passes_off=v.passes_off, conv_lowering=v.conv_lowering)
    return model, set(taken), set(vjps)


@functools.lru_cache(maxsize=None)
def step_reached(name: str, emit: str) -> tuple:
    try:
        _, taken, vjps = compile_step(name, StepVariant("default", emit), record_vjp=True)
    except Exception:  # noqa: BLE001 -- the default case fails and says why
        return frozenset(), frozenset()
    return frozenset(taken), frozenset(vjps)


def step_variants(name: str) -> list[StepVariant]:
    out = []
    for emit in ("gradients", "train"):
        taken, vjps = step_reached(name, emit)
        forced = [((p, o),) for p in sorted({p for p, _ in taken}) for o in FORMS.CHOICES[p]]
        for off in ((), FORMS.PASSES):
            tail = "+passes-off" if off else ""
            out.append(StepVariant(f"{emit}{tail}", emit, passes_off=off))
            out += [StepVariant(f"{emit}+{f[0][0]}={f[0][1]}{tail}", emit, f, off) for f in forced]
            if {"Conv", "ConvTranspose"} & vjps:
                out.append(StepVariant(f"{emit}+im2col{tail}", emit, passes_off=off, conv_lowering="im2col"))
    return out


@functools.lru_cache(maxsize=None)
def _checked_step(name: str, v: StepVariant):
    model, taken, _ = compile_step(name, v)
    for po in v.expects_taken(STEP_BY_NAME[name]):
        assert po in taken, f"forcing {po} did not take it (taken: {sorted(taken)})"
    onnx.checker.check_model(model, full_check=True)
    return model


def check_step(name: str, v: StepVariant, runtime: str = "ort") -> dict:
    s = STEP_BY_NAME[name]
    feeds, expected, diff = prepare_step(name)
    model = _checked_step(name, v)
    run = run_model(model, feeds, runtime)
    outs = run(feeds)
    got = dict(zip([o.name for o in model.graph.output], outs))
    exp = expected[v.emit]
    missing = set(exp) - set(got)
    assert not missing, f"{name} [{v.label}] lacks outputs {sorted(missing)}"
    errs = {k: rel_err(got[k], e) for k, e in exp.items()}
    bad = {k: e for k, e in errs.items() if not e <= s.rtol}
    assert not bad, f"{name} [{v.label}, {runtime}] differs from torch: " + ", ".join(
        f"{k}: {e:.3g}" for k, e in bad.items())
    if v.emit == "gradients" and s.smooth:  # the loss along a random direction against the gradients
        eps = 1e-5
        rng = np.random.default_rng(s.seed + 1)
        t = {n: rng.standard_normal(np.shape(feeds[n])) for n in diff}
        plus = dict(zip(got, run({**feeds, **{n: feeds[n] + eps * t[n] for n in diff}})))["loss"]
        minus = dict(zip(got, run({**feeds, **{n: feeds[n] - eps * t[n] for n in diff}})))["loss"]
        fd = float(plus - minus) / (2 * eps)
        an = sum(float(np.sum(got[f"grad.{n}"] * t[n])) for n in diff)
        errs["fd1"] = abs(fd - an) / max(abs(fd), abs(an), 1e-2)
        assert errs["fd1"] <= s.fd_rtol, f"{name}: gradient {an} vs finite differences {fd}"
    return errs


def step_cases() -> list:
    return [(s.name, v) for s in STEP_SAMPLES for v in step_variants(s.name)]


def cases(full: bool = False) -> list[tuple[str, Variant]]:
    return [(s.name, v) for s in SAMPLES for v in variants(s.name, full)]


def count(full: bool = True) -> dict:
    """(sample, formulation) cases per runtime, and (op, sample, formulation) cases, where op runs
    over the built-ins a sample covers and the VJP-ruled IR ops its compile differentiates."""
    pairs = cases(full)
    ops = {s.name: set(s.covers) | set(reached(s.name)[1]) for s in SAMPLES}
    steps = step_cases()
    step_ops = {(s.name, e): set(s.covers) | set(step_reached(s.name, e)[1]) for s in STEP_SAMPLES
                for e in ("gradients", "train")}
    ir = [(s.name, off) for s in IR_SAMPLES for off in ((), FORMS.PASSES)]
    return {"samples": len(SAMPLES), "step_samples": len(STEP_SAMPLES), "ir_samples": len(IR_SAMPLES),
            "sample_formulation_cases": len(pairs) + len(steps) + len(ir),
            "op_sample_formulation_cases": sum(len(ops[n]) for n, _ in pairs)
            + sum(len(step_ops[n, v.emit]) for n, v in steps) + len(ir)}


if __name__ == "__main__":
    if "--count" in sys.argv:
        print(", ".join(f"{k} {v}" for k, v in count().items()), "(each case run in onnxruntime and onnx.reference)")
