"""A bound on how deeply the user's code nests, checked without recursion right after parsing.

Lowering walks expressions recursively, so nesting that comes from the input (`f(f(f(...)))`,
`x^x^x^...`, `repeat` inside `repeat`) would exhaust Python's stack: past the limit it is a located
error instead. Left-leaning chains (`a + b + ... + z`) and runs of unary minus are walked by loops
in the lowerer, so they do not count: 10,000 terms are fine.
"""
from __future__ import annotations

import dataclasses

from ..diagnostics import DslSyntaxError, Span
from . import ast as A

MAX_DEPTH = 100  # far beyond what people write; well inside Python's 1,000 frames at ~6 per level
MAX_LOOP_NESTING = 16  # `repeat` in `repeat`: protobuf readers refuse graphs nested ~30 deep


def check_depth(module: A.Module, limit: int = MAX_DEPTH, loop_limit: int = MAX_LOOP_NESTING) -> None:
    stack: list[tuple[object, int, int]] = [(d, 0, 0) for d in module.decls]
    while stack:
        node, depth, loops = stack.pop()
        if isinstance(node, A.Repeat):
            loops += 1
            if loops > loop_limit:
                raise DslSyntaxError(f"`repeat` nested too deeply (limit {loop_limit})", node.span)
        if isinstance(node, (A.Expr, A.Repeat)) and depth > limit:
            raise DslSyntaxError(f"expression nested too deeply (limit {limit})", node.span,
                                 "give inner parts names of their own: `t = ...` on a line before")
        for child in _children(node):
            stack.append((child, depth + _step(node, child), loops))


def _step(parent, child) -> int:
    if isinstance(parent, A.BinOp) and child is parent.left and isinstance(child, A.BinOp):
        return 0  # the lowerer walks the left spine of a chain in a loop
    if isinstance(parent, A.UnaryOp) and isinstance(child, A.UnaryOp):
        return 0  # and runs of `-` too
    return 1 if isinstance(parent, (A.Expr, A.Repeat)) else 0


def _children(node):
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            yield from (v for v in value if dataclasses.is_dataclass(v))
        elif dataclasses.is_dataclass(value) and not isinstance(value, (type, Span)):
            yield value
