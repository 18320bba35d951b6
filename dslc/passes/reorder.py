"""Moving elementwise work to the smaller tensor, before a graph is differentiated.

- MaxPool(Relu(x)) becomes Relu(MaxPool(x)) when the Relu feeds nothing else: the max of a window
  commutes with the nondecreasing relu, so the Relu, and in a step graph its gradient mask, runs at
  pooled size (a quarter of the elements for 2x2 pools). The gradient stays the same on ties too:
  where a window's maximum is positive its first maximum is the same cell either way, and where it
  is <= 0 the relu's mask sends nothing back (PERF-NOTES: "ReLU mask at pooled resolution").

Run on a step's forward graph before `grad`: after it, the backward already reads the Relu.
"""
from __future__ import annotations

from collections import Counter

from ..ir.core import Graph, Value


def _uses(graph: Graph) -> Counter:
    """How often each value is read: by nodes (Loop bodies included) and as a graph output."""
    uses = Counter(id(v) for v in graph.outputs)
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.nodes:
            uses.update(id(v) for v in n.inputs if v is not None)
            stack += [a for a in n.attrs.values() if isinstance(a, Graph)]
            if g is not graph:
                uses.update(id(v) for v in g.outputs)
    return uses


def pool_before_relu(graph: Graph) -> bool:
    uses = _uses(graph)
    after = {}  # id(MaxPool node) -> the Relu node that now follows it
    for n in graph.nodes:
        relu = n.inputs[0].producer if n.op == "MaxPool" and n.inputs else None
        if (relu is None or relu.op != "Relu" or len(n.outputs) != 1 or uses[id(relu.outputs[0])] != 1
                or relu in after.values()):
            continue
        pooled = n.outputs[0]
        raw = Value(relu.outputs[0].name, pooled.type, n)  # the pool's output before the relu
        n.inputs = [relu.inputs[0]] + n.inputs[1:]
        n.outputs = [raw]
        relu.inputs, relu.outputs = [raw], [pooled]
        pooled.producer = relu
        after[id(n)] = relu
    if not after:
        return False
    relus = {id(r) for r in after.values()}
    order = []
    for n in graph.nodes:
        if id(n) not in relus:
            order += [n, after[id(n)]] if id(n) in after else [n]
    graph.nodes = order
    return True
