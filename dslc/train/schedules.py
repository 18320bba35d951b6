"""Learning-rate schedules, computed inside the graph from the step counter (Keras' definitions).

    lr=exponential_decay(0.01, decay_steps=1000, decay_rate=0.96, staircase=false)
        lr * decay_rate ^ (step / decay_steps)      (the exponent floored when staircase)
    lr=step_decay(0.1, every=10, factor=0.5)
        lr * factor ^ floor(step / every)
    lr=cosine_decay(0.001, decay_steps=10000, alpha=0.0)
        lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)

`step` counts the updates made before this one (0 at the first step), as Keras' `iterations`.
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
SCHEDULES: dict[str, list[tuple[str, object, tuple]]] = {
    "exponential_decay": [("lr", None, POSITIVE), ("decay_steps", None, POSITIVE),
                          ("decay_rate", None, POSITIVE), ("staircase", False, ANY_BOOL)],
    "step_decay": [("lr", None, POSITIVE), ("every", None, POSITIVE), ("factor", None, POSITIVE)],
    "cosine_decay": [("lr", None, POSITIVE), ("decay_steps", None, POSITIVE), ("alpha", 0.0, FRACTION)],
}


@dataclass(frozen=True)
class Schedule:
    name: str
    args: tuple[tuple[str, object], ...]

    @property
    def initial(self) -> float:
        return float(dict(self.args)["lr"])

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args)})"


def learning_rate(b: Builder, lr: float | Schedule, step: Value, dtype: str) -> Value:
    """The learning rate of this update as a scalar of `dtype`."""
    if not isinstance(lr, Schedule):
        return b.const(float(lr), dtype)
    a = dict(lr.args)
    s = b.op("Cast", [step], {"to": DTYPE_CODE[dtype]})
    c = lambda x: b.const(float(x), dtype)  # noqa: E731
    if lr.name == "exponential_decay":
        p = b.op("Div", [s, c(a["decay_steps"])])
        if a["staircase"]:
            p = b.op("Floor", [p])
        return b.op("Mul", [c(a["lr"]), b.op("Pow", [c(a["decay_rate"]), p])])
    if lr.name == "step_decay":
        p = b.op("Floor", [b.op("Div", [s, c(a["every"])])])
        return b.op("Mul", [c(a["lr"]), b.op("Pow", [c(a["factor"]), p])])
    if lr.name == "cosine_decay":
        frac = b.op("Div", [b.op("Min", [s, c(a["decay_steps"])]), c(a["decay_steps"])])
        cos = b.op("Cos", [b.op("Mul", [frac, c(math.pi)])])
        decayed = b.op("Add", [b.op("Mul", [b.op("Add", [cos, c(1.0)]), c((1 - a["alpha"]) * 0.5)]), c(a["alpha"])])
        return b.op("Mul", [c(a["lr"]), decayed])
    raise AssertionError(lr.name)


def reference(lr: float | Schedule, step: int) -> float:
    """The same schedule in plain Python (for the trainer's progress line and for tests)."""
    if not isinstance(lr, Schedule):
        return float(lr)
    a = dict(lr.args)
    if lr.name == "exponential_decay":
        p = step / a["decay_steps"]
        return a["lr"] * a["decay_rate"] ** (math.floor(p) if a["staircase"] else p)
    if lr.name == "step_decay":
        return a["lr"] * a["factor"] ** math.floor(step / a["every"])
    frac = min(step, a["decay_steps"]) / a["decay_steps"]
    return a["lr"] * ((1 - a["alpha"]) * 0.5 * (1 + math.cos(math.pi * frac)) + a["alpha"])
