"""The IR verifier: every value defined before use, names unique, every type what the op table says.

A failure here is a bug in dslc (a lowering, a VJP rule or a pass), never in the user's program,
so it raises `IRError`, not a DslError.
"""
from __future__ import annotations

from .core import Graph, ShapeIssue
from .ops import OPS, infer


class IRError(Exception):
    pass


def verify(graph: Graph, outer: frozenset[str] = frozenset()) -> None:
    defined = set(outer)

    def define(v) -> None:
        if v.name in defined:
            raise IRError(f"{graph.name}: `{v.name}` is defined twice")
        defined.add(v.name)

    for v in graph.inputs + [p.value for p in graph.params]:
        define(v)
    for n in graph.nodes:
        if n.op not in OPS:
            raise IRError(f"{graph.name}: node {n.name} has op {n.op}, which the op table lacks")
        for v in n.inputs:
            if v is not None and v.name not in defined:
                raise IRError(f"{graph.name}: node {n.name} ({n.op}) reads `{v.name}` before it is defined")
        for a in n.attrs.values():
            if isinstance(a, Graph):
                verify(a, frozenset(defined))
        try:
            expected = infer(n.op, n.inputs, n.attrs)
        except ShapeIssue as e:
            raise IRError(f"{graph.name}: node {n.name} ({n.op}) no longer type-checks: {e.message}") from None
        for v, t in zip(n.outputs, expected):
            if v.type != t:
                raise IRError(f"{graph.name}: `{v.name}` is {v.type} but {n.op} makes {t}")
            define(v)
    for v in graph.outputs:
        if v.name not in defined:
            raise IRError(f"{graph.name}: output `{v.name}` is never defined")
