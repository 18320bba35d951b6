"""Conv, ConvTranspose, pooling and bilinear Resize where the spatial dims are known only at run time
(a symbolic H, W, L or D); static shapes keep the rules of conv_pool.py and conv_pool_nd.py. Each
kernel offset reads a strided Slice of the padded input whose end counts from the axis' end, so its
length is the output's at any size; its share goes back through the run-time Slice VJP."""
from __future__ import annotations

import numpy as np

from ...diagnostics import DslError
from ...ir import patterns as P
from ...ir.core import Value
from .common import _c, _input, _mask, _op
from .conv_pool_nd import _attrs_nd, _first_max_shares, _first_of_taps, _pool_form
from .indexing import slice_grad_at_run_time


def _unpadded(b, dxp, x, p) -> Value:
    """Crop the padding off and name the dims as x's (the symbolic expressions may differ in form)."""
    n = x.rank - 2
    dx = P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})
    return dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))


def _windows_back(b, parts, xp, kernel, s, d) -> Value:
    """Sum each offset's share [N, C, *out] back into xp's shape (col2im at run time)."""
    axes, dxp = list(range(2, xp.rank)), None
    for part, (starts, _) in zip(parts, P.tail_window_slices(kernel, s, d)):
        if all(st == 1 for st in s):  # the taps before and the reach after: constant pads
            back = P.pad_or_crop(b, part, {a: (st, (k - 1) * di - st) for a, st, k, di in zip(axes, starts, kernel, d)})
        else:
            back = slice_grad_at_run_time(b, part, xp, b.ints(starts), axes, s)
        dxp = back if dxp is None else _op(b, "Add", dxp, back)
    return dxp


def _max_pool_symbolic(b, node, dys):
    """As `_max_pool_nd`: an offset takes dy where it holds the maximum and no earlier offset did
    (the first maximum in row-major window order wins ties)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    kernel = list(node.attrs["kernel_shape"])
    s, p, d = _attrs_nd(b, node, len(kernel))
    if _pool_form(kernel, s, p, d) == "tiles":
        return [_max_pool_tiles_symbolic(b, x, y, dy, kernel)]
    xp = P.pad_spatial(b, x, p, _c(b, -np.inf, x))
    parts = _first_max_shares(b, xp, y, dy, P.tail_window_slices(kernel, s, d), list(range(2, x.rank)), s)
    return [_unpadded(b, _windows_back(b, parts, xp, kernel, s, d), x, p)]


def _max_pool_tiles_symbolic(b, x, y, dy, kernel):
    """Non-overlapping windows at any size, as `_max_pool_nd_tiles`: the covered part of x as
    [N, C, *out, K] (shapes from Shape(y)), the first maximum of each window by one MatMul with a
    constant 0/1 matrix, and dy back the same way; the rows/columns past the last window get zeros."""
    n, taps = len(kernel), int(np.prod(kernel))
    out = P.slice_axes(b, _op(b, "Shape", y), [2], [2 + n], [0])  # [n] i64
    covered = _op(b, "Slice", x, b.ints([0] * n), _op(b, "Mul", out, b.ints(kernel)), b.ints(list(range(2, 2 + n))))
    split = [b.ints([0, 0])] + [v for i in range(n)
                                for v in (P.slice_axes(b, out, [i], [i + 1], [0]), b.ints([kernel[i]]))]
    perm = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
    windows = _op(b, "Transpose", _op(b, "Reshape", covered, _op(b, "Concat", *split, axis=0)), perm=perm)
    windows = _op(b, "Reshape", windows, _op(b, "Concat", b.ints([0, 0]), out, b.ints([taps]), axis=0))
    at_max = _mask(b, _op(b, "Equal", windows, _op(b, "Unsqueeze", y, b.ints([-1]))), x)
    first = _first_of_taps(b, at_max, taps)
    g = _op(b, "Mul", first, _op(b, "Unsqueeze", dy, b.ints([-1])))
    g = _op(b, "Reshape", g, _op(b, "Concat", b.ints([0, 0]), out, b.ints(kernel), axis=0))
    g = _op(b, "Transpose", g, perm=[int(i) for i in np.argsort(perm)])
    g = _op(b, "Reshape", g, _op(b, "Concat", b.ints([0, 0]), _op(b, "Mul", out, b.ints(kernel)), axis=0))
    missing = _op(b, "Sub", P.slice_axes(b, _op(b, "Shape", x), [2], [2 + n], [0]), _op(b, "Mul", out, b.ints(kernel)))
    g = _op(b, "Pad", g, _op(b, "Concat", b.ints([0] * (n + 2)), b.ints([0, 0]), missing, axis=0))
    return _op(b, "Reshape", g, P.shape_of(b, x))


def _average_pool_symbolic(b, node, dys):
    """Each output's dy / (taps counted) to every tap of its window; without count_include_pad the
    counts near a padded border come from the same window sums over a zero-padded map of ones."""
    x, dy = node.inputs[0], dys[0]
    kernel = list(node.attrs["kernel_shape"])
    s, p, d = _attrs_nd(b, node, len(kernel))
    if node.attrs.get("count_include_pad", 0) or not any(p):
        share = _op(b, "Mul", dy, _c(b, 1.0 / np.prod(kernel), dy))
    else:
        share = _op(b, "Div", dy, P.window_counts(b, x, kernel, s, p, d))
    xp = P.pad_spatial(b, x, p)  # (read for its shape only)
    return [_unpadded(b, _windows_back(b, [share] * int(np.prod(kernel)), xp, kernel, s, d), x, p)]


def _conv_offsets(b, x, w_shape, s, p, d, g):
    """x padded, and per kernel offset its taps grouped as [N, g, C/g, L]."""
    kernel, axes = list(w_shape[2:]), list(range(2, x.rank))
    xp = P.pad_spatial(b, x, p)
    taps = [_op(b, "Reshape", P.slice_axes(b, xp, st, en, axes, s), b.ints([0, g, w_shape[1], -1]))
            for st, en in P.tail_window_slices(kernel, s, d)]
    return xp, taps


def _windows_weight_grad(b, x, dy, w_shape, s, p, d, g) -> Value:
    """dW of Conv(x, W) from dy: per kernel offset, dy times that offset's taps of x, summed over
    the batch and the output positions."""
    o = w_shape[0]
    _, taps = _conv_offsets(b, x, w_shape, s, p, d, g)
    dy_g = _op(b, "Reshape", dy, b.ints([0, g, o // g, -1]))  # [N, g, O/g, L]
    cols = [_op(b, "Unsqueeze", _op(b, "ReduceSum", _op(b, "MatMul", dy_g, _op(b, "Transpose", t, perm=[0, 1, 3, 2])),
                                    b.ints([0]), keepdims=0), b.ints([-1])) for t in taps]  # [g, O/g, C/g, 1]
    dw = cols[0] if len(cols) == 1 else _op(b, "Concat", *cols, axis=-1)
    return _op(b, "Reshape", dw, b.ints(list(w_shape)))


def _windows_input_grad(b, x, w, dy, s, p, d, g) -> Value:
    """dx of Conv(x, W): each offset's W^T dy, sent back through its window slice."""
    o, cg, kernel = w.shape[0], w.shape[1], list(w.shape[2:])
    xp, taps = _conv_offsets(b, x, w.shape, s, p, d, g)
    dy_g = _op(b, "Reshape", dy, b.ints([0, g, o // g, -1]))
    w_t = _op(b, "Transpose", _op(b, "Reshape", w, b.ints([g, o // g, cg, -1])), perm=[3, 0, 2, 1])  # [K, g, C/g, O/g]
    axes, parts = list(range(2, x.rank)), []
    for i, (starts, ends) in enumerate(P.tail_window_slices(kernel, s, d)):
        part = _op(b, "MatMul", _op(b, "Gather", w_t, b.ints(i), axis=0), dy_g)  # [N, g, C/g, L]
        like = P.slice_axes(b, xp, starts, ends, axes, s)
        parts.append(_op(b, "Reshape", part, P.shape_of(b, like)))
    return _unpadded(b, _windows_back(b, parts, xp, kernel, s, d), x, p)


def _transposed_input_grad(b, x, w, dy, s, p, d, g) -> Value:
    """dx of a 2-D Conv as ConvTranspose(dy, W), as the static rule. At stride 1 it has x's size;
    else output_padding (how far x reaches past the last window) is known only at run time: keep
    the end padding and the most output_padding (stride - 1), then cut at x's size. At stride 1 it
    may be a Conv of the flipped kernels, where that is forced (`dslc tune`)."""
    if all(st == 1 for st in s):
        if P.conv_input_grad_form(dy, w.shape, s, p, d, x.shape[2:], g) == "flipped_conv":
            dx = P.conv_input_grad_flipped(b, dy, w, p, d, g)
        else:
            dx = _op(b, "ConvTranspose", dy, w, strides=s, pads=p, dilations=d, group=g)
    else:
        n = x.rank - 2
        full = _op(b, "ConvTranspose", dy, w, strides=s, pads=p[:n] + [0] * n, dilations=d, group=g,
                   output_padding=[st - 1 for st in s])
        dx = _op(b, "Slice", full, b.ints([0] * n), P.slice_axes(b, _op(b, "Shape", x), [2], [x.rank], [0]),
                 b.ints(list(range(2, x.rank))))
    return dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))


def _conv_symbolic(b, node, dys):
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _attrs_nd(b, node, x.rank - 2)
    g = node.attrs.get("group", 1)
    bias = _input(node, 2)
    db = _op(b, "ReduceSum", dy, b.ints([0, *range(2, x.rank)]), keepdims=0) if bias is not None else None
    # conv3d keeps to window slices: no ConvTranspose, as its static rule (_conv_nd)
    input_grad = _transposed_input_grad if x.rank == 4 else _windows_input_grad
    return [input_grad(b, x, w, dy, s, p, d, g), _windows_weight_grad(b, x, dy, w.shape, s, p, d, g), db]


def _conv_transpose_symbolic(b, node, dys):
    """ConvTranspose(x, W) is the adjoint of Conv(., W): dx = Conv(dy, W) (its length is x's at
    run time: output_padding < stride), and dW is Conv's weight gradient with x and dy swapped."""
    (x, w), dy = node.inputs[:2], dys[0]
    s, p, d = _attrs_nd(b, node, x.rank - 2)
    if any(op >= st for op, st in zip(node.attrs.get("output_padding", [0] * (x.rank - 2)), s)):
        raise DslError("cannot differentiate ConvTranspose with output_padding >= stride on symbolic spatial dims",
                       b.span)
    g = node.attrs.get("group", 1)
    dx = _op(b, "Conv", dy, w, strides=s, pads=p, dilations=d, group=g)
    dx = dx if dx.shape == x.shape else _op(b, "Reshape", dx, P.shape_of(b, x))
    bias = _input(node, 2)
    db = _op(b, "ReduceSum", dy, b.ints([0, *range(2, x.rank)]), keepdims=0) if bias is not None else None
    return [dx, _windows_weight_grad(b, dy, x, w.shape, s, p, d, g), db]


def _bilinear_grad_symbolic(b, x, dy, factors):
    """A_h^T dy A_w for any H, W: the W axis, then (transposed) the H axis."""
    size = _op(b, "Shape", x)
    along_w = _bilinear_grad_last_axis(b, dy, P.slice_axes(b, size, [3], [4], [0]), factors[1])  # [N, C, H*sh, W]
    along_h = _bilinear_grad_last_axis(b, _op(b, "Transpose", along_w, perm=[0, 1, 3, 2]),
                                       P.slice_axes(b, size, [2], [3], [0]), factors[0])  # [N, C, W, H]
    return _op(b, "Reshape", _op(b, "Transpose", along_h, perm=[0, 1, 3, 2]), size)


def _bilinear_grad_last_axis(b, dy, n, s):
    """dy [..., n*s] -> [..., n] (n a run-time [1] i64): per output block of s, its three taps'
    shares (one MatMul), shifted into the padded xe, whose two edge cells fold back onto x's ends."""
    r = dy.rank
    head = P.slice_axes(b, _op(b, "Shape", dy), [0], [r - 1], [0])
    blocks = _op(b, "Reshape", dy, _op(b, "Concat", head, n, b.ints([s]), axis=0))  # [..., n, s]
    taps = _op(b, "MatMul", blocks, _c(b, P.bilinear_taps(s), dy))  # [..., n, 3]
    dxe = None
    for j in range(3):
        part = _op(b, "Squeeze", P.slice_axes(b, taps, [j], [j + 1], [r]), b.ints([r]))
        part = P.pad_or_crop(b, part, {r - 1: (j, 2 - j)})
        dxe = part if dxe is None else _op(b, "Add", dxe, part)
    rest = _op(b, "Sub", n, b.ints([1]))
    first = _op(b, "Pad", P.slice_axes(b, dxe, [0], [1], [r - 1]),
                _op(b, "Concat", b.ints([0] * (2 * r - 1)), rest, axis=0))
    last = _op(b, "Pad", P.slice_axes(b, dxe, [-1], [P.INT64_MAX], [r - 1]),
               _op(b, "Concat", b.ints([0] * (r - 1)), rest, b.ints([0] * r), axis=0))
    inner = P.slice_axes(b, dxe, [1], [-1], [r - 1])
    return _op(b, "Add", _op(b, "Add", inner, first), last)
