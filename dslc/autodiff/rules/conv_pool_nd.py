"""Conv and pooling over 1 or 3 spatial axes (static shapes), and the window attributes every conv /
pool rule reads (strides, pads, dilations; which max-pool form; taps counted per window)."""
from __future__ import annotations

import itertools

import numpy as np

from ...diagnostics import DslError
from ...ir import patterns as P
from ...ir.builder import Builder
from ...ir.core import DTYPES, Node, TensorType, Value
from ...ir.formulations import choose
from .common import _c, _input, _mask, _op
from .indexing import slice_grad


def _window(b: Builder, node: Node) -> tuple[list, list, list]:
    if node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise DslError(f"cannot differentiate through {node.op} with auto_pad", b.span)
    if node.attrs.get("ceil_mode", 0):
        raise DslError(f"cannot differentiate through {node.op} with ceil_mode", b.span)
    a = node.attrs
    return list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0])), list(a.get("dilations", [1, 1]))


def _attrs_nd(b: Builder, node: Node, n: int) -> tuple[list, list, list]:
    _window(b, node)  # (refuses auto_pad and ceil_mode)
    a = node.attrs
    return list(a.get("strides", [1] * n)), list(a.get("pads", [0] * 2 * n)), list(a.get("dilations", [1] * n))


def _pool_form(kernel, s, p, d) -> str:
    """`tiles` where the windows tile the input (then the default), else `windows`."""
    tiles = list(kernel) == list(s) and not any(p) and list(d) == [1] * len(kernel)
    return choose("max_pool_grad", "tiles" if tiles else "windows", None if tiles else ("windows",))


def _window_counts(n, k, s, d, p0, p1, include_pad) -> np.ndarray:
    """How many taps of each output window fall inside the input (or inside the padded input)."""
    out = P.conv_out_size(n, k, s, d, p0, p1)
    lo, hi = (-p0, n + p1) if include_pad else (0, n)
    return np.array([sum(lo <= o * s - p0 + t * d < hi for t in range(k)) for o in range(out)])


# ------------------------------------------------------------------ pooling over 1 or 3 spatial axes
# Both rules visit the window one kernel offset at a time: a strided Slice of the padded input per
# offset, its share sent back by the Slice VJP. No Conv/ConvTranspose, so float64 runs everywhere.
def _window_nd(b: Builder, node: Node) -> tuple[list, list, list, list]:
    return (list(node.attrs["kernel_shape"]), *_attrs_nd(b, node, node.inputs[0].rank - 2))


def _max_pool_nd(b, node, dys):
    """An offset takes dy where it holds its window's maximum and no earlier offset did: the first
    maximum in row-major window order wins ties, as in PyTorch and TensorFlow (and the 2-D rule)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    kernel, s, p, d = _window_nd(b, node)
    n = len(kernel)
    if _pool_form(kernel, s, p, d) == "tiles":
        return [_max_pool_nd_tiles(b, x, y, dy, kernel)]
    axes = list(range(2, 2 + n))
    xp = P.pad_or_crop(b, x, {2 + i: (p[i], p[i + n]) for i in range(n)}, value=_c(b, -np.inf, x))
    parts = _first_max_shares(b, xp, y, dy, P.offset_slices(kernel, s, d, y.shape[2:]), axes, s)
    dxp = _scatter_windows(b, parts, xp, kernel, s, d)
    return [P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})]


def _first_max_shares(b, xp, y, dy, windows, axes, strides) -> list[Value]:
    """Per kernel offset (row-major window order), dy where that offset holds its window's maximum
    and no earlier offset did: the first maximum wins ties, as in PyTorch and TensorFlow."""
    parts, seen = [], None
    for starts, ends in windows:
        taken = _mask(b, _op(b, "Equal", P.slice_axes(b, xp, starts, ends, axes, strides), y), dy)
        first = taken if seen is None else _op(b, "Mul", taken, _op(b, "Sub", _c(b, 1, dy), seen))
        seen = taken if seen is None else _op(b, "Add", seen, first)
        parts.append(_op(b, "Mul", first, dy))
    return parts


def _first_of_taps(b, at_max, taps: int) -> Value:
    """0/1 at_max [..., K] -> 1 at each window's first maximum: at_max minus the maxima before it
    (one MatMul by I - [p before q]) is 1 there and <= 0 elsewhere, and Relu makes that 0/1."""
    return _op(b, "Relu", _op(b, "MatMul", at_max, _c(b, np.eye(taps) - np.triu(np.ones((taps, taps)), 1), at_max)))


def _scatter_windows(b, parts, xp, kernel, s, d):
    """Sum each kernel offset's [N, C, *out] share back into the padded input's shape (col2im)."""
    n, out = len(kernel), list(parts[0].shape[2:])
    if d != [1] * n:  # one Slice VJP per offset
        dxp = None
        for part, (starts, ends) in zip(parts, P.offset_slices(kernel, s, d, out)):
            back = slice_grad(b, part, xp, starts, ends, list(range(2, 2 + n)), s)
            dxp = back if dxp is None else _op(b, "Add", dxp, back)
        return dxp
    # Offset o = q * s + r lands on r + s * (j + q): per residue r, the shares of its offsets are
    # shifted by q on the output-sized grid and added there; the residues then interleave (the
    # tiles' Reshape-Transpose-Reshape backwards). Full-size work: one Transpose.
    reach = [-(-k // st) for k, st in zip(kernel, s)]
    coarse = [o + r - 1 for o, r in zip(out, reach)]
    index = {o: i for i, o in enumerate(itertools.product(*[range(k) for k in kernel]))}
    classes = []
    for r in itertools.product(*[range(st) for st in s]):
        acc = None
        for q in itertools.product(*[range(m) for m in reach]):
            o = tuple(qi * st + ri for qi, st, ri in zip(q, s, r))
            if o not in index:
                continue
            shifted = P.pad_or_crop(b, parts[index[o]], {2 + i: (q[i], coarse[i] - out[i] - q[i]) for i in range(n)})
            acc = shifted if acc is None else _op(b, "Add", acc, shifted)
        if acc is None:  # a stride longer than the window: these positions get nothing
            acc = _op(b, "ConstantOfShape", P.shape_with(b, parts[0], {2 + i: coarse[i] for i in range(n)}),
                      value=np.zeros(1, DTYPES[parts[0].dtype]))
        classes.append(_op(b, "Unsqueeze", acc, b.ints([-1])))
    grid = classes[0] if len(classes) == 1 else _op(b, "Concat", *classes, axis=-1)
    grid = _op(b, "Reshape", grid, b.ints([0, 0, *coarse, *s]))
    perm = [0, 1] + [a for i in range(n) for a in (2 + i, 2 + n + i)]
    full = _op(b, "Reshape", _op(b, "Transpose", grid, perm=perm), b.ints([0, 0, *[c * st for c, st in zip(coarse, s)]]))
    return P.pad_or_crop(b, full, {2 + i: (0, xp.shape[2 + i] - coarse[i] * s[i]) for i in range(n)})


def _conv_nd(b, node, dys):
    """Conv over 3 spatial axes (conv3d): dW is dy times the patches of x (im2col); dx is the
    patches' gradient W^T dy summed back into x's shape (col2im). No ConvTranspose, so the float64
    graph and second derivatives need nothing more."""
    (x, w), dy = node.inputs[:2], dys[0]
    _window(b, node)  # (refuses auto_pad)
    a, kernel, n = node.attrs, list(w.shape[2:]), x.rank - 2
    s, p, d = list(a.get("strides", [1] * n)), list(a.get("pads", [0] * 2 * n)), list(a.get("dilations", [1] * n))
    g, (o, cg), c = a.get("group", 1), w.shape[:2], x.shape[1]
    taps, out = int(np.prod(kernel)), list(dy.shape[2:])
    length, k = int(np.prod(out)), cg * taps
    cols = P.im2col_nd(b, x, kernel, s, p, d)  # [N, C*K, L]
    dy_g = _op(b, "Reshape", dy, b.ints([0, g, o // g, length]))
    cols_g = _op(b, "Reshape", cols, b.ints([0, g, k, length]))
    dw = _op(b, "ReduceSum", _op(b, "MatMul", dy_g, _op(b, "Transpose", cols_g, perm=[0, 1, 3, 2])), b.ints([0]),
             keepdims=0)  # [g, O/g, k]
    w_t = _op(b, "Transpose", _op(b, "Reshape", w, b.ints([g, o // g, k])), perm=[0, 2, 1])  # [g, k, O/g]
    d_cols = _op(b, "Reshape", _op(b, "MatMul", w_t, dy_g), b.ints([0, c, taps, *out]))  # [N, C, K, *out]
    parts = b.op("Split", [d_cols, b.ints([1] * taps)], {"axis": 2})
    parts = [_op(b, "Squeeze", v, b.ints([2])) for v in (parts if isinstance(parts, tuple) else [parts])]
    padded = tuple(x.shape[:2]) + tuple(x.shape[2 + i] + p[i] + p[i + n] for i in range(n))
    dxp = _scatter_windows(b, parts, Value("padded", TensorType(x.dtype, padded)), kernel, s, d)
    dx = P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})
    bias = _input(node, 2)
    db = _op(b, "ReduceSum", dy, b.ints([0, *range(2, 2 + n)]), keepdims=0) if bias is not None else None
    return [dx, _op(b, "Reshape", dw, b.ints(list(w.shape))), db]


def _max_pool_nd_tiles(b, x, y, dy, kernel):
    """Non-overlapping windows: each window's taps become a last axis [N, C, *out, K] (one Reshape,
    Transpose, Reshape), the maxima with no earlier maximum in the window are found with one MatMul
    by a constant 0/1 matrix (as `_max_pool_tiles`), and dy goes back the same way."""
    n, out = len(kernel), list(y.shape[2:])
    covered = P.pad_or_crop(b, x, {2 + i: (0, out[i] * kernel[i] - x.shape[2 + i]) for i in range(n)})
    split = [0, 0] + [m for pair in zip(out, kernel) for m in pair]  # [N, C, Do, kd, Ho, kh, ...]
    perm = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
    taps = int(np.prod(kernel))
    windows = _op(b, "Reshape", _op(b, "Transpose", _op(b, "Reshape", covered, b.ints(split)), perm=perm),
                  b.ints([0, 0, *out, taps]))
    at_max = _mask(b, _op(b, "Equal", windows, _op(b, "Unsqueeze", y, b.ints([-1]))), x)
    first = _first_of_taps(b, at_max, taps)
    g = _op(b, "Mul", first, _op(b, "Unsqueeze", dy, b.ints([-1])))
    g = _op(b, "Transpose", _op(b, "Reshape", g, b.ints([0, 0, *out, *kernel])),
            perm=[int(i) for i in np.argsort(perm)])
    g = _op(b, "Reshape", g, b.ints([0, 0, *[o * k for o, k in zip(out, kernel)]]))
    return P.pad_or_crop(b, g, {2 + i: (0, x.shape[2 + i] - out[i] * kernel[i]) for i in range(n)})


def _average_pool_nd(b, node, dys):
    """Each output's dy / (taps counted) goes back to every tap of its window."""
    x, dy = node.inputs[0], dys[0]
    kernel, s, p, d = _window_nd(b, node)
    n = len(kernel)
    include = node.attrs.get("count_include_pad", 0)
    counts = np.ones(())
    for i in range(n):
        counts = np.multiply.outer(counts, _window_counts(x.shape[2 + i], kernel[i], s[i], d[i], p[i], p[i + n],
                                                          include))
    share = _op(b, "Mul", dy, _c(b, 1.0 / counts, dy))
    padded = tuple(x.shape[:2]) + tuple(x.shape[2 + i] + p[i] + p[i + n] for i in range(n))
    zeros = Value("padded", TensorType(x.dtype, padded))  # slice_grad reads only its shape
    dxp = _scatter_windows(b, [share] * int(np.prod(kernel)), zeros, kernel, s, d)
    return [P.pad_or_crop(b, dxp, {2 + i: (-p[i], -p[i + n]) for i in range(n)})]
