"""The algebraic-simplification pass (dslc/passes/simplify.py): each rewrite on a small IR graph, run
before and after the pass in onnxruntime and onnx's reference evaluator; then every spec target
compiled with and without the pass, run alike in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
import dslc.passes
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.builder import Builder
from dslc.ir.core import Graph, TensorType
from dslc.ir.verify import verify
from dslc.passes.simplify import simplify
from dslc.runtime import run_model
from feeds import random_feeds
from test_specs import ALL_TARGETS, SPECS, _need_grad

SHAPE = (2, 3, 4)


def _graph(shape=SHAPE, dtype="f32"):
    g = Graph("g")
    b = Builder(g)
    return g, b, b.input("x", TensorType(dtype, shape))


def _run_both(model: onnx.ModelProto, feeds: dict) -> list[dict]:
    got = run_model(model, feeds, device="cpu")
    ref = ReferenceEvaluator(model)
    return [got, dict(zip(ref.output_names, ref.run(None, feeds)))]


def _simplified(g: Graph, feeds: dict | None = None) -> list[str]:
    """Run the pass; assert that it changed the graph and that the outputs are the same before and after
    it in both runtimes. Returns the ops left."""
    verify(g)
    before = to_onnx(g)
    check(before)
    feeds = feeds or {"x": np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)}
    assert simplify(g)
    dslc.passes.eliminate_dead_code(g)
    verify(g)
    after = to_onnx(g)
    check(after)
    want = _run_both(before, feeds)
    got = _run_both(after, feeds)
    for w, r in zip(want, got):
        assert list(w) == list(r) == [o.name for o in before.graph.output]
        for name in w:
            np.testing.assert_array_equal(w[name], r[name], err_msg=name)
    return [n.op for n in g.nodes]


def test_identity_reshape_static_and_symbolic():
    g, b, x = _graph()
    g.outputs = [b.op("Relu", [b.op("Reshape", [x, b.ints(list(SHAPE))])], names=["y"])]
    assert _simplified(g) == ["Relu"] and g.nodes[0].inputs[0] is x

    g, b, x = _graph(("N", 3, 4))
    r = b.op("Reshape", [x, b.ints([-1, 3, 4])])
    assert r.type == x.type
    g.outputs = [b.op("Relu", [r], names=["y"])]
    assert _simplified(g) == ["Relu"]


def test_identity_transpose_and_cast_and_identity_chain():
    g, b, x = _graph()
    t = b.op("Transpose", [x], {"perm": [0, 1, 2]})
    c = b.op("Cast", [t], {"to": onnx.TensorProto.FLOAT})
    i = b.op("Identity", [b.op("Identity", [c])])
    g.outputs = [b.op("Exp", [i], names=["y"])]
    assert _simplified(g) == ["Exp"] and g.nodes[0].inputs[0] is x


def test_transposes_compose_or_cancel():
    g, b, x = _graph()
    t = b.op("Transpose", [b.op("Transpose", [x], {"perm": [1, 0, 2]})], {"perm": [2, 0, 1]})
    g.outputs = [b.op("Relu", [t], names=["y"])]
    assert _simplified(g) == ["Transpose", "Relu"]
    assert g.nodes[0].inputs[0] is x and g.nodes[0].attrs["perm"] == [2, 1, 0]

    g, b, x = _graph()
    t = b.op("Transpose", [b.op("Transpose", [x], {"perm": [1, 2, 0]})], {"perm": [2, 0, 1]})
    g.outputs = [b.op("Relu", [t], names=["y"])]
    assert _simplified(g) == ["Relu"] and g.nodes[0].inputs[0] is x


def test_reshape_of_reshape_keeps_the_last():
    g, b, x = _graph()
    r = b.op("Reshape", [b.op("Reshape", [x, b.ints([6, 4])]), b.ints([4, 6])])
    g.outputs = [b.op("Relu", [r], names=["y"])]
    assert [op for op in _simplified(g) if op != "Constant"] == ["Reshape", "Relu"]
    assert g.nodes[-2].inputs[0] is x


def test_reshape_to_zero_dims_is_left_alone():
    """0 in a Reshape target copies the input's dim: reading an earlier input would change it."""
    g, b, x = _graph()
    r = b.op("Reshape", [b.op("Reshape", [x, b.ints([6, 4])]), b.ints([0, 2, 2])])
    g.outputs = [b.op("Relu", [r], names=["y"])]
    assert not simplify(g)


def test_mul_one_add_zero_neg_neg():
    g, b, x = _graph()
    y = b.op("Mul", [b.const(1.0), x])
    y = b.op("Add", [y, b.const(np.zeros(4))])
    y = b.op("Div", [y, b.const(1.0)])
    y = b.op("Sub", [y, b.const(0.0)])
    y = b.op("Neg", [b.op("Neg", [y])])
    g.outputs = [b.op("Relu", [y], names=["y"])]
    assert _simplified(g) == ["Relu"] and g.nodes[0].inputs[0] is x


def test_broadcasting_unit_constants_are_kept():
    """x[1, 4] * ones[3, 4] makes a [3, 4]: not a no-op. 0 - x is not x either."""
    g, b, x = _graph((1, 4))
    g.outputs = [b.op("Mul", [x, b.const(np.ones((3, 4)))], names=["y"]),
                 b.op("Sub", [b.const(0.0), x], names=["z"])]
    assert not simplify(g)


def test_graph_outputs_keep_their_names():
    g, b, x = _graph()
    y = b.op("Reshape", [x, b.ints(list(SHAPE))], names=["y"])
    z = b.op("Identity", [b.op("Identity", [x])], names=["z"])
    g.outputs = [y, z, b.op("Relu", [y], names=["w"])]
    assert _simplified(g) == ["Constant", "Reshape", "Identity", "Relu"]
    assert [o.name for o in g.outputs] == ["y", "z", "w"]


def test_an_identity_output_hands_its_name_to_the_producer():
    g, b, x = _graph()
    r = b.op("Relu", [x])
    w = b.op("Exp", [r], names=["w"])  # reads r before the Identity renames it
    g.outputs = [w, b.op("Identity", [r], names=["y"]), b.op("Identity", [r], names=["z"])]
    assert _simplified(g) == ["Relu", "Exp", "Identity"]
    assert g.nodes[0].outputs[0].name == "y" and g.nodes[1].inputs[0] is g.nodes[0].outputs[0]
    assert g.nodes[2].inputs[0].name == "y" and [o.name for o in g.outputs] == ["w", "y", "z"]


def test_loop_bodies_and_captured_values():
    """A body reads an outer no-op Reshape by name (rewired to its input) and has no-ops of its own; its
    outputs keep theirs."""
    g, b, x = _graph()
    captured = b.op("Reshape", [x, b.ints(list(SHAPE))])
    body = Graph("body")
    bb = b.child(body)
    bb.input("i", TensorType("i64", ()))
    cond = bb.input("cond", TensorType("bool", ()))
    acc = bb.input("acc", x.type)
    step = bb.op("Add", [bb.op("Neg", [bb.op("Neg", [acc])]), bb.op("Transpose", [captured], {"perm": [0, 1, 2]})])
    body.outputs = [bb.op("Identity", [cond]), bb.op("Identity", [bb.op("Mul", [step, bb.const(1.0)])])]
    out = b.op("Loop", [b.ints(3), b.const(np.asarray(True), "bool"), captured], {"body": body})
    g.outputs = [b.op("Relu", [out], names=["y"])]
    ops = _simplified(g)
    assert "Reshape" not in ops
    assert [n.op for n in body.nodes] == ["Add", "Identity"] and body.nodes[0].outputs[0] is body.outputs[1]
    assert body.nodes[0].inputs == [acc, x]


# ------------------------------------------------------------------ every spec target, with and without
def _cases() -> list[tuple[str, str, str | None]]:
    """Every target as compiled by default; every step also with emit='gradients'."""
    steps = {(f, t) for f, t in ALL_TARGETS if type(dslc.load(SPECS / f).decls[t]).__name__ == "Step"}
    return [(f, t, None) for f, t in ALL_TARGETS] + [(f, t, "gradients") for f, t in ALL_TARGETS if (f, t) in steps]


CASES = _cases()


def _compile(file: str, target: str, emit: str | None, with_pass: bool, monkeypatch) -> tuple[onnx.ModelProto, int]:
    lowered = dslc.lower(SPECS / file, target, emit=emit, passes_off=() if with_pass else ("simplify",))
    return to_onnx(lowered.graph), _count(lowered.graph)


def _count(g: Graph) -> int:
    return sum(1 + sum(_count(a) for a in n.attrs.values() if isinstance(a, Graph)) for n in g.nodes)


@pytest.mark.parametrize("file,target,emit", CASES, ids=[f"{f}:{t}:{e or 'default'}" for f, t, e in CASES])
def test_spec_target_same_outputs_with_and_without(file, target, emit, monkeypatch, capsys):
    _need_grad(target)
    plain, n_plain = _compile(file, target, emit, False, monkeypatch)
    simple, n_simple = _compile(file, target, emit, True, monkeypatch)
    assert n_simple <= n_plain
    with capsys.disabled():
        print(f"\n{file}:{target}:{emit or 'default'}: {n_plain} -> {n_simple} nodes", end="")
    check(simple)
    feeds = random_feeds(plain, np.random.default_rng(0))
    assert set(feeds) == set(random_feeds(simple, np.random.default_rng(0)))
    want = run_model(plain, feeds, device="cpu")
    got = run_model(simple, feeds, device="cpu")
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=f"{target}: {name}")
