"""The one layer-norm write-out (ir/patterns.layer_norm_ops), through the importer: an imported
LayerNormalization's three outputs (Y, Mean, InvStdDev), over a non-last axis with no bias, against
torch float64 autograd (values and gradients of all three) and against onnxruntime's own float32
kernel run on the file itself. Expected values never come from dslc."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import dslc  # noqa: E402

EPS = 2.0 ** -10  # a float32 attribute held exactly


def _file(path, dtype, scale, bias=None):
    """One LayerNormalization over axes [1, 3) of x [2, 3, 4], all three outputs."""
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    inits = [numpy_helper.from_array(scale.astype(dtype), "s")]
    inits += [numpy_helper.from_array(bias.astype(dtype), "b")] if bias is not None else []
    node = helper.make_node("LayerNormalization", ["x", "s"] + (["b"] if bias is not None else []),
                            ["y", "mean", "inv"], axis=1, epsilon=EPS)
    outs = [helper.make_empty_tensor_value_info(n) for n in ("y", "mean", "inv")]
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", elem, [2, 3, 4])], outs, inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())


def _session(data: bytes):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("with_bias", [True, False])
def test_imported_layer_norm_outputs_and_gradients_match_torch(tmp_path, with_bias):
    rng = np.random.default_rng(3)
    x, scale = rng.uniform(-1, 1, (2, 3, 4)) * 3 + 0.5, rng.uniform(0.5, 1.5, (3, 4))
    bias = rng.uniform(-1, 1, (3, 4)) if with_bias else None
    cots = [rng.standard_normal(s) for s in ((2, 3, 4), (2, 1, 1), (2, 1, 1))]
    _file(tmp_path / "ln.onnx", np.float64, scale, bias)
    wrt = ["x", "Net.s"] + (["Net.b"] if with_bias else [])
    gs = ", ".join(f"g{k}" for k in range(len(wrt)))
    (tmp_path / "p.dsl").write_text(
        'model Net = onnx("ln.onnx")\n'
        'fn probe(x: f64[2, 3, 4], cy: f64[2, 3, 4], cm: f64[2, 1, 1], ci: f64[2, 1, 1]) {\n'
        '    y, m, inv = Net(x)\n'
        f'    {gs} = grad(sum(y * cy) + sum(m * cm) + sum(inv * ci), [{", ".join(wrt)}])\n'
        f'    return y, m, inv, {gs}\n}}\n')
    got = _session(dslc.compile(dslc.load(tmp_path / "p.dsl"), "probe").SerializeToString()).run(
        None, {"x": x, "cy": cots[0], "cm": cots[1], "ci": cots[2]})

    tx, ts = torch.tensor(x, requires_grad=True), torch.tensor(scale, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True) if with_bias else None
    mean = tx.mean((1, 2), keepdim=True)
    inv = 1 / torch.sqrt(((tx - mean) ** 2).mean((1, 2), keepdim=True) + EPS)
    y = (tx - mean) * inv * ts + (tb if with_bias else 0)
    loss = sum((v * torch.tensor(c)).sum() for v, c in zip((y, mean, inv), cots))
    want = [y, mean, inv] + list(torch.autograd.grad(loss, [tx, ts] + ([tb] if with_bias else [])))
    for label, g, e in zip(["y", "mean", "inv"] + wrt, got, want):
        np.testing.assert_allclose(g, e.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=label)


def test_imported_layer_norm_float32_matches_onnxruntime_kernel(tmp_path):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, 4)) * 2 + 10).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, (3, 4)), rng.uniform(-1, 1, (3, 4))
    _file(tmp_path / "ln.onnx", np.float32, scale, bias)
    (tmp_path / "p.dsl").write_text('model Net = onnx("ln.onnx")\n'
                                    'fn f(x: f32[2, 3, 4]) {\n    y, m, inv = Net(x)\n    return y, m, inv\n}\n')
    ours = _session(dslc.compile(dslc.load(tmp_path / "p.dsl"), "f").SerializeToString()).run(None, {"x": x})
    theirs = _session((tmp_path / "ln.onnx").read_bytes()).run(None, {"x": x})
    for label, a, b in zip(("y", "mean", "inv"), ours, theirs):
        assert a.shape == b.shape, label
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=label)
