"""What the families of built-ins share: the argument checks every one makes (a tensor, a float
tensor), a layer call's weight names and its line in the model summary, kernel initializers, the
float dtype in sight, and one-input float ops (activations and math alike)."""

from ...ir.core import Value
from .. import init as I
from ..calls import Ctx
from ..values import LayerRecord, Symbol


def _t(ctx: Ctx, v, like: Value | None = None, arg: str | None = None) -> Value:
    return ctx.lw.tensor(ctx.sc, v, ctx.arg_spans.get(arg, ctx.span), like)


def _float_tensor(ctx: Ctx, v, arg: str) -> Value:
    x = _t(ctx, v, arg=arg)
    if not x.type.is_float:
        raise ctx.error(f"{ctx.name}() needs a floating-point `{arg}`, got {x.type}", arg, "use cast(x, f32)")
    return x


def _weighted(ctx: Ctx) -> str:
    """The weight-name prefix for this layer call; weights only live inside models and layers."""
    if ctx.sc.kind not in ("model", "layer"):
        raise ctx.error(f"{ctx.name}() has weights, so it must be used inside a model or a layer",
                        hint="move it into a `model` and call the model")
    return ctx.sc.weight_path(ctx.name)


def _record(ctx: Ctx, name: str, out: Value, n_params: int = 0) -> Value:
    if ctx.sc.kind in ("model", "layer"):
        ctx.lw.layers.append(LayerRecord(name, ctx.name, str(out.type), n_params))
    return out


def _layer_name(ctx: Ctx) -> str:
    sc = ctx.sc
    return f"{sc.prefix}.{sc.binding}" if sc.prefix else sc.binding


def _init(ctx: Ctx, word: Symbol, arg: str, fan_in: int, fan_out: int):
    if word.name not in I.KERNEL_INITS:
        raise ctx.error(f"unknown initializer `{word.name}`", arg, f"use one of {', '.join(I.KERNEL_INITS)}")
    return I.kernel(word.name, fan_in, fan_out)


def _float_dtype(ctx: Ctx, dtype) -> str:
    """A float result's dtype: `dtype=` where given, else the float type of the float values in sight
    (f64 inside a model whose float inputs are all f64), else f32."""
    if dtype is not None:
        if dtype.name not in ("f16", "f32", "f64", "bf16"):
            raise ctx.error(f"{ctx.name}() needs a float `dtype`, got {dtype.name}", "dtype", "use f32 or f64")
        return dtype.name
    floats = {v.dtype for k, v in ctx.sc.env.items() if not k.startswith("__") and isinstance(v, Value)
              and v.type.is_float}
    return floats.pop() if len(floats) == 1 else "f32"


def _unary(op: str, attrs=None):
    def act(ctx: Ctx, x: "T"):
        return ctx.b.op(op, [_float_tensor(ctx, x, "x")], attrs or {})
    return act
