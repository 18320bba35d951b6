"""The in-graph counter-based random generator (dslc/lower/random.py): distributions, dropout's keep
rate, dependence on `seed` and `step`, and agreement between onnxruntime and onnx.reference.

The draws are a pure function of (seed, step, site, position), so every statistic here is the same
on every run: the bounds are set at about 5 standard errors and cannot flake.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import dslc

try:
    from scipy import stats
except ImportError:  # the numpy KS statistic below is used alone
    stats = None

SOURCE = """
fn u(x: f32[N, 1000]) { return random_uniform(like=x) }
fn nrm(x: f32[N, 1000]) { return random_normal(like=x) }
fn ri(x: f32[N]) { return randint(10, [N]) }
model M(x: f32[N, 3]) -> y { y = dense(x, 1) }
step d(x: f32[N, 1000], w: f32[N, 1000], t: f32[N, 1]) updates M using sgd() {
    h = dropout(x, RATE)
    minimize mse(M(h[:, 0:3]), t)
    metric kept = mean(cast(h != 0.0, f32))
    metric top = max(h)
    metric low = min(h)
    metric probe = sum(h * w)
}
"""
ROWS = 100  # 100 x 1000 = 100,000 draws
KS_CRITICAL = 1.63  # sqrt(n) * D at the 0.01 level (Kolmogorov's asymptotic distribution)


def _compile(target: str, rate: float = 0.3) -> onnx.ModelProto:
    return dslc.compile(dslc.loads(SOURCE.replace("RATE", str(rate))), target)


@pytest.fixture(scope="module")
def models():
    return {t: _compile(t) for t in ("u", "nrm", "ri", "d")}


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()} | {i.name for i in sess.get_overridable_initializers()}
    outs = [o.name for o in sess.get_outputs()]
    return dict(zip(outs, sess.run(outs, {k: v for k, v in feeds.items() if k in names})))


def _ref(model, feeds):
    outs = [o.name for o in model.graph.output]
    return dict(zip(outs, ReferenceEvaluator(model).run(None, feeds)))


def _draw(model, seed: int = 0, rows: int = ROWS, **extra) -> np.ndarray:
    x = np.zeros((rows, 1000) if model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value else rows,
                 np.float32)
    return _ort(model, {"x": x, "seed": np.array(seed, np.int64), **extra})["output"]


def ks_statistic(sample: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov D = sup |F_n(x) - F(x)|, from the sorted sample."""
    x = np.sort(sample.astype(np.float64).ravel())
    n = x.size
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(0, n) / n)))


def uniform_cdf(x):
    return np.clip(x, 0.0, 1.0)


def normal_cdf(x):
    erf = np.vectorize(math.erf)
    return 0.5 * (1 + erf(x / math.sqrt(2)))


# ------------------------------------------------------------------ uniform
@pytest.mark.parametrize("seed", [0, 1, 123456789])
def test_uniform_statistics(models, seed):
    u = _draw(models["u"], seed)
    assert u.shape == (ROWS, 1000) and u.dtype == np.float32
    n = u.size
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.array_equal(u * 2.0 ** 24, np.floor(u * 2.0 ** 24))  # on the 2^-24 grid
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / n)
    d = ks_statistic(u, uniform_cdf)
    assert math.sqrt(n) * d < KS_CRITICAL
    if stats is not None:
        assert stats.kstest(u.ravel().astype(np.float64), "uniform").statistic == pytest.approx(d, abs=1e-9)
    # neighbours are independent: lag-1 correlation along the row-major position
    flat = u.ravel().astype(np.float64) - 0.5
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / math.sqrt(n)
    assert len(np.unique(u)) > 0.99 * n  # 2^24 levels: few repeats among 100,000 draws


# ------------------------------------------------------------------ normal
@pytest.mark.parametrize("seed", [0, 7])
def test_normal_statistics(models, seed):
    z = _draw(models["nrm"], seed).astype(np.float64)
    n = z.size
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    skew = np.mean(z ** 3)
    assert abs(skew) < 5 * math.sqrt(15 / n)
    d = ks_statistic(z, normal_cdf)
    assert math.sqrt(n) * d < KS_CRITICAL
    if stats is not None:
        assert stats.kstest(z.ravel(), "norm").statistic == pytest.approx(d, abs=1e-9)
    assert 0.9 * 0.0027 * n < np.sum(np.abs(z) > 3) < 1.1 * 0.0027 * n + 30  # the tails are there


# ------------------------------------------------------------------ randint
def test_randint_covers_0_to_9_uniformly(models):
    r = _draw(models["ri"], 3, rows=100_000)
    assert r.shape == (100_000,) and r.dtype == np.int64
    assert r.min() == 0 and r.max() == 9
    counts = np.bincount(r, minlength=10)
    expected = r.size / 10
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 27.88  # chi-square, 9 degrees of freedom, 0.001 level
    if stats is not None:
        assert stats.chisquare(counts).statistic == pytest.approx(chi2)


# ------------------------------------------------------------------ seeds and runtimes
@pytest.mark.parametrize("target", ["u", "nrm", "ri"])
def test_seed_changes_the_draws(models, target):
    a, b, a2 = _draw(models[target], 0, rows=50), _draw(models[target], 1, rows=50), _draw(models[target], 0, rows=50)
    assert np.array_equal(a, a2)
    assert not np.array_equal(a, b)
    if target != "ri":
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / math.sqrt(a.size)
    else:
        assert np.mean(a == b) < 0.2  # independent classes agree 10% of the time


@pytest.mark.parametrize("target", ["u", "nrm", "ri"])
def test_same_seed_same_draws_in_both_runtimes(models, target):
    m = models[target]
    x = np.zeros((20, 1000) if target != "ri" else 2000, np.float32)
    feeds = {"x": x, "seed": np.array(42, np.int64)}
    a, b = _ort(m, feeds)["output"], _ref(m, feeds)["output"]
    assert a.dtype == b.dtype and a.shape == b.shape
    if target == "nrm":  # log and cos may differ in the last bit
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(a, b)


def test_a_prefix_of_positions_draws_the_same(models):
    """Draws depend on the element's position, not on the tensor's size: 10 rows are the first
    10 rows of 50 (what makes a batch's noise independent of padding)."""
    small, big = _draw(models["u"], 5, rows=10), _draw(models["u"], 5, rows=50)
    assert np.array_equal(small, big[:10])


def test_rows_columns_and_sites_are_independent():
    """Each element hashes a per-row and a per-column hash together: neighbours down a column, along
    a row and at the same position of two random ops are uncorrelated, and pairs of neighbours fill
    a 16 x 16 grid evenly (chi-square, 255 degrees of freedom: 99.99% quantile 355)."""
    model = dslc.compile(dslc.loads("fn two(x: f32[N, 500]) { return random_uniform(like=x), random_uniform(like=x) }"),
                         "two")
    a, b = _ort(model, {"x": np.zeros((400, 500), np.float32), "seed": np.array(3, np.int64)}).values()
    n = a.size
    for x, y in ((a[:-1], a[1:]), (a[:, :-1], a[:, 1:]), (a, b)):
        assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 5 / math.sqrt(x.size)
        counts, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=16, range=[[0, 1], [0, 1]])
        expected = counts.sum() / 256
        assert ((counts - expected) ** 2 / expected).sum() < 355
    bits = (a * 2 ** 24).astype(np.int64)
    for k in range(24):  # every bit is a fair coin
        assert abs(((bits >> k) & 1).mean() - 0.5) < 2.5 / math.sqrt(n)


def test_static_and_symbolic_shapes_draw_the_same():
    """The per-column hashes are a constant where the dims after the first are static and computed
    in the graph where they are not: the same draws, and a rank-1 and a rank-0 shape draw too."""
    prog = dslc.loads("""
fn fixed(x: f32[N, 4, 5]) { return random_uniform(like=x) }
fn free(x: f32[N, M, K]) { return random_uniform(like=x) }
fn flat(x: f32[N]) { return random_uniform(like=x) }
fn one(x: f32) { return random_uniform(like=x) }
""")
    seed = np.array(11, np.int64)
    x = np.zeros((3, 4, 5), np.float32)
    fixed, free = (_ort(dslc.compile(prog, t), {"x": x, "seed": seed})["output"] for t in ("fixed", "free"))
    assert np.array_equal(fixed, free) and len(np.unique(fixed)) == fixed.size
    flat = _ort(dslc.compile(prog, "flat"), {"x": np.zeros(7, np.float32), "seed": seed})["output"]
    one = _ort(dslc.compile(prog, "one"), {"x": np.zeros((), np.float32), "seed": seed})["output"]
    assert flat.shape == (7,) and len(np.unique(flat)) == 7 and one.shape == () and 0 <= one < 1


# ------------------------------------------------------------------ dropout in a step
def _dropout_feeds(seed: int, step: int, rows: int = ROWS):
    rng = np.random.default_rng(0)
    return {"x": np.ones((rows, 1000), np.float32), "w": rng.random((rows, 1000)).astype(np.float32),
            "t": np.zeros((rows, 1), np.float32), "seed": np.array(seed, np.int64),
            "step": np.array(step, np.int64)}


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_dropout_keeps_one_minus_rate(rate):
    out = _ort(_compile("d", rate), _dropout_feeds(0, 0))
    n = ROWS * 1000
    keep = 1 - rate
    assert abs(out["kept"] - keep) < 5 * math.sqrt(keep * rate / n)
    assert out["top"] == pytest.approx(1 / keep, rel=1e-6)  # inverted dropout scales the kept units
    assert out["low"] == 0.0


def test_dropout_mask_changes_with_seed_and_step(models):
    m = models["d"]
    probes = {(s, t): float(_ort(m, _dropout_feeds(s, t, 20))["probe"]) for s in (0, 1) for t in (0, 1, 2)}
    assert len(set(probes.values())) == len(probes)  # six (seed, step) pairs, six masks
    assert float(_ort(m, _dropout_feeds(1, 2, 20))["probe"]) == probes[1, 2]


def test_dropout_same_in_both_runtimes(models):
    m = models["d"]
    feeds = _dropout_feeds(9, 4, 20)
    a, b = _ort(m, feeds), _ref(m, feeds)
    assert a["kept"] == b["kept"]  # the same units dropped
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_dropout_is_off_outside_steps():
    """A model called for inference keeps every unit (dropout only acts in training mode)."""
    m = dslc.compile(dslc.loads("model D(x: f32[N, 1000]) -> y { y = dropout(x, 0.5) }"), "D")
    x = np.ones((10, 1000), np.float32)
    assert np.array_equal(_ort(m, {"x": x})["y"], x)
