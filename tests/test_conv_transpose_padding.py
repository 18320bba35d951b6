"""conv2d_transpose's explicit padding and output_padding (torch ConvTranspose2d's): output sizes
from torch's formula, both conv lowerings and onnx.reference agreeing with onnxruntime, and
gradients by float64 finite differences. (Values against torch: tests/test_conformance_torch.py.)"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dslc
from dslc.emit.onnx_emit import check
from gradcheck import reference

SETTINGS = [  # (arguments, kernel, strides, dilation, pads [top, left, bottom, right], output_padding)
    ("kernel=3, strides=2, padding=1, output_padding=1", 3, 2, 1, [1, 1, 1, 1], [1, 1]),
    ("kernel=[4, 3], strides=[3, 2], padding=[2, 1], output_padding=[2, 1]", [4, 3], [3, 2], 1, [2, 1, 2, 1], [2, 1]),
    ("kernel=3, strides=2, padding=[0, 1, 2, 1], output_padding=[1, 0]", 3, 2, 1, [0, 1, 2, 1], [1, 0]),
    ("kernel=3, strides=1, dilation=2, padding=1, output_padding=1", 3, 1, 2, [1, 1, 1, 1], [1, 1]),
    ("kernel=2, strides=1, dilation=3, output_padding=2", 2, 1, 3, [0, 0, 0, 0], [2, 2]),
]
IDS = [s[0] for s in SETTINGS]


def _torch_size(n, k, s, d, p0, p1, op):
    """torch's ConvTranspose2d output size, with the two sides' padding apart."""
    return (n - 1) * s - p0 - p1 + d * (k - 1) + op + 1


def _source(args, dtype="f32"):
    return f"""
model Up(x: {dtype}[2, 3, 5, 4]) -> y {{
    y = conv2d_transpose(x, 2, {args})
}}
fn loss(x: {dtype}[2, 3, 5, 4]) {{ return sum(Up(x).y ^ 2) }}
fn loss_grad(x: {dtype}[2, 3, 5, 4]) {{
    gx, gw, gb = grad(loss(x), [x, Up.y.weight, Up.y.bias])
    return gx, gw, gb
}}
"""


def _pair(v):
    return [v, v] if isinstance(v, int) else v


@pytest.mark.parametrize("args,kernel,strides,dilation,pads,out_pad", SETTINGS, ids=IDS)
def test_output_size_follows_torch(args, kernel, strides, dilation, pads, out_pad):
    model = dslc.compile(dslc.loads(_source(args), "up.dsl"), "Up")
    k, s, d = _pair(kernel), _pair(strides), _pair(dilation)
    want = [_torch_size(n, k[i], s[i], d[i], pads[i], pads[i + 2], out_pad[i]) for i, n in enumerate((5, 4))]
    got = [dim.dim_value for dim in model.graph.output[0].type.tensor_type.shape.dim]
    assert got == [2, 2, *want]


@pytest.mark.parametrize("args", IDS)
def test_lowerings_and_runtimes_agree(args):
    prog = dslc.loads(_source(args), "up.dsl")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    outs = []
    for lowering in ("conv", "im2col"):
        model = dslc.compile(prog, "loss_grad", conv_lowering=lowering)
        check(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"x": x}))
        outs.append(reference(model).run(None, {"x": x}))
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args", IDS)
def test_gradients_match_finite_differences(args):
    prog = dslc.loads(_source(args, "f64"), "up64.dsl")
    value = dslc.compile(prog, "loss")
    names = ["Up.y.weight", "Up.y.bias"]
    rng = np.random.default_rng(1)
    weights = {i.name: rng.uniform(-0.5, 0.5, numpy_helper.to_array(i).shape)
               for i in value.graph.initializer if i.name in names}
    x = rng.standard_normal((2, 3, 5, 4))
    grads = reference(dslc.compile(prog, "loss_grad")).run(None, {"x": x, **weights})
    feeds = {"x": x, **weights}
    dirs = {n: rng.standard_normal(v.shape) for n, v in feeds.items()}
    run = reference(value)
    eps = 1e-6

    def at(step):
        return float(run.run(None, {n: v + step * dirs[n] for n, v in feeds.items()})[0])
    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * dirs[n])) for g, n in zip(grads, ["x", *names], strict=True))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)
