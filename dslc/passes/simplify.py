"""Algebraic simplification: drop nodes that compute nothing and fold trivial algebra.

Rewrites (each rewires the node's consumers, in this graph and in its Loop bodies, to an earlier value):
- Reshape to the shape its input already has (same static shape, or same type);
- Transpose with the identity perm; two Transposes in a row become one (none if the perms cancel);
- Cast to the dtype the input already has;
- Identity (not StopGradient: `grad` may still run on a graph after it);
- Reshape of a Reshape reads the first one's input (when the target holds no 0: "copy this dim");
- x * 1, 1 * x, x / 1, x + 0, 0 + x, x - 0 when the constant does not broadcast x to a larger shape
  (except on a fed random draw: see `_fed_draw`);
- Neg(Neg(x));
- an Expand feeding Add / Sub / Mul / Div is skipped where the op's own broadcasting gives the same shape.

A node that makes an output of its graph (or of a subgraph that reads it) keeps its output: the output
must keep its name. An Identity that only renames an inner value into an output hands the name to
that value's producer instead (`_take_name`). The values it leaves unused are dropped by dead-code elimination afterwards.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Node, ShapeIssue, Value
from ..ir.ops import infer


def _subgraphs(n: Node):
    return [a for a in n.attrs.values() if isinstance(a, Graph)]


def _subgraph_outputs(graph: Graph) -> set[int]:
    """Values the Loop bodies (at any depth) of `graph` name as their outputs."""
    out = set()
    for n in graph.nodes:
        for sub in _subgraphs(n):
            out.update(id(v) for v in sub.outputs)
            out |= _subgraph_outputs(sub)
    return out


def _rename_uses(graph: Graph, alias: dict[int, Value]) -> None:
    for n in graph.nodes:
        n.inputs = [_resolve(alias, v) for v in n.inputs]
        for sub in _subgraphs(n):
            _rename_uses(sub, alias)


def _resolve(alias: dict[int, Value], v: Value | None) -> Value | None:
    while v is not None and id(v) in alias:
        v = alias[id(v)]
    return v


def _producer(v: Value, op: str) -> Node | None:
    p = v.producer
    if p is not None and p.op == op and any(o is v for o in p.outputs):
        return p
    return None


def _perm(n: Node) -> list[int]:
    return list(n.attrs.get("perm", range(n.inputs[0].rank)[::-1]))


def _is_const(v: Value | None, x: float) -> bool:
    return v is not None and v.const is not None and v.const.size > 0 and bool(np.all(v.const == x))


def _fed_draw(v: Value) -> bool:
    """A `random.K` graph input (random="input"): its `* 1` is kept on purpose, as its first use carries
    the source location of the random_normal / random_uniform call that it stands for."""
    return v.producer is None and v.name.startswith("random.")


def _no_copy_dims(shape: Value) -> bool:
    """A Reshape target with no 0 entry (0 copies the input's dim: it depends on the input's shape)."""
    if shape.const is not None:
        return bool(np.all(np.asarray(shape.const) != 0))
    if shape.sym is not None:
        return all(d != 0 for d in shape.sym)
    return False


def _retarget(n: Node, inputs: list, attrs: dict) -> bool:
    """Give `n` new inputs and attributes if its output keeps its type with them."""
    try:
        ok = infer(n.op, inputs, attrs)[0] == n.outputs[0].type
    except ShapeIssue:
        ok = False
    if ok:
        n.inputs, n.attrs = inputs, attrs
    return ok


def _rewrite(n: Node) -> tuple[Value | None, bool]:
    """(a value that can replace `n`'s single output or None, whether `n` was changed in place)."""
    if len(n.outputs) != 1 or not n.inputs or n.inputs[0] is None:
        return None, False
    x, out = n.inputs[0], n.outputs[0]
    op = n.op
    if op == "Identity":
        return x, False
    if op == "Cast":
        return (x if x.type == out.type else None), False
    if op == "Reshape":
        changed = False
        inner = _producer(x, "Reshape")
        if inner is not None and n.attrs.get("allowzero", 0) == 0 and _no_copy_dims(n.inputs[1]):
            changed = _retarget(n, [inner.inputs[0], n.inputs[1]], n.attrs)
            x = n.inputs[0]
        return (x if x.type == out.type else None), changed
    if op == "Transpose":
        perm = _perm(n)
        inner = _producer(x, "Transpose")
        changed = False
        if inner is not None:
            first = _perm(inner)
            composed = [first[p] for p in perm]
            if _retarget(n, [inner.inputs[0]], {**n.attrs, "perm": composed}):
                perm, x, changed = composed, inner.inputs[0], True
        return (x if perm == list(range(len(perm))) else None), changed
    if op == "Neg":
        inner = _producer(x, "Neg")
        return (inner.inputs[0] if inner is not None else None), False
    if op in ("Mul", "Add", "Div", "Sub") and len(n.inputs) == 2:
        changed = _drop_expands(n)
        a, b = n.inputs
        unit = 1.0 if op in ("Mul", "Div") else 0.0
        if _is_const(b, unit) and a.type == out.type and not _fed_draw(a):
            return a, False
        if op in ("Mul", "Add") and _is_const(a, unit) and b.type == out.type and not _fed_draw(b):
            return b, False
        return None, changed
    return None, False


def _drop_expands(n: Node) -> bool:
    """An operand of an elementwise Add / Sub / Mul / Div that is an Expand reads the Expand's input
    instead where the node's broadcasting gives the same output type: the same numbers, without
    the full-size copy (the reductions' gradients spread dy with an Expand that a Mul by the
    full-size operand would broadcast anyway: a batch or layer norm's backward, the loss's)."""
    changed = False
    for k in range(2):
        inner = _producer(n.inputs[k], "Expand")
        if inner is not None:
            inputs = list(n.inputs)
            inputs[k] = inner.inputs[0]
            changed |= _retarget(n, inputs, n.attrs)
    return changed


def simplify(graph: Graph) -> bool:
    alias: dict[int, Value] = {}
    changed = _simplify(graph, alias)
    _rename_uses(graph, alias)  # (nodes that read a value renamed after them: see `_take_name`)
    return changed


def _take_name(n: Node, mine: set[int], keep_names: set[int], alias: dict[int, Value]) -> bool:
    """`out = Identity(y)` making a graph output: when y is made by a node of this graph and is no output
    itself, that node makes `out` instead, and the Identity goes."""
    y, out = n.inputs[0], n.outputs[0]
    p = y.producer
    if (n.op != "Identity" or p is None or id(p) not in mine or p.op == "Constant" or id(y) in keep_names
            or not any(o is y for o in p.outputs) or y.type != out.type):
        return False
    p.outputs = [out if o is y else o for o in p.outputs]
    out.producer = p
    out.const, out.sym = y.const, y.sym
    alias[id(y)] = out
    return True


def _simplify(graph: Graph, alias: dict[int, Value]) -> bool:
    keep_names = {id(v) for v in graph.outputs} | _subgraph_outputs(graph)
    changed = False
    kept = []
    mine: set[int] = set()
    for n in graph.nodes:
        n.inputs = [_resolve(alias, v) for v in n.inputs]
        for sub in _subgraphs(n):
            _rename_uses(sub, alias)  # values captured from this scope
            changed |= _simplify(sub, alias)
        replacement, modified = _rewrite(n)
        changed |= modified
        if replacement is not None:
            if not any(id(o) in keep_names for o in n.outputs):
                alias[id(n.outputs[0])] = replacement
                changed = True
                continue
            if _take_name(n, mine, keep_names, alias):
                changed = True
                continue
        kept.append(n)
        mine.add(id(n))
    graph.nodes = kept
    return changed
