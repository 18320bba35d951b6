"""Every sample of tests/opinfo.py (every built-in, every IR op with a VJP rule) under every
formulation it reaches, with all passes on and all passes off, in onnxruntime and in
onnx.reference: the forward value, first and second derivatives against torch float64 autograd,
and against central finite differences away from kinks. Emitted graphs pass the full ONNX checker.

Per sample the variants are: the default compile; all passes off; each option of each choice point
the default compile reached (formulations.CHOICES), forced, and asserted taken (or, where the
sample's shapes miss the option's preconditions, asserted not taken); im2col where there are
convolutions; and each forced option and im2col again with all passes off. `python tests/opinfo.py
--count` prints the number of cases.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import opinfo as O  # noqa: E402
from dslc.autodiff.rules import VJP  # noqa: E402
from dslc.ir import formulations as FORMS  # noqa: E402
from dslc.lower.builtins import BUILTINS  # noqa: E402

CASES = O.cases(full=True)
RUNTIMES = ("ort", "ref")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}:{v.label.replace('=', ':')}" for n, v in CASES])
def test_sample(name, variant, runtime):
    O.check(name, variant, runtime)


STEP_CASES = O.step_cases()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name,variant", STEP_CASES, ids=[f"{n}:{v.label.replace('=', ':')}" for n, v in STEP_CASES])
def test_step_sample(name, variant, runtime):
    O.check_step(name, variant, runtime)


IR_CASES = [(s.name, rt, off) for s in O.IR_SAMPLES for rt in s.runtimes for off in ((), FORMS.PASSES)]


@pytest.mark.parametrize("name,runtime,passes_off", IR_CASES,
                         ids=[f"{n}-{rt}{'-passes-off' if off else ''}" for n, rt, off in IR_CASES])
def test_ir_sample(name, runtime, passes_off):
    O.check_ir(name, runtime, passes_off)


def test_every_vjp_rule_has_a_sample():
    """Each IR op with a VJP rule is differentiated by some sample (a built-in sample's compile ran
    its rule, or an IR sample applies it)."""
    seen = ({op for s in O.SAMPLES for op in O.reached(s.name)[1]} | {s.op for s in O.IR_SAMPLES}
            | {op for s in O.STEP_SAMPLES for e in ("gradients", "train") for op in O.step_reached(s.name, e)[1]})
    missing = set(VJP) - seen
    assert not missing, f"VJP rules without a sample in tests/opinfo.py: {sorted(missing)}"


def test_every_builtin_has_a_sample():
    covered = {c for s in O.SAMPLES for c in s.covers}
    missing = set(BUILTINS) - covered
    assert not missing, f"built-ins without a sample in tests/opinfo.py: {sorted(missing)}"


def test_every_formulation_option_is_taken_somewhere():
    """Each option of each choice point is forced and taken by some sample."""
    taken = ({po for n, v in CASES for po in v.expects_taken(O.BY_NAME[n])}
             | {po for n, v in STEP_CASES for po in v.expects_taken(O.STEP_BY_NAME[n])})
    every = {(point, option) for point, options in FORMS.CHOICES.items() for option in options}
    missing = every - taken
    assert not missing, f"formulation options no sample takes: {sorted(missing)}"


def test_not_applicable_marks_are_reached():
    """A sample's not-applicable marks name points it reaches (a stale mark would hide nothing)."""
    for name, marks in O.NOT_APPLICABLE.items():
        points = {p for p, _ in O.reached(name)[0]}
        assert {p for p, _ in marks} <= points, (name, marks, points)


def test_elu_second_derivative_at_zero_is_torchs():
    """Regression: at exactly x = 0, d2 elu / dx2 came out as alpha (the x < 0 side: Min(x, 0)
    sent its tie to x); torch's, the expected value at a kink, is 0."""
    p = O.prepare("elu-ints")
    assert (p.feeds["x"] == 0).any()
    O.check("elu-ints", O.Variant("default"))
    O.check("elu-ints", O.Variant("default"), "ref")


def test_case_count(capsys):
    counts = O.count()
    with capsys.disabled():
        print("\nopinfo:", ", ".join(f"{k} {v}" for k, v in counts.items()), f"(x {len(RUNTIMES)} runtimes)")
    assert counts["sample_formulation_cases"] == len(CASES) + len(STEP_CASES) + 2 * len(O.IR_SAMPLES)
