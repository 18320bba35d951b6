"""ONNX node -> IR ops: one entry per imported op type.

The IR's ops are ONNX's own at opset 21, so most nodes pass through as they are (PASS). The rest
are rewritten: an attribute of an older opset that opset 21 takes as an input (Split sizes,
Reduce*/Squeeze/Unsqueeze axes), an option the IR's rule does not take (Conv's auto_pad, 1-D
convolutions, MaxPool's ceil_mode), or an op decomposed into IR ops that already have shape and
VJP rules (DECOMPOSED below), so that every imported graph differentiates with the existing
table, to any order.
"""
from __future__ import annotations

import math

import numpy as np

from ..diagnostics import DslError
from ..ir import patterns
from ..ir.core import Value, dim_mul
from ..ir.ops import ONNX_DTYPE_CODES

# Ops that reach the IR unchanged (attributes included).
PASS = set("""Add Sub Mul Div Pow Equal Less Greater LessOrEqual GreaterOrEqual And Or Not Where Exp Log Sqrt
Relu Sigmoid Tanh Softplus Erf Reciprocal Floor Ceil Neg Abs Sign Sin Cos Tan Atan Round Identity Transpose
Concat Gather GatherElements GatherND Slice Expand LogSoftmax Flatten Clip LeakyRelu Elu Gelu
GlobalAveragePool ConstantOfShape Range ArgMax ArgMin ScatterND ScatterElements Size OneHot""".split())

# Ops rewritten into other IR ops, each a handful of primitives with VJP rules of their own.
DECOMPOSED = {
    "Gemm": "Transpose (transA/transB), MatMul, Mul (alpha, beta), Add",
    "LayerNormalization": "ReduceMean, Sub, Mul, Add, Sqrt, Reciprocal (and the Mean/InvStdDev outputs)",
    "BatchNormalization": "inference form: Sub, Div, Sqrt, Mul, Add on the running statistics",
    "Trilu": "Where on a constant mask (static dims) or a Range comparison (symbolic dims)",
    "IsNaN": "Not(Equal(x, x))",
    "Resize": "nearest with integer scales: Unsqueeze, Expand, Reshape; linear: the IR's Resize",
    "Dropout": "Identity (imported graphs run in inference mode)",
    "Sum": "Add chain", "Mean": "Add chain, Div", "Max": "Max chain", "Min": "Min chain",
    "GlobalMaxPool": "ReduceMax over the spatial axes",
    "InstanceNormalization": "ReduceMean, Sub, Mul, Add, Sqrt, Reciprocal over the spatial axes",
    "GroupNormalization": "Reshape to groups, then as InstanceNormalization (opset 18: scale per group)",
    "ReduceL1": "Abs, ReduceSum", "ReduceL2": "Mul, ReduceSum, Sqrt", "ReduceSumSquare": "Mul, ReduceSum",
    "ReduceLogSum": "ReduceSum, Log", "ReduceLogSumExp": "ReduceMax, Sub, Exp, ReduceSum, Log, Add",
    "Tile": "Unsqueeze, Expand, Reshape",
    "HardSigmoid": "Mul, Add, Clip", "HardSwish": "Mul, Add, Clip, Mul", "PRelu": "Less, Mul, Where",
    "Mish": "Softplus, Tanh, Mul", "Softsign": "Abs, Add, Div", "Selu": "Elu, Mul",
    "ConvTranspose": "ConvTranspose (2-D, explicit pads)",
    "Shape": "Shape, Slice (start/end)",
    "MatMul": "MatMul (1-D operands: Unsqueeze / Squeeze around it)",
    "Conv": "Conv (1-D as 2-D: Unsqueeze / Squeeze; auto_pad as pads)",
    "Einsum": "Transpose, Unsqueeze, Mul, ReduceSum (no ellipsis, no repeated letter in a term)",
    "LSTM": "unrolled over a static sequence: MatMul, Add, Slice, Sigmoid, Tanh, Mul, Concat",
    "GRU": "unrolled as LSTM (either linear_before_reset)",
}

HANDLERS: dict = {}


def handles(names: str):
    def register(fn):
        for n in names.split():
            HANDLERS[n] = fn
        return fn
    return register


def supported() -> list[str]:
    return sorted(PASS | set(HANDLERS) | {"Constant"})


class Ctx:
    """One node being lowered: the builder, its attributes (decoded), the file's opset."""

    def __init__(self, b, node, attrs: dict, opset: int):
        self.b, self.node, self.attrs, self.opset = b, node, attrs, opset

    def op(self, name: str, inputs, **attrs):
        return self.b.op(name, list(inputs), attrs)

    def ints(self, xs) -> Value:
        return self.b.ints(list(xs))

    def scalar(self, value, like: Value) -> Value:
        return self.b.const(np.asarray(value), like.dtype)

    def fail(self, message: str, hint: str | None = None) -> DslError:
        return DslError(message, self.b.span, hint)

    def const_ints(self, v: Value | None, what: str) -> list[int] | None:
        if v is None:
            return None
        if v.const is None:
            raise self.fail(f"its {what} must be known when compiling (it is computed at run time here)")
        return [int(x) for x in np.asarray(v.const).reshape(-1)]


def lower(cx: Ctx, ins: list) -> list:
    op = cx.node.op_type
    if op in HANDLERS:
        return HANDLERS[op](cx, ins)
    out = cx.b.op(op, ins, cx.attrs)
    return list(out) if isinstance(out, tuple) else [out]


# ------------------------------------------------------------------ opset differences
@handles("ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd")
def _reduce(cx, ins):
    attrs = dict(cx.attrs)
    axes = attrs.pop("axes", None)
    noop = attrs.pop("noop_with_empty_axes", 0)
    x = ins[0]
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = cx.const_ints(ins[1], "axes")
    if not axes:
        if noop:
            return [cx.op("Identity", [x])]
        axes = list(range(x.rank))
    return [cx.b.op(cx.node.op_type, [x, cx.ints(axes)], attrs)]


@handles("Squeeze Unsqueeze")
def _squeeze(cx, ins):
    x = ins[0]
    axes = cx.attrs.get("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = cx.const_ints(ins[1], "axes")
    if axes is None:  # Squeeze without axes: every axis of size 1 (known now)
        if any(not isinstance(d, int) for d in x.shape):
            raise cx.fail(f"Squeeze without axes needs static dims, got {x.type}")
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [cx.op(cx.node.op_type, [x, cx.ints(axes)])]


@handles("Split")
def _split(cx, ins):
    x = ins[0]
    axis = cx.attrs.get("axis", 0) % max(x.rank, 1)
    n = len(cx.node.output)
    sizes = cx.attrs.get("split")
    if sizes is None and len(ins) > 1 and ins[1] is not None:
        sizes = cx.const_ints(ins[1], "split sizes")
    if sizes is None:
        d = x.shape[axis]
        if not isinstance(d, int):
            raise cx.fail(f"an even Split of the symbolic dim {d} needs its sizes", "export with static shapes")
        chunk = -(-d // n)
        sizes = [chunk] * (n - 1) + [d - chunk * (n - 1)]
    outs = cx.op("Split", [x, cx.ints(sizes)], axis=axis)
    return list(outs) if isinstance(outs, tuple) else [outs]


@handles("Softmax")
def _softmax(cx, ins):
    x = ins[0]
    axis = cx.attrs.get("axis", -1 if cx.opset >= 13 else 1)
    if cx.opset < 13 and axis % x.rank != x.rank - 1:  # (before 13: over the flattened trailing axes)
        raise cx.fail(f"Softmax of opset {cx.opset} on axis {axis} of {x.type} is not supported",
                      "export with opset 13 or newer")
    return [cx.op("Softmax", [x], axis=axis)]


@handles("Cast")
def _cast(cx, ins):
    to = cx.attrs["to"]
    if to not in ONNX_DTYPE_CODES:
        raise cx.fail(f"Cast to element type {to} is not supported",
                      f"dslc's types: {', '.join(ONNX_DTYPE_CODES.values())}")
    return [cx.op("Cast", ins[:1], to=to)]


@handles("Reshape")
def _reshape(cx, ins):
    if cx.attrs.get("allowzero", 0) and ins[1].const is not None and 0 in np.asarray(ins[1].const):
        raise cx.fail("Reshape with allowzero=1 and a 0 in the shape (an empty axis) is not supported")
    return [cx.op("Reshape", ins[:2])]


@handles("Shape")
def _shape(cx, ins):
    s = cx.op("Shape", ins[:1])
    start, end = cx.attrs.get("start", 0), cx.attrs.get("end")
    if start == 0 and end is None:
        return [s]
    return [cx.op("Slice", [s, cx.ints([start]), cx.ints([end if end is not None else 2**62])])]


@handles("Dropout")
def _dropout(cx, ins):
    if len(cx.node.output) > 1 and cx.node.output[1]:
        raise cx.fail("Dropout's mask output is not supported (imported graphs run in inference mode)")
    return [cx.op("Identity", ins[:1])]


@handles("Pad")
def _pad(cx, ins):
    mode = cx.attrs.get("mode", "constant")
    value = ins[2] if len(ins) > 2 else None
    if mode != "constant" or (value is not None and (value.const is None or np.any(value.const != 0))) \
            or (len(ins) > 3 and ins[3] is not None):
        raise cx.fail(f"Pad is supported with zeros on every axis only (mode {mode})")
    return [cx.op("Pad", ins[:2])]


# ------------------------------------------------------------------ variadic
@handles("Sum Mean Max Min")
def _variadic(cx, ins):
    op = {"Sum": "Add", "Mean": "Add"}.get(cx.node.op_type, cx.node.op_type)
    out = ins[0]
    for v in ins[1:]:
        out = cx.op(op, [out, v])
    if cx.node.op_type == "Mean" and len(ins) > 1:
        out = cx.op("Div", [out, cx.scalar(len(ins), out)])
    return [out if len(ins) > 1 else cx.op("Identity", [out])]


# ------------------------------------------------------------------ linear algebra
@handles("MatMul")
def _matmul(cx, ins):
    a, w = ins
    if a.rank >= 2 and w.rank >= 2:
        return [cx.op("MatMul", [a, w])]
    a2 = cx.op("Unsqueeze", [a, cx.ints([0])]) if a.rank == 1 else a
    w2 = cx.op("Unsqueeze", [w, cx.ints([1])]) if w.rank == 1 else w
    y = cx.op("MatMul", [a2, w2])
    drop = ([y.rank - 2] if a.rank == 1 else []) + ([y.rank - 1] if w.rank == 1 else [])
    return [cx.op("Squeeze", [y, cx.ints(drop)])]


@handles("Gemm")
def _gemm(cx, ins):
    a, w = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if cx.attrs.get("transA", 0):
        a = cx.op("Transpose", [a], perm=[1, 0])
    if cx.attrs.get("transB", 0):
        w = cx.op("Transpose", [w], perm=[1, 0])
    y = cx.op("MatMul", [a, w])
    alpha, beta = cx.attrs.get("alpha", 1.0), cx.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = cx.op("Mul", [y, cx.scalar(alpha, y)])
    if c is not None and beta != 0.0:
        y = cx.op("Add", [y, c if beta == 1.0 else cx.op("Mul", [c, cx.scalar(beta, c)])])
    return [y]


# ------------------------------------------------------------------ normalization
@handles("LayerNormalization")
def _layer_norm(cx, ins):
    x = ins[0]
    axes = list(range(cx.attrs.get("axis", -1) % x.rank, x.rank))
    bias = ins[2] if len(ins) > 2 else None
    outs = patterns.layer_norm_ops(cx.b, x, axes, cx.attrs.get("epsilon", 1e-5), ins[1], bias)
    return list(outs[:len(cx.node.output)])


@handles("BatchNormalization")
def _batch_norm(cx, ins):
    x, scale, bias, mean, var = ins[:5]
    if cx.attrs.get("training_mode", 0) or sum(1 for o in cx.node.output if o) > 1:
        raise cx.fail("BatchNormalization in training mode is not supported",
                      "export the model in eval mode (model.eval()): imported graphs run in inference mode")
    eps = cx.attrs.get("epsilon", 1e-5)
    axes = cx.ints(range(1, x.rank - 1))

    def per_channel(v):
        return cx.op("Unsqueeze", [v, axes]) if x.rank > 2 else v

    std = cx.op("Sqrt", [cx.op("Add", [var, cx.scalar(eps, var)])])
    factor = per_channel(cx.op("Div", [scale, std]))
    y = cx.op("Mul", [cx.op("Sub", [x, per_channel(mean)]), factor])
    return [cx.op("Add", [y, per_channel(bias)])]


# ------------------------------------------------------------------ convolution and pooling
def _explicit_pads(cx, x: Value, kernel, strides, dilations) -> list[int]:
    """auto_pad as the pads it stands for (SAME_* needs the spatial dims)."""
    mode = cx.attrs.get("auto_pad", "NOTSET")
    n = len(kernel)
    if mode in ("NOTSET", ""):
        return list(cx.attrs.get("pads", [0] * 2 * n))
    if mode == "VALID":
        return [0] * 2 * n
    begin, end = [], []
    for i in range(n):
        size = x.shape[2 + i]
        if not isinstance(size, int):
            raise cx.fail(f"auto_pad={mode} on the symbolic dim {size} is not supported", "export with static shapes")
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


@handles("Conv")
def _conv(cx, ins):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    n = x.rank - 2
    kernel = list(w.shape[2:])
    strides = list(cx.attrs.get("strides", [1] * n))
    dilations = list(cx.attrs.get("dilations", [1] * n))
    pads = _explicit_pads(cx, x, kernel, strides, dilations)
    group = cx.attrs.get("group", 1)
    if n == 1:  # as a 2-D convolution of height 1
        x2 = cx.op("Unsqueeze", [x, cx.ints([2])])
        w2 = cx.op("Unsqueeze", [w, cx.ints([2])])
        y = cx.op("Conv", [x2, w2] + ([bias] if bias is not None else []), strides=[1] + strides,
                  dilations=[1] + dilations, pads=[0, pads[0], 0, pads[1]], group=group)
        return [cx.op("Squeeze", [y, cx.ints([2])])]
    return [cx.op("Conv", [x, w] + ([bias] if bias is not None else []), strides=strides, dilations=dilations,
                  pads=pads, group=group)]


@handles("MaxPool AveragePool")
def _pool(cx, ins):
    x = ins[0]
    op = cx.node.op_type
    if op == "MaxPool" and len(cx.node.output) > 1 and cx.node.output[1]:
        raise cx.fail("MaxPool's Indices output is not supported")
    kernel = list(cx.attrs["kernel_shape"])
    n = len(kernel)
    strides = list(cx.attrs.get("strides", [1] * n))
    dilations = list(cx.attrs.get("dilations", [1] * n))
    pads = _explicit_pads(cx, x, kernel, strides, dilations)
    if cx.attrs.get("ceil_mode", 0):
        for i in range(n):
            size = x.shape[2 + i]
            if not isinstance(size, int):
                raise cx.fail("ceil_mode=1 on a symbolic dim is not supported")
            span = size + pads[i] + pads[i + n] - (kernel[i] - 1) * dilations[i] - 1
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= size + pads[i]:  # the last window must start inside
                out -= 1
            extra = (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - (size + pads[i] + pads[i + n])
            if extra > 0:
                if op == "AveragePool":
                    raise cx.fail("AveragePool with ceil_mode=1 that adds a partial window is not supported")
                pads[i + n] += extra  # MaxPool's padding never wins a window: the same windows
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    if op == "MaxPool" and any(d != 1 for d in dilations):
        attrs["dilations"] = dilations
    if op == "AveragePool":
        if any(d != 1 for d in dilations):
            raise cx.fail("AveragePool with dilations is not supported")
        attrs["count_include_pad"] = cx.attrs.get("count_include_pad", 0)
    return [cx.b.op(op, [x], attrs)]


@handles("GlobalMaxPool")
def _global_max_pool(cx, ins):
    x = ins[0]
    return [cx.op("ReduceMax", [x, cx.ints(range(2, x.rank))], keepdims=1)]


@handles("ConvTranspose")
def _conv_transpose(cx, ins):
    x = ins[0]
    if x.rank != 4 or "output_shape" in cx.attrs or cx.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise cx.fail("ConvTranspose is supported on [N, C, H, W] with explicit pads (no output_shape, no auto_pad)")
    attrs = {k: cx.attrs[k] for k in ("strides", "pads", "dilations", "group", "output_padding") if k in cx.attrs}
    return [cx.b.op("ConvTranspose", ins[:3] if len(ins) > 2 and ins[2] is not None else ins[:2], attrs)]


def _per_channel(cx, v, rank: int):
    return cx.op("Unsqueeze", [v, cx.ints(range(1, rank - 1))]) if rank > 2 else v


@handles("InstanceNormalization")
def _instance_norm(cx, ins):
    x, scale, bias = ins[:3]
    return [patterns.layer_norm_ops(cx.b, x, list(range(2, x.rank)), cx.attrs.get("epsilon", 1e-5),
                                    _per_channel(cx, scale, x.rank), _per_channel(cx, bias, x.rank))[0]]


@handles("GroupNormalization")
def _group_norm(cx, ins):
    """Opset 21: scale and bias per channel; opset 18: per group."""
    x, scale, bias = ins[:3]
    groups = cx.attrs["num_groups"]
    c = x.shape[1]
    if not isinstance(c, int) or c % groups:
        raise cx.fail(f"GroupNormalization of {groups} groups needs a static channel count divisible by it, "
                      f"got {x.type}")
    grouped = cx.op("Reshape", [x, cx.ints([0, groups, -1])])
    y = patterns.layer_norm_ops(cx.b, grouped, [2], cx.attrs.get("epsilon", 1e-5))[0]
    if cx.opset < 21:  # per group: [G] -> each group's channels
        def per_group(v):
            spread = cx.op("Expand", [cx.op("Unsqueeze", [v, cx.ints([1])]), cx.ints([groups, c // groups])])
            return cx.op("Reshape", [spread, cx.ints([c])])
        scale, bias = per_group(scale), per_group(bias)
    shape = cx.op("Shape", [x])
    y = cx.op("Reshape", [y, shape])
    return [cx.op("Add", [cx.op("Mul", [y, _per_channel(cx, scale, x.rank)]), _per_channel(cx, bias, x.rank)])]


@handles("ReduceL1 ReduceL2 ReduceSumSquare ReduceLogSumExp ReduceLogSum")
def _reduce_composite(cx, ins):
    x = ins[0]
    op = cx.node.op_type
    inner = {"ReduceL1": lambda: cx.op("Abs", [x]), "ReduceL2": lambda: cx.op("Mul", [x, x]),
             "ReduceSumSquare": lambda: cx.op("Mul", [x, x]), "ReduceLogSum": lambda: x}
    if op == "ReduceLogSumExp":  # max-shifted: log(sum(exp(x - m))) + m
        m = _reduce_with(cx, "ReduceMax", x, ins, keep=True)
        shifted = cx.op("Exp", [cx.op("Sub", [x, m])])
        total = _reduce_with(cx, "ReduceSum", shifted, ins)
        m_out = m if cx.attrs.get("keepdims", 1) else _reduce_with(cx, "ReduceMax", x, ins)
        return [cx.op("Add", [cx.op("Log", [total]), m_out])]
    total = _reduce_with(cx, "ReduceSum", inner[op](), ins)
    if op == "ReduceL2":
        total = cx.op("Sqrt", [total])
    elif op == "ReduceLogSum":
        total = cx.op("Log", [total])
    return [total]


def _reduce_with(cx, op: str, x, ins, keep: bool = False):
    axes = cx.attrs.get("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = cx.const_ints(ins[1], "axes")
    if not axes:
        if cx.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.rank))
    return cx.op(op, [x, cx.ints(axes)], keepdims=1 if keep else cx.attrs.get("keepdims", 1))


@handles("Tile")
def _tile(cx, ins):
    """[d0, d1] tiled [r0, r1]: as [1, d0, 1, d1] expanded to [r0, d0, r1, d1], then merged."""
    x = ins[0]
    reps = cx.const_ints(ins[1], "repeats")
    if len(reps) != x.rank:
        raise cx.fail(f"Tile needs one repeat per axis of {x.type}, got {reps}")
    if all(r == 1 for r in reps):
        return [cx.op("Identity", [x])]
    y = cx.op("Unsqueeze", [x, cx.ints([2 * i for i in range(x.rank)])])
    y = cx.op("Expand", [y, cx.ints([v for r in reps for v in (r, 1)])])
    return [cx.op("Reshape", [y, _dims_vector(cx, x, [dim_mul(d, r) for d, r in zip(x.shape, reps)], reps)])]


def _dims_vector(cx, x: Value, dims: list, factors: list) -> Value:
    """A 1-D shape holding `dims`: static ones as constants, symbolic ones as x's run-time dim times
    its factor (so the shape rules see the symbols)."""
    parts, shape_v = [], None
    for i, d in enumerate(dims):
        if isinstance(d, int):
            parts.append(cx.ints([d]))
            continue
        shape_v = shape_v if shape_v is not None else cx.op("Shape", [x])
        piece = cx.op("Slice", [shape_v, cx.ints([i]), cx.ints([i + 1])])
        parts.append(cx.op("Mul", [piece, cx.ints([factors[i]])]) if factors[i] != 1 else piece)
    return cx.op("Concat", parts, axis=0) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------ activations
@handles("HardSigmoid HardSwish")
def _hard(cx, ins):
    x = ins[0]
    alpha, beta = (cx.attrs.get("alpha", 0.2), cx.attrs.get("beta", 0.5)) if cx.node.op_type == "HardSigmoid" \
        else (1 / 6, 0.5)
    y = cx.op("Clip", [cx.op("Add", [cx.op("Mul", [x, cx.scalar(alpha, x)]), cx.scalar(beta, x)]),
                       cx.scalar(0, x), cx.scalar(1, x)])
    return [y if cx.node.op_type == "HardSigmoid" else cx.op("Mul", [x, y])]


@handles("PRelu")
def _prelu(cx, ins):
    x, slope = ins
    return [cx.op("Where", [cx.op("Less", [x, cx.scalar(0, x)]), cx.op("Mul", [x, slope]), x])]


@handles("Mish")
def _mish(cx, ins):
    return [cx.op("Mul", [ins[0], cx.op("Tanh", [cx.op("Softplus", [ins[0]])])])]


@handles("Softsign")
def _softsign(cx, ins):
    x = ins[0]
    return [cx.op("Div", [x, cx.op("Add", [cx.scalar(1, x), cx.op("Abs", [x])])])]


@handles("Selu")
def _selu(cx, ins):
    x = ins[0]
    alpha, gamma = cx.attrs.get("alpha", 1.67326319217681884765625), cx.attrs.get("gamma", 1.05070102214813232421875)
    return [cx.op("Mul", [cx.op("Elu", [x], alpha=alpha), cx.scalar(gamma, x)])]


# ------------------------------------------------------------------ masks and tests
@handles("Trilu")
def _trilu(cx, ins):
    x = ins[0]
    k = (cx.const_ints(ins[1], "k") or [0])[0] if len(ins) > 1 and ins[1] is not None else 0
    upper = cx.attrs.get("upper", 1)
    h, w = x.shape[-2], x.shape[-1]
    if isinstance(h, int) and isinstance(w, int):
        mask = np.triu(np.ones((h, w), bool), k) if upper else np.tril(np.ones((h, w), bool), k)
        keep = cx.b.const(mask, "bool")
    else:  # col - row >= k (upper) or <= k (lower), from Ranges over the run-time dims
        shape = cx.op("Shape", [x])
        rows = cx.op("Range", [cx.b.const(np.int64(0), "i64"),
                               cx.op("Gather", [shape, cx.b.const(np.int64(x.rank - 2), "i64")], axis=0),
                               cx.b.const(np.int64(1), "i64")])
        cols = cx.op("Range", [cx.b.const(np.int64(0), "i64"),
                               cx.op("Gather", [shape, cx.b.const(np.int64(x.rank - 1), "i64")], axis=0),
                               cx.b.const(np.int64(1), "i64")])
        diff = cx.op("Sub", [cols, cx.op("Unsqueeze", [rows, cx.ints([1])])])
        kk = cx.b.const(np.int64(k), "i64")
        keep = cx.op("GreaterOrEqual" if upper else "LessOrEqual", [diff, kk])
    return [cx.op("Where", [keep, x, cx.scalar(0, x)])]


@handles("IsNaN")
def _isnan(cx, ins):
    return [cx.op("Not", [cx.op("Equal", [ins[0], ins[0]])])]


# ------------------------------------------------------------------ resizing
def _factors(cx, x: Value, ins) -> list[int]:
    """Resize's per-axis integer factors, from its scales or its sizes (static or symbolic)."""
    scales = ins[2] if len(ins) > 2 else None
    sizes = ins[3] if len(ins) > 3 else None
    if scales is not None and scales.const is not None and scales.const.size:
        raw = [float(f) for f in np.asarray(scales.const).reshape(-1)]
    elif sizes is not None and (sizes.sym is not None or sizes.const is not None):
        target = sizes.sym if sizes.sym is not None else tuple(int(s) for s in sizes.const.reshape(-1))
        raw = []
        for d, t in zip(x.shape, target):
            if d == t:
                raw.append(1.0)
            elif isinstance(d, int) and isinstance(t, int):
                raw.append(t / d)
            else:
                raw.append(next((float(s) for s in range(2, 17) if dim_mul(d, s) == t), math.nan))
    else:
        raise cx.fail("Resize needs its scales or sizes known when compiling")
    if any(f != int(f) or f < 1 for f in raw):
        raise cx.fail(f"Resize by factors {raw} is not supported: only whole-number upsampling")
    return [int(f) for f in raw]


@handles("Resize Upsample")
def _resize(cx, ins):
    x = ins[0]
    if cx.node.op_type == "Upsample":
        ins = [x, None, ins[1]]
    factors = _factors(cx, x, ins)
    mode = cx.attrs.get("mode", "nearest")
    coords = cx.attrs.get("coordinate_transformation_mode", "half_pixel")
    if all(f == 1 for f in factors):
        return [cx.op("Identity", [x])]
    if mode == "nearest":
        nearest = cx.attrs.get("nearest_mode", "round_prefer_floor")
        floor_like = ((coords == "asymmetric" and nearest == "floor") or
                      (coords in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn")
                       and nearest in ("round_prefer_floor", "round_prefer_ceil")))
        if not floor_like:
            raise cx.fail(f"nearest Resize with {coords} coordinates and nearest_mode {nearest} is not supported")
        return [_repeat_axes(cx, x, factors)]
    if mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel") and x.rank == 4 and factors[:2] == [1, 1]:
        scales = cx.b.const(np.asarray(factors, np.float32), "f32")
        return [cx.b.op("Resize", [x, None, scales],
                        {"mode": "linear", "coordinate_transformation_mode": "half_pixel"})]
    raise cx.fail(f"Resize mode {mode} with {coords} coordinates on {x.type} is not supported",
                  "supported: nearest (integer scales), linear half_pixel on [N, C, H, W] (integer scales)")


def _repeat_axes(cx, x: Value, factors: list[int]) -> Value:
    """Nearest upsampling by whole factors: each element repeated f times along its axis
    ([d0, d1] as [d0, 1, d1, 1] expanded to [d0, f0, d1, f1], then merged)."""
    y = cx.op("Unsqueeze", [x, cx.ints([2 * i + 1 for i in range(x.rank)])])
    y = cx.op("Expand", [y, cx.ints([v for f in factors for v in (1, f)])])
    return cx.op("Reshape", [y, _dims_vector(cx, x, [dim_mul(d, f) for d, f in zip(x.shape, factors)], factors)])


# ------------------------------------------------------------------ einsum
@handles("Einsum")
def _einsum(cx, ins):
    """Each operand transposed to one letter order and unsqueezed where it lacks a letter, the
    product broadcast, the contracted letters summed away: Transpose, Unsqueeze, Mul, ReduceSum."""
    eq = cx.attrs["equation"].replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if "." in eq or len(terms) != len(ins) or any(len(set(t)) != len(t) for t in terms):
        raise cx.fail(f"Einsum `{eq}` is not supported (ellipses and repeated letters are not)")
    if not arrow:
        out = "".join(sorted(c for c in set(lhs) if lhs.count(c) == 1 and c != ","))
    letters = list(out) + [c for t in terms for c in t if c not in out]
    letters = list(dict.fromkeys(letters))
    product = None
    for term, v in zip(terms, ins):
        if len(term) != v.rank:
            raise cx.fail(f"Einsum term `{term}` does not fit {v.type}")
        order = sorted(range(len(term)), key=lambda i: letters.index(term[i]))
        if order != list(range(len(term))):
            v = cx.op("Transpose", [v], perm=order)
        missing = [i for i, c in enumerate(letters) if c not in term]
        if missing:
            v = cx.op("Unsqueeze", [v, cx.ints(missing)])
        product = v if product is None else cx.op("Mul", [product, v])
    summed = list(range(len(out), len(letters)))
    if summed:
        product = cx.op("ReduceSum", [product, cx.ints(summed)], keepdims=0)
    return [product]


# ------------------------------------------------------------------ recurrent
@handles("LSTM")
def _lstm(cx, ins):
    from .onnx_rnn import lstm
    return lstm(cx, ins)


@handles("GRU")
def _gru(cx, ins):
    from .onnx_rnn import gru
    return gru(cx, ins)

