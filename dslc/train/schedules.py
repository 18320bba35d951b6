"""Learning-rate schedules, computed inside the graph from the step counter (Keras' definitions).

    lr=exponential_decay(0.01, decay_steps=1000, decay_rate=0.96, staircase=false)
        lr * decay_rate ^ (step / decay_steps)      (the exponent floored when staircase)
    lr=step_decay(0.1, every=10, factor=0.5)
        lr * factor ^ floor(step / every)
    lr=cosine_decay(0.001, decay_steps=10000, alpha=0.0)
        lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)

`step` counts the updates made before this one (0 at the first step), as Keras' `iterations`.

Warm-up (Hugging Face's `get_*_schedule_with_warmup`, Keras 3's `warmup_steps`): every schedule takes
`warmup_steps=W` (default 0: none), and `warmup(lr, steps=W)` is a constant rate with one. The
first W updates rise linearly to the rate, lr * (step + 1) / W (the first update is not wasted at 0);
from update W on, the schedule runs with its step counted from the end of the warm-up:

    lr=cosine_decay(0.001, decay_steps=10000, warmup_steps=500)
    lr=warmup(0.001, steps=500)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.core import Value
from ..ir.builder import Builder
from ..ir.ops import DTYPE_CODE

# name -> (parameter, default or None when required, check, what the check wants)
POSITIVE = (lambda v: v > 0, "a positive number")
FRACTION = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
ANY_BOOL = (lambda v: isinstance(v, bool), "true or false")
COUNT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0")
WARMUP = ("warmup_steps", 0, COUNT)
SCHEDULES: dict[str, list[tuple[str, object, tuple]]] = {
    "exponential_decay": [("lr", None, POSITIVE), ("decay_steps", None, POSITIVE),
                          ("decay_rate", None, POSITIVE), ("staircase", False, ANY_BOOL), WARMUP],
    "step_decay": [("lr", None, POSITIVE), ("every", None, POSITIVE), ("factor", None, POSITIVE), WARMUP],
    "cosine_decay": [("lr", None, POSITIVE), ("decay_steps", None, POSITIVE), ("alpha", 0.0, FRACTION), WARMUP],
    "warmup": [("lr", None, POSITIVE), ("steps", None, (lambda v: isinstance(v, int) and v > 0,
                                                         "a positive integer"))],
}


@dataclass(frozen=True)
class Schedule:
    name: str
    args: tuple[tuple[str, object], ...]

    @property
    def initial(self) -> float:
        return float(dict(self.args)["lr"])

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args if (k, v) != ('warmup_steps', 0))})"


def learning_rate(b: Builder, lr: float | Schedule, step: Value, dtype: str) -> Value:
    """The learning rate of this update as a scalar of `dtype`."""
    if not isinstance(lr, Schedule):
        return b.const(float(lr), dtype)
    a = dict(lr.args)
    s = b.op("Cast", [step], {"to": DTYPE_CODE[dtype]})
    c = lambda x: b.const(float(x), dtype)  # noqa: E731
    warm = _warmup_steps(lr)
    if not warm:
        return _decayed(b, lr.name, a, s, c)
    # rising while step < W: lr * (step + 1) / W; then the schedule at step - W
    rising = b.op("Div", [b.op("Add", [s, c(1)]), c(warm)])
    after = _decayed(b, lr.name, a, b.op("Max", [b.op("Sub", [s, c(warm)]), c(0)]), c)
    return b.op("Where", [b.op("Less", [s, c(warm)]), b.op("Mul", [c(a["lr"]), rising]), after])


def _warmup_steps(lr: Schedule) -> int:
    a = dict(lr.args)
    return int(a["steps"] if lr.name == "warmup" else a.get("warmup_steps", 0))


def _decayed(b: Builder, name: str, a: dict, s: Value, c) -> Value:
    """The schedule without warm-up at the (float) step s."""
    if name == "warmup":
        return c(a["lr"])
    if name == "exponential_decay":
        p = b.op("Div", [s, c(a["decay_steps"])])
        if a["staircase"]:
            p = b.op("Floor", [p])
        return b.op("Mul", [c(a["lr"]), b.op("Pow", [c(a["decay_rate"]), p])])
    if name == "step_decay":
        p = b.op("Floor", [b.op("Div", [s, c(a["every"])])])
        return b.op("Mul", [c(a["lr"]), b.op("Pow", [c(a["factor"]), p])])
    if name == "cosine_decay":
        frac = b.op("Div", [b.op("Min", [s, c(a["decay_steps"])]), c(a["decay_steps"])])
        cos = b.op("Cos", [b.op("Mul", [frac, c(math.pi)])])
        decayed = b.op("Add", [b.op("Mul", [b.op("Add", [cos, c(1.0)]), c((1 - a["alpha"]) * 0.5)]), c(a["alpha"])])
        return b.op("Mul", [c(a["lr"]), decayed])
    raise AssertionError(name)


def reference(lr: float | Schedule, step: int) -> float:
    """The same schedule in plain Python (for the trainer's progress line and for tests)."""
    if not isinstance(lr, Schedule):
        return float(lr)
    a = dict(lr.args)
    warm = _warmup_steps(lr)
    if step < warm:
        return a["lr"] * (step + 1) / warm
    step -= warm
    if lr.name == "warmup":
        return float(a["lr"])
    if lr.name == "exponential_decay":
        p = step / a["decay_steps"]
        return a["lr"] * a["decay_rate"] ** (math.floor(p) if a["staircase"] else p)
    if lr.name == "step_decay":
        return a["lr"] * a["factor"] ** math.floor(step / a["every"])
    frac = min(step, a["decay_steps"]) / a["decay_steps"]
    return a["lr"] * ((1 - a["alpha"]) * 0.5 * (1 + math.cos(math.pi * frac)) + a["alpha"])
