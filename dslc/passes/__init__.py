"""Graph-to-graph passes. Each returns whether it changed the graph; `optimize` runs them in order."""
from __future__ import annotations

from ..ir.core import Graph
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .fold import fold_constants
from .simplify import simplify

PASSES = (fold_constants, simplify, eliminate_common_subexpressions, eliminate_dead_code)


def optimize(graph: Graph) -> bool:
    changed = False
    for run in PASSES:
        changed |= run(graph)
    return changed
