"""Issue 12, second part: reductions over several axes, group_norm, embedding's padding_idx and
bilinear upsample2d: numbers against numpy, gradients against float64 finite differences, and
onnxruntime agreeing with onnx.reference."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dslc
from dslc.emit.onnx_emit import check
from gradcheck import reference

RNG = np.random.default_rng(1212)


def run(prog, target, **feeds):
    model = dslc.compile(prog, target)
    check(model)
    return reference(model).run(None, feeds)


def weights_of(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if "." in i.name}


def directional_check(prog, value_target, grad_target, feeds, names=None, eps=1e-6):
    """<grad, direction> against central differences of the value, float64. `feeds` holds the
    inputs and any weights; `names` those differentiated, in the order the grad target returns."""
    names = names or list(feeds)
    grads = reference(dslc.compile(prog, grad_target)).run(None, feeds)
    dirs = {n: RNG.standard_normal(np.shape(feeds[n])) for n in names}
    ev = reference(dslc.compile(prog, value_target))

    def at(step):
        return float(ev.run(None, {**feeds, **{n: feeds[n] + step * dirs[n] for n in names}})[0])
    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * dirs[n])) for g, n in zip(grads, names, strict=True))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)


def ort_agrees(source, target, int_inputs=()):
    """In float32 (onnxruntime lacks float64 kernels for some ops)."""
    model = dslc.compile(dslc.loads(source.replace("f64", "f32"), "layers2_32.dsl"), target)
    check(model)
    init = {w.name for w in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        shape = [d.dim_value or 2 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = (RNG.integers(0, 5, shape) if i.name in int_inputs
                         else RNG.uniform(-1, 1, shape).astype(np.float32))
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = reference(model).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ reductions over several axes
REDUCE = """
fn reduce(x: f64[2, 3, 4]) {
    return sum(x, axis=[1, 2]), mean(x, axis=[0, -1], keepdims=true), max(x, axis=[1, 2]), min(x, axis=[0, 1]),
           sum(x, axis=[2, 0, 1])
}
fn reduce_loss(x: f64[2, 3, 4]) {
    return sum(sum(x, axis=[1, 2]) ** 2) + sum(mean(x, axis=[0, 2]) ** 3) + sum(max(x, axis=[1, 2]) * 3.0)
           + sum(min(x, axis=[0, -1]) ** 2)
}
fn reduce_grad(x: f64[2, 3, 4]) {
    return grad(reduce_loss(x), x)
}
"""


@pytest.fixture(scope="module")
def reduce_prog():
    return dslc.loads(REDUCE, "reduce.dsl")


def test_reductions_over_several_axes(reduce_prog):
    x = RNG.standard_normal((2, 3, 4))
    got = run(reduce_prog, "reduce", x=x)
    want = [x.sum((1, 2)), x.mean((0, 2), keepdims=True), x.max((1, 2)), x.min((0, 1)), x.sum()]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_reductions_over_several_axes_gradients(reduce_prog):
    x = RNG.standard_normal((2, 3, 4))  # distinct values: max/min have one winner per group
    directional_check(reduce_prog, "reduce_loss", "reduce_grad", {"x": x})


def test_reductions_over_several_axes_onnxruntime():
    ort_agrees(REDUCE, "reduce_grad")


# ------------------------------------------------------------------ group_norm
GROUP = """
model GN(x: f64[N, 6, 3, 4]) -> (two, one, each) {
    two  = group_norm(x, 2)
    one  = group_norm(x, 1, eps=1e-5)
    each = group_norm(x, 6)
}
model GN1(x: f64[N, 4, 5]) -> y {
    y = group_norm(conv1d(x, 4, kernel=3, padding=same), 2, eps=0.01) |> silu
}
fn gn_loss(x: f64[N, 4, 5]) {
    return sum(GN1(x) * GN1(x))
}
fn gn_grad(x: f64[N, 4, 5]) {
    y = GN1(x)
    gx, gw, gg, gb = grad(sum(y * y), [x, GN1.y.weight, GN1.y_2.gamma, GN1.y_2.beta])
    return gx, gw, gg, gb
}
"""


@pytest.fixture(scope="module")
def group_prog():
    return dslc.loads(GROUP, "group.dsl")


def group_norm_ref(x, groups, eps, gamma=None, beta=None):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    along = (c,) + (1,) * (x.ndim - 2)
    gamma = np.ones(c) if gamma is None else gamma
    beta = np.zeros(c) if beta is None else beta
    return y * gamma.reshape(along) + beta.reshape(along)


def test_group_norm_values(group_prog):
    x = RNG.standard_normal((2, 6, 3, 4)) * 3 + 1
    two, one, each = run(group_prog, "GN", x=x)
    np.testing.assert_allclose(two, group_norm_ref(x, 2, 1e-3), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(one, group_norm_ref(x, 1, 1e-5), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(each, group_norm_ref(x, 6, 1e-3), rtol=1e-9, atol=1e-12)
    weights = {n: w.shape for n, w in weights_of(dslc.compile(group_prog, "GN")).items()}
    assert weights == {f"GN.{b}.{w}": (6,) for b in ("two", "one", "each") for w in ("gamma", "beta")}


def test_group_norm_with_weights_matches_reference(group_prog):
    model = dslc.compile(group_prog, "GN1")
    feeds = {**weights_of(model), "x": RNG.standard_normal((3, 4, 5))}
    feeds["GN1.y_2.gamma"] = RNG.uniform(0.5, 1.5, 4)
    feeds["GN1.y_2.beta"] = RNG.uniform(-0.5, 0.5, 4)
    (got,) = reference(model).run(None, feeds)
    w, bias = feeds["GN1.y.weight"], feeds["GN1.y.bias"]
    xp = np.pad(feeds["x"], ((0, 0), (0, 0), (1, 1)))
    conv = np.stack([np.einsum("nck,fck->nf", xp[:, :, i:i + 3], w) for i in range(5)], -1) + bias[:, None]
    z = group_norm_ref(conv, 2, 0.01, feeds["GN1.y_2.gamma"], feeds["GN1.y_2.beta"])
    np.testing.assert_allclose(got, z / (1 + np.exp(-z)), rtol=1e-9, atol=1e-12)


def test_group_norm_gradients(group_prog):
    model = dslc.compile(group_prog, "gn_loss")
    feeds = {**weights_of(model), "x": RNG.standard_normal((3, 4, 5))}
    feeds["GN1.y_2.gamma"] = feeds["GN1.y_2.gamma"] + RNG.uniform(-0.3, 0.3, 4)  # not all ones
    directional_check(group_prog, "gn_loss", "gn_grad", feeds,
                      ["x", "GN1.y.weight", "GN1.y_2.gamma", "GN1.y_2.beta"])


def test_group_norm_onnxruntime():
    ort_agrees(GROUP, "gn_grad")


def test_group_norm_matches_torch(group_prog):
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 6, 3, 4))
    two, one, _ = run(group_prog, "GN", x=x)
    for groups, eps, got in ((2, 1e-3, two), (1, 1e-5, one)):
        want = torch.nn.GroupNorm(groups, 6, eps=eps).double()(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ embedding padding_idx
EMB = """
model Emb(x: i64[N, 5]) -> (y, last) {
    y    = embedding(x, 7, 3, padding_idx=2)
    last = embedding(x, 7, 4, padding_idx=-1, init=normal)
}
fn emb_loss(x: i64[N, 5], t: f32[N, 5, 3]) {
    y, last = Emb(x)
    return sum(y * t) + sum(y * y) + sum(last * last)
}
fn emb_grad(x: i64[N, 5], t: f32[N, 5, 3]) {
    y, last = Emb(x)
    gy, gl = grad(sum(y * t) + sum(y * y) + sum(last * last), [Emb.y.weight, Emb.last.weight])
    return gy, gl
}
"""


@pytest.fixture(scope="module")
def emb_prog():
    return dslc.loads(EMB, "emb.dsl")


def test_embedding_padding_row_starts_at_zero_and_looks_up_zeros(emb_prog):
    model = dslc.compile(emb_prog, "Emb")
    w = weights_of(model)
    assert not w["Emb.y.weight"][2].any() and w["Emb.y.weight"][[0, 1, 3, 4, 5, 6]].all()
    assert not w["Emb.last.weight"][6].any() and w["Emb.last.weight"][:6].all()
    x = np.array([[0, 2, 6, 2, 1], [3, 4, 5, 6, 2]])
    feeds = {**w, "x": x}
    feeds["Emb.y.weight"] = RNG.standard_normal((7, 3)).astype(np.float32)  # even if the row moved
    y, last = reference(model).run(None, feeds)
    want = feeds["Emb.y.weight"][x] * (x != 2)[..., None]
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(last, w["Emb.last.weight"][x])


def test_embedding_padding_row_gets_no_gradient(emb_prog):
    """The loss is quadratic in the tables, so central differences are exact up to float32
    rounding (the tables are float32)."""
    model = dslc.compile(emb_prog, "emb_loss")
    x = np.array([[0, 2, 6, 2, 1], [3, 4, 5, 6, 2], [2, 2, 1, 1, 0]])
    feeds = {**weights_of(model), "x": x, "t": RNG.standard_normal((3, 5, 3)).astype(np.float32)}
    for n in ("Emb.y.weight", "Emb.last.weight"):
        feeds[n] = RNG.standard_normal(feeds[n].shape).astype(np.float32)
    gy, gl = reference(dslc.compile(emb_prog, "emb_grad")).run(None, feeds)
    assert not gy[2].any() and gy[[0, 1, 3, 4, 5, 6]].all()
    assert not gl[6].any()
    want = np.zeros((7, 3))  # scatter-add of d(loss)/dy over the rows looked up
    np.add.at(want, x, (feeds["t"] + 2 * feeds["Emb.y.weight"][x]) * (x != 2)[..., None])
    np.testing.assert_allclose(gy, want, rtol=1e-5, atol=1e-5)
    ev, names = reference(model), ["Emb.y.weight", "Emb.last.weight"]
    dirs = {n: RNG.standard_normal(feeds[n].shape).astype(np.float32) for n in names}

    def at(step):
        return float(np.float64(ev.run(None, {**feeds, **{n: feeds[n] + step * dirs[n] for n in names}})[0]))
    fd = (at(0.5) - at(-0.5)) / 1.0
    analytic = float(np.sum(gy * dirs[names[0]]) + np.sum(gl * dirs[names[1]]))
    assert abs(fd - analytic) <= 1e-4 * max(1.0, abs(fd)), (fd, analytic)


def test_embedding_padding_row_zero_when_drawn_in_chunks(monkeypatch):
    from dslc.lower import init as I
    from dslc.lower.builtins import _zero_row
    monkeypatch.setattr(I, "CHUNK", 4)  # a 5 x 3 table drawn 4 numbers at a time
    for row in range(5):
        w = I.generate(_zero_row(I.kernel("uniform", 5, 3), row, 3), np.random.default_rng(0), (5, 3), np.float32)
        assert not w[row].any() and np.delete(w, row, 0).all()


def test_embedding_onnxruntime():
    ort_agrees(EMB, "emb_grad", int_inputs=("x",))


# ------------------------------------------------------------------ upsample2d bilinear
UP = """
fn up(x: f64[N, 2, 3, 4]) {
    return upsample2d(x, mode=bilinear), upsample2d(x, [3, 1], mode=bilinear), upsample2d(x, 2, mode=nearest)
}
model Up(x: f64[N, 2, 3, 4]) -> y {
    y = conv2d(x, 3, kernel=1) |> upsample2d([2, 3], mode=bilinear) |> tanh
}
fn up_loss(x: f64[N, 2, 3, 4]) {
    return sum(Up(x) * Up(x)) + sum(upsample2d(x * x, 3, mode=bilinear))
}
fn up_grad(x: f64[N, 2, 3, 4]) {
    gx, gw = grad(up_loss(x), [x, Up.y.weight])
    return gx, gw
}
fn up_second(x: f64[N, 2, 3, 4], v: f64[N, 2, 3, 4]) {
    return grad(sum(grad(up_loss(x), x) * v), x)
}
"""


@pytest.fixture(scope="module")
def up_prog():
    return dslc.loads(UP, "up.dsl")


def bilinear_ref(x, sh, sw):
    """Pixel by pixel: torch's interpolate(mode="bilinear", align_corners=False)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h * sh, w * sw))

    def source(i, s, size):
        src = max((i + 0.5) / s - 0.5, 0.0)
        i0 = min(int(src), size - 1)
        return i0, min(i0 + 1, size - 1), src - i0
    for i in range(h * sh):
        y0, y1, fy = source(i, sh, h)
        for j in range(w * sw):
            x0, x1, fx = source(j, sw, w)
            out[:, :, i, j] = ((1 - fy) * ((1 - fx) * x[:, :, y0, x0] + fx * x[:, :, y0, x1])
                               + fy * ((1 - fx) * x[:, :, y1, x0] + fx * x[:, :, y1, x1]))
    return out


def test_upsample2d_bilinear_values(up_prog):
    x = RNG.standard_normal((2, 2, 3, 4))
    two, three_one, nearest = run(up_prog, "up", x=x)
    np.testing.assert_allclose(two, bilinear_ref(x, 2, 2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(three_one, bilinear_ref(x, 3, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(nearest, x.repeat(2, 2).repeat(2, 3))
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(two, want.numpy(), rtol=1e-12, atol=1e-14)


def test_upsample2d_bilinear_gradients(up_prog):
    model = dslc.compile(up_prog, "up_loss")
    feeds = {**weights_of(model), "x": RNG.standard_normal((2, 2, 3, 4))}
    directional_check(up_prog, "up_loss", "up_grad", feeds, ["x", "Up.y.weight"])


def test_upsample2d_bilinear_second_derivatives(up_prog):
    """grad(<grad(loss), v>) is the Hessian times v: against differences of the gradient."""
    model = dslc.compile(up_prog, "up_grad")
    w = weights_of(model)
    x, v = RNG.standard_normal((2, 2, 3, 4)), RNG.standard_normal((2, 2, 3, 4))
    (hv,) = reference(dslc.compile(up_prog, "up_second")).run(None, {**w, "x": x, "v": v})
    g = reference(model)
    eps = 1e-5
    fd = (g.run(None, {**w, "x": x + eps * v})[0] - g.run(None, {**w, "x": x - eps * v})[0]) / (2 * eps)
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-6)


def test_upsample2d_bilinear_onnxruntime():
    ort_agrees(UP, "up")
    ort_agrees(UP, "up_grad")
