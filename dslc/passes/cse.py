"""Common-subexpression elimination: a node that repeats an earlier one (same op, same inputs, same
attributes) is dropped and its outputs renamed to the earlier node's.

Calling a model twice on the same input (`Net(a).out + Net(a).b1`) lowers its body twice; this
pass leaves one copy. Random ops and Loops are never merged: two draws are two different tensors.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Value

_NEVER_MERGED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Loop"}


def _key(op: str, inputs: list, attrs: dict):
    def attr(v):
        if isinstance(v, np.ndarray):
            return (v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, list):
            return tuple(v)
        return v
    return op, tuple(id(v) if v is not None else None for v in inputs), tuple(
        (k, attr(v)) for k, v in sorted(attrs.items()))


def eliminate_common_subexpressions(graph: Graph) -> bool:
    seen: dict = {}
    replace: dict[int, Value] = {}
    kept = []
    outputs = {id(v) for v in graph.outputs}
    for n in graph.nodes:
        n.inputs = [replace.get(id(v), v) if v is not None else None for v in n.inputs]
        for a in n.attrs.values():
            if isinstance(a, Graph):
                _rename_uses(a, replace)
        if n.op in _NEVER_MERGED or any(id(o) in outputs for o in n.outputs):
            kept.append(n)
            continue
        key = _key(n.op, n.inputs, n.attrs)
        if key in seen:
            for mine, theirs in zip(n.outputs, seen[key].outputs):
                replace[id(mine)] = theirs
            continue
        seen[key] = n
        kept.append(n)
    changed = len(kept) != len(graph.nodes)
    graph.nodes = kept
    return changed


def _rename_uses(graph: Graph, replace: dict[int, Value]) -> None:
    """A Loop body reads outer values by name: point it at the surviving copies too."""
    for n in graph.nodes:
        n.inputs = [replace.get(id(v), v) if v is not None else None for v in n.inputs]
        for a in n.attrs.values():
            if isinstance(a, Graph):
                _rename_uses(a, replace)
