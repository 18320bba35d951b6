"""Rules of Conv, ConvTranspose, MaxPool, AveragePool, GlobalAveragePool and Resize: the entry points,
and the 2-D forms on static shapes. Other spatial ranks (1-D, 3-D) are in conv_pool_nd.py; spatial
dims known only at run time in conv_pool_symbolic.py."""
from __future__ import annotations

import numpy as np

from ...diagnostics import DslError
from ...ir import patterns as P
from ...ir.core import Value
from .common import Rule, _c, _input, _mask, _op
from .conv_pool_nd import _average_pool_nd, _conv_nd, _max_pool_nd, _pool_form, _window, _window_counts
from .conv_pool_symbolic import (_average_pool_symbolic, _bilinear_grad_symbolic, _conv_symbolic,
                                 _conv_transpose_symbolic, _max_pool_symbolic)
from .indexing import slice_grad
from .reductions import _count_ratio


def _output_padding(x: Value, y: Value, kernel, strides, pads, dilations) -> list[int]:
    """ConvTranspose output_padding that maps y's spatial size back to exactly x's."""
    return [x.shape[2 + i] - (strides[i] * (y.shape[2 + i] - 1) + (kernel[i] - 1) * dilations[i] + 1
                              - pads[i] - pads[i + 2]) for i in range(2)]


def _bias_grad(b, node, dy):
    bias = _input(node, 2)
    return _op(b, "ReduceSum", dy, b.ints([0, 2, 3]), keepdims=0) if bias is not None else None


def _conv(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _conv_symbolic(b, node, dys)
    if node.inputs[0].rank != 4:
        return _conv_nd(b, node, dys)
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _window(b, node)
    g = node.attrs.get("group", 1)
    x_hw = tuple(x.shape[2:])
    form = P.conv_input_grad_form(dy, w.shape, s, p, d, x_hw, g)
    if form == "matmuls":
        dx = P.conv_transpose2d_matmuls(b, dy, w, None, s, p, d, x_hw)
    elif form == "flipped_conv":
        dx = P.conv_input_grad_flipped(b, dy, w, p, d, g)
    else:
        out_pad = _output_padding(x, dy, w.shape[2:], s, p, d)
        dx = _op(b, "ConvTranspose", dy, w, strides=s, pads=p, dilations=d, group=g, output_padding=out_pad)
    dw = P.conv_weight_grad(b, x, dy, w.shape, s, p, d, g)
    return [dx, dw, _bias_grad(b, node, dy)]


def _conv_transpose(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _conv_transpose_symbolic(b, node, dys)
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _window(b, node)
    g = node.attrs.get("group", 1)
    dx = _op(b, "Conv", dy, w, strides=s, pads=p, dilations=d, group=g)
    # ConvTranspose is the adjoint of Conv(., W): its weight gradient is Conv's with x and dy swapped
    dw = P.conv_weight_grad(b, dy, x, w.shape, s, p, d, g)
    return [dx, dw, _bias_grad(b, node, dy)]


def _max_pool(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _max_pool_symbolic(b, node, dys)
    if node.inputs[0].rank != 4:
        return _max_pool_nd(b, node, dys)
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    s, p, d = _window(b, node)
    kernel = list(node.attrs["kernel_shape"])
    if _pool_form(kernel, s, p, d) == "tiles":
        return [_max_pool_tiles(b, x, y, dy, kernel)]
    return [_max_pool_windows(b, x, y, dy, kernel, s, p, d)]


def _max_pool_tiles(b, x, y, dy, kernel):
    """Non-overlapping windows. Pooled values are spread back over their windows by `_spread`, and
    each maximum counts the maxima before it in its window, each by one MatMul with a constant 0/1
    matrix: every op stays 2- to 4-D, where onnxruntime is several times faster than on 6-D
    broadcast tiles (PERF-NOTES). On ties the whole gradient goes to the first maximum in row-major
    window order, as PyTorch and TensorFlow route it: the maximum with none before it."""
    if not isinstance(x.shape[1], int):
        return _max_pool_windows(b, x, y, dy, kernel, kernel, [0, 0, 0, 0], [1, 1])
    at_max = _mask(b, _op(b, "Equal", x, _spread(b, y, x, kernel)), x)  # 0/1 by Cast: Where is slow in onnxruntime
    # at_max minus the number of maxima before it: 1 for the first maximum, <= 0 for any other cell;
    # Relu makes that 0/1 in one op (no Greater + Cast)
    first = _op(b, "Relu", _band_product(b, at_max, _first_matrix(kernel, x.shape[3]), y, kernel))
    return _op(b, "Mul", first, _spread(b, dy, x, kernel))


def _first_matrix(kernel, w: int) -> np.ndarray:
    """[kh*W, kh*W]: the identity minus 1 where cell p of a band of kh image rows comes before cell q
    in the same window (row-major window order); cells past the last window column are in none."""
    kh, kw = kernel
    row, col = np.divmod(np.arange(kh * w), w)
    window = np.where(col < w // kw * kw, col // kw, -1)
    rank = row * kw + col % kw
    same = (window[:, None] == window[None, :]) & (window[:, None] >= 0)
    return np.eye(kh * w) - (same & (rank[:, None] < rank[None, :]))


def _band_product(b, v, matrix, pooled, kernel):
    """v (full size) times `matrix` band by band, back in v's shape (rows past the last window: 0)."""
    kh, (h, w), ho = kernel[0], v.shape[2:], pooled.shape[2]
    covered = P.slice_axes(b, v, [0], [ho * kh], [2]) if ho * kh != h else v
    bands = _op(b, "MatMul", _op(b, "Reshape", covered, b.ints([-1, kh * w])), _c(b, matrix, v))
    return P.pad_or_crop(b, _op(b, "Reshape", bands, P.shape_with(b, v, {2: ho * kh})), {2: (0, h - ho * kh)})


def _tile_matrix(kernel, w: int, wo: int) -> np.ndarray:
    """[kh*W, Wo]: row (r, c) of a band of kh image rows belongs to window column o when c does."""
    kh, kw = kernel
    m = np.zeros((kh, w, wo))
    for o in range(wo):
        m[:, o * kw:(o + 1) * kw, o] = 1
    return m.reshape(kh * w, wo)


def _spread(b, v, full, kernel):
    """[N, C, Ho, Wo] -> full's shape, each value repeated over its kh x kw window (zeros where no
    window reaches)."""
    kh, (h, w), (ho, wo) = kernel[0], full.shape[2:], v.shape[2:]
    bands = _op(b, "MatMul", _op(b, "Reshape", v, b.ints([-1, wo])), _c(b, _tile_matrix(kernel, w, wo).T, v))
    out = _op(b, "Reshape", bands, P.shape_with(b, full, {2: ho * kh}))
    return P.pad_or_crop(b, out, {2: (0, h - ho * kh)})  # rows past the last window


def _max_pool_windows(b, x, y, dy, kernel, s, p, d):
    """General windows: one strided Slice of the (-inf padded) input per kernel offset, visited in
    row-major window order; an offset takes dy where it holds the maximum and no earlier offset did
    (the first maximum wins ties, as in PyTorch and TensorFlow), back through the Slice VJP."""
    xp = P.pad_or_crop(b, x, {2: (p[0], p[2]), 3: (p[1], p[3])}, value=_c(b, -np.inf, x))
    ho, wo = y.shape[2:]
    dxp, seen = None, None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            starts = [i * d[0], j * d[1]]
            ends = [starts[0] + s[0] * (ho - 1) + 1, starts[1] + s[1] * (wo - 1) + 1]
            taken = _mask(b, _op(b, "Equal", P.slice_axes(b, xp, starts, ends, [2, 3], s), y), dy)
            first = taken if seen is None else _op(b, "Mul", taken, _op(b, "Sub", _c(b, 1, dy), seen))
            seen = taken if seen is None else _op(b, "Add", seen, first)
            part = slice_grad(b, _op(b, "Mul", first, dy), xp, starts, ends, [2, 3], s)
            dxp = part if dxp is None else _op(b, "Add", dxp, part)
    return P.pad_or_crop(b, dxp, {2: (-p[0], -p[2]), 3: (-p[1], -p[3])})


def _average_pool(b, node, dys):
    if P.symbolic_spatial(node.inputs[0]):
        return _average_pool_symbolic(b, node, dys)
    if node.inputs[0].rank != 4:
        return _average_pool_nd(b, node, dys)
    x, dy = node.inputs[0], dys[0]
    s, p, d = _window(b, node)
    (kh, kw), (h, w), (ho, wo) = node.attrs["kernel_shape"], x.shape[2:], dy.shape[2:]
    include = node.attrs.get("count_include_pad", 0)
    counts = np.outer(_window_counts(h, kh, s[0], d[0], p[0], p[2], include),
                      _window_counts(w, kw, s[1], d[1], p[1], p[3], include))
    inv = 1.0 / (counts.flat[0] if (counts == counts.flat[0]).all() else counts)
    # every channel alike: a ones kernel on [N*C, 1, Ho, Wo] spreads each share over its window
    per_map = _op(b, "Reshape", _op(b, "Mul", dy, _c(b, inv, dy)), b.ints([-1, 1, ho, wo]))
    out_pad = _output_padding(x, dy, (kh, kw), s, p, d)
    spread = _op(b, "ConvTranspose", per_map, _c(b, np.ones((1, 1, kh, kw)), dy), strides=s, pads=p,
                 dilations=d, output_padding=out_pad)
    return [_op(b, "Reshape", spread, P.shape_of(b, x))]


def _global_average_pool(b, node, dys):
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    return [_op(b, "Div", _op(b, "Expand", dy, P.shape_of(b, x)), _count_ratio(b, x, y))]


def _resize(b, node, dys):
    """Linear Resize (half_pixel) by integer scales on [N, C, H, W] is y = A_h x A_w^T with
    constant interpolation matrices, so dx = A_h^T dy A_w: two MatMuls, differentiable again."""
    x, dy = node.inputs[0], dys[0]
    mode, coords = node.attrs.get("mode", "nearest"), node.attrs.get("coordinate_transformation_mode", "half_pixel")
    scales = [float(f) for f in np.asarray(node.inputs[2].const).reshape(-1)]
    h, w = x.shape[2], x.shape[3]
    if (mode == "linear" and coords == "half_pixel" and x.rank == 4 and scales[:2] == [1.0, 1.0]
            and P.symbolic_spatial(x)):
        return [_bilinear_grad_symbolic(b, x, dy, [int(f) for f in scales[2:]])]
    if (mode != "linear" or coords != "half_pixel" or x.rank != 4 or scales[:2] != [1.0, 1.0]
            or not isinstance(h, int) or not isinstance(w, int)):
        raise DslError(f"cannot differentiate Resize with mode {mode}, {coords} coordinates, scales {scales} "
                       f"on {x.type}", b.span)
    a_h = P.linear_resize_matrix(h, int(scales[2]))  # [H*sh, H]
    a_w = P.linear_resize_matrix(w, int(scales[3]))  # [W*sw, W]
    rows = _op(b, "MatMul", dy, _c(b, a_w, dy))  # [N, C, H*sh, W]
    return [_op(b, "MatMul", _c(b, a_h.T, dy), rows)]


CONV_POOL: dict[str, Rule] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "Resize": _resize,
}
