"""Losses, each averaged over the batch (Keras' definitions)."""

import numpy as np

from ...diagnostics import DslShapeError
from ...ir.core import Value
from ...ir.ops import DTYPE_CODE
from ..calls import Ctx
from .common import _float_tensor, _t


EPS = 1e-7  # Keras' epsilon: probabilities are clipped to [EPS, 1 - EPS] in the losses


def _mean(ctx: Ctx, x: Value) -> Value:
    return ctx.b.op("ReduceMean", [x], {"keepdims": 0})


def _log_clipped(ctx: Ctx, p: Value) -> Value:
    b = ctx.b
    return b.op("Log", [b.op("Clip", [p, b.const(EPS, p.dtype), b.const(1 - EPS, p.dtype)])])


def _target(ctx: Ctx, target, like: Value, arg: str = "target") -> Value:
    t = _t(ctx, target, like, arg)
    if t.dtype != like.dtype:
        raise ctx.error(f"{ctx.name}() target is {t.type}, the prediction {like.type}", arg, "use cast()")
    return t


def mse(ctx: Ctx, pred: "T", target: "T"):
    p = _float_tensor(ctx, pred, "pred")
    d = ctx.b.op("Sub", [p, _target(ctx, target, p)])
    return _mean(ctx, ctx.b.op("Mul", [d, d]))


def binary_crossentropy(ctx: Ctx, pred: "T", target: "T", from_logits: "bool" = False):
    p = _float_tensor(ctx, pred, "pred")
    t = _target(ctx, target, p)
    b = ctx.b
    if from_logits:
        # softplus(l) - l*t: Softplus is one op, so its gradient is the whole function's,
        # sigmoid(l) - t, also at l = 0, where max(l, 0) - l*t + log(1 + exp(-|l|)) (Keras' form)
        # differentiated piece by piece gives -t. onnxruntime and onnx.reference compute Softplus
        # without overflow, and float64 graphs get the stable form after autodiff (float64_ops.py).
        per = b.op("Sub", [b.op("Softplus", [p]), b.op("Mul", [p, t])])
    else:
        one = b.const(1.0, p.dtype)
        log_p, log_q = _log_clipped(ctx, p), _log_clipped(ctx, b.op("Sub", [one, p]))
        per = b.op("Neg", [b.op("Add", [b.op("Mul", [t, log_p]), b.op("Mul", [b.op("Sub", [one, t]), log_q])])])
    return _mean(ctx, per)


def _class_logprob(ctx: Ctx, p: Value, from_logits: bool) -> Value:
    b = ctx.b
    if from_logits:
        return b.op("LogSoftmax", [p], {"axis": -1})
    total = b.op("ReduceSum", [p, b.ints([-1])], {"keepdims": 1})  # Keras renormalizes probabilities
    return _log_clipped(ctx, b.op("Div", [p, total]))


def categorical_crossentropy(ctx: Ctx, pred: "T", target: "T", from_logits: "bool" = False,
                             label_smoothing: "float" = 0.0):
    p = _float_tensor(ctx, pred, "pred")
    if p.rank < 1:
        raise ctx.error(f"{ctx.name}() needs class probabilities [..., classes], got {p.type}", "pred",
                        cls=DslShapeError)
    t = _target(ctx, target, p)
    b = ctx.b
    if not 0 <= label_smoothing <= 1:
        raise ctx.error(f"label_smoothing must be in [0, 1], got {label_smoothing}", "label_smoothing")
    if label_smoothing:  # Keras: t (1 - s) + s / classes
        classes = p.shape[-1]
        if not isinstance(classes, int):
            raise ctx.error(f"label_smoothing needs a static class axis, got {p.type}", "pred", cls=DslShapeError)
        t = b.op("Add", [b.op("Mul", [t, b.const(1 - label_smoothing, p.dtype)]),
                         b.const(label_smoothing / classes, p.dtype)])
    per = b.op("ReduceSum", [b.op("Mul", [t, _class_logprob(ctx, p, from_logits)]), b.ints([-1])], {"keepdims": 0})
    return b.op("Neg", [_mean(ctx, per)])


def sparse_categorical_crossentropy(ctx: Ctx, pred: "T", labels: "T", from_logits: "bool" = False):
    p = _float_tensor(ctx, pred, "pred")
    if p.rank < 2:
        raise ctx.error(f"{ctx.name}() needs class scores [N, classes], got {p.type}", "pred", cls=DslShapeError)
    y = _t(ctx, labels, arg="labels")
    if y.dtype not in ("i64", "i32"):
        raise ctx.error(f"sparse_categorical_crossentropy needs integer labels, got {y.type}", "labels",
                        "use cast(labels, i64)")
    b = ctx.b
    if y.rank == p.rank and y.shape[-1] == 1:  # labels as [N, 1], as tfjs keeps them
        y = b.op("Squeeze", [y, b.ints([-1])])
    depth = p.shape[-1]
    if not isinstance(depth, int) or y.rank != p.rank - 1:
        raise ctx.error(f"labels {y.type} do not fit predictions {p.type}", "labels", cls=DslShapeError)
    # one-hot rows as labels == 0..depth-1: onnxruntime's Equal and Cast took 0.36 ms where its OneHot
    # took 0.81 (charlm's [32, 64, 128]); the same 0/1 values, a label outside the classes a row of 0s
    classes = b.const(np.arange(depth), y.dtype)
    t = b.op("Cast", [b.op("Equal", [b.op("Unsqueeze", [y, b.ints([-1])]), classes])], {"to": DTYPE_CODE[p.dtype]})
    per = b.op("ReduceSum", [b.op("Mul", [t, _class_logprob(ctx, p, from_logits)]), b.ints([-1])], {"keepdims": 0})
    return b.op("Neg", [_mean(ctx, per)])


def kl_divergence(ctx: Ctx, p: "T", q: "T"):
    pt = _float_tensor(ctx, p, "p")
    qt = _target(ctx, q, pt, "q")
    b = ctx.b
    lo, hi = b.const(EPS, pt.dtype), b.const(1.0, pt.dtype)
    pc, qc = b.op("Clip", [pt, lo, hi]), b.op("Clip", [qt, lo, hi])
    per = b.op("ReduceSum", [b.op("Mul", [pc, b.op("Log", [b.op("Div", [pc, qc])])]), b.ints([-1])], {"keepdims": 0})
    return _mean(ctx, per)


def mae(ctx: Ctx, pred: "T", target: "T"):
    p = _float_tensor(ctx, pred, "pred")
    return _mean(ctx, ctx.b.op("Abs", [ctx.b.op("Sub", [p, _target(ctx, target, p)])]))


def huber(ctx: Ctx, pred: "T", target: "T", delta: "float" = 1.0):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta). The inner branch squares d itself, not
    |d|, so the gradient at d = 0 is d's own (0) and the second derivative there is 1, where a form
    built on |d| has the kink of abs in its derivative. At |d| = delta both branches give the value
    and slope; the outer one's curvature, 0, is torch's huber_loss's there."""
    p = _float_tensor(ctx, pred, "pred")
    if delta <= 0:
        raise ctx.error(f"huber delta must be positive, got {delta}", "delta")
    b = ctx.b
    d = b.op("Sub", [p, _target(ctx, target, p)])
    a = b.op("Abs", [d])
    inner = b.op("Mul", [b.op("Mul", [d, d]), b.const(0.5, p.dtype)])
    outer = b.op("Mul", [b.op("Sub", [a, b.const(0.5 * delta, p.dtype)]), b.const(delta, p.dtype)])
    per = b.op("Where", [b.op("Less", [a, b.const(delta, p.dtype)]), inner, outer])
    return _mean(ctx, per)


LOSSES = {
    "mse": mse, "binary_crossentropy": binary_crossentropy, "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy, "kl_divergence": kl_divergence,
    "mae": mae, "huber": huber,
}
