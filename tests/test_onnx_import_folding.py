"""Folding in the importer: the shape arithmetic exporters write becomes constants or symbolic
shapes when compiling (no torch needed: graphs built with onnx.helper, checked in onnxruntime and
onnx.reference against numpy)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import dslc


def _compile(tmp_path, nodes, inits, inputs, target_src=None):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_empty_tensor_value_info("y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "t.dsl").write_text('model Net = onnx("m.onnx")\n' + (target_src or ""))
    return dslc.compile(dslc.load(tmp_path / "t.dsl"), "Net")


def test_view_batch_minus_one_chain_keeps_the_batch_symbolic(tmp_path):
    """x.view(x.size(0), -1) as TorchScript writes it: Shape, Gather, Unsqueeze, Concat, Reshape."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["nn"]),
             helper.make_node("Concat", ["nn", "minus1"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(0, np.int64), "zero"),
             numpy_helper.from_array(np.asarray([0], np.int64), "ax"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "minus1")]
    model = _compile(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])])
    out = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["N", 12]
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(dslc.run(model, {"x": x})["y"], x.reshape(2, 12))


def test_expand_with_where_equal_chain(tmp_path):
    """expand(x, [N, -1, ...]) as TorchScript writes it: Where(Equal(shape, -1), ones, shape)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Equal", ["target", "minus1"], ["eq"]),
             helper.make_node("Where", ["eq", "ones", "target"], ["shape"]),
             helper.make_node("Expand", ["x", "shape"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray([2, 1, 3], np.int64), "target"),
             numpy_helper.from_array(np.asarray(-1, np.int64), "minus1"),
             numpy_helper.from_array(np.asarray([1, 1, 1], np.int64), "ones")]
    model = _compile(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])])
    x = np.asarray([[1, 2, 3]], np.float32)
    np.testing.assert_array_equal(dslc.run(model, {"x": x})["y"], np.broadcast_to(x, (2, 1, 3)))


def test_constant_gather_elements_over_many_values_folds(tmp_path):
    """BERT's token-type buffer: GatherElements on constants (onnx.reference cannot run it over
    more than 64 values in onnx 1.23): folded, so the imported graph runs in onnx.reference."""
    buffer = np.arange(100, dtype=np.int64).reshape(1, 100) % 3
    idx = np.arange(16, dtype=np.int64).reshape(1, 16) * 5
    nodes = [helper.make_node("GatherElements", ["buf", "idx"], ["tt"], axis=1),
             helper.make_node("Gather", ["table", "tt"], ["e"], axis=0),
             helper.make_node("Add", ["x", "e"], ["y"])]
    table = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    inits = [numpy_helper.from_array(buffer, "buf"), numpy_helper.from_array(idx, "idx"),
             numpy_helper.from_array(table, "table")]
    model = _compile(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 4])])
    assert "GatherElements" not in {n.op_type for n in model.graph.node}
    x = np.ones((2, 16, 4), np.float32)
    want = x + table[np.take_along_axis(buffer, idx, 1)]
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], want)
    np.testing.assert_array_equal(dslc.run(model, {"x": x})["y"], want)


def test_symbolic_attention_mask_from_range_and_trilu(tmp_path):
    """A causal mask over a symbolic length T: Shape, Gather, Range, Unsqueeze, LessOrEqual, Where."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
             helper.make_node("Range", ["zero", "t", "one_step"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax1"], ["rows"]),
             helper.make_node("LessOrEqual", ["r", "rows"], ["keep"]),
             helper.make_node("Where", ["keep", "x", "neg"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(0, np.int64), "zero"),
             numpy_helper.from_array(np.asarray(1, np.int64), "one"),
             numpy_helper.from_array(np.asarray(1, np.int64), "one_step"),
             numpy_helper.from_array(np.asarray([1], np.int64), "ax1"),
             numpy_helper.from_array(np.asarray(-1e9, np.float32), "neg")]
    model = _compile(tmp_path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "T"])])
    x = np.ones((5, 5), np.float32)
    want = np.where(np.tril(np.ones((5, 5), bool)), x, np.float32(-1e9))
    np.testing.assert_array_equal(dslc.run(model, {"x": x})["y"], want)
