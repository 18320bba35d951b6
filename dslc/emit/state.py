"""Training state as plain graph inputs, its initial values as a graph of their own.

A compiled step takes its weights, optimizer state, `step` and `seed` as inputs whose initial values
are defaults: initializers of the same name. Python onnxruntime and onnx.reference let a caller feed
such inputs, but other runtimes do not: onnxruntime-node silently keeps the initializer,
onnxruntime-web refuses the feed, OpenVINO and tract treat it as a constant and hide the input. So
the files `dslc compile` writes split that state out:

    NAME.onnx        the step, its state plain inputs (no initializer): every runtime feeds them
    NAME.init.onnx   no inputs; its outputs are the initial state, by the same names

A loop in any runtime runs NAME.init.onnx once, feeds its outputs and the batch to NAME.onnx by
name, then feeds each output `X.next` back into `X`. `join_state` puts the two back together
(what `dslc run NAME.onnx` does when NAME.init.onnx lies beside it).
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

INIT_SUFFIX = ".init.onnx"
# The init graph is Constants only: opset 13's Constant takes every tensor type dslc emits, and
# converters that stop at older opsets (onnx2torch) have it.
INIT_OPSET = 13


def split_state(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto | None]:
    """(the model with its defaulted inputs made plain inputs, the graph of their initial values),
    or (model, None) when no input has a default."""
    inputs = {i.name: i for i in model.graph.input}
    defaults = [t for t in model.graph.initializer if t.name in inputs]
    if not defaults:
        return model, None
    step = onnx.ModelProto()
    step.CopyFrom(model)
    kept = [t for t in step.graph.initializer if t.name not in inputs]
    del step.graph.initializer[:]
    step.graph.initializer.extend(kept)
    order = {name: k for k, name in enumerate(inputs)}
    defaults.sort(key=lambda t: order[t.name])
    nodes = [helper.make_node("Constant", [], [t.name], name=f"init/{t.name}", value=t) for t in defaults]
    graph = helper.make_graph(nodes, f"{model.graph.name}.init", [], [inputs[t.name] for t in defaults],
                              doc_string=f"the initial state of {model.graph.name}: feed each output to "
                                         f"the input of the same name")
    init = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INIT_OPSET)],
                             producer_name=model.producer_name, ir_version=model.ir_version)
    return step, init


def join_state(step: onnx.ModelProto, init: onnx.ModelProto) -> onnx.ModelProto:
    """The step with the init graph's values as the defaults of its inputs again (split_state undone)."""
    inputs = {i.name for i in step.graph.input}
    joined = onnx.ModelProto()
    joined.CopyFrom(step)
    for node in init.graph.node:
        if node.op_type == "Constant" and node.output[0] in inputs:
            value = onnx.TensorProto()
            value.CopyFrom(node.attribute[0].t)
            value.name = node.output[0]
            joined.graph.initializer.append(value)
    return joined


def init_path(path: str | Path) -> Path:
    """Where the initial state of the model at `path` lies: NAME.init.onnx beside NAME.onnx."""
    path = Path(path)
    return path.with_name(path.name[:-len(".onnx")] + INIT_SUFFIX if path.name.endswith(".onnx")
                          else path.name + INIT_SUFFIX)
