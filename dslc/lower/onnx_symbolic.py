"""Shape arithmetic of imported graphs, evaluated when compiling with symbolic dims.

Exporters compute shapes at run time: `x.view(x.size(0), -1)` becomes Shape -> Gather ->
Unsqueeze -> Concat -> Reshape, and `expand`/`repeat` add Equal/Where/ConstantOfShape chains.
Here each such node is evaluated on object arrays whose elements are ints or dims ("N",
"2*N"), so the Reshape that ends the chain knows its target. What cannot be decided for every
size of the symbols (is N equal to 3?) is left to run time: `evaluate` returns None.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Value, dim_add, dim_mul, dim_sub, dims_differ, normal_dim
from ..ir.ops import ONNX_DTYPE_CODES

MAX_ELEMENTS = 4096


class Unknown(Exception):
    """The result depends on the run-time value of a symbol."""


def contents(v: Value | None) -> np.ndarray | None:
    """What v holds when compiling: its constant, or its symbolic contents as an object array."""
    if v is None:
        return None
    if v.const is not None:
        return np.asarray(v.const)
    if v.sym is not None and v.type.static() and v.rank <= 1 and len(v.sym) == (v.shape[0] if v.rank else 1):
        return np.array(list(v.sym), dtype=object).reshape(v.shape)
    return None


def _is_dim(x) -> bool:
    return isinstance(x, str)


def _num(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating, bool, np.bool_)) and not isinstance(x, str)


def _add(a, b):
    return a + b if _num(a) and _num(b) else dim_add(_int(a), _int(b))


def _sub(a, b):
    return a - b if _num(a) and _num(b) else dim_sub(_int(a), _int(b))


def _mul(a, b):
    return a * b if _num(a) and _num(b) else dim_mul(_int(a), _int(b))


def _div(a, b):
    if _num(a) and _num(b):
        if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
            return a / b
        return int(a / b) if b else _raise()  # ONNX integer Div truncates
    if _num(b) and int(b) == 1:
        return a
    quotient = normal_dim(f"({a})/{int(b)}") if _num(b) else None
    if quotient is None or isinstance(quotient, str) and "/" in quotient:
        raise Unknown  # not an exact quotient: its floor is not a dim the rules know
    return quotient


def _raise():
    raise Unknown


def _int(x):
    return int(x) if _num(x) else x


def _equal(a, b):
    if _num(a) and _num(b):
        return bool(a == b)
    if a == b:
        return True
    if _num(a) or _num(b):  # a dim against a number: dims are at least 1
        n = a if _num(a) else b
        if n < 1:
            return False
        raise Unknown
    if dims_differ(a, b):
        return False
    raise Unknown


def _compare(op):
    def f(a, b):
        if not (_num(a) and _num(b)):
            raise Unknown
        return bool(op(a, b))
    return f


def _extreme(pick):
    def f(a, b):
        if _num(a) and _num(b):
            return pick(a, b)
        dim, n = (a, b) if _is_dim(a) else (b, a)
        if _num(n) and n <= 1:  # a dim is at least 1
            return dim if pick is max else n
        if a == b:
            return a
        raise Unknown
    return f


def _elementwise(fn, known):
    ufunc = np.frompyfunc(fn, len(known), 1)
    return np.asarray(ufunc(*[np.asarray(k, dtype=object) for k in known]), dtype=object)


def _ints(a) -> list[int]:
    values = np.asarray(a).reshape(-1).tolist()
    if any(not _num(x) for x in values):
        raise Unknown
    return [int(x) for x in values]


def _dtype(ins, i=0) -> str:
    return ins[i].dtype


def evaluate(op: str, attrs: dict, known: list, ins: list):
    """(array, dtype) of the node's one output, or None where it is not decided when compiling."""
    if any(k is not None and k.size > MAX_ELEMENTS for k in known):
        return None
    try:
        result = _evaluate(op, attrs, known, ins)
        if result is None:
            return None
        array, dtype = result
        return (array if isinstance(array, np.ndarray) else np.asarray(array, dtype=object)), dtype
    except (Unknown, TypeError, ValueError, IndexError, KeyError, ZeroDivisionError):
        return None


def _evaluate(op, attrs, known, ins):
    k = known
    if op in ("Add", "Sub", "Mul", "Div"):
        fn = {"Add": _add, "Sub": _sub, "Mul": _mul, "Div": _div}[op]
        return _elementwise(fn, k[:2]), _dtype(ins)
    if op == "Equal":
        return _elementwise(_equal, k[:2]), "bool"
    if op in ("Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        import operator
        fn = {"Less": operator.lt, "Greater": operator.gt, "LessOrEqual": operator.le,
              "GreaterOrEqual": operator.ge}[op]
        return _elementwise(_compare(fn), k[:2]), "bool"
    if op in ("Max", "Min"):
        out = k[0]
        for other in k[1:]:
            out = _elementwise(_extreme(max if op == "Max" else min), [out, other])
        return out, _dtype(ins)
    if op == "Where":
        cond = np.asarray(k[0], dtype=object)
        if any(not _num(c) for c in cond.reshape(-1)):
            raise Unknown
        return np.where(cond.astype(bool), k[1], k[2]).astype(object), _dtype(ins, 1)
    if op in ("Identity", "Neg", "Abs"):
        fn = {"Identity": lambda a: a, "Neg": lambda a: -a if _num(a) else _raise(),
              "Abs": lambda a: abs(a) if _num(a) else a}[op]
        return _elementwise(fn, k[:1]), _dtype(ins)
    if op == "Cast":
        to = ONNX_DTYPE_CODES[attrs["to"]]
        if to not in ("i64", "i32"):
            raise Unknown
        return np.asarray(k[0], dtype=object), to
    if op == "Shape":
        start, end = attrs.get("start", 0), attrs.get("end")
        return np.array(list(ins[0].shape[start:end]), dtype=object), "i64"
    if op == "Size":
        n = 1
        for d in ins[0].shape:
            n = _mul(n, d)
        return np.array(n, dtype=object), "i64"
    if op == "Gather":
        idx = np.asarray(_ints(k[1])).reshape(np.shape(k[1]))
        return np.take(np.asarray(k[0], dtype=object), idx, axis=attrs.get("axis", 0)), _dtype(ins)
    if op == "GatherElements":
        idx = np.asarray(_ints(k[1])).reshape(np.shape(k[1]))
        return np.take_along_axis(np.asarray(k[0], dtype=object), idx, axis=attrs.get("axis", 0)), _dtype(ins)
    if op == "Concat":
        return np.concatenate([np.asarray(a, dtype=object) for a in k], axis=attrs["axis"]), _dtype(ins)
    if op == "Unsqueeze":
        axes = attrs.get("axes") or _ints(k[1])
        a = np.asarray(k[0], dtype=object)
        r = a.ndim + len(axes)
        for ax in sorted(x % r for x in axes):
            a = np.expand_dims(a, ax)
        return a, _dtype(ins)
    if op == "Squeeze":
        axes = attrs.get("axes") or (_ints(k[1]) if len(k) > 1 and k[1] is not None else None)
        a = np.asarray(k[0], dtype=object)
        return (np.squeeze(a, tuple(x % a.ndim for x in axes)) if axes else np.squeeze(a)), _dtype(ins)
    if op == "Slice":
        a = np.asarray(k[0], dtype=object)
        starts, ends = _ints(k[1]), _ints(k[2])
        axes = _ints(k[3]) if len(k) > 3 and k[3] is not None else list(range(len(starts)))
        steps = _ints(k[4]) if len(k) > 4 and k[4] is not None else [1] * len(starts)
        idx = [slice(None)] * a.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            idx[ax % a.ndim] = slice(s, e, st)
        return a[tuple(idx)], _dtype(ins)
    if op == "Reshape":
        a = np.asarray(k[0], dtype=object)
        shape = _ints(k[1])
        shape = [a.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return a.reshape(shape), _dtype(ins)
    if op == "ConstantOfShape":
        value = attrs.get("value", np.zeros(1, np.float32))
        shape = _ints(k[0])
        from ..ir.core import dtype_of
        return np.full(shape, np.asarray(value).reshape(-1)[0], dtype=object), dtype_of(np.asarray(value))
    if op == "Expand":
        shape = _ints(k[1])
        a = np.asarray(k[0], dtype=object)
        return np.array(np.broadcast_to(a, np.broadcast_shapes(a.shape, tuple(shape)))), _dtype(ins)
    if op == "Range":
        start, limit, delta = (_ints(x)[0] for x in k[:3])
        return np.arange(start, limit, delta).astype(object), _dtype(ins)
    if op == "ReduceProd":
        out = 1
        for x in np.asarray(k[0], dtype=object).reshape(-1):
            out = _mul(out, x)
        keep = attrs.get("keepdims", 1)
        return np.array([out] if keep else out, dtype=object), _dtype(ins)
    return None
