"""Convolutions: conv1d, conv2d, conv2d_transpose (torch's padding and output_padding), conv3d. Conv /
ConvTranspose nodes, or patches and MatMuls (--conv-lowering im2col, or a transposed convolution's
`matmuls` formulation)."""

import numpy as np

from ...diagnostics import DslShapeError
from ...ir import patterns
from .. import init as I
from ..calls import Ctx
from ..values import Symbol
from .activations import _activate
from .common import _float_tensor, _init, _record, _weighted
from .spatial import (_named_spatial, _pads, _pair, _ranked_input, _same_at_run_time, _spatial_input, _tuple,
                      _window_pads)


def conv2d(ctx: Ctx, x: "T", filters: "count", kernel: "ints" = 3, strides: "ints" = 1, padding=Symbol("valid"),
           dilation: "ints" = 1, groups: "count" = 1, activation=None, use_bias: "bool" = True,
           kernel_init: "word" = Symbol("glorot_uniform")):
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    k, s, d = _pair(ctx, kernel, "kernel"), _pair(ctx, strides, "strides"), _pair(ctx, dilation, "dilation")
    cin = x.shape[1]
    if not isinstance(cin, int) or cin % groups or filters % groups:
        raise ctx.error(f"conv2d with groups={groups} needs channels divisible by it, got {x.type} "
                        f"and {filters} filters", "groups", cls=DslShapeError)
    x, padding, same_dims = _same_at_run_time(ctx, x, padding, k, s, d)
    pads = _pads(ctx, padding, x, k, s, d)
    path = _weighted(ctx)
    fan_in, fan_out = cin // groups * k[0] * k[1], filters * k[0] * k[1]
    w = ctx.lw.weight(f"{path}.weight", (filters, cin // groups, *k), _init(ctx, kernel_init, "kernel_init", fan_in, fan_out),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    attrs = {"strides": s, "pads": pads, "dilations": d, "group": groups}
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv2d_im2col(ctx.b, x, w, bias, s, pads, d, groups)
    else:
        y = ctx.b.op("Conv", [x, w] + ([bias] if bias is not None else []), {"kernel_shape": k, **attrs})
    y = _named_spatial(ctx, y, same_dims)
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


def _output_padding(ctx: Ctx, output_padding, padding, s: list[int], d: list[int]) -> list[int]:
    """torch's output_padding: extra rows/columns at the bottom/right, each smaller than the stride
    or the dilation on its axis (else the size is not ambiguous and torch refuses it too)."""
    vals = [output_padding] * 2 if isinstance(output_padding, int) else list(output_padding)
    if len(vals) != 2 or any(v < 0 for v in vals):
        raise ctx.error(f"conv2d_transpose expects `output_padding` as an integer or a pair [h, w] of "
                        f"integers >= 0, got {output_padding}", "output_padding")
    for v, si, di, axis in zip(vals, s, d, ("height", "width")):
        if v >= max(si, di):
            raise ctx.error(f"conv2d_transpose output_padding {v} on the {axis} must be smaller than the stride "
                            f"{si} or the dilation {di}", "output_padding",
                            "output_padding picks one of the `stride` output sizes that a conv maps to the same "
                            "input size; use strides > output_padding")
    if any(vals) and isinstance(padding, Symbol) and padding.name == "same":
        raise ctx.error("conv2d_transpose output_padding needs explicit padding: `same` already makes the output "
                        "input * strides", "output_padding", "give padding as an integer or [top, left, bottom, right]")
    return vals


def conv2d_transpose(ctx: Ctx, x: "T", filters: "count", kernel: "ints" = 3, strides: "ints" = 1,
                     padding=Symbol("valid"), dilation: "ints" = 1, activation=None, use_bias: "bool" = True,
                     kernel_init: "word" = Symbol("glorot_uniform"), output_padding: "ints" = 0):
    """torch ConvTranspose2d: padding=p crops p from each side of the full transposed convolution,
    [top, left, bottom, right] each side on its own; output_padding adds rows/columns at the end."""
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    k, s, d = _pair(ctx, kernel, "kernel"), _pair(ctx, strides, "strides"), _pair(ctx, dilation, "dilation")
    cin = x.shape[1]
    if not isinstance(cin, int):
        raise ctx.error(f"conv2d_transpose needs a static channel axis 1, got {x.type}", "x", cls=DslShapeError)
    out_pad = _output_padding(ctx, output_padding, padding, s, d)
    if isinstance(padding, Symbol) and padding.name == "same":
        # Keras: output = input * stride; pad what the full transposed conv adds beyond that.
        begin, end = [], []
        for i in range(2):
            total = (k[i] - 1) * d[i] + 1 - s[i]  # (n - 1) * s + (k - 1) * d + 1 - n * s: n cancels
            if total < 0:
                out_pad[i], total = -total, 0
            begin.append(total // 2)
            end.append(total - total // 2)
        pads = begin + end
    else:
        pads = _pads(ctx, padding, x, k, s, d)
        if any(p < 0 for p in pads):
            raise ctx.error(f"conv2d_transpose padding {padding} is negative", "padding")
        for i, n in enumerate(x.shape[2:]):
            if isinstance(n, int) and (n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i] - pads[i] - pads[i + 2] < 1:
                raise ctx.error(f"conv2d_transpose padding {padding} crops all of the {(n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i]} "
                                f"output {('rows', 'columns')[i]} of {x.type}", "padding", "use a smaller padding",
                                DslShapeError)
    path = _weighted(ctx)
    fan_in, fan_out = filters * k[0] * k[1], cin * k[0] * k[1]
    w = ctx.lw.weight(f"{path}.weight", (cin, filters, *k), _init(ctx, kernel_init, "kernel_init", fan_in, fan_out),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    beyond = [0, 0]  # output_padding >= stride (below the dilation), which onnxruntime refuses:
    for i in range(2):  # less end padding gives the same rows, then zeros past every window
        if out_pad[i] >= s[i]:
            cut = min(out_pad[i], pads[i + 2])
            pads[i + 2] -= cut
            beyond[i], out_pad[i] = out_pad[i] - cut, 0
    b = ctx.b
    inner_bias = bias if not any(beyond) else None  # else added after the zero rows, as torch's reach them
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv_transpose2d_im2col(b, x, w, inner_bias, s, pads, d, 1, out_pad)
    else:
        out_hw = [(n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i] - pads[i] - pads[i + 2]
                  for i, n in enumerate(x.shape[2:])] if all(isinstance(n, int) for n in x.shape[2:]) else None
        if out_hw and patterns.transposed_conv_form("conv_transpose", x, w.shape, s, pads, d, out_hw) == "matmuls":
            y = patterns.conv_transpose2d_matmuls(b, x, w, inner_bias, s, pads, d, out_hw)
        else:
            attrs = {"kernel_shape": k, "strides": s, "pads": pads, "dilations": d, "output_padding": out_pad}
            y = b.op("ConvTranspose", [x, w] + ([inner_bias] if inner_bias is not None else []), attrs)
    if any(beyond):
        y = patterns.pad_or_crop(b, y, {2: (0, beyond[0]), 3: (0, beyond[1])})
        if bias is not None:
            y = b.op("Add", [y, b.op("Reshape", [bias, b.ints([-1, 1, 1])])])
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


def conv1d(ctx: Ctx, x: "T", filters: "count", kernel: "count" = 3, strides: "count" = 1,
           padding=Symbol("valid"), dilation: "count" = 1, groups: "count" = 1, activation=None,
           use_bias: "bool" = True, kernel_init: "word" = Symbol("glorot_uniform")):
    """x [N, C, L] -> [N, filters, L']: conv2d on a 1-high image. The weight is [filters, C/groups,
    kernel], as torch Conv1d keeps it."""
    x = _float_tensor(ctx, x, "x")
    if x.rank != 3:
        raise ctx.error(f"conv1d() expects a rank-3 value [N, C, L], got {x.type}", "x", cls=DslShapeError)
    if isinstance(padding, list):
        raise ctx.error("conv1d padding must be `same`, `valid` or an integer", "padding")
    cin = x.shape[1]
    if not isinstance(cin, int) or cin % groups or filters % groups:
        raise ctx.error(f"conv1d with groups={groups} needs channels divisible by it, got {x.type} "
                        f"and {filters} filters", "groups", cls=DslShapeError)
    b = ctx.b
    image = b.op("Unsqueeze", [x, b.ints([2])])  # [N, C, 1, L]
    k, s, d = [1, kernel], [1, strides], [1, dilation]
    image, padding, same_dims = _same_at_run_time(ctx, image, padding, k, s, d)
    pads = _pads(ctx, padding, image, k, s, d)
    pads[0] = pads[2] = 0  # nothing above or below the one row
    path = _weighted(ctx)
    w = ctx.lw.weight(f"{path}.weight", (filters, cin // groups, kernel),
                      _init(ctx, kernel_init, "kernel_init", cin // groups * kernel, filters * kernel),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    w4 = b.op("Unsqueeze", [w, b.ints([2])])
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv2d_im2col(b, image, w4, bias, s, pads, d, groups)
    else:
        attrs = {"kernel_shape": k, "strides": s, "pads": pads, "dilations": d, "group": groups}
        y = b.op("Conv", [image, w4] + ([bias] if bias is not None else []), attrs)
    y = b.op("Squeeze", [_named_spatial(ctx, y, same_dims), b.ints([2])])
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


def conv3d(ctx: Ctx, x: "T", filters: "count", kernel: "ints" = 3, strides: "ints" = 1, padding=Symbol("valid"),
           dilation: "ints" = 1, groups: "count" = 1, activation=None, use_bias: "bool" = True,
           kernel_init: "word" = Symbol("glorot_uniform")):
    """x [N, C, D, H, W] -> [N, filters, D', H', W'], weight [filters, C/groups, kd, kh, kw] as torch
    Conv3d; padding: valid, same, one number, one per axis or [d0, h0, w0, d1, h1, w1]."""
    x = _ranked_input(ctx, x, 3)
    k, s, d = _tuple(ctx, kernel, 3, "kernel"), _tuple(ctx, strides, 3, "strides"), _tuple(ctx, dilation, 3, "dilation")
    cin = x.shape[1]
    if not isinstance(cin, int) or cin % groups or filters % groups:
        raise ctx.error(f"conv3d with groups={groups} needs channels divisible by it, got {x.type} "
                        f"and {filters} filters", "groups", cls=DslShapeError)
    x, padding, same_dims = _same_at_run_time(ctx, x, padding, k, s, d)
    pads = _window_pads(ctx, padding, x, k, s, d, pool=False)
    path = _weighted(ctx)
    taps = k[0] * k[1] * k[2]
    w = ctx.lw.weight(f"{path}.weight", (filters, cin // groups, *k),
                      _init(ctx, kernel_init, "kernel_init", cin // groups * taps, filters * taps),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv_nd_im2col(ctx.b, x, w, bias, s, pads, d, groups)
    else:
        attrs = {"kernel_shape": k, "strides": s, "pads": pads, "dilations": d, "group": groups}
        y = ctx.b.op("Conv", [x, w] + ([bias] if bias is not None else []), attrs)
    y = _named_spatial(ctx, y, same_dims)
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


CONV = {"conv2d": conv2d, "conv2d_transpose": conv2d_transpose, "conv1d": conv1d, "conv3d": conv3d}
