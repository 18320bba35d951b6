"""Layers without weights over spatial axes: max and average pools in 1, 2 and 3 dimensions, global
average pools, and upsample2d."""

import numpy as np

from ...ir import patterns
from ...ir.core import DTYPES, Value
from ..calls import Ctx
from ..values import Symbol
from .common import _float_tensor, _layer_name, _record
from .spatial import (_named_spatial, _pair, _ranked_input, _same_at_run_time, _spatial_input, _tuple,
                      _window_pads)


def _pool(ctx: Ctx, op: str, x, pool, strides, padding, extra=None) -> Value:
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    k = _pair(ctx, pool, "pool")
    s = _pair(ctx, strides if strides is not None else pool, "strides")
    return _record(ctx, _layer_name(ctx), _pool_op(ctx, op, x, k, s, padding, extra))


def _pool_op(ctx: Ctx, op: str, x: Value, k, s, padding, extra=None) -> Value:
    """MaxPool / AveragePool on [N, C, *spatial]; `same` at stride > 1 on a symbolic dim pads at run
    time (-inf for the maximum; the average divides by the same pool of a zero-padded map of ones, so
    the padding is not counted)."""
    padded, padding, same_dims = _same_at_run_time(ctx, x, padding, k, s, fill=-np.inf if op == "MaxPool" else 0.0)
    pads = _window_pads(ctx, padding, padded, k, s)
    attrs = {"kernel_shape": k, "strides": s, "pads": pads, **(extra or {})}
    y = ctx.b.op(op, [padded], attrs)
    if same_dims is not None and op == "AveragePool":
        b = ctx.b
        ones = b.op("ConstantOfShape", [b.op("Shape", [x])], {"value": np.ones(1, DTYPES[x.dtype])})
        mask, _, _ = _same_at_run_time(ctx, ones, Symbol("same"), k, s)
        y = b.op("Div", [y, b.op(op, [mask], attrs)])
    return _named_spatial(ctx, y, same_dims)


def max_pool2d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool(ctx, "MaxPool", x, pool, strides, padding)


def avg_pool2d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    # Keras averages over the window taps inside the image: padding is not counted
    return _pool(ctx, "AveragePool", x, pool, strides, padding, {"count_include_pad": 0})


def global_avg_pool2d(ctx: Ctx, x: "T"):
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    y = ctx.b.op("Flatten", [ctx.b.op("GlobalAveragePool", [x])], {"axis": 1})
    return _record(ctx, _layer_name(ctx), y)


# 1-D pools run as 2-D ones on a one-row image; 3-D pools are 5-D MaxPool / AveragePool.
def _pool_1d(ctx: Ctx, op: str, x, pool, strides, padding, extra=None) -> Value:
    x = _ranked_input(ctx, x, 1)
    k = _tuple(ctx, pool, 1, "pool")
    s = _tuple(ctx, strides if strides is not None else pool, 1, "strides")
    b = ctx.b
    image = b.op("Unsqueeze", [x, b.ints([2])])  # [N, C, 1, L]: the 2-D pool and its gradient rule
    if not (isinstance(padding, Symbol) and padding.name == "same"):  # (same: worked out on the image)
        pads = _window_pads(ctx, padding, x, k, s)
        padding = [0, pads[0], 0, pads[1]]
    y = _pool_op(ctx, op, image, [1, *k], [1, *s], padding, extra)
    return _record(ctx, _layer_name(ctx), b.op("Squeeze", [y, b.ints([2])]))


def _pool_3d(ctx: Ctx, op: str, x, pool, strides, padding, extra=None) -> Value:
    x = _ranked_input(ctx, x, 3)
    k = _tuple(ctx, pool, 3, "pool")
    s = _tuple(ctx, strides if strides is not None else pool, 3, "strides")
    return _record(ctx, _layer_name(ctx), _pool_op(ctx, op, x, k, s, padding, extra))


def max_pool1d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_1d(ctx, "MaxPool", x, pool, strides, padding)


def avg_pool1d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_1d(ctx, "AveragePool", x, pool, strides, padding, {"count_include_pad": 0})


def max_pool3d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_3d(ctx, "MaxPool", x, pool, strides, padding)


def avg_pool3d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_3d(ctx, "AveragePool", x, pool, strides, padding, {"count_include_pad": 0})


def _global_mean(spatial: int):
    def pool(ctx: Ctx, x: "T"):
        x = _ranked_input(ctx, x, spatial)
        y = ctx.b.op("ReduceMean", [x, ctx.b.ints(list(range(2, 2 + spatial)))], {"keepdims": 0})
        return _record(ctx, _layer_name(ctx), y)
    return pool


def upsample2d(ctx: Ctx, x: "T", size: "ints" = 2, mode: "word" = Symbol("nearest")):
    """Each pixel repeated (nearest), or bilinear interpolation as torch's
    interpolate(mode="bilinear", align_corners=False) (ONNX Resize, half_pixel coordinates)."""
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    sh, sw = _pair(ctx, size, "size")
    if mode.name not in ("nearest", "bilinear"):
        raise ctx.error(f"unknown upsampling mode `{mode.name}`", "mode", "use nearest or bilinear")
    up = patterns.upsample_nearest if mode.name == "nearest" else patterns.upsample_bilinear
    return _record(ctx, _layer_name(ctx), up(ctx.b, x, sh, sw))


POOLS = {
    "max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d, "global_avg_pool2d": global_avg_pool2d, "upsample2d": upsample2d,
    "max_pool1d": max_pool1d, "avg_pool1d": avg_pool1d, "global_avg_pool1d": _global_mean(1),
    "max_pool3d": max_pool3d, "avg_pool3d": avg_pool3d, "global_avg_pool3d": _global_mean(3),
}
