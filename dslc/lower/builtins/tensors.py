"""Math on tensors (elementwise functions, clip, reductions, argmax, cast, where, one_hot,
transpose, minimum / maximum), random draws, and grad / stop_gradient."""

from ...diagnostics import DslShapeError, source_text
from ...ir.core import Value
from ...ir.ops import DTYPE_CODE
from .. import random as R
from ..calls import Ctx
from ..values import is_shape_list
from .common import _float_dtype, _float_tensor, _t, _unary


def _numbers(ctx: Ctx, x: Value, arg: str = "x") -> Value:
    if x.dtype == "bool":  # ONNX reductions take no bools: count with a cast
        text = source_text(ctx.arg_spans.get(arg)) or arg
        raise ctx.error(f"{ctx.name}() needs numbers, got {x.type}", arg, f"convert first: cast({text}, f32)")
    return x


def _keepdims_axes(ctx: Ctx, x: Value, axis) -> list[int] | None:
    if axis is None:
        return None
    axes = [axis] if isinstance(axis, int) else list(axis)
    for a in axes:
        if not -x.rank <= a < x.rank:
            raise ctx.error(f"axis {a} is out of range for {x.type}", "axis", cls=DslShapeError)
    seen = [a % x.rank for a in axes]
    if len(set(seen)) != len(seen):
        raise ctx.error(f"axis {axis} names an axis of {x.type} twice", "axis",
                        "list each axis once (negative axes count from the end)", DslShapeError)
    return axes


# ------------------------------------------------------------------ math
def square(ctx: Ctx, x: "T"):
    x = _float_tensor(ctx, x, "x")
    return ctx.b.op("Mul", [x, x])


def clip(ctx: Ctx, x: "T", low: "T", high: "T"):
    x = _float_tensor(ctx, x, "x")
    lo, hi = _t(ctx, low, x, "low"), _t(ctx, high, x, "high")
    if lo.rank or hi.rank:
        raise ctx.error("clip() bounds must be scalars", "low")
    return ctx.b.op("Clip", [x, lo, hi])


def _reduction(op: str):
    def reduce(ctx: Ctx, x: "T", axis: "ints" = None, keepdims: "bool" = False):
        x = _numbers(ctx, _t(ctx, x, arg="x"))
        axes = _keepdims_axes(ctx, x, axis)
        b = ctx.b
        inputs = [x] if axes is None else [x, b.ints(axes)]
        return b.op(op, inputs, {"keepdims": int(keepdims)})
    return reduce


def argmax(ctx: Ctx, x: "T", axis: "int" = -1, keepdims: "bool" = False):
    x = _numbers(ctx, _t(ctx, x, arg="x"))
    _keepdims_axes(ctx, x, axis)
    return ctx.b.op("ArgMax", [x], {"axis": axis, "keepdims": int(keepdims)})


def cast(ctx: Ctx, x: "T", dtype: "word"):
    x = _t(ctx, x, arg="x")
    if dtype.name not in DTYPE_CODE:
        raise ctx.error(f"unknown dtype `{dtype.name}`", "dtype", f"use one of {', '.join(DTYPE_CODE)}")
    return ctx.b.op("Cast", [x], {"to": DTYPE_CODE[dtype.name]})


def where(ctx: Ctx, cond: "T", a: "T", b: "T"):
    like = a if isinstance(a, Value) else b if isinstance(b, Value) else None
    return ctx.b.op("Where", [_t(ctx, cond, arg="cond"), _t(ctx, a, like, "a"), _t(ctx, b, like, "b")])


def one_hot(ctx: Ctx, indices: "T", depth: "count", dtype: "word" = None):
    """0/1 rows of `dtype` (default: f64 among f64 values, else f32)."""
    idx = _t(ctx, indices, arg="indices")
    if idx.dtype not in ("i64", "i32"):
        raise ctx.error(f"one_hot needs integer indices, got {idx.type}", "indices", "use cast(x, i64)")
    dtype = _float_dtype(ctx, dtype)
    b = ctx.b
    return b.op("OneHot", [idx, b.const(depth, "i64"), b.const([0.0, 1.0], dtype)], {"axis": -1})


def transpose(ctx: Ctx, x: "T", perm: "ints" = None):
    x = _t(ctx, x, arg="x")
    perm = [perm] if isinstance(perm, int) else perm
    if x.rank == 0 and not perm:  # a scalar is its own transpose (and ONNX wants a non-empty perm)
        return x
    return ctx.b.op("Transpose", [x], {"perm": perm if perm is not None else list(range(x.rank))[::-1]})


def _pairwise(op: str):
    """minimum / maximum with broadcasting; the gradient goes to the selected side (to `a` on ties,
    as TensorFlow does)."""
    def pick(ctx: Ctx, a: "T", b: "T"):
        like = a if isinstance(a, Value) else b if isinstance(b, Value) else None
        x, y = _float_tensor(ctx, _t(ctx, a, like, "a"), "a"), _t(ctx, b, like, "b")
        if x.dtype != y.dtype:
            text = source_text(ctx.arg_spans.get("b")) or "b"
            raise ctx.error(f"{ctx.name}() needs operands of one dtype, got {x.type} and {y.type}", "b",
                            f"convert one of them, e.g. cast({text}, {x.dtype})")
        return ctx.b.op(op, [x, y])
    return pick


# ------------------------------------------------------------------ random
def _random(ctx: Ctx, kind: str, like_or_shape) -> Value:
    """Standard draws (uniform in [0, 1) or normal) shaped like a tensor or a shape, from the
    counter-based generator (random.py); with the `random="input"` option a graph input instead,
    so that a test can feed its own noise."""
    lw, b = ctx.lw, ctx.b
    if isinstance(like_or_shape, Value) and like_or_shape.dtype == "i64":  # a shape computed at run time
        like_or_shape = R.shaped_like(b, like_or_shape)
    if lw.options.random == "input":
        from ...ir.core import TensorType
        shape = like_or_shape.shape if isinstance(like_or_shape, Value) else tuple(like_or_shape)
        dtype = like_or_shape.dtype if isinstance(like_or_shape, Value) else "f32"
        return lw.root.input(f"random.{next(lw.random_count)}", TensorType(dtype, shape))
    like = like_or_shape if isinstance(like_or_shape, Value) else R.shaped_like(b, like_or_shape)
    dtype = like.dtype if like.type.is_float else "f32"
    keys = [lw.random_key(ctx.sc) for _ in range(2 if kind == "normal" else 1)]
    b = ctx.b  # (random_key moved the builder's span)
    return R.normal(b, like, keys, dtype) if kind == "normal" else R.uniform(b, like, keys, dtype)


def _keep_mask(ctx: Ctx, x: Value, rate: float) -> Value:
    """uniform(like x) >= rate (dropout's kept elements), the same mask _random's draw would give."""
    lw = ctx.lw
    if lw.options.random == "input":
        return ctx.b.op("GreaterOrEqual", [_random(ctx, "uniform", x), ctx.b.const(rate, x.dtype)])
    key = lw.random_key(ctx.sc)
    return R.keep_mask(ctx.b, x, [key], rate, x.dtype)


def _shape_or_like(ctx: Ctx, shape, like) -> Value | list:
    if (shape is None) == (like is None):
        raise ctx.error(f"{ctx.name}() takes either a shape or like=")
    if like is not None:
        return _float_tensor(ctx, like, "like")
    if isinstance(shape, list) and is_shape_list(shape):  # [N, 100]: a run-time shape
        return ctx.lw.shape_vector(ctx.sc, shape, ctx.arg_spans.get("shape", ctx.span))
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ctx.error(f"{ctx.name}() needs the shape as a list of positive integers or dims such as "
                        f"[N, 100]", "shape")
    return shape


def _affine(ctx: Ctx, x: Value, scale: float, shift: float) -> Value:
    b = ctx.b
    if scale != 1.0 or ctx.lw.options.random == "input":  # (a fed draw's first use is its own call)
        x = b.op("Mul", [x, b.const(scale, x.dtype)])
    return b.op("Add", [x, b.const(shift, x.dtype)]) if shift != 0.0 else x


def random_normal(ctx: Ctx, shape: "any" = None, mean: "float" = 0.0, stddev: "float" = 1.0, like: "any" = None):
    z = _random(ctx, "normal", _shape_or_like(ctx, shape, like))
    return _affine(ctx, z, float(stddev), float(mean))


def random_uniform(ctx: Ctx, shape: "any" = None, low: "float" = 0.0, high: "float" = 1.0, like: "any" = None):
    u = _random(ctx, "uniform", _shape_or_like(ctx, shape, like))
    return _affine(ctx, u, float(high) - float(low), float(low))


def randint(ctx: Ctx, high: "count", shape: "any" = None, like: "any" = None):
    u = random_uniform(ctx, shape, 0.0, float(high), like)
    b = ctx.b
    return b.op("Cast", [b.op("Floor", [u])], {"to": DTYPE_CODE["i64"]})


# ------------------------------------------------------------------ gradients
def grad(ctx: Ctx, y: "T", x: "any"):
    """d sum(y) / dx, like tf.grad; x may be a list of values."""
    from ...autodiff import grad as autodiff_grad
    y = _float_tensor(ctx, y, "y")
    xs = x if isinstance(x, list) else [x]
    for v in xs:
        if not isinstance(v, Value) or not v.type.is_float:
            raise ctx.error(f"grad() can differentiate with respect to float tensors only, got "
                            f"{v.type if isinstance(v, Value) else type(v).__name__}", "x")
    grads = autodiff_grad(ctx.b, y, xs)
    return tuple(grads) if isinstance(x, list) else grads[0]  # a tuple unpacks: `gx, gw = grad(...)`


def stop_gradient(ctx: Ctx, x: "T"):
    return ctx.b.op("StopGradient", [_t(ctx, x, arg="x")])


TENSORS = {
    "exp": _unary("Exp"), "log": _unary("Log"), "sqrt": _unary("Sqrt"), "abs": _unary("Abs"), "square": square,
    "clip": clip, "sum": _reduction("ReduceSum"), "mean": _reduction("ReduceMean"), "max": _reduction("ReduceMax"),
    "min": _reduction("ReduceMin"), "argmax": argmax, "cast": cast, "where": where, "one_hot": one_hot,
    "transpose": transpose,
    "sin": _unary("Sin"), "cos": _unary("Cos"), "tan": _unary("Tan"), "atan": _unary("Atan"),
    "erf": _unary("Erf"), "sign": _unary("Sign"), "floor": _unary("Floor"), "ceil": _unary("Ceil"),
    "round": _unary("Round"), "minimum": _pairwise("Min"), "maximum": _pairwise("Max"),
    # random
    "random_normal": random_normal, "random_uniform": random_uniform, "randint": randint,
    # gradients
    "grad": grad, "stop_gradient": stop_gradient,
}
