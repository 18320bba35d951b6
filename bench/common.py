"""What the benchmarks share: silencing the contenders alike while they are timed, timing them
interleaved, and the PyTorch twin of the convnet they compare against."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# The onnxruntime-training venv's python (bench/README.md): `--ortt-python`, else $ORTT_PYTHON, else
# the venv in the user's cache folder (as dslc's npm cache), a path of no one machine.
DEFAULT_ORTT_PYTHON = os.environ.get("ORTT_PYTHON") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dslc" / "venv-ortt" / "bin" / "python")


@contextlib.contextmanager
def quiet():
    """Silence everything written to fd 1 and 2 (onnxruntime and torch print warnings)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def torch_convnet():
    """ConvNet of specs/convnet.dsl in PyTorch (dropout 0.25; call .eval() or .train())."""
    from torch import nn

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(64 * 7 * 7, 128)
            self.drop = nn.Dropout(0.25)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.pool(self.conv1(x).relu())
            x = self.pool(self.conv2(x).relu())
            x = self.fc1(x.flatten(1)).relu()
            return self.fc2(self.drop(x))

    return ConvNet()


def interleaved_ms(contenders: dict, rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each contender (a callable), interleaved round by round (the machine's
    speed drifts): each round one untimed call, then `calls` timed ones; the one that starts rotates."""
    names = list(contenders)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            contenders[n]()
            for _ in range(calls):
                t0 = time.perf_counter()
                contenders[n]()
                times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(t) for n, t in times.items()}
