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


@pytest.mark.parametrize("a,b", [
    ("H*2-1", "2*H-1"), ("2*(2*(H+1))-1", "4*((H+1))-1"), ("N*k+k*N", "2*N*k"), ("W+H", "H+W"),
    ("ceil((2*(H+2))/2)+4", "H+6"), ("ceil((2*(ceil((H-4)/2)+1))/2)", "ceil((H-4)/2)+1"),
    ("(H-2)*(W-2)*N", "N*H*W-2*N*H-2*N*W+4*N"),
])
def test_one_spelling_per_symbolic_dim(a, b):
    """Two spellings of one size are one dim (the verifier compares types): found by the gradient
    fuzzer as an internal error at symbolic H and W (tests/fuzz_regressions)."""
    from dslc.ir.core import normal_dim
    assert normal_dim(a) == normal_dim(b)
    assert TensorType("f32", ("N", a)) == TensorType("f32", ("N", b))
    assert normal_dim(normal_dim(a)) == normal_dim(a)  # a normal form stays itself


@pytest.mark.parametrize("d,shown", [("N*(H-2)*(W-2)", "N*(H-2)*(W-2)"), ("H*2+2", "2*(H+1)"),
                                     ("ceil((H)/2)", "ceil((H)/2)"), ("-k+N", "N-k"), ("N-N+3", 3)])
def test_dims_read_as_shapes_do(d, shown):
    from dslc.ir.core import normal_dim
    assert normal_dim(d) == shown


@pytest.mark.parametrize("a,b,differ", [("3*N", "N", True), ("N+1", "N", True), ("N", "M", False),
                                        ("H*W", "W*H", False), ("N-M", "0", False), (4, 5, True)])
def test_dims_that_differ_at_every_size(a, b, differ):
    """Broadcasting refuses them at compile time (the gradient fuzzer found 3*N against N compiling,
    then failing in onnxruntime)."""
    from dslc.ir.core import dims_differ
    assert dims_differ(a, b) is differ


def test_broadcast_of_3n_against_n_is_a_located_error():
    import dslc
    src = "fn f(x: f32[N, 3], t: f32[N, 1]) {\n    p = reshape(x, [-1, 1])\n    return p - t\n}\n"
    with pytest.raises(dslc.DslError) as e:
        dslc.compile(dslc.loads(src, "b.dsl"), "f")
    assert "cannot broadcast shapes [3*N, 1] and [N, 1]" in e.value.render() and "b.dsl:3:12" in e.value.render()
