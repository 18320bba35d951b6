"""Rules of the ops that pick or place elements: Concat, Split, Slice, Pad, Gather, GatherElements,
GatherND, ScatterElements, ScatterND. The Slice VJP (slice_grad, slice_grad_at_run_time) also
carries the window rules' shares back (conv_pool*.py)."""
from __future__ import annotations

import numpy as np

from ...diagnostics import DslError
from ...ir import patterns as P
from ...ir.builder import Builder
from ...ir.core import DTYPES, Value
from ...ir.ops import DTYPE_CODE
from .common import Rule, _input, _ints, _op


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


INDEXING: dict[str, Rule] = {
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Pad": _pad,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "ScatterElements": _scatter("ScatterElements", "GatherElements"),
    "ScatterND": _scatter("ScatterND", "GatherND"),
}
