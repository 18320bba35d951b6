"""Emission for opset 17 and for a target runtime (dslc/passes/portable.py): the rewritten graphs pass
the full checker at their opset, and onnxruntime and onnx.reference give the default emission's numbers
on them, each compared with itself (random draws included: the uint32 hash in int64 draws the same bits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
from dslc.cli import main
from dslc.diagnostics import DslError
from dslc.emit.onnx_emit import check
from dslc.runtime import run_model
from feeds import random_feeds
from test_spec_gradients import _check_directional_derivative

SPECS = Path(__file__).parent.parent / "specs"
# (spec, target, emit): what each one exercises at opset 17
GRAPHS = [
    ("convnet.dsl", "ConvNet", None),                      # Conv, max-pool, Flatten, ReduceMean axes
    ("convnet.dsl", "train_convnet", "train"),             # dropout's random mask, Adam, OneHot
    ("convnet.dsl", "train_convnet", "gradients"),         # the backward graph
    ("vae.dsl", "VAE", None),                              # random_normal: Box-Muller over the hash
    ("acgan.dsl", "Generator", None),                      # ConvTranspose with uneven pads
    ("visualize_filters.dsl", "ascend", None),             # Gather's gradient: ScatterND add
    ("charlm.dsl", "CharTransformer", None),               # Gelu (opset 20)
]
TOL = 1e-5


def _ort(model, feeds):
    return run_model(model, feeds, device="cpu")


def _ref(model, feeds):
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))


def _close(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = np.asarray(got[k])
        if w.dtype.kind in "iub":
            np.testing.assert_array_equal(g, w, err_msg=k)
        else:
            scale = max(float(np.max(np.abs(w))), 1e-6) if w.size else 1.0
            assert float(np.max(np.abs(g - w), initial=0)) <= TOL * scale, k


@pytest.mark.parametrize("spec,target,emit", GRAPHS, ids=[f"{t}-{e}" for _, t, e in GRAPHS])
def test_opset17_checks_and_agrees_with_the_default(spec, target, emit):
    default = dslc.compile(SPECS / spec, target, emit=emit)
    old = dslc.compile(SPECS / spec, target, emit=emit, opset=17)
    check(old)  # full checker and strict shape inference, at opset 17
    assert [o.version for o in old.opset_import] == [17]
    ops = {n.op_type for n in old.graph.node}
    assert not ops & {"BitwiseXor", "Size", "GreaterOrEqual", "LessOrEqual", "OneHot", "Gelu"}
    assert all(t.data_type != onnx.TensorProto.UINT32 for t in old.graph.initializer)
    feeds = random_feeds(default, np.random.default_rng(0))
    # each runtime against itself on the default emission: the rewrite changes no number (a train step's
    # Adam update turns float round-off between two runtimes into larger differences, README "Portability")
    _close(_ort(old, feeds), _ort(default, feeds))
    _close(_ref(old, feeds), _ref(default, feeds))


@pytest.mark.parametrize("options", [{"opset": 17}, {"target_runtime": "openvino"}], ids=["opset17", "openvino"])
def test_random_draws_are_the_same_bits(options):
    """The hash in int64 (opset 17) or int32 (OpenVINO) draws the uint32 hash's very bits."""
    src = ("fn noise(x: f32[N, 3]) {\n  u = random_uniform([4, 5], 0, 1)\n  z = random_normal([4, 5])\n"
           "  return u, z\n}\n")
    prog = dslc.loads(src)
    new, other = dslc.compile(prog, "noise"), dslc.compile(prog, "noise", **options)
    check(other)
    ops = {n.op_type for n in other.graph.node}
    assert not ({"BitShift", "BitwiseXor"} if "opset" in options else {"BitShift"}) & ops
    feeds = {"x": np.zeros((2, 3), np.float32), "seed": np.asarray(7, np.int64)}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in new.graph.input}}
    want = _ort(new, feeds)
    assert len(np.unique(want["u"])) == 20
    for run in (_ort, _ref):  # uniforms are k * 2^-24: the same bits give the same floats everywhere
        np.testing.assert_array_equal(run(other, feeds)["u"], want["u"])
        np.testing.assert_array_equal(run(other, feeds)["z"], run(new, feeds)["z"])


@pytest.mark.parametrize("spec,target,emit", [("convnet.dsl", "train_convnet", "gradients"), ("vae.dsl", "VAE", None)])
def test_target_runtime_openvino_gives_the_same_numbers(spec, target, emit):
    default = dslc.compile(SPECS / spec, target, emit=emit)
    model = dslc.compile(SPECS / spec, target, emit=emit, target_runtime="openvino")
    check(model)
    ops = {n.op_type for n in model.graph.node}
    assert "BitShift" not in ops and all(t.data_type != onnx.TensorProto.UINT32 for t in model.graph.initializer)
    feeds = random_feeds(default, np.random.default_rng(0))
    _close(_ort(model, feeds), _ort(default, feeds))
    _close(_ref(model, feeds), _ref(default, feeds))


def test_opset17_gradients_match_finite_differences():
    model = dslc.compile(SPECS / "convnet.dsl", "train_convnet", emit="gradients", random="input", float64=True,
                         wrt_inputs=True, opset=17)
    check(model)
    _check_directional_derivative(model, np.random.default_rng(1))


def test_target_runtime_tract_unrolls_the_loop():
    default = dslc.compile(SPECS / "visualize_filters.dsl", "visualize")
    unrolled = dslc.compile(SPECS / "visualize_filters.dsl", "visualize", target_runtime="tract")
    check(unrolled)
    assert "Loop" in {n.op_type for n in default.graph.node}
    assert "Loop" not in {n.op_type for n in unrolled.graph.node}
    made = {o: n.op_type for n in unrolled.graph.node for o in n.output}
    assert all(made.get(n.input[0]) == "Constant" for n in unrolled.graph.node if n.op_type == "ConstantOfShape")
    feeds = {"filter": np.asarray(3, np.int64)}
    _close(_ort(unrolled, feeds), _ort(default, feeds))


def test_target_runtime_onnx2torch_hoists_constant_kernels():
    model = dslc.compile(SPECS / "convnet.dsl", "train_convnet", emit="gradients", target_runtime="onnx2torch")
    check(model)
    assert [o.version for o in model.opset_import] == [17]
    inits = {t.name for t in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    kernels = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert kernels <= inits | {i.name for i in model.graph.input} and not kernels & consts


def test_target_runtime_onnx2torch_writes_layer_norm_out():
    """onnx2torch 1.5 takes a three-output LayerNormalization's Y for its first row: its files use
    layer_norm's written-out formulation, the same numbers; forcing the op still gives it."""
    feeds = {"chars": np.random.default_rng(0).integers(0, 100, (2, 64))}
    default = dslc.compile(SPECS / "charlm.dsl", "CharTransformer")
    model = dslc.compile(SPECS / "charlm.dsl", "CharTransformer", target_runtime="onnx2torch")
    check(model)
    assert "LayerNormalization" in {n.op_type for n in default.graph.node}
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    _close(_ort(model, feeds), _ort(default, feeds))
    forced = dslc.compile(SPECS / "charlm.dsl", "CharTransformer", target_runtime="onnx2torch",
                          formulations={"layer_norm": "onnx"})
    assert "LayerNormalization" in {n.op_type for n in forced.graph.node}


def test_bad_emission_options_are_errors(tmp_path, capsys):
    with pytest.raises(DslError, match="opset 17 or 21"):
        dslc.compile(SPECS / "convnet.dsl", "ConvNet", opset=18)
    with pytest.raises(DslError, match="unknown target runtime `torch`"):
        dslc.compile(SPECS / "convnet.dsl", "ConvNet", target_runtime="torch")
    with pytest.raises(DslError, match="--target-runtime openvino emits opset 21"):
        dslc.compile(SPECS / "convnet.dsl", "ConvNet", target_runtime="openvino", opset=17)
    with pytest.raises(SystemExit):
        main(["compile", str(SPECS / "convnet.dsl"), "--opset", "16", "-o", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_writes_opset_17(tmp_path):
    assert main(["compile", str(SPECS / "convnet.dsl"), "--target", "ConvNet", "--opset", "17", "--verify",
                 "-o", str(tmp_path)]) == 0
    assert [o.version for o in onnx.load(str(tmp_path / "ConvNet.onnx")).opset_import] == [17]
    assert main(["compile", str(SPECS / "convnet.dsl"), "--target", "ConvNet", "--target-runtime", "onnx2torch",
                 "-o", str(tmp_path)]) == 0
    assert [o.version for o in onnx.load(str(tmp_path / "ConvNet.onnx")).opset_import] == [17]


def test_default_emission_makes_computed_zeros_with_expand():
    """tract reads ConstantOfShape's shape at load time: every emission writes zeros of a run-time shape
    (the generator step's random_uniform([n, 100])) as an Expand of a scalar, with the same numbers."""
    model = dslc.compile(SPECS / "acgan.dsl", "train_generator", emit="gradients", random="input")
    made = {o: n.op_type for n in model.graph.node for o in n.output}
    consts = {t.name for t in model.graph.initializer}
    assert all(made.get(n.input[0]) == "Constant" or n.input[0] in consts
               for n in model.graph.node if n.op_type == "ConstantOfShape")
    assert "Expand" in made.values()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_opset17_writes_gelu_out(tmp_path, approximate):
    """Gelu is opset 20: an imported one (either form) becomes Erf or Tanh ops at opset 17, same numbers."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)]), tmp_path / "m.onnx")
    (tmp_path / "t.dsl").write_text('model Net = onnx("m.onnx")\n')
    default = dslc.compile(tmp_path / "t.dsl", "Net")
    old = dslc.compile(tmp_path / "t.dsl", "Net", opset=17)
    check(old)
    assert "Gelu" in {n.op_type for n in default.graph.node} and "Gelu" not in {n.op_type for n in old.graph.node}
    feeds = {"x": np.linspace(-4, 4, 18, dtype=np.float32).reshape(3, 6)}
    _close(_ort(old, feeds), _ort(default, feeds))
