"""Graph-to-graph passes. Each returns whether it changed the graph; `optimize` runs them all."""
from __future__ import annotations

from ..ir.core import Graph
from .dce import eliminate_dead_code


def optimize(graph: Graph) -> bool:
    return eliminate_dead_code(graph)
