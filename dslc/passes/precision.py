"""Rewrite a graph from float32 to float64: inputs, weights, constants, casts and random draws.

Gradient checks by finite differences need float64 (float32 rounding swamps the differences);
this pass lets the tests check the very graphs users get, only wider.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, TensorType, Value
from ..ir.ops import DTYPE_CODE, OPS

_F32, _F64 = DTYPE_CODE["f32"], DTYPE_CODE["f64"]


def _widen(v: Value) -> None:
    if v.type.dtype == "f32":
        v.type = TensorType("f64", v.type.shape)
        if v.const is not None:
            v.const = v.const.astype(np.float64)


def to_float64(graph: Graph) -> bool:
    for v in graph.inputs + graph.outputs:
        _widen(v)
    for p in graph.params:
        _widen(p.value)
        if p.init.dtype == np.float32:
            p.init = p.init.astype(np.float64)
    for name, v in graph.input_defaults.items():
        if v.dtype == np.float32:
            graph.input_defaults[name] = v.astype(np.float64)
    for n in graph.nodes:
        for v in n.outputs:
            _widen(v)
        for k, a in list(n.attrs.items()):
            if isinstance(a, np.ndarray) and a.dtype == np.float32:
                n.attrs[k] = a.astype(np.float64)
            elif isinstance(a, Graph):
                to_float64(a)
        if n.op == "Cast" and n.attrs["to"] == _F32:
            n.attrs["to"] = _F64
        if n.op.startswith("Random") and n.attrs.get("dtype", _F32 if "Like" not in n.op else None) == _F32:
            n.attrs["dtype"] = _F64
        if n.op == "Constant" and n.outputs[0].name in graph.exact and n.outputs[0].dtype == "f64":
            n.attrs["value"] = graph.exact[n.outputs[0].name].reshape(n.attrs["value"].shape)
        if any(v.const is not None and v.dtype == "f64" for v in n.outputs):
            for v in n.outputs:  # values known at compile time: recomputed in float64
                v.const = None
            OPS[n.op].fold(n)
    return True
