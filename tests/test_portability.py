"""A CI-sized slice of bench/portability.py: the convnet's forward graph and its train step's graphs
(train, gradients, apply) in every installed runtime, compared with onnxruntime. Runtimes that are not
installed are skipped, saying so; the whole matrix is `python bench/portability.py` (README's
"Portability")."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import portability as P  # noqa: E402
import runtimes as R  # noqa: E402


SPEC = ROOT / "specs" / "convnet.dsl"
GRAPHS = [("ConvNet", None), ("train_convnet", "train"), ("train_convnet", "gradients"), ("train_convnet", "apply")]
# Known gaps (README's matrix): none for these graphs. (OpenVINO, tract and onnx2torch run the graphs
# compiled for them: --target-runtime openvino / tract / onnx2torch.)
EXPECTED_GAPS: dict[str, set[str]] = {}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("port")
    graphs = [(SPEC, target, emit) for target, emit in GRAPHS]
    saved = P.save_cases(folder, runtimes=R.RUNTIMES, graph_list=graphs)
    return [(lab.split("/", 1)[1], paths, state) for lab, paths, state in saved]


@pytest.mark.parametrize("runtime", R.RUNTIMES[1:], ids=lambda rt: rt.name)
def test_runtime_agrees_with_onnxruntime(runtime, cases):
    why = runtime.missing()
    if why:
        pytest.skip(f"{runtime.name}: {why}")
    matrix, _ = P.run_suite(cases, [runtime], log=lambda *_: None)
    gaps = EXPECTED_GAPS.get(runtime.name, set())
    bad = {lab: row[runtime.name][1] for lab, row in matrix.items() if not row[runtime.name][0] and lab not in gaps}
    assert not bad, bad


# Runtimes whose default files cannot be trained, and why (each runs its own variant, or none).
TRAIN_VARIANT = {"openvino": "openvino"}  # OpenVINO 2026.4 gets a Conv and a ConvTranspose of one weight wrong
NOT_FEEDABLE = {"onnx2torch": "onnx2torch builds a Conv only from an initializer kernel: weights cannot be inputs"}
TRAIN_STEPS = 10


@pytest.fixture(scope="module")
def reference_trajectory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steps")
    step, init = P.save_step_files(folder, SPEC, "train_convnet")
    # (8 images of 8 classes: a batch the 10 steps do not fit to a loss near 0, whose relative
    # round-off would then be large; the state comes from the init graph)
    batch = {"image": P.feeds_for(onnx.load(str(step)), n=8)["image"], "label": np.arange(8, dtype=np.int64)}
    return folder, batch, P.train_steps(R.OnnxRuntime(), step, init, batch, TRAIN_STEPS)


@pytest.mark.parametrize("runtime", R.RUNTIMES[1:], ids=lambda rt: rt.name)
def test_ten_train_steps_from_the_default_files(runtime, reference_trajectory):
    """The files `dslc compile` writes train in every runtime: state fed by name from NAME.init.onnx,
    X.next fed back into X, each step's loss and new weights within 1e-4 of onnxruntime's."""
    why = runtime.missing() or NOT_FEEDABLE.get(runtime.name)
    if why:
        pytest.skip(f"{runtime.name}: {why}")
    folder, batch, want = reference_trajectory
    step, init = P.save_step_files(folder, SPEC, "train_convnet", TRAIN_VARIANT.get(runtime.name))
    got = P.train_steps(runtime, step, init, batch, TRAIN_STEPS)
    assert not isinstance(got, R.Failure), got
    assert len(got) == TRAIN_STEPS
    for k, (g, w) in enumerate(zip(got, want)):
        error = P.rel_error(g, w)
        assert not isinstance(error, str) and error <= 1e-4, f"step {k + 1}: {error}"
    assert float(got[-1]["loss"]) != float(got[0]["loss"])  # the state was fed: training moved


def test_rel_error_is_scale_aware():
    ref = {"a": np.array([1000.0, 1.0], np.float32), "n": np.array(3, np.int64)}
    assert P.rel_error({"a": np.array([1000.5, 1.0], np.float32), "n": np.array(3, np.int64)}, ref) == pytest.approx(5e-4)
    assert P.rel_error({"a": ref["a"], "n": np.array(4, np.int64)}, ref) == "n: integers differ"
    assert "shape" in P.rel_error({"a": ref["a"][:1], "n": ref["n"]}, ref)
