"""Issue 19, "Checkpoints, data, export": damaged checkpoints, data and output folders. Every case
exits 1 with one message that says what is wrong, no traceback, and no file damaged; a fixed-seed
sample of bench/fuzz_checkpoints.py (damaged copies of a real checkpoint) finds no traceback."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import dslc
from dslc.cli import main
from dslc.runtime import trainer as T
from test_distributed import HAVE_MPI, _setup as mpi_setup, _train as mpi_train
from test_train_cli import checkpoint, npz, one_error, snapshot, train, write_dsl, write_npz

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import fuzz_checkpoints as F  # noqa: E402

STOP = 9  # steps of the saved run: epoch 1 (8 batches of 32) done, one batch into epoch 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run stopped mid-epoch 2, made once: (spec, data, its --out folder)."""
    tmp = tmp_path_factory.mktemp("saved")
    dsl, data = write_dsl(tmp / "tiny.dsl", hidden=4), write_npz(tmp / "small.npz")
    code = main(["train", str(dsl), "--data", str(data), "--out", str(tmp / "out"), "--device", "cpu",
                 "--max-steps", str(STOP)])
    assert code == 0
    return dsl, data, tmp / "out"


@pytest.fixture
def run(saved, tmp_path):
    """A copy of the saved run's folder, to damage."""
    dsl, data, out = saved
    shutil.copytree(out, tmp_path / "out")
    return dsl, data, tmp_path / "out"


def refused(capsys, dsl, data, out, *words, extra=()) -> str:
    """`train --resume` exits 1 with one error naming every word, and leaves --out as it was."""
    before = snapshot(out)
    code, _, err = train(capsys, dsl, data, out, "--resume", *extra)
    assert code == 1, err
    one_error(err, *words)
    assert snapshot(out) == before
    return err


def rewrite(out: Path, meta=None, **state) -> None:
    """The checkpoint with its meta record replaced and state arrays replaced (None: removed)."""
    arrays, old = checkpoint(out)
    for k, v in state.items():
        arrays.pop(f"state/{k}", None) if v is None else arrays.__setitem__(f"state/{k}", v)
    raw = json.dumps(old if meta is None else meta(old)).encode()
    (out / T.CHECKPOINT).write_bytes(F.npz_bytes({**arrays, "meta": np.frombuffer(raw, np.uint8)}))


def edit(**fields):
    return lambda meta: {**meta, **fields}


# ------------------------------------------------------------------ 1. tampered checkpoints
@pytest.mark.parametrize("meta, words", [
    (lambda m: [], ["`meta` record is a JSON list, not an object"]),
    (edit(settings="mnist"), ['`settings` in its `meta` record is "mnist", not an object']),
    (lambda m: {k: v for k, v in m.items() if k != "settings"}, ["`meta` record has no `settings`"]),
    (edit(global_step="abc"), ['`global_step` in its `meta` record is "abc", not a count']),
    (edit(global_step=-1), ["`global_step` in its `meta` record is -1, not a count"]),
    (edit(epoch=True), ["`epoch` in its `meta` record is true, not a count"]),
    (edit(sums=[1, 2]), ["`sums` in its `meta` record is not an object of finite numbers"]),
    (edit(sums={"loss": "x"}), ["`sums` in its `meta` record is not an object of finite numbers"]),
    (edit(sums={"evil": 1.0}), ["running sums name `evil`, which no step reports"]),
    (edit(epoch=10**9), ["global step 9 is not epoch 1000000000, batch 1 of 8 batches"]),
    (edit(batch_index=10**9), ["global step 9 is not epoch 1, batch 1000000000 of 8 batches"]),
    (edit(global_step=10**9, epoch=10**9 // 8, batch_index=0), ["cannot resume", "in epoch 125000001, beyond the 2"]),
    (edit(extra=1), ["`meta` record holds `extra`, which dslc train does not write"]),
], ids=["meta-list", "settings-str", "settings-missing", "step-str", "step-negative", "epoch-bool",
        "sums-list", "sums-str", "sums-unknown", "epoch-huge", "batch-huge", "past-the-end", "extra-key"])
def test_tampered_meta(run, capsys, meta, words):
    dsl, data, out = run
    rewrite(out, meta)
    refused(capsys, dsl, data, out, "checkpoint", str(out / T.CHECKPOINT), *words)


@pytest.mark.parametrize("state, words", [
    ({"Head.logits.weight": np.zeros((4, 3), np.float32)}, ["`Head.logits.weight` is float32[4, 3]",
                                                            "expects float32[4, 10]"]),
    ({"Head.logits.weight": np.zeros((4, 10), np.float64)}, ["`Head.logits.weight` is float64[4, 10]"]),
    ({"Head.logits.weight": None}, ["it lacks `Head.logits.weight`"]),
    ({"Head.evil.weight": np.zeros((4, 10), np.float32)}, ["it holds `Head.evil.weight`, which no step uses"]),
    ({"Head.logits.bias": np.full(10, np.nan, np.float32)}, ["`Head.logits.bias` holds NaN or infinite values"]),
], ids=["shape", "dtype", "missing", "extra", "nan"])
def test_tampered_state(run, capsys, state, words):
    dsl, data, out = run
    rewrite(out, **state)
    refused(capsys, dsl, data, out, *words)


def test_an_extra_state_array_never_reaches_the_weights(run, capsys):
    dsl, data, out = run
    rewrite(out, **{"Head.evil.weight": np.ones((4, 10), np.float32)})
    refused(capsys, dsl, data, out, "Head.evil.weight", extra=("--max-steps", STOP))
    assert "Head.evil.weight" not in npz(out / "weights.npz")


@pytest.mark.parametrize("content, words", [
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), ["not an .npz archive"]),
    (b"", ["not an .npz archive"]),
    ("pickled", ["holds Python objects, which dslc never unpickles"]),
    ("junk member", ["it holds `junk`, which dslc train does not write"]),
    ("meta int64", ["`meta` record is int64[", "not JSON text"]),
], ids=["random-bytes", "empty", "pickled", "junk-member", "meta-int64"])
def test_unreadable_checkpoints(run, capsys, content, words):
    dsl, data, out = run
    arrays, meta = checkpoint(out)
    raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    if content == "pickled":
        content = F.npz_bytes({**arrays, "meta": raw, "state/Head.logits.bias": np.array([1, "x"], object)})
    elif content == "junk member":
        content = F.npz_bytes({**arrays, "meta": raw, "junk": np.zeros(3)})
    elif content == "meta int64":
        content = F.npz_bytes({**arrays, "meta": raw.astype(np.int64)})
    (out / T.CHECKPOINT).write_bytes(content)
    err = refused(capsys, dsl, data, out, "checkpoint", *words)
    assert "allow_pickle" not in err and "unsafely" not in err


def test_a_checkpoint_that_is_not_a_file(run, capsys):
    dsl, data, out = run
    (out / T.CHECKPOINT).unlink()
    os.mkfifo(out / T.CHECKPOINT)
    refused(capsys, dsl, data, out, f"cannot read the checkpoint {out / T.CHECKPOINT}: it is not a regular file (a FIFO)")


@pytest.mark.parametrize("rows, words", [
    ([{"steps": 8, "loss": 1.0}], ["history.json is damaged: row 1 has no epoch number", "delete it"]),
    ([{"epoch": "1"}], ["row 1 has no epoch number"]),
    ({"epoch": 1}, ["not a training history"]),
], ids=["no-epoch", "epoch-str", "not-a-list"])
def test_damaged_history(run, capsys, rows, words):
    dsl, data, out = run
    (out / "history.json").write_text(json.dumps(rows))
    refused(capsys, dsl, data, out, *words)


def test_fuzzed_checkpoints_sample():
    """150 fixed cases of bench/fuzz_checkpoints.py (the long run: --count 3000)."""
    result = F.fuzz(150, seed=19, log=lambda *_: None)
    assert not result["failures"], result["failures"][:3]
    assert result["refused"] > 120  # most damage is refused; the rest is harmless (exit 0)


# ------------------------------------------------------------------ 2, 3. damaged data
SPEC = F.SPEC  # `label = label |> int64`: a field named after the array it reads


def _data(kind: str, tmp: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    image, label = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64).astype(np.uint8)
    test = {"image_test": image[:16], "label_test": label[:16]}
    if kind == "idx-overflow":
        folder = tmp / "idx"
        folder.mkdir()
        header = b"".join(v.to_bytes(4, "big") for v in (2051, 2**31, 2**31, 4))
        for prefix in ("train", "t10k"):
            (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
            (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\0"))
        return folder, ["truncated or corrupt", "header says [2147483648, 2147483648, 4]"]
    arrays = {"image": image, "label": label, **test}
    words = {"image-0d": ["the array `image` is a single value, not one entry per example"],
             "image-str": ["the array `image` holds text (str32), not real numbers"],
             "image-complex": ["the array `image` holds complex numbers (complex128), not real numbers"],
             "no-label": ["the training split of", "has no field `label`"],
             "test-label-99": ["the test field `label` holds the label 99, outside [0, 10)"],
             "test-complex": ["the array `image_test` holds complex numbers"]}[kind]
    if kind == "image-0d":
        arrays["image"] = np.array(5, np.uint8)
    elif kind == "image-str":
        arrays["image"] = np.full((64, 28, 28), "a")
    elif kind == "image-complex":
        arrays["image"] = image + 1j
    elif kind == "no-label":
        del arrays["label"]
    elif kind == "test-label-99":
        arrays["label_test"] = np.full(16, 99, np.uint8)
    elif kind == "test-complex":
        arrays["image_test"] = image[:16] + 0j
    path = tmp / f"{kind}.npz"
    np.savez(path, **arrays)
    return path, [*words, str(path)] if kind != "test-label-99" else words


@pytest.mark.parametrize("kind", ["idx-overflow", "image-0d", "image-str", "image-complex", "no-label",
                                  "test-label-99", "test-complex"])
def test_damaged_data(tmp_path, capsys, kind):
    (tmp_path / "m.dsl").write_text(SPEC)
    data, words = _data(kind, tmp_path)
    code, _, err = train(capsys, tmp_path / "m.dsl", data, tmp_path / "out")
    assert code == 1, err
    one_error(err, *words)
    assert not (tmp_path / "out" / T.CHECKPOINT).exists()


def test_a_one_hot_label_out_of_range_deep_in_the_split_is_found_before_training(tmp_path, capsys):
    spec = SPEC.replace("label |> int64", "label |> one_hot(10)").replace("label: i64[N]", "label: f32[N, 10]") \
        .replace("sparse_categorical_crossentropy(Net(image), label, from_logits=true)",
                 "categorical_crossentropy(softmax(Net(image)), label)")
    (tmp_path / "m.dsl").write_text(spec)
    label = np.zeros(64, np.uint8)
    label[50] = 12  # in the second batch: one_hot alone would find it only there, after a checkpoint
    data = write_npz(tmp_path / "d.npz", n=64, label=label)
    code, _, err = train(capsys, tmp_path / "m.dsl", data, tmp_path / "out")
    assert code == 1, err
    one_error(err, "the field `label`: a label is 12, outside the 10 classes one_hot(10) makes")
    assert not (tmp_path / "out" / T.CHECKPOINT).exists()


def test_special_files_as_data(tmp_path, capsys):
    (tmp_path / "m.dsl").write_text(SPEC)
    os.mkfifo(tmp_path / "fifo")
    for data, kind in ((tmp_path / "fifo", "(a FIFO)"), ("/dev/zero", "(a device)")):
        code, _, err = train(capsys, tmp_path / "m.dsl", data, tmp_path / "out")
        assert code == 1, err
        one_error(err, f"data path {data}: it is not a regular file {kind}")


# ------------------------------------------------------------------ 4. export-web
@pytest.fixture
def ort_dist(tmp_path):
    from dslc.web.export import ORT_FILES
    dist = tmp_path / "dist"
    dist.mkdir()
    for f in ORT_FILES:
        (dist / f).write_text(f"// {f}\n")
    return dist


def test_export_web_replaces_planted_links_and_never_writes_through_them(tmp_path, capsys, ort_dist):
    (tmp_path / "m.dsl").write_text(SPEC)
    site, outside = tmp_path / "site", tmp_path / "outside"
    (site / "ort").parent.mkdir()
    outside.mkdir()
    planted = ["index.html", "train_step.onnx", "manifest.json", "state.bin"]
    for name in planted:
        (outside / name).write_text("precious")
        (site / name).symlink_to(outside / name)
    (outside / "ort").mkdir()
    (site / "ort").symlink_to(outside / "ort")
    code = main(["export-web", str(tmp_path / "m.dsl"), "--out", str(site), "--ort-dist", str(ort_dist)])
    assert code == 0, capsys.readouterr().err
    assert all((outside / name).read_text() == "precious" for name in planted)
    assert not any((outside / "ort").iterdir())
    assert not any(p.is_symlink() for p in site.rglob("*"))
    assert json.loads((site / "manifest.json").read_text())["step"] == "train_net"
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(p.name for p in ort_dist.iterdir())


def test_export_web_checks_onnxruntime_web_before_making_the_folder(tmp_path, capsys, ort_dist):
    (tmp_path / "m.dsl").write_text(SPEC)
    next(ort_dist.iterdir()).unlink()
    code = main(["export-web", str(tmp_path / "m.dsl"), "--out", str(tmp_path / "site"), "--ort-dist", str(ort_dist)])
    one_error(capsys.readouterr().err, "lacks onnxruntime-web's", "--ort-dist")
    assert code == 1 and not (tmp_path / "site").exists()


# ------------------------------------------------------------------ 5. NaN hint, 6. stale temp files
def test_nan_before_any_checkpoint_says_there_is_none(tmp_path, capsys):
    dsl = write_dsl(tmp_path / "nan.dsl", loss="mean(log(Head(Feat(image)) - 10))")
    out = tmp_path / "out"
    code, _, err = train(capsys, dsl, write_npz(tmp_path / "d.npz", n=64), out)
    assert code == 1
    one_error(err, "loss became", "no checkpoint was written yet")
    assert "last good checkpoint" not in err and not (out / T.CHECKPOINT).exists()


def test_nan_after_a_checkpoint_names_it(run, capsys, monkeypatch):
    dsl, data, out = run
    one_batch = T.Trainer._one_batch

    def poisoned(self, idx, state, global_step, seeds):
        state["Head.logits.bias"] = np.full(10, np.inf, np.float32)
        return one_batch(self, idx, state, global_step, seeds)
    monkeypatch.setattr(T.Trainer, "_one_batch", poisoned)
    err = refused(capsys, dsl, data, out)
    one_error(err, f"the last good checkpoint is {out / T.CHECKPOINT} (global step {STOP})")


def test_stale_temp_files_of_a_killed_write_are_removed(run, capsys):
    dsl, data, out = run
    stale = [".checkpoint.npz.k3j_9x2a.tmp", ".weights.npz.abcdefgh.tmp", ".history.json.12345678.tmp",
             ".Net.onnx.zzzzzzzz.tmp"]
    kept = [".notes.txt.abcdefgh.tmp", "mine.tmp", ".checkpoint.npz.short.tmp"]
    for name in stale + kept:
        (out / name).write_bytes(b"half a file")
    fd, real = tempfile.mkstemp(prefix=f".{T.CHECKPOINT}.", suffix=".tmp", dir=out)  # as atomic_write names them
    os.close(fd)
    stale.append(Path(real).name)
    code, _, err = train(capsys, dsl, data, out, "--resume", "--max-steps", STOP)
    assert code == 0, err
    assert not any((out / name).exists() for name in stale)
    assert all((out / name).exists() for name in kept)


# ------------------------------------------------------------------ 7. a rank killed under --workers 2
def test_rank_watch_names_a_rank_killed_by_a_signal():
    """The wrapper each rank of --workers runs under (works without MPI)."""
    watch = ROOT / "dslc" / "runtime" / "rank_watch.py"
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    res = subprocess.run([sys.executable, str(watch), sys.executable, "-c", kill], capture_output=True, text=True,
                         env={**os.environ, "PMI_RANK": "1"}, timeout=60)
    assert res.returncode == 1
    assert "error: rank 1 (pid" in res.stderr and "killed by signal 9 (SIGKILL)" in res.stderr
    assert "--resume" in res.stderr
    ok = subprocess.run([sys.executable, str(watch), sys.executable, "-c", "raise SystemExit(3)"], timeout=60)
    assert ok.returncode == 3  # other exits pass through as they are


@pytest.mark.skipif(not HAVE_MPI, reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"')
def test_a_rank_killed_under_two_workers_is_named(tmp_path):
    spec, data = mpi_setup(tmp_path)
    out = tmp_path / "run"
    res = mpi_train(spec, data, out, "--workers", "2", "--collective-timeout", "3",
                    env={"DSLC_TEST_FAULT": "1:9:kill"}, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "rank 1 (pid" in res.stderr and "killed by signal 9 (SIGKILL)" in res.stderr, res.stderr
    assert "rank 1 did not answer" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(bytes(np.load(out / "checkpoint.npz")["meta"]).decode())["global_step"] == 7


# ------------------------------------------------------------------ 8. minor
def test_seed_beyond_int64(tmp_path, capsys):
    dsl, data = write_dsl(tmp_path / "t.dsl"), write_npz(tmp_path / "d.npz", n=64)
    with pytest.raises(SystemExit) as e:  # a usage error, as `compile --seed` gives
        main(["train", str(dsl), "--data", str(data), "--out", str(tmp_path / "out"), "--seed", str(2**70)])
    assert e.value.code == 2 and f"must be from 0 to {2**63 - 1}" in capsys.readouterr().err
    with pytest.raises(dslc.DslError, match=r"--seed must be from 0 to 9223372036854775807"):
        dslc.train(str(dsl), data=str(data), out=str(tmp_path / "out"), seed=2**70)
    assert not (tmp_path / "out").exists()


def test_non_utf8_source_is_located_by_line_and_column(tmp_path, capsys):
    src = tmp_path / "bad.dsl"
    src.write_bytes("model M(x: f32[N, 4]) -> y {\n    y = x  # é ".encode() + b"\xff\n}\n")  # é: 2 bytes, 1 column
    code = main(["check", str(src)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"{src}:2:16: error: the file is not UTF-8 text: invalid byte 0xff"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("imp", ["link/o.dsl", "link/missing.dsl", "link/sub/../o.dsl", "dangling/x.dsl"])
def test_import_through_a_symlinked_folder_out_of_the_root(tmp_path, capsys, imp):
    proj, outside = tmp_path / "proj", tmp_path / "outside"
    proj.mkdir()
    (outside / "sub").mkdir(parents=True)
    (outside / "o.dsl").write_text("fn g(x) { return x }\n")
    (proj / "link").symlink_to(outside)
    (proj / "dangling").symlink_to(tmp_path / "nowhere")
    (proj / "main.dsl").write_text(f'import "{imp}"\nmodel M(x: f32[N, 4]) -> y {{ y = x }}\n')
    code = main(["check", str(proj / "main.dsl")])
    err = capsys.readouterr().err
    assert code == 1 and "it is outside the project root" in err, err
