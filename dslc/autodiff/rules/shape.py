"""Rules of the ops that move elements without computing: Reshape, Flatten, Squeeze, Unsqueeze (dy
back in x's shape, read without keeping x alive), Transpose, and Expand (the driver sums the
broadcast back down)."""
from __future__ import annotations

import numpy as np

from ...ir import patterns as P
from ...ir.core import Value
from ...ir.ops import ShapeIssue, infer
from .common import Rule, _op


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


SHAPE: dict[str, Rule] = {
    "Reshape": _reshape_back,
    "Flatten": _reshape_back,
    "Squeeze": _reshape_back,
    "Unsqueeze": _reshape_back,
    "Transpose": _transpose,
    "Expand": lambda b, node, dys: [dys[0]],  # the driver sums the broadcast back down
}
