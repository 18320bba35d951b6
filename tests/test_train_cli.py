"""`dslc train` end to end on tiny models and tiny datasets: what it writes, resuming bit for bit
(after --max-steps, Ctrl-C and SIGKILL), resumes it refuses, and bad inputs. Every failure must
exit with one clear message on stderr, no traceback, and leave the files in --out undamaged."""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import dslc
from dslc.cli import main
from dslc.runtime import trainer as T

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Feat is read by the step but only Head is updated: Feat's weights must come out as they went in.
TINY = """
model Feat(x: f32[N, 784]) -> h {{
    h = dense(x, {hidden}) |> relu
}}
model Head(h: f32[N, {hidden}]) -> logits {{
    logits = dense(h, 10)
}}
model Net(x: f32[N, 784]) -> logits {{
    logits = Head(Feat(x))
}}
step train_head(image: f32[N, 784], label: i64[N]) updates Head using {optimizer} {{
    minimize {loss}
}}
train tiny {{
    data     = mnist
    image    = image |> {pipes}
    batch    = 32
    epochs   = {epochs}
    steps    = [train_head(image, label)]
    evaluate = accuracy(Net(image), label)
    export   = Net
}}
"""
LOSS = "sparse_categorical_crossentropy(Head(Feat(image)), label, from_logits=true)"


def write_dsl(path: Path, hidden=16, optimizer="adam(lr=0.01)", loss=LOSS, pipes="scale(0, 1) |> flatten",
              epochs=2) -> Path:
    path.write_text(TINY.format(hidden=hidden, optimizer=optimizer, loss=loss, pipes=pipes, epochs=epochs))
    return path


def images_for(labels: np.ndarray, rng) -> np.ndarray:
    """Learnable digits: class k lights rows 2k+4 .. 2k+6, over a little noise."""
    images = rng.integers(0, 40, (len(labels), 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * int(k) + 4: 2 * int(k) + 7] = 255
    return images


def write_npz(path: Path, n=256, n_test=64, seed=0, **override) -> Path:
    rng = np.random.default_rng(seed)
    label, label_test = rng.integers(0, 10, n).astype(np.uint8), rng.integers(0, 10, n_test).astype(np.uint8)
    arrays = {"image": images_for(label, rng), "label": label,
              "image_test": images_for(label_test, rng), "label_test": label_test}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def setup(tmp_path):
    return write_dsl(tmp_path / "tiny.dsl"), write_npz(tmp_path / "small.npz"), tmp_path / "out"


def train(capsys, dsl, data, out, *extra) -> tuple[int, str, str]:
    code = main(["train", str(dsl), "--data", str(data), "--out", str(out), "--device", "cpu", *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def one_error(err: str, *words: str) -> None:
    """stderr holds one error (one `error:` line, its hint), naming every word, and no traceback."""
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.count("error:") == 1, err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def checkpoint(out: Path) -> tuple[dict, dict]:
    arrays = npz(out / T.CHECKPOINT)
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    return arrays, meta


# ------------------------------------------------------------------ 1. a run and what it writes
def test_smoke_loss_falls_and_files_work(setup, capsys, tmp_path):
    dsl, data, out = setup
    code, stdout, err = train(capsys, dsl, data, out, "--epochs", 3)
    assert code == 0, err
    assert "Traceback" not in err
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["steps"] == 24
    losses = [h["loss"] for h in history]
    assert all(np.isfinite(losses)) and losses[2] < losses[1] < losses[0] * 0.95, losses
    assert history[-1]["test_accuracy"] > 0.3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in stdout

    # The exported model: the model's one input, weights inside; it runs with `dslc run`.
    model = onnx.load(out / "Net.onnx")
    assert [i.name for i in model.graph.input] == ["x"]
    x = np.load(data)["image_test"][:8].reshape(8, 784).astype(np.float32) / 255
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out / "Net.onnx"), "--input", f"x={tmp_path / 'x.npy'}", "--device", "cpu",
                 "--output", str(tmp_path / "a.npz")]) == 0
    # weights.npz replaces the initial weights of the .dsl model: same outputs as the trained .onnx.
    assert main(["run", str(dsl), "--target", "Net", "--input", f"x={tmp_path / 'x.npy'}", "--device", "cpu",
                 "--weights", str(out / "weights.npz"), "--output", str(tmp_path / "b.npz")]) == 0
    a, b = npz(tmp_path / "a.npz")["logits"], npz(tmp_path / "b.npz")["logits"]
    assert np.array_equal(a, b)

    # Only the updated model (Head) moved; Feat, read by the step, is exactly as initialized.
    weights = npz(out / "weights.npz")
    net = dslc.compile(dslc.load(str(dsl)), "Net")
    initial = {t.name: onnx.numpy_helper.to_array(t) for t in net.graph.initializer}
    assert {k.split(".")[0] for k in weights} == {"Feat", "Head"}
    for k, v in weights.items():
        if k.startswith("Feat."):
            assert np.array_equal(v, initial[k]), k
        else:
            assert not np.array_equal(v, initial[k]), k


# ------------------------------------------------------------------ 2. resuming bit for bit
K = 13  # crosses the epoch boundary (8 steps per epoch)


@pytest.fixture
def reference(setup, capsys, tmp_path):
    """The uninterrupted run to K steps."""
    dsl, data, _ = setup
    code, _, err = train(capsys, dsl, data, tmp_path / "ref", "--max-steps", K)
    assert code == 0, err
    return tmp_path / "ref"


def assert_same_run(out: Path, ref: Path) -> None:
    assert same_arrays(npz(out / "weights.npz"), npz(ref / "weights.npz"))
    (state, meta), (ref_state, ref_meta) = checkpoint(out), checkpoint(ref)
    assert same_arrays(state, ref_state)
    assert meta == ref_meta and meta["global_step"] == K
    assert (out / "Net.onnx").read_bytes() == (ref / "Net.onnx").read_bytes()
    assert history(out) == history(ref)  # a resumed epoch's loss covers the whole epoch


def history(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((out / "history.json").read_text())]


@pytest.mark.parametrize("k", [3, 8])
def test_resume_after_max_steps_is_bit_identical(setup, reference, capsys, k):
    dsl, data, out = setup
    assert train(capsys, dsl, data, out, "--max-steps", k)[0] == 0
    assert checkpoint(out)[1]["global_step"] == k
    code, stdout, err = train(capsys, dsl, data, out, "--max-steps", K, "--resume")
    assert code == 0, err
    assert f"resuming from step {k}" in stdout
    assert_same_run(out, reference)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_in_process_writes_checkpoint_exits_130_and_resumes(setup, reference, capsys, monkeypatch, sig):
    dsl, data, out = setup
    monkeypatch.setattr(T, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    stop_at = random.Random().randint(1, K - 1)
    one_batch = T.Trainer._one_batch

    def counting(self, idx, state, global_step, seeds):
        if global_step + 1 == stop_at:
            os.kill(os.getpid(), sig)  # the handler only sets a flag: this step completes
        return one_batch(self, idx, state, global_step, seeds)

    monkeypatch.setattr(T.Trainer, "_one_batch", counting)
    code, _, err = train(capsys, dsl, data, out, "--max-steps", K)
    assert code == 130, err
    assert err.startswith(f"interrupted at step {stop_at}: checkpoint written to {out / T.CHECKPOINT}") and \
        err.strip().endswith("continue with --resume") and err.count("\n") == 1, err
    assert checkpoint(out)[1]["global_step"] == stop_at
    assert (out / "weights.npz").exists() == (stop_at >= 8)  # the model is exported after each epoch (8 steps)
    monkeypatch.setattr(T.Trainer, "_one_batch", one_batch)
    code, _, err = train(capsys, dsl, data, out, "--max-steps", K, "--resume")
    assert code == 0, err
    assert_same_run(out, reference)


def _subprocess(dsl, data, out, *extra) -> subprocess.Popen:
    # Checkpoints after every step, so that a signal lands anywhere: before, during, after a write.
    code = ("import sys; import dslc.runtime.trainer as t; t.CHECKPOINT_SECONDS = 0.0; from dslc.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    args = ["train", str(dsl), "--data", str(data), "--out", str(out), "--device", "cpu", *map(str, extra)]
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(out.parent))


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 60
    while not (out / T.CHECKPOINT).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


EPOCHS, LONG = 5, 120  # 5 epochs of 24 steps: long enough for a signal to land mid-run


@pytest.fixture
def long_reference(tmp_path, capsys):
    dsl = write_dsl(tmp_path / "long.dsl", epochs=EPOCHS)
    data = write_npz(tmp_path / "small.npz", n=768)
    code, _, err = train(capsys, dsl, data, tmp_path / "ref", "--max-steps", LONG)
    assert code == 0, err
    return dsl, data, tmp_path / "ref"


def _resume_and_compare(capsys, dsl, data, out, ref) -> None:
    code, _, err = train(capsys, dsl, data, out, "--max-steps", LONG, "--resume")
    assert code == 0, err
    assert same_arrays(npz(out / "weights.npz"), npz(ref / "weights.npz"))
    assert same_arrays(checkpoint(out)[0], checkpoint(ref)[0])
    assert checkpoint(out)[1] == checkpoint(ref)[1]
    assert history(out) == history(ref) and history(out)[-1]["epoch"] == EPOCHS


@pytest.mark.slow
def test_sigint_subprocess_exits_130_then_resumes_bit_identical(long_reference, capsys):
    dsl, data, ref = long_reference
    out = ref.parent / "out"
    proc = _subprocess(dsl, data, out, "--max-steps", LONG)
    _wait_for_checkpoint(proc, out)
    time.sleep(random.uniform(0, 0.5))
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished first: nothing to interrupt
        pytest.skip("the run ended before the signal")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err and err.strip().count("\n") == 0, err
    np.load(out / T.CHECKPOINT)  # a whole checkpoint
    _resume_and_compare(capsys, dsl, data, out, ref)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_bit_identical(long_reference, capsys):
    dsl, data, ref = long_reference
    out = ref.parent / "out"
    proc = _subprocess(dsl, data, out, "--max-steps", LONG)
    _wait_for_checkpoint(proc, out)
    time.sleep(random.uniform(0, 1.0))
    proc.kill()
    proc.communicate(timeout=60)
    step = checkpoint(out)[1]["global_step"]  # whatever checkpoint exists is whole
    assert 0 < step <= LONG
    _resume_and_compare(capsys, dsl, data, out, ref)


# ------------------------------------------------------------------ 3. resumes refused
@pytest.fixture
def started(setup, capsys):
    dsl, data, out = setup
    assert train(capsys, dsl, data, out, "--max-steps", 3)[0] == 0
    return dsl, data, out


@pytest.mark.parametrize("change, words", [
    (lambda dsl, data, tmp: (dsl, data, ["--batch", 16]), ["cannot resume", "batch was 32, now 16"]),
    (lambda dsl, data, tmp: (dsl, data, ["--seed", 1]), ["cannot resume", "seed was 0, now 1"]),
    (lambda dsl, data, tmp: (write_dsl(dsl, hidden=17), data, []), ["cannot resume", "the .dsl changed"]),
    (lambda dsl, data, tmp: (dsl, write_npz(tmp / "other.npz", seed=1), []), ["cannot resume", "the data was"]),
], ids=["batch", "seed", "dsl", "data"])
def test_resume_refused_naming_what_changed(started, capsys, tmp_path, change, words):
    dsl, data, out = started
    before = snapshot(out)
    dsl, data, extra = change(dsl, data, tmp_path)
    code, _, err = train(capsys, dsl, data, out, "--resume", *extra)
    assert code == 1
    one_error(err, *words)
    assert snapshot(out) == before


def test_resume_with_the_data_named_another_way(started, capsys, monkeypatch):
    dsl, data, out = started
    monkeypatch.chdir(data.parent)
    code, stdout, err = train(capsys, dsl, data.name, out, "--resume", "--max-steps", 4)
    assert code == 0, err
    assert "resuming from step 3" in stdout


def test_resume_from_a_damaged_checkpoint(started, capsys):
    dsl, data, out = started
    raw = (out / T.CHECKPOINT).read_bytes()
    (out / T.CHECKPOINT).write_bytes(raw[: len(raw) // 2])
    before = snapshot(out)
    code, _, err = train(capsys, dsl, data, out, "--resume")
    assert code == 1
    one_error(err, "cannot read the checkpoint", str(out / T.CHECKPOINT))
    assert snapshot(out) == before


def test_resume_without_checkpoint(setup, capsys):
    dsl, data, out = setup
    code, _, err = train(capsys, dsl, data, out, "--resume")
    assert code == 1
    one_error(err, "--resume: no checkpoint in", str(out))


# ------------------------------------------------------------------ 4. bad inputs
def write_idx(folder: Path, n=64, images_magic=2051, truncate=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = images_for(labels, rng)
    for prefix in ("train", "t10k"):
        for kind, array, magic in (("images-idx3", images, images_magic), ("labels-idx1", labels, 2049)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            raw = gzip.compress(header + array.tobytes())
            if truncate and kind == "images-idx3" and prefix == "train":
                raw = raw[: len(raw) // 2]
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(raw)
    return folder


def test_idx_folder_trains(setup, capsys, tmp_path):
    dsl, _, out = setup
    code, stdout, err = train(capsys, dsl, write_idx(tmp_path / "data" / "mnist").parent, out, "--epochs", 1)
    assert code == 0, err
    assert "data: " + str(tmp_path / "data" / "mnist") in stdout


def _bad_data(kind: str, tmp: Path) -> tuple[Path, list[str]]:
    if kind == "missing":
        return tmp / "nowhere", ["data path not found", str(tmp / "nowhere")]
    if kind == "truncated":
        folder = write_idx(tmp / "data", truncate=True)
        return folder, ["cannot read", str(folder / "train-images-idx3-ubyte.gz"), "truncated"]
    if kind == "magic":
        folder = write_idx(tmp / "data", images_magic=2049)
        return folder, [str(folder / "train-images-idx3-ubyte.gz"), "magic 2049, expected 2051"]
    if kind == "not_zip":
        (tmp / "bad.npz").write_text("not a zip")
        return tmp / "bad.npz", [str(tmp / "bad.npz"), "not an .npz file"]
    if kind == "no_field":
        rng = np.random.default_rng(0)
        np.savez(tmp / "xy.npz", x=rng.integers(0, 255, (64, 28, 28), dtype=np.uint8), y=np.zeros(64, np.uint8))
        return tmp / "xy.npz", [str(tmp / "xy.npz"), "no field `label`", "its fields are: x, y"]
    if kind == "label_minus_1":  # the message names the bad label, not the largest
        label = np.where(np.arange(256) % 2, 5, -1).astype(np.int64)
        return write_npz(tmp / "neg.npz", label=label), ["label -1", "outside [0, 10)"]
    if kind == "empty":
        data = write_npz(tmp / "empty.npz", image=np.zeros((0, 28, 28), np.uint8), label=np.zeros(0, np.uint8))
        return data, [str(data), "holds no examples"]
    if kind == "label_12":
        return write_npz(tmp / "l12.npz", label=np.full(256, 12, np.uint8)), ["label 12", "outside [0, 10)"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "truncated", "magic", "not_zip", "no_field", "label_12",
                                  "label_minus_1", "empty"])
def test_bad_data(setup, capsys, tmp_path, kind):
    dsl, _, out = setup
    data, words = _bad_data(kind, tmp_path)
    code, _, err = train(capsys, dsl, data, out)
    assert code == 1, err
    one_error(err, *words)
    assert not (out / T.CHECKPOINT).exists()


def test_field_that_does_not_fit_the_step_input(tmp_path, capsys):
    dsl = write_dsl(tmp_path / "noflat.dsl", pipes="scale(0, 1)")
    code, _, err = train(capsys, dsl, write_npz(tmp_path / "d.npz"), tmp_path / "out")
    assert code == 1
    one_error(err, "noflat.dsl:", "step train_head: input `image` expects f32[N, 784]",
              "field `image` gives float32[N, 28, 28]", "hint:", "flatten")


@pytest.mark.parametrize("optimizer, loss, first_ok", [
    ("adam(lr=0.01)", "mean(log(Head(Feat(image)) - 10))", False),  # NaN at once
    ("sgd(lr=1000000.0)", "mean(square(Head(Feat(image))))", True),  # overflows after a few steps
], ids=["log", "lr"])
def test_nan_loss_stops_and_keeps_the_checkpoint(tmp_path, capsys, optimizer, loss, first_ok):
    dsl = write_dsl(tmp_path / "nan.dsl", optimizer=optimizer, loss=loss)
    data, out = write_npz(tmp_path / "d.npz"), tmp_path / "out"
    code, _, err = train(capsys, dsl, data, out, "--max-steps", 1)
    assert (code == 0) == first_ok, err
    if first_ok:  # a good first step: its checkpoint must survive the NaN
        before = snapshot(out)
        code, _, err = train(capsys, dsl, data, out, "--resume")
    assert code == 1, err
    one_error(err, "step train_head: loss became", "at global step", "stopped before saving it")
    if first_ok:
        assert snapshot(out) == before
        assert checkpoint(out)[1]["global_step"] == 1
        assert all(np.all(np.isfinite(v)) for v in checkpoint(out)[0].values())


def test_unwritable_out_under_a_file(setup, capsys, tmp_path):
    dsl, data, _ = setup
    (tmp_path / "file").write_text("x")
    code, _, err = train(capsys, dsl, data, tmp_path / "file" / "out")
    assert code == 1
    one_error(err, "cannot write to the output folder", str(tmp_path / "file" / "out"), "--out")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_out_read_only(setup, capsys, tmp_path):
    dsl, data, _ = setup
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        code, _, err = train(capsys, dsl, data, tmp_path / "ro")
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert code == 1
    one_error(err, "cannot write to the output folder", str(tmp_path / "ro"))


# ------------------------------------------------------------------ 6. the specs on real data
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="no ../shared/data")
def test_convnet_on_real_mnist(capsys, tmp_path):
    code, stdout, err = train(capsys, ROOT / "specs" / "convnet.dsl", SHARED_DATA, tmp_path / "out", "--max-steps", 30)
    assert code == 0, err
    assert "60,000 examples" in stdout and "wrote" in stdout
    assert checkpoint(tmp_path / "out")[1]["global_step"] == 30
    assert all(np.all(np.isfinite(v)) for v in npz(tmp_path / "out" / "weights.npz").values())


@pytest.mark.slow
def test_acgan_two_steps_updates_both_models_without_the_judge(capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["train", str(ROOT / "specs" / "acgan.dsl"), "--out", str(out), "--device", "cpu",
                 "--max-steps", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    state, meta = checkpoint(out)
    assert meta["global_step"] == 2
    prog = dslc.load(str(ROOT / "specs" / "acgan.dsl"))
    for model in ("Generator", "Discriminator"):
        initial = {t.name: onnx.numpy_helper.to_array(t) for t in dslc.compile(prog, model).graph.initializer}
        moved = [k for k, v in initial.items() if not np.array_equal(state[f"state/{k}"], v)]
        assert moved, f"{model}'s weights did not change"
    assert not any(p.name.startswith("judge-") for p in out.iterdir())  # no epoch end: no judge trained
    assert (out / "Generator.onnx").is_file()
