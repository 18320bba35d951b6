"""Training output: the per-epoch summary line, the progress bar (silent off a terminal), history.json."""
from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest

from dslc.diagnostics import DslError
from dslc.runtime.progress import EpochProgress, epoch_line, read_history, write_history


def test_epoch_line():
    metrics = {"loss": 0.07123, "test_accuracy": np.float32(0.98712), "epoch": 2, "seconds": 38.2,
               "step_loss": [0.1, 0.05]}
    assert (epoch_line(2, 5, metrics, 38.2, steps=4584)
            == "epoch 2/5  loss 0.0712  test_accuracy 0.9871  (38.2 s, 120 steps/s)")
    assert epoch_line(1, 1, {}, 2.0) == "epoch 1/1  (2.0 s)"
    assert epoch_line(1, 3, {"kl": 2e-5, "n": 7}, 4.0, steps=6) == \
        "epoch 1/3  kl 2e-05  n 7  (4.0 s, 1.5 steps/s)"


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_silent_off_a_terminal(capsys):
    bar = EpochProgress(10, 1, 3)  # pytest captures stdout: not a terminal
    assert not bar.enabled
    for _ in range(10):
        bar.update(1, loss=0.5)
    bar.close()
    assert bar.steps == 10 and bar.metrics == {"loss": 0.5} and bar.seconds > 0
    assert capsys.readouterr() == ("", "")
    quiet = io.StringIO()
    with EpochProgress(3, 1, 1, file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_progress_on_a_terminal_shows_metrics():
    out = FakeTerminal()
    with EpochProgress(4, 2, 5, file=out) as bar:
        assert bar.enabled
        bar.update(2, loss=0.25)
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        bar.update(2, loss=0.125)
    text = out.getvalue()
    assert "epoch 2/5" in text and "loss 0.1250" in text and "step/s" in text


def test_history_round_trips(tmp_path):
    history = [{"epoch": 1, "loss": 0.5, "test_accuracy": 0.9, "step_loss": [0.7, 0.3]},
               {"epoch": 2, "loss": np.float32(0.25), "test_accuracy": np.float64(0.95),
                "step_loss": np.array([0.2, 0.3], np.float32)}]
    path = write_history(tmp_path / "run" / "history.json", history)
    assert sorted(p.name for p in path.parent.iterdir()) == ["history.json"]  # no temp file left
    back = read_history(path)
    assert back[0] == history[0]
    assert back[1]["loss"] == 0.25 and back[1]["step_loss"] == pytest.approx([0.2, 0.3])
    write_history(path, [{"epoch": 1, "loss": math.nan}])  # JSON has no NaN: null instead
    assert read_history(path) == [{"epoch": 1, "loss": None}]


def test_read_history_errors(tmp_path):
    with pytest.raises(DslError, match="history file not found"):
        read_history(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DslError, match="cannot read training history"):
        read_history(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"loss": 1}')
    with pytest.raises(DslError, match="not a training history"):
        read_history(tmp_path / "obj.json")
