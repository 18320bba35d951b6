"""A CI-sized slice of bench/onnx_zoo.py: torch.nn models (an MLP with LayerNorm and GELU, a ResNet-like
CNN with BatchNorm, an LSTM, a U-Net with nn.Upsample) exported by both torch exporters, imported with
`model Backbone = onnx("...")`, the gradient of every weight against PyTorch autograd on the same
weights and batch, and one train step in onnxruntime and onnx.reference. Skipped, saying why, without
torch (or, for the dynamo exporter, onnxscript). The whole zoo (Hugging Face models too):
`python bench/onnx_zoo.py` (bench/README.md, "ONNX zoo")."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import zoo_models as Z  # noqa: E402

MODELS = ["mlp", "cnn", "lstm", "unet"]
CASES = [(m, e) for m in MODELS for e in Z.EXPORTERS]
GRAD_TOL = 1e-4  # float32: measured 3e-7 to 2e-6 (bench/README.md)


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{e}" for m, e in CASES])
def case(request, tmp_path_factory):
    name, exporter = request.param
    why = Z.missing(name, exporter)
    if why:
        pytest.skip(f"{name} ({exporter}): {why}")
    import onnx_zoo as O
    module, x = Z.build(name), Z.batch(name, O.BATCH)
    if exporter == "dynamo":  # its optimizer folds each BatchNorm into its Conv: the twin does the same
        module = Z.fuse_conv_bn(module, x)
    folder = tmp_path_factory.mktemp(f"{name}-{exporter}")
    path = Z.export(module, x, exporter, folder / f"{name}.onnx")
    return O, module, x, path, O.write_dsl(path)


def test_gradients_match_torch_autograd(case):
    import onnx
    import torch
    from onnx import numpy_helper
    O, module, x, path, dsl = case
    loss, grads = O.dslc_grads(dsl, x.numpy(), float64=False)
    t_loss, t_grads = O.torch_loss_and_grads(module, x, torch.float32)
    assert loss == pytest.approx(t_loss, rel=1e-5)
    pmap = O.ParamMap(module)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    located = {k: idx for k, a in inits.items() if a.dtype.kind == "f" and (idx := pmap.locate(a)) is not None}
    worst, where, compared = O.compare(pmap.gather(grads, located), t_grads)
    assert compared == len(t_grads)  # every parameter of the module is a weight of the file
    assert worst < GRAD_TOL, where


def test_one_train_step_agrees_between_runtimes(case, tmp_path):
    import portability as P
    import runtimes as R
    O, module, x, path, dsl = case
    step, init = P.save_step_files(tmp_path, dsl, "zoo_step")
    ref = P.train_steps(R.OnnxRuntime(), step, init, {"x": x.numpy()}, 2)
    got = P.train_steps(R.Reference(), step, init, {"x": x.numpy()}, 2)
    assert not isinstance(ref, R.Failure) and not isinstance(got, R.Failure), (ref, got)
    assert float(ref[1]["loss"]) < float(ref[0]["loss"])  # AdamW on mean(y^2): the loss falls
    for g, r in zip(got, ref):
        err = P.rel_error(g, r)
        assert not isinstance(err, str) and err < 1e-4, err
