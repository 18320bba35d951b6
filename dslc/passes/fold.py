"""Constant folding: a node whose every output is known at compile time becomes a Constant.

The op table already computes such values while building (`Value.const`: shapes of static values,
arithmetic on small constants); this pass drops the computation from the graph. Random draws are
never constant, and neither is anything inside a Loop body that depends on the iteration.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import DTYPES, Graph, Node


def fold_constants(graph: Graph) -> bool:
    changed = False
    for i, n in enumerate(graph.nodes):
        for a in n.attrs.values():
            if isinstance(a, Graph):
                changed |= fold_constants(a)
        if n.op == "Constant" or len(n.outputs) != 1 or n.outputs[0].const is None:
            continue
        out = n.outputs[0]
        value = np.asarray(out.const, dtype=DTYPES[out.dtype])
        if tuple(value.shape) != tuple(out.shape):
            continue  # (a symbolic shape that happens to be known: leave it to the runtime)
        graph.nodes[i] = Node("Constant", [], [out], {"value": value}, n.span, n.name)
        out.producer = graph.nodes[i]
        changed = True
    return changed
