"""A malformed or hostile .onnx named by `onnx("...")` is one DslError naming the file (and the
node or tensor), never a traceback: truncated, not ONNX, huge dims, an unknown op, a cycle,
external data outside the project or missing, a file over the size limit, a path out of the
project. Files are built with onnx.helper (no torch needed)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dslc
from dslc.diagnostics import DslError
from dslc.frontend import onnx_file


def _raw(name: str, dims: list, raw: bytes) -> onnx.TensorProto:
    """A float tensor with whatever bytes (helper.make_tensor checks the length: a file need not)."""
    t = TensorProto()
    t.name, t.data_type = name, TensorProto.FLOAT
    t.dims.extend(dims)
    t.raw_data = raw
    return t


def _model(nodes=None, inits=None, inputs=None, outputs=None, opset=17) -> onnx.ModelProto:
    nodes = nodes if nodes is not None else [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    inits = inits if inits is not None else [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")]
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _load(tmp_path, data: bytes | onnx.ModelProto, name="m.onnx", options=""):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
    (tmp_path / "t.dsl").write_text(f'model Net = onnx("{name}"{options})\n')
    return dslc.load(tmp_path / "t.dsl")


def _error(tmp_path, data, **kw) -> str:
    with pytest.raises(DslError) as e:
        prog = _load(tmp_path, data, **kw)
        dslc.compile(prog, "Net")
    text = e.value.render()
    assert "Traceback" not in text
    return text


def test_a_valid_file_imports(tmp_path):
    prog = _load(tmp_path, _model())
    out = dslc.run(dslc.compile(prog, "Net"), {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(out["y"], np.full((2, 3), 4.0, np.float32))


def test_truncated_file(tmp_path):
    data = _model().SerializeToString()
    text = _error(tmp_path, data[: len(data) // 2])
    assert "m.onnx" in text and ("damaged" in text or "truncated" in text), text
    assert "t.dsl:1:" in text  # located at the onnx(...) path


def test_not_an_onnx_file(tmp_path):
    text = _error(tmp_path, b"this is a text file, not a model\n" * 10)
    assert "m.onnx" in text and ("not an ONNX" in text or "cannot decode" in text), text


def test_empty_file(tmp_path):
    text = _error(tmp_path, b"")
    assert "not an ONNX model" in text, text


def test_huge_declared_input_dim(tmp_path):
    m = _model(inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [10**12, 4])])
    text = _error(tmp_path, m)
    assert "`x`" in text and "1,000,000,000,000" in text, text


def test_huge_declared_initializer(tmp_path):
    huge = _raw("w", [2**20, 2**20], b"")
    text = _error(tmp_path, _model(inits=[huge]))
    assert "initializer `w`" in text and "more than any device" in text, text


def test_initializer_shorter_than_declared(tmp_path):
    short = _raw("w", [4, 3], b"\0" * 8)
    text = _error(tmp_path, _model(inits=[short]))
    assert "initializer `w`" in text and "holds 8 bytes" in text, text


def test_huge_constant_of_shape_is_not_allocated(tmp_path):
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["y"], name="bomb")]
    inits = [numpy_helper.from_array(np.asarray([2**30, 2**30], np.int64), "shape")]
    text = _error(tmp_path, _model(nodes=nodes, inits=inits))
    assert "node `bomb` (ConstantOfShape)" in text and "more than any device can hold" in text, text


def test_unknown_op_names_node_and_supported_ops(tmp_path):
    nodes = [helper.make_node("FancyOp", ["x"], ["y"], name="weird_node")]
    text = _error(tmp_path, _model(nodes=nodes, inits=[]))
    assert "node `weird_node` (FancyOp)" in text and "supported ops:" in text and "MatMul" in text, text


def test_op_of_another_domain(tmp_path):
    nodes = [helper.make_node("FusedMatMul", ["x", "w"], ["y"], name="fm", domain="com.microsoft")]
    m = _model(nodes=nodes)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    text = _error(tmp_path, m)
    assert "com.microsoft.FusedMatMul" in text and "`fm`" in text, text


def test_cyclic_graph(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    text = _error(tmp_path, _model(nodes=nodes, inits=[]))
    assert "cycle" in text and "`first`" in text and "`second`" in text, text


def test_value_read_but_never_made(tmp_path):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    text = _error(tmp_path, _model(nodes=nodes, inits=[]))
    assert "`adder`" in text and "`ghost`" in text, text


def _external(location: str) -> onnx.TensorProto:
    t = _raw("w", [4, 3], b"")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "48"}.items():
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    return t


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_project(tmp_path, location):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    text = _error(project, _model(inits=[_external(location)]))
    assert "initializer `w`" in text and location in text and "relative path" in text, text


def test_external_data_symlink_out_of_the_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    os.symlink(tmp_path / "outside.bin", project / "data.bin")
    text = _error(project, _model(inits=[_external("data.bin")]))
    assert "outside the project" in text, text


def test_missing_external_data_file(tmp_path):
    text = _error(tmp_path, _model(inits=[_external("weights.bin")]))
    assert "weights.bin" in text and "not found" in text, text


def test_external_data_shorter_than_the_tensor(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 20)
    text = _error(tmp_path, _model(inits=[_external("weights.bin")]))
    assert "past its end" in text, text


def test_external_data_inside_the_project_imports(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.full((4, 3), 2.0, np.float32).tobytes())
    prog = _load(tmp_path, _model(inits=[_external("weights.bin")]))
    out = dslc.run(dslc.compile(prog, "Net"), {"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 8.0, np.float32))


def test_file_over_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_file, "MAX_ONNX_BYTES", 64)
    text = _error(tmp_path, _model())
    assert "m.onnx" in text and "more than the 64" in text, text


def test_path_outside_the_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "m.onnx").write_bytes(_model().SerializeToString())
    (project / "t.dsl").write_text('model Net = onnx("../m.onnx")\n')
    with pytest.raises(DslError) as e:
        dslc.load(project / "t.dsl")
    assert "outside the project root" in e.value.render()


def test_missing_file_and_wrong_suffix(tmp_path):
    (tmp_path / "t.dsl").write_text('model Net = onnx("nothere.onnx")\n')
    with pytest.raises(DslError, match="file not found"):
        dslc.load(tmp_path / "t.dsl")
    (tmp_path / "u.dsl").write_text('model Net = onnx("model.pt")\n')
    with pytest.raises(DslError, match="only .onnx files"):
        dslc.load(tmp_path / "u.dsl")


def test_bad_options(tmp_path):
    with pytest.raises(DslError, match="no option `frozn`"):
        _load(tmp_path, _model(), options=", frozn=true")
    with pytest.raises(DslError, match="no weight `encoder`"):
        _load(tmp_path, _model(), options=', freeze=["encoder"]')
    (tmp_path / "t.dsl").write_text('model Net = dense("m.onnx")\n')
    with pytest.raises(DslError, match="takes an imported file"):
        dslc.load(tmp_path / "t.dsl")


def test_unsupported_opset(tmp_path):
    text = _error(tmp_path, _model(opset=9))
    assert "opset 9 is not supported" in text, text


def test_shape_error_inside_the_file_names_the_node(tmp_path):
    (tmp_path / "m.onnx").write_bytes(_model().SerializeToString())
    (tmp_path / "t.dsl").write_text('model Net = onnx("m.onnx")\n'
                                    'model M(x: f32[N, 5]) -> y { y = Net(x) }\n')
    with pytest.raises(DslError) as e:
        dslc.compile(dslc.load(tmp_path / "t.dsl"), "M")
    text = e.value.render()
    assert "must be f32[N, 4]" in text or "node `mm`" in text, text


def test_cli_check_reports_one_error(tmp_path, capsys):
    data = _model().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data[:30])
    (tmp_path / "t.dsl").write_text('model Net = onnx("m.onnx")\n')
    from dslc.cli import main
    assert main(["check", str(tmp_path / "t.dsl")]) != 0
    err = capsys.readouterr().err
    assert "error:" in err and "m.onnx" in err and "Traceback" not in err, err


def test_signature_symbols_and_names(tmp_path):
    """dim_param names are symbolic dims (made identifiers), unknown dims fresh symbols; names of
    inputs, outputs and weights made identifiers, unique."""
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch size", 4])
    x.type.tensor_type.shape.dim.add()  # an axis of unknown size
    nodes = [helper.make_node("Relu", ["input.1"], ["out:0"]), helper.make_node("Identity", ["out:0"], ["y"])]
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "encoder.layer.0.dense.weight")
    prog = _load(tmp_path, _model(nodes=nodes, inits=[w], inputs=[x],
                                  outputs=[helper.make_tensor_value_info("out:0", TensorProto.FLOAT, None),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))
    d = prog.decls["Net"]
    assert [(p.name, p.type.dims) for p in d.params] == [("input_1", ("batch_size", 4, "input_1_2"))]
    assert d.outputs == ("out_0", "y")
    assert d.source.weights == {"encoder.layer.0.dense.weight": "encoder.layer_0.dense.weight"}


def test_freeze_by_prefix(tmp_path):
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
             numpy_helper.from_array(np.ones(3, np.float32), "head.b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "head.b"], ["y"])]
    (tmp_path / "m.onnx").write_bytes(_model(nodes=nodes, inits=inits).SerializeToString())
    (tmp_path / "t.dsl").write_text('model Net = onnx("m.onnx", freeze=["head"])\n'
                                    'step s(x: f32[N, 4]) updates Net using sgd(lr=0.1) { minimize mean(Net(x)) }\n')
    text = dslc.summary(dslc.load(tmp_path / "t.dsl"), "s")
    assert "Non-trainable params: 3" in text and "Trainable params: 12" in text, text
    grads = dslc.compile(dslc.load(tmp_path / "t.dsl"), "s", emit="gradients")
    assert [o.name for o in grads.graph.output] == ["loss", "grad.Net.w"]


def test_cli_summary_of_a_damaged_file(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    from dslc.cli import main
    assert main(["summary", str(tmp_path / "bad.onnx")]) != 0
    err = capsys.readouterr().err
    assert "bad.onnx" in err and "Traceback" not in err, err


def _rich_model() -> onnx.ModelProto:
    """A few nodes with attributes and shape arithmetic: more for a mutation to break."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["nn"]),
             helper.make_node("Concat", ["nn", "minus1"], ["t"], axis=0),
             helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, alpha=0.5),
             helper.make_node("Reshape", ["g", "t"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    inits = [numpy_helper.from_array(np.ones((3, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones(3, np.float32), "b"),
             numpy_helper.from_array(np.asarray(0, np.int64), "zero"),
             numpy_helper.from_array(np.asarray([0], np.int64), "ax"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "minus1")]
    return _model(nodes=nodes, inits=inits)


def test_mutated_files_are_errors_or_models(tmp_path):
    """Random byte flips, truncations and splices of a valid file: each imports and compiles, or is
    one DslError; never another exception."""
    data = _rich_model().SerializeToString()
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "error": 0}
    for k in range(150):
        b = bytearray(data)
        kind = k % 3
        if kind == 0:
            for i in rng.integers(0, len(b), 3):
                b[i] = int(rng.integers(0, 256))
        elif kind == 1:
            b = b[: int(rng.integers(1, len(b)))]
        else:
            i, j = sorted(rng.integers(0, len(b), 2))
            b = b[:i] + b[j:] + b[i:j]
        folder = tmp_path / f"m{k}"
        folder.mkdir()
        try:
            prog = _load(folder, bytes(b))
            dslc.compile(prog, "Net")
            outcomes["ok"] += 1
        except DslError as e:
            assert "Traceback" not in e.render()
            outcomes["error"] += 1
    assert outcomes["error"] > 50, outcomes
