"""Sequence layers (issue 21): `lstm`, `gru`, `multi_head_attention`, `positional_embedding`.

All take batch-first sequences [N, T, F] (Keras; torch with batch_first=True) and are written from
differentiable IR ops only, so their gradients (and second derivatives) come from the ordinary VJP
rules. The recurrences run as an ONNX Loop over time (the Loop that `repeat` builds: its reverse
Loop differentiates it), or unrolled into the graph for a static T up to UNROLL_MAX (measured faster).

Weight layouts (Keras'; the torch twins in tests/test_conformance_torch.py map them):
- lstm: `kernel` [F, 4U], `recurrent_kernel` [U, 4U], `bias` [4U], gates in Keras' and torch's
  order i, f, g (cell candidate), o. torch LSTM: weight_ih_l0 = kernel.T, weight_hh_l0 =
  recurrent_kernel.T, bias_ih_l0 = bias, bias_hh_l0 = 0.
- gru: Keras GRU with reset_after=True (its default since TF 2, and torch's formula: the reset gate
  multiplies h @ U_h + b_h after the product): `kernel` [F, 3U], `recurrent_kernel` [U, 3U], `bias`
  [3U] (input side), `recurrent_bias` [3U]; gates in Keras' order z (update), r (reset), h; torch
  orders them r, z, n: weight_ih_l0 = kernel[:, [U:2U, 0:U, 2U:3U]].T, the same for the rest.
  h' = z * h + (1 - z) * h~, as both.
- multi_head_attention: `query`, `key`, `value`, `output` dense weights [in, E] / [E, E] and biases
  [E] (E = q's features, heads * head_dim = E); torch nn.MultiheadAttention(E, heads, kdim, vdim,
  batch_first=True): in_proj_weight = [query.weight.T; key.weight.T; value.weight.T] (q_proj_weight
  etc. when kdim/vdim differ), in_proj_bias = [query.bias; key.bias; value.bias], out_proj.weight =
  output.weight.T.
- positional_embedding: `weight` [max_len, d]; the layer gives its first T rows, [T, d].
"""
import math

import numpy as np

from ..diagnostics import DslShapeError
from ..ir.core import Graph, TensorType, Value
from ..ir.formulations import choose
from . import init as I
from .builtins import BUILTINS, _float_tensor, _init, _record, _t, _weighted
from .calls import Ctx
from .values import Symbol

# Static sequences up to this length are unrolled (unroll= overrides): on 2 cores, LSTM/GRU forward +
# backward (N=32, F=32, U=64) unrolled vs Loop: T=8 1.7 vs 3.5 ms, T=32 6.3 vs 21 ms, T=128 43 vs 242
# ms, T=256 67 ms unrolled (compiling in 1.6 s); the Loop's backward sums a whole-sequence gradient
# per pass (its read of pass t's row), which grows as T^2.
UNROLL_MAX = 256


def _orthogonal(rows: int, cols: int):
    """Keras' Orthogonal initializer for a [rows, cols] kernel (also when init.generate asks for flat
    chunks of a big one: the matrix is made once and served in order)."""
    served = [0]
    full: list = []

    def draw(rng, shape):
        if not full:
            a = rng.standard_normal((max(rows, cols), min(rows, cols)))
            q, r = np.linalg.qr(a)
            q = q * np.sign(np.diag(r))
            full.append((q if rows >= cols else q.T).reshape(-1))
        n = math.prod(shape)
        out = full[0][served[0]:served[0] + n]
        served[0] += n
        return out.reshape(shape)
    return draw


def _forget_bias_one(units: int):
    """Keras' unit_forget_bias: zeros, with the forget gate's [U, 2U) at 1."""
    def draw(rng, shape):
        out = np.zeros(shape)
        out.reshape(-1)[units:2 * units] = 1.0
        return out
    return draw


def _sequence_input(ctx: Ctx, x, arg: str = "x") -> Value:
    x = _float_tensor(ctx, x, arg)
    if x.rank != 3 or not isinstance(x.shape[2], int):
        raise ctx.error(f"{ctx.name}() expects a sequence [N, T, features] with static features, got {x.type}",
                        arg, cls=DslShapeError)
    return x


def _gates(b, z: Value, n: int, units: int) -> tuple:
    """z's last axis as n gate blocks [.., units]: one Split, whose gradient is one Concat (a Slice
    per gate made each gate's gradient a Pad into zeros of all n blocks, and Adds to join them:
    the same numbers, 4 Pads and 3 Adds of [N, 4U] per LSTM step)."""
    return b.op("Split", [z, b.ints([units] * n)], {"axis": -1}, n_out=n)


def _gate(b, z: Value, k: int, units: int) -> Value:
    """Gate k's [.., units] block of z's last axis alone (where another gate goes unused: a Split
    output without a reader gets zeros in its gradient, and onnxruntime-training's Split gradient
    fails on it)."""
    return b.op("Slice", [z, b.ints([k * units]), b.ints([(k + 1) * units]), b.ints([-1])])


# A state of None is the zero initial state of an unrolled first step: its terms (h @ U, f * c) are
# exact zeros, so they are left out (less work; tract's declutter also fails on a MatMul of an Expand).
def _lstm_cell(b, xz: Value, states: list, recurrent: Value, units: int) -> list:
    h, c = states
    z = xz if h is None else b.op("Add", [xz, b.op("MatMul", [h, recurrent])])
    if c is None:  # the zero state's first step: no forget gate
        zi, zg, zo = (_gate(b, z, k, units) for k in (0, 2, 3))
    else:
        zi, zf, zg, zo = _gates(b, z, 4, units)
    i, g, o = b.op("Sigmoid", [zi]), b.op("Tanh", [zg]), b.op("Sigmoid", [zo])
    c2 = b.op("Mul", [i, g]) if c is None else b.op("Add", [b.op("Mul", [b.op("Sigmoid", [zf]), c]),
                                                            b.op("Mul", [i, g])])
    return [b.op("Mul", [o, b.op("Tanh", [c2])]), c2]


def _gru_cell(b, xz: Value, states: list, recurrent: Value, units: int, recurrent_bias: Value) -> list:
    (h,) = states
    hz = recurrent_bias if h is None else b.op("Add", [b.op("MatMul", [h, recurrent]), recurrent_bias])
    (xz_z, xz_r, xz_h), (hz_z, hz_r, hz_h) = _gates(b, xz, 3, units), _gates(b, hz, 3, units)
    z = b.op("Sigmoid", [b.op("Add", [xz_z, hz_z])])
    r = b.op("Sigmoid", [b.op("Add", [xz_r, hz_r])])
    cand = b.op("Tanh", [b.op("Add", [xz_h, b.op("Mul", [r, hz_h])])])
    # z h + (1 - z) h~ = h~ + z (h - h~); with h = 0, h~ - z h~
    if h is None:
        return [b.op("Sub", [cand, b.op("Mul", [z, cand])])]
    return [b.op("Add", [cand, b.op("Mul", [z, b.op("Sub", [h, cand])])])]


def _zeros_state(b, x: Value, units: int) -> Value:
    """zeros [N, units] for x [N, T, F]."""
    n = x.shape[0]
    shape = b.ints([n, units]) if isinstance(n, int) else b.op(
        "Concat", [b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([1])]), b.ints([units])], {"axis": 0})
    return b.op("ConstantOfShape", [shape], {"value": np.zeros(1, np.dtype({"f64": "float64", "f32": "float32",
                                                                           "f16": "float16"}.get(x.dtype, "float32")))})


def _recur(ctx: Ctx, x: Value, xz: Value, n_states: int, units: int, cell, return_sequences: bool,
           unroll) -> Value:
    """Run `cell` over the T steps of xz [N, T, G*U] (x's projection): states start at zero; the result
    is the last h [N, U] or every h [N, T, U]."""
    b = ctx.b
    t_dim = x.shape[1]
    if unroll and not isinstance(t_dim, int):
        raise ctx.error(f"{ctx.name}(unroll=true) needs a static sequence length, got {x.type}", "unroll",
                        cls=DslShapeError)
    if (unroll or unroll is None and isinstance(t_dim, int) and t_dim <= UNROLL_MAX) and t_dim > 0:
        states, hs = [None] * n_states, []
        # one Split (its gradient one Concat) rather than a Gather per step (each one's gradient a
        # scatter into a zero tensor of the whole sequence: quadratic in T)
        steps = b.op("Split", [xz, b.ints([1] * t_dim)], {"axis": 1}, n_out=t_dim) if t_dim > 1 else (xz,)
        steps = steps if isinstance(steps, tuple) else (steps,)
        for t in range(t_dim):
            step = b.op("Squeeze", [steps[t], b.ints([1])])
            states = cell(b, step, states)
            hs.append(states[0])
        if not return_sequences:
            return states[0]
        return b.op("Concat", [b.op("Unsqueeze", [h, b.ints([1])]) for h in hs], {"axis": 1})
    states = [_zeros_state(b, x, units) for _ in range(n_states)]
    by_time = b.op("Transpose", [xz], {"perm": [1, 0, 2]})  # [T, N, G*U]: pass t reads row t
    trip = (b.const(np.asarray(t_dim, np.int64), "i64") if isinstance(t_dim, int)
            else b.op("Gather", [b.op("Shape", [x]), b.const(np.asarray(1), "i64")], {"axis": 0}))
    body = Graph(f"{ctx.name}_{ctx.span.line if ctx.span else 0}")
    bb = b.child(body)
    bb.span = ctx.span
    t = bb.input(bb.fresh("t"), TensorType("i64", ()))
    cond = bb.input(bb.fresh("cond"), TensorType("bool", ()))
    inner = [bb.input(bb.fresh(f"state{k}"), s.type) for k, s in enumerate(states)]
    new = cell(bb, bb.op("Gather", [by_time, t], {"axis": 0}), inner)
    body.outputs = [bb.op("Identity", [cond])] + [bb.op("Identity", [s]) for s in new]
    if return_sequences:  # flat rows (onnx.reference stacks scan outputs with np.vstack)
        body.outputs.append(bb.op("Reshape", [new[0], bb.ints([-1])]))
    outs = b.op("Loop", [trip, b.const(np.asarray(True), "bool")] + states, {"body": body})
    outs = outs if isinstance(outs, tuple) else (outs,)
    if not return_sequences:
        return outs[0]
    rows = outs[n_states]  # [T, N * U]
    n = x.shape[0]
    shape = b.ints([0, n, units]) if isinstance(n, int) else b.op(
        "Concat", [b.ints([0]), b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([1])]), b.ints([units])],
        {"axis": 0})
    return b.op("Transpose", [b.op("Reshape", [rows, shape])], {"perm": [1, 0, 2]})


def _kernels(ctx: Ctx, x, units: int, gates: int, kernel_init):
    """The sequence x, the layer's weight path, its input kernel [F, gates*U] (kernel_init) and
    recurrent kernel [U, gates*U] (orthogonal), as Keras' LSTM and GRU make them."""
    x = _sequence_input(ctx, x)
    f = x.shape[2]
    path = _weighted(ctx)
    k = ctx.lw.weight(f"{path}.kernel", (f, gates * units), _init(ctx, kernel_init, "kernel_init", f, gates * units),
                      span=ctx.span, dtype=x.dtype)
    r = ctx.lw.weight(f"{path}.recurrent_kernel", (units, gates * units), _orthogonal(units, gates * units),
                      span=ctx.span, dtype=x.dtype)
    return x, path, k, r


def lstm(ctx: Ctx, x: "T", units: "count", return_sequences: "bool" = False,
         kernel_init: "word" = Symbol("glorot_uniform"), unroll: "bool" = None):
    """Keras LSTM (tanh, sigmoid gates, unit_forget_bias, zero initial state) over x [N, T, F]: the
    last h [N, units], or every h [N, T, units] with return_sequences=true. unroll: true unrolls the
    steps into the graph, false runs them in a Loop; by default a static T up to UNROLL_MAX unrolls."""
    x, path, k, r = _kernels(ctx, x, units, 4, kernel_init)
    f, lw = x.shape[2], ctx.lw
    bias = lw.weight(f"{path}.bias", (4 * units,), _forget_bias_one(units), span=ctx.span, dtype=x.dtype)
    b = ctx.b
    xz = b.op("Add", [b.op("MatMul", [x, k]), bias])  # every step's input side at once: [N, T, 4U]
    y = _recur(ctx, x, xz, 2, units, lambda bb, step, s: _lstm_cell(bb, step, s, r, units), return_sequences,
               unroll)
    return _record(ctx, path, y, 4 * units * (f + units + 1))


def gru(ctx: Ctx, x: "T", units: "count", return_sequences: "bool" = False,
        kernel_init: "word" = Symbol("glorot_uniform"), unroll: "bool" = None):
    """Keras GRU (reset_after=True: torch's formula; tanh, sigmoid gates, zero initial state) over
    x [N, T, F]: the last h [N, units], or every h [N, T, units] with return_sequences=true."""
    x, path, k, r = _kernels(ctx, x, units, 3, kernel_init)
    f, lw = x.shape[2], ctx.lw
    bias = lw.weight(f"{path}.bias", (3 * units,), I.zeros, span=ctx.span, dtype=x.dtype)
    rbias = lw.weight(f"{path}.recurrent_bias", (3 * units,), I.zeros, span=ctx.span, dtype=x.dtype)
    b = ctx.b
    xz = b.op("Add", [b.op("MatMul", [x, k]), bias])
    y = _recur(ctx, x, xz, 1, units, lambda bb, step, s: _gru_cell(bb, step, s, r, units, rbias), return_sequences,
               unroll)
    return _record(ctx, path, y, 3 * units * (f + units + 2))


def _projection(ctx: Ctx, path: str, name: str, x: Value, width: int, use_bias: bool,
                zero_bias_gradient: bool = False) -> Value:
    """x @ weight + bias (with zero_bias_gradient, the bias through StopGradient: its gradient is 0)."""
    lw, b = ctx.lw, ctx.b
    fan_in = x.shape[-1]
    w = lw.weight(f"{path}.{name}.weight", (fan_in, width), I.kernel("glorot_uniform", fan_in, width),
                  span=ctx.span, dtype=x.dtype)
    y = b.op("MatMul", [x, w])
    if use_bias:
        bias = lw.weight(f"{path}.{name}.bias", (width,), I.zeros, span=ctx.span, dtype=x.dtype)
        y = b.op("Add", [y, b.op("StopGradient", [bias]) if zero_bias_gradient else bias])
    return y


def multi_head_attention(ctx: Ctx, q: "T", k: "T", v: "T", heads: "count", mask: "T?" = None,
                         causal: "bool" = False, use_bias: "bool" = True):
    """torch nn.MultiheadAttention (batch_first) / Keras MultiHeadAttention with key_dim = E / heads:
    q [N, Tq, E], k [N, Tk, Ek], v [N, Tk, Ev] projected to E, split into `heads` heads of E / heads,
    softmax(Q K^T / sqrt(E / heads)) V per head, heads joined and projected by `output`. `mask` (bool,
    [Tq, Tk] or [N, Tq, Tk]): true where a query may attend a key, as Keras' attention_mask (torch's
    attn_mask is its negation); causal=true: query i attends keys j <= i. A query that may attend no
    key gives NaN, as torch. No dropout on the attention weights."""
    q = _sequence_input(ctx, q, "q")
    k = _sequence_input(ctx, k, "k")
    v = _sequence_input(ctx, v, "v")
    e = q.shape[2]
    if e % heads:
        raise ctx.error(f"multi_head_attention needs q's features {e} divisible by heads={heads}", "heads",
                        cls=DslShapeError)
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ctx.error(f"multi_head_attention needs q, k, v of one dtype, got {q.type}, {k.type}, {v.type}", "k")
    d = e // heads
    path = _weighted(ctx)
    b = ctx.b

    def split(x: Value, perm: list) -> Value:  # [N, T, E] -> [N, H, T, D] (or [N, H, D, T])
        return b.op("Transpose", [b.op("Reshape", [x, b.ints([0, 0, heads, d])])], {"perm": perm})

    # the scale on the projected queries, as torch: a scale right at a MatMul is what onnxruntime fuses
    # into FusedMatMul's float32 alpha (1 / sqrt(d) rounded to float32 in a float64 graph)
    scaled = b.op("Mul", [_projection(ctx, path, "query", q, e, use_bias), b.const(1 / math.sqrt(d), q.dtype)])
    b = ctx.b
    qh = split(scaled, [0, 2, 1, 3])
    # The key bias adds q . bias to every score of a query: the same along the keys, which the softmax
    # removes, so its gradient is exactly zero. Differentiated, it would be each runtime's round-off
    # (~1e-9, which Adam's first steps amplify to ~lr); through StopGradient it is an exact zero.
    kh = split(_projection(ctx, path, "key", k, e, use_bias, zero_bias_gradient=True), [0, 2, 3, 1])
    vh = split(_projection(ctx, path, "value", v, e, use_bias), [0, 2, 1, 3])
    b = ctx.b
    scores = b.op("MatMul", [qh, kh])  # [N, H, Tq, Tk]
    allowed = None
    if mask is not None:
        m = _t(ctx, mask, arg="mask")
        if m.dtype != "bool" or m.rank not in (2, 3):
            raise ctx.error(f"multi_head_attention mask must be bool [Tq, Tk] or [N, Tq, Tk], got {m.type}", "mask",
                            cls=DslShapeError)
        allowed = m if m.rank == 2 else b.op("Unsqueeze", [m, b.ints([1])])
    if causal:
        tq, tk = _length(b, q), _length(b, k)
        rows = b.op("Unsqueeze", [b.op("Range", [b.const(np.asarray(0), "i64"), tq, b.const(np.asarray(1), "i64")]),
                                  b.ints([1])])
        cols = b.op("Range", [b.const(np.asarray(0), "i64"), tk, b.const(np.asarray(1), "i64")])
        lower = b.op("LessOrEqual", [cols, rows])  # [Tq, Tk]: key j <= query i
        allowed = lower if allowed is None else b.op("And", [allowed, lower])
    if allowed is not None:
        scores = _masked_scores(b, scores, allowed)
    attn = b.op("Softmax", [scores], {"axis": -1})
    out = b.op("MatMul", [attn, vh])  # [N, H, Tq, D]
    out = b.op("Reshape", [b.op("Transpose", [out], {"perm": [0, 2, 1, 3]}), b.ints([0, 0, e])])
    y = _projection(ctx, path, "output", out, e, use_bias)
    n = (q.shape[2] + k.shape[2] + v.shape[2] + e) * e + (4 * e if use_bias else 0)
    return _record(ctx, path, y, n)


def _masked_scores(b, scores: Value, allowed: Value) -> Value:
    """-inf where a key may not be attended (patterns.attention_mask): `where` selects in the scores
    [N, H, Tq, Tk] (and its gradient selects again); `additive` adds a 0 / -inf bias made at the
    mask's own size ([Tq, Tk]: a constant for a static causal mask), whose gradient is the identity
    (the softmax's backward is already an exact 0 where its output is). Same numbers, except a
    score of +inf at a masked place (NaN instead of -inf)."""
    minus_inf = b.const(np.asarray(-np.inf), scores.dtype)
    if choose("attention_mask", "additive") == "where":
        return b.op("Where", [allowed, scores, minus_inf])
    return b.op("Add", [scores, b.op("Where", [allowed, b.const(np.asarray(0.0), scores.dtype), minus_inf])])


def _length(b, x: Value) -> Value:
    """x's axis-1 size as an i64 scalar (a constant when static)."""
    if isinstance(x.shape[1], int):
        return b.const(np.asarray(x.shape[1], np.int64), "i64")
    return b.op("Gather", [b.op("Shape", [x]), b.const(np.asarray(1), "i64")], {"axis": 0})


def positional_embedding(ctx: Ctx, x: "T", max_len: "count" = None, init: "word" = Symbol("glorot_uniform")):
    """A learned position embedding (Keras-hub PositionEmbedding; torch: an nn.Embedding of positions):
    rows 0..T-1 of a [max_len, d] table for x [N, T, d], as [T, d], to add to x. max_len defaults to
    a static T."""
    x = _sequence_input(ctx, x)
    t_dim, d = x.shape[1], x.shape[2]
    if max_len is None:
        if not isinstance(t_dim, int):
            raise ctx.error(f"positional_embedding of a sequence of run-time length {x.type} needs max_len=",
                            "x", "e.g. positional_embedding(x, max_len=128)", DslShapeError)
        max_len = t_dim
    if isinstance(t_dim, int) and t_dim > max_len:
        raise ctx.error(f"positional_embedding: the sequence has {t_dim} positions, max_len is {max_len}", "max_len",
                        cls=DslShapeError)
    path = _weighted(ctx)
    w = ctx.lw.weight(f"{path}.weight", (max_len, d), _init(ctx, init, "init", max_len, d), span=ctx.span,
                      dtype=x.dtype)
    b = ctx.b
    if t_dim == max_len:
        y = b.op("Identity", [w])
    else:
        y = b.op("Slice", [w, b.ints([0]), b.op("Unsqueeze", [_length(b, x), b.ints([0])]), b.ints([0])])
    return _record(ctx, path, y, max_len * d)


SEQUENCE = {"lstm": lstm, "gru": gru, "multi_head_attention": multi_head_attention,
            "positional_embedding": positional_embedding}
BUILTINS.update(SEQUENCE)
