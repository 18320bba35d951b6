"""The table of formulations (dslc/ir/formulations.py): every option of every point can be forced and
is then taken, forcing changes no number, and bad names are clear errors (API and CLI)."""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc.cli import main
from dslc.diagnostics import DslError
from dslc.ir.formulations import CHOICES, PASSES, recording
from dslc.runtime.session import TUNINGS, make_session

# one step that reaches every choice point: a conv (weight and input gradients), a transposed conv,
# a max pool with tiling windows, an optimizer over several small weights, and a causal attention
# over the result's rows (dense layers over a sequence, a layer norm)
SOURCE = """
model Net(x: f32[N, 2, 8, 8]) -> y {
    h = conv2d(x, 4, kernel=3, padding=same) |> relu
    p = max_pool2d(h, pool=2)
    u = conv2d_transpose(p, 3, kernel=2, strides=2)
    c = reshape(conv2d(u, 2, kernel=3), [-1, 6, 12])
    n = layer_norm(c)
    a = c + multi_head_attention(n, n, n, 2, causal=true)
    y = reshape(a, [-1, 2, 6, 6])
}
step train(x: f32[N, 2, 8, 8], t: f32[N, 2, 6, 6]) updates Net using rmsprop(lr=0.01, momentum=0.5) {
    minimize mse(Net(x), t)
}
"""


def _outputs(formulations=None, passes_off=(), tuning="default") -> dict:
    """The gradients (of the inputs too) and the train step's outputs, by name, in a session with
    one of the runtime's TUNINGS (onnxruntime's NCHWc layout on or off)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    x[:, :, :4] = 0  # exact zeros: relu outputs and tied max-pool windows
    feeds = {"x": x, "t": rng.standard_normal((2, 2, 6, 6)).astype(np.float32)}
    out = {}
    for emit in ("gradients", "train"):
        model = dslc.compile(dslc.loads(SOURCE), "train", emit=emit, wrt_inputs=emit == "gradients",
                             formulations=formulations, passes_off=passes_off)
        sess = make_session(model, "cpu", tuning)
        out.update(zip([f"{emit}:{o.name}" for o in sess.get_outputs()], sess.run(None, feeds)))
    return out


@pytest.mark.parametrize("point,option", [(p, o) for p, opts in CHOICES.items() for o in opts])
def test_each_option_is_taken_when_forced_and_changes_no_number(point, option):
    with recording() as taken:
        got = _outputs({point: option})
    assert (point, option) in taken and not any(p == point and o != option for p, o in taken)
    want = _outputs()
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("tuning", [t for t in TUNINGS if t != "default"])
def test_session_tunings_change_no_number(tuning):
    want, got = _outputs(), _outputs(tuning=tuning)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_passes_off_change_no_number():
    want = _outputs()
    got = _outputs(passes_off=PASSES)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_an_option_whose_preconditions_fail_falls_back_to_the_rule():
    """channels_last weight gradients need groups=1: a grouped conv keeps the per-sample form."""
    src = """
    model G(x: f32[N, 4, 5, 5]) -> y { y = conv2d(x, 4, kernel=3, groups=2) }
    step s(x: f32[N, 4, 5, 5]) updates G using sgd() { minimize mean(G(x)) }
    """
    with recording() as taken:
        dslc.compile(dslc.loads(src), "s", formulations={"conv_weight_grad": "channels_last"})
    assert ("conv_weight_grad", "per_sample") in taken


@pytest.mark.parametrize("formulations,passes_off,message", [
    ({"conv_weight": "per_sample"}, (), "unknown formulation point `conv_weight`"),
    ({"conv_weight_grad": "fast"}, (), "`conv_weight_grad` has no formulation `fast`"),
    (None, ("inline",), "unknown pass `inline`"),
])
def test_bad_names_are_errors(formulations, passes_off, message):
    with pytest.raises(DslError, match=message):
        dslc.compile(dslc.loads(SOURCE), "train", formulations=formulations, passes_off=passes_off)


def test_cli_flags(tmp_path, capsys):
    path = tmp_path / "net.dsl"
    path.write_text(SOURCE)
    assert main(["compile", str(path), "--target", "train", "--formulation", "conv_weight_grad=channels_last",
                 "--formulation", "max_pool_grad=windows", "--no-pass", "cse", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "train.onnx").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(path), "--formulation", "conv_weight_grad=fast"])
    assert exit_info.value.code == 2
    assert "expected POINT=OPTION" in capsys.readouterr().err
