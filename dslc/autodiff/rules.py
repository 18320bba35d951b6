"""Vector-Jacobian products: one entry per IR op.

`VJP[op](b, node, dys) -> grads`. `dys` holds one cotangent per node output (None where no gradient
reaches it); the result holds one gradient per node input (None: no gradient; trailing Nones may be
left out). A gradient may have the broadcast output shape: the driver sums it down to the input's.
Backward graphs use only ops that have an entry here or are in NON_DIFFERENTIABLE, so they can be
differentiated again (second derivatives, Hessian-vector products).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from ..diagnostics import DslError
from ..ir import patterns as P
from ..ir.core import DTYPES, Node, TensorType, Value
from ..ir.formulations import choose
from ..ir.builder import Builder
from ..ir.ops import DTYPE_CODE, ShapeIssue, infer

Rule = Callable[[Builder, Node, list], list]

# Outputs carry no gradient: integer/bool results, random draws, constants, and piecewise-constant
# functions (zero derivative almost everywhere).
NON_DIFFERENTIABLE = {
    "Shape", "Size", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "ArgMax", "ArgMin",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Constant",
    "ConstantOfShape", "OneHot", "Not", "And", "Or", "Sign", "Floor", "Ceil", "StopGradient",
    "BitwiseXor", "BitwiseAnd", "BitwiseOr", "BitShift", "Range",
    "Round",
}
# Ops whose rule lives in a module of its own (it needs more than the node: which values are live).
OWN_RULE = {"Loop"}  # loops.py


# ------------------------------------------------------------------ small builders
def _op(b: Builder, name: str, *inputs, **attrs) -> Value:
    return b.op(name, list(inputs), attrs)


def _c(b: Builder, value, like: Value) -> Value:
    """A constant in like's dtype (scalar unless value is an array)."""
    return b.const(np.asarray(value), like.dtype)


def _mask(b: Builder, cond: Value, like: Value) -> Value:
    """A bool condition as 0/1 in like's dtype (Cast of a comparison: no gradient, no Where)."""
    return _op(b, "Cast", cond, to=DTYPE_CODE[like.dtype])


def _ints(v: Value | None) -> list[int] | None:
    return None if v is None else [int(i) for i in np.asarray(v.const).reshape(-1)]


def _input(node: Node, i: int) -> Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _swap_last(b: Builder, v: Value) -> Value:
    perm = list(range(v.rank))
    perm[-2:] = perm[-1], perm[-2]
    return _op(b, "Transpose", v, perm=perm)


# ------------------------------------------------------------------ elementwise
# One-input elementwise ops y = f(x): f'(x) from (b, x, y, attrs); the rule is dx = dy * f'(x).
def _elementwise(derivative) -> Rule:
    def rule(b, node, dys):
        return [_op(b, "Mul", dys[0], derivative(b, node.inputs[0], node.outputs[0], node.attrs))]
    return rule


def _positive(b, x):
    return _mask(b, _op(b, "Greater", x, _c(b, 0, x)), x)


def _d_gelu(b, x, y, attrs):
    if attrs.get("approximate", "none") == "tanh":  # 0.5 x (1 + tanh(u)), u = k (x + a x^3)
        k, a = math.sqrt(2 / math.pi), 0.044715
        x2 = _op(b, "Mul", x, x)
        t = _op(b, "Tanh", _op(b, "Mul", _c(b, k, x), _op(b, "Add", x, _op(b, "Mul", _c(b, a, x),
                                                                             _op(b, "Mul", x2, x)))))
        du = _op(b, "Mul", _c(b, k, x), _op(b, "Add", _c(b, 1, x), _op(b, "Mul", _c(b, 3 * a, x), x2)))
        outer = _op(b, "Mul", _c(b, 0.5, x), _op(b, "Add", _c(b, 1, x), t))
        inner = _op(b, "Mul", _op(b, "Mul", _c(b, 0.5, x), x),
                    _op(b, "Mul", _op(b, "Sub", _c(b, 1, x), _op(b, "Mul", t, t)), du))
        return _op(b, "Add", outer, inner)
    # x * Phi(x): Phi(x) + x * phi(x)
    cdf = _op(b, "Mul", _c(b, 0.5, x),
              _op(b, "Add", _c(b, 1, x), _op(b, "Erf", _op(b, "Mul", x, _c(b, 1 / math.sqrt(2), x)))))
    pdf = _op(b, "Mul", _c(b, 1 / math.sqrt(2 * math.pi), x),
              _op(b, "Exp", _op(b, "Mul", _c(b, -0.5, x), _op(b, "Mul", x, x))))
    return _op(b, "Add", cdf, _op(b, "Mul", x, pdf))


def _d_leaky_relu(b, x, y, attrs):
    alpha = attrs.get("alpha", 0.01)
    return _op(b, "Add", _op(b, "Mul", _positive(b, x), _c(b, 1 - alpha, x)), _c(b, alpha, x))


def _d_elu(b, x, y, attrs):
    pos = _positive(b, x)
    # exp of min(0, x): the negative branch only, so a large x cannot overflow into inf * 0; the 0
    # first, so that at x = 0 Min's tie sends x no gradient: the second derivative there is 0, as torch's
    neg = _op(b, "Mul", _c(b, attrs.get("alpha", 1.0), x), _op(b, "Exp", _op(b, "Min", _c(b, 0, x), x)))
    return _op(b, "Add", pos, _op(b, "Mul", _op(b, "Sub", _c(b, 1, x), pos), neg))


def _d_erf(b, x, y, attrs):
    return _op(b, "Mul", _c(b, 2 / math.sqrt(math.pi), x), _op(b, "Exp", _op(b, "Neg", _op(b, "Mul", x, x))))


DERIVATIVES = {
    "Exp": lambda b, x, y, a: y,
    "Log": lambda b, x, y, a: _op(b, "Reciprocal", x),
    "Sqrt": lambda b, x, y, a: _op(b, "Div", _c(b, 0.5, y), y),
    "Abs": lambda b, x, y, a: _op(b, "Sign", x),
    "Relu": lambda b, x, y, a: _positive(b, y),  # y > 0 iff x > 0; reading y lets Conv / Gemm fuse the Relu
    "Sigmoid": lambda b, x, y, a: _op(b, "Mul", y, _op(b, "Sub", _c(b, 1, y), y)),
    "Tanh": lambda b, x, y, a: _op(b, "Sub", _c(b, 1, y), _op(b, "Mul", y, y)),
    "Softplus": lambda b, x, y, a: _op(b, "Sigmoid", x),
    "Erf": _d_erf,
    "Reciprocal": lambda b, x, y, a: _op(b, "Neg", _op(b, "Mul", y, y)),
    "Sin": lambda b, x, y, a: _op(b, "Cos", x),
    "Cos": lambda b, x, y, a: _op(b, "Neg", _op(b, "Sin", x)),
    "LeakyRelu": _d_leaky_relu,
    "Elu": _d_elu,
    "Gelu": _d_gelu,
    "Tan": lambda b, x, y, a: _op(b, "Add", _c(b, 1, y), _op(b, "Mul", y, y)),
    "Atan": lambda b, x, y, a: _op(b, "Reciprocal", _op(b, "Add", _c(b, 1, x), _op(b, "Mul", x, x))),
}


def _softmax(b, node, dys):
    y, dy = node.outputs[0], dys[0]
    axes = b.ints([node.attrs.get("axis", -1)])
    dot = _op(b, "ReduceSum", _op(b, "Mul", dy, y), axes, keepdims=1)
    return [_op(b, "Mul", y, _op(b, "Sub", dy, dot))]


def _log_softmax(b, node, dys):
    y, dy = node.outputs[0], dys[0]
    total = _op(b, "ReduceSum", dy, b.ints([node.attrs.get("axis", -1)]), keepdims=1)
    return [_op(b, "Sub", dy, _op(b, "Mul", _op(b, "Exp", y), total))]


def _div(b, node, dys):
    (_, den), y, dy = node.inputs, node.outputs[0], dys[0]
    return [_op(b, "Div", dy, den), _op(b, "Neg", _op(b, "Div", _op(b, "Mul", dy, y), den))]


def _pow(b, node, dys):
    """n x^(n-1) needs no log, so `x ** 3` differentiates at x <= 0; x ** 0 is constant (and would give
    0 * inf at 0). The exponent's gradient, y log(x), only for an exponent that is not a constant."""
    (base, exp), y, dy = node.inputs, node.outputs[0], dys[0]
    if exp.const is not None and not np.any(exp.const):
        return [None, None]
    exp_f = exp if exp.type.is_float else _op(b, "Cast", exp, to=DTYPE_CODE[base.dtype])
    d_base = _op(b, "Mul", dy, _op(b, "Mul", exp_f, _op(b, "Pow", base, _op(b, "Sub", exp, _c(b, 1, exp)))))
    d_exp = None
    if exp.type.is_float and exp.const is None:  # y log(x); 0 where x = 0 (torch), and no log(0) on the way
        zero = _op(b, "Equal", base, _c(b, 0, base))
        safe = _op(b, "Where", zero, _c(b, 1, base), base)
        d_exp = _op(b, "Mul", dy, _op(b, "Mul", y, _op(b, "Log", safe)))
    return [d_base, d_exp]


def _select(compare: str) -> Rule:
    """Max / Min: the gradient goes to the selected operand (to the first one on ties)."""
    def rule(b, node, dys):
        (a, c), dy = node.inputs, dys[0]
        da = _op(b, "Mul", dy, _mask(b, _op(b, compare, a, c), dy))
        return [da, _op(b, "Sub", dy, da)]
    return rule


def _where(b, node, dys):
    dy = dys[0]
    cond, zero = node.inputs[0], _c(b, 0, dy)
    return [None, _op(b, "Where", cond, dy, zero), _op(b, "Where", cond, zero, dy)]


def _clip(b, node, dys):
    x, lo, hi = node.inputs[0], _input(node, 1), _input(node, 2)
    dy = dys[0]
    below = _op(b, "Less", x, lo) if lo is not None else None
    above = _op(b, "Greater", x, hi) if hi is not None else None
    clipped = below if above is None else above if below is None else _op(b, "Or", below, above)
    if clipped is None:
        return [dy]
    d_x = _op(b, "Mul", dy, _mask(b, _op(b, "Not", clipped), dy))
    d_lo = _op(b, "Mul", dy, _mask(b, below, dy)) if below is not None else None
    d_hi = _op(b, "Mul", dy, _mask(b, above, dy)) if above is not None else None
    return [d_x, d_lo, d_hi]


def _cast(b, node, dys):
    x, y = node.inputs[0], node.outputs[0]
    if x.type.is_float and y.type.is_float:
        return [_op(b, "Cast", dys[0], to=DTYPE_CODE[x.dtype])]
    return [None]


def _matmul(b, node, dys):
    (a, w), dy = node.inputs, dys[0]
    return [_op(b, "MatMul", dy, _swap_last(b, w)), _op(b, "MatMul", _swap_last(b, a), dy)]


# ------------------------------------------------------------------ convolution and pooling
def _window(b: Builder, node: Node) -> tuple[list, list, list]:
    if node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise DslError(f"cannot differentiate through {node.op} with auto_pad", b.span)
    if node.attrs.get("ceil_mode", 0):
        raise DslError(f"cannot differentiate through {node.op} with ceil_mode", b.span)
    a = node.attrs
    return list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0])), list(a.get("dilations", [1, 1]))


def _output_padding(x: Value, y: Value, kernel, strides, pads, dilations) -> list[int]:
    """ConvTranspose output_padding that maps y's spatial size back to exactly x's."""
    return [x.shape[2 + i] - (strides[i] * (y.shape[2 + i] - 1) + (kernel[i] - 1) * dilations[i] + 1
                              - pads[i] - pads[i + 2]) for i in range(2)]


def _bias_grad(b, node, dy):
    bias = _input(node, 2)
    return _op(b, "ReduceSum", dy, b.ints([0, 2, 3]), keepdims=0) if bias is not None else None


def _conv(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _conv_symbolic(b, node, dys)
    if node.inputs[0].rank != 4:
        return _conv_nd(b, node, dys)
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _window(b, node)
    g = node.attrs.get("group", 1)
    x_hw = tuple(x.shape[2:])
    if P.transposed_conv_form("conv_input_grad", dy, w.shape, s, p, d, x_hw, g) == "matmuls":
        dx = P.conv_transpose2d_matmuls(b, dy, w, None, s, p, d, x_hw)
    else:
        out_pad = _output_padding(x, dy, w.shape[2:], s, p, d)
        dx = _op(b, "ConvTranspose", dy, w, strides=s, pads=p, dilations=d, group=g, output_padding=out_pad)
    dw = P.conv_weight_grad(b, x, dy, w.shape, s, p, d, g)
    return [dx, dw, _bias_grad(b, node, dy)]


def _conv_transpose(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _conv_transpose_symbolic(b, node, dys)
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _window(b, node)
    g = node.attrs.get("group", 1)
    dx = _op(b, "Conv", dy, w, strides=s, pads=p, dilations=d, group=g)
    # ConvTranspose is the adjoint of Conv(., W): its weight gradient is Conv's with x and dy swapped
    dw = P.conv_weight_grad(b, dy, x, w.shape, s, p, d, g)
    return [dx, dw, _bias_grad(b, node, dy)]


def _max_pool(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _max_pool_symbolic(b, node, dys)
    if node.inputs[0].rank != 4:
        return _max_pool_nd(b, node, dys)
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    s, p, d = _window(b, node)
    kernel = list(node.attrs["kernel_shape"])
    if _pool_form(kernel, s, p, d) == "tiles":
        return [_max_pool_tiles(b, x, y, dy, kernel)]
    return [_max_pool_windows(b, x, y, dy, kernel, s, p, d)]


def _pool_form(kernel, s, p, d) -> str:
    """`tiles` where the windows tile the input (then the default), else `windows`."""
    tiles = list(kernel) == list(s) and not any(p) and list(d) == [1] * len(kernel)
    return choose("max_pool_grad", "tiles" if tiles else "windows", None if tiles else ("windows",))


def _max_pool_tiles(b, x, y, dy, kernel):
    """Non-overlapping windows. Pooled values are spread back over their windows by `_spread`, and
    each maximum counts the maxima before it in its window, each by one MatMul with a constant 0/1
    matrix: every op stays 2- to 4-D, where onnxruntime is several times faster than on 6-D
    broadcast tiles (PERF-NOTES). On ties the whole gradient goes to the first maximum in row-major
    window order, as PyTorch and TensorFlow route it: the maximum with none before it."""
    if not isinstance(x.shape[1], int):
        return _max_pool_windows(b, x, y, dy, kernel, kernel, [0, 0, 0, 0], [1, 1])
    at_max = _mask(b, _op(b, "Equal", x, _spread(b, y, x, kernel)), x)  # 0/1 by Cast: Where is slow in onnxruntime
    # at_max minus the number of maxima before it: 1 for the first maximum, <= 0 for any other cell;
    # Relu makes that 0/1 in one op (no Greater + Cast)
    first = _op(b, "Relu", _band_product(b, at_max, _first_matrix(kernel, x.shape[3]), y, kernel))
    return _op(b, "Mul", first, _spread(b, dy, x, kernel))


def _first_matrix(kernel, w: int) -> np.ndarray:
    """[kh*W, kh*W]: the identity minus 1 where cell p of a band of kh image rows comes before cell q
    in the same window (row-major window order); cells past the last window column are in none."""
    kh, kw = kernel
    row, col = np.divmod(np.arange(kh * w), w)
    window = np.where(col < w // kw * kw, col // kw, -1)
    rank = row * kw + col % kw
    same = (window[:, None] == window[None, :]) & (window[:, None] >= 0)
    return np.eye(kh * w) - (same & (rank[:, None] < rank[None, :]))


def _band_product(b, v, matrix, pooled, kernel):
    """v (full size) times `matrix` band by band, back in v's shape (rows past the last window: 0)."""
    kh, (h, w), ho = kernel[0], v.shape[2:], pooled.shape[2]
    covered = P.slice_axes(b, v, [0], [ho * kh], [2]) if ho * kh != h else v
    bands = _op(b, "MatMul", _op(b, "Reshape", covered, b.ints([-1, kh * w])), _c(b, matrix, v))
    return P.pad_or_crop(b, _op(b, "Reshape", bands, P.shape_with(b, v, {2: ho * kh})), {2: (0, h - ho * kh)})


def _tile_matrix(kernel, w: int, wo: int) -> np.ndarray:
    """[kh*W, Wo]: row (r, c) of a band of kh image rows belongs to window column o when c does."""
    kh, kw = kernel
    m = np.zeros((kh, w, wo))
    for o in range(wo):
        m[:, o * kw:(o + 1) * kw, o] = 1
    return m.reshape(kh * w, wo)


def _spread(b, v, full, kernel):
    """[N, C, Ho, Wo] -> full's shape, each value repeated over its kh x kw window (zeros where no
    window reaches)."""
    kh, (h, w), (ho, wo) = kernel[0], full.shape[2:], v.shape[2:]
    bands = _op(b, "MatMul", _op(b, "Reshape", v, b.ints([-1, wo])), _c(b, _tile_matrix(kernel, w, wo).T, v))
    out = _op(b, "Reshape", bands, P.shape_with(b, full, {2: ho * kh}))
    return P.pad_or_crop(b, out, {2: (0, h - ho * kh)})  # rows past the last window


def _max_pool_windows(b, x, y, dy, kernel, s, p, d):
    """General windows: one strided Slice of the (-inf padded) input per kernel offset, visited in
    row-major window order; an offset takes dy where it holds the maximum and no earlier offset did
    (the first maximum wins ties, as in PyTorch and TensorFlow), back through the Slice VJP."""
    xp = P.pad_or_crop(b, x, {2: (p[0], p[2]), 3: (p[1], p[3])}, value=_c(b, -np.inf, x))
    ho, wo = y.shape[2:]
    dxp, seen = None, None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            starts = [i * d[0], j * d[1]]
            ends = [starts[0] + s[0] * (ho - 1) + 1, starts[1] + s[1] * (wo - 1) + 1]
            taken = _mask(b, _op(b, "Equal", P.slice_axes(b, xp, starts, ends, [2, 3], s), y), dy)
            first = taken if seen is None else _op(b, "Mul", taken, _op(b, "Sub", _c(b, 1, dy), seen))
            seen = taken if seen is None else _op(b, "Add", seen, first)
            part = slice_grad(b, _op(b, "Mul", first, dy), xp, starts, ends, [2, 3], s)
            dxp = part if dxp is None else _op(b, "Add", dxp, part)
    return P.pad_or_crop(b, dxp, {2: (-p[0], -p[2]), 3: (-p[1], -p[3])})


def _window_counts(n, k, s, d, p0, p1, include_pad) -> np.ndarray:
    """How many taps of each output window fall inside the input (or inside the padded input)."""
    out = P.conv_out_size(n, k, s, d, p0, p1)
    lo, hi = (-p0, n + p1) if include_pad else (0, n)
    return np.array([sum(lo <= o * s - p0 + t * d < hi for t in range(k)) for o in range(out)])


def _average_pool(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _average_pool_symbolic(b, node, dys)
    if node.inputs[0].rank != 4:
        return _average_pool_nd(b, node, dys)
    x, dy = node.inputs[0], dys[0]
    s, p, d = _window(b, node)
    (kh, kw), (h, w), (ho, wo) = node.attrs["kernel_shape"], x.shape[2:], dy.shape[2:]
    include = node.attrs.get("count_include_pad", 0)
    counts = np.outer(_window_counts(h, kh, s[0], d[0], p[0], p[2], include),
                      _window_counts(w, kw, s[1], d[1], p[1], p[3], include))
    inv = 1.0 / (counts.flat[0] if (counts == counts.flat[0]).all() else counts)
    # every channel alike: a ones kernel on [N*C, 1, Ho, Wo] spreads each share over its window
    per_map = _op(b, "Reshape", _op(b, "Mul", dy, _c(b, inv, dy)), b.ints([-1, 1, ho, wo]))
    out_pad = _output_padding(x, dy, (kh, kw), s, p, d)
    spread = _op(b, "ConvTranspose", per_map, _c(b, np.ones((1, 1, kh, kw)), dy), strides=s, pads=p,
                 dilations=d, output_padding=out_pad)
    return [_op(b, "Reshape", spread, P.shape_of(b, x))]


# ------------------------------------------------------------------ pooling over 1 or 3 spatial axes
# Both rules visit the window one kernel offset at a time: a strided Slice of the padded input per
# offset, its share sent back by the Slice VJP. No Conv/ConvTranspose, so float64 runs everywhere.
def _window_nd(b: Builder, node: Node) -> tuple[list, list, list, list]:
    return (list(node.attrs["kernel_shape"]), *_attrs_nd(b, node, node.inputs[0].rank - 2))


def _max_pool_nd(b, node, dys):
    """An offset takes dy where it holds its window's maximum and no earlier offset did: the first
    maximum in row-major window order wins ties, as in PyTorch and TensorFlow (and the 2-D rule)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    kernel, s, p, d = _window_nd(b, node)
    n = len(kernel)
    if _pool_form(kernel, s, p, d) == "tiles":
        return [_max_pool_nd_tiles(b, x, y, dy, kernel)]
    axes = list(range(2, 2 + n))
    xp = P.pad_or_crop(b, x, {2 + i: (p[i], p[i + n]) for i in range(n)}, value=_c(b, -np.inf, x))
    parts = _first_max_shares(b, xp, y, dy, P.offset_slices(kernel, s, d, y.shape[2:]), axes, s)
    dxp = _scatter_windows(b, parts, xp, kernel, s, d)
    return [P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})]


def _first_max_shares(b, xp, y, dy, windows, axes, strides) -> list[Value]:
    """Per kernel offset (row-major window order), dy where that offset holds its window's maximum
    and no earlier offset did: the first maximum wins ties, as in PyTorch and TensorFlow."""
    parts, seen = [], None
    for starts, ends in windows:
        taken = _mask(b, _op(b, "Equal", P.slice_axes(b, xp, starts, ends, axes, strides), y), dy)
        first = taken if seen is None else _op(b, "Mul", taken, _op(b, "Sub", _c(b, 1, dy), seen))
        seen = taken if seen is None else _op(b, "Add", seen, first)
        parts.append(_op(b, "Mul", first, dy))
    return parts


def _first_of_taps(b, at_max, taps: int) -> Value:
    """0/1 at_max [..., K] -> 1 at each window's first maximum: at_max minus the maxima before it
    (one MatMul by I - [p before q]) is 1 there and <= 0 elsewhere, and Relu makes that 0/1."""
    return _op(b, "Relu", _op(b, "MatMul", at_max, _c(b, np.eye(taps) - np.triu(np.ones((taps, taps)), 1), at_max)))


def _scatter_windows(b, parts, xp, kernel, s, d):
    """Sum each kernel offset's [N, C, *out] share back into the padded input's shape (col2im)."""
    n, out = len(kernel), list(parts[0].shape[2:])
    if d != [1] * n:  # one Slice VJP per offset
        dxp = None
        for part, (starts, ends) in zip(parts, P.offset_slices(kernel, s, d, out)):
            back = slice_grad(b, part, xp, starts, ends, list(range(2, 2 + n)), s)
            dxp = back if dxp is None else _op(b, "Add", dxp, back)
        return dxp
    # Offset o = q * s + r lands on r + s * (j + q): per residue r, the shares of its offsets are
    # shifted by q on the output-sized grid and added there; the residues then interleave (the
    # tiles' Reshape-Transpose-Reshape backwards). Full-size work: one Transpose.
    reach = [-(-k // st) for k, st in zip(kernel, s)]
    coarse = [o + r - 1 for o, r in zip(out, reach)]
    index = {o: i for i, o in enumerate(itertools.product(*[range(k) for k in kernel]))}
    classes = []
    for r in itertools.product(*[range(st) for st in s]):
        acc = None
        for q in itertools.product(*[range(m) for m in reach]):
            o = tuple(qi * st + ri for qi, st, ri in zip(q, s, r))
            if o not in index:
                continue
            shifted = P.pad_or_crop(b, parts[index[o]], {2 + i: (q[i], coarse[i] - out[i] - q[i]) for i in range(n)})
            acc = shifted if acc is None else _op(b, "Add", acc, shifted)
        if acc is None:  # a stride longer than the window: these positions get nothing
            acc = _op(b, "ConstantOfShape", P.shape_with(b, parts[0], {2 + i: coarse[i] for i in range(n)}),
                      value=np.zeros(1, DTYPES[parts[0].dtype]))
        classes.append(_op(b, "Unsqueeze", acc, b.ints([-1])))
    grid = classes[0] if len(classes) == 1 else _op(b, "Concat", *classes, axis=-1)
    grid = _op(b, "Reshape", grid, b.ints([0, 0, *coarse, *s]))
    perm = [0, 1] + [a for i in range(n) for a in (2 + i, 2 + n + i)]
    full = _op(b, "Reshape", _op(b, "Transpose", grid, perm=perm), b.ints([0, 0, *[c * st for c, st in zip(coarse, s)]]))
    return P.pad_or_crop(b, full, {2 + i: (0, xp.shape[2 + i] - coarse[i] * s[i]) for i in range(n)})


def _conv_nd(b, node, dys):
    """Conv over 3 spatial axes (conv3d): dW is dy times the patches of x (im2col); dx is the
    patches' gradient W^T dy summed back into x's shape (col2im). No ConvTranspose, so the float64
    graph and second derivatives need nothing more."""
    (x, w), dy = node.inputs[:2], dys[0]
    _window(b, node)  # (refuses auto_pad)
    a, kernel, n = node.attrs, list(w.shape[2:]), x.rank - 2
    s, p, d = list(a.get("strides", [1] * n)), list(a.get("pads", [0] * 2 * n)), list(a.get("dilations", [1] * n))
    g, (o, cg), c = a.get("group", 1), w.shape[:2], x.shape[1]
    taps, out = int(np.prod(kernel)), list(dy.shape[2:])
    length, k = int(np.prod(out)), cg * taps
    cols = P.im2col_nd(b, x, kernel, s, p, d)  # [N, C*K, L]
    dy_g = _op(b, "Reshape", dy, b.ints([0, g, o // g, length]))
    cols_g = _op(b, "Reshape", cols, b.ints([0, g, k, length]))
    dw = _op(b, "ReduceSum", _op(b, "MatMul", dy_g, _op(b, "Transpose", cols_g, perm=[0, 1, 3, 2])), b.ints([0]),
             keepdims=0)  # [g, O/g, k]
    w_t = _op(b, "Transpose", _op(b, "Reshape", w, b.ints([g, o // g, k])), perm=[0, 2, 1])  # [g, k, O/g]
    d_cols = _op(b, "Reshape", _op(b, "MatMul", w_t, dy_g), b.ints([0, c, taps, *out]))  # [N, C, K, *out]
    parts = b.op("Split", [d_cols, b.ints([1] * taps)], {"axis": 2})
    parts = [_op(b, "Squeeze", v, b.ints([2])) for v in (parts if isinstance(parts, tuple) else [parts])]
    padded = tuple(x.shape[:2]) + tuple(x.shape[2 + i] + p[i] + p[i + n] for i in range(n))
    dxp = _scatter_windows(b, parts, Value("padded", TensorType(x.dtype, padded)), kernel, s, d)
    dx = P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})
    bias = _input(node, 2)
    db = _op(b, "ReduceSum", dy, b.ints([0, *range(2, 2 + n)]), keepdims=0) if bias is not None else None
    return [dx, _op(b, "Reshape", dw, b.ints(list(w.shape))), db]


def _max_pool_nd_tiles(b, x, y, dy, kernel):
    """Non-overlapping windows: each window's taps become a last axis [N, C, *out, K] (one Reshape,
    Transpose, Reshape), the maxima with no earlier maximum in the window are found with one MatMul
    by a constant 0/1 matrix (as `_max_pool_tiles`), and dy goes back the same way."""
    n, out = len(kernel), list(y.shape[2:])
    covered = P.pad_or_crop(b, x, {2 + i: (0, out[i] * kernel[i] - x.shape[2 + i]) for i in range(n)})
    split = [0, 0] + [m for pair in zip(out, kernel) for m in pair]  # [N, C, Do, kd, Ho, kh, ...]
    perm = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
    taps = int(np.prod(kernel))
    windows = _op(b, "Reshape", _op(b, "Transpose", _op(b, "Reshape", covered, b.ints(split)), perm=perm),
                  b.ints([0, 0, *out, taps]))
    at_max = _mask(b, _op(b, "Equal", windows, _op(b, "Unsqueeze", y, b.ints([-1]))), x)
    first = _first_of_taps(b, at_max, taps)
    g = _op(b, "Mul", first, _op(b, "Unsqueeze", dy, b.ints([-1])))
    g = _op(b, "Transpose", _op(b, "Reshape", g, b.ints([0, 0, *out, *kernel])),
            perm=[int(i) for i in np.argsort(perm)])
    g = _op(b, "Reshape", g, b.ints([0, 0, *[o * k for o, k in zip(out, kernel)]]))
    return P.pad_or_crop(b, g, {2 + i: (0, x.shape[2 + i] - out[i] * kernel[i]) for i in range(n)})


def _average_pool_nd(b, node, dys):
    """Each output's dy / (taps counted) goes back to every tap of its window."""
    x, dy = node.inputs[0], dys[0]
    kernel, s, p, d = _window_nd(b, node)
    n = len(kernel)
    include = node.attrs.get("count_include_pad", 0)
    counts = np.ones(())
    for i in range(n):
        counts = np.multiply.outer(counts, _window_counts(x.shape[2 + i], kernel[i], s[i], d[i], p[i], p[i + n],
                                                          include))
    share = _op(b, "Mul", dy, _c(b, 1.0 / counts, dy))
    padded = tuple(x.shape[:2]) + tuple(x.shape[2 + i] + p[i] + p[i + n] for i in range(n))
    zeros = Value("padded", TensorType(x.dtype, padded))  # slice_grad reads only its shape
    dxp = _scatter_windows(b, [share] * int(np.prod(kernel)), zeros, kernel, s, d)
    return [P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})]


def _global_average_pool(b, node, dys):
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    return [_op(b, "Div", _op(b, "Expand", dy, P.shape_of(b, x)), _count_ratio(b, x, y))]


# ------------------------------------------------------------------ shapes
def _reshape_back(b, node, dys):
    """Reshape, Flatten, Squeeze, Unsqueeze: the gradient is dy in x's shape."""
    return [_op(b, "Reshape", dys[0], _shape_without_reading(b, node.inputs[0], dys[0]))]


def _shape_without_reading(b, x: Value, dy: Value) -> Value:
    """x's shape for a Reshape of a tensor of x's size: constant, with -1 for x's one symbolic dim
    where it has only one. Shape(x) in the backward would keep x whole until then (a runtime frees a
    tensor after its last reader): in the ACGAN generator step, 120 MB of per-phase products."""
    symbolic = [a for a, d in enumerate(x.shape) if not isinstance(d, int)]
    if len(symbolic) == 1 and all(d > 0 for d in x.shape if isinstance(d, int)):
        target = b.ints([-1 if a in symbolic else d for a, d in enumerate(x.shape)])
        if _reshaped_shape(dy, target) == x.shape:  # (the IR types the result as x's own dims)
            return target
    return P.shape_of(b, x)


def _reshaped_shape(v: Value, target: Value) -> tuple | None:
    try:
        return infer("Reshape", [v, target], {})[0].shape
    except ShapeIssue:
        return None


def _transpose(b, node, dys):
    perm = node.attrs.get("perm", list(range(node.inputs[0].rank))[::-1])
    return [_op(b, "Transpose", dys[0], perm=[int(i) for i in np.argsort(perm)])]


def _concat(b, node, dys):
    xs, dy = node.inputs, dys[0]
    if len(xs) == 1:
        return [dy]
    axis = node.attrs["axis"] % dy.rank
    if all(isinstance(x.shape[axis], int) for x in xs):
        sizes = b.ints([x.shape[axis] for x in xs])
    else:  # read the symbolic sizes at run time
        sizes = _op(b, "Concat", *[P.slice_axes(b, _op(b, "Shape", x), [axis], [axis + 1], [0]) for x in xs],
                    axis=0)
    return list(b.op("Split", [dy, sizes], {"axis": axis}))


def _split(b, node, dys):
    parts = [dy if dy is not None else P.zeros_like(b, out) for dy, out in zip(dys, node.outputs)]
    return [parts[0] if len(parts) == 1 else _op(b, "Concat", *parts, axis=node.attrs.get("axis", 0))]


def slice_grad(b: Builder, dy: Value, x: Value, starts, ends, axes, steps) -> Value:
    """The Slice VJP with constant bounds on static axes: dy scattered back into zeros of x's shape,
    one axis at a time (zero insertion for a step > 1, a reversal for a negative step, then
    padding); constant pads, static shapes."""
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.rank
        dim = x.shape[axis]
        if not isinstance(dim, int):  # x[k:] on a symbolic axis: pad by k in front
            dy = P.pad_or_crop(b, dy, {axis: (start, 0)})
            continue
        start, stop, step = slice(start, end, step).indices(dim)
        n = len(range(start, stop, step))
        if step < 0:  # walk the picked elements upwards instead
            dy = P.slice_axes(b, dy, [-1], [P.INT64_MIN], [axis], [-1])
            start, step = start + (n - 1) * step, -step
        dy = P.zero_insert(b, dy, axis, step)  # n*step long, element i at i*step
        dy = P.pad_or_crop(b, dy, {axis: (start, dim - start - n * step)})
    return dy


def _static_slice(x: Value, starts, ends, axes, steps) -> bool:
    """Whether slice_grad applies: constant bounds, and each sliced axis static or sliced `k:`."""
    return starts is not None and ends is not None and all(
        isinstance(x.shape[a % x.rank], int) or (st == 1 and s >= 0 and e >= 2**62)
        for s, e, a, st in zip(starts, ends, axes, steps))


def slice_grad_at_run_time(b: Builder, dy: Value, x: Value, starts: Value, axes, steps) -> Value:
    """The Slice VJP where an axis or a start is known only at run time (x[0] or x[1:N-1] on a
    batch axis N): per axis, reverse a negative step and insert step-1 zeros after each element,
    then one Pad whose widths come from Shape(x), the starts and dy's length."""
    const_starts = _ints(starts) if starts.const is not None else None
    before, after = [0] * x.rank, [0] * x.rank
    for i, (axis, step) in enumerate(zip(axes, steps)):
        axis %= x.rank
        n = _dim(b, dy, axis)
        dim = _dim(b, x, axis)
        start = const_starts[i] if const_starts else _op(b, "Gather", starts, b.ints(i), axis=0)
        if step < 0:
            dy = P.slice_axes(b, dy, [-1], [P.INT64_MIN], [axis], [-1])
        if abs(step) > 1:  # element i at i*|step|, without the zeros after the last one
            dy = P.slice_axes(b, P.zero_insert(b, dy, axis, abs(step)), [0], [1 - abs(step)], [axis])
        first = _clamped_start(b, start, dim, step)
        last_gap = _iop(b, "Mul", _iop(b, "Sub", n, 1), step)  # from the first picked element to the last
        lowest = first if step > 0 else _iop(b, "Add", first, last_gap)
        before[axis] = lowest
        after[axis] = _iop(b, "Sub", _iop(b, "Sub", dim, lowest), _iop(b, "Add", _iop(b, "Mul", _iop(
            b, "Sub", n, 1), abs(step)), 1))
    dx = _op(b, "Pad", dy, _int_vector(b, before + after))
    return dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))


def _dim(b: Builder, v: Value, axis: int) -> int | Value:
    d = v.shape[axis]
    return d if isinstance(d, int) else _op(b, "Gather", _op(b, "Shape", v), b.ints(axis), axis=0)


def _iop(b: Builder, op: str, p, q):
    """Integer arithmetic on Python ints (folded here) or i64 scalars (run time)."""
    if isinstance(p, int) and isinstance(q, int):
        return {"Add": p + q, "Sub": p - q, "Mul": p * q, "Max": max(p, q), "Min": min(p, q)}[op]
    as_value = [v if isinstance(v, Value) else b.ints(v) for v in (p, q)]
    return b.op(op, as_value)


def _clamped_start(b: Builder, start, dim, step):
    """Where a slice starts, as ONNX Slice reads it: from the end when negative, then clamped to
    [0, dim] (step > 0) or [-1, dim - 1] (step < 0)."""
    lo, hi = (0, dim) if step > 0 else (-1, _iop(b, "Sub", dim, 1))
    if isinstance(start, int):
        if abs(start) >= 2**62:
            return hi if start > 0 else lo
        if start < 0:
            start = _iop(b, "Add", dim, start)
    else:
        start = _op(b, "Where", _op(b, "Less", start, b.ints(0)), _op(b, "Add", start, dim if isinstance(
            dim, Value) else b.ints(dim)), start)
    return _iop(b, "Max", lo, _iop(b, "Min", start, hi))


def _int_vector(b: Builder, items: list) -> Value:
    if all(isinstance(v, int) for v in items):
        return b.ints(items)
    parts = [_op(b, "Unsqueeze", v, b.ints([0])) if isinstance(v, Value) else b.ints([v]) for v in items]
    return _op(b, "Concat", *parts, axis=0)


def _slice(b, node, dys):
    x, starts, ends = node.inputs[:3]
    axes = _ints(_input(node, 3)) or list(range(starts.shape[0]))
    steps = _ints(_input(node, 4)) or [1] * len(axes)
    const_starts = _ints(starts) if starts.const is not None else None
    const_ends = _ints(ends) if ends.const is not None else None
    if _static_slice(x, const_starts, const_ends, axes, steps):
        return [slice_grad(b, dys[0], x, const_starts, const_ends, axes, steps)]
    return [slice_grad_at_run_time(b, dys[0], x, starts, axes, steps)]


def _pad(b, node, dys):
    x, pads, value, dy = node.inputs[0], node.inputs[1], _input(node, 2), dys[0]
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        raise DslError(f"cannot differentiate through Pad with mode {mode}", b.span)
    r = x.rank
    if pads.const is not None:
        widths = _ints(pads)
        dx = P.pad_or_crop(b, dy, {a: (-widths[a], -widths[a + r]) for a in range(r)})
    else:  # widths known at run time (a Slice gradient's): crop [before, before + dim) on each axis
        before = P.slice_axes(b, pads, [0], [r], [0])
        dx = _op(b, "Slice", dy, before, _op(b, "Add", before, _op(b, "Shape", x)), b.ints(list(range(r))))
        dx = _op(b, "Reshape", dx, P.shape_of(b, x))
    d_value = None
    if value is not None and value.type.is_float:  # the padding cells: all of dy minus x's part
        d_value = _op(b, "Sub", _op(b, "ReduceSum", dy, keepdims=0), _op(b, "ReduceSum", dx, keepdims=0))
    return [dx, None, d_value]


# ------------------------------------------------------------------ reductions
def _reduced_axes(node: Node) -> list[int]:
    rank = node.inputs[0].rank
    axes = _ints(_input(node, 1))
    return sorted(a % rank for a in axes) if axes else list(range(rank))


def _is_noop(node: Node) -> bool:
    return bool(node.attrs.get("noop_with_empty_axes", 0)) and not _ints(_input(node, 1))


def _keep(b, node, v: Value) -> Value:
    """A reduction's output (or its cotangent) with the reduced axes back as size-1 dims."""
    if node.attrs.get("keepdims", 1) or _is_noop(node):
        return v
    return _op(b, "Unsqueeze", v, b.ints(_reduced_axes(node)))


def _count_ratio(b, x: Value, y: Value) -> Value:
    """How many x elements each y element summarizes: a constant when static, else from Size."""
    if x.type.static() and y.type.static():
        return _c(b, np.prod(x.shape) / np.prod(y.shape), x)
    return _op(b, "Div", *[_op(b, "Cast", _op(b, "Size", v), to=DTYPE_CODE[x.dtype]) for v in (x, y)])


def _reduce_sum(b, node, dys):
    if _is_noop(node):
        return [dys[0]]
    return [_op(b, "Expand", _keep(b, node, dys[0]), P.shape_of(b, node.inputs[0]))]


def _reduce_mean(b, node, dys):
    (dx,) = _reduce_sum(b, node, dys)
    return [dx if _is_noop(node) else _op(b, "Div", dx, _count_ratio(b, node.inputs[0], node.outputs[0]))]


def _reduce_extreme(b, node, dys):
    """ReduceMax / ReduceMin: dy to the elements equal to the result, shared among ties."""
    if _is_noop(node):
        return [dys[0]]
    x = node.inputs[0]
    at_extreme = _mask(b, _op(b, "Equal", x, _keep(b, node, node.outputs[0])), x)
    ties = b.op("ReduceSum", [at_extreme] + node.inputs[1:2], {"keepdims": 1})
    return [_op(b, "Mul", at_extreme, _op(b, "Div", _keep(b, node, dys[0]), ties))]


def _reduce_prod(b, node, dys):
    """prod / x_i: exact away from zeros (an element equal to 0 gets a NaN gradient)."""
    if _is_noop(node):
        return [dys[0]]
    x = node.inputs[0]
    scaled = _op(b, "Mul", _keep(b, node, dys[0]), _keep(b, node, node.outputs[0]))
    return [_op(b, "Div", _op(b, "Expand", scaled, P.shape_of(b, x)), x)]


# ------------------------------------------------------------------ indexing
def _index_i64(b, idx: Value, data: Value, axis: int) -> Value:
    """Indices as i64 in [0, dim): negative ones count from the end (ScatterND wants them so)."""
    if idx.dtype != "i64":
        idx = _op(b, "Cast", idx, to=DTYPE_CODE["i64"])
    if idx.const is not None and (idx.const >= 0).all():
        return idx
    dim = data.shape[axis]
    dim = b.ints(dim) if isinstance(dim, int) else _op(b, "Gather", _op(b, "Shape", data), b.ints(axis))
    return _op(b, "Where", _op(b, "Less", idx, b.ints(0)), _op(b, "Add", idx, dim), idx)


def _gather(b, node, dys):
    """Scatter-add dy into zeros. ScatterND indexes leading axes, so the gathered axis goes first
    in the zeros and the index dims go first in dy."""
    (data, idx), dy = node.inputs, dys[0]
    axis = node.attrs.get("axis", 0) % data.rank
    idx = _index_i64(b, idx, data, axis)
    front = [axis] + [a for a in range(data.rank) if a != axis]
    dy_perm = list(range(axis, axis + idx.rank)) + list(range(axis)) + list(range(axis + idx.rank, dy.rank))
    if dy_perm != sorted(dy_perm):
        dy = _op(b, "Transpose", dy, perm=dy_perm)
    if not axis:
        shape = P.shape_of(b, data)
    elif data.type.static():
        shape = b.ints([data.shape[a] for a in front])
    else:
        shape = _op(b, "Gather", _op(b, "Shape", data), b.ints(front))
    zeros = _op(b, "ConstantOfShape", shape, value=np.zeros(1, DTYPES[dy.dtype]))
    dx = _op(b, "ScatterND", zeros, _op(b, "Unsqueeze", idx, b.ints([-1])), dy, reduction="add")
    if axis:
        dx = _op(b, "Transpose", dx, perm=[int(i) for i in np.argsort(front)])
    return [dx, None]


def _gather_elements(b, node, dys):
    data, idx = node.inputs
    axis = node.attrs.get("axis", 0)
    return [_op(b, "ScatterElements", P.zeros_like(b, data), idx, dys[0], axis=axis, reduction="add"), None]


def _gather_nd(b, node, dys):
    data, idx = node.inputs
    if node.attrs.get("batch_dims", 0):
        raise DslError("cannot differentiate through GatherND with batch_dims", b.span)
    return [_op(b, "ScatterND", P.zeros_like(b, data), idx, dys[0], reduction="add"), None]


def _scatter(scatter: str, gather: str) -> Rule:
    """ScatterElements / ScatterND: updates get dy at their targets; data gets dy except where
    overwritten (reduction 'none') or all of it (reduction 'add')."""
    def rule(b, node, dys):
        (_, idx, updates), dy = node.inputs, dys[0]
        reduction = node.attrs.get("reduction", "none")
        axis = {"axis": node.attrs.get("axis", 0)} if scatter == "ScatterElements" else {}
        if reduction == "add":
            d_data = dy
        elif reduction == "none":
            d_data = b.op(scatter, [dy, idx, P.zeros_like(b, updates)], axis)
        else:
            raise DslError(f"cannot differentiate through {scatter} with reduction {reduction}", b.span)
        return [d_data, None, b.op(gather, [dy, idx], axis)]
    return rule


# ------------------------------------------------------------------ symbolic spatial dims
# Fallbacks for an H, W (L, D) known only at run time; static shapes keep the rules above. Each
# kernel offset reads a strided Slice of the padded input whose end counts from the axis' end, so
# its length is the output's at any size; its share goes back through the run-time Slice VJP.
def _attrs_nd(b: Builder, node: Node, n: int) -> tuple[list, list, list]:
    _window(b, node)  # (refuses auto_pad and ceil_mode)
    a = node.attrs
    return list(a.get("strides", [1] * n)), list(a.get("pads", [0] * 2 * n)), list(a.get("dilations", [1] * n))


def _unpadded(b, dxp, x, p) -> Value:
    """Crop the padding off and name the dims as x's (the symbolic expressions may differ in form)."""
    n = x.rank - 2
    dx = P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})
    return dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))


def _windows_back(b, parts, xp, kernel, s, d) -> Value:
    """Sum each offset's share [N, C, *out] back into xp's shape (col2im at run time)."""
    axes, dxp = list(range(2, xp.rank)), None
    for part, (starts, _) in zip(parts, P.tail_window_slices(kernel, s, d)):
        if all(st == 1 for st in s):  # the taps before and the reach after: constant pads
            back = P.pad_or_crop(b, part, {a: (st, (k - 1) * di - st) for a, st, k, di in zip(axes, starts, kernel, d)})
        else:
            back = slice_grad_at_run_time(b, part, xp, b.ints(starts), axes, s)
        dxp = back if dxp is None else _op(b, "Add", dxp, back)
    return dxp


def _max_pool_symbolic(b, node, dys):
    """As `_max_pool_nd`: an offset takes dy where it holds the maximum and no earlier offset did
    (the first maximum in row-major window order wins ties)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    kernel = list(node.attrs["kernel_shape"])
    s, p, d = _attrs_nd(b, node, len(kernel))
    if _pool_form(kernel, s, p, d) == "tiles":
        return [_max_pool_tiles_symbolic(b, x, y, dy, kernel)]
    xp = P.pad_spatial(b, x, p, _c(b, -np.inf, x))
    parts = _first_max_shares(b, xp, y, dy, P.tail_window_slices(kernel, s, d), list(range(2, x.rank)), s)
    return [_unpadded(b, _windows_back(b, parts, xp, kernel, s, d), x, p)]


def _max_pool_tiles_symbolic(b, x, y, dy, kernel):
    """Non-overlapping windows at any size, as `_max_pool_nd_tiles`: the covered part of x as
    [N, C, *out, K] (shapes from Shape(y)), the first maximum of each window by one MatMul with a
    constant 0/1 matrix, and dy back the same way; the rows/columns past the last window get zeros."""
    n, taps = len(kernel), int(np.prod(kernel))
    out = P.slice_axes(b, _op(b, "Shape", y), [2], [2 + n], [0])  # [n] i64
    covered = _op(b, "Slice", x, b.ints([0] * n), _op(b, "Mul", out, b.ints(kernel)), b.ints(list(range(2, 2 + n))))
    split = [b.ints([0, 0])] + [v for i in range(n)
                                for v in (P.slice_axes(b, out, [i], [i + 1], [0]), b.ints([kernel[i]]))]
    perm = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
    windows = _op(b, "Transpose", _op(b, "Reshape", covered, _op(b, "Concat", *split, axis=0)), perm=perm)
    windows = _op(b, "Reshape", windows, _op(b, "Concat", b.ints([0, 0]), out, b.ints([taps]), axis=0))
    at_max = _mask(b, _op(b, "Equal", windows, _op(b, "Unsqueeze", y, b.ints([-1]))), x)
    first = _first_of_taps(b, at_max, taps)
    g = _op(b, "Mul", first, _op(b, "Unsqueeze", dy, b.ints([-1])))
    g = _op(b, "Reshape", g, _op(b, "Concat", b.ints([0, 0]), out, b.ints(kernel), axis=0))
    g = _op(b, "Transpose", g, perm=[int(i) for i in np.argsort(perm)])
    g = _op(b, "Reshape", g, _op(b, "Concat", b.ints([0, 0]), _op(b, "Mul", out, b.ints(kernel)), axis=0))
    missing = _op(b, "Sub", P.slice_axes(b, _op(b, "Shape", x), [2], [2 + n], [0]), _op(b, "Mul", out, b.ints(kernel)))
    g = _op(b, "Pad", g, _op(b, "Concat", b.ints([0] * (n + 2)), b.ints([0, 0]), missing, axis=0))
    return _op(b, "Reshape", g, P.shape_of(b, x))


def _average_pool_symbolic(b, node, dys):
    """Each output's dy / (taps counted) to every tap of its window; without count_include_pad the
    counts near a padded border come from the same window sums over a zero-padded map of ones."""
    x, dy = node.inputs[0], dys[0]
    kernel = list(node.attrs["kernel_shape"])
    s, p, d = _attrs_nd(b, node, len(kernel))
    if node.attrs.get("count_include_pad", 0) or not any(p):
        share = _op(b, "Mul", dy, _c(b, 1.0 / np.prod(kernel), dy))
    else:
        share = _op(b, "Div", dy, P.window_counts(b, x, kernel, s, p, d))
    xp = P.pad_spatial(b, x, p)  # (read for its shape only)
    return [_unpadded(b, _windows_back(b, [share] * int(np.prod(kernel)), xp, kernel, s, d), x, p)]


def _conv_offsets(b, x, w_shape, s, p, d, g):
    """x padded, and per kernel offset its taps grouped as [N, g, C/g, L]."""
    kernel, axes = list(w_shape[2:]), list(range(2, x.rank))
    xp = P.pad_spatial(b, x, p)
    taps = [_op(b, "Reshape", P.slice_axes(b, xp, st, en, axes, s), b.ints([0, g, w_shape[1], -1]))
            for st, en in P.tail_window_slices(kernel, s, d)]
    return xp, taps


def _windows_weight_grad(b, x, dy, w_shape, s, p, d, g) -> Value:
    """dW of Conv(x, W) from dy: per kernel offset, dy times that offset's taps of x, summed over
    the batch and the output positions."""
    o = w_shape[0]
    _, taps = _conv_offsets(b, x, w_shape, s, p, d, g)
    dy_g = _op(b, "Reshape", dy, b.ints([0, g, o // g, -1]))  # [N, g, O/g, L]
    cols = [_op(b, "Unsqueeze", _op(b, "ReduceSum", _op(b, "MatMul", dy_g, _op(b, "Transpose", t, perm=[0, 1, 3, 2])),
                                    b.ints([0]), keepdims=0), b.ints([-1])) for t in taps]  # [g, O/g, C/g, 1]
    dw = cols[0] if len(cols) == 1 else _op(b, "Concat", *cols, axis=-1)
    return _op(b, "Reshape", dw, b.ints(list(w_shape)))


def _windows_input_grad(b, x, w, dy, s, p, d, g) -> Value:
    """dx of Conv(x, W): each offset's W^T dy, sent back through its window slice."""
    o, cg, kernel = w.shape[0], w.shape[1], list(w.shape[2:])
    xp, taps = _conv_offsets(b, x, w.shape, s, p, d, g)
    dy_g = _op(b, "Reshape", dy, b.ints([0, g, o // g, -1]))
    w_t = _op(b, "Transpose", _op(b, "Reshape", w, b.ints([g, o // g, cg, -1])), perm=[3, 0, 2, 1])  # [K, g, C/g, O/g]
    axes, parts = list(range(2, x.rank)), []
    for i, (starts, ends) in enumerate(P.tail_window_slices(kernel, s, d)):
        part = _op(b, "MatMul", _op(b, "Gather", w_t, b.ints(i), axis=0), dy_g)  # [N, g, C/g, L]
        like = P.slice_axes(b, xp, starts, ends, axes, s)
        parts.append(_op(b, "Reshape", part, P.shape_of(b, like)))
    return _unpadded(b, _windows_back(b, parts, xp, kernel, s, d), x, p)


def _transposed_input_grad(b, x, w, dy, s, p, d, g) -> Value:
    """dx of a 2-D Conv as ConvTranspose(dy, W), as the static rule. At stride 1 it has x's size;
    else output_padding (how far x reaches past the last window) is known only at run time: keep
    the end padding and the most output_padding (stride - 1), then cut at x's size."""
    if all(st == 1 for st in s):
        dx = _op(b, "ConvTranspose", dy, w, strides=s, pads=p, dilations=d, group=g)
    else:
        n = x.rank - 2
        full = _op(b, "ConvTranspose", dy, w, strides=s, pads=p[:n] + [0] * n, dilations=d, group=g,
                   output_padding=[st - 1 for st in s])
        dx = _op(b, "Slice", full, b.ints([0] * n), P.slice_axes(b, _op(b, "Shape", x), [2], [x.rank], [0]),
                 b.ints(list(range(2, x.rank))))
    return dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))


def _conv_symbolic(b, node, dys):
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _attrs_nd(b, node, x.rank - 2)
    g = node.attrs.get("group", 1)
    bias = _input(node, 2)
    db = _op(b, "ReduceSum", dy, b.ints([0, *range(2, x.rank)]), keepdims=0) if bias is not None else None
    # conv3d keeps to window slices: no ConvTranspose, as its static rule (_conv_nd)
    input_grad = _transposed_input_grad if x.rank == 4 else _windows_input_grad
    return [input_grad(b, x, w, dy, s, p, d, g), _windows_weight_grad(b, x, dy, w.shape, s, p, d, g), db]


def _conv_transpose_symbolic(b, node, dys):
    """ConvTranspose(x, W) is the adjoint of Conv(., W): dx = Conv(dy, W) (its length is x's at
    run time: output_padding < stride), and dW is Conv's weight gradient with x and dy swapped."""
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _attrs_nd(b, node, x.rank - 2)
    if any(op >= st for op, st in zip(node.attrs.get("output_padding", [0] * (x.rank - 2)), s)):
        raise DslError("cannot differentiate ConvTranspose with output_padding >= stride on symbolic spatial dims",
                       b.span)
    g = node.attrs.get("group", 1)
    dx = _op(b, "Conv", dy, w, strides=s, pads=p, dilations=d, group=g)
    dx = dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))
    bias = _input(node, 2)
    db = _op(b, "ReduceSum", dy, b.ints([0, *range(2, x.rank)]), keepdims=0) if bias is not None else None
    return [dx, _windows_weight_grad(b, dy, x, w.shape, s, p, d, g), db]


def _bilinear_grad_symbolic(b, x, dy, factors):
    """A_h^T dy A_w for any H, W: the W axis, then (transposed) the H axis."""
    size = _op(b, "Shape", x)
    along_w = _bilinear_grad_last_axis(b, dy, P.slice_axes(b, size, [3], [4], [0]), factors[1])  # [N, C, H*sh, W]
    along_h = _bilinear_grad_last_axis(b, _op(b, "Transpose", along_w, perm=[0, 1, 3, 2]),
                                       P.slice_axes(b, size, [2], [3], [0]), factors[0])  # [N, C, W, H]
    return _op(b, "Reshape", _op(b, "Transpose", along_h, perm=[0, 1, 3, 2]), size)


def _bilinear_grad_last_axis(b, dy, n, s):
    """dy [..., n*s] -> [..., n] (n a run-time [1] i64): per output block of s, its three taps'
    shares (one MatMul), shifted into the padded xe, whose two edge cells fold back onto x's ends."""
    r = dy.rank
    head = P.slice_axes(b, _op(b, "Shape", dy), [0], [r - 1], [0])
    blocks = _op(b, "Reshape", dy, _op(b, "Concat", head, n, b.ints([s]), axis=0))  # [..., n, s]
    taps = _op(b, "MatMul", blocks, _c(b, P.bilinear_taps(s), dy))  # [..., n, 3]
    dxe = None
    for j in range(3):
        part = _op(b, "Squeeze", P.slice_axes(b, taps, [j], [j + 1], [r]), b.ints([r]))
        part = P.pad_or_crop(b, part, {r - 1: (j, 2 - j)})
        dxe = part if dxe is None else _op(b, "Add", dxe, part)
    rest = _op(b, "Sub", n, b.ints([1]))
    first = _op(b, "Pad", P.slice_axes(b, dxe, [0], [1], [r - 1]),
                _op(b, "Concat", b.ints([0] * (2 * r - 1)), rest, axis=0))
    last = _op(b, "Pad", P.slice_axes(b, dxe, [-1], [P.INT64_MAX], [r - 1]),
               _op(b, "Concat", b.ints([0] * (r - 1)), rest, b.ints([0] * r), axis=0))
    inner = P.slice_axes(b, dxe, [1], [-1], [r - 1])
    return _op(b, "Add", _op(b, "Add", inner, first), last)


# ------------------------------------------------------------------ the table
def _resize(b, node, dys):
    """Linear Resize (half_pixel) by integer scales on [N, C, H, W] is y = A_h x A_w^T with
    constant interpolation matrices, so dx = A_h^T dy A_w: two MatMuls, differentiable again."""
    x, dy = node.inputs[0], dys[0]
    mode, coords = node.attrs.get("mode", "nearest"), node.attrs.get("coordinate_transformation_mode", "half_pixel")
    scales = [float(f) for f in np.asarray(node.inputs[2].const).reshape(-1)]
    h, w = x.shape[2], x.shape[3]
    if (mode == "linear" and coords == "half_pixel" and x.rank == 4 and scales[:2] == [1.0, 1.0]
            and P.symbolic_spatial(x)):
        return [_bilinear_grad_symbolic(b, x, dy, [int(f) for f in scales[2:]])]
    if (mode != "linear" or coords != "half_pixel" or x.rank != 4 or scales[:2] != [1.0, 1.0]
            or not isinstance(h, int) or not isinstance(w, int)):
        raise DslError(f"cannot differentiate Resize with mode {mode}, {coords} coordinates, scales {scales} "
                       f"on {x.type}", b.span)
    a_h = P.linear_resize_matrix(h, int(scales[2]))  # [H*sh, H]
    a_w = P.linear_resize_matrix(w, int(scales[3]))  # [W*sw, W]
    rows = _op(b, "MatMul", dy, _c(b, a_w, dy))  # [N, C, H*sh, W]
    return [_op(b, "MatMul", _c(b, a_h.T, dy), rows)]


VJP: dict[str, Rule] = {
    "Identity": lambda b, node, dys: [dys[0]],
    "Neg": lambda b, node, dys: [_op(b, "Neg", dys[0])],
    **{op: _elementwise(d) for op, d in DERIVATIVES.items()},
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Add": lambda b, node, dys: [dys[0], dys[0]],
    "Sub": lambda b, node, dys: [dys[0], _op(b, "Neg", dys[0])],
    "Mul": lambda b, node, dys: [_op(b, "Mul", dys[0], node.inputs[1]),
                                 _op(b, "Mul", dys[0], node.inputs[0])],
    "Div": _div,
    "Pow": _pow,
    "Max": _select("GreaterOrEqual"),
    "Min": _select("LessOrEqual"),
    "Where": _where,
    "Clip": _clip,
    "Cast": _cast,
    "MatMul": _matmul,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "Reshape": _reshape_back,
    "Flatten": _reshape_back,
    "Squeeze": _reshape_back,
    "Unsqueeze": _reshape_back,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Pad": _pad,
    "Resize": _resize,
    "Expand": lambda b, node, dys: [dys[0]],  # the driver sums the broadcast back down
    "ReduceSum": _reduce_sum,
    "ReduceMean": _reduce_mean,
    "ReduceMax": _reduce_extreme,
    "ReduceMin": _reduce_extreme,
    "ReduceProd": _reduce_prod,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "ScatterElements": _scatter("ScatterElements", "GatherElements"),
    "ScatterND": _scatter("ScatterND", "GatherND"),
}
