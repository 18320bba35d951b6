"""The Loop VJP: a reverse Loop over the passes of the forward one.

The forward Loop (a `repeat`: its condition stays true, so it runs its trip count) also emits, as
scan outputs, the carried values each pass started from: its history. The backward Loop walks the
passes from last to first. Pass r reads its start from the history, reruns a copy of the body to
rebuild its intermediate values (random draws are functions of the pass number, so they come out
the same), and pulls the carried cotangents back through it with vjp. Gradients of the outer
values the body reads (weights, inputs) are summed over the passes in extra carried values.
The backward Loop is an ordinary Loop of differentiable ops, so it can be differentiated again.
"""
from __future__ import annotations

import numpy as np

from ..diagnostics import DslError
from ..ir import patterns as P
from ..ir.builder import Builder
from ..ir.core import Graph, Node, TensorType, Value
from ..ir.ops import infer


def captured(graph: Graph) -> list[Value]:
    """The outer values a subgraph (and the subgraphs inside it) reads, each once, in order."""
    inside = set(graph.inputs) | {p.value for p in graph.params}
    inside.update(out for n in graph.nodes for out in n.outputs)
    seen: dict[Value, None] = {}
    for n in graph.nodes:
        reads = [v for v in n.inputs if v is not None]
        for attr in n.attrs.values():
            if isinstance(attr, Graph):
                reads += captured(attr)
        seen.update((v, None) for v in reads if v not in inside)
    return list(seen)


def loop_vjp(b: Builder, node: Node, dys: list, live: set, vjp) -> list[Value | None]:
    """Gradients for node.inputs followed by captured(body): None where none is wanted. `vjp` is the
    driver's reverse walk, passed in (it calls this rule) to pull gradients back through the body."""
    trip, inits, body = node.inputs[0], node.inputs[2:], node.attrs["body"]
    _check_repeat(b, node)
    k = len(inits)
    history = _history(b, node)
    outer = captured(body)
    floats = [j for j in range(k) if inits[j].type.is_float]
    wanted = [v for v in outer if v.type.is_float and v in live]
    scans = [(s, dy) for s, dy in enumerate(dys[k:]) if dy is not None]

    bwd = Graph(f"{body.name}_grad")
    bb = b.child(bwd)
    t = bb.input(bb.fresh("pass"), TensorType("i64", ()))
    cond = bb.input(bb.fresh("cond"), TensorType("bool", ()))
    d_carried = [bb.input(bb.fresh("d_carried"), inits[j].type) for j in floats]
    sums = [bb.input(bb.fresh("d_captured"), v.type) for v in wanted]
    r = bb.op("Sub", [bb.op("Sub", [trip, bb.ints(1)]), t])  # the forward pass this one undoes
    starts = [_row(bb, h, r, init) for h, init in zip(history, inits)]
    mapping = {body.inputs[0]: r, body.inputs[1]: cond, **dict(zip(body.inputs[2:], starts))}
    clone_nodes(bb, body, mapping)
    ends = [mapping.get(v, v) for v in body.outputs[1:]]
    outs = [ends[j] for j in floats] + [ends[k + s] for s, _ in scans]
    cots = d_carried + [bb.op("Gather", [dy, r], {"axis": 0}) for _, dy in scans]
    grads = vjp(bb, outs, cots, [starts[j] for j in floats] + wanted)
    bb.span = node.span
    bwd.outputs = [bb.op("Identity", [cond])] + [bb.op("Identity", [g]) for g in grads[:len(floats)]]
    bwd.outputs += [bb.op("Add", [s, g]) for s, g in zip(sums, grads[len(floats):])]

    _hoist_invariants(bwd, b.graph)
    d_final = [dys[j] if dys[j] is not None else P.zeros_like(b, node.outputs[j]) for j in floats]
    results = b.op("Loop", [trip, b.const(np.asarray(True), "bool")] + d_final +
                   [P.zeros_like(b, v) for v in wanted], {"body": bwd})
    results = list(results) if isinstance(results, tuple) else [results]
    d_inits = dict(zip(floats, results))
    d_outer = dict(zip(wanted, results[len(floats):]))
    return [None, None] + [d_inits.get(j) for j in range(k)] + [d_outer.get(v) for v in outer]


def _hoist_invariants(body: Graph, outer: Graph) -> None:
    """Move the body's nodes that read only outer values (a weight's Transpose, a Shape) out of the
    Loop, so they run once instead of once per pass."""
    inside = set(body.inputs)
    kept = []
    for n in body.nodes:
        reads = [v for v in n.inputs if v is not None]
        if (any(isinstance(a, Graph) for a in n.attrs.values()) or n.op.startswith("Random")
                or any(v in inside for v in reads) or any(v in body.outputs for v in n.outputs)):
            kept.append(n)
            inside.update(n.outputs)
        else:
            outer.nodes.append(n)
            for v in n.outputs:
                if v.name in body.exact:
                    outer.exact[v.name] = body.exact[v.name]
    body.nodes = kept


def _row(b: Builder, history: Value, r: Value, like: Value) -> Value:
    """Pass r's carried value, back in its own shape."""
    flat = b.op("Gather", [history, r], {"axis": 0})
    shape = b.ints(list(like.shape)) if like.type.static() else b.op("Shape", [like])
    return b.op("Reshape", [flat, shape])


def _check_repeat(b: Builder, node: Node) -> None:
    """Only Loops that run their whole trip count (as `repeat` builds them) have this rule."""
    body, cond = node.attrs["body"], node.inputs[1]
    end_cond = body.outputs[0].producer
    always = (cond is not None and cond.const is not None and bool(cond.const) and end_cond is not None
              and end_cond.op == "Identity" and end_cond.inputs[0] is body.inputs[1])
    if node.inputs[0] is None or not always:
        raise DslError("cannot differentiate through a Loop that may stop early (a condition)", node.span,
                       "differentiate a `repeat COUNT { ... }` loop, which runs COUNT passes")


def _history(b: Builder, node: Node) -> list[Value]:
    """The forward Loop's scan outputs holding each pass's carried inputs, added on first use (a
    second gradient through the same Loop finds them)."""
    body = node.attrs["body"]
    k = len(node.inputs) - 2
    carried_in = body.inputs[2:]
    tail = body.outputs[len(body.outputs) - k:] if len(body.outputs) >= 1 + 2 * k else []
    if k and len(tail) == k and all(v.producer is not None and v.producer.op == "Reshape"
                                    and v.producer.inputs[0] is c for v, c in zip(tail, carried_in)):
        return node.outputs[len(node.outputs) - k:]
    bb = b.child(body)
    bb.span, bb.scope = node.span, node.name
    # flat (1-D) rows: onnx.reference stacks scan outputs with np.vstack, which is right for 1-D ones only
    body.outputs += [bb.op("Reshape", [c, bb.ints([-1])]) for c in carried_in]
    history = [Value(b.fresh("history"), t, node) for t in infer("Loop", node.inputs, node.attrs)[-k:]]
    node.outputs += history
    return history


def clone_nodes(b: Builder, graph: Graph, mapping: dict) -> None:
    """Append copies of graph's nodes to b, reading mapping[v] for each v that has an entry (and
    adding the copies' outputs to it); subgraphs are copied too."""
    for n in graph.nodes:
        attrs = {key: _clone_graph(b, a, mapping) if isinstance(a, Graph) else a for key, a in n.attrs.items()}
        b.span = n.span
        outs = b.op(n.op, [mapping.get(v, v) if v is not None else None for v in n.inputs], attrs,
                    n_out=len(n.outputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for old, new in zip(n.outputs, outs):
            mapping[old] = new
            if old.name in graph.exact:  # float32 constants as written: float64 widening reads them
                b.graph.exact[new.name] = graph.exact[old.name]


def _clone_graph(b: Builder, graph: Graph, mapping: dict) -> Graph:
    copy = Graph(graph.name)
    cb = b.child(copy)
    inner = dict(mapping)
    for v in graph.inputs:
        inner[v] = cb.input(cb.fresh(v.name.rpartition("/")[2]), v.type)
    clone_nodes(cb, graph, inner)
    copy.outputs = [inner.get(v, v) for v in graph.outputs]
    return copy
