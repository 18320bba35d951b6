"""Issue 9: confined imports, a cache no one else can plant, atomic writes, and no input that
makes a command exit 3 (an internal error). Each test is one of the issue's items."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dslc
from dslc.cli import main

ROOT = Path(__file__).resolve().parent.parent
MLP = "model Mlp(x: f32[N, 4]) -> (probs, file) {\n    file = dense(x, 8) |> relu\n    probs = dense(file, 3) |> softmax\n}\n"


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: usage errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


@pytest.fixture
def proj(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("TOP-SECRET-CONTENT\n")
    (tmp_path / "outside" / "other.dsl").write_text("TOP-SECRET-CONTENT\n")
    (tmp_path / "proj" / "mlp.dsl").write_text(MLP)
    return tmp_path / "proj"


# ------------------------------------------------------------------ 1. imports stay in the project root
@pytest.mark.parametrize("path, why", [
    ("/proc/self/environ", "an absolute path"), ("/etc/passwd", "an absolute path"),
    ("../outside/secret.txt", "only .dsl files"), ("../outside/other.dsl", "outside the project root"),
    ("link.dsl", "outside the project root"), ("fifo.dsl", "not a regular file (a FIFO)"),
    ("sub.dsl", "it is a directory"), ("/dev/zero", "an absolute path"),
    ("a" * 300 + ".dsl", "too long"),
])
def test_imports_are_confined_and_never_echo_the_file(proj, capsys, path, why):
    (proj / "link.dsl").symlink_to(proj.parent / "outside" / "other.dsl")
    os.mkfifo(proj / "fifo.dsl")
    (proj / "sub.dsl").mkdir()
    src = proj / "main.dsl"
    src.write_text(f'import "{path}"\nmodel M(x: f32[N, 4]) -> y {{ y = x }}\n')
    code, err = run_cli(capsys, "check", src)
    assert code == 1
    assert err.startswith(f"{src}:1:1: error: cannot import") and why in err
    assert f'    import "{path}"' in err  # the importing line is quoted
    assert "TOP-SECRET" not in err and "root:" not in err


def test_import_path_widens_the_root(proj, capsys):
    (proj / "main.dsl").write_text('import "other.dsl"\nmodel M(x: f32[N, 4]) -> y { y = x }\n')
    (proj.parent / "outside" / "other.dsl").write_text("fn g(x) { return x }\n")
    assert run_cli(capsys, "check", proj / "main.dsl")[0] == 1
    assert run_cli(capsys, "check", proj / "main.dsl", "--import-path", proj.parent / "outside")[0] == 0


def test_imports_inside_the_root_may_use_dotdot(proj):
    (proj / "lib").mkdir()
    (proj / "lib" / "a.dsl").write_text('import "../b.dsl"\n')
    (proj / "b.dsl").write_text("fn g(x) { return x }\n")
    (proj / "main.dsl").write_text('import "lib/a.dsl"\nfn f(x: f32[2]) { return g(x) }\n')
    assert dslc.load(proj / "main.dsl").targets() == ["f"]


# ------------------------------------------------------------------ 2. no pickle from a shared folder
def test_a_planted_cache_file_is_never_loaded(tmp_path):
    """A file planted where lark's cache=True would look, and one in a cache folder another user
    could write: neither is unpickled (a planted pickle would create the marker file)."""
    import hashlib
    import pickle

    import lark
    from dslc.frontend import parser
    marker = tmp_path / "pwned"
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')"

    class Evil:
        def __reduce__(self):
            return (exec, (code,))
    payload = pickle.dumps(Evil())
    planted = hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    key = hashlib.sha256(parser._grammar_text().encode()).hexdigest()[:16]
    for user in ("root", os.environ.get("USER", "x"), "nobody"):  # lark's old names, for any user
        for py in ("311", "312", "313"):
            (shared_tmp / f".lark_cache_{user}_{key}_{py[0]}_{py[1:]}.tmp").write_bytes(payload)
    # A cache folder that others can write is not trusted, even with a valid hash inside.
    cache = tmp_path / "cache"
    (cache / "dslc").mkdir(parents=True)
    os.chmod(cache / "dslc", 0o777)
    name = f"parser-{key}-lark{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.bin"
    (cache / "dslc" / name).write_bytes(planted)
    env = {**os.environ, "TMPDIR": str(shared_tmp), "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "dslc.cli", "check", str(ROOT / "specs" / "vae.dsl")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    # And in a private folder, a file whose hash does not match is rebuilt, not loaded.
    os.chmod(cache / "dslc", 0o700)
    (cache / "dslc" / name).write_bytes(b"0" * 64 + b"\n" + payload)
    os.chmod(cache / "dslc" / name, 0o600)
    res = subprocess.run([sys.executable, "-m", "dslc.cli", "check", str(ROOT / "specs" / "vae.dsl")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0 and not marker.exists()
    assert (cache / "dslc" / name).read_bytes() != b"0" * 64 + b"\n" + payload  # replaced by a good one


# ------------------------------------------------------------------ 3. atomic writes survive a kill
KILLED_WRITER = """
import sys, numpy as np
from dslc.fileio import save_npz
big = np.full(4_000_000, float(sys.argv[2]), np.float32)
while True:
    save_npz(sys.argv[1], {"x": big})
"""


def test_a_kill_during_writes_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "w.npz"
    from dslc.fileio import save_npz
    save_npz(path, {"x": np.zeros(4_000_000, np.float32)})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k, delay in enumerate((0.3, 0.45, 0.6)):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(k + 1)], env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with np.load(path) as z:  # complete: the zip and the array read back whole
            x = z["x"]
        assert x.shape == (4_000_000,) and len(np.unique(x)) == 1  # all old or all new


def test_run_output_and_png_are_atomic_and_named_as_written(proj, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    code = main(["run", str(proj / "mlp.dsl"), "--input", f"x={tmp_path / 'x.npy'}", "--output",
                 str(tmp_path / "resdir"), "--png", str(tmp_path / "p.png"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and f"wrote {tmp_path / 'resdir.npz'}" in out
    with np.load(tmp_path / "resdir.npz") as z:  # an output named `file`, which np.savez refuses
        assert sorted(z.files) == ["file", "probs"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ 4. deep expressions
@pytest.mark.parametrize("body, ok", [
    (" + ".join(["x"] * 10_000), True), ("-" * 10_000 + "x", True), ("(" * 10_000 + "x" + ")" * 10_000, True),
    ("relu(" * 10_000 + "x" + ")" * 10_000, False), ("^".join(["x"] * 10_000), False),
    ("x" + " |> relu" * 10_000, False), ("[" * 10_000 + "1" + "]" * 10_000, False),
])
def test_deep_expressions(body, ok):
    src = "fn f(x: f32[N, 4]) {\n    return " + body + "\n}\n"
    if ok:
        assert dslc.compile(dslc.loads(src, "deep.dsl"), "f").graph.node
    else:
        with pytest.raises(dslc.DslError, match=r"nested too deeply \(limit 100\)") as e:
            dslc.lower(dslc.loads(src, "deep.dsl"), "f")
        assert e.value.span.line == 2


def test_deep_repeat_and_deep_calls_are_located_errors():
    src = "fn f(x: f32[N, 4]) {\n    y = x\n" + "repeat 1 {\n" * 10_000 + "y = y * 2\n" + "}\n" * 10_000 + "return y\n}\n"
    with pytest.raises(dslc.DslError, match=r"`repeat` nested too deeply \(limit 16\)"):
        dslc.loads(src, "deep.dsl")
    chain = "".join(f"fn f{i}(x) {{\n    return relu(f{i + 1}(x))\n}}\n" for i in range(1000))
    chain += "fn f1000(x) {\n    return x\n}\nfn top(x: f32[N, 4]) {\n    return f0(x)\n}\n"
    with pytest.raises(dslc.DslError, match="nested too deeply"):
        dslc.lower(dslc.loads(chain, "chain.dsl"), "top")


# ------------------------------------------------------------------ 5. memory
def test_check_and_summary_allocate_no_weights(tmp_path, capsys):
    src = tmp_path / "big.dsl"
    src.write_text("model M(x: f32[N, 32768]) -> y {\n    y = dense(x, 16384)\n}\n")  # 2 GiB of weights
    start = time.perf_counter()
    assert main(["check", str(src)]) == 0
    assert main(["summary", str(src)]) == 0
    assert "Total params: 536,887,296" in capsys.readouterr().out
    assert time.perf_counter() - start < 5


def test_weights_are_drawn_in_their_own_dtype_and_as_before():
    from dslc.lower.init import CHUNK, generate, kernel
    init = kernel("glorot_uniform", 100, 100)
    big = generate(init, np.random.default_rng(1), (CHUNK + 7,), np.float32)
    assert big.dtype == np.float32
    np.testing.assert_array_equal(big, np.random.default_rng(1).uniform(-init.__closure__[0].cell_contents,
                                                                        init.__closure__[0].cell_contents,
                                                                        CHUNK + 7).astype(np.float32))
    f64 = dslc.compile(dslc.loads("model M(x: f64[N, 4]) -> y { y = dense(x, 3) }"), "M")
    assert {t.data_type for t in f64.graph.initializer} == {11}  # DOUBLE


def test_out_of_memory_is_a_clear_error(tmp_path, capsys):
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 250000)})
    code, err = run_cli(capsys, "run", tmp_path / "m.onnx", "--input", f"x={tmp_path / 'huge.npy'}")
    assert code == 1 and "93.1 GiB" in err
    from dslc.lower.init import generate

    def boom(rng, shape):
        raise MemoryError
    with pytest.raises(dslc.DslError, match=r"out of memory: weight `w` needs 4.0 GiB \(float32\[32768, 32768\]\)"):
        generate(boom, None, (32768, 32768), np.float32, "weight `w`")


def test_onnxruntime_failing_to_allocate_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "r.dsl"
    src.write_text("fn f(x: f32[N, 1]) {\n    return x * transpose(x, [1, 0])\n}\n")  # 16 TB
    np.save(tmp_path / "x.npy", np.ones((2_000_000, 1), np.float32))
    code, err = run_cli(capsys, "run", src, "--input", f"x={tmp_path / 'x.npy'}", "--device", "cpu")
    assert code == 1 and "out of memory in onnxruntime" in err and "TiB" in err


# ------------------------------------------------------------------ 6. bad paths and files
def test_bad_output_paths(proj, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    src = proj / "mlp.dsl"
    for out, msg in [(tmp_path / "afile", "is a file, not a folder"),
                     (tmp_path / "afile" / "sub", "a part of the path is a file"),
                     ("/proc/dslc-out", "cannot create the folder")]:
        code, err = run_cli(capsys, "compile", src, "-o", out)
        assert code == 1 and msg in err and len(err.splitlines()) <= 2, err
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    for flag, value in [("--png", tmp_path / "afile" / "x.png"), ("--output", "/proc/r.npz"),
                        ("--png", tmp_path)]:
        code, err = run_cli(capsys, "run", src, "--input", f"x={tmp_path / 'x.npy'}", flag, value)
        assert code == 1 and flag in err, err
        assert "probs" not in capsys.readouterr().out  # refused before running


@pytest.mark.parametrize("content, msg", [
    (b"", "is empty (0 bytes)"), (b"hello, this is text\n", "is not an ONNX model"),
    (bytes(range(256)) * 3, "is not an ONNX model"), ("truncated", "is not an ONNX model"),
])
def test_bad_onnx_files(proj, tmp_path, capsys, content, msg):
    if content == "truncated":
        main(["compile", str(proj / "mlp.dsl"), "-o", str(tmp_path)])
        content = (tmp_path / "Mlp.onnx").read_bytes()[:300]
    (tmp_path / "bad.onnx").write_bytes(content)
    code, err = run_cli(capsys, "run", tmp_path / "bad.onnx", "--input", "x=1.0")
    assert code == 1 and msg in err


def test_bad_weights_inputs_and_special_files(proj, tmp_path, capsys):
    main(["compile", str(proj / "mlp.dsl"), "-o", str(tmp_path)])
    model = tmp_path / "Mlp.onnx"
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    np.savez(tmp_path / "w.npz", a=np.ones(3))
    (tmp_path / "wt.npz").write_bytes((tmp_path / "w.npz").read_bytes()[:60])
    (tmp_path / "text").write_text("hello\n")
    os.mkfifo(tmp_path / "fifo")
    x = f"x={tmp_path / 'x.npy'}"
    for argv, msg in [(["--weights", tmp_path / "wt.npz"], "not an .npz archive"),
                      (["--weights", tmp_path / "text"], "not an .npz archive"),
                      (["--weights", tmp_path / "x.npy"], "one .npy array, not an .npz"),
                      (["--weights", tmp_path / "fifo"], "not a regular file (a FIFO)")]:
        code, err = run_cli(capsys, "run", model, "--input", x, *argv)
        assert code == 1 and msg in err, err
    code, err = run_cli(capsys, "run", model, "--input", f"x={tmp_path / 'fifo'}")
    assert code == 1 and "FIFO" in err
    for special in (tmp_path / "fifo", "/dev/null", tmp_path):
        code, err = run_cli(capsys, "check", special)
        assert code == 1 and ("not a regular file" in err or "directory" in err)


# ------------------------------------------------------------------ 7. arguments
def test_bad_arguments(proj, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    src, x = proj / "mlp.dsl", f"x={tmp_path / 'x.npy'}"
    for sweep in ("k=3:3", "k=5:0"):
        code, err = run_cli(capsys, "run", src, "--input", x, "--sweep", sweep)
        assert code == 1 and "empty range" in err
    code, err = run_cli(capsys, "compile", src, "--seed", "-1")
    assert code == 2 and "--seed" in err
    (tmp_path / "rep.dsl").write_text("fn f(x: f32[N, 4]) {\n    y = x\n    repeat -3 { y = y * 2 }\n    return y\n}\n")
    code, err = run_cli(capsys, "check", tmp_path / "rep.dsl")
    assert code == 1 and "rep.dsl:3:12: error: repeat needs a count of 0 or more, got -3" in err


# ------------------------------------------------------------------ 8. small things
def test_byte_order_mark_and_line_breaks(tmp_path):
    (tmp_path / "bom.dsl").write_bytes(b"\xef\xbb\xbf" + MLP.encode())
    assert dslc.load(tmp_path / "bom.dsl").targets() == ["Mlp"]
    for brk in ("\u2028", "\f", "\x0b", "\x1c", "\x85"):
        src = f"model M(x: f32[N, 4]) -> y {{\n  # a{brk}comment\n{brk}  y = relu(q)\n}}\n"
        with pytest.raises(dslc.DslError) as e:
            dslc.loads(src, "lines.dsl")
            dslc.lower(dslc.loads(src, "lines.dsl"), "M")
        lines = e.value.render().splitlines()
        assert lines[0].startswith("lines.dsl:3:") and lines[1].strip() == "y = relu(q)", lines
