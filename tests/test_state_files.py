"""The files `dslc compile` writes for a step: its training state as plain inputs in NAME.onnx, the
state's initial values in NAME.init.onnx (dslc/emit/state.py), and `dslc run` joining them again.
Every runtime's side of it: tests/test_portability.py (10 train steps in each)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import dslc
from dslc.cli import main

SPECS = Path(__file__).resolve().parents[1] / "specs"


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_compile_writes_the_step_and_its_initial_state(tmp_path, capsys):
    assert main(["compile", str(SPECS / "convnet.dsl"), "--target", "train_convnet", "--target", "ConvNet",
                 "-o", str(tmp_path)]) == 0
    assert "compiled 2 targets" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ConvNet.onnx", "train_convnet.init.onnx", "train_convnet.onnx"]
    step, init = onnx.load(tmp_path / "train_convnet.onnx"), onnx.load(tmp_path / "train_convnet.init.onnx")
    onnx.checker.check_model(step, full_check=True)
    onnx.checker.check_model(init, full_check=True)
    inputs = [i.name for i in step.graph.input]
    assert not {t.name for t in step.graph.initializer} & set(inputs)  # nothing a runtime could hide
    state = [o.name for o in init.graph.output]
    assert not init.graph.input and state == [n for n in inputs if n not in ("image", "label")]
    assert {"step", "seed", "ConvNet.conv1.weight", "adam.m.ConvNet.conv1.weight"} <= set(state)

    # fed from the init graph, the step computes what the self-contained model computes from its defaults
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((4, 1, 28, 28), np.float32), "label": rng.integers(0, 10, 4)}
    whole = dslc.compile(SPECS / "convnet.dsl", "train_convnet")
    want = _run(whole, batch)
    got = _run(step, {**batch, **_run(init, {})})
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in want:  # and join_state gives the self-contained model back
        np.testing.assert_array_equal(_run(dslc.join_state(step, init), batch)[name], want[name])


def test_init_values_are_dslcs_initial_weights_and_zero_state():
    whole = dslc.compile(SPECS / "chain_rule.dsl", "fit_scale")
    defaults = {t.name: onnx.numpy_helper.to_array(t) for t in whole.graph.initializer}
    step, init = dslc.split_state(whole)
    values = _run(init, {})
    assert values.keys() == {i.name for i in whole.graph.input} & defaults.keys()
    for name, v in values.items():
        np.testing.assert_array_equal(v, defaults[name])
        assert v.dtype == defaults[name].dtype and v.shape == defaults[name].shape
    assert dslc.split_state(dslc.compile(SPECS / "convnet.dsl", "ConvNet"))[1] is None  # no state: one file


def test_run_joins_the_init_file_and_embedded_writes_one_file(tmp_path, capsys, monkeypatch):
    """README's example: the gradient graph's weight comes from fit_scale.init.onnx."""
    out = tmp_path / "out"
    assert main(["compile", str(SPECS / "chain_rule.dsl"), "--target", "fit_scale", "--emit", "gradients",
                 "-o", str(out)]) == 0
    assert (out / "fit_scale.init.onnx").is_file()
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.array([[2.0]], np.float32))
    np.save("y.npy", np.array([[5.0]], np.float32))
    capsys.readouterr()
    assert main(["run", str(out / "fit_scale.onnx"), "--input", "x=x.npy", "--input", "y=y.npy"]) == 0
    assert "[[-20.]]" in capsys.readouterr().out
    # --state embedded: one file, and a stale init file from before is removed (run would join it)
    assert main(["compile", str(SPECS / "chain_rule.dsl"), "--target", "fit_scale", "--emit", "gradients",
                 "--state", "embedded", "-o", str(out)]) == 0
    assert not (out / "fit_scale.init.onnx").exists()
    model = onnx.load(out / "fit_scale.onnx")
    assert "Scale.y_pred.weight" in {t.name for t in model.graph.initializer}


def test_weights_past_what_one_file_holds_are_refused_before_emission(monkeypatch, tmp_path, capsys):
    """(protobuf holds 2 GiB; onnx's from_array crashes where memory runs out while copying more, so the
    size is checked first: here with the limit lowered to 1 KiB)"""
    monkeypatch.setattr(dslc.api, "MAX_PROTO", 1024)
    assert main(["compile", str(SPECS / "chain_rule.dsl"), "--target", "fit_scale", "-o", str(tmp_path)]) == 0
    assert main(["compile", str(SPECS / "convnet.dsl"), "--target", "ConvNet", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "`ConvNet` cannot be one ONNX file: its weights take" in err and "Traceback" not in err
    assert not (tmp_path / "ConvNet.onnx").exists()
