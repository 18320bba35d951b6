"""Train-step graphs (emit="train", "apply", "gradients"), checked against independent code.

Expected values come from NumPy implementations written here from the published update equations
(Keras / TF.js semantics, as optimizers.py documents them) and from hand-derived dense + mse
gradients; nothing expected is computed by dslc itself.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
import dslc.frontend.ast as A
from dslc.emit.onnx_emit import check
from feeds import graphs, random_feeds

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_STEPS = [(f, t) for f in ("chain_rule", "convnet", "vae", "acgan")
              for t, d in dslc.load(SPECS / f"{f}.dsl").decls.items() if isinstance(d, A.Step)]


# ------------------------------------------------------------------ helpers
def is_f64(model: onnx.ModelProto) -> bool:
    return any(i.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE for i in model.graph.input)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session. float64 graphs run at ORT_ENABLE_BASIC: onnxruntime's MatMulScaleFusion (level
    extended) folds `MatMul(..) * lr` into FusedMatMul's float32 `alpha`, which rounds lr = 0.01 to
    float32 even in a float64 graph (see test_ort_fusion_rounds_float64_scales)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if is_f64(model):
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()} | {i.name for i in sess.get_overridable_initializers()}
    outs = [o.name for o in sess.get_outputs()]
    return dict(zip(outs, sess.run(outs, {k: v for k, v in feeds.items() if k in names})))


def run_ref(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    names = {i.name for i in model.graph.input}
    outs = [o.name for o in model.graph.output]
    return dict(zip(outs, ReferenceEvaluator(model).run(None, {k: v for k, v in feeds.items() if k in names})))


def initial(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def fed_back(outputs: dict) -> dict[str, np.ndarray]:
    """The state a step hands to the next one: every output `X.next` becomes the input `X`."""
    return {k[:-len(".next")]: v for k, v in outputs.items() if k.endswith(".next")}


def data_feeds(model: onnx.ModelProto, n: int = 2) -> dict[str, np.ndarray]:
    """Fixed data for a spec step at batch n: images/targets in [0, 1), labels in [0, 10), counts = n."""
    feeds = random_feeds(model, np.random.default_rng(1234), n)
    for k, v in feeds.items():
        if v.ndim == 0 and np.issubdtype(v.dtype, np.integer):
            feeds[k] = np.array(n, v.dtype)
    return feeds


# ------------------------------------------------------------------ 1. SEEDS.md section 1
CHAIN = SPECS / "chain_rule.dsl"
V = "Scale.y_pred.weight"


@pytest.fixture(scope="module")
def fit_scale64():
    model = dslc.compile(CHAIN, "fit_scale", float64=True)
    check(model)
    return model


def test_fit_scale_one_step_is_exactly_0_2(fit_scale64):
    x, y = np.array([[2.0]]), np.array([[5.0]])
    feeds = {"x": x, "y": y, V: np.zeros((1, 1)), "step": np.array(0, np.int64)}
    for out in (run(session(fit_scale64), feeds), run_ref(fit_scale64, feeds)):
        assert out[f"{V}.next"].dtype == np.float64
        assert out[f"{V}.next"].item() == 0.2
        assert out["loss"].item() == 25.0
        assert out["step.next"].item() == 1


def test_ort_fusion_rounds_float64_scales(fit_scale64):
    """Documents an onnxruntime behaviour, not a dslc one: at the default optimization level the
    lr of a float64 graph is applied as float32(0.01) (FusedMatMul's alpha), so the step is off by
    ~2e-9; the graph itself (reference evaluator, ORT basic level) is exact."""
    x, y = np.array([[2.0]]), np.array([[5.0]])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(fit_scale64.SerializeToString(), so, providers=["CPUExecutionProvider"])
    v = run(sess, {"x": x, "y": y})[f"{V}.next"].item()
    assert v == pytest.approx(0.2, abs=1e-8)


def test_fit_scale_converges_to_2_5(fit_scale64):
    sess = session(fit_scale64)
    x, y = np.array([[2.0]]), np.array([[5.0]])
    state = {}
    for _ in range(500):
        state = fed_back(run(sess, {"x": x, "y": y, **state}))
    assert state[V].item() == pytest.approx(2.5, abs=1e-6)
    assert state["step"].item() == 500


# ------------------------------------------------------------------ NumPy optimizers
# Keras / TF.js defaults, restated here from their documentation.
DEFAULTS = {
    "sgd": dict(lr=0.01, momentum=0.0, nesterov=False),
    "adam": dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7),
    "adamw": dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.004),
    "rmsprop": dict(lr=0.001, rho=0.9, eps=1e-7, momentum=0.0, centered=False),
}
SLOTS = {"sgd": ["velocity"], "adam": ["m", "v"], "adamw": ["m", "v"], "rmsprop": ["ms", "mg", "mom"]}


def np_step(name: str, o: dict, w: np.ndarray, g: np.ndarray, s: dict, step: int, lr: float | None = None):
    """One update of weight w by gradient g (float64); s: the slots (missing = zeros). Returns (w', s')."""
    lr = o["lr"] if lr is None else lr
    t = step + 1
    s = {k: s.get(k, np.zeros_like(w)) for k in SLOTS[name]}
    wd = o.get("weight_decay", 0.0)
    if wd and name != "adamw":  # coupled L2: the decay term joins the gradient
        g = g + wd * w
    if name == "sgd":
        if not o["momentum"]:
            return w - lr * g, {}
        v = o["momentum"] * s["velocity"] - lr * g
        w = w + (o["momentum"] * v - lr * g if o["nesterov"] else v)
        return w, {"velocity": v}
    if name in ("adam", "adamw"):
        if name == "adamw":  # decoupled (Keras AdamW): decay the weight before the Adam step
            w = w - lr * wd * w
        b1, b2 = o["beta1"], o["beta2"]
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g * g
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        return w - alpha * m / (np.sqrt(v) + o["eps"]), {"m": m, "v": v}
    # rmsprop, TF.js: eps inside the square root
    rho = o["rho"]
    ms = rho * s["ms"] + (1 - rho) * g * g
    new = {"ms": ms}
    denom = ms
    if o["centered"]:
        mg = rho * s["mg"] + (1 - rho) * g
        new["mg"] = mg
        denom = ms - mg * mg
    mom = o["momentum"] * s["mom"] + lr * g / np.sqrt(denom + o["eps"])
    if o["momentum"]:
        new["mom"] = mom
    return w - mom, new


def np_clip(grads: list[np.ndarray], o: dict) -> list[np.ndarray]:
    if o.get("clip_norm"):
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        if norm > o["clip_norm"]:
            grads = [g * (o["clip_norm"] / norm) for g in grads]
    if o.get("clip_value"):
        grads = [np.clip(g, -o["clip_value"], o["clip_value"]) for g in grads]
    return grads


# ------------------------------------------------------------------ 2. optimizers over 5 steps
SMALL = """
model M(x: f32[N, 3]) -> y {{
    y = dense(x, 2)
}}
step fit(x: f32[N, 3], t: f32[N, 2]) updates M using {opt} {{
    minimize mse(M(x), t)
}}
"""
W, B = "M.y.weight", "M.y.bias"

# (DSL optimizer, optimizer name, options that differ from the defaults)
OPTIMIZER_CASES = [
    ("sgd()", "sgd", {}),
    ("sgd(lr=0.1)", "sgd", dict(lr=0.1)),
    ("sgd(lr=0.1, momentum=0.9)", "sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd(lr=0.1, momentum=0.9, nesterov=true)", "sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adam()", "adam", {}),
    ("adam(lr=0.05)", "adam", dict(lr=0.05)),
    ("adam(lr=0.05, beta1=0.5)", "adam", dict(lr=0.05, beta1=0.5)),
    ("adamw(lr=0.05)", "adamw", dict(lr=0.05)),
    ("adamw(lr=0.05, weight_decay=0.1)", "adamw", dict(lr=0.05, weight_decay=0.1)),
    ("rmsprop()", "rmsprop", {}),
    ("rmsprop(lr=0.01)", "rmsprop", dict(lr=0.01)),
    ("rmsprop(lr=0.01, momentum=0.9)", "rmsprop", dict(lr=0.01, momentum=0.9)),
    ("rmsprop(lr=0.01, centered=true)", "rmsprop", dict(lr=0.01, centered=True)),
    ("rmsprop(lr=0.01, momentum=0.5, centered=true)", "rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
]


def dense_mse(x, t, w, b):
    """Loss and gradients of mean((x @ w + b - t)^2) over all elements, derived by hand."""
    r = x @ w + b - t
    dy = 2 * r / r.size
    return float(np.mean(r * r)), x.T @ dy, dy.sum(axis=0)


def _batch(dtype):
    rng = np.random.default_rng(7)
    return rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 2)).astype(dtype)


@pytest.mark.parametrize("f64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("dsl,name,opts", OPTIMIZER_CASES, ids=[c[0] for c in OPTIMIZER_CASES])
def test_optimizer_matches_numpy_over_5_steps(dsl, name, opts, f64):
    o = {**DEFAULTS[name], **opts}
    model = dslc.compile(dslc.loads(SMALL.format(opt=dsl)), "fit", float64=f64)
    dtype = np.float64 if f64 else np.float32
    rtol, atol = (1e-12, 1e-14) if f64 else (1e-5, 1e-6)
    x, t = _batch(dtype)
    init = initial(model)
    assert init[W].shape == (3, 2) and init[B].shape == (2,) and init[W].dtype == dtype
    w, b = init[W].astype(np.float64), init[B].astype(np.float64)
    sw, sb = {}, {}
    sess = session(model)
    state = {}
    for step in range(5):
        out = run(sess, {"x": x, "t": t, **state})
        loss, gw, gb = dense_mse(x.astype(np.float64), t.astype(np.float64), w, b)
        w, sw = np_step(name, o, w, gw, sw, step)
        b, sb = np_step(name, o, b, gb, sb, step)
        np.testing.assert_allclose(out["loss"], loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(out[f"{W}.next"], w, rtol=rtol, atol=atol)
        np.testing.assert_allclose(out[f"{B}.next"], b, rtol=rtol, atol=atol)
        slots = sorted(k for k in out if k.startswith(f"{name}."))
        assert slots == sorted([f"{name}.{s}.{W}.next" for s in sw] + [f"{name}.{s}.{B}.next" for s in sb])
        for s in sw:
            np.testing.assert_allclose(out[f"{name}.{s}.{W}.next"], sw[s], rtol=rtol, atol=atol)
            np.testing.assert_allclose(out[f"{name}.{s}.{B}.next"], sb[s], rtol=rtol, atol=atol)
        assert out["step.next"].item() == step + 1
        state = fed_back(out)
    assert not np.allclose(state[W], init[W])  # it moved


def test_numpy_dense_mse_gradient_by_finite_differences():
    """The hand-derived gradient the optimizer tests use, checked by central differences."""
    x, t = (a.astype(np.float64) for a in _batch(np.float64))
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    _, gw, gb = dense_mse(x, t, w, b)
    h = 1e-6
    for arr, g in ((w, gw), (b, gb)):
        for i in np.ndindex(arr.shape):
            arr[i] += h
            up = dense_mse(x, t, w, b)[0]
            arr[i] -= 2 * h
            down = dense_mse(x, t, w, b)[0]
            arr[i] += h
            assert (up - down) / (2 * h) == pytest.approx(g[i], rel=1e-6, abs=1e-9)


def test_gradients_emit_matches_numpy():
    model = dslc.compile(dslc.loads(SMALL.format(opt="sgd()")), "fit", emit="gradients", float64=True)
    x, t = _batch(np.float64)
    init = initial(model)
    out = run(session(model), {"x": x, "t": t})
    loss, gw, gb = dense_mse(x, t, init[W], init[B])
    assert set(out) == {"loss", f"grad.{W}", f"grad.{B}"}
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-12)
    np.testing.assert_allclose(out[f"grad.{W}"], gw, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out[f"grad.{B}"], gb, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ apply graphs (gradients fed directly)
def _apply(dsl: str):
    model = dslc.compile(dslc.loads(SMALL.format(opt=dsl)), "fit", emit="apply", float64=True)
    return model, session(model)


def _grads(scale: float = 1.0):
    rng = np.random.default_rng(11)
    return rng.standard_normal((3, 2)) * scale, rng.standard_normal(2) * scale


@pytest.mark.parametrize("dsl,name,opts", OPTIMIZER_CASES, ids=[c[0] for c in OPTIMIZER_CASES])
def test_apply_with_state_matches_numpy(dsl, name, opts):
    """The apply graph at step 4 with non-zero state (bias corrections and slots all read)."""
    o = {**DEFAULTS[name], **opts}
    model, sess = _apply(dsl)
    init = initial(model)
    rng = np.random.default_rng(5)
    gw, gb = _grads()
    feeds = {f"grad.{W}": gw, f"grad.{B}": gb, "step": np.array(4, np.int64)}
    sw, sb = {}, {}
    for slot in [i.name for i in model.graph.input if i.name.startswith(f"{name}.")]:
        _, s, weight = slot.split(".", 2)
        value = rng.random(init[weight].shape) * 0.1  # positive: v and ms are running squares
        feeds[slot] = value
        (sw if weight == W else sb)[s] = value
    out = run(sess, feeds)
    w, sw2 = np_step(name, o, init[W], gw, sw, 4)
    b, sb2 = np_step(name, o, init[B], gb, sb, 4)
    np.testing.assert_allclose(out[f"{W}.next"], w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out[f"{B}.next"], b, rtol=1e-12, atol=1e-15)
    for s in sw2:
        np.testing.assert_allclose(out[f"{name}.{s}.{W}.next"], sw2[s], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(out[f"{name}.{s}.{B}.next"], sb2[s], rtol=1e-12, atol=1e-15)
    assert out["step.next"].item() == 5


# ------------------------------------------------------------------ 3. schedules, clipping, weight decay
def exponential(lr, decay_steps, decay_rate, staircase=False):
    return lambda s: lr * decay_rate ** (math.floor(s / decay_steps) if staircase else s / decay_steps)


def step_decay(lr, every, factor):
    return lambda s: lr * factor ** math.floor(s / every)


def cosine(lr, decay_steps, alpha=0.0):
    return lambda s: lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(s, decay_steps) / decay_steps)) + alpha)


SCHEDULES = [
    ("exponential_decay(0.1, decay_steps=10, decay_rate=0.5)", exponential(0.1, 10, 0.5)),
    ("exponential_decay(0.1, decay_steps=10, decay_rate=0.5, staircase=true)", exponential(0.1, 10, 0.5, True)),
    ("exponential_decay(0.01, decay_steps=1000, decay_rate=0.96)", exponential(0.01, 1000, 0.96)),
    ("step_decay(0.1, every=10, factor=0.5)", step_decay(0.1, 10, 0.5)),
    ("step_decay(0.2, every=3, factor=0.1)", step_decay(0.2, 3, 0.1)),
    ("cosine_decay(0.1, decay_steps=100)", cosine(0.1, 100)),
    ("cosine_decay(0.1, decay_steps=100, alpha=0.2)", cosine(0.1, 100, 0.2)),
]
STEPS = [0, 1, 2, 5, 9, 10, 11, 29, 50, 99, 100, 101, 250, 1000, 5000]


@pytest.mark.parametrize("schedule,formula", SCHEDULES,
                         ids=[s[0].split("(")[0] + str(i) for i, s in enumerate(SCHEDULES)])
def test_schedule(schedule, formula):
    model, sess = _apply(f"sgd(lr={schedule})")
    init = initial(model)
    gw, gb = _grads()
    for s in STEPS:
        out = run(sess, {f"grad.{W}": gw, f"grad.{B}": gb, "step": np.array(s, np.int64)})
        np.testing.assert_allclose(out[f"{W}.next"], init[W] - formula(s) * gw, rtol=1e-12, atol=1e-15,
                                   err_msg=f"step {s}")
        np.testing.assert_allclose(out[f"{B}.next"], init[B] - formula(s) * gb, rtol=1e-12, atol=1e-15)


def test_schedule_in_the_train_step_f32():
    """The same schedule inside a full f32 step, over 5 steps fed back."""
    model = dslc.compile(dslc.loads(SMALL.format(opt="sgd(lr=step_decay(0.1, every=2, factor=0.5))")), "fit")
    x, t = _batch(np.float32)
    init = initial(model)
    w, b = init[W].astype(np.float64), init[B].astype(np.float64)
    sess, state = session(model), {}
    for s in range(5):
        out = run(sess, {"x": x, "t": t, **state})
        _, gw, gb = dense_mse(x.astype(np.float64), t.astype(np.float64), w, b)
        w, b = w - step_decay(0.1, 2, 0.5)(s) * gw, b - step_decay(0.1, 2, 0.5)(s) * gb
        np.testing.assert_allclose(out[f"{W}.next"], w, rtol=1e-5, atol=1e-6)
        state = fed_back(out)


def _clipped(dsl: str, gw, gb):
    """The gradient an sgd(lr=1) apply graph actually used: w - w'."""
    model, sess = _apply(dsl)
    init = initial(model)
    out = run(sess, {f"grad.{W}": gw, f"grad.{B}": gb})
    return init[W] - out[f"{W}.next"], init[B] - out[f"{B}.next"]


def test_clip_norm_rescales_to_the_limit():
    gw, gb = _grads()
    norm = math.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))
    assert norm > 1.5
    cw, cb = _clipped("sgd(lr=1.0, clip_norm=1.5)", gw, gb)
    assert math.sqrt(np.sum(cw ** 2) + np.sum(cb ** 2)) == pytest.approx(1.5, rel=1e-12)
    np.testing.assert_allclose(cw, gw * 1.5 / norm, rtol=1e-12, atol=1e-15)  # the direction is kept
    np.testing.assert_allclose(cb, gb * 1.5 / norm, rtol=1e-12, atol=1e-15)


def test_clip_norm_leaves_a_small_gradient_alone():
    gw, gb = _grads(0.01)
    cw, cb = _clipped("sgd(lr=1.0, clip_norm=1.5)", gw, gb)
    np.testing.assert_allclose(cw, gw, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cb, gb, rtol=1e-12, atol=1e-15)


def test_clip_value_clips_each_element():
    gw, gb = _grads()
    cw, cb = _clipped("sgd(lr=1.0, clip_value=0.5)", gw, gb)
    assert (np.abs(gw) > 0.5).any() and (np.abs(gw) < 0.5).any()
    np.testing.assert_allclose(cw, np.clip(gw, -0.5, 0.5), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cb, np.clip(gb, -0.5, 0.5), rtol=1e-12, atol=1e-15)


def test_clip_norm_then_value():
    gw, gb = _grads(3.0)
    cw, cb = _clipped("sgd(lr=1.0, clip_norm=2.0, clip_value=0.3)", gw, gb)
    ew, eb = np_clip([gw, gb], dict(clip_norm=2.0, clip_value=0.3))
    np.testing.assert_allclose(cw, ew, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cb, eb, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dsl,name,opts", [
    ("sgd(lr=0.1, weight_decay=0.01)", "sgd", dict(lr=0.1, weight_decay=0.01)),
    ("sgd(lr=0.1, momentum=0.9, weight_decay=0.01)", "sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("adam(lr=0.1, weight_decay=0.01)", "adam", dict(lr=0.1, weight_decay=0.01)),
    ("rmsprop(lr=0.1, weight_decay=0.01)", "rmsprop", dict(lr=0.1, weight_decay=0.01)),
    ("adamw(lr=0.1, weight_decay=0.01)", "adamw", dict(lr=0.1, weight_decay=0.01)),
    ("adam(lr=0.1, weight_decay=0.01, clip_norm=0.5)", "adam", dict(lr=0.1, weight_decay=0.01, clip_norm=0.5)),
], ids=["sgd", "sgd-momentum", "adam-coupled", "rmsprop-coupled", "adamw-decoupled", "adam-clip"])
def test_weight_decay(dsl, name, opts):
    o = {**DEFAULTS[name], **opts}
    model, sess = _apply(dsl)
    init = initial(model)
    gw, gb = _grads()
    out = run(sess, {f"grad.{W}": gw, f"grad.{B}": gb, "step": np.array(2, np.int64)})
    cw, cb = np_clip([gw, gb], o)  # clipping acts on the gradient before the decay joins it
    ew, _ = np_step(name, o, init[W], cw, {}, 2)
    eb, _ = np_step(name, o, init[B], cb, {}, 2)
    np.testing.assert_allclose(out[f"{W}.next"], ew, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out[f"{B}.next"], eb, rtol=1e-12, atol=1e-15)


def test_coupled_and_decoupled_decay_differ():
    """adam's weight_decay goes through the moments (at step 0 it only changes the direction
    estimate); adamw's shrinks the weight by lr * wd * w on top of the plain Adam step."""
    gw, gb = _grads()
    outs = {}
    for dsl in ("adam(lr=0.1)", "adam(lr=0.1, weight_decay=0.5)", "adamw(lr=0.1, weight_decay=0.5)"):
        model, sess = _apply(dsl)
        outs[dsl] = run(sess, {f"grad.{W}": gw, f"grad.{B}": gb})[f"{W}.next"]
    w = initial(model)[W]
    plain = outs["adam(lr=0.1)"]
    np.testing.assert_allclose(outs["adamw(lr=0.1, weight_decay=0.5)"], plain - 0.1 * 0.5 * w, rtol=1e-12, atol=1e-15)
    assert not np.allclose(outs["adam(lr=0.1, weight_decay=0.5)"], outs["adamw(lr=0.1, weight_decay=0.5)"])


# ------------------------------------------------------------------ 4. apply(gradients(batch)) == train
@pytest.mark.parametrize("target", ["train_convnet", "train_mnist_convnet"], ids=["adam", "rmsprop"])
def test_apply_of_gradients_is_the_train_step(target):
    prog = dslc.load(SPECS / "convnet.dsl")
    train = dslc.compile(prog, target, random="input")
    grads = dslc.compile(prog, target, emit="gradients", random="input")
    apply = dslc.compile(prog, target, emit="apply")
    feeds = data_feeds(train)
    rng = np.random.default_rng(9)
    init = initial(train)
    for name, value in init.items():  # non-zero optimizer state, step 3
        if name.split(".")[0] in ("adam", "rmsprop"):
            feeds[name] = (rng.random(value.shape) * 1e-3).astype(value.dtype)
    feeds["step"] = np.array(3, np.int64)
    g = run(session(grads), feeds)
    a = run(session(apply), {**feeds, **{k: v for k, v in g.items() if k.startswith("grad.")}})
    t = run(session(train), feeds)
    assert set(a) == {k for k in t if k.endswith(".next")}
    assert any(k.startswith("random.") for k in feeds) == (target == "train_convnet")
    np.testing.assert_allclose(g["loss"], t["loss"], rtol=1e-6)
    for k in a:
        np.testing.assert_allclose(a[k], t[k], rtol=1e-5, atol=1e-7, err_msg=k)


# ------------------------------------------------------------------ 5. every spec step: checked, two runtimes
@pytest.fixture(scope="module")
def step_models():
    cache = {}

    def get(file, target):
        if (file, target) not in cache:
            cache[file, target] = dslc.compile(SPECS / f"{file}.dsl", target)
        return cache[file, target]
    return get


def _with_random_bits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every uint32 value (the counter-based generator's hashes) is also an output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    outs = {o.name for o in m.graph.output}
    for vi in model.graph.value_info:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.UINT32 and vi.name not in outs:
            m.graph.output.append(vi)
    return m


@pytest.mark.parametrize("file,target", SPEC_STEPS, ids=[t for _, t in SPEC_STEPS])
def test_spec_step_checked_and_same_in_two_runtimes(file, target, step_models):
    model = step_models(file, target)
    check(model)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert {n.domain for g in graphs(model.graph) for n in g.node} <= {"", "ai.onnx"}
    outputs = {o.name for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    assert {"loss", "step.next"} <= outputs
    assert all(o[:-5] in inputs for o in outputs if o.endswith(".next"))
    random = "seed" in inputs
    assert random == (target not in ("fit_scale", "fit_affine", "train_mnist_convnet")), target
    feeds = {**data_feeds(model), "step": np.array(3, np.int64)}
    if random:
        feeds["seed"] = np.array(7, np.int64)
    probe = _with_random_bits(model)
    bits = [o.name for o in probe.graph.output if o.name not in outputs]
    assert bool(bits) == random
    o = run(session(probe), feeds)
    r = run_ref(probe, feeds)
    for k in bits:  # the hashes, hence dropout masks and noise, agree bit for bit
        assert np.array_equal(o[k], r[k]), k
    for k in outputs:
        assert o[k].dtype == r[k].dtype and o[k].shape == r[k].shape, k
        np.testing.assert_allclose(o[k], r[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert np.isfinite(o["loss"])
    moved = [k for k in outputs if k.endswith(".weight.next") and not np.array_equal(o[k], initial(model)[k[:-5]])]
    assert moved, "no weight changed"


# ------------------------------------------------------------------ 6. resume from saved state
@pytest.mark.parametrize("file,target", SPEC_STEPS, ids=[t for _, t in SPEC_STEPS])
def test_resume_from_npz_is_bit_identical(file, target, step_models, tmp_path):
    model = step_models(file, target)
    data = data_feeds(model)
    if "seed" in {i.name for i in model.graph.input}:
        data["seed"] = np.array(5, np.int64)
    sess = session(model)
    state, saved = {}, None
    for i in range(10):
        out = run(sess, {**data, **state})
        state = fed_back(out)
        if i == 4:
            np.savez(tmp_path / "state.npz", **state)
            saved = {k: v.copy() for k, v in state.items()}
    assert state["step"].item() == 10

    loaded = dict(np.load(tmp_path / "state.npz"))
    assert loaded.keys() == saved.keys()
    assert all(np.array_equal(loaded[k], saved[k]) and loaded[k].dtype == saved[k].dtype for k in saved)
    sess2, state2 = session(model), loaded
    for _ in range(5):
        out2 = run(sess2, {**data, **state2})
        state2 = fed_back(out2)
    assert out2.keys() == out.keys()
    for k in out:
        assert out2[k].dtype == out[k].dtype and out2[k].tobytes() == out[k].tobytes(), k


# ------------------------------------------------------------------ 7. ACGAN: each step trains its own model only
def _frozen(file, target, step_models, frozen: str, trained: str):
    model = step_models(file, target)
    outputs = [o.name for o in model.graph.output]
    assert not [o for o in outputs if o.startswith(frozen + ".")]
    assert [o for o in outputs if o.startswith(trained + ".")]
    init = initial(model)
    data = {**data_feeds(model), "seed": np.array(3, np.int64)}
    sess, state = session(model), dict(init)  # every weight fed explicitly, the frozen ones too
    for _ in range(2):
        state = {**state, **fed_back(run(sess, {**data, **state}))}
    frozen_weights = [k for k in init if k.startswith(frozen + ".")]
    assert frozen_weights
    for k in frozen_weights:
        assert state[k].tobytes() == init[k].tobytes(), k
    for k in [k for k in state if k.startswith(trained + ".") and k.endswith(".weight")]:
        assert not np.array_equal(state[k], init[k]), k


def test_train_generator_leaves_the_discriminator(step_models):
    _frozen("acgan", "train_generator", step_models, "Discriminator", "Generator")


def test_train_discriminator_leaves_the_generator(step_models):
    _frozen("acgan", "train_discriminator", step_models, "Generator", "Discriminator")
