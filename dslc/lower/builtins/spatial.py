"""The arguments of the layers over spatial axes [N, C, *spatial] (convolutions, pools, upsampling):
the input's rank, kernel / stride / dilation tuples, and padding as ONNX `pads` (valid, Keras' same,
explicit widths; `same` at stride > 1 on a symbolic dim pads at run time)."""

import math

import numpy as np

from ...diagnostics import DslShapeError, source_text
from ...ir.core import Value, dim_ceil_div
from ..calls import Ctx
from ..values import Symbol, describe
from .common import _float_tensor


def _pair(ctx: Ctx, v, arg: str) -> list[int]:
    vals = [v, v] if isinstance(v, int) else list(v)
    if len(vals) != 2 or any(x < 1 for x in vals):
        raise ctx.error(f"{ctx.name}() expects `{arg}` as a positive integer or a pair, got {v}", arg)
    return vals


def _tuple(ctx: Ctx, v, n: int, arg: str) -> list[int]:
    vals = [v] * n if isinstance(v, int) else list(v)
    if len(vals) != n or any(x < 1 for x in vals):
        what = "integer" if n == 1 else f"integer or a list of {n}"
        raise ctx.error(f"{ctx.name}() expects `{arg}` as a positive {what}, got {describe(v)}", arg)
    return vals


def _spatial_input(ctx: Ctx, x: Value) -> Value:
    if x.rank != 4:
        hint = None
        if x.rank == 2:  # a flat image: suggest the square it most likely was
            side = math.isqrt(x.shape[1]) if isinstance(x.shape[1], int) else 0
            text = source_text(ctx.arg_spans.get("x")) or "x"
            hint = (f"reshape it to [N, C, H, W] first, e.g. reshape({text}, [-1, 1, {side}, {side}])"
                    if side and side * side == x.shape[1] else "reshape it to [N, C, H, W] first")
        raise ctx.error(f"{ctx.name}() expects a rank-4 value [N, C, H, W], got {x.type}", "x", hint,
                        DslShapeError)
    return x


_LAYOUTS = {1: "[N, C, L]", 3: "[N, C, D, H, W]"}


def _ranked_input(ctx: Ctx, x, spatial: int) -> Value:
    x = _float_tensor(ctx, x, "x")
    if x.rank != spatial + 2:
        raise ctx.error(f"{ctx.name}() expects a rank-{spatial + 2} value {_LAYOUTS[spatial]}, got {x.type}", "x",
                        cls=DslShapeError)
    return x


def _same_pads(ctx: Ctx, x: Value, kernel: list, strides: list, dilation: list) -> list[int]:
    """TF/Keras 'same' padding: output = ceil(in / stride), the odd pixel at the end. At stride 1
    the total is (k - 1) * dilation whatever the size, so a symbolic H or W needs no value."""
    begin, end = [], []
    for n, k, s, d in zip(x.shape[2:], kernel, strides, dilation):
        if isinstance(n, int):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        elif s == 1:
            total = (k - 1) * d
        else:  # the callers pad first (_same_at_run_time); internal misuse would land here
            raise ctx.error(f"padding=same at stride {s} needs static spatial dims, got {x.type}", "padding",
                            "give the spatial dims as numbers, or pad explicitly (padding=INT or a list)")
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def _same_at_run_time(ctx: Ctx, x: Value, padding, kernel, strides, dilation=None, fill: float = 0.0):
    """padding=same at stride > 1 on a symbolic dim: the pads depend on the size mod the stride, so
    x is padded by widths computed from Shape(x) (the formula of _same_pads) and the op runs with
    padding=valid. Returns (x, padding, out): `out` the output's spatial sizes ceil(n / stride) as an
    i64 vector computed from Shape(x), for _named_spatial, or None where nothing changed. The pad
    widths and `out` carry their symbolic contents (`sym`, as Shape's output does): a width as an
    opaque symbol, `out` as ceil((H)/s), so the result's dims read as Keras' `same` sizes."""
    if not (isinstance(padding, Symbol) and padding.name == "same") or all(
            isinstance(n, int) or st == 1 for n, st in zip(x.shape[2:], strides)):
        return x, padding, None
    b, n = ctx.b, len(kernel)
    dilation = dilation or [1] * n
    size = b.op("Slice", [b.op("Shape", [x]), b.ints([2]), b.ints([2 + n])])
    stride = b.ints(list(strides))
    out = b.op("Div", [b.op("Add", [size, b.ints([st - 1 for st in strides])]), stride])  # ceil(n / s)
    reach = b.ints([(k - 1) * d + 1 for k, d in zip(kernel, dilation)])
    total = b.op("Max", [b.op("Sub", [b.op("Add", [b.op("Mul", [b.op("Sub", [out, b.ints([1] * n)]), stride]), reach]),
                                      size]), b.ints([0] * n)])
    begin = b.op("Div", [total, b.ints([2] * n)])
    pads = b.op("Concat", [b.ints([0, 0]), begin, b.ints([0, 0]), b.op("Sub", [total, begin])], {"axis": 0})
    widths = [_same_pads(ctx, _spatial_like(x, i), [k], [st], [d]) if isinstance(m, int) or st == 1 else
              [f"same_begin({m},{k},{st},{d})", f"same_end({m},{k},{st},{d})"]
              for i, (m, k, st, d) in enumerate(zip(x.shape[2:], kernel, strides, dilation))]
    pads.sym = (0, 0, *[w[0] for w in widths], 0, 0, *[w[1] for w in widths])
    out.sym = tuple(dim_ceil_div(m, st) for m, st in zip(x.shape[2:], strides))
    padded = b.op("Pad", [x, pads, b.const(np.asarray(fill), x.dtype)])
    return padded, Symbol("valid"), out


def _spatial_like(x: Value, axis: int) -> Value:
    """A stand-in [N, C, n] with x's size on one spatial axis (for _same_pads; never emitted)."""
    return Value("spatial", type(x.type)(x.dtype, (*x.shape[:2], x.shape[2 + axis])))


def _named_spatial(ctx: Ctx, y: Value, out: Value | None) -> Value:
    """y with its spatial dims read from `out` (same sizes at run time, dims named ceil(n / stride))."""
    if out is None:
        return y
    b = ctx.b
    head = b.op("Slice", [b.op("Shape", [y]), b.ints([0]), b.ints([2])])
    return b.op("Reshape", [y, b.op("Concat", [head, out], {"axis": 0})])


def _pads(ctx: Ctx, padding, x: Value, kernel, strides, dilation) -> list[int]:
    if isinstance(padding, Symbol):
        if padding.name == "valid":
            return [0, 0, 0, 0]
        if padding.name == "same":
            return _same_pads(ctx, x, kernel, strides, dilation)
    if isinstance(padding, int) and not isinstance(padding, bool):
        return [padding] * 4
    if isinstance(padding, list) and all(isinstance(p, int) for p in padding) and len(padding) in (2, 4):
        return padding * 2 if len(padding) == 2 else padding
    raise ctx.error("padding must be `same`, `valid`, an integer or a list of 2 or 4 integers", "padding")


def _window_pads(ctx: Ctx, padding, x: Value, k: list[int], s: list[int], d: list[int] | None = None,
                 pool: bool = True) -> list[int]:
    """valid | same | INT | one per spatial axis | begin and end per axis, as ONNX `pads` (all the
    begins, then all the ends); none negative, and for a pool each smaller than the window, as
    ONNX and torch require."""
    n = len(k)
    if isinstance(padding, Symbol) and padding.name in ("valid", "same"):
        if padding.name == "valid":
            return [0] * 2 * n
        return _same_pads(ctx, x, k, s, d or [1] * n)
    if isinstance(padding, int) and not isinstance(padding, bool):
        pads = [padding] * 2 * n
    elif isinstance(padding, list) and all(isinstance(p, int) for p in padding) and len(padding) in (n, 2 * n):
        pads = padding * 2 if len(padding) == n else list(padding)
    else:
        lists = f"a list of {n} or {2 * n} integers" if n > 1 else "a list of 2 integers (begin, end)"
        raise ctx.error(f"{ctx.name}() padding must be `same`, `valid`, an integer or {lists}", "padding")
    if not pool and any(p < 0 for p in pads):
        raise ctx.error(f"{ctx.name}() padding {padding} is negative", "padding")
    for i, p in enumerate(pads if pool else []):
        if not 0 <= p < k[i % n]:
            window = k[0] if n == 1 else k
            raise ctx.error(f"{ctx.name}() padding {padding} does not fit the pool window {window}: each pad "
                            f"must be at least 0 and smaller than the window on its axis", "padding",
                            "use a smaller padding or padding=same")
    return pads
