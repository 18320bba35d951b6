"""dslc tune (dslc/tuner/): per-layer forcing, the cache's safety rules, that every pick the tuner
can make computes what the static picks compute (to float32 round-off), the CLI's table, and
`dslc train` with tuning on, off and resumed. No timing is asserted: which option wins depends on
the machine."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import dslc
import dslc.tuner as TU
import dslc.tuner.training as TT
from dslc.cli import main
from dslc.diagnostics import DslError
from dslc.ir import formulations as F
from dslc.runtime.session import make_session
from dslc.runtime.trainer import read_checkpoint
from dslc.tuner import cache
from dslc.tuner.machine import machine_key
from dslc.tuner.search import SESSION, Trial, Tuning, compile_with, fingerprint, static_step

TINY = """
model Tiny(image: f32[N, 1, 28, 28]) -> logits {
    c1 = conv2d(image, 4, kernel=3, padding=same) |> relu
    p1 = max_pool2d(c1, 2)
    c2 = conv2d(p1, 6, kernel=3, strides=2, padding=same) |> relu
    up = conv2d_transpose(c2, 3, kernel=2, strides=2) |> relu
    p2 = max_pool2d(up, 2)
    logits = dense(flatten(p2), 10)
}

step train_tiny(image: f32[N, 1, 28, 28], label: i64[N]) updates Tiny using adam(lr=0.01) {
    minimize sparse_categorical_crossentropy(Tiny(image), label, from_logits=true)
}

train tiny {
    data   = mnist
    image  = image |> scale(0, 1) |> channels_first
    batch  = 8
    epochs = 1
    steps  = [train_tiny(image, label)]
}
"""
STEP = "train_tiny"


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the user's own cache
    monkeypatch.setenv("DSLC_PARSER_CACHE", "1")
    path = tmp_path / "tiny.dsl"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "tiny.dsl"
    path.write_text(TINY)
    return dslc.load(path)


def feeds_for(model, n=4, seed=1):
    rng = np.random.default_rng(seed)
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds = {k: v for k, v in inits.items() if k in {i.name for i in model.graph.input}}
    feeds["image"] = rng.random((n, 1, 28, 28), dtype=np.float32)
    feeds["label"] = rng.integers(0, 10, n).astype(np.int64)
    return feeds


def run(model, feeds, session="default"):
    sess = make_session(model, "cpu", session)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


# ------------------------------------------------------------------ per-layer forcing
def test_the_step_reaches_every_point_once_per_layer(program):
    _, points = static_step(program, STEP)
    keys = {p.key: p for p in points}
    assert {"conv_weight_grad@Tiny.c1", "conv_weight_grad@Tiny.c2", "conv_weight_grad@Tiny.up",
            "conv_input_grad@Tiny.c2", "conv_transpose@Tiny.up", "max_pool_grad@Tiny.p1",
            "max_pool_grad@Tiny.p2", "optimizer_update"} <= set(keys)
    assert all(p.static in p.options for p in points)


def test_a_point_forced_on_one_layer_changes_that_layer_only(program):
    with F.recording(places=True) as taken, F.forcing({"conv_weight_grad@Tiny.c1": "channels_last"}):
        compile_with(program, STEP, {})
    picked = {(point, place): option for point, place, option, _ in taken}
    assert picked["conv_weight_grad", "Tiny.c1"] == "channels_last"
    _, points = static_step(program, STEP)
    static = {(p.point, p.place): p.static for p in points}
    assert {k: v for k, v in picked.items() if k != ("conv_weight_grad", "Tiny.c1")} == \
        {k: v for k, v in static.items() if k != ("conv_weight_grad", "Tiny.c1")}
    # the global form still reaches every layer, and a layer's own key wins over it
    with F.recording(places=True) as taken, F.forcing({"conv_weight_grad": "per_sample",
                                                       "conv_weight_grad@Tiny.up": "channels_last"}):
        compile_with(program, STEP, {})
    picked = {(point, place): option for point, place, option, _ in taken if point == "conv_weight_grad"}
    assert picked == {("conv_weight_grad", "Tiny.c1"): "per_sample", ("conv_weight_grad", "Tiny.c2"): "per_sample",
                      ("conv_weight_grad", "Tiny.up"): "channels_last"}


def test_per_layer_forcing_is_checked_and_reaches_the_cli(spec, tmp_path, capsys):
    with pytest.raises(DslError, match="unknown formulation point `conv_weight`"):
        F.check({"conv_weight@Tiny.c1": "channels_last"})
    with pytest.raises(DslError, match="has no formulation `rows`"):
        F.check({"conv_weight_grad@Tiny.c1": "rows"})
    out = tmp_path / "out"
    assert main(["compile", str(spec), "--target", STEP, "--out", str(out),
                 "--formulation", "conv_weight_grad@Tiny.c1=channels_last"]) == 0
    with pytest.raises(SystemExit):
        main(["compile", str(spec), "--target", STEP, "--formulation", "conv_weight_grad@=channels_last"])


# ------------------------------------------------------------------ every pick is exact
def candidates(program):
    _, points = static_step(program, STEP)
    yield from ({p.key: o} for p in points for o in p.options if o != p.static)
    yield {p.key: o for p in points for o in p.options if o != p.static}  # every alternative at once


def test_every_pick_computes_what_the_static_picks_compute(program):
    static, _ = static_step(program, STEP)
    feeds = feeds_for(static)
    want = run(static, feeds)
    seen = set()
    for picks in candidates(program):
        model = compile_with(program, STEP, picks)
        seen.add(fingerprint(model))
        got = run(model, feeds)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=2e-5, err_msg=f"{picks}: {name}")
    assert len(seen) >= 6  # the alternatives are other graphs, not the static one again
    got = run(static, feeds, "no-nchwc")  # the session option
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=2e-5, err_msg=name)


# ------------------------------------------------------------------ the cache
def test_cache_hit_key_changes_and_damaged_entries(spec, monkeypatch):
    program = dslc.load(spec)
    first = TU.tune_step(program, STEP, 4, budget=1.0)
    assert first.source == "measured" and first.static_ms > 0
    path = cache.entry_path(first.graph, 4, machine_key())
    assert path.is_file() and oct(path.parent.stat().st_mode & 0o777) == "0o700"

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the cache has the picks")
    monkeypatch.setattr(TU, "measure_step", no_measuring)
    hit = TU.tune_step(program, STEP, 4, budget=1.0)
    assert hit.source == "cache" and hit.picks == first.picks and hit.static_ms == first.static_ms
    for changed in (dict(batch=5), dict(batch=4, threads=1)):  # another key: measured afresh
        with pytest.raises(AssertionError, match="measured"):
            TU.tune_step(program, STEP, changed.pop("batch"), budget=1.0, **changed)
    if any(t.verdict == "not tried" for t in hit.trials):  # a larger budget may try what the entry's left
        with pytest.raises(AssertionError, match="measured"):
            TU.tune_step(program, STEP, 4, budget=1000.0)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(spec.parent / "cache"))
    data = path.read_bytes()
    for damaged in (data[:-5] + b"xxxxx", b"not json at all", data.split(b"\n", 1)[1]):
        path.write_bytes(damaged)
        again = TU.tune_step(program, STEP, 4, budget=0.5)
        assert again.source == "measured"  # ignored, measured, written anew
        assert cache.load(first.graph, 4, machine_key()) is not None
    os.chmod(path, 0o666)  # writable by others: not trusted
    assert cache.load(first.graph, 4, machine_key()) is None
    # a record with a pick the graph does not have is ignored too
    record = json.loads(path.read_bytes().split(b"\n", 1)[1])
    record["picks"] = {"conv_weight_grad@Nowhere": "channels_last"}
    assert Tuning.from_record(record, "cache") is None


def test_no_cache_folder_still_tunes(spec, monkeypatch):
    monkeypatch.setenv("DSLC_PARSER_CACHE", "0")
    tuning = TU.tune_step(dslc.load(spec), STEP, 4, budget=0.5)
    assert tuning.source == "measured" and cache.entry_path(tuning.graph, 4, machine_key()) is None


# ------------------------------------------------------------------ the CLI
def test_cli_prints_a_table_per_point_then_reads_the_cache(spec, capsys):
    assert main(["tune", str(spec), "--target", STEP, "--batch", "4", "--budget", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("tune train_tiny (batch 4) on ") and "measured in" in lines[0]
    assert lines[1].split() == ["point", "layer", "options:", "ms", "(*", "static", "pick)", "pick"]
    rows = {tuple(line.split()[:2]) for line in lines[2:]}
    for key in ("conv_weight_grad Tiny.c1", "conv_input_grad Tiny.c2", "conv_transpose Tiny.up",
                "max_pool_grad Tiny.p1", "session (whole", "optimizer_update (whole"):
        assert tuple(key.split()) in rows, key
    assert any(line.startswith("step: static picks ") for line in lines)
    assert main(["tune", str(spec), "--target", STEP, "--batch", "4", "--budget", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": cache")


def test_cli_errors(spec, capsys):
    assert main(["tune", str(spec), "--target", "Tiny"]) == 1
    err = capsys.readouterr().err
    assert "times a training step: `Tiny` is a model" in err and "train_tiny" in err and "Traceback" not in err
    assert main(["tune", str(spec), "--target", "train_tin"]) == 1
    err = capsys.readouterr().err
    assert "there is no `train_tin`" in err and "did you mean `train_tiny`" in err
    assert main(["tune", str(spec), "--target", STEP, "--budget", "0"]) == 1
    assert "budget must be positive" in capsys.readouterr().err


# ------------------------------------------------------------------ dslc train
def train(spec, out, **kw):
    lines = []
    dslc.train(spec, out=out, log=lambda *a, **k: lines.append(" ".join(map(str, a))), **kw)
    return lines


def state_of(out: Path) -> dict:
    meta, state = read_checkpoint(out / "checkpoint.npz")
    return meta, state


def test_train_with_tuning_off_and_on(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(TT, "DEFAULT_BUDGET", 1.0)
    lines = train(spec, tmp_path / "off", max_steps=2, tune=False)
    assert not any(line.startswith("tune ") for line in lines)
    assert "tuning" not in state_of(tmp_path / "off")[0]
    lines = train(spec, tmp_path / "on", max_steps=2, tune=True)
    said = [line for line in lines if line.startswith("tune train_tiny: picks")]
    assert len(said) == 1 and "before the first step" in said[0]
    record = state_of(tmp_path / "on")[0]["tuning"][STEP]
    assert record["machine"] == machine_key() and record["batch"] == 8
    # auto (no setting): a short run reads the cache that the run above filled, measures nothing
    monkeypatch.setattr(TU, "measure_step", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    lines = train(spec, tmp_path / "auto", max_steps=2)
    assert any("from the cache" in line for line in lines)
    # the declaration's `tune = false` turns it off; --tune on the command line wins over it
    spec.write_text(TINY.replace("epochs = 1", "epochs = 1\n    tune   = false"))
    assert not any(line.startswith("tune ") for line in train(spec, tmp_path / "decl", max_steps=1))
    assert any(line.startswith("tune ") for line in train(spec, tmp_path / "decl2", max_steps=1, tune=True))


@pytest.fixture
def picked(spec, monkeypatch):
    """dslc train's tuner made to pick non-static options (what a machine where they win would do)."""
    program = dslc.load(spec)
    model, points = static_step(program, STEP)
    picks = {"conv_weight_grad@Tiny.c1": "channels_last", "max_pool_grad@Tiny.p2": "windows", SESSION: "no-nchwc"}
    tuning = Tuning(STEP, fingerprint(model), 8, machine_key(), points, picks=picks, static_ms=1.0, tuned_ms=0.9,
                    trials=[Trial(SESSION, "no-nchwc", 0.9, 1.0, "faster")])
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        return tuning
    monkeypatch.setattr(TT, "tune_step", fake)
    return calls


def test_resume_reuses_the_recorded_picks_bit_for_bit(spec, tmp_path, picked, monkeypatch):
    apply = TT._apply
    train(spec, tmp_path / "straight", max_steps=4, tune=True)
    train(spec, tmp_path / "resumed", max_steps=2, tune=True)
    assert len(picked) == 2
    meta, _ = state_of(tmp_path / "resumed")
    assert meta["tuning"][STEP]["picks"]["conv_weight_grad@Tiny.c1"] == "channels_last"
    seen = []

    def applying(trainer, i, name, tuning):
        seen.append(trainer)
        return apply(trainer, i, name, tuning)
    monkeypatch.setattr(TT, "_apply", applying)
    lines = train(spec, tmp_path / "resumed", max_steps=4, tune=True, resume=True)
    assert len(picked) == 2  # not measured again: the checkpoint's picks, on the same machine key
    assert seen[0].runners[0].tuning == "no-nchwc"  # the session option too: not timed again on the first batch
    assert any("from the checkpoint" in line and "conv_weight_grad@Tiny.c1=channels_last" in line for line in lines)
    (m1, a), (m2, b) = state_of(tmp_path / "straight"), state_of(tmp_path / "resumed")
    assert m1["global_step"] == m2["global_step"] == 4
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_on_another_machine_key_tunes_again(spec, tmp_path, picked, monkeypatch):
    train(spec, tmp_path / "run", max_steps=2, tune=True)
    assert len(picked) == 1
    other = {**machine_key(), "cpu": "another CPU"}
    monkeypatch.setattr(TT, "machine_key", lambda threads=None: other)
    train(spec, tmp_path / "run", max_steps=3, tune=True, resume=True)
    assert len(picked) == 2  # the checkpoint's picks were for another machine: asked again
    # (the picks then agree with the static ones to float32 round-off: test_every_pick_... above)


def test_dslc_tune_fills_the_cache_that_dslc_train_reads(spec, tmp_path, monkeypatch, capsys):
    assert main(["tune", str(spec), "--target", STEP, "--budget", "1"]) == 0  # the declaration's batch, 8
    assert "(batch 8)" in capsys.readouterr().out
    monkeypatch.setattr(TU, "measure_step", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    lines = train(spec, tmp_path / "run", max_steps=1, seed=5)  # another seed: other weights, the same graph
    assert any(line.startswith("tune train_tiny: picks") and "from the cache" in line for line in lines)


def test_dslc_tune_stays_the_function_after_a_call():
    """The package is dslc.tuner: a package named dslc.tune, imported by the first call, replaced the
    function `dslc.tune` with itself ("'module' object is not callable" at the second call)."""
    spec = Path(__file__).resolve().parent.parent / "specs" / "chain_rule.dsl"
    first = dslc.tune(spec, "fit_scale", budget=1, cache=False)
    assert callable(dslc.tune)
    assert dslc.tune(spec, "fit_scale", budget=1, cache=False).step == first.step == "fit_scale"


class _Scripted:
    """A timed session stand-in: each once() returns the next of its scripted durations (seconds)."""

    def __init__(self, durations):
        self.durations, self.calls = list(durations), 0

    def once(self) -> float:
        self.calls += 1
        return self.durations.pop(0)


def test_each_turn_starts_with_an_untimed_run():
    """The run after the other session's (its threads may still spin) is never among the times."""
    from dslc.tuner.measure import RUNS_PER_TURN, interleaved
    turns = 3
    a = _Scripted([9.0, 1.0, 1.0] * turns)  # 9.0: the untimed run of each turn
    b = _Scripted([9.0, 2.0, 2.0] * turns)
    ta, tb = interleaved(a, b, RUNS_PER_TURN * turns)
    assert ta == [1.0] * 6 and tb == [2.0] * 6 and a.calls == b.calls == 9


@pytest.mark.parametrize("speed,spread,verdict", [
    (0.85, 0.10, "faster"),       # 15% faster at 10% spread (the NCHWc option on the convnets): a win
    (0.88, 0.05, "faster"),
    (0.97, 0.05, "not faster"),   # 3% faster: inside two standard errors of the difference
    (0.88, 0.60, "not faster"),   # 12% faster, but runs spread by 60%: not shown
])
def test_a_win_must_beat_the_uncertainty_of_the_two_medians(speed, spread, verdict):
    from dslc.tuner.measure import RUNS_PER_TURN
    from dslc.tuner.search import _race
    runs = 20
    rng = np.random.default_rng(0)

    def durations(scale):  # per turn: an untimed run, then RUNS_PER_TURN timed ones
        timed = scale * (1 + spread * rng.standard_normal(runs)).clip(0.05)
        return [x for k in range(0, runs, RUNS_PER_TURN) for x in [1.0, *timed[k:k + RUNS_PER_TURN]]]
    trial = Trial("p", "o")
    _race(trial, _Scripted(durations(0.1)), _Scripted(durations(0.1 * speed)), runs, deadline=float("inf"))
    assert trial.verdict == verdict
