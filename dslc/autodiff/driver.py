"""Reverse-mode autodiff over a Builder's graph.

The backward nodes go into the same graph as the forward ones, so a gradient can itself be
differentiated (grad of grad). Only nodes on a path from a `wrt` value to an output are visited;
the rules (rules/) build each node's backward, and this module adds the bookkeeping: summing the
gradients of a value used several times, summing a broadcast gradient down to its input's shape,
and dropping backward nodes whose results turn out unused. A Builder may be building a Loop body:
values from outer scopes simply have no producer in `b.graph`.
"""
from __future__ import annotations

import numpy as np

from ..diagnostics import DslError
from ..ir import patterns as P
from ..ir.core import Graph, Node, Value
from ..ir.formulations import at
from ..ir.builder import Builder
from .loops import captured, loop_vjp
from .rules import NON_DIFFERENTIABLE, OWN_RULE, VJP


def vjp(b: Builder, outputs: list[Value], cotangents: list[Value], wrt: list[Value]) -> list[Value | None]:
    """Gradients of sum_i <outputs[i], cotangents[i]> with respect to each `wrt` value: zeros where
    no path leads to the outputs, None for an integer or bool value (no gradient)."""
    nodes, first_new = list(b.graph.nodes), len(b.graph.nodes)
    live, path = _gradient_path(nodes, wrt, outputs)
    for node in path:
        if node.op not in VJP and node.op not in OWN_RULE:
            raise DslError(f"cannot differentiate through {node.op}", node.span)

    grads: dict[Value, list[Value]] = {}
    for out, cot in zip(outputs, cotangents):
        if out in live:
            grads.setdefault(out, []).append(cot)
    outer_span, outer_scope = b.span, b.scope
    try:
        for node in reversed(path):
            b.span = node.span  # backward nodes point at the source line of their forward node
            b.scope = "grad/" + node.name.rpartition("/")[0]  # and are named after its binding
            dys = [_total(b, grads, out) for out in node.outputs]
            if all(dy is None for dy in dys):
                continue
            for x, g in zip(*_backward(b, node, dys, live)):
                if g is not None and x in live:
                    grads.setdefault(x, []).append(_sum_to_shape(b, g, x))
        b.span = outer_span
        results = [None if not w.type.is_float else _total(b, grads, w) or P.zeros_like(b, w) for w in wrt]
    finally:
        b.span, b.scope = outer_span, outer_scope
    _prune(b.graph, first_new, results)
    return results


def grad(b: Builder, y: Value, wrt: list[Value]) -> list[Value | None]:
    """Gradients of y (of sum(y) when y is not a scalar) with respect to each `wrt` value."""
    seed = b.const(np.asarray(1), y.dtype) if y.rank == 0 else P.full_like(b, y, 1)
    return vjp(b, [y], [seed], wrt)


def _backward(b: Builder, node: Node, dys: list, live: set) -> tuple[list, list]:
    """A node's differentiable inputs and their gradients. A Loop's include the outer values its
    body reads, and its rule builds only the gradients that lead somewhere (those of live values)."""
    if node.op == "Loop":
        return list(node.inputs) + captured(node.attrs["body"]), loop_vjp(b, node, dys, live, vjp)
    with at(node.name.rpartition("/")[0]):  # a formulation is chosen per layer (ir/formulations.py)
        return node.inputs, VJP[node.op](b, node, dys)


def _gradient_path(nodes: list[Node], wrt: list[Value], outputs: list[Value]) -> tuple[set, list[Node]]:
    """Values that depend on `wrt` through differentiable ops, and the nodes (in graph order) on a
    path from a `wrt` value to an output."""
    live = {w for w in wrt if w.type.is_float}
    forward = set()
    for node in nodes:
        if node.op not in NON_DIFFERENTIABLE and any(v in live for v in _node_inputs(node)):
            forward.add(node)
            live.update(out for out in node.outputs if out.type.is_float)
    needed, path = set(outputs), []
    for node in reversed(nodes):
        if node in forward and any(out in needed for out in node.outputs):
            path.append(node)
            needed.update(_node_inputs(node))
    return live, path[::-1]


def _node_inputs(node: Node) -> list[Value]:
    """A node's inputs, with the outer values its subgraphs (Loop bodies) read."""
    ins = [v for v in node.inputs if v is not None]
    for attr in node.attrs.values():
        if isinstance(attr, Graph):
            ins += captured(attr)
    return ins


def _total(b: Builder, grads: dict[Value, list[Value]], v: Value) -> Value | None:
    """The sum of all gradient contributions to v (computed once, then kept)."""
    parts = grads.get(v)
    if not parts:
        return None
    if len(parts) > 1:
        total = parts[0]
        for part in parts[1:]:
            total = b.op("Add", [total, part])
        grads[v] = [total]
    return grads[v][0]


def _sum_to_shape(b: Builder, g: Value, x: Value) -> Value:
    """Undo broadcasting: sum g over the leading axes x lacks and over x's size-1 axes."""
    if g.shape == x.shape:
        return g
    lead = max(g.rank - x.rank, 0)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(x.shape)
                                if d == 1 and lead + i < g.rank and g.shape[lead + i] != 1]
    if axes:
        g = b.op("ReduceSum", [g, b.ints(axes)], {"keepdims": 1})
    if g.shape != x.shape:
        g = b.op("Reshape", [g, P.shape_of(b, x)])
    return g


def _prune(graph: Graph, first_new: int, results: list[Value | None]) -> None:
    """Drop the backward nodes nothing in `results` needs (e.g. a weight gradient when only the
    input gradient was asked for)."""
    needed = {v for v in results if v is not None}
    kept = []
    for node in reversed(graph.nodes[first_new:]):
        if any(out in needed for out in node.outputs):
            kept.append(node)
            needed.update(_node_inputs(node))  # (a backward Loop's body reads outer values too)
    graph.nodes[first_new:] = kept[::-1]
