"""Graph-to-graph passes. Each returns whether it changed the graph; `optimize` runs them in order."""
from __future__ import annotations

from ..ir.core import Graph
from ..ir.formulations import pass_on
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .fold import fold_constants
from .simplify import simplify

# (name in formulations.PASSES, pass), in the order they run
PASSES = (("fold", fold_constants), ("simplify", simplify), ("cse", eliminate_common_subexpressions),
          ("dce", eliminate_dead_code))


def optimize(graph: Graph) -> bool:
    changed = False
    for name, run in PASSES:
        if pass_on(name):
            changed |= run(graph)
    return changed
