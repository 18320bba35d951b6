"""Data-parallel training over MPI (`dslc train --workers K`): K=2 follows K=1 on a model without
random ops, a dropout model trains, a rank that dies or hangs stops every rank with a message naming
it, and the last checkpoint resumes with K=1. The MPI runs need mpi4py and mpiexec
(`pip install -e ".[mpi]"`); the others run everywhere."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dslc import cli
from dslc.runtime import distributed as D

ROOT = Path(__file__).resolve().parents[1]
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and D.find_mpiexec() is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"')

MODEL = """
model Net(image: f32[N, 1, 8, 8]) -> logits {
    conv   = conv2d(image, 4, kernel=3, padding=same) |> relu
    hidden = dense(flatten(max_pool2d(conv, 2)), 16) |> relu
    logits = dense(DROP, 10)
}

step train_net(image: f32[N, 1, 8, 8], label: i64[N]) updates Net using adam(lr=0.01) {
    minimize sparse_categorical_crossentropy(Net(image), label, from_logits=true)
}

train fit {
    data     = mnist
    image    = image |> scale(0, 1) |> channels_first
    batch    = 10
    epochs   = 2
    steps    = [train_net(image, label)]
    evaluate = accuracy(Net(image), label)
}
"""


def _setup(tmp_path: Path, dropout: bool = False) -> tuple[Path, Path]:
    spec = tmp_path / "m.dsl"
    spec.write_text(MODEL.replace("DROP", "dropout(hidden, 0.3)" if dropout else "hidden"))
    r = np.random.default_rng(0)
    templates = r.integers(0, 256, (10, 8, 8))

    def images(labels):  # a noisy picture of its class: learnable
        return (0.7 * templates[labels] + 0.3 * r.integers(0, 256, (len(labels), 8, 8))).astype(np.uint8)
    label, label_test = r.integers(0, 10, 64).astype(np.uint8), r.integers(0, 10, 20).astype(np.uint8)
    data = tmp_path / "d.npz"  # 64 examples: batch 7 leaves a last batch of 1 (an empty shard at K=2)
    np.savez(data, image=images(label), label=label, image_test=images(label_test), label_test=label_test)
    return spec, data


def _train(spec, data, out, *extra, env=None, timeout=60, launcher=()):
    cmd = [*launcher, sys.executable, "-m", "dslc.cli", "train", str(spec), "--data", str(data), "--out", str(out),
           *extra]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout)


def _weights(out: Path) -> dict:
    with np.load(out / "weights.npz") as z:
        return {k: z[k] for k in z.files}


def _state(out: Path) -> dict:
    with np.load(out / "checkpoint.npz") as z:
        return {k: z[k] for k in z.files if k.startswith("state/")}


# ------------------------------------------------------------------ everywhere
def test_shards_split_the_batch_evenly():
    assert [D.shard(7, r, 2) for r in range(2)] == [(0, 4), (4, 7)]
    assert [D.shard(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [D.shard(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # rank 1 adds zeros
    data = {"image": np.zeros((7, 3)), "n": np.array(14, np.int64)}
    mine, n, total = D._shard_data(data, 1, 2)
    assert (n, total, mine["image"].shape, int(mine["n"])) == (3, 7, (3, 3), 6)  # 2 * batch -> 2 * shard


def test_rank_seed_is_a_function_of_seed_and_rank():
    assert int(D.rank_seed(123, 0)) == 123  # rank 0 draws what a K=1 run draws
    assert int(D.rank_seed(123, 1)) == int(D.rank_seed(123, 1)) != int(D.rank_seed(123, 2)) != 123


def test_workers_without_mpi_is_a_clear_error(tmp_path, monkeypatch, capsys):
    spec, data = _setup(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mpi4py" else real(name, *a))
    for var in D._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["train", str(spec), "--data", str(data), "--out", str(tmp_path / "o"), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "needs mpi4py" in err and 'pip install -e ".[mpi]"' in err


# ------------------------------------------------------------------ under MPI
@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("batch", [10, 7])
def test_two_workers_follow_one(tmp_path, batch):
    """No random ops: K=2 ends with K=1's weights, optimizer state, losses and accuracies."""
    spec, data = _setup(tmp_path)
    one = _train(spec, data, tmp_path / "k1", "--batch", str(batch))
    two = _train(spec, data, tmp_path / "k2", "--batch", str(batch), "--workers", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr + two.stdout
    assert two.stdout.count("wrote") == 1  # rank 0 alone prints and writes
    w1, w2 = _weights(tmp_path / "k1"), _weights(tmp_path / "k2")
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    s1, s2 = _state(tmp_path / "k1"), _state(tmp_path / "k2")
    assert s1.keys() == s2.keys()
    for k in s1:
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-4, atol=1e-7, err_msg=k)
    h1 = json.loads((tmp_path / "k1" / "history.json").read_text())
    h2 = json.loads((tmp_path / "k2" / "history.json").read_text())
    assert [h["steps"] for h in h1] == [h["steps"] for h in h2]
    np.testing.assert_allclose([h["loss"] for h in h2], [h["loss"] for h in h1], rtol=1e-5)
    assert [h["test_accuracy"] for h in h2] == [h["test_accuracy"] for h in h1]


@needs_mpi
@pytest.mark.slow
def test_dropout_model_trains_with_two_workers(tmp_path):
    """Dropout draws from (seed, step, position in the shard), rank 1 with a seed of its own: the masks,
    so the weights, differ from K=1's; the training works all the same."""
    spec, data = _setup(tmp_path, dropout=True)
    # Under the user's own mpiexec (no --workers): dslc finds the MPI world by itself.
    two = _train(spec, data, tmp_path / "k2", "--epochs", "8", launcher=(D.find_mpiexec(), "-n", "2"))
    assert two.returncode == 0, two.stderr + two.stdout
    losses = [h["loss"] for h in json.loads((tmp_path / "k2" / "history.json").read_text())]
    assert losses[-1] < losses[0] * 0.8, losses
    assert two.stdout.count("wrote") == 1
    one = _train(spec, data, tmp_path / "k1", "--epochs", "8")
    assert one.returncode == 0, one.stderr
    w1, w2 = _weights(tmp_path / "k1"), _weights(tmp_path / "k2")
    assert not np.allclose(w1["Net.logits.weight"], w2["Net.logits.weight"], atol=1e-4)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_a_failed_rank_stops_all_and_the_checkpoint_resumes(tmp_path, fault):
    """Rank 1 dies (or hangs) at global step 10, in epoch 2: rank 0 names it within the timeout and
    every process ends; the epoch-1 checkpoint is intact and --resume with K=1 finishes the run."""
    spec, data = _setup(tmp_path)
    out = tmp_path / "run"
    start = time.monotonic()
    bad = _train(spec, data, out, "--workers", "2", "--collective-timeout", "3",
                 env={"DSLC_TEST_FAULT": f"1:9:{fault}"}, timeout=60)
    assert bad.returncode != 0
    assert time.monotonic() - start < 40
    assert "rank 1 did not answer" in bad.stderr and "--resume" in bad.stderr, bad.stderr
    meta = json.loads(bytes(np.load(out / "checkpoint.npz")["meta"]).decode())
    assert (meta["global_step"], meta["epoch"]) == (7, 1)
    resumed = _train(spec, data, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 7" in resumed.stdout
    assert _train(spec, data, tmp_path / "whole").returncode == 0
    w, r = _weights(tmp_path / "whole"), _weights(out)
    for k in w:
        np.testing.assert_allclose(r[k], w[k], rtol=1e-5, atol=1e-6, err_msg=k)
