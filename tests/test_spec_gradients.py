"""Gradients of every spec step: finite differences in float64 (weights and inputs), onnxruntime vs
onnx.reference, and the im2col lowering vs the Conv lowering.

Random ops are compiled as graph inputs (`random="input"`), so both sides of a finite difference
see the same noise and dropout mask.
"""
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import dslc
from feeds import random_feeds
from dslc.emit.onnx_emit import check
from dslc.runtime import run_model

SPECS = Path(__file__).parent.parent / "specs"
STEPS = [(f.name, t) for f in sorted(SPECS.glob("*.dsl")) for t in dslc.load(f).targets()
         if dslc.load(f).decls[t].__class__.__name__ == "Step"]
# Steps with tens of thousands of ReLU inputs: their finite differences step closer to the point,
# well inside the smooth region around it.
MANY_KINKS = {"train_discriminator", "train_generator", "train_mnist_node_convnet"}


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _ref(model, feeds):
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))


@pytest.mark.parametrize("spec,step", STEPS, ids=[s for _, s in STEPS])
def test_gradients_match_finite_differences(spec, step):
    """Weights and inputs, in float64 through onnx.reference (onnxruntime lacks float64 Conv kernels)."""
    model = dslc.compile(SPECS / spec, step, emit="gradients", random="input", float64=True, wrt_inputs=True)
    check(model)
    # (seed 1: at seed 0 the train_generator point lies within eps of a ReLU kink since weights are drawn in f32)
    _check_directional_derivative(model, np.random.default_rng(1), eps=1e-9 if step in MANY_KINKS else 1e-8)


def _check_directional_derivative(model, rng, eps=1e-8):
    feeds = random_feeds(model, rng)
    # A random point near the initial weights: zero biases put some ReLU inputs exactly on the kink.
    weights = {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in _weights(model).items()}
    grads = _ref(model, {**feeds, **weights})
    trainable = {k[len("grad."):] for k in grads if k.startswith("grad.")}
    point = {**feeds, **weights}
    direction = {k: rng.standard_normal(point[k].shape) for k in trainable}
    # eps is small: each ReLU or max-pool kink crossed within eps of the point spoils the difference
    plus = {k: v + eps * direction[k] if k in direction else v for k, v in point.items()}
    minus = {k: v - eps * direction[k] if k in direction else v for k, v in point.items()}
    numeric = (_ref(model, plus)["loss"] - _ref(model, minus)["loss"]) / (2 * eps)
    analytic = sum(float(np.sum(grads[f"grad.{k}"] * direction[k])) for k in trainable)
    assert analytic == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)
    float_inputs = [k for k in feeds if not k.startswith("random.") and feeds[k].dtype.kind == "f"]
    assert all(f"grad.{k}" in grads for k in float_inputs)  # the inputs were differentiated too


@pytest.mark.parametrize("spec,step", STEPS, ids=[s for _, s in STEPS])
def test_gradient_graphs_agree_between_runtimes(spec, step):
    model = dslc.compile(SPECS / spec, step, emit="gradients", random="input")
    check(model)
    assert all(n.domain == "" for n in model.graph.node)
    # (seed 4: at other points a float32 rounding difference flips one pre-activation across a
    # LeakyReLU kink in the discriminator, and that element's gradient legitimately differs; at
    # seed 3 train_generator's discriminator conv3 has one at -5e-9 vs +1e-8)
    feeds = random_feeds(model, np.random.default_rng(4))
    ort = run_model(model, feeds, device="cpu")
    ref = _ref(model, feeds)
    for k, v in ort.items():
        np.testing.assert_allclose(v, ref[k], rtol=2e-3, atol=2e-5, err_msg=k)


CONV_STEPS = [(s, t) for s, t in STEPS if s in ("convnet.dsl", "acgan.dsl")]


@pytest.mark.parametrize("spec,step", CONV_STEPS, ids=[s for _, s in CONV_STEPS])
def test_im2col_lowering_agrees_with_conv(spec, step):
    """Same numbers forward and backward, compared in float64 (in float32 the two summation orders
    differ by rounding that batch norm over a batch of 2 amplifies past any useful tolerance)."""
    options = dict(emit="gradients", random="input", float64=True)
    conv = dslc.compile(SPECS / spec, step, **options)
    im2col = dslc.compile(SPECS / spec, step, conv_lowering="im2col", **options)
    check(im2col)
    assert not {"Conv", "ConvTranspose"} & {n.op_type for n in im2col.graph.node}
    feeds = random_feeds(conv, np.random.default_rng(2))
    a, b = _ref(conv, feeds), _ref(im2col, feeds)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=k)
    f32 = dslc.compile(SPECS / spec, step, emit="gradients", random="input", conv_lowering="im2col")
    out = run_model(f32, random_feeds(f32, np.random.default_rng(2)), device="cpu")
    assert np.isfinite(out["loss"])  # onnxruntime runs the Conv-free graph too


def test_gradient_with_respect_to_an_input_of_an_intermediate_activation(tmp_path):
    """SEEDS 3: d mean(conv2[:, filter]) / d image, against finite differences."""
    src = tmp_path / "probe.dsl"
    src.write_text('import "convnet.dsl"\n'
                   "fn probe(image: f32[1, 1, 28, 28], filter: i64) {\n"
                   "    objective = mean(ConvNet(image).conv2[:, filter])\n"
                   "    return objective, grad(objective, image)\n}\n")
    model = dslc.compile(dslc.load(src, import_path=SPECS), "probe", float64=True)  # convnet.dsl: an import root
    check(model)
    rng = np.random.default_rng(4)
    image = rng.random((1, 1, 28, 28))
    # a filter that responds to this image at all (a dead ReLU has a zero gradient everywhere)
    f = next(np.array(k) for k in range(64) if _ref(model, {"image": image, "filter": np.array(k)})["objective"] > 0)
    value, g = _ref(model, {"image": image, "filter": f}).values()
    t = rng.standard_normal(image.shape)
    eps = 1e-6
    plus = _ref(model, {"image": image + eps * t, "filter": f})["objective"]
    minus = _ref(model, {"image": image - eps * t, "filter": f})["objective"]
    assert float(np.sum(g * t)) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-5)
    assert np.abs(g).max() > 0
