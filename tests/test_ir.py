"""The IR core: the Builder's type inference, the verifier, and the passes."""
import numpy as np
import pytest

from dslc.diagnostics import DslShapeError
from dslc.ir.core import Graph, Node, TensorType, Value
from dslc.ir.builder import Builder
from dslc.ir.verify import IRError, verify
from dslc.passes import optimize


def _graph():
    g = Graph("g")
    b = Builder(g)
    x = b.input("x", TensorType("f32", ("N", 4)))
    return g, b, x


def test_builder_infers_symbolic_shapes():
    g, b, x = _graph()
    w = b.param("w", np.zeros((4, 3), np.float32))
    y = b.op("MatMul", [x, w])
    z = b.op("Flatten", [b.op("Unsqueeze", [y, b.ints([1])])])
    assert y.type == TensorType("f32", ("N", 3)) and z.type == TensorType("f32", ("N", 3))
    g.outputs = [z]
    verify(g)


def test_shape_errors_are_located_dsl_errors():
    g, b, x = _graph()
    with pytest.raises(DslShapeError, match="cannot broadcast"):
        b.op("Add", [x, b.const(np.zeros(5))])


def test_verifier_catches_use_before_definition_and_wrong_types():
    g, b, x = _graph()
    y = b.op("Relu", [x])
    g.outputs = [y]
    ghost = Value("ghost", x.type)
    g.nodes.insert(0, Node("Relu", [ghost], [Value("r", x.type)], name="bad"))
    with pytest.raises(IRError, match="before it is defined"):
        verify(g)
    g.nodes.pop(0)
    y.type = TensorType("f32", ("N", 5))
    with pytest.raises(IRError, match="makes f32"):
        verify(g)


def test_passes_remove_dead_and_repeated_nodes():
    g, b, x = _graph()
    a, c = b.op("Exp", [x]), b.op("Exp", [x])
    b.op("Log", [x])  # dead
    g.outputs = [b.op("Add", [a, c])]
    assert optimize(g)
    assert [n.op for n in g.nodes] == ["Exp", "Add"]
    assert g.nodes[1].inputs[0] is g.nodes[1].inputs[1]
    verify(g)
