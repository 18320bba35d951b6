"""The op table: for each IR op, its shape/dtype rule and what it knows at compile time.

One entry per op. `infer(inputs, attrs) -> [TensorType]` checks dtypes and shapes and raises
`ShapeIssue` with a message for people; `fold(node)` records compile-time contents (`const` for
small constants, `sym` for symbolic shape vectors) that later shape rules read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .core import (Dim, Node, ShapeIssue, TensorType, Value, dim_add, dim_ceil_div, dim_factors, dim_mul, dims_differ,
                   dim_sub, dtype_of)

ONNX_DTYPE_CODES = {1: "f32", 11: "f64", 10: "f16", 7: "i64", 6: "i32", 12: "u32", 2: "u8", 9: "bool"}
DTYPE_CODE = {v: k for k, v in ONNX_DTYPE_CODES.items()}


@dataclass(frozen=True)
class OpDef:
    infer: Callable[[list, dict], list[TensorType]]
    fold: Callable[[Node], None] = lambda node: None


OPS: dict[str, OpDef] = {}


MAX_ELEMENTS = 2**40  # no device holds a tensor this large; ONNX's own shape arithmetic overflows later


def infer(op: str, inputs: list, attrs: dict) -> list[TensorType]:
    if op not in OPS:
        raise ShapeIssue(f"internal: no shape rule for op {op}")
    out = OPS[op].infer(inputs, attrs)
    for t in out:
        n = int(np.prod([d for d in t.shape if isinstance(d, int)], dtype=object))
        if n > MAX_ELEMENTS:
            raise ShapeIssue(f"this value would be {t}, {n:,} numbers: more than any device can hold")
    return out


def _register(names, infer_fn, fold_fn=None):
    for n in names.split():
        OPS[n] = OpDef(infer_fn, fold_fn or (lambda node: None))


# ------------------------------------------------------------------ helpers
def _norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:  # a scalar (rank 0) has no axis at all
        raise ShapeIssue(f"{what} {axis} is out of range for a rank-{rank} value")
    return axis % rank


def broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        d = 1
        for x in dims:
            if x == 1 or x == d:
                continue
            if d == 1:
                d = x
            elif isinstance(d, int) and isinstance(x, int):
                raise ShapeIssue("cannot broadcast shapes " + " and ".join(_fmt(s) for s in shapes),
                                 f"dims {d} and {x} differ on axis {i - rank}")
            elif isinstance(x, int):
                d = x  # a symbol meeting a number: the number wins (the symbol must equal it)
            elif dims_differ(d, x):  # 3*N against N: unequal at every N, where N against M may be equal
                raise ShapeIssue("cannot broadcast shapes " + " and ".join(_fmt(s) for s in shapes),
                                 f"dims {d} and {x} differ on axis {i - rank} for every size of their symbols")
        out.append(d)
    return tuple(out)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _const_ints(v: Value | None, what: str) -> list[int]:
    if v is None:
        return []
    if v.const is None:
        raise ShapeIssue(f"{what} must be known at compile time")
    return [int(x) for x in np.asarray(v.const).reshape(-1)]


def _same_float(inputs, opname):
    dts = {v.dtype for v in inputs if v is not None}
    if len(dts) > 1:
        raise ShapeIssue(f"{opname} needs operands of one dtype, got {' and '.join(sorted(dts))}",
                         "use cast(x, f32) to convert", kind="type")


def _numeric(v: Value, opname: str):
    if v.dtype == "bool":  # ONNX arithmetic, comparisons and reductions take no bools
        raise ShapeIssue(f"{opname} needs numbers, got {v.type}", "use cast(x, f32) to convert", kind="type")


def _float_only(v: Value, opname: str):
    if not v.type.is_float:
        raise ShapeIssue(f"{opname} needs a floating-point value, got {v.type}",
                         "use cast(x, f32) to convert", kind="type")


def _fold_numpy(fn):
    """fold rule: evaluate with numpy when every input is a compile-time constant (small tensors)."""
    def fold(node: Node):
        if node.inputs and all(v is not None and v.const is not None for v in node.inputs):
            out = np.asarray(fn(*[v.const for v in node.inputs]), dtype=_np_dtype(node.outputs[0].dtype))
            if out.size <= 4096:
                node.outputs[0].const = out
    return fold


def _np_dtype(name):
    from .core import DTYPES
    return DTYPES[name]


# ------------------------------------------------------------------ elementwise
def _unary(inputs, attrs, opname: str = "this op"):
    _float_only(inputs[0], opname)
    return [inputs[0].type]


def _unary_any(inputs, attrs):
    return [inputs[0].type]


def _unary_numeric(inputs, attrs, opname: str):
    _numeric(inputs[0], opname)
    return [inputs[0].type]


# Each rule names its op in messages: "exp needs a floating-point value, got i64[N]".
for _name in "Exp Log Sqrt Relu Sigmoid Tanh Softplus Erf Reciprocal Floor Ceil LeakyRelu Elu Gelu Sin Cos".split():
    _register(_name, lambda i, a, _op=_name.lower(): _unary(i, a, _op))
for _name, _word in {"Neg": "negation", "Abs": "abs", "Sign": "sign"}.items():
    _register(_name, lambda i, a, _op=_word: _unary_numeric(i, a, _op))
for _name in "Tan Atan Round".split():
    _register(_name, lambda i, a, _op=_name.lower(): _unary(i, a, _op))


def _fold_identity(node: Node):
    src = node.inputs[0]
    node.outputs[0].const, node.outputs[0].sym = src.const, src.sym


_register("Identity StopGradient", _unary_any, _fold_identity)
_register("Not", lambda i, a: [TensorType("bool", i[0].shape)])


def _softmax(inputs, attrs):
    _float_only(inputs[0], "softmax")
    _norm_axis(attrs.get("axis", -1), inputs[0].rank)
    return [inputs[0].type]


_register("Softmax LogSoftmax", _softmax)


def _binary(inputs, attrs):
    a, b = inputs
    _same_float(inputs, "arithmetic")
    _numeric(a, "arithmetic")
    return [TensorType(a.dtype, broadcast(a.shape, b.shape))]


_NP_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}
_DIM_ARITHMETIC = {"Add": dim_add, "Sub": dim_sub, "Mul": dim_mul}


def _dims_of(v: Value):
    """The dims an i64 value holds, when known: its symbolic contents or its constant."""
    if v.sym is not None:
        return v.sym
    if v.const is not None and v.dtype == "i64" and v.const.size <= 8:
        return tuple(int(x) for x in v.const.reshape(-1))
    return None


def _fold_binary(op: str):
    """Constants fold with numpy; dims fold symbolically (2 * N is the dim `2*N` of a shape)."""
    numeric = _fold_numpy(_NP_BINARY[op])

    def fold(node: Node):
        numeric(node)
        a, b = (_dims_of(v) for v in node.inputs)
        if op in _DIM_ARITHMETIC and a is not None and b is not None and len(a) == len(b) and node.outputs[0].rank <= 1:
            node.outputs[0].sym = tuple(_DIM_ARITHMETIC[op](x, y) for x, y in zip(a, b))
    return fold


for _name in _NP_BINARY:
    _register(_name, _binary, _fold_binary(_name))
_register("Div", _binary, _fold_numpy(lambda a, b: a // b if a.dtype.kind == "i" else a / b))
def _pow(inputs, attrs):
    for v in inputs:
        _numeric(v, "`^` (`**`)")
    return [TensorType(inputs[0].dtype, broadcast(inputs[0].shape, inputs[1].shape))]


_register("Pow", _pow)


def _logic(inputs, attrs):
    for v in inputs:
        if v.dtype != "bool":
            raise ShapeIssue(f"logical ops need bool values, got {v.type}", kind="type")
    return [TensorType("bool", broadcast(*(v.shape for v in inputs)))]


_register("And Or", _logic)


def _compare(inputs, attrs, ordered: bool = False):
    _same_float(inputs, "comparison")
    if ordered:  # bools have `==` but no order
        _numeric(inputs[0], "comparison")
    return [TensorType("bool", broadcast(inputs[0].shape, inputs[1].shape))]


_register("Equal", _compare)
_register("Less Greater LessOrEqual GreaterOrEqual", lambda i, a: _compare(i, a, ordered=True))


def _where(inputs, attrs):
    c, a, b = inputs
    if c.dtype != "bool":
        raise ShapeIssue(f"where() needs a bool condition, got {c.type}", "compare values, e.g. x > 0",
                         kind="type")
    _same_float([a, b], "where")
    return [TensorType(a.dtype, broadcast(c.shape, a.shape, b.shape))]


_register("Where", _where)


def _clip(inputs, attrs):
    _same_float([v for v in inputs if v is not None], "clip")
    _numeric(inputs[0], "clip")
    return [inputs[0].type]


_register("Clip", _clip)


def _cast(inputs, attrs):
    return [TensorType(ONNX_DTYPE_CODES[attrs["to"]], inputs[0].shape)]


def _fold_cast(node: Node):
    src = node.inputs[0]
    if src.const is not None:
        node.outputs[0].const = src.const.astype(_np_dtype(node.outputs[0].dtype))
    node.outputs[0].sym = src.sym


_register("Cast", _cast, _fold_cast)


# ------------------------------------------------------------------ linear algebra
def _matmul(inputs, attrs):
    a, b = inputs
    _same_float(inputs, "matmul (@)")
    _numeric(a, "matmul (@)")
    if a.rank < 2 or b.rank < 2:
        raise ShapeIssue(f"matmul needs values of rank 2 or more, got {a.type} @ {b.type}")
    k1, k2 = a.shape[-1], b.shape[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ShapeIssue(f"matmul inner dims differ: {a.type} @ {b.type} ({k1} != {k2})",
                         "the left operand's last dim must equal the right one's second-to-last")
    batch = broadcast(a.shape[:-2], b.shape[:-2])
    return [TensorType(a.dtype, batch + (a.shape[-2], b.shape[-1]))]


_register("MatMul", _matmul)


# ------------------------------------------------------------------ convolution and pooling
def _spatial_out(size: Dim, k: int, s: int, d: int, p0: int, p1: int, transpose=False, out_pad=0,
                 what: str = "the window", x: Value | None = None) -> Dim:
    if not isinstance(size, int):
        return _symbolic_spatial_out(size, k, s, d, p0 + p1, transpose, out_pad)
    if transpose:
        return s * (size - 1) + out_pad + (k - 1) * d + 1 - p0 - p1
    out = (size + p0 + p1 - (k - 1) * d - 1) // s + 1
    if out < 1:
        padded = f" padded by {p0 + p1}" if p0 + p1 else ""
        raise ShapeIssue(f"{what} ({(k - 1) * d + 1} wide) is larger than its input "
                         f"{x.type if x else size}{padded}",
                         "use padding=same or a smaller window, or shrink the input less before it")
    return out


def _symbolic_spatial_out(size: str, k: int, s: int, d: int, pads: int, transpose: bool, out_pad: int) -> Dim:
    """A symbolic H or W: ceil((H + pads - (k-1)*d) / s) written exactly as the Slice rule writes
    the length of the strided window slice that the gradients take (H+2-2 cancels to H, so `same`
    at stride 1 gives H back); transposed: s*H + the constant the static formula adds."""
    if transpose:
        return dim_add(dim_mul(s, size), out_pad + (k - 1) * d + 1 - pads - s)
    span = dim_add(size, pads - (k - 1) * d)
    return dim_ceil_div(span, s)


def _window(x: Value, attrs, kernel):
    nsp = x.rank - 2
    strides = attrs.get("strides", [1] * nsp)
    dil = attrs.get("dilations", [1] * nsp)
    pads = attrs.get("pads", [0] * 2 * nsp)
    return strides, dil, pads


def _conv(inputs, attrs):
    x, w = inputs[0], inputs[1]
    name = "conv3d" if w.rank == 5 else "conv2d"  # (conv1d runs as conv2d)
    _same_float([x, w], name)
    if x.rank not in (4, 5) or x.rank != w.rank:
        layout = "[N, C, D, H, W]" if w.rank == 5 else "[N, C, H, W]"
        raise ShapeIssue(f"{name} expects a rank-{w.rank} value {layout}, got {x.type}",
                         f"reshape the input to {layout} (channels first)")
    g = attrs.get("group", 1)
    cin = x.shape[1]
    if isinstance(cin, int) and cin != w.shape[1] * g:
        raise ShapeIssue(f"{name} input has {cin} channels, the weight expects {w.shape[1] * g}")
    strides, dil, pads = _window(x, attrs, w.shape[2:])
    n = x.rank - 2
    sp = [_spatial_out(x.shape[2 + i], w.shape[2 + i], strides[i], dil[i], pads[i], pads[i + n],
                       what=f"{name}'s kernel", x=x) for i in range(n)]
    return [TensorType(x.dtype, (x.shape[0], w.shape[0], *sp))]


def _conv_transpose(inputs, attrs):
    x, w = inputs[0], inputs[1]
    _same_float([x, w], "conv2d_transpose")
    if x.rank != 4:
        raise ShapeIssue(f"conv2d_transpose expects a rank-4 value [N, C, H, W], got {x.type}")
    g = attrs.get("group", 1)
    if isinstance(x.shape[1], int) and x.shape[1] != w.shape[0]:
        raise ShapeIssue(f"conv2d_transpose input has {x.shape[1]} channels, the weight expects {w.shape[0]}")
    strides, dil, pads = _window(x, attrs, w.shape[2:])
    op = attrs.get("output_padding", [0, 0])
    sp = [_spatial_out(x.shape[2 + i], w.shape[2 + i], strides[i], dil[i], pads[i], pads[i + 2], True, op[i])
          for i in range(2)]
    return [TensorType(x.dtype, (x.shape[0], w.shape[1] * g, *sp))]


_register("Conv", _conv)
_register("ConvTranspose", _conv_transpose)


def _pool(inputs, attrs):
    """MaxPool / AveragePool on [N, C, spatial...] with 1 to 3 spatial axes (pooling 1-D and 3-D)."""
    x = inputs[0]
    _float_only(x, "pooling")
    k = attrs["kernel_shape"]
    if x.rank not in (3, 4, 5) or len(k) != x.rank - 2:
        raise ShapeIssue(f"pooling with a {len(k)}-D window expects a rank-{len(k) + 2} value, got {x.type}")
    strides, dil, pads = _window(x, attrs, k)
    n = len(k)
    sp = [_spatial_out(x.shape[2 + i], k[i], strides[i], dil[i], pads[i], pads[i + n], what="the pooling window",
                       x=x) for i in range(n)]
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *sp))]


_register("MaxPool AveragePool", _pool)


def _global_pool(inputs, attrs):
    x = inputs[0]
    if x.rank < 3:
        raise ShapeIssue(f"global average pooling expects [N, C, spatial...], got {x.type}")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *[1] * (x.rank - 2)))]


_register("GlobalAveragePool", _global_pool)


# ------------------------------------------------------------------ shape manipulation
def _numel(shape) -> Dim:
    n: Dim = 1
    for d in shape:
        n = dim_mul(n, d)
    return n


def _reshape(inputs, attrs):
    x, s = inputs
    target = s.sym if s.sym is not None else None
    if target is None:
        raise ShapeIssue("reshape needs a target shape known at compile time")
    out = []
    for i, d in enumerate(target):
        if d == 0 and i >= x.rank or isinstance(d, int) and d < -1:
            raise ShapeIssue(f"cannot reshape {_fmt(x.shape)} to {_fmt(target)}",
                             "give each dim as a positive size, -1 for the one to infer, or 0 to keep the input's")
        out.append(x.shape[i] if d == 0 else d)
    if out.count(-1) > 1:
        raise ShapeIssue("reshape allows at most one -1")
    if -1 in out:
        known = _numel([d for d in out if d != -1])
        total = _numel(x.shape)
        if isinstance(known, int) and isinstance(total, int):
            if known == 0 or total % known:
                raise ShapeIssue(f"cannot reshape {_fmt(x.shape)} ({total} elements) to {_fmt(target)}")
            out[out.index(-1)] = total // known
        else:
            out[out.index(-1)] = _div_dims(x.shape, [d for d in out if d != -1], target)
    else:
        a, b = _numel(x.shape), _numel(out)
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise ShapeIssue(f"cannot reshape {_fmt(x.shape)} ({a} elements) to {_fmt(out)} ({b} elements)")
    return [TensorType(x.dtype, tuple(out))]


def _div_dims(total: tuple, known: list, target) -> Dim:
    """Symbolic total / known, cancelling common factors (the usual case: [N, 64, 7, 7] -> [N, -1];
    also [N*49, 192] -> [-1, 7, 7, 192])."""
    rest = [f for d in total for f in dim_factors(d)]
    known = [f for d in known for f in dim_factors(d)]
    for d in [d for d in known if not isinstance(d, int)]:
        if d not in rest:
            return f"?{id(known) % 997}"  # a symbol the input lacks: the size is unknown until run time
        rest.remove(d)
    static = int(np.prod([d for d in rest if isinstance(d, int)]))
    divisor = int(np.prod([d for d in known if isinstance(d, int)]))
    if divisor == 0 or static % divisor:
        raise ShapeIssue(f"cannot reshape {_fmt(total)} to {_fmt(target)}: {_numel(total)} elements do not "
                         f"split into blocks of {divisor}",
                         "the dims other than -1 must multiply to a divisor of the element count")
    return _numel([d for d in rest if not isinstance(d, int)] + [static // divisor])


_register("Reshape", _reshape)


def _flatten(inputs, attrs):
    x = inputs[0]
    axis = _norm_axis(attrs.get("axis", 1), x.rank + 1)
    return [TensorType(x.dtype, (_numel(x.shape[:axis]), _numel(x.shape[axis:])))]


_register("Flatten", _flatten)


def _transpose(inputs, attrs):
    x = inputs[0]
    perm = attrs.get("perm", list(range(x.rank))[::-1])
    if sorted(perm) != list(range(x.rank)):
        raise ShapeIssue(f"transpose perm {perm} does not fit rank {x.rank}")
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


_register("Transpose", _transpose)


def _concat(inputs, attrs):
    _same_float(inputs, "concat")
    r = inputs[0].rank
    for v in inputs:
        if v.rank != r:
            raise ShapeIssue(f"concat needs values of one rank, got {' and '.join(str(v.type) for v in inputs)}")
    axis = _norm_axis(attrs["axis"], r)
    out = list(inputs[0].shape)
    total: Dim = 0
    for v in inputs:
        for i in range(r):
            if i != axis and isinstance(v.shape[i], int) and isinstance(out[i], int) and v.shape[i] != out[i]:
                raise ShapeIssue(f"concat along axis {attrs['axis']}: dims differ on axis {i} "
                                 f"({' and '.join(str(v.type) for v in inputs)})")
        total = dim_add(total, v.shape[axis])
    out[axis] = total
    return [TensorType(inputs[0].dtype, tuple(out))]


def _fold_concat(node: Node):
    if all(v.sym is not None for v in node.inputs):
        node.outputs[0].sym = tuple(d for v in node.inputs for d in v.sym)
    if all(v.const is not None for v in node.inputs):
        node.outputs[0].const = np.concatenate([v.const for v in node.inputs], axis=node.attrs["axis"])


_register("Concat", _concat, _fold_concat)


def _split(inputs, attrs):
    x = inputs[0]
    axis = _norm_axis(attrs.get("axis", 0), x.rank)
    sizes = inputs[1].sym if len(inputs) > 1 and inputs[1] is not None else None
    if sizes is None:
        raise ShapeIssue("split sizes must be known at compile time")
    outs = []
    for s in sizes:
        shape = list(x.shape)
        shape[axis] = s
        outs.append(TensorType(x.dtype, tuple(shape)))
    return outs


_register("Split", _split)


def _slice_params(x: Value, inputs):
    """Starts and ends hold ints, or dims (symbols such as "N-1") for bounds known only at run time;
    axes and steps are constants."""
    starts, ends = _bounds(inputs[1]), _bounds(inputs[2])
    axes = _const_ints(inputs[3], "slice axes") if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _const_ints(inputs[4], "slice steps") if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    return starts, ends, [_norm_axis(a, x.rank) for a in axes], steps


def _bounds(v: Value) -> list:
    if v.const is not None:
        return [int(b) for b in np.asarray(v.const).reshape(-1)]
    if v.sym is not None:
        return list(v.sym)
    if v.rank != 1 or not isinstance(v.shape[0], int):
        raise ShapeIssue("slice bounds must be a list of integers")
    return [f"{v.name}[{i}]" for i in range(v.shape[0])]  # unknown until run time: named after its source


BIG = 2**62  # a bound past this means "to the end" (INT64_MAX, or INT64_MIN for a negative step)


def _slice_len(dim: Dim, start: Dim, end: Dim, step: int) -> Dim:
    """len(range(start, end, step)) after clamping to the axis; bounds and dims may be symbolic (a
    symbolic bound is taken to lie inside the axis)."""
    if isinstance(dim, int) and isinstance(start, int) and isinstance(end, int):
        return len(range(*slice(start, end, step).indices(dim)))
    lo, hi = (0, dim) if step > 0 else (-1, dim_add(dim, -1))
    first, last = (_clamp(dim, b, lo, hi) for b in (start, end))
    span = dim_sub(last, first) if step > 0 else dim_sub(first, last)
    if isinstance(span, int):
        return max(0, -(-span // abs(step)))
    return dim_ceil_div(span, abs(step))


def _clamp(dim: Dim, bound: Dim, lo: Dim, hi: Dim) -> Dim:
    if not isinstance(bound, int):
        return bound
    if bound >= BIG:
        return hi
    if bound <= -BIG:
        return lo
    b = dim_add(dim, bound) if bound < 0 else bound
    if isinstance(b, int) and isinstance(lo, int) and b < lo:
        return lo
    return min(b, hi) if isinstance(b, int) and isinstance(hi, int) else b


def _slice(inputs, attrs):
    x = inputs[0]
    starts, ends, axes, steps = _slice_params(x, inputs)
    shape = list(x.shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ShapeIssue("slice step cannot be zero")
        shape[a] = _slice_len(shape[a], s, e, st)
        if shape[a] == 0:
            raise ShapeIssue(f"slice [{s}:{e}] of axis {a} (size {x.shape[a]}) is empty")
    return [TensorType(x.dtype, tuple(shape))]


def _fold_slice(node: Node):
    x = node.inputs[0]
    if any(v is not None and v.const is None for v in node.inputs[1:]):
        return  # bounds known only at run time
    if x.sym is not None and x.rank == 1:
        starts, ends, axes, steps = _slice_params(x, node.inputs)
        node.outputs[0].sym = tuple(x.sym[slice(starts[0], ends[0], steps[0])])
    if x.const is not None:
        starts, ends, axes, steps = _slice_params(x, node.inputs)
        idx = [slice(None)] * x.rank
        for s, e, a, st in zip(starts, ends, axes, steps):
            idx[a] = slice(s, e, st)
        node.outputs[0].const = x.const[tuple(idx)]


_register("Slice", _slice, _fold_slice)


def _pad(inputs, attrs):
    x = inputs[0]
    pads = _bounds(inputs[1])  # widths known only at run time (a gradient's) are symbols
    r = x.rank
    if len(pads) != 2 * r:
        raise ShapeIssue(f"pad needs {2 * r} widths for a rank-{r} value, got {len(pads)}")
    shape = tuple(dim_add(dim_add(d, pads[i]), pads[i + r]) if (pads[i] or pads[i + r]) else d
                  for i, d in enumerate(x.shape))
    return [TensorType(x.dtype, shape)]


_register("Pad", _pad)


def _squeeze(inputs, attrs):
    x = inputs[0]
    axes = [_norm_axis(a, x.rank) for a in _const_ints(inputs[1], "squeeze axes")]
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeIssue(f"cannot squeeze axis {a} of size {x.shape[a]}")
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


def _unsqueeze(inputs, attrs):
    x = inputs[0]
    axes = _const_ints(inputs[1], "unsqueeze axes")
    r = x.rank + len(axes)
    axes = sorted(_norm_axis(a, r) for a in axes)
    shape, it = [], iter(x.shape)
    for i in range(r):
        shape.append(1 if i in axes else next(it))
    return [TensorType(x.dtype, tuple(shape))]


def _fold_unsqueeze(node: Node):
    x = node.inputs[0]
    if x.const is not None:
        node.outputs[0].const = x.const.reshape([d for d in node.outputs[0].shape])
    if x.rank == 0 and x.const is not None and x.dtype == "i64":  # a size, on its way into a shape
        node.outputs[0].sym = (int(x.const),)
    elif x.rank == 0 and x.sym is not None:  # a dim such as N, on its way into a shape vector
        node.outputs[0].sym = x.sym


def _fold_squeeze(node: Node):
    x = node.inputs[0]
    if x.const is not None:
        node.outputs[0].const = x.const.reshape([d for d in node.outputs[0].shape])
    if x.sym is not None and len(x.sym) == 1:
        node.outputs[0].sym = x.sym


_register("Squeeze", _squeeze, _fold_squeeze)
_register("Unsqueeze", _unsqueeze, _fold_unsqueeze)


def _expand(inputs, attrs):
    x, s = inputs
    if s.sym is None:
        raise ShapeIssue("expand needs a target shape known at compile time")
    return [TensorType(x.dtype, broadcast(x.shape, tuple(s.sym)))]


_register("Expand", _expand)


def _resize(inputs, attrs):
    """Resize by constant integer scales (the one form dslc emits: upsample2d's bilinear mode)."""
    x, scales = inputs[0], inputs[2] if len(inputs) > 2 else None
    if scales is None or scales.const is None:
        raise ShapeIssue("internal: Resize needs constant scales")
    factors = [float(f) for f in np.asarray(scales.const).reshape(-1)]
    if len(factors) != x.rank or any(f != int(f) or f < 1 for f in factors):
        raise ShapeIssue(f"internal: Resize scales {factors} must be positive integers, one per axis of {x.type}")
    return [TensorType(x.dtype, tuple(dim_mul(d, int(f)) if f != 1 else d for d, f in zip(x.shape, factors)))]


_register("Resize", _resize)


# ------------------------------------------------------------------ reductions
def _reduce(inputs, attrs):
    x = inputs[0]
    _numeric(x, "a reduction")
    axes = _const_ints(inputs[1], "reduction axes") if len(inputs) > 1 else []
    axes = [_norm_axis(a, x.rank) for a in axes] if axes else list(range(x.rank))
    if attrs.get("keepdims", 1):
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [TensorType(x.dtype, shape)]


_register("ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd", _reduce)


def _layer_normalization(inputs, attrs):
    """Y like x; Mean and InvStdDev with the normalized axes [axis, rank) kept as 1 (float32 stash)."""
    x = inputs[0]
    _float_only(x, "layer normalization")
    axis = _norm_axis(attrs.get("axis", -1), x.rank)
    stats = TensorType(x.dtype, tuple(1 if i >= axis else d for i, d in enumerate(x.shape)))
    return [x.type, stats, stats]


_register("LayerNormalization", _layer_normalization)


def _argmax(inputs, attrs):
    x = inputs[0]
    _numeric(x, "argmax")
    axis = _norm_axis(attrs.get("axis", 0), x.rank)
    if attrs.get("keepdims", 1):
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [TensorType("i64", shape)]


_register("ArgMax ArgMin", _argmax)


# ------------------------------------------------------------------ indexing
def _gather(inputs, attrs):
    data, idx = inputs
    if idx.dtype not in ("i64", "i32"):
        raise ShapeIssue(f"indices must be integers, got {idx.type}", "use cast(i, i64)", kind="type")
    axis = _norm_axis(attrs.get("axis", 0), data.rank)
    return [TensorType(data.dtype, data.shape[:axis] + idx.shape + data.shape[axis + 1:])]


def _fold_gather(node: Node):
    data, idx = node.inputs
    if data.sym is not None and idx.const is not None:
        picked = np.asarray(np.asarray(data.sym, dtype=object)[idx.const], dtype=object)  # a scalar index: 0-d
        node.outputs[0].sym = tuple(picked.reshape(-1)) if picked.ndim else (picked.item(),)
    if data.const is not None and idx.const is not None:
        node.outputs[0].const = np.take(data.const, idx.const, axis=node.attrs.get("axis", 0))


_register("Gather", _gather, _fold_gather)
_register("GatherElements", lambda i, a: [TensorType(i[0].dtype, i[1].shape)])
_register("ScatterElements ScatterND", lambda i, a: [i[0].type])


def _gather_nd(inputs, attrs):
    data, idx = inputs
    k = idx.shape[-1]
    if not isinstance(k, int):
        raise ShapeIssue("gather_nd needs a static last index dim")
    return [TensorType(data.dtype, idx.shape[:-1] + data.shape[k:])]


_register("GatherND", _gather_nd)


def _one_hot(inputs, attrs):
    idx, depth, values = inputs
    if idx.rank == 0:  # ONNX OneHot wants at least one axis of indices
        raise ShapeIssue(f"one_hot needs indices of rank 1 or more, got {idx.type}")
    d = _const_ints(depth, "one_hot depth")[0]
    axis = attrs.get("axis", -1)
    shape = list(idx.shape)
    shape.insert(axis % (idx.rank + 1) if axis < 0 else axis, d)
    if axis == -1:
        shape = list(idx.shape) + [d]
    return [TensorType(values.dtype, tuple(shape))]


_register("OneHot", _one_hot)


# ------------------------------------------------------------------ shapes, constants, random
def _shape(inputs, attrs):
    return [TensorType("i64", (inputs[0].rank,))]


def _fold_shape(node: Node):
    x = node.inputs[0]
    node.outputs[0].sym = tuple(x.shape)
    if x.type.static():
        node.outputs[0].const = np.asarray(x.shape, dtype=np.int64)


_register("Shape", _shape, _fold_shape)


def _fold_size(node: Node):
    x = node.inputs[0]
    node.outputs[0].sym = (_numel(x.shape),)
    if x.type.static():
        node.outputs[0].const = np.asarray(int(np.prod(x.shape)), dtype=np.int64)


_register("Size", lambda i, a: [TensorType("i64", ())], _fold_size)


# ------------------------------------------------------------------ integers (the counter-based random generator)
def _bitwise(inputs, attrs):
    a, b = inputs
    if a.dtype != b.dtype or a.dtype not in ("u32", "i64", "i32", "u8"):
        raise ShapeIssue(f"bitwise ops need integers of one dtype, got {a.type} and {b.type}", kind="type")
    return [TensorType(a.dtype, broadcast(a.shape, b.shape))]


_register("BitwiseXor BitwiseAnd BitwiseOr BitShift", _bitwise)


def _range(inputs, attrs):
    start, limit, delta = inputs
    if start.rank or limit.rank or delta.rank:
        raise ShapeIssue("range takes scalars")
    # Range(0, n, 1) is the only form dslc emits: its length is n (a symbol when n comes from a shape).
    n = limit.sym[0] if limit.sym is not None else limit.const.item() if limit.const is not None else "range"
    return [TensorType(start.dtype, (n,))]


_register("Range", _range)


def _constant(inputs, attrs):
    v = attrs["value"]
    return [TensorType(dtype_of(v), tuple(v.shape))]


def _fold_constant(node: Node):
    v = node.attrs["value"]
    node.outputs[0].const = v
    if v.ndim == 1 and v.dtype == np.int64:
        node.outputs[0].sym = tuple(int(x) for x in v)


_register("Constant", _constant, _fold_constant)


def _constant_of_shape(inputs, attrs):
    s = inputs[0]
    if s.sym is None:
        raise ShapeIssue("the shape must be known at compile time")
    v = attrs.get("value", np.zeros(1, np.float32))
    return [TensorType(dtype_of(v), tuple(s.sym))]


_register("ConstantOfShape", _constant_of_shape)


def _random_like(inputs, attrs):
    x = inputs[0]
    dtype = ONNX_DTYPE_CODES[attrs["dtype"]] if "dtype" in attrs else x.dtype
    return [TensorType(dtype, x.shape)]


_register("RandomNormalLike RandomUniformLike", _random_like)
_register("RandomNormal RandomUniform",
          lambda i, a: [TensorType(ONNX_DTYPE_CODES[a.get("dtype", 1)], tuple(a["shape"]))])


def _loop(inputs, attrs):
    body = attrs["body"]
    # body: (iter, cond, carried...) -> (cond, carried..., scan outputs...); a scan output stacks
    # one value per pass
    n_carried = len(inputs) - 2
    passes = _trip_dim(inputs[0])
    return ([v.type for v in body.outputs[1:1 + n_carried]] +
            [TensorType(v.dtype, (passes,) + v.shape) for v in body.outputs[1 + n_carried:]])


def _trip_dim(trip: Value | None) -> Dim:
    if trip is not None and trip.const is not None:
        return int(trip.const)
    if trip is not None and trip.sym is not None and len(trip.sym) == 1:
        return trip.sym[0]
    return f"passes({trip.name if trip is not None else ''})"


_register("Loop", _loop)
