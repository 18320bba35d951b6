"""Emission for an older opset or for one runtime: rewrites of the IR just before it is emitted.

The IR speaks ONNX opset 21, and the default emission stays so. `opset=17` (`dslc compile --opset 17`)
rewrites every op whose opset-21 form is newer, or that converters such as onnx2torch (opset <= 17)
lack, into opset-17 ops that compute the same numbers: one entry per op in OPSET17. The counter-based
random generator's uint32 hash (BitwiseXor is opset 18) becomes the same hash in int64 arithmetic, so
random graphs draw the very same numbers. Every emission writes ConstantOfShape of a computed shape as
an Expand (DEFAULT_RULES: tract reads ConstantOfShape's shape at load time). `target_runtime`
(`--target-runtime NAME`) picks the opset and the rewrites a runtime needs (RUNTIMES): tract and
onnx2torch have no Loop, so constant-count loops are unrolled;
onnx2torch builds a Conv only from an initializer kernel (api.compile hoists constant kernels);
OpenVINO gets a convolution's input gradient as a Conv rather than a ConvTranspose.

These rewrites run last (after the op table's checks and the optimizing passes): the op table types
opset-21 ops, so the new nodes are typed here, by hand.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from ..diagnostics import DslError
from ..ir.core import DTYPES, Dim, Graph, Node, TensorType, Value, dim_add, dim_mul, dtype_of
from ..ir.ops import DTYPE_CODE
from ..ir.patterns import flipped_conv_pads

DEFAULT_OPSET = 21
OPSETS = (17, 21)
U32 = 2 ** 32
_BITS = np.asarray([1 << k for k in range(32)], np.int64)  # the bit weights of a uint32, low to high


class _Sub:
    """The replacement of one node: new nodes, each typed by hand."""

    def __init__(self, node: Node, names: itertools.count):
        self.node, self.names, self.nodes = node, names, []

    def op(self, op: str, inputs, attrs=None, dtype: str | None = None, shape=None, out: Value | None = None):
        k = next(self.names)
        v = out or Value(f"{self.node.name}/{op.lower()}_p{k}", TensorType(dtype, tuple(shape)))
        n = Node(op, list(inputs), [v], dict(attrs or {}), self.node.span, name=f"{self.node.name}/{op}_p{k}")
        v.producer = n
        self.nodes.append(n)
        return v

    def const(self, array) -> Value:
        array = np.asarray(array)
        return self.op("Constant", [], {"value": array}, dtype_of(array), array.shape)

    def i64(self, x) -> Value:
        return self.const(np.asarray(x, np.int64))


Rule = Callable[[_Sub, Node], bool]  # True: the node is replaced by sub.nodes (which define its outputs)


# ------------------------------------------------------------------ the uint32 hash in int64
# Each uint32 value becomes an int64 in [0, 2^32): products split so that none passes 2^63.
def _was_u32(n: Node) -> bool:
    return n.outputs[0].dtype == "u32"


def _wrap(s: _Sub, x: Value, out: Value) -> Value:
    return s.op("Mod", [x, s.i64(U32)], out=out)


def _u32_constant_as(dtype: str) -> Rule:
    """uint32 constants as `dtype` (i64: the same value; i32: the same bits). The rule also tells
    rewrite() what the graph's other uint32 values become."""
    def rule(s: _Sub, n: Node) -> bool:
        value = n.attrs["value"]
        if value.dtype != np.uint32:
            return False
        wide = value.astype(np.int64) if dtype == "i64" else value.view(np.int32)
        s.op("Constant", [], {"value": wide}, out=n.outputs[0])
        return True
    rule.u32_as = dtype
    return rule


def _u32_cast(s: _Sub, n: Node) -> bool:
    if not _was_u32(n):
        return False
    _wrap(s, n.inputs[0], n.outputs[0])  # i64 -> u32 keeps the low 32 bits; Mod by 2^32 (sign of divisor)
    return True


def _u32_add(s: _Sub, n: Node) -> bool:
    if not _was_u32(n):
        return False
    out = n.outputs[0]
    _wrap(s, s.op("Add", n.inputs, dtype="i64", shape=out.shape), out)
    return True


def _u32_mul(s: _Sub, n: Node) -> bool:
    """x * y mod 2^32 = (x * lo + (x * hi mod 2^16) * 2^16) mod 2^32 with y = hi * 2^16 + lo."""
    if not _was_u32(n):
        return False
    x, y = n.inputs
    if x.const is not None and y.const is None:
        x, y = y, x
    out = n.outputs[0]
    if y.const is not None:
        lo, hi = s.i64(np.asarray(y.const, np.int64) % 2 ** 16), s.i64(np.asarray(y.const, np.int64) >> 16)
    else:
        lo = s.op("Mod", [y, s.i64(2 ** 16)], dtype="i64", shape=y.shape)
        hi = s.op("Div", [y, s.i64(2 ** 16)], dtype="i64", shape=y.shape)
    low = s.op("Mul", [x, lo], dtype="i64", shape=out.shape)
    high = s.op("Mod", [s.op("Mul", [x, hi], dtype="i64", shape=out.shape), s.i64(2 ** 16)], dtype="i64",
                shape=out.shape)
    high = s.op("Mul", [high, s.i64(2 ** 16)], dtype="i64", shape=out.shape)
    _wrap(s, s.op("Add", [low, high], dtype="i64", shape=out.shape), out)
    return True


def _bit_shift(s: _Sub, n: Node) -> bool:
    x, k = n.inputs
    out = n.outputs[0]
    if not _was_u32(n) or k.const is None:
        return False
    scale = s.i64(np.left_shift(np.int64(1), np.asarray(k.const, np.int64)))
    if n.attrs.get("direction") == "RIGHT":
        s.op("Div", [x, scale], out=out)  # non-negative: truncation is the floor
    else:
        _wrap(s, s.op("Mul", [x, scale], dtype="i64", shape=out.shape), out)
    return True


def _bitwise_xor(s: _Sub, n: Node) -> bool:
    """a ^ b through the 32 bits of each: sum_k ((bit_k(a) + bit_k(b)) mod 2) * 2^k."""
    out = n.outputs[0]
    weights = s.i64(_BITS)
    bits = []
    for v in n.inputs:
        wide = s.op("Unsqueeze", [v, s.i64([-1])], dtype="i64", shape=v.shape + (1,))
        bits.append(s.op("Mod", [s.op("Div", [wide, weights], dtype="i64", shape=v.shape + (32,)), s.i64(2)],
                         dtype="i64", shape=v.shape + (32,)))
    total = s.op("Add", bits, dtype="i64", shape=out.shape + (32,))
    differ = s.op("Mod", [total, s.i64(2)], dtype="i64", shape=out.shape + (32,))
    s.op("ReduceSum", [s.op("Mul", [differ, weights], dtype="i64", shape=out.shape + (32,)), s.i64([-1])],
         {"keepdims": 0}, out=out)
    return True


# ------------------------------------------------------------------ the uint32 hash in int32 (OpenVINO)
# OpenVINO's CPU plugin saturates uint32 and its int32 Div and ReduceSum are inexact (as if in float32),
# but its int32 Mul, Add, BitwiseXor/And/Or wrap exactly: the hash runs there as int32 with the same bits,
# the right shifts made of masks and selects.
def _i32_cast(s: _Sub, n: Node) -> bool:
    if not _was_u32(n):
        return False
    s.op("Cast", n.inputs, {"to": DTYPE_CODE["i32"]}, out=n.outputs[0])  # counters below 2^31 stay exact
    return True


def _i32_shift_right(s: _Sub, n: Node) -> bool:
    """x >>> k as the OR of bit j (a mask and a select) moved to j - k, for j = k..31, OR-ed in a tree."""
    x, k = n.inputs
    out = n.outputs[0]
    if not _was_u32(n) or k.const is None or n.attrs.get("direction") != "RIGHT":
        return False
    k = int(k.const)
    masks = np.asarray([1 << j for j in range(k, 32)], np.uint32).view(np.int32)
    moved = np.asarray([1 << (j - k) for j in range(k, 32)], np.uint32).view(np.int32)
    wide = x.shape + (len(masks),)
    bits = s.op("BitwiseAnd", [s.op("Unsqueeze", [x, s.i64([-1])], dtype="i32", shape=x.shape + (1,)),
                               s.const(masks)], dtype="i32", shape=wide)
    off = s.op("Equal", [bits, s.const(np.zeros((), np.int32))], dtype="bool", shape=wide)
    parts = s.op("Where", [off, s.const(np.zeros((), np.int32)), s.const(moved)], dtype="i32", shape=wide)
    width = len(masks)
    while width > 1:  # pad to even, then OR the halves
        half = (width + 1) // 2
        lo = s.op("Slice", [parts, s.i64([0]), s.i64([half]), s.i64([-1])], dtype="i32", shape=x.shape + (half,))
        hi = s.op("Slice", [parts, s.i64([half]), s.i64([width]), s.i64([-1])], dtype="i32",
                  shape=x.shape + (width - half,))
        if width - half < half:
            hi = s.op("Concat", [hi, s.op("Slice", [lo, s.i64([0]), s.i64([1]), s.i64([-1])], dtype="i32",
                                         shape=x.shape + (1,))], {"axis": -1}, dtype="i32", shape=x.shape + (half,))
        parts = s.op("BitwiseOr", [lo, hi], dtype="i32", shape=x.shape + (half,))
        width = half
    s.op("Squeeze", [parts, s.i64([-1])], out=out)
    return True


# ------------------------------------------------------------------ ops newer than opset 17, or that converters lack
def _axes_attribute(s: _Sub, n: Node) -> bool:
    """ReduceMean/Max/Min/Prod take their axes as an input from opset 18, as an attribute before."""
    if len(n.inputs) < 2 or n.inputs[1] is None:
        return False
    axes = [int(a) for a in np.asarray(n.inputs[1].const).reshape(-1)]
    s.op(n.op, [n.inputs[0]], {**n.attrs, "axes": axes}, out=n.outputs[0])
    return True


def _size(s: _Sub, n: Node) -> bool:
    x = n.inputs[0]
    s.op("ReduceProd", [s.op("Shape", [x], dtype="i64", shape=(x.rank,))], {"keepdims": 0}, out=n.outputs[0])
    return True


def _negated(compare: str) -> Rule:
    """a >= b as not(a < b), a <= b as not(a > b) (they differ only on NaN)."""
    def rule(s: _Sub, n: Node) -> bool:
        out = n.outputs[0]
        s.op("Not", [s.op(compare, n.inputs, dtype="bool", shape=out.shape)], out=out)
        return True
    return rule


def _one_hot(s: _Sub, n: Node) -> bool:
    """OneHot(i, depth, [off, on]) on the last axis as Where(i == range(depth), on, off)."""
    idx, depth, values = n.inputs
    out = n.outputs[0]
    if n.attrs.get("axis", -1) not in (-1, idx.rank) or depth.const is None:
        return False
    d = int(np.asarray(depth.const).reshape(-1)[0])
    hit = s.op("Equal", [s.op("Unsqueeze", [idx, s.i64([-1])], dtype=idx.dtype, shape=idx.shape + (1,)),
                         s.const(np.arange(d, dtype=DTYPES[idx.dtype]))],
               dtype="bool", shape=out.shape)
    if values.const is not None and list(np.asarray(values.const).reshape(-1)) == [0, 1]:
        s.op("Cast", [hit], {"to": DTYPE_CODE[out.dtype]}, out=out)
        return True
    pick = [s.op("Gather", [values, s.i64(k)], {"axis": 0}, dtype=values.dtype, shape=()) for k in (1, 0)]
    s.op("Where", [hit] + pick, out=out)
    return True


def _gelu(s: _Sub, n: Node) -> bool:
    """Gelu (opset 20) as x * 0.5 * (1 + erf(x / sqrt 2)), or with approximate="tanh" as
    x * 0.5 * (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    x, out = n.inputs[0], n.outputs[0]

    def op(name, *inputs):
        return s.op(name, inputs, dtype=x.dtype, shape=x.shape)

    def c(value):
        return s.const(np.asarray(value, DTYPES[x.dtype]))
    if n.attrs.get("approximate", "none") == "tanh":
        cube = op("Mul", op("Mul", x, x), x)
        inner = op("Tanh", op("Mul", c(math.sqrt(2 / math.pi)), op("Add", x, op("Mul", c(0.044715), cube))))
    else:
        inner = op("Erf", op("Mul", x, c(1 / math.sqrt(2))))
    s.op("Mul", [op("Mul", x, op("Add", c(1.0), inner)), c(0.5)], out=out)
    return True


def _conv_transpose_pads(s: _Sub, n: Node) -> bool:
    """Uneven pads as the smaller pad on both sides, then a Slice of what the larger one removed."""
    pads = list(n.attrs.get("pads", []))
    rank = len(pads) // 2
    if not pads or pads[:rank] == pads[rank:]:
        return False
    even = [min(a, b) for a, b in zip(pads[:rank], pads[rank:])]
    out = n.outputs[0]
    full = out.shape
    grown = s.op("ConvTranspose", n.inputs, {**n.attrs, "pads": even + even}, dtype=out.dtype,
                 shape=full[:2] + tuple(dim_add(d, a + b - 2 * m) for d, a, b, m in
                                        zip(full[2:], pads[:rank], pads[rank:], even)))
    starts = [a - m for a, m in zip(pads[:rank], even)]
    ends = [-(b - m) if b > m else 2 ** 62 for b, m in zip(pads[rank:], even)]
    s.op("Slice", [grown, s.i64(starts), s.i64(ends), s.i64(list(range(2, 2 + rank)))], out=out)
    return True


def _scatter_add(s: _Sub, n: Node) -> bool:
    """ScatterND(data, idx[..., 1], dy, reduction=add) (the gradient of a Gather) as data plus
    onehot(idx)^T @ dy: duplicate indices sum, as scatter-add does (onnx2torch has no reduction)."""
    data, idx, dy = n.inputs
    out = n.outputs[0]
    if n.attrs.get("reduction", "none") != "add" or idx.shape[-1] != 1 or data.rank < 1:
        return False
    k = idx.rank - 1  # the index dims, leading in dy
    m, r = _numel(idx.shape[:-1]), _numel(dy.shape[k:])
    flat_idx = s.op("Reshape", [idx, s.i64([-1, 1])], dtype="i64", shape=(m, 1))
    dim = s.op("Gather", [s.op("Shape", [data], dtype="i64", shape=(data.rank,)), s.i64(0)], {"axis": 0},
               dtype="i64", shape=())
    rows = s.op("Range", [s.i64(0), dim, s.i64(1)], dtype="i64", shape=(data.shape[0],))
    hit = s.op("Cast", [s.op("Equal", [flat_idx, rows], dtype="bool", shape=(m, data.shape[0]))],
               {"to": DTYPE_CODE[dy.dtype]}, dtype=dy.dtype, shape=(m, data.shape[0]))
    picked = s.op("Transpose", [hit], {"perm": [1, 0]}, dtype=dy.dtype, shape=(data.shape[0], m))
    if isinstance(r, int) or isinstance(m, int):  # (onnx2torch's Flatten ignores axis 0)
        rest = s.op("Reshape", [dy, s.i64([-1, r] if isinstance(r, int) else [m, -1])], dtype=dy.dtype, shape=(m, r))
    else:
        rest = s.op("Flatten", [dy], {"axis": k}, dtype=dy.dtype, shape=(m, r))
    summed = s.op("MatMul", [picked, rest], dtype=dy.dtype, shape=(data.shape[0], r))
    shaped = s.op("Reshape", [summed, s.op("Shape", [data], dtype="i64", shape=(data.rank,))],
                  dtype=dy.dtype, shape=data.shape)
    s.op("Add", [data, shaped], out=out)
    return True


def _numel(dims) -> Dim:
    total = 1
    for d in dims:
        total = dim_mul(total, d)
    return total


OPSET17: dict[str, Rule] = {
    "Constant": _u32_constant_as("i64"),
    "Cast": _u32_cast,
    "Add": _u32_add,
    "Mul": _u32_mul,
    "BitShift": _bit_shift,
    "BitwiseXor": _bitwise_xor,
    "ReduceMean": _axes_attribute,
    "ReduceMax": _axes_attribute,
    "ReduceMin": _axes_attribute,
    "ReduceProd": _axes_attribute,
    "Size": _size,
    "GreaterOrEqual": _negated("Less"),
    "LessOrEqual": _negated("Greater"),
    "OneHot": _one_hot,
    "Gelu": _gelu,
    "ConvTranspose": _conv_transpose_pads,
    "ScatterND": _scatter_add,
}


# ------------------------------------------------------------------ per-runtime rewrites
def _constant_of_shape(s: _Sub, n: Node) -> bool:
    """ConstantOfShape of a computed shape as Expand of a scalar (tract wants that shape at load time)."""
    if n.inputs[0].producer is None or n.inputs[0].producer.op == "Constant":
        return False
    value = np.asarray(n.attrs.get("value", np.zeros(1, np.float32))).reshape(())
    s.op("Expand", [s.const(value), n.inputs[0]], out=n.outputs[0])
    return True


def _conv_transpose_as_conv(s: _Sub, n: Node) -> bool:
    """A stride-1 ConvTranspose as the Conv with the flipped, transposed kernel and pads k-1-p. (OpenVINO
    2026.4 gives wrong numbers when a Conv and a ConvTranspose read the same weight, which is how a
    convolution's input gradient reads its kernel.)"""
    x, w = n.inputs[:2]
    r = w.rank - 2
    pads = list(n.attrs.get("pads", [0] * 2 * r))
    kernel = w.shape[2:]
    if (any(v != 1 for key in ("strides", "dilations") for v in n.attrs.get(key, [1] * r))
            or n.attrs.get("group", 1) != 1
            or any(n.attrs.get("output_padding", [0] * r)) or n.attrs.get("auto_pad", "NOTSET") != "NOTSET"
            or not all(isinstance(k, int) for k in kernel)):
        return False
    conv_pads = flipped_conv_pads(w.shape, pads, [1] * r)
    if min(conv_pads) < 0:
        return False
    swapped = s.op("Transpose", [w], {"perm": [1, 0] + list(range(2, w.rank))}, dtype=w.dtype,
                   shape=(w.shape[1], w.shape[0]) + tuple(kernel))
    flipped = s.op("Slice", [swapped, s.i64([-1] * r), s.i64([-2 ** 62] * r), s.i64(list(range(2, w.rank))),
                             s.i64([-1] * r)], dtype=w.dtype, shape=swapped.shape)
    s.op("Conv", [x, flipped] + list(n.inputs[2:]), {"kernel_shape": list(kernel), "pads": conv_pads},
         out=n.outputs[0])
    return True


def _split_as_slices(s: _Sub, n: Node) -> bool:
    """Split with constant sizes as one Slice per piece (onnx2torch 1.5 wires a Split's outputs to
    the wrong graph outputs when they feed further nodes)."""
    sizes = n.inputs[1].producer if len(n.inputs) > 1 and n.inputs[1] is not None else None
    if sizes is None or sizes.op != "Constant":
        return False
    axis, start = n.attrs.get("axis", 0), 0
    for size, out in zip(np.asarray(sizes.attrs["value"]).tolist(), n.outputs):
        s.op("Slice", [n.inputs[0], s.i64([start]), s.i64([start + size]), s.i64([axis])], out=out)
        start += size
    return True


def _unroll(s: _Sub, n: Node) -> bool:
    """A Loop with a constant trip count and a constant-true condition, as that many copies of its body."""
    trip, cond = n.inputs[:2]
    body: Graph = n.attrs["body"]
    if trip is None or trip.const is None or cond is None or cond.const is None or not bool(cond.const):
        return False
    nested = any(isinstance(a, Graph) for m in body.nodes for a in m.attrs.values())
    if len(body.outputs) != len(n.inputs) - 1 or nested:
        return False  # scan outputs or nested loops: kept as a Loop
    carried = list(n.inputs[2:])
    for i in range(int(trip.const)):
        env = {body.inputs[0]: s.i64(i), body.inputs[1]: s.const(np.asarray(True))}
        env.update(zip(body.inputs[2:], carried))
        for m in body.nodes:
            outs = [Value(f"{v.name}_u{i}", v.type) for v in m.outputs]
            copy = Node(m.op, [env.get(v, v) if v is not None else None for v in m.inputs], outs, dict(m.attrs),
                        m.span, name=f"{m.name}_u{i}")
            for old, new in zip(m.outputs, outs):
                new.producer, new.const, new.sym = copy, old.const, old.sym
                env[old] = new
            s.nodes.append(copy)
        carried = [env.get(v, v) for v in body.outputs[1:]]
    for v, out in zip(carried, n.outputs):
        s.op("Identity", [v], out=out)
    return True


# What each runtime needs: its opset, the rewrites beyond that opset's, and the ops whose constant
# inputs must be initializers (onnx2torch builds a torch Conv only from an initializer kernel).
# Rewrites of every emission: forms every runtime takes, at no cost in onnxruntime (tract reads
# ConstantOfShape's shape at load time; an Expand of a scalar makes the same zeros of a computed shape).
DEFAULT_RULES: dict[str, Rule] = {"ConstantOfShape": _constant_of_shape}

RUNTIMES: dict[str, dict] = {
    "onnxruntime": {"opset": 21, "rules": {}},
    # (onnx2torch 1.5 converts a three-output LayerNormalization into one whose "Y" is the real Y's
    # first row: layer_norm's formulation written out in ReduceMean / Sub / Mul ops instead)
    "onnx2torch": {"opset": 17, "rules": {"Loop": _unroll, "Split": _split_as_slices}, "initializers": ("Conv", "ConvTranspose"),
                   "formulations": {"layer_norm": "ops"}},
    "tract": {"opset": 21, "rules": {"Loop": _unroll}},
    "openvino": {"opset": 21, "rules": {"ConvTranspose": _conv_transpose_as_conv, "Constant": _u32_constant_as("i32"),
                                        "Cast": _i32_cast, "BitShift": _i32_shift_right}},
}


def emission(opset: int | None, target_runtime: str | None) -> tuple[int, dict[str, Rule], tuple[str, ...], dict]:
    """The opset, the table of rewrites, the ops whose constant inputs become initializers and the
    formulations the runtime needs, for these options (a DslError for unknown ones)."""
    if target_runtime is not None and target_runtime not in RUNTIMES:
        raise DslError(f"unknown target runtime `{target_runtime}`: use one of {', '.join(RUNTIMES)}")
    wanted = RUNTIMES.get(target_runtime, {"opset": DEFAULT_OPSET, "rules": {}})
    if opset is not None and opset not in OPSETS:
        raise DslError(f"dslc emits opset {' or '.join(map(str, OPSETS))}, not {opset}")
    if opset is not None and target_runtime is not None and opset != wanted["opset"]:
        raise DslError(f"--target-runtime {target_runtime} emits opset {wanted['opset']}: leave out --opset {opset}")
    opset = wanted["opset"] if opset is None else opset
    return (opset, {**DEFAULT_RULES, **(OPSET17 if opset < 18 else {}), **wanted["rules"]}, wanted.get("initializers", ()),
            wanted.get("formulations", {}))


def rewrite(graph: Graph, rules: dict[str, Rule], names: itertools.count | None = None) -> bool:
    """Apply `rules` to every node (loop bodies included, before the loop itself is looked at)."""
    names = names if names is not None else itertools.count()
    changed = False
    nodes = []
    for n in graph.nodes:
        for a in n.attrs.values():
            if isinstance(a, Graph):
                changed |= rewrite(a, rules, names)
        sub = _Sub(n, names)
        rule = rules.get(n.op)
        if rule is not None and rule(sub, n):
            nodes += sub.nodes
            changed = True
        else:
            nodes.append(n)
    graph.nodes = nodes
    u32_as = getattr(rules.get("Constant"), "u32_as", None)
    if u32_as:
        _retype_u32(graph, u32_as)
    return changed


def _retype_u32(graph: Graph, dtype: str) -> None:
    for n in graph.nodes:
        for v in n.outputs:
            if v.dtype == "u32":
                v.type = TensorType(dtype, v.type.shape)
