"""`x[...]`: static slices become one Slice, integer literals a Slice + Squeeze, tensor indices a Gather."""
from __future__ import annotations


from ..diagnostics import DslError, DslShapeError, DslTypeError
from ..frontend import ast as A
from ..ir.core import Value
from .values import describe

INT_MAX = 2**63 - 1


def index(lw, sc, e: A.Index) -> Value:
    x = lw.tensor(sc, lw.expr(sc, e.value), e.value.span)
    items = list(e.items)
    n_ellipsis = sum(isinstance(i, A.EllipsisExpr) for i in items)
    if n_ellipsis > 1:
        raise DslError("an index may hold at most one `...`", e.span)
    if n_ellipsis:
        at = next(k for k, i in enumerate(items) if isinstance(i, A.EllipsisExpr))
        fill = x.rank - (len(items) - 1)
        items[at:at + 1] = [A.SliceExpr(e.span)] * max(fill, 0)
    if len(items) > x.rank:
        raise DslShapeError(f"{len(items)} indices for a rank-{x.rank} value {x.type}", e.span)

    starts, ends, axes, steps = [], [], [], []
    squeeze, gathers = [], []
    for axis, item in enumerate(items):
        if isinstance(item, A.SliceExpr):
            lo, hi, st = (_static_int(lw, sc, part, "slice bound") for part in (item.lo, item.hi, item.step))
            if (lo, hi, st) == (None, None, None):
                continue
            st = 1 if st is None else st
            if st == 0:
                raise DslError("slice step cannot be zero", item.span)
            lo = (0 if st > 0 else -1) if lo is None else lo
            hi = (INT_MAX if st > 0 else -INT_MAX) if hi is None else hi
            starts.append(lo), ends.append(hi), axes.append(axis), steps.append(st)
            continue
        v = lw.expr(sc, item)
        if isinstance(v, int) and not isinstance(v, bool):
            dim = x.shape[axis]
            if isinstance(dim, int) and not -dim <= v < dim:
                raise DslShapeError(f"index {v} is out of range for axis {axis} of size {dim}", item.span,
                                    f"indices on this axis run from 0 to {dim - 1} (or -{dim} to -1 from the end)")
            starts.append(v), ends.append(v + 1 if v != -1 else INT_MAX), axes.append(axis), steps.append(1)
            squeeze.append(axis)
        elif isinstance(v, Value):
            if v.dtype not in ("i64", "i32"):
                raise DslTypeError(f"an index must be an integer, got {v.type}", item.span)
            gathers.append((axis, v))
        elif isinstance(v, float):
            raise DslTypeError(f"an index must be an integer, got {v}", item.span)
        else:
            raise DslTypeError(f"cannot index with {describe(v)}", item.span)

    b = sc.b
    b.span = e.span
    if axes:
        x = b.op("Slice", [x, b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)])
    # Gather each tensor index; a scalar index removes its axis, so later axes shift down.
    removed = 0
    for axis, idx in gathers:
        x = b.op("Gather", [x, idx], {"axis": axis - removed})
        if idx.rank == 0:
            removed += 1
    if squeeze:
        shift = [a - sum(1 for g, i in gathers if g < a and i.rank == 0) for a in squeeze]
        x = b.op("Squeeze", [x, b.ints(shift)])
    return x


def _static_int(lw, sc, part, what):
    if part is None:
        return None
    v = lw.expr(sc, part)
    if isinstance(v, Value) and v.const is not None and v.const.ndim == 0:
        v = int(v.const)
    if not isinstance(v, int) or isinstance(v, bool):
        raise DslTypeError(f"a {what} must be an integer known at compile time, got {describe(v)}", part.span)
    return v
