"""Activations: their built-ins, and ACTIVATIONS, the names a layer's `activation=` takes (with
`linear`, which is no built-in)."""

from ...ir.core import Value
from ..calls import Ctx
from ..values import Symbol, describe
from .common import _float_tensor, _unary


def leaky_relu(ctx: Ctx, x: "T", alpha: "float" = 0.3):
    return ctx.b.op("LeakyRelu", [_float_tensor(ctx, x, "x")], {"alpha": float(alpha)})


def elu(ctx: Ctx, x: "T", alpha: "float" = 1.0):
    return ctx.b.op("Elu", [_float_tensor(ctx, x, "x")], {"alpha": float(alpha)})


def softmax(ctx: Ctx, x: "T", axis: "int" = -1):
    return ctx.b.op("Softmax", [_float_tensor(ctx, x, "x")], {"axis": axis})


def log_softmax(ctx: Ctx, x: "T", axis: "int" = -1):
    return ctx.b.op("LogSoftmax", [_float_tensor(ctx, x, "x")], {"axis": axis})


def gelu(ctx: Ctx, x: "T"):
    """Exact GELU, x * Phi(x): ONNX Gelu (opset 20), one kernel where its five ops took 2.5x as long in
    onnxruntime (charlm's [32, 64, 256]); its rule is in autodiff/rules/elementwise.py. Emitted below
    opset 20, and in float64 (no onnxruntime kernel), it is written out again from Erf (passes/)."""
    return ctx.b.op("Gelu", [_float_tensor(ctx, x, "x")])


def silu(ctx: Ctx, x: "T"):
    """x * sigmoid(x) (also named swish)."""
    x = _float_tensor(ctx, x, "x")
    return ctx.b.op("Mul", [x, ctx.b.op("Sigmoid", [x])])


def mish(ctx: Ctx, x: "T"):
    """x * tanh(softplus(x))."""
    x = _float_tensor(ctx, x, "x")
    b = ctx.b
    return b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])])


def _relu6(b, x: Value) -> Value:
    """min(6, relu(x)): derivative 0 at x = 0 (relu's) and at x = 6 (Min sends a tie to its first
    operand, the constant), as torch's relu6 (hardtanh) and TensorFlow's Relu6Grad have it."""
    return b.op("Min", [b.const(6.0, x.dtype), b.op("Relu", [x])])


def relu6(ctx: Ctx, x: "T"):
    return _relu6(ctx.b, _float_tensor(ctx, x, "x"))


def _hard_sigmoid(b, x: Value) -> Value:
    return b.op("Mul", [_relu6(b, b.op("Add", [x, b.const(3.0, x.dtype)])), b.const(1 / 6, x.dtype)])


def hard_sigmoid(ctx: Ctx, x: "T"):
    """torch's hardsigmoid, relu6(x + 3) / 6 (Keras 3's too; Keras 2 clipped 0.2 x + 0.5): derivative 1/6
    strictly inside (-3, 3), 0 at and beyond +-3."""
    return _hard_sigmoid(ctx.b, _float_tensor(ctx, x, "x"))


def hard_swish(ctx: Ctx, x: "T"):
    """torch's hardswish, x * relu6(x + 3) / 6: derivative 0 at x = -3 and 1 at x = 3, second derivative
    1/3 strictly inside (-3, 3) and 0 at +-3, as torch's."""
    x = _float_tensor(ctx, x, "x")
    b = ctx.b
    return b.op("Mul", [x, _hard_sigmoid(b, x)])


ACTIVATIONS = {
    "relu": _unary("Relu"), "sigmoid": _unary("Sigmoid"), "tanh": _unary("Tanh"), "softplus": _unary("Softplus"),
    "leaky_relu": leaky_relu, "elu": elu, "softmax": softmax, "log_softmax": log_softmax, "gelu": gelu,
    "linear": lambda ctx, x: x,
    "silu": silu, "swish": silu, "mish": mish,
    "relu6": relu6, "hard_sigmoid": hard_sigmoid, "hard_swish": hard_swish,
}


def _activate(ctx: Ctx, y: Value, activation) -> Value:
    if activation is None:
        return y
    name = activation.name if isinstance(activation, Symbol) else activation
    if not isinstance(name, str):
        raise ctx.error(f"`activation=` takes an activation's name such as relu, got {describe(activation)}",
                        "activation")
    if name not in ACTIVATIONS:
        raise ctx.error(f"unknown activation `{name}`", "activation", f"use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](ctx, y)
