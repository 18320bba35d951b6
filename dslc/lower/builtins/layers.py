"""Layers with weights other than convolutions (dense, batch_norm, layer_norm, group_norm, embedding),
and the layers without weights that reshape, join or drop: flatten, reshape, concat, dropout."""

import numpy as np

from ...diagnostics import DslShapeError, source_text
from ...ir import patterns
from ...ir.formulations import choose
from ...ir.core import Value
from ...ir.ops import DTYPE_CODE
from .. import init as I
from ..calls import Ctx
from ..values import Symbol, is_shape_list
from .activations import _activate
from .common import _float_dtype, _float_tensor, _init, _layer_name, _record, _t, _weighted
from .tensors import _keep_mask


def dense(ctx: Ctx, x: "T", units: "count", activation=None, use_bias: "bool" = True,
          kernel_init: "word" = Symbol("glorot_uniform")):
    x = _float_tensor(ctx, x, "x")
    if x.rank < 2 or x.rank > 3:
        text = source_text(ctx.arg_spans.get("x")) or "x"
        hint = f"add flatten(): dense(flatten({text}), {units})" if x.rank > 3 else None
        raise ctx.error(f"dense expects rank 2, got {x.type}", "x", hint, DslShapeError)
    fan_in = x.shape[-1]
    if not isinstance(fan_in, int):
        raise ctx.error(f"dense needs a static last dim, got {x.type}", "x", cls=DslShapeError)
    path = _weighted(ctx)
    w = ctx.lw.weight(f"{path}.weight", (fan_in, units), _init(ctx, kernel_init, "kernel_init", fan_in, units), span=ctx.span, dtype=x.dtype)
    y = ctx.b.op("MatMul", [x, w])
    n = fan_in * units
    if use_bias:
        y = ctx.b.op("Add", [y, ctx.lw.weight(f"{path}.bias", (units,), I.zeros, span=ctx.span, dtype=x.dtype)])
        n += units
    return _record(ctx, path, _activate(ctx, y, activation), n)


def _constant_along(v: Value, rank: int, axes: list[int]) -> bool:
    """Whether v, broadcast to `rank` dims, has size 1 on every one of `axes`."""
    shape = (1,) * (rank - v.rank) + tuple(v.shape)
    return v.rank <= rank and all(shape[a] == 1 for a in axes)


def _channel_shift(b, x: Value, axes: list[int]) -> tuple[Value, Value | None]:
    """x as y + shift with `shift` constant along a training batch norm's reduced `axes` (a dense or
    convolution bias right before it, the beta of a batch norm before it), or (x, None). The batch
    statistics taken from y make shift's gradient an exact zero, as the mathematics has it
    (BN(y + shift) = BN(y)); taken from x, it is sum(g - mean(g)), a round-off (~1e-8) whose sign
    each runtime picks for itself and that Adam turns into steps of up to lr (issue 19). A bias inside
    a Conv or ConvTranspose node: the same node without it gives y (x's node is then dead code unless
    something else reads x)."""
    p = x.producer
    if p is None:
        return x, None
    if p.op == "Add":
        for y, shift in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            if (tuple(y.shape) == tuple(x.shape) and _constant_along(shift, x.rank, axes)
                    and not _constant_along(y, x.rank, axes)):
                return y, shift
    if p.op in ("Conv", "ConvTranspose") and len(p.inputs) == 3 and p.inputs[2] is not None:
        y = b.op(p.op, p.inputs[:2], p.attrs)
        return y, b.op("Reshape", [p.inputs[2], b.ints([x.shape[1]] + [1] * (x.rank - 2))])
    return x, None



def _gamma_beta(ctx: Ctx, path: str, n: int, dtype: str):
    """A norm's per-feature scale (ones) and shift (zeros), in this order."""
    gamma = ctx.lw.weight(f"{path}.gamma", (n,), I.ones, span=ctx.span, dtype=dtype)
    return gamma, ctx.lw.weight(f"{path}.beta", (n,), I.zeros, span=ctx.span, dtype=dtype)

def batch_norm(ctx: Ctx, x: "T", momentum: "float" = 0.99, eps: "float" = 1e-3):
    """Keras BatchNormalization on the channel axis 1: batch statistics while training (and the
    running statistics' update, returned by the step), running statistics at inference. (Not ONNX
    BatchNormalization in training mode: onnxruntime 1.31's kernel writes its running mean into the
    buffer of the running mean fed, a graph input or a constant shared by several batch norms.)"""
    x = _float_tensor(ctx, x, "x")
    if x.rank < 2 or not isinstance(x.shape[1], int):
        raise ctx.error(f"batch_norm needs a static channel axis 1, got {x.type}", "x", cls=DslShapeError)
    c = x.shape[1]
    path = _weighted(ctx)
    lw, b = ctx.lw, ctx.b
    gamma, beta = _gamma_beta(ctx, path, c, x.dtype)
    mean_w = lw.weight(f"{path}.moving_mean", (c,), I.zeros, trainable=False, span=ctx.span, dtype=x.dtype)
    var_w = lw.weight(f"{path}.moving_variance", (c,), I.ones, trainable=False, span=ctx.span, dtype=x.dtype)
    bshape = b.ints([1, c] + [1] * (x.rank - 2))
    axes = [0] + list(range(2, x.rank))
    if ctx.sc.training:
        y, shift = _channel_shift(b, x, axes)
        mean = b.op("ReduceMean", [y, b.ints(axes)], {"keepdims": 1})
        centered = b.op("Sub", [y, mean])
        var = b.op("ReduceMean", [b.op("Mul", [centered, centered]), b.ints(axes)], {"keepdims": 1})
        flat = b.ints([c])
        x_mean = mean if shift is None else b.op("Add", [mean, shift])  # the statistic of x itself
        for w, stat in ((mean_w, x_mean), (var_w, var)):
            # a second call of the model in the same step updates the first call's result (Keras, torch)
            kept = b.op("Mul", [lw.state_updates.get(w.name, w), b.const(momentum, x.dtype)])
            new = b.op("Add", [kept, b.op("Mul", [b.op("Reshape", [stat, flat]), b.const(1 - momentum, x.dtype)])])
            lw.state_updates[w.name] = new
    else:
        mean, var = b.op("Reshape", [mean_w, bshape]), b.op("Reshape", [var_w, bshape])
        centered = b.op("Sub", [x, mean])
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps, x.dtype)])])])
    y = b.op("Mul", [centered, b.op("Mul", [inv, b.op("Reshape", [gamma, bshape])])])
    y = b.op("Add", [y, b.op("Reshape", [beta, bshape])])
    return _record(ctx, path, y, 4 * c)


def _zero_row(init, row: int, width: int):
    """`init` with row `row` of a [rows, width] table zeroed, also when `I.generate` draws a big
    table in flat chunks (it asks for them in order, so the numbers drawn so far give the offset)."""
    drawn = [0]

    def zeroed(rng, shape):
        out = np.array(init(rng, shape), dtype=np.float64, copy=True)
        if len(shape) == 2:
            out[row] = 0.0
            return out
        flat = out.reshape(-1)
        lo, hi = row * width - drawn[0], (row + 1) * width - drawn[0]
        flat[max(lo, 0):max(min(hi, flat.size), 0)] = 0.0
        drawn[0] += flat.size
        return out
    return zeroed


def embedding(ctx: Ctx, x: "T", input_dim: "count", output_dim: "count", init: "word" = Symbol("uniform"),
              padding_idx: "int" = None, dtype: "word" = None):
    """Rows of a [input_dim, output_dim] table. With `padding_idx` (torch's; negative counts from
    the end) that row starts at zero and its lookups give zeros and pass no gradient back. The table
    is `dtype` (default: f64 among f64 values, else f32)."""
    x = _t(ctx, x, arg="x")
    dtype = _float_dtype(ctx, dtype)
    if x.dtype not in ("i64", "i32"):
        raise ctx.error(f"embedding needs integer indices, got {x.type}", "x", "use cast(x, i64)")
    if padding_idx is not None:
        if not -input_dim <= padding_idx < input_dim:
            raise ctx.error(f"embedding padding_idx {padding_idx} is out of range for input_dim={input_dim}",
                            "padding_idx", f"use an index in [{-input_dim}, {input_dim - 1}]")
        padding_idx %= input_dim
    path = _weighted(ctx)
    table_init = _init(ctx, init, "init", input_dim, output_dim)
    if padding_idx is not None:
        table_init = _zero_row(table_init, padding_idx, output_dim)
    w = ctx.lw.weight(f"{path}.weight", (input_dim, output_dim), table_init, span=ctx.span, dtype=dtype)
    b = ctx.b
    y = b.op("Gather", [w, x], {"axis": 0})
    if padding_idx is not None:  # lookups of the padding row: zero, and so no gradient for it
        keep = b.op("Not", [b.op("Equal", [x, b.const(padding_idx, x.dtype)])])
        keep = b.op("Unsqueeze", [b.op("Cast", [keep], {"to": DTYPE_CODE[w.dtype]}), b.ints([-1])])
        y = b.op("Mul", [y, keep])
    return _record(ctx, path, y, input_dim * output_dim)


def layer_norm(ctx: Ctx, x: "T", axis: "int" = -1, eps: "float" = 1e-3):
    """Keras LayerNormalization over one axis: (x - mean) / sqrt(var + eps) * gamma + beta, the
    biased variance, gamma and beta over the normalized axis (Keras' default eps; PyTorch's is 1e-5)."""
    x = _float_tensor(ctx, x, "x")
    if not -x.rank <= axis < x.rank:
        raise ctx.error(f"axis {axis} is out of range for {x.type}", "axis", cls=DslShapeError)
    d = x.shape[axis]
    if not isinstance(d, int):
        raise ctx.error(f"layer_norm needs a static size on the normalized axis {axis}, got {x.type}", "axis",
                        cls=DslShapeError)
    if eps <= 0:
        raise ctx.error(f"layer_norm eps must be positive, got {eps}", "eps")
    path = _weighted(ctx)
    b = ctx.b
    gamma, beta = _gamma_beta(ctx, path, d, x.dtype)
    if _layer_norm_form(x, axis) == "onnx":
        y = b.op("LayerNormalization", [x, gamma, beta], {"axis": -1, "epsilon": float(eps)}, n_out=3)[0]
        return _record(ctx, path, y, 2 * d)
    along = b.ints([d] + [1] * (x.rank - 1 - axis % x.rank))  # gamma, beta lined up with the axis
    y = b.op("Mul", [patterns.layer_norm_ops(b, x, [axis], eps)[0], b.op("Reshape", [gamma, along])])
    return _record(ctx, path, b.op("Add", [y, b.op("Reshape", [beta, along])]), 2 * d)


def _layer_norm_form(x: Value, axis: int) -> str:
    """`ops`: ReduceMean, Sub, Mul, Sqrt, Reciprocal (their rules give the backward); `onnx`: ONNX's
    LayerNormalization (opset 17), one kernel forward, whose rule (autodiff/rules/norms.py) builds the
    backward from the op's Mean and InvStdDev outputs (7 ops on the full tensor instead of ~17).
    Only over the last axis, in float32 or float64 (float64 graphs get the op written out again in
    float64 ops by passes/float64_ops.py: onnxruntime has no kernel, ONNX keeps the statistics in
    float32; the rule's backward stays). Max |error| against float64 of onnxruntime's float32
    kernel and of the float32 ops, x of mean 0, 10, 100, 1000 and spread 1: 2.7e-7 / 1.8e-7,
    4.8e-7 / 6.0e-7, 2.9e-6 / 3.9e-6, 2.6e-5 / 2.6e-5. The point exists only where both apply."""
    possible = axis % x.rank == x.rank - 1 and x.dtype in ("f32", "f64")
    return choose("layer_norm", "onnx") if possible else "ops"


def group_norm(ctx: Ctx, x: "T", groups: "count", eps: "float" = 1e-3):
    """torch.nn.GroupNorm on channels-first [N, C, ...]: the channels split into `groups` runs, each
    run normalized with its mean and biased variance over its channels and all spatial positions,
    then gamma and beta per channel (eps 1e-3 as layer_norm; torch's default is 1e-5)."""
    x = _float_tensor(ctx, x, "x")
    if x.rank < 2 or not isinstance(x.shape[1], int):
        raise ctx.error(f"group_norm needs channels-first input [N, C, ...] with a static C, got {x.type}", "x",
                        cls=DslShapeError)
    c = x.shape[1]
    if c % groups:
        raise ctx.error(f"group_norm with groups={groups} needs channels divisible by it, got {x.type}", "groups",
                        f"use a divisor of {c} channels", DslShapeError)
    if eps <= 0:
        raise ctx.error(f"group_norm eps must be positive, got {eps}", "eps")
    path = _weighted(ctx)
    b = ctx.b
    gamma, beta = _gamma_beta(ctx, path, c, x.dtype)
    grouped = b.op("Reshape", [x, b.ints([0, groups, -1])])  # [N, G, C/G * spatial]
    normed = patterns.layer_norm_ops(b, grouped, [2], eps)[0]
    if all(isinstance(d, int) for d in x.shape[1:]):
        back = b.ints([0] + list(x.shape[1:]))
    else:
        back = patterns.shape_of(b, x)
    normed = b.op("Reshape", [normed, back])
    along = b.ints([c] + [1] * (x.rank - 2))  # gamma, beta per channel
    y = b.op("Mul", [normed, b.op("Reshape", [gamma, along])])
    return _record(ctx, path, b.op("Add", [y, b.op("Reshape", [beta, along])]), 2 * c)


# ------------------------------------------------------------------ layers without weights
def dropout(ctx: Ctx, x: "T", rate: "float"):
    x = _float_tensor(ctx, x, "x")
    if not 0 <= rate < 1:
        raise ctx.error(f"dropout rate must be in [0, 1), got {rate}", "rate")
    if not ctx.sc.training or rate == 0:
        return _record(ctx, _layer_name(ctx), x)
    keep = _keep_mask(ctx, x, rate)
    b = ctx.b  # (the key moved the builder's span)
    # (Cast + Mul: onnxruntime's Where with scalar branches measured slower, bench/README.md)
    scaled = b.op("Mul", [b.op("Cast", [keep], {"to": DTYPE_CODE[x.dtype]}), b.const(1.0 / (1.0 - rate), x.dtype)])
    return _record(ctx, _layer_name(ctx), b.op("Mul", [x, scaled]))


def flatten(ctx: Ctx, x: "T"):
    x = _t(ctx, x, arg="x")
    if x.rank < 2:
        raise ctx.error(f"flatten needs a batch axis and at least one more, got {x.type}", "x", cls=DslShapeError)
    return _record(ctx, _layer_name(ctx), ctx.b.op("Flatten", [x], {"axis": 1}))


def reshape(ctx: Ctx, x: "T", shape: "any"):
    x = _t(ctx, x, arg="x")
    if isinstance(shape, list) and is_shape_list(shape):  # [N, 12]: dims as values
        target = ctx.lw.shape_vector(ctx.sc, shape, ctx.arg_spans.get("shape", ctx.span))
        return _record(ctx, _layer_name(ctx), ctx.b.op("Reshape", [x, target]))
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ctx.error("reshape() expects the shape as a list of integers (-1 for one inferred dim)", "shape")
    return _record(ctx, _layer_name(ctx), ctx.b.op("Reshape", [x, ctx.b.ints(shape)]))


def concat(ctx: Ctx, *xs, axis: "int" = -1):
    if len(xs) < 1:
        raise ctx.error("concat() needs at least one value")
    return ctx.b.op("Concat", list(xs), {"axis": axis})


LAYERS = {
    "dense": dense, "batch_norm": batch_norm, "embedding": embedding, "layer_norm": layer_norm, "group_norm": group_norm,
    "dropout": dropout, "flatten": flatten, "reshape": reshape, "concat": concat,
}
