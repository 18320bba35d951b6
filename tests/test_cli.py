"""The command line, end to end: exit codes, files written, messages."""
import subprocess
import sys

import numpy as np
import onnx
import pytest

from dslc.cli import main
from dslc.runtime import cuda_available

MODEL = """
model Mlp(x: f32[N, 4]) -> (probs, hidden) {
    hidden = dense(x, 8) |> relu
    probs  = dense(hidden, 3) |> softmax
}
fn double(v: f32[N, 4], k: i64) {
    return v * 2 + cast(k, f32)
}
"""


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "mlp.dsl"
    p.write_text(MODEL)
    return p


def test_compile_writes_one_file_per_target(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(src), "-o", str(out), "--verify"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Mlp.onnx", "double.onnx"]
    onnx.checker.check_model(onnx.load(out / "Mlp.onnx"), full_check=True)
    assert "wrote" in capsys.readouterr().out


def test_compile_one_target(src, tmp_path):
    assert main(["compile", str(src), "-o", str(tmp_path / "o"), "--target", "double"]) == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["double.onnx"]


def test_check_ok_and_error_exit_codes(src, tmp_path, capsys):
    assert main(["check", str(src)]) == 0
    assert "ok (2 targets: Mlp, double)" in capsys.readouterr().out
    bad = tmp_path / "bad.dsl"
    bad.write_text("model M(x: f32[N, 4]) -> y {\n    y = dense(x, 3) |> rleu\n}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.dsl:2:24: error: unknown function `rleu`" in err and "did you mean `relu`?" in err
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile"])
    assert e.value.code == 2


def test_summary(src, capsys):
    assert main(["summary", str(src), "--target", "Mlp"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 67" in out and "Trainable params: 67" in out and "Non-trainable params: 0" in out


def test_run_dsl_with_npy_and_number_inputs(src, tmp_path, capsys):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.npz"
    code = main(["run", str(src), "--target", "double", "--input", f"v={tmp_path / 'x.npy'}", "--input", "k=3",
                 "--output", str(out), "--device", "cpu"])
    assert code == 0
    assert np.array_equal(np.load(out)["output"], x * 2 + 3)


def test_float64_flag_compiles_and_runs_in_float64(tmp_path, capsys):
    # conv2d and softplus have no float64 kernel in onnxruntime: dslc writes float64 equivalents
    src = tmp_path / "m.dsl"
    src.write_text("model M(x: f32[N, 1, 6, 6]) -> y { y = conv2d(x, 2, 3) |> softplus |> flatten |> dense(3) }")
    assert main(["compile", str(src), "--float64", "-o", str(tmp_path), "--verify"]) == 0
    model = onnx.load(tmp_path / "M.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = np.random.default_rng(0).random((2, 1, 6, 6))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.npz"
    assert main(["run", str(src), "--float64", "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out),
                 "--device", "cpu"]) == 0
    y64 = np.load(out)["y"]
    assert y64.dtype == np.float64 and y64.shape == (2, 3)
    np.save(tmp_path / "x32.npy", x.astype(np.float32))  # the float32 graph, same weights: agrees to f32 round-off
    assert main(["run", str(src), "--input", f"x={tmp_path / 'x32.npy'}", "--output", str(out), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(out)["y"], y64, rtol=1e-4, atol=1e-5)


def test_run_compiled_onnx_and_bad_inputs(src, tmp_path, capsys):
    main(["compile", str(src), "-o", str(tmp_path)])
    np.save(tmp_path / "x.npy", np.ones((5, 4), np.float32))
    assert main(["run", str(tmp_path / "Mlp.onnx"), "--input", f"x={tmp_path / 'x.npy'}"]) == 0
    assert "probs: float32[5, 3]" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", np.ones((5, 7), np.float32))
    assert main(["run", str(tmp_path / "Mlp.onnx"), "--input", f"x={tmp_path / 'bad.npy'}"]) == 1
    assert "f32[N, 4]" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.onnx")]) == 1


def test_several_targets_need_a_choice(src, capsys):
    assert main(["run", str(src)]) == 1
    assert "choose one with --target" in capsys.readouterr().err


@pytest.mark.skipif(cuda_available(), reason="CUDA works here")
def test_cuda_requested_without_cuda_is_a_clear_error(src, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code = main(["run", str(src), "--target", "Mlp", "--input", f"x={tmp_path / 'x.npy'}", "--device", "cuda"])
    assert code == 1
    err = capsys.readouterr().err
    assert "CUDA" in err and len(err.splitlines()) <= 3


def test_console_script_entry_point(src):
    res = subprocess.run([sys.executable, "-m", "dslc.cli", "check", str(src)], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout


def test_filter_visualization_writes_a_png_grid(tmp_path, capsys):
    """The README's main job, shortened: 2 filters of specs/visualize_filters.dsl as a PNG grid."""
    from pathlib import Path

    from PIL import Image
    spec = Path(__file__).parent.parent / "specs" / "visualize_filters.dsl"
    png = tmp_path / "filters.png"
    assert main(["run", str(spec), "--target", "visualize", "--sweep", "filter=0:2", "--png", str(png),
                 "--output", str(tmp_path / "f.npz"), "--device", "cpu"]) == 0
    images = np.load(tmp_path / "f.npz")["image"]
    assert images.shape == (2, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert not np.allclose(images[0], images[1])  # two filters, two patterns
    with Image.open(png) as im:
        assert im.size == (4 * (2 + 2 * 30), 4 * (2 + 30))  # 2 images per row, 2 px padding, 4x scale


def test_compiling_imports_no_runtime():
    """`dslc compile` needs lark, onnx and numpy only (DESIGN: the compiler does not need a runtime)."""
    code = ("import sys, dslc; from dslc.cli import main; "
            "main(['compile', 'specs/convnet.dsl', '-o', sys.argv[1], '--emit', 'forward']); "
            "print(sorted(m for m in ('onnxruntime', 'PIL', 'torch') if m in sys.modules))")
    import tempfile
    from pathlib import Path
    root = Path(__file__).parent.parent
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
