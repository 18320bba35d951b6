"""Calling a built-in: bind the call's arguments to the Python signature of its entry and convert
each by its annotation, so every built-in reports wrong arguments the same way."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

from ..diagnostics import DslTypeError, Span, did_you_mean
from ..frontend import ast as A
from ..ir.core import Value
from ..ir.builder import Builder
from .values import ModelResult, Symbol, describe


@dataclass
class Ctx:
    """What a built-in sees: the lowerer, the scope, the call's span and its arguments' spans."""
    lw: object
    sc: object
    span: Span
    name: str
    arg_spans: dict[str, Span]

    @property
    def b(self) -> Builder:
        self.sc.b.span = self.span
        return self.sc.b

    def error(self, message: str, arg: str | None = None, hint: str | None = None, cls=DslTypeError):
        return cls(message, self.arg_spans.get(arg, self.span) if arg else self.span, hint)


# Annotation -> (check, what the error says is expected). "T" is a tensor, converted from literals.
_KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "word": (lambda v: isinstance(v, Symbol), "a word such as `same`"),
    "ints": (lambda v: isinstance(v, int) and not isinstance(v, bool) or
             isinstance(v, list) and all(isinstance(x, int) for x in v), "an integer or a list of integers"),
    "any": (lambda v: True, "a value"),
}


@functools.lru_cache(maxsize=None)
def _parameters(fn) -> list[inspect.Parameter]:
    """A built-in's language-level parameters (its Python ones after `ctx`); cached: read per call."""
    return list(inspect.signature(fn).parameters.values())[1:]


def bind_call(ctx: Ctx, fn, e: A.Call) -> dict:
    lw, sc = ctx.lw, ctx.sc
    params = _parameters(fn)
    names = [p.name for p in params if p.kind != p.VAR_POSITIONAL]
    varargs = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    bound: dict[str, object] = {}
    extra = []
    for i, a in enumerate(e.args):
        if i < len(positional):
            bound[positional[i].name] = (a, a.span)
        elif varargs:
            extra.append(a)
        else:
            raise DslTypeError(f"{ctx.name}() takes at most {len(positional)} positional arguments, "
                               f"got {len(e.args)}", a.span)
    for k in e.kwargs:
        if k.name not in names:
            raise DslTypeError(f"{ctx.name}() has no parameter `{k.name}`", k.span, did_you_mean(k.name, names))
        if k.name in bound:
            raise DslTypeError(f"{ctx.name}() got `{k.name}` twice", k.span)
        bound[k.name] = (k.value, k.span)
    values = {}
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            continue
        if p.name not in bound:
            if p.default is inspect.Parameter.empty:
                raise DslTypeError(f"{ctx.name}() is missing its argument `{p.name}`", e.span,
                                   f"signature: {signature(ctx.name, fn)}")
            values[p.name] = p.default
            continue
        expr, span = bound[p.name]
        ctx.arg_spans[p.name] = span
        values[p.name] = convert(ctx, p.name, lw.expr(sc, expr), p.annotation, span)
    if varargs is not None:
        items = [lw.expr(sc, a) for a in extra]
        if len(items) == 1 and isinstance(items[0], list):  # concat([a, b]) == concat(a, b)
            items = items[0]
        values[varargs.name] = [lw.tensor(sc, v, e.span) for v in items]
    return values


def convert(ctx: Ctx, name: str, v, annotation, span: Span):
    if isinstance(v, ModelResult) and len(v.outputs) == 1:
        v = v.outputs[0]
    if annotation == "T":
        if isinstance(v, Value):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v  # a literal: the built-in gives it the dtype of its other operand
        if isinstance(v, list):
            return v  # a list literal: a constant, of its other operand's dtype where it has one
        raise DslTypeError(f"{ctx.name}() expects a tensor for `{name}`, got {describe(v)}", span)
    if annotation == "T?":  # tensor or nothing
        return v
    if v is None or annotation is inspect.Parameter.empty:
        return v
    check, what = _KINDS[annotation]
    if not check(v):
        if (isinstance(v, Value) and v.const is not None and v.const.ndim == 0
                and annotation in ("int", "count", "float")):
            return convert(ctx, name, v.const.item(), annotation, span)  # a constant computed at compile time
        got = v if _KINDS["float"][0](v) else describe(v)
        raise DslTypeError(f"{ctx.name}() expects {what} for `{name}`, got {got}", span)
    return v


def signature(name: str, fn) -> str:
    parts = []
    for p in _parameters(fn):
        if p.kind == p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.default is inspect.Parameter.empty:
            parts.append(p.name)
        else:
            d = p.default
            parts.append(f"{p.name}={d.name if isinstance(d, Symbol) else str(d).lower() if isinstance(d, bool) else d}")
    return f"{name}({', '.join(parts)})"
