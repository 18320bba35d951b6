"""Built-ins that make tensors from numbers (issue 21): `arange`, `zeros`, `ones`, `full`, and
`masked_fill`. Their results are constants of the graph (no gradient flows into them);
`masked_fill` passes x's gradient where the mask is false.

A float result without `dtype=` takes the float type of the float values in sight (f64 inside a
model whose float inputs are f64), else f32, as `embedding` and `one_hot` do.
"""

import math

import numpy as np

from ..diagnostics import DslShapeError, source_text
from ..ir.core import DTYPES, Value, dim_ceil_div
from ..ir.ops import DTYPE_CODE
from .builtins import BUILTINS, _float_dtype, _t
from .calls import Ctx
from .values import describe, is_shape_list


def _dtype(ctx: Ctx, dtype, default: str) -> str:
    if dtype is None:
        return default
    if dtype.name not in DTYPES:
        raise ctx.error(f"unknown dtype `{dtype.name}`", "dtype", f"use one of {', '.join(DTYPES)}")
    return dtype.name


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _run_time_int(v) -> bool:
    return isinstance(v, Value) and v.dtype == "i64" and v.rank == 0


def arange(ctx: Ctx, start: "any", stop: "any" = None, step: "any" = 1, dtype: "word" = None):
    """torch.arange: [start, stop) by step; `arange(n)` is [0, n). Integers give i64, a float anywhere
    gives a float (torch's length: ceil((stop - start) / step)). `n` (and start, stop) may be an
    integer known at run time (a dim N, x.shape[1], an i64 scalar input): arange(N) is [N]."""
    single = stop is None  # arange(n)
    if single:
        start, stop = 0, start
        ctx.arg_spans["stop"] = ctx.arg_spans.get("start", ctx.span)
    start, stop, step = (int(v.const.item()) if _run_time_int(v) and v.const is not None else v
                         for v in (start, stop, step))  # (an integer computed at compile time)
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) or _run_time_int(v)):
            what = "n" if single and name == "stop" else name
            raise ctx.error(f"arange() needs numbers or integer dims for `{what}`, got {describe(v)}", name,
                            "e.g. arange(10), arange(N), arange(1, x.shape[1])")
    if isinstance(step, Value) or step == 0:
        raise ctx.error("arange() needs a nonzero number for `step`, known when compiling", "step")
    b = ctx.b
    numbers = [v for v in (start, stop, step) if not isinstance(v, Value)]
    floating = any(isinstance(v, float) for v in numbers)
    out = _dtype(ctx, dtype, _float_dtype(ctx, None) if floating else "i64")
    if not isinstance(start, Value) and not isinstance(stop, Value):
        n = max(math.ceil((stop - start) / step), 0)
        data = (start + step * np.arange(n, dtype=np.float64)) if floating else np.arange(start, stop, step)
        if floating and out in ("i64", "i32"):
            raise ctx.error(f"arange() of floats cannot be {out}", "dtype", "round first, or use integers")
        return b.const(np.asarray(data).astype(DTYPES[out]), out)
    if floating:
        raise ctx.error("arange() with a bound known only at run time takes integers", "start")
    def i64(v):
        return v if isinstance(v, Value) else b.const(np.asarray(v, np.int64), "i64")
    # count = ceil(|stop - start| / |step|) in the step's direction (Range of a count <= 0 is empty)
    hi, lo = (stop, start) if step > 0 else (start, stop)
    span = i64(hi) if _is_int(lo) and lo == 0 else b.op("Sub", [i64(hi), i64(lo)])
    count = span
    if abs(step) != 1:
        count = b.op("Div", [b.op("Add", [span, b.const(np.asarray(abs(step) - 1), "i64")]),
                             b.const(np.asarray(abs(step)), "i64")])
        if span.sym is not None:
            count.sym = (dim_ceil_div(span.sym[0], abs(step)),)
    r = b.op("Range", [b.const(np.asarray(0), "i64"), count, b.const(np.asarray(1), "i64")])
    if step != 1:
        r = b.op("Mul", [r, b.const(np.asarray(step), "i64")])
    if not (_is_int(start) and start == 0):
        r = b.op("Add", [r, i64(start)])
    return r if out == "i64" else b.op("Cast", [r], {"to": DTYPE_CODE[out]})


def _fill(ctx: Ctx, shape, like, value, dtype: str) -> Value:
    b = ctx.b
    if (shape is None) == (like is None):
        raise ctx.error(f"{ctx.name}() takes either a shape or like=")
    if like is not None:
        like = _t(ctx, like, arg="like")
        target = b.op("Shape", [like]) if not like.type.static() else b.ints(list(like.shape))
    elif isinstance(shape, list) and is_shape_list(shape):  # [N, 100]: a run-time shape
        target = ctx.lw.shape_vector(ctx.sc, shape, ctx.arg_spans.get("shape", ctx.span))
    elif isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape):
        target = b.ints(list(shape))
    elif _is_int(shape) and shape >= 0:
        target = b.ints([shape])
    elif isinstance(shape, Value) and shape.dtype == "i64" and shape.rank == 1:  # x.shape
        target = shape
    else:
        raise ctx.error(f"{ctx.name}() needs the shape as a list of sizes or dims such as [N, 100], got "
                        f"{describe(shape)}", "shape", cls=DslShapeError)
    return b.op("ConstantOfShape", [target], {"value": np.full(1, value, DTYPES[dtype])})


def zeros(ctx: Ctx, shape: "any" = None, dtype: "word" = None, like: "any" = None):
    """torch.zeros / zeros_like: a shape ([2, 3], [N, 100], x.shape) or like=x (then x's dtype)."""
    return _fill(ctx, shape, like, 0, _dtype(ctx, dtype, _like_dtype(ctx, like)))


def ones(ctx: Ctx, shape: "any" = None, dtype: "word" = None, like: "any" = None):
    return _fill(ctx, shape, like, 1, _dtype(ctx, dtype, _like_dtype(ctx, like)))


def full(ctx: Ctx, shape: "any" = None, value: "any" = 0.0, dtype: "word" = None, like: "any" = None):
    """torch.full: `value` everywhere (a number, inf / -inf, true / false); an integer value gives i64,
    a bool one bool, a float one a float (unless dtype= or like= says otherwise)."""
    if not isinstance(value, (bool, int, float)):
        text = source_text(ctx.arg_spans.get("value")) or "value"
        raise ctx.error(f"full() fills with a number, got {describe(value)}", "value",
                        f"for a tensor use where(...) or {text} * ones(...)")
    default = ("bool" if isinstance(value, bool) else "i64" if isinstance(value, int) and like is None
               else _like_dtype(ctx, like))
    dt = _dtype(ctx, dtype, default)
    if isinstance(value, float) and not math.isfinite(value) and dt not in ("f16", "f32", "f64", "bf16"):
        raise ctx.error(f"full() cannot fill {dt} with {value}", "value")
    return _fill(ctx, shape, like, value, dt)


def _like_dtype(ctx: Ctx, like) -> str:
    if isinstance(like, Value):
        return like.dtype
    return _float_dtype(ctx, None)


def masked_fill(ctx: Ctx, x: "T", mask: "T", value: "T"):
    """torch's masked_fill: `value` where the bool `mask` (broadcast to x) holds, x elsewhere. The
    gradient goes to x where the mask is false and, for a tensor value, to value where it is true."""
    x = _t(ctx, x, arg="x")
    m = _t(ctx, mask, arg="mask")
    if m.dtype != "bool":
        text = source_text(ctx.arg_spans.get("mask")) or "mask"
        raise ctx.error(f"masked_fill() needs a bool mask, got {m.type}", "mask", f"compare first, e.g. {text} != 0")
    if m.rank > x.rank:
        raise ctx.error(f"masked_fill() mask {m.type} has more axes than x {x.type}", "mask", cls=DslShapeError)
    if isinstance(value, float) and x.dtype in ("i64", "i32"):
        raise ctx.error(f"masked_fill() cannot fill {x.type} with the float {value}", "value")
    v = _t(ctx, value, x, "value")
    if v.dtype != x.dtype or v.rank:
        raise ctx.error(f"masked_fill() fills with a number or a scalar of x's dtype {x.dtype}, got {v.type}",
                        "value")
    return ctx.b.op("Where", [m, v, x])


CREATION = {"arange": arange, "zeros": zeros, "ones": ones, "full": full, "masked_fill": masked_fill}
BUILTINS.update(CREATION)
