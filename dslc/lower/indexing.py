"""`x[...]`: slices and integer literals become one Slice (+ Squeeze), tensor indices a Gather each,
and `None` a new axis of size 1 (Unsqueeze). Slice bounds are integers or dims known at run time
(`x[1:N-1]`, `x[:x.shape[0] - 1]`); steps are integers known at compile time."""
from __future__ import annotations


from ..diagnostics import DslError, DslShapeError, DslTypeError, source_text
from ..frontend import ast as A
from ..ir.core import Value
from .values import describe

INT_MAX = 2**63 - 1


def is_newaxis(item: A.Expr) -> bool:
    return isinstance(item, A.Name) and item.id == "None"


def index(lw, sc, e: A.Index) -> Value:
    x = lw.tensor(sc, lw.expr(sc, e.value), e.value.span)
    items = list(e.items)
    n_ellipsis = sum(isinstance(i, A.EllipsisExpr) for i in items)
    if n_ellipsis > 1:
        raise DslError("an index may hold at most one `...`", e.span)
    n_axes = sum(not isinstance(i, A.EllipsisExpr) and not is_newaxis(i) for i in items)
    if n_ellipsis:
        at = next(k for k, i in enumerate(items) if isinstance(i, A.EllipsisExpr))
        items[at:at + 1] = [A.SliceExpr(e.span)] * max(x.rank - n_axes, 0)
    if n_axes > x.rank:
        raise DslShapeError(f"{n_axes} indices for a rank-{x.rank} value {x.type}", e.span,
                            "one index or slice per axis (`None` adds an axis, `...` stands for the rest)")

    starts, ends, axes, steps = [], [], [], []
    squeeze, gathers, new_axes = [], [], []
    axis, out_axis = 0, 0  # the next axis of x, and of the result
    for item in items:
        if is_newaxis(item):
            new_axes.append(out_axis)
            out_axis += 1
            continue
        if isinstance(item, A.SliceExpr):
            _slice_item(lw, sc, item, axis, starts, ends, axes, steps)
            axis, out_axis = axis + 1, out_axis + 1
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
            out_axis += v.rank
        elif isinstance(v, float):
            raise DslTypeError(f"an index must be an integer, got {v}", item.span)
        else:
            raise DslTypeError(f"cannot index with {describe(v)}", item.span)
        axis += 1

    b = sc.b
    b.span = e.span
    if axes:
        x = b.op("Slice", [x, _vector(lw, sc, starts, e), _vector(lw, sc, ends, e), b.ints(axes), b.ints(steps)])
    # Gather each tensor index; a scalar index removes its axis, so later axes shift down.
    removed = 0
    for axis, idx in gathers:
        x = b.op("Gather", [x, idx], {"axis": axis - removed})
        if idx.rank == 0:
            removed += 1
    if squeeze:
        shift = [a - sum(1 for g, i in gathers if g < a and i.rank == 0) for a in squeeze]
        x = b.op("Squeeze", [x, b.ints(shift)])
    if new_axes:
        x = b.op("Unsqueeze", [x, b.ints(new_axes)])
    return x


def _slice_item(lw, sc, item: A.SliceExpr, axis: int, starts, ends, axes, steps) -> None:
    lo, hi = (_bound(lw, sc, part) for part in (item.lo, item.hi))
    st = _step(lw, sc, item.step)
    if (lo, hi, st) == (None, None, None):
        return
    st = 1 if st is None else st
    if st == 0:
        raise DslError("slice step cannot be zero", item.step.span, "a step of 1 takes every element, "
                       "-1 every element in reverse")
    lo = (0 if st > 0 else -1) if lo is None else lo
    hi = (INT_MAX if st > 0 else -INT_MAX) if hi is None else hi
    starts.append(lo), ends.append(hi), axes.append(axis), steps.append(st)


def _bound(lw, sc, part):
    """A slice bound: an integer, or an i64 scalar known at run time (a dim such as N - 1)."""
    if part is None:
        return None
    if is_newaxis(part):
        raise DslTypeError("a slice bound cannot be `None`", part.span,
                           "leave the bound out instead: `x[:3]`, `x[1:]`")
    v = lw.expr(sc, part)
    if isinstance(v, Value) and v.const is not None and v.const.ndim == 0 and v.dtype == "i64":
        return int(v.const)
    if isinstance(v, Value) and v.dtype == "i64" and v.rank == 0:
        if v.sym is None:  # not a dim of a shape: the slice's length reads as its source text
            v.sym = (source_text(part.span) or "?",)
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise DslTypeError(f"a slice bound must be an integer, got {describe(v)}", part.span,
                       "use an integer, or a dim as a value: `N - 1`, `x.shape[0] - 1`, an `i64` input")


def _step(lw, sc, part):
    if part is None:
        return None
    v = None if is_newaxis(part) else lw.expr(sc, part)
    if isinstance(v, Value) and v.const is not None and v.const.ndim == 0 and v.dtype == "i64":
        v = int(v.const)
    if not isinstance(v, int) or isinstance(v, bool):
        raise DslTypeError(f"a slice step must be an integer known at compile time, got "
                           f"{'`None`' if v is None else describe(v)}", part.span)
    return v


def _vector(lw, sc, items: list, e: A.Index) -> Value:
    """Slice bounds as a 1-D i64 value: a constant, or assembled at run time when a bound is a dim."""
    if all(isinstance(v, int) for v in items):
        return sc.b.ints(items)
    return lw.shape_vector(sc, items, e.span)
