"""The Builder: appends nodes to a graph and types each output on the spot with the op table.

It lives apart from core.py so that the data (values, nodes, graphs) does not import the op table,
and the op table imports only the data.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..diagnostics import DslShapeError, DslTypeError, Span
from .core import DTYPES, Graph, Node, Param, ShapeIssue, TensorType, Value, dtype_of
from .ops import OPS, infer


class Builder:
    """Appends nodes to a graph, inferring each output's type with the op table on the spot, so a
    shape or type mistake is reported at the source span being lowered."""

    def __init__(self, graph: Graph, names: "itertools.count | None" = None, span: Span | None = None,
                 scope: str = ""):
        self.graph = graph
        self.names = names if names is not None else itertools.count()
        self.span = span
        self.scope = scope  # prefix for value names: the binding being lowered

    def child(self, graph: Graph) -> "Builder":
        """A builder for a subgraph (a Loop body), sharing the name counter so names stay unique."""
        return Builder(graph, self.names, self.span, self.scope)

    def fresh(self, hint: str = "t") -> str:
        base = f"{self.scope}/{hint}" if self.scope else hint
        return f"{base}_{next(self.names)}"

    def op(self, op: str, inputs, attrs: dict | None = None, n_out: int | None = None,
           names: list[str] | None = None):
        """Add `op` and return its output Value (or a tuple of them when it has several)."""
        attrs = dict(attrs or {})
        inputs = list(inputs)
        try:
            out_types = infer(op, inputs, attrs)
        except ShapeIssue as e:
            err = DslTypeError if e.kind == "type" else DslShapeError
            raise err(e.message, self.span, e.hint) from None
        if n_out is not None:
            out_types = out_types[:n_out]
        outs = [Value(names[i] if names else self.fresh(op.lower()), t) for i, t in enumerate(out_types)]
        node = Node(op, inputs, outs, attrs, self.span, name=self.fresh(op))
        for v in outs:
            v.producer = node
        OPS[op].fold(node)
        self.graph.nodes.append(node)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def const(self, data, dtype: str = "f32") -> Value:
        array = np.asarray(data, dtype=DTYPES[dtype])
        out = self.op("Constant", [], {"value": array})
        if dtype == "f32":
            self.graph.exact[out.name] = np.asarray(data, dtype=np.float64)
        return out

    def ints(self, data) -> Value:
        return self.const(np.asarray(data, dtype=np.int64), "i64")

    def input(self, name: str, type: TensorType, default: np.ndarray | None = None) -> Value:
        v = Value(name, type)
        self.graph.inputs.append(v)
        if default is not None:
            self.graph.input_defaults[name] = np.asarray(default, dtype=DTYPES[type.dtype]).reshape(type.shape)
        return v

    def param(self, name: str, init: np.ndarray, trainable: bool = True) -> Value:
        v = Value(name, TensorType(dtype_of(init), tuple(init.shape)))
        self.graph.params.append(Param(v, init, trainable))
        return v
