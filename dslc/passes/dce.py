"""Dead-code elimination: drop nodes and weights that no output depends on.

Targets are lowered whole (`ConvNet(x).conv2` inlines all of ConvNet), so this pass is what keeps
a graph down to what its outputs need. Loop bodies read outer values by name: those count as uses.
"""
from __future__ import annotations

from ..ir.core import Graph


def _names_used_by(graph: Graph) -> set[str]:
    """Every value name a node of `graph` (or of its subgraphs) reads."""
    used = set()
    for n in graph.nodes:
        used.update(v.name for v in n.inputs if v is not None)
        for a in n.attrs.values():
            if isinstance(a, Graph):
                used |= _names_used_by(a)
    return used


def eliminate_dead_code(graph: Graph) -> bool:
    live = {v.name for v in graph.outputs}
    kept = []
    for n in reversed(graph.nodes):
        if any(o.name in live for o in n.outputs):
            kept.append(n)
            live.update(v.name for v in n.inputs if v is not None)
            for a in n.attrs.values():
                if isinstance(a, Graph):
                    eliminate_dead_code(a)
                    live |= _names_used_by(a)
    changed = len(kept) != len(graph.nodes)
    graph.nodes = kept[::-1]
    params = [p for p in graph.params if p.value.name in live]
    changed |= len(params) != len(graph.params)
    graph.params = params
    return changed
