"""Rule of ONNX LayerNormalization (layer_norm's `onnx` formulation): the backward from the op's own
Mean and InvStdDev outputs, in a handful of ops on the full tensor where the rules of the decomposed
forward take about seventeen."""
from __future__ import annotations

from .common import Rule, _c, _input, _op


def _layer_normalization(b, node, dys):
    """y = xhat * gamma + beta, xhat = (x - mean) * inv over the axes [axis, rank):
    dx = inv * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma; dgamma = dy * xhat and
    dbeta = dy at the broadcast shape (the driver sums them down). Cotangents of Mean and InvStdDev
    (a second derivative's) add dmean / D and -dinv * inv^2 * xhat / D."""
    x, gamma, beta = node.inputs[0], node.inputs[1], _input(node, 2)
    _, mean, inv = node.outputs
    dy, dmean, dinv = (list(dys) + [None, None])[:3]
    axes = b.ints(list(range(node.attrs.get("axis", -1) % x.rank, x.rank)))
    xhat = _op(b, "Mul", _op(b, "Sub", x, mean), inv)
    dx = d_gamma = d_beta = None
    if dy is not None:
        g = _op(b, "Mul", dy, gamma)
        inner = _op(b, "Sub", _op(b, "Sub", g, _op(b, "ReduceMean", g, axes, keepdims=1)),
                    _op(b, "Mul", xhat, _op(b, "ReduceMean", _op(b, "Mul", g, xhat), axes, keepdims=1)))
        dx = _op(b, "Mul", inv, inner)
        d_gamma, d_beta = _op(b, "Mul", dy, xhat), dy
    count = 1
    for d in x.shape[node.attrs.get("axis", -1) % x.rank:]:
        count *= d
    if dmean is not None:
        part = _op(b, "Div", dmean, _c(b, count, x))
        dx = part if dx is None else _op(b, "Add", dx, part)
    if dinv is not None:
        part = _op(b, "Mul", _op(b, "Neg", _op(b, "Mul", dinv, _op(b, "Mul", inv, inv))),
                   _op(b, "Div", xhat, _c(b, count, x)))
        dx = part if dx is None else _op(b, "Add", dx, part)
    return [dx, d_gamma, d_beta if beta is not None else None]


NORMS: dict[str, Rule] = {"LayerNormalization": _layer_normalization}
