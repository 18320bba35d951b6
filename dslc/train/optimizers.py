"""Optimizers as IR update graphs: one table entry per optimizer, Keras / TF.js defaults.

Each update reads a weight `w`, its gradient `g`, its state slots and the learning rate, and returns
the new weight and slots. What is common to all of them is here, not in the entries: the learning
rate schedule, gradient clipping (global norm, then value), coupled weight decay (`weight_decay`
adds wd * w to the gradient; `adamw` decays decoupled, as Keras' AdamW), and naming the state
(`adam.m.<weight>`, fed back from the output `adam.m.<weight>.next`).

Update equations (t = step + 1):
  sgd      v' = momentum * v - lr * g;  w' = w + v'  (nesterov: w + momentum * v' - lr * g)
  adam     m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2
           w' = w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m' / (sqrt(v') + eps)          (Keras: eps
           outside the sqrt but inside the bias correction; torch.optim.Adam divides by
           sqrt(v'/(1 - b2^t)) + eps instead, i.e. its eps is larger by sqrt(1 - b2^t))
  rmsprop  ms' = rho ms + (1 - rho) g^2;  (centered: mg' = rho mg + (1 - rho) g, ms' - mg'^2 below)
           mom' = momentum * mom + lr * g / sqrt(ms' + eps);  w' = w - mom'              (TF.js:
           eps inside the sqrt; torch.optim.RMSprop divides by sqrt(ms') + eps)
  adamw    adam, after w <- w - lr * weight_decay * w

A run that reduces its learning rate on a plateau (the train declaration's `reduce_lr_on_plateau`)
compiles its steps inside `scaled_learning_rate()`: the rate (schedule and all) is then multiplied
by the graph input `lr_scale` (f32 scalar, default 1), which the trainer keeps in its state, feeds
by name each step and stores in the checkpoint. Without it the graphs are as they always were.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir.core import TensorType, Value
from ..ir.formulations import choose, forced
from ..ir.builder import Builder
from ..ir.ops import DTYPE_CODE
from .schedules import learning_rate

PROB = (lambda v: 0 <= v < 1, "a number in [0, 1)")
POS = (lambda v: v > 0, "a positive number")
NONNEG = (lambda v: v >= 0, "a number >= 0")
BOOL = (lambda v: isinstance(v, bool), "true or false")
# Options every optimizer takes (0 = off).
COMMON = {"clip_norm": (0.0, NONNEG), "clip_value": (0.0, NONNEG), "weight_decay": (0.0, NONNEG)}
LR_SCALE = "lr_scale"  # the graph input that scales the learning rate, inside scaled_learning_rate()
_scaled: contextvars.ContextVar[bool] = contextvars.ContextVar("scaled_learning_rate", default=False)


@contextlib.contextmanager
def scaled_learning_rate():
    """Steps compiled within take the input `lr_scale` that multiplies their learning rate."""
    token = _scaled.set(True)
    try:
        yield
    finally:
        _scaled.reset(token)


@dataclass(frozen=True)
class Optimizer:
    options: dict  # name -> (default, (check, what it wants)); `lr` may also be a schedule
    slots: Callable[[dict], list[str]]  # the state it keeps per weight, given its options
    update: Callable  # (b, w, g, slots: dict[str, Value], lr, t, options) -> (w', {slot: value'})


def _sgd(b, w, g, s, lr, t, o):
    if not o["momentum"]:
        return _sub(b, w, _mul(b, g, lr)), {}
    m = _c(b, o["momentum"], w)
    v = b.op("Sub", [_mul(b, s["velocity"], m), _mul(b, g, lr)])
    step = b.op("Sub", [_mul(b, v, m), _mul(b, g, lr)]) if o["nesterov"] else v
    return b.op("Add", [w, step]), {"velocity": v}


def _adam(b, w, g, s, lr, t, o):
    b1, b2 = _c(b, o["beta1"], w), _c(b, o["beta2"], w)
    one = _c(b, 1.0, w)
    m = b.op("Add", [_mul(b, s["m"], b1), _mul(b, g, b.op("Sub", [one, b1]))])
    v = b.op("Add", [_mul(b, s["v"], b2), _mul(b, b.op("Mul", [g, g]), b.op("Sub", [one, b2]))])
    correction = b.op("Div", [b.op("Sqrt", [b.op("Sub", [one, b.op("Pow", [b2, t])])]),
                              b.op("Sub", [one, b.op("Pow", [b1, t])])])
    denom = b.op("Add", [b.op("Sqrt", [v]), _c(b, o["eps"], w)])
    step = b.op("Mul", [b.op("Div", [m, denom]), b.op("Mul", [lr, correction])])
    return _sub(b, w, step), {"m": m, "v": v}


def _adamw(b, w, g, s, lr, t, o):
    decayed = _sub(b, w, _mul(b, w, b.op("Mul", [lr, _c(b, o["weight_decay"], w)])))
    return _adam(b, decayed, g, s, lr, t, o)


def _rmsprop(b, w, g, s, lr, t, o):
    rho = _c(b, o["rho"], w)
    one_minus = _c(b, 1.0 - o["rho"], w)
    ms = b.op("Add", [_mul(b, s["ms"], rho), _mul(b, b.op("Mul", [g, g]), one_minus)])
    new, denom = {"ms": ms}, ms
    if o["centered"]:
        mg = b.op("Add", [_mul(b, s["mg"], rho), _mul(b, g, one_minus)])
        new["mg"], denom = mg, b.op("Sub", [ms, b.op("Mul", [mg, mg])])
    step = b.op("Div", [_mul(b, g, lr), b.op("Sqrt", [b.op("Add", [denom, _c(b, o["eps"], w)])])])
    if o["momentum"]:
        step = b.op("Add", [_mul(b, s["mom"], _c(b, o["momentum"], w)), step])
        new["mom"] = step
    return _sub(b, w, step), new


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer({"lr": (0.01, POS), "momentum": (0.0, PROB), "nesterov": (False, BOOL)},
                     lambda o: ["velocity"] if o["momentum"] else [], _sgd),
    "adam": Optimizer({"lr": (0.001, POS), "beta1": (0.9, PROB), "beta2": (0.999, PROB), "eps": (1e-7, POS)},
                      lambda o: ["m", "v"], _adam),
    "adamw": Optimizer({"lr": (0.001, POS), "beta1": (0.9, PROB), "beta2": (0.999, PROB), "eps": (1e-7, POS),
                        "weight_decay": (0.004, NONNEG)},
                       lambda o: ["m", "v"], _adamw),
    "rmsprop": Optimizer({"lr": (0.001, POS), "rho": (0.9, PROB), "eps": (1e-7, POS), "momentum": (0.0, PROB),
                          "centered": (False, BOOL)},
                         lambda o: ["ms"] + ["mg"] * o["centered"] + ["mom"] * bool(o["momentum"]), _rmsprop),
}


def options_of(name: str) -> dict:
    """Every option `name` takes, with its default and check (common ones included)."""
    own = OPTIMIZERS[name].options
    return {**own, **{k: v for k, v in COMMON.items() if k not in own}}


def state_name(optimizer: str, slot: str, weight: str) -> str:
    return f"{optimizer}.{slot}.{weight}"


def apply_updates(b: Builder, name: str, options: dict, weights: list[Value], grads: list[Value],
                  step: Value, state_input) -> tuple[list[Value], list[tuple[str, Value]]]:
    """New weights, and (state name, new value) pairs, for one update of `weights` by `grads`.
    `state_input(name, like)` gives the current value of a state slot (a graph input)."""
    opt = OPTIMIZERS[name]
    grads = _clip(b, grads, options)
    rates: dict[str, tuple[Value, Value]] = {}  # per float dtype: (lr, t)
    slots = [{s: state_input(state_name(name, s, w.name), w) for s in opt.slots(options)} for w in weights]
    updated: list = [None] * len(weights)  # (w', {slot: value'}) per weight
    scale = b.input(LR_SCALE, TensorType("f32", ()), default=np.ones((), np.float32)) if _scaled.get() else None
    for group in _groups(weights):
        w, g, s = _joined(b, [weights[i] for i in group], [grads[i] for i in group], [slots[i] for i in group])
        if w.dtype not in rates:
            t = b.op("Cast", [b.op("Add", [step, b.const(1, "i64")])], {"to": DTYPE_CODE[w.dtype]})
            lr = learning_rate(b, options["lr"], step, w.dtype)
            if scale is not None:
                cast = scale if w.dtype == "f32" else b.op("Cast", [scale], {"to": DTYPE_CODE[w.dtype]})
                lr = b.op("Mul", [lr, cast])
            rates[w.dtype] = (lr, t)
        lr, t = rates[w.dtype]
        if options["weight_decay"] and name != "adamw":  # L2, coupled: the decay goes through the optimizer
            g = b.op("Add", [g, _mul(b, w, _c(b, options["weight_decay"], w))])
        w_new, s_new = opt.update(b, w, g, s, lr, t, options)
        for i, part in zip(group, _parted(b, [w_new, *s_new.values()], [weights[i] for i in group])):
            updated[i] = (part[0], dict(zip(s_new, part[1:])))
    new_weights, new_state = [], []
    for w, (w_new, s_new) in zip(weights, updated):
        new_weights.append(w_new)
        new_state += [(state_name(name, s, w.name), v) for s, v in s_new.items()]
    return new_weights, new_state


# Weights up to this many elements are updated together, as one flat vector: every update is
# elementwise, so a few ops on one vector replace a dozen tiny ops per bias (PERF-NOTES). Larger
# weights stay alone: joining 100 dense 128x128 kernels (16K elements each) made a step 1.7x slower,
# the copies into and out of the vector costing more than the ops saved.
SMALL = 1 << 12


def _groups(weights: list[Value]) -> list[list[int]]:
    """Indices of the weights updated together: the small static ones of each dtype in one group
    (when there are several), every other weight alone. Forced `grouped` joins every static weight
    of a dtype, forced `per_weight` none (formulations.CHOICES["optimizer_update"])."""
    form, join_all = choose("optimizer_update", "grouped"), forced("optimizer_update") == "grouped"
    small: dict[str, list[int]] = {}
    groups = []
    for i, w in enumerate(weights):
        if form == "grouped" and w.type.static() and (join_all or int(np.prod(w.shape)) <= SMALL):
            small.setdefault(w.dtype, []).append(i)
        else:
            groups.append([i])
    for members in small.values():
        groups += [members] if len(members) > 1 else [[i] for i in members]
    return groups


def _joined(b: Builder, ws: list[Value], gs: list[Value], slots: list[dict]):
    """One weight as it is, or several as flat vectors joined end to end (weight, gradient, slots)."""
    if len(ws) == 1:
        return ws[0], gs[0], slots[0]

    def flat(vs):
        return b.op("Concat", [b.op("Reshape", [v, b.ints([-1])]) for v in vs], {"axis": 0})
    return flat(ws), flat(gs), {s: flat([sl[s] for sl in slots]) for s in slots[0]}


def _parted(b: Builder, values: list[Value], ws: list[Value]) -> list[list[Value]]:
    """Per weight, `values` (flat when joined) cut back into its pieces in its shape."""
    if len(ws) == 1:
        return [values]
    sizes = b.ints([int(np.prod(w.shape)) for w in ws])
    pieces = [b.op("Split", [v, sizes], {"axis": 0}, n_out=len(ws)) for v in values]
    return [[b.op("Reshape", [p[i], b.ints(list(w.shape))]) for p in pieces] for i, w in enumerate(ws)]


def _clip(b: Builder, grads: list[Value], o: dict) -> list[Value]:
    if o["clip_norm"]:  # by the global norm over all gradients, as tf.clip_by_global_norm
        dtype = grads[0].dtype
        squares = [b.op("ReduceSum", [b.op("Mul", [g, g])], {"keepdims": 0}) for g in grads]
        total = squares[0]
        for sq in squares[1:]:
            total = b.op("Add", [total, sq if sq.dtype == dtype else b.op("Cast", [sq], {"to": DTYPE_CODE[dtype]})])
        limit = b.const(float(o["clip_norm"]), dtype)
        scale = b.op("Div", [limit, b.op("Max", [b.op("Sqrt", [total]), limit])])
        grads = [b.op("Mul", [g, scale if g.dtype == dtype else b.op("Cast", [scale], {"to": DTYPE_CODE[g.dtype]})])
                 for g in grads]
    if o["clip_value"]:
        grads = [b.op("Clip", [g, _c(b, -o["clip_value"], g), _c(b, o["clip_value"], g)]) for g in grads]
    return grads


def _c(b: Builder, x: float, like: Value) -> Value:
    return b.const(float(x), like.dtype)


def _mul(b: Builder, x: Value, y: Value) -> Value:
    return b.op("Mul", [x, y])


def _sub(b: Builder, x: Value, y: Value) -> Value:
    return b.op("Sub", [x, y])
