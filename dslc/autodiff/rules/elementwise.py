"""Rules of the elementwise ops: one-input functions by their derivative f'(x) (DERIVATIVES), Add,
Sub, Mul, Div, Pow, Max / Min, Where, Clip, Cast, Softmax and LogSoftmax; and of MatMul."""
from __future__ import annotations

import math

import numpy as np

from ...ir import patterns as P
from ...ir.core import Value
from ...ir.ops import DTYPE_CODE
from .common import Rule, _c, _input, _mask, _op


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


def _sub(b, node, dys):
    """dy and -dy; where the subtrahend is broadcast (x - mean), -dy summed down to its shape first,
    so the Neg runs at its size (the driver's sum-down then has nothing left to do; same numbers)."""
    dy, c = dys[0], node.inputs[1]
    axes = _broadcast_axes(c, dy)
    if not axes:
        return [dy, _op(b, "Neg", dy)]
    return [dy, _op(b, "Neg", _op(b, "ReduceSum", dy, b.ints(axes), keepdims=1))]


def _broadcast_axes(x: Value, g: Value) -> list[int]:
    """g's axes that x (same rank) has at a static size 1 and g not: what the driver's sum-down of g
    to x reduces (it then reshapes where symbolic dims differ)."""
    if x.rank != g.rank:
        return []
    return [i for i, (d, e) in enumerate(zip(x.shape, g.shape)) if d == 1 and e != 1]


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
    da = _op(b, "MatMul", dy, P.transpose_last_two(b, w))
    if P.matmul_weight_grad(a, w, dy) == "flattened":
        return [da, P.weight_grad_flattened(b, a, dy)]
    return [da, _op(b, "MatMul", P.transpose_last_two(b, a), dy)]


ELEMENTWISE: dict[str, Rule] = {
    "Identity": lambda b, node, dys: [dys[0]],
    "Neg": lambda b, node, dys: [_op(b, "Neg", dys[0])],
    **{op: _elementwise(d) for op, d in DERIVATIVES.items()},
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Add": lambda b, node, dys: [dys[0], dys[0]],
    "Sub": _sub,
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
}
