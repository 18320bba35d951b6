"""The models of specs/: parameter counts as in the references, every target compiled, checked and
run in two runtimes (onnxruntime and onnx's reference evaluator), and forward numbers checked
against independent numpy code."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_one_hot import OneHot as _RefOneHot

import dslc
from feeds import graphs, random_feeds, random_kind
from dslc.emit.onnx_emit import check
from dslc.runtime import run_model

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_FILES = sorted(SPECS.glob("*.dsl"))
N = 2  # the batch size every symbolic dim gets in these tests

# Targets that take a gradient themselves (grad() in the language); they compile once
# dslc.autodiff provides `grad`.
GRAD_TARGETS = {"ascend", "visualize"}


def _all_targets() -> list[tuple[str, str]]:
    return [(p.name, t) for p in SPEC_FILES for t in dslc.load(p).targets()]


ALL_TARGETS = _all_targets()


def _need_grad(target: str) -> None:
    if target in GRAD_TARGETS:
        try:
            from dslc.autodiff import grad  # noqa: F401
        except ImportError:
            pytest.skip("dslc.autodiff.grad is not available yet")


# ------------------------------------------------------------------ parameter counts
def _counts(file: str, target: str) -> tuple[int, int]:
    params = dslc.lower(SPECS / file, target).graph.params
    total = sum(int(np.prod(p.value.shape)) for p in params)
    trainable = sum(int(np.prod(p.value.shape)) for p in params if p.trainable)
    return total, trainable


# (file, target, total, trainable): tfjs countParams() in refs/*.md, and the LANGUAGE.md ConvNet.
PARAM_COUNTS = [
    ("convnet.dsl", "ConvNet", 421_642, 421_642),
    ("convnet.dsl", "MnistConvNet", 33_194, 33_194),
    ("convnet.dsl", "MnistNodeConvNet", 594_922, 594_922),
    ("vae.dsl", "Encoder", 403_972, 403_972),
    ("vae.dsl", "Decoder", 403_728, 403_728),
    ("vae.dsl", "VAE", 807_700, 807_700),
    ("acgan.dsl", "Generator", 2_657_897, 2_657_321),
    ("acgan.dsl", "Discriminator", 525_835, 525_835),
    ("chain_rule.dsl", "Scale", 1, 1),
    ("chain_rule.dsl", "Affine", 2, 2),
]


@pytest.mark.parametrize("file,target,total,trainable", PARAM_COUNTS, ids=[t[1] for t in PARAM_COUNTS])
def test_param_counts(file, target, total, trainable):
    assert _counts(file, target) == (total, trainable)


@pytest.mark.parametrize("file,target,total,trainable", PARAM_COUNTS, ids=[t[1] for t in PARAM_COUNTS])
def test_summary_totals(file, target, total, trainable):
    text = dslc.summary(SPECS / file, target)
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {trainable:,}" in text
    assert f"Non-trainable params: {total - trainable:,}" in text


def test_generator_non_trainable_are_batch_norm_statistics():
    params = dslc.lower(SPECS / "acgan.dsl", "Generator").graph.params
    frozen = sorted(p.value.name for p in params if not p.trainable)
    assert frozen == [f"Generator.{bn}.{s}" for bn in ("bn1", "bn2") for s in ("moving_mean", "moving_variance")]


def test_weight_names_follow_bindings():
    names = {p.value.name for p in dslc.lower(SPECS / "acgan.dsl", "Discriminator").graph.params}
    assert {"Discriminator.conv1.weight", "Discriminator.conv4.bias", "Discriminator.realness.weight",
            "Discriminator.class_probs.bias"} <= names
    names = {p.value.name for p in dslc.lower(SPECS / "convnet.dsl", "ConvNet").graph.params}
    assert names == {f"ConvNet.{b}.{w}" for b in ("conv1", "conv2", "hidden", "logits") for w in ("weight", "bias")}


def test_steps_update_the_named_models_only():
    stats = {f"Generator.{bn}.{s}" for bn in ("bn1", "bn2") for s in ("moving_mean.next", "moving_variance.next")}
    # train_discriminator: the Generator runs in inference mode (no batch-norm statistics update).
    d = {o.name for o in dslc.compile(SPECS / "acgan.dsl", "train_discriminator", random="input").graph.output}
    assert "loss" in d and not any(o.startswith("Generator") for o in d)
    # train_generator: the Generator's batch norms run on batch statistics and update their running ones.
    g = {o.name for o in dslc.compile(SPECS / "acgan.dsl", "train_generator", random="input").graph.output}
    assert {"loss"} | stats <= g
    low = dslc.lower(SPECS / "acgan.dsl", "train_generator")
    assert low.updates == ("Generator",) and low.optimizer.options["beta1"] == 0.5


# ------------------------------------------------------------------ every target, two runtimes
def _shorten_loops(model: onnx.ModelProto, trips: int) -> onnx.ModelProto:
    """A copy whose Loops run `trips` times: the reference evaluator is slow on long loops."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type != "Loop":
            continue
        name = n.input[0]
        if name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(np.asarray(trips, np.int64), name))
        else:
            const = producers[name]
            assert const.op_type == "Constant", const.op_type
            del const.attribute[:]
            const.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.asarray(trips, np.int64))))
    return model


class OneHot(_RefOneHot):
    """The reference OneHot, taking `depth` as a rank-1 tensor of one element too (which the ONNX spec
    allows and dslc emits): onnx 1.23's np.arange(depth) rejects that under numpy 2."""
    op_domain = ""

    def _run(self, indices, depth, values, axis=None):
        return super()._run(indices, np.asarray(depth).reshape(()), values, axis=axis)


def _reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=[OneHot])


def _compile(file: str, target: str, **options) -> onnx.ModelProto:
    _need_grad(target)
    return dslc.compile(SPECS / file, target, **options)


@pytest.mark.parametrize("file,target", ALL_TARGETS, ids=[f"{f}:{t}" for f, t in ALL_TARGETS])
def test_target_runs_alike_in_two_runtimes(file, target):
    model = _compile(file, target, random="input")
    check(model)
    has_loop = any(n.op_type == "Loop" for g in graphs(model.graph) for n in g.node)
    rng = np.random.default_rng(0)
    feeds = random_feeds(model, rng)
    if has_loop:
        # The full loop in onnxruntime only; both runtimes compare on a 3-trip version.
        full = run_model(model, feeds, device="cpu")
        assert all(np.isfinite(v).all() for v in full.values())
        model = _shorten_loops(model, 3)
        check(model)
    got = run_model(model, feeds, device="cpu")
    ref_eval = _reference(model)
    want = dict(zip(ref_eval.output_names, ref_eval.run(None, feeds)))
    assert list(got) == [o.name for o in model.graph.output]
    for name, value in got.items():
        assert value.shape == want[name].shape, name
        assert np.isfinite(value).all(), name
        np.testing.assert_allclose(value, want[name], rtol=1e-4, atol=1e-5, err_msg=f"{target}: {name}")


@pytest.mark.parametrize("file,target", ALL_TARGETS, ids=[f"{f}:{t}" for f, t in ALL_TARGETS])
def test_target_with_random_ops(file, target):
    """The default build draws its noise in the graph (RandomNormalLike, RandomUniform...)."""
    model = _compile(file, target)
    check(model)
    assert not any(i.name.startswith("random.") for i in model.graph.input)
    out = run_model(model, random_feeds(model, np.random.default_rng(1)), device="cpu")
    assert all(np.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("file,target", ALL_TARGETS, ids=[f"{f}:{t}" for f, t in ALL_TARGETS])
def test_standard_ops_and_source_locations(file, target):
    model = _compile(file, target, random="input")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21)]
    where = re.compile(r"^(?P<file>.+\.dsl):(?P<line>\d+):(?P<col>\d+)$")
    for g in graphs(model.graph):
        for n in g.node:
            assert n.domain in ("", "ai.onnx"), f"{n.op_type} in domain {n.domain}"
            m = where.match(n.doc_string)
            assert m, f"{n.op_type} {n.name}: doc_string {n.doc_string!r}"
            assert not Path(m["file"]).is_absolute(), n.doc_string  # named relative to the spec's folder
            lines = (SPECS / m["file"]).read_text().splitlines()
            assert 1 <= int(m["line"]) <= len(lines), n.doc_string
            assert 1 <= int(m["col"]) <= len(lines[int(m["line"]) - 1]), n.doc_string


def test_random_draws_are_inputs_by_kind():
    enc = dslc.compile(SPECS / "vae.dsl", "Encoder", random="input")
    assert [i.name for i in enc.graph.input] == ["x", "random.0"]
    assert random_kind(enc, "random.0") == "normal"
    ops = {n.op_type for n in dslc.compile(SPECS / "vae.dsl", "Encoder").graph.node}
    assert {"BitwiseXor", "Cos"} <= ops and not any(op.startswith("Random") for op in ops)  # counter-based


# ------------------------------------------------------------------ numbers vs. numpy
def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_decoder_matches_numpy():
    model = dslc.compile(SPECS / "vae.dsl", "Decoder")
    w = _weights(model)
    z = np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32)
    h = np.maximum(z @ w["Decoder.h.weight"] + w["Decoder.h.bias"], 0)
    want = _sigmoid(h @ w["Decoder.x_hat.weight"] + w["Decoder.x_hat.bias"])
    got = run_model(model, {"z": z}, device="cpu")["x_hat"]
    assert got.shape == (5, 784)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_vae_loss_matches_numpy():
    """train_vae's loss: the encoder with fed noise, the decoder, recon * 784 + KL, all in numpy."""
    model = dslc.compile(SPECS / "vae.dsl", "train_vae", random="input")
    w = _weights(model)
    rng = np.random.default_rng(3)
    x = rng.random((4, 784)).astype(np.float32)
    eps = rng.standard_normal((4, 2)).astype(np.float32)
    h = np.maximum(x @ w["Encoder.h.weight"] + w["Encoder.h.bias"], 0)
    z_mean = h @ w["Encoder.z_mean.weight"] + w["Encoder.z_mean.bias"]
    z_log_var = h @ w["Encoder.z_log_var.weight"] + w["Encoder.z_log_var.bias"]
    z = z_mean + np.exp(0.5 * z_log_var) * eps
    hd = np.maximum(z @ w["Decoder.h.weight"] + w["Decoder.h.bias"], 0)
    x_hat = _sigmoid(hd @ w["Decoder.x_hat.weight"] + w["Decoder.x_hat.bias"])
    recon = 784 * np.mean((x - x_hat) ** 2)
    kl = np.mean(-0.5 * np.sum(1 + z_log_var - z_mean ** 2 - np.exp(z_log_var), axis=1))
    got = run_model(model, {"x": x, "random.0": eps}, device="cpu")["loss"]
    np.testing.assert_allclose(got, recon + kl, rtol=1e-5)


def test_chain_rule_losses():
    """At v = 0, x = 2, y = 5 the loss is (0 - 5)^2 = 25; Affine at k = b = 0 averages over the batch."""
    scale = run_model(dslc.compile(SPECS / "chain_rule.dsl", "fit_scale"),
                      {"x": np.array([[2.0]], np.float32), "y": np.array([[5.0]], np.float32)}, device="cpu")
    assert scale["loss"] == pytest.approx(25.0)
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    y = np.array([[1.0], [3.0], [5.0]], np.float32)
    affine = run_model(dslc.compile(SPECS / "chain_rule.dsl", "fit_affine"), {"x": x, "y": y}, device="cpu")
    assert affine["loss"] == pytest.approx(np.mean(y ** 2))
    model = dslc.compile(SPECS / "chain_rule.dsl", "Affine")
    got = run_model(model, {"x": x}, device="cpu", weights={"Affine.y_pred.weight": np.array([[2.0]], np.float32),
                                                            "Affine.y_pred.bias": np.array([-1.0], np.float32)})
    np.testing.assert_allclose(got["y_pred"], 2 * x - 1)


def _conv2d(x, w, b, stride=1, pad=0):
    """Direct NCHW convolution (cross-correlation, as ONNX Conv) in numpy."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, hgt, wid = x.shape
    f, _, k, _ = w.shape
    oh, ow = (hgt - k) // stride + 1, (wid - k) // stride + 1
    out = np.zeros((n, f, oh, ow), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def _max_pool2(x):
    n, c, hgt, wid = x.shape
    h2, w2 = hgt // 2, wid // 2
    return x[:, :, :2 * h2, :2 * w2].reshape(n, c, h2, 2, w2, 2).max(axis=(3, 5))


def test_mnist_convnet_matches_numpy():
    model = dslc.compile(SPECS / "convnet.dsl", "MnistConvNet")
    w = _weights(model)
    x = np.random.default_rng(4).random((3, 1, 28, 28)).astype(np.float32)
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = _max_pool2(relu(_conv2d(x, w["MnistConvNet.conv1.weight"], w["MnistConvNet.conv1.bias"])))
    h = _max_pool2(relu(_conv2d(h, w["MnistConvNet.conv2.weight"], w["MnistConvNet.conv2.bias"])))
    h = relu(_conv2d(h, w["MnistConvNet.conv3.weight"], w["MnistConvNet.conv3.bias"])).reshape(3, -1)
    h = relu(h @ w["MnistConvNet.hidden.weight"] + w["MnistConvNet.hidden.bias"])
    logits = h @ w["MnistConvNet.probs.weight"] + w["MnistConvNet.probs.bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    got = run_model(model, {"image": x}, device="cpu")["probs"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ gradient ascent in input space
PROBE = '''
import "convnet.dsl"
fn input_gradient(image: f32[1, 1, 28, 28], filter: i64) {
    return grad(mean(ConvNet(image).conv2[:, filter]), image)
}
'''


def _filter_objective(w: dict[str, np.ndarray], image: np.ndarray, f: int) -> float:
    """mean(ConvNet(image).conv2[:, f]) in float64 numpy."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = _max_pool2(relu(_conv2d(image.astype(np.float64), w["ConvNet.conv1.weight"], w["ConvNet.conv1.bias"], pad=1)))
    act = relu(_conv2d(h, w["ConvNet.conv2.weight"], w["ConvNet.conv2.bias"], pad=1))
    return float(act[:, f].mean())


def test_visualize_filters_ascends():
    _need_grad("ascend")
    rng = np.random.default_rng(5)
    image = rng.uniform(0.4, 0.6, (1, 1, 28, 28)).astype(np.float32)
    f = np.asarray(1, np.int64)  # a filter that is alive on gray noise with the seed-0 weights

    # The gradient w.r.t. the input, against central differences of the numpy objective.
    probe = dslc.compile(dslc.loads(PROBE, str(SPECS / "_probe.dsl")), "input_gradient")
    check(probe)
    w = {k: v.astype(np.float64) for k, v in _weights(probe).items()}
    g = run_model(probe, {"image": image, "filter": f}, device="cpu")["output"]
    assert g.shape == image.shape and np.abs(g).max() > 0
    step = 1e-6
    for _ in range(3):
        d = rng.standard_normal(image.shape)
        fd = (_filter_objective(w, image + step * d, 1) - _filter_objective(w, image - step * d, 1)) / (2 * step)
        assert float(np.sum(g * d)) == pytest.approx(fd, rel=1e-3, abs=1e-7)

    # One ascent step: the RMS-normalized gradient added to the image, clipped to [0, 1].
    ascend = dslc.compile(SPECS / "visualize_filters.dsl", "ascend")
    out = run_model(ascend, {"image": image, "filter": f}, device="cpu")["output"]
    want = np.clip(image + g / (np.sqrt(np.mean(g ** 2)) + 1e-7), 0, 1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)

    # The whole search (an ONNX Loop of 80 steps) raises the filter's mean activation.
    vis = dslc.compile(SPECS / "visualize_filters.dsl", "visualize", random="input")
    u = rng.random((1, 1, 28, 28)).astype(np.float32)
    final = run_model(vis, {"filter": f, "random.0": u}, device="cpu")["image"]
    assert final.shape == (1, 1, 28, 28) and final.min() >= 0 and final.max() <= 1
    assert _filter_objective(w, final, 1) > 2 * _filter_objective(w, 0.4 + 0.2 * u, 1)
