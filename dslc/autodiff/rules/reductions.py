"""Rules of the reductions: ReduceSum, ReduceMean, ReduceMax / ReduceMin (ties share dy), ReduceProd."""
from __future__ import annotations

import numpy as np

from ...ir import patterns as P
from ...ir.core import Node, Value
from ...ir.ops import DTYPE_CODE
from .common import Rule, _c, _input, _ints, _mask, _op


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
    """dy / count, spread over the reduced axes: the division at the reduced size, before the Expand
    (the same numbers; a batch norm's divided its whole [N, C, H, W] gradient twice)."""
    if _is_noop(node):
        return [dys[0]]
    scaled = _op(b, "Div", _keep(b, node, dys[0]), _count_ratio(b, node.inputs[0], node.outputs[0]))
    return [_op(b, "Expand", scaled, P.shape_of(b, node.inputs[0]))]


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


REDUCTIONS: dict[str, Rule] = {
    "ReduceSum": _reduce_sum,
    "ReduceMean": _reduce_mean,
    "ReduceMax": _reduce_extreme,
    "ReduceMin": _reduce_extreme,
    "ReduceProd": _reduce_prod,
}
