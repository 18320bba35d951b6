"""IR -> onnx.ModelProto: default domain only, one opset, full value_info, spans as doc_strings."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir.core import Graph, TensorType, Value
from ..ir.ops import DTYPE_CODE

OPSET = 21
# onnxruntime 1.31 loads IR <= 13 and onnx 1.23 writes 14 by default; 10 is what opset 21 needs,
# and it keeps the files loadable by older runtimes (onnxruntime-training 1.19 among them).
IR_VERSION = 10

# IR ops that are spelled differently in ONNX: one entry per op, everything else is identical.
EMIT_AS = {"StopGradient": "Identity"}


def value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, DTYPE_CODE[v.dtype], _dims(v.type))


def _dims(t: TensorType):
    return [d if isinstance(d, int) else str(d) for d in t.shape]


def _attr(name: str, value, root: str) -> onnx.AttributeProto:
    if isinstance(value, Graph):
        return helper.make_attribute(name, graph_proto(value, root))
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    return helper.make_attribute(name, value)


def _initializer(array: np.ndarray, name: str) -> onnx.TensorProto:
    # (np.ascontiguousarray would turn a 0-d scalar such as `seed` into shape [1])
    return numpy_helper.from_array(np.array(array, order="C", copy=None), name)


def graph_proto(graph: Graph, root: str = "") -> onnx.GraphProto:
    """`root`: the folder source files are named relative to in doc strings (the main file's)."""
    # A graph output comes from a one-output node named after it: runtimes that name outputs after
    # their nodes (tract) then keep the output's name, so `X.next` still pairs with `X`. An output of
    # a node with several (a Split) goes through an Identity of that name.
    output_names = {v.name for v in graph.outputs}
    nodes, infos = [], []
    for n in graph.nodes:
        doc = n.span.relative_to(root) if n.span else ""
        several = len(n.outputs) > 1
        outs = [f"{v.name}/value" if several and v.name in output_names else v.name for v in n.outputs]
        named = n.name if several else next((v.name for v in n.outputs if v.name in output_names), n.name)
        node = helper.make_node(EMIT_AS.get(n.op, n.op), [v.name if v is not None else "" for v in n.inputs],
                                outs, name=named, doc_string=doc)
        node.attribute.extend(_attr(k, v, root) for k, v in sorted(n.attrs.items()))
        nodes.append(node)
        for v, out in zip(n.outputs, outs):
            if out != v.name:
                nodes.append(helper.make_node("Identity", [out], [v.name], name=v.name, doc_string=doc))
                infos.append(helper.make_tensor_value_info(out, DTYPE_CODE[v.dtype], _dims(v.type)))
            elif v.name not in output_names:
                infos.append(value_info(v))
    inits = [_initializer(p.init, p.value.name) for p in graph.params]
    inits += [_initializer(v, name) for name, v in graph.input_defaults.items()]
    inputs = list(graph.inputs) + ([p.value for p in graph.params] if graph.params_are_inputs else [])
    return helper.make_graph(nodes, graph.name, [value_info(v) for v in inputs],
                             [value_info(v) for v in graph.outputs], initializer=inits, value_info=infos,
                             doc_string=graph.doc)


def to_onnx(graph: Graph, opset: int = OPSET) -> onnx.ModelProto:
    """`opset` below 21 is for graphs that passes/portable.py rewrote for it."""
    model = helper.make_model(graph_proto(graph, graph.source_root), opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="dslc", ir_version=IR_VERSION)
    for n in model.graph.node:
        assert n.domain in ("", "ai.onnx"), f"non-standard op {n.domain}.{n.op_type}"
    # Which initializers are trainable weights and which are state: readers of the file (dslc run,
    # dslc train) need it, and it survives any runtime.
    trainable = [p.value.name for p in graph.params if p.trainable]
    helper.set_model_props(model, {"dslc.trainable": ",".join(trainable)})
    return model


def constants_as_initializers(model: onnx.ModelProto, consumers: tuple[str, ...]) -> None:
    """Turn the Constant nodes that `consumers` ops read into initializers (for converters that build
    a layer only from an initializer weight)."""
    wanted = {i for n in model.graph.node if n.op_type in consumers for i in n.input}
    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] in wanted and n.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(n.attribute[0].t)
            tensor.name = n.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def check(model: onnx.ModelProto) -> None:
    """The checks every emitted model passes: the full checker and strict shape inference."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
