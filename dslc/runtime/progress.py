"""What a training run says while it runs: a progress bar per epoch, one summary line per epoch,
and history.json.

The bar (tqdm, imported only when shown) appears only on a terminal: piped or captured output
gets the summary lines alone, not thousands of carriage-return updates.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from dslc.diagnostics import DslError
from dslc.fileio import write_bytes

# History keys that epoch_line prints in its own way (or not at all).
_BOOKKEEPING = ("epoch", "seconds", "steps", "steps_per_second")


def format_value(value) -> str:
    """0.0712 -> "0.0712"; tiny or huge values in short scientific form; ints as they are."""
    if isinstance(value, (bool, int, np.integer)):
        return str(value)
    value = float(value)
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.4g}"


def format_metrics(metrics: dict) -> str:
    """ "loss 0.0712  test_accuracy 0.9871": the scalar metrics, in their order."""
    return "  ".join(f"{k} {format_value(v)}" for k, v in metrics.items()
                     if k not in _BOOKKEEPING and np.ndim(v) == 0 and v is not None
                     and not isinstance(v, str))


def epoch_line(epoch: int, epochs: int, metrics: dict, seconds: float,
               steps: int | None = None) -> str:
    """`epoch 2/5  loss 0.0712  test_accuracy 0.9871  (38.2 s, 120 steps/s)`."""
    timing = f"{seconds:.1f} s"
    if steps is not None and seconds > 0:
        rate = steps / seconds
        timing += f", {rate:.0f} steps/s" if rate >= 10 else f", {rate:.1f} steps/s"
    parts = [f"epoch {epoch}/{epochs}", format_metrics(metrics), f"({timing})"]
    return "  ".join(p for p in parts if p)


class EpochProgress:
    """A progress bar over one epoch's steps showing the latest metrics and steps/s.
    enabled=None: shown only when `file` (stdout by default) is a terminal. Disabled, it still
    counts steps and time (for epoch_line) but prints nothing."""

    def __init__(self, total_steps: int, epoch: int, epochs: int, enabled: bool | None = None,
                 file=None):
        self.file = file if file is not None else sys.stdout
        isatty = getattr(self.file, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self.steps = 0
        self.metrics: dict = {}
        self._start = time.perf_counter()
        self._bar = None
        if self.enabled:
            from tqdm import tqdm  # lazy: only a terminal shows the bar

            # leave=False: the bar gives way to the epoch's summary line when closed. One column
            # short of the terminal: a line that fills it exactly leaves the cursor hanging at the
            # edge, and the clearing and the next line land one row off.
            width = min(shutil.get_terminal_size().columns - 1, 120)
            self._bar = tqdm(total=total_steps, desc=f"epoch {epoch}/{epochs}", unit="step",
                             file=self.file, leave=False, ncols=width)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    def update(self, n: int = 1, **metrics) -> None:
        """`n` more steps done; `metrics` (e.g. loss=0.31) replace the ones shown."""
        self.steps += n
        self.metrics.update(metrics)
        if self._bar is not None:
            self._bar.set_postfix_str(format_metrics(self.metrics), refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressLines:
    """Without a terminal (a log file, a pipe, a batch job): one line every `every_steps` steps, or
    every `every_seconds` without it, so a long epoch is not silent between its summary lines:
    `step 1200/12000  epoch 3/20  loss 0.3121  (41.3 steps/s)`; the rate is over the last interval."""

    def __init__(self, log, total_steps: int, every_steps: int | None = None, every_seconds: float = 30.0):
        self.log, self.total, self.every_steps, self.every_seconds = log, total_steps, every_steps, every_seconds
        self._at, self._since = time.perf_counter(), 0

    def update(self, step: int, epoch: int, epochs: int, metrics: dict) -> None:
        self._since += 1
        elapsed = time.perf_counter() - self._at
        if self._since < self.every_steps if self.every_steps else elapsed < self.every_seconds:
            return
        rate = self._since / elapsed if elapsed > 0 else float("inf")
        self.log(f"step {step}/{self.total}  epoch {epoch}/{epochs}  {format_metrics(metrics)}  "
                 f"({rate:.1f} steps/s)")
        self._at, self._since = time.perf_counter(), 0


# ------------------------------------------------------------------ history.json
def _plain(value):
    """JSON-ready: numpy scalars and arrays to Python; NaN and infinities to null (JSON has none)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_history(path, history: list[dict]) -> Path:
    """Write the per-epoch history as JSON, atomically (a crash leaves the previous file): a key per
    line, a per-step list on its key's line (thousands of steps stay a few lines)."""
    path = Path(path)
    rows = _plain(history)
    if rows and all(isinstance(r, dict) for r in rows):
        text = "[" + ",".join("\n {" + ",".join(f"\n  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}"
                                                 for k, v in r.items()) + "\n }" for r in rows) + "\n]"
    else:
        text = json.dumps(rows, indent=1, allow_nan=False)
    write_bytes(path, (text + "\n").encode())
    return path


def read_history(path) -> list[dict]:
    """The history write_history wrote (e.g. to resume a run or replot it)."""
    path = Path(path)
    try:
        history = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DslError(f"history file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DslError(f"cannot read training history {path}: {e}") from None
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise DslError(f"{path} is not a training history (expected a JSON list of objects)")
    return history
