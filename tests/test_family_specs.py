"""Issue 21's model families as spec files, on a small slice of their real data through `dslc train`:
specs/charlm.dsl (a causal transformer) and specs/lstm.dsl (an LSTM) on the start of CPython's
documentation, specs/resnet.dsl (a ResNet) on scikit-learn's 8x8 digits as PNG folders. Each trains
a few steps: the loss falls and the evaluation is a sensible number. Then every twin of
bench/twins.py (these three, specs/tabular.dsl and specs/digits.dsl) against real dslc steps
from the same weights and batches (skipped without torch; marked slow)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data_formats import write_digits  # noqa: E402
from test_train_cli import ROOT, train  # noqa: E402
from test_training_features import write_topics  # noqa: E402

SPECS = ROOT / "specs"


def history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    # 30,000 characters: 27,000 to train on (the last tenth held out), a dozen or so steps an epoch
    return write_topics(tmp_path_factory.mktemp("text") / "topics.txt", 30_000)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("images") / "digits", limit=400)


def falls(losses: list[float]) -> bool:
    """The last three steps' mean loss below the first three's."""
    return float(np.mean(losses[-3:])) < float(np.mean(losses[:3]))


@pytest.mark.parametrize("spec,seq,batch", [("charlm.dsl", 64, 32), ("lstm.dsl", 32, 64)])
def test_character_models_learn_the_text(tmp_path, topics, capsys, spec, seq, batch):
    out = tmp_path / "out"
    code, stdout, err = train(capsys, SPECS / spec, topics, out, "--epochs", 1)
    assert code == 0, err
    vocabulary = json.loads((out / "vocabulary.json").read_text(encoding="utf-8"))
    (row,) = history(out)
    windows = (27_000 - (seq + 1)) // seq + 1  # the training text's windows of seq (and the one after), side by side
    assert row["steps"] == math.ceil(windows / batch), row["steps"]
    assert falls(row["step_loss"]), row["step_loss"]
    # better than guessing uniformly among the text's characters, worse than knowing them
    assert 1.0 < row["val_bits_per_character"] < math.log2(len(vocabulary)), row["val_bits_per_character"]
    assert "wrote" in stdout


def test_resnet_learns_the_digits(tmp_path, digits, capsys):
    out = tmp_path / "out"
    code, stdout, err = train(capsys, SPECS / "resnet.dsl", digits, out, "--epochs", 3)
    assert code == 0, err
    rows = history(out)
    losses = [x for r in rows for x in r["step_loss"]]
    assert rows[-1]["steps"] == 3 * 12 == len(losses)  # 400 train images, 40 held out: 360 in batches of 32
    assert falls(losses), losses
    assert rows[-1]["loss"] < rows[0]["loss"]
    # 10 classes: a tenth is guessing; evaluation reads the batch norms' moving statistics (momentum 0.9)
    # (36 steps at lr 0.001 gave 59% test, 60% validation here)
    assert 0.3 < rows[-1]["test_accuracy"] <= 1 and 0.3 < rows[-1]["val_accuracy"] <= 1, rows[-1]
    assert (out / "DigitsResNet.onnx").is_file() and (out / "DigitsResNet.best.onnx").is_file()


# ------------------------------------------------------------------ bench/twins.py: one step from the same weights
TWINS = ["wine", "diabetes", "digits", "resnet", "lstm", "charlm"]


@pytest.mark.slow  # 19 s for the six on a quiet machine, 75 s on a busy one: each sets up dslc's trainer
@pytest.mark.parametrize("case", TWINS)
def test_twin_takes_the_same_step(tmp_path, topics, digits, case):
    """The PyTorch twin and dslc's compiled step, from dslc's initial weights, on dslc's first batch:
    the same loss (1e-5 relative), and again on the second batch after one update each; then every
    weight and batch-norm statistic agrees (1e-4 of its largest value), and dslc's trainer and the
    twin evaluate those weights alike (the figure bench/twins.py compares)."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "bench"))
    import twins
    c = twins.CASES[case]
    if c.data == "digits":
        data = digits
    elif c.data == "topics.txt":
        data = topics
    else:
        data = twins.write_data(tmp_path / "data", c)
    ok, said = twins.check(c, data, tmp_path)
    assert ok, said
