"""The built-in vocabulary: one table from name to a lowering function.

Each entry's Python signature is the language-level signature (`calls.bind_call` binds and checks
arguments); annotations say what a parameter takes: "T" a tensor, "int", "count" (a positive int),
"float", "bool", "word", "ints". Layers with weights name them after the binding they appear in
(`ConvNet.conv1.weight`).
"""

import importlib
import inspect
import math

import numpy as np

from ..diagnostics import DslShapeError, source_text
from ..ir import patterns
from ..ir.core import DTYPES, Value, dim_ceil_div
from ..ir.ops import DTYPE_CODE
from . import init as I
from . import random as R
from .calls import Ctx, bind_call
from .values import LayerRecord, Symbol, describe, is_shape_list

EPS = 1e-7  # Keras' epsilon: probabilities are clipped to [EPS, 1 - EPS] in the losses


def call_builtin(lw, sc, name: str, e):
    fn = BUILTINS[name]
    ctx = Ctx(lw, sc, e.span, name, {})
    values = bind_call(ctx, fn, e)
    # A `*xs` parameter (concat) is bound by name above; pass it positionally.
    star = next((p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.VAR_POSITIONAL), None)
    return fn(ctx, *(values.pop(star) if star else ()), **values)


# ------------------------------------------------------------------ helpers
def _t(ctx: Ctx, v, like: Value | None = None, arg: str | None = None) -> Value:
    return ctx.lw.tensor(ctx.sc, v, ctx.arg_spans.get(arg, ctx.span), like)


def _float_tensor(ctx: Ctx, v, arg: str) -> Value:
    x = _t(ctx, v, arg=arg)
    if not x.type.is_float:
        raise ctx.error(f"{ctx.name}() needs a floating-point `{arg}`, got {x.type}", arg, "use cast(x, f32)")
    return x


def _numbers(ctx: Ctx, x: Value, arg: str = "x") -> Value:
    if x.dtype == "bool":  # ONNX reductions take no bools: count with a cast
        text = source_text(ctx.arg_spans.get(arg)) or arg
        raise ctx.error(f"{ctx.name}() needs numbers, got {x.type}", arg, f"convert first: cast({text}, f32)")
    return x


def _pair(ctx: Ctx, v, arg: str) -> list[int]:
    vals = [v, v] if isinstance(v, int) else list(v)
    if len(vals) != 2 or any(x < 1 for x in vals):
        raise ctx.error(f"{ctx.name}() expects `{arg}` as a positive integer or a pair, got {v}", arg)
    return vals


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


def _same_pads(ctx: Ctx, x: Value, kernel: list, strides: list, dilation: list) -> list[int]:
    """TF/Keras 'same' padding: output = ceil(in / stride), the odd pixel at the end. At stride 1
    the total is (k - 1) * dilation whatever the size, so a symbolic H or W needs no value."""
    begin, end = [], []
    for n, k, s, d in zip(x.shape[2:], kernel, strides, dilation):
        if isinstance(n, int):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        elif s == 1:
            total = (k - 1) * d
        else:  # the callers pad first (_same_at_run_time); internal misuse would land here
            raise ctx.error(f"padding=same at stride {s} needs static spatial dims, got {x.type}", "padding",
                            "give the spatial dims as numbers, or pad explicitly (padding=INT or a list)")
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def _same_at_run_time(ctx: Ctx, x: Value, padding, kernel, strides, dilation=None, fill: float = 0.0):
    """padding=same at stride > 1 on a symbolic dim: the pads depend on the size mod the stride, so
    x is padded by widths computed from Shape(x) (the formula of _same_pads) and the op runs with
    padding=valid. Returns (x, padding, out): `out` the output's spatial sizes ceil(n / stride) as an
    i64 vector computed from Shape(x), for _named_spatial, or None where nothing changed. The pad
    widths and `out` carry their symbolic contents (`sym`, as Shape's output does): a width as an
    opaque symbol, `out` as ceil((H)/s), so the result's dims read as Keras' `same` sizes."""
    if not (isinstance(padding, Symbol) and padding.name == "same") or all(
            isinstance(n, int) or st == 1 for n, st in zip(x.shape[2:], strides)):
        return x, padding, None
    b, n = ctx.b, len(kernel)
    dilation = dilation or [1] * n
    size = b.op("Slice", [b.op("Shape", [x]), b.ints([2]), b.ints([2 + n])])
    stride = b.ints(list(strides))
    out = b.op("Div", [b.op("Add", [size, b.ints([st - 1 for st in strides])]), stride])  # ceil(n / s)
    reach = b.ints([(k - 1) * d + 1 for k, d in zip(kernel, dilation)])
    total = b.op("Max", [b.op("Sub", [b.op("Add", [b.op("Mul", [b.op("Sub", [out, b.ints([1] * n)]), stride]), reach]),
                                      size]), b.ints([0] * n)])
    begin = b.op("Div", [total, b.ints([2] * n)])
    pads = b.op("Concat", [b.ints([0, 0]), begin, b.ints([0, 0]), b.op("Sub", [total, begin])], {"axis": 0})
    widths = [_same_pads(ctx, _spatial_like(x, i), [k], [st], [d]) if isinstance(m, int) or st == 1 else
              [f"same_begin({m},{k},{st},{d})", f"same_end({m},{k},{st},{d})"]
              for i, (m, k, st, d) in enumerate(zip(x.shape[2:], kernel, strides, dilation))]
    pads.sym = (0, 0, *[w[0] for w in widths], 0, 0, *[w[1] for w in widths])
    out.sym = tuple(dim_ceil_div(m, st) for m, st in zip(x.shape[2:], strides))
    padded = b.op("Pad", [x, pads, b.const(np.asarray(fill), x.dtype)])
    return padded, Symbol("valid"), out


def _spatial_like(x: Value, axis: int) -> Value:
    """A stand-in [N, C, n] with x's size on one spatial axis (for _same_pads; never emitted)."""
    return Value("spatial", type(x.type)(x.dtype, (*x.shape[:2], x.shape[2 + axis])))


def _named_spatial(ctx: Ctx, y: Value, out: Value | None) -> Value:
    """y with its spatial dims read from `out` (same sizes at run time, dims named ceil(n / stride))."""
    if out is None:
        return y
    b = ctx.b
    head = b.op("Slice", [b.op("Shape", [y]), b.ints([0]), b.ints([2])])
    return b.op("Reshape", [y, b.op("Concat", [head, out], {"axis": 0})])


def _pads(ctx: Ctx, padding, x: Value, kernel, strides, dilation) -> list[int]:
    if isinstance(padding, Symbol):
        if padding.name == "valid":
            return [0, 0, 0, 0]
        if padding.name == "same":
            return _same_pads(ctx, x, kernel, strides, dilation)
    if isinstance(padding, int) and not isinstance(padding, bool):
        return [padding] * 4
    if isinstance(padding, list) and all(isinstance(p, int) for p in padding) and len(padding) in (2, 4):
        return padding * 2 if len(padding) == 2 else padding
    raise ctx.error("padding must be `same`, `valid`, an integer or a list of 2 or 4 integers", "padding")


def _spatial_input(ctx: Ctx, x: Value) -> Value:
    if x.rank != 4:
        hint = None
        if x.rank == 2:  # a flat image: suggest the square it most likely was
            side = math.isqrt(x.shape[1]) if isinstance(x.shape[1], int) else 0
            text = source_text(ctx.arg_spans.get("x")) or "x"
            hint = (f"reshape it to [N, C, H, W] first, e.g. reshape({text}, [-1, 1, {side}, {side}])"
                    if side and side * side == x.shape[1] else "reshape it to [N, C, H, W] first")
        raise ctx.error(f"{ctx.name}() expects a rank-4 value [N, C, H, W], got {x.type}", "x", hint,
                        DslShapeError)
    return x


def _keepdims_axes(ctx: Ctx, x: Value, axis) -> list[int] | None:
    if axis is None:
        return None
    axes = [axis] if isinstance(axis, int) else list(axis)
    for a in axes:
        if not -x.rank <= a < x.rank:
            raise ctx.error(f"axis {a} is out of range for {x.type}", "axis", cls=DslShapeError)
    seen = [a % x.rank for a in axes]
    if len(set(seen)) != len(seen):
        raise ctx.error(f"axis {axis} names an axis of {x.type} twice", "axis",
                        "list each axis once (negative axes count from the end)", DslShapeError)
    return axes


# ------------------------------------------------------------------ layers with weights
def dense(ctx: Ctx, x: "T", units: "count", activation=None, use_bias: "bool" = True,
          kernel_init: "word" = Symbol("glorot_uniform")):
    x = _float_tensor(ctx, x, "x")
    if x.rank < 2 or x.rank > 3:
        text = source_text(ctx.arg_spans.get("x")) or "x"
        hint = f"add flatten(): dense(flatten({text}), {units})" if x.rank > 3 else None
        raise ctx.error(f"dense expects rank 2, got {x.type}", "x", hint, DslShapeError)
    fan_in = x.shape[-1]
    if not isinstance(fan_in, int):
        raise ctx.error(f"dense needs a static last dim, got {x.type}", "x", cls=DslShapeError)
    path = _weighted(ctx)
    w = ctx.lw.weight(f"{path}.weight", (fan_in, units), _init(ctx, kernel_init, "kernel_init", fan_in, units), span=ctx.span, dtype=x.dtype)
    y = ctx.b.op("MatMul", [x, w])
    n = fan_in * units
    if use_bias:
        y = ctx.b.op("Add", [y, ctx.lw.weight(f"{path}.bias", (units,), I.zeros, span=ctx.span, dtype=x.dtype)])
        n += units
    return _record(ctx, path, _activate(ctx, y, activation), n)


def conv2d(ctx: Ctx, x: "T", filters: "count", kernel: "ints" = 3, strides: "ints" = 1, padding=Symbol("valid"),
           dilation: "ints" = 1, groups: "count" = 1, activation=None, use_bias: "bool" = True,
           kernel_init: "word" = Symbol("glorot_uniform")):
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    k, s, d = _pair(ctx, kernel, "kernel"), _pair(ctx, strides, "strides"), _pair(ctx, dilation, "dilation")
    cin = x.shape[1]
    if not isinstance(cin, int) or cin % groups or filters % groups:
        raise ctx.error(f"conv2d with groups={groups} needs channels divisible by it, got {x.type} "
                        f"and {filters} filters", "groups", cls=DslShapeError)
    x, padding, same_dims = _same_at_run_time(ctx, x, padding, k, s, d)
    pads = _pads(ctx, padding, x, k, s, d)
    path = _weighted(ctx)
    fan_in, fan_out = cin // groups * k[0] * k[1], filters * k[0] * k[1]
    w = ctx.lw.weight(f"{path}.weight", (filters, cin // groups, *k), _init(ctx, kernel_init, "kernel_init", fan_in, fan_out),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    attrs = {"strides": s, "pads": pads, "dilations": d, "group": groups}
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv2d_im2col(ctx.b, x, w, bias, s, pads, d, groups)
    else:
        y = ctx.b.op("Conv", [x, w] + ([bias] if bias is not None else []), {"kernel_shape": k, **attrs})
    y = _named_spatial(ctx, y, same_dims)
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


def _output_padding(ctx: Ctx, output_padding, padding, s: list[int], d: list[int]) -> list[int]:
    """torch's output_padding: extra rows/columns at the bottom/right, each smaller than the stride
    or the dilation on its axis (else the size is not ambiguous and torch refuses it too)."""
    vals = [output_padding] * 2 if isinstance(output_padding, int) else list(output_padding)
    if len(vals) != 2 or any(v < 0 for v in vals):
        raise ctx.error(f"conv2d_transpose expects `output_padding` as an integer or a pair [h, w] of "
                        f"integers >= 0, got {output_padding}", "output_padding")
    for v, si, di, axis in zip(vals, s, d, ("height", "width")):
        if v >= max(si, di):
            raise ctx.error(f"conv2d_transpose output_padding {v} on the {axis} must be smaller than the stride "
                            f"{si} or the dilation {di}", "output_padding",
                            "output_padding picks one of the `stride` output sizes that a conv maps to the same "
                            "input size; use strides > output_padding")
    if any(vals) and isinstance(padding, Symbol) and padding.name == "same":
        raise ctx.error("conv2d_transpose output_padding needs explicit padding: `same` already makes the output "
                        "input * strides", "output_padding", "give padding as an integer or [top, left, bottom, right]")
    return vals


def conv2d_transpose(ctx: Ctx, x: "T", filters: "count", kernel: "ints" = 3, strides: "ints" = 1,
                     padding=Symbol("valid"), dilation: "ints" = 1, activation=None, use_bias: "bool" = True,
                     kernel_init: "word" = Symbol("glorot_uniform"), output_padding: "ints" = 0):
    """torch ConvTranspose2d: padding=p crops p from each side of the full transposed convolution,
    [top, left, bottom, right] each side on its own; output_padding adds rows/columns at the end."""
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    k, s, d = _pair(ctx, kernel, "kernel"), _pair(ctx, strides, "strides"), _pair(ctx, dilation, "dilation")
    cin = x.shape[1]
    if not isinstance(cin, int):
        raise ctx.error(f"conv2d_transpose needs a static channel axis 1, got {x.type}", "x", cls=DslShapeError)
    out_pad = _output_padding(ctx, output_padding, padding, s, d)
    if isinstance(padding, Symbol) and padding.name == "same":
        # Keras: output = input * stride; pad what the full transposed conv adds beyond that.
        begin, end = [], []
        for i in range(2):
            total = (k[i] - 1) * d[i] + 1 - s[i]  # (n - 1) * s + (k - 1) * d + 1 - n * s: n cancels
            if total < 0:
                out_pad[i], total = -total, 0
            begin.append(total // 2)
            end.append(total - total // 2)
        pads = begin + end
    else:
        pads = _pads(ctx, padding, x, k, s, d)
        if any(p < 0 for p in pads):
            raise ctx.error(f"conv2d_transpose padding {padding} is negative", "padding")
        for i, n in enumerate(x.shape[2:]):
            if isinstance(n, int) and (n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i] - pads[i] - pads[i + 2] < 1:
                raise ctx.error(f"conv2d_transpose padding {padding} crops all of the {(n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i]} "
                                f"output {('rows', 'columns')[i]} of {x.type}", "padding", "use a smaller padding",
                                DslShapeError)
    path = _weighted(ctx)
    fan_in, fan_out = filters * k[0] * k[1], cin * k[0] * k[1]
    w = ctx.lw.weight(f"{path}.weight", (cin, filters, *k), _init(ctx, kernel_init, "kernel_init", fan_in, fan_out),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    beyond = [0, 0]  # output_padding >= stride (below the dilation), which onnxruntime refuses:
    for i in range(2):  # less end padding gives the same rows, then zeros past every window
        if out_pad[i] >= s[i]:
            cut = min(out_pad[i], pads[i + 2])
            pads[i + 2] -= cut
            beyond[i], out_pad[i] = out_pad[i] - cut, 0
    b = ctx.b
    inner_bias = bias if not any(beyond) else None  # else added after the zero rows, as torch's reach them
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv_transpose2d_im2col(b, x, w, inner_bias, s, pads, d, 1, out_pad)
    else:
        out_hw = [(n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i] - pads[i] - pads[i + 2]
                  for i, n in enumerate(x.shape[2:])] if all(isinstance(n, int) for n in x.shape[2:]) else None
        if out_hw and patterns.transposed_conv_form("conv_transpose", x, w.shape, s, pads, d, out_hw) == "matmuls":
            y = patterns.conv_transpose2d_matmuls(b, x, w, inner_bias, s, pads, d, out_hw)
        else:
            attrs = {"kernel_shape": k, "strides": s, "pads": pads, "dilations": d, "output_padding": out_pad}
            y = b.op("ConvTranspose", [x, w] + ([inner_bias] if inner_bias is not None else []), attrs)
    if any(beyond):
        y = patterns.pad_or_crop(b, y, {2: (0, beyond[0]), 3: (0, beyond[1])})
        if bias is not None:
            y = b.op("Add", [y, b.op("Reshape", [bias, b.ints([-1, 1, 1])])])
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


def _constant_along(v: Value, rank: int, axes: list[int]) -> bool:
    """Whether v, broadcast to `rank` dims, has size 1 on every one of `axes`."""
    shape = (1,) * (rank - v.rank) + tuple(v.shape)
    return v.rank <= rank and all(shape[a] == 1 for a in axes)


def _channel_shift(b, x: Value, axes: list[int]) -> tuple[Value, Value | None]:
    """x as y + shift with `shift` constant along a training batch norm's reduced `axes` (a dense or
    convolution bias right before it, the beta of a batch norm before it), or (x, None). The batch
    statistics taken from y make shift's gradient an exact zero, as the mathematics has it
    (BN(y + shift) = BN(y)); taken from x, it is sum(g - mean(g)), a round-off (~1e-8) whose sign
    each runtime picks for itself and that Adam turns into steps of up to lr (issue 19). A bias inside
    a Conv or ConvTranspose node: the same node without it gives y (x's node is then dead code unless
    something else reads x)."""
    p = x.producer
    if p is None:
        return x, None
    if p.op == "Add":
        for y, shift in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            if (tuple(y.shape) == tuple(x.shape) and _constant_along(shift, x.rank, axes)
                    and not _constant_along(y, x.rank, axes)):
                return y, shift
    if p.op in ("Conv", "ConvTranspose") and len(p.inputs) == 3 and p.inputs[2] is not None:
        y = b.op(p.op, p.inputs[:2], p.attrs)
        return y, b.op("Reshape", [p.inputs[2], b.ints([x.shape[1]] + [1] * (x.rank - 2))])
    return x, None


def batch_norm(ctx: Ctx, x: "T", momentum: "float" = 0.99, eps: "float" = 1e-3):
    """Keras BatchNormalization on the channel axis 1: batch statistics while training (and the
    running statistics' update, returned by the step), running statistics at inference."""
    x = _float_tensor(ctx, x, "x")
    if x.rank < 2 or not isinstance(x.shape[1], int):
        raise ctx.error(f"batch_norm needs a static channel axis 1, got {x.type}", "x", cls=DslShapeError)
    c = x.shape[1]
    path = _weighted(ctx)
    lw, b = ctx.lw, ctx.b
    gamma = lw.weight(f"{path}.gamma", (c,), I.ones, span=ctx.span, dtype=x.dtype)
    beta = lw.weight(f"{path}.beta", (c,), I.zeros, span=ctx.span, dtype=x.dtype)
    mean_w = lw.weight(f"{path}.moving_mean", (c,), I.zeros, trainable=False, span=ctx.span, dtype=x.dtype)
    var_w = lw.weight(f"{path}.moving_variance", (c,), I.ones, trainable=False, span=ctx.span, dtype=x.dtype)
    bshape = b.ints([1, c] + [1] * (x.rank - 2))
    axes = [0] + list(range(2, x.rank))
    if ctx.sc.training:
        y, shift = _channel_shift(b, x, axes)
        mean = b.op("ReduceMean", [y, b.ints(axes)], {"keepdims": 1})
        centered = b.op("Sub", [y, mean])
        var = b.op("ReduceMean", [b.op("Mul", [centered, centered]), b.ints(axes)], {"keepdims": 1})
        flat = b.ints([c])
        x_mean = mean if shift is None else b.op("Add", [mean, shift])  # the statistic of x itself
        for w, stat in ((mean_w, x_mean), (var_w, var)):
            # a second call of the model in the same step updates the first call's result (Keras, torch)
            kept = b.op("Mul", [lw.state_updates.get(w.name, w), b.const(momentum, x.dtype)])
            new = b.op("Add", [kept, b.op("Mul", [b.op("Reshape", [stat, flat]), b.const(1 - momentum, x.dtype)])])
            lw.state_updates[w.name] = new
    else:
        mean, var = b.op("Reshape", [mean_w, bshape]), b.op("Reshape", [var_w, bshape])
        centered = b.op("Sub", [x, mean])
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps, x.dtype)])])])
    y = b.op("Mul", [centered, b.op("Mul", [inv, b.op("Reshape", [gamma, bshape])])])
    y = b.op("Add", [y, b.op("Reshape", [beta, bshape])])
    return _record(ctx, path, y, 4 * c)


def _zero_row(init, row: int, width: int):
    """`init` with row `row` of a [rows, width] table zeroed, also when `I.generate` draws a big
    table in flat chunks (it asks for them in order, so the numbers drawn so far give the offset)."""
    drawn = [0]

    def zeroed(rng, shape):
        out = np.array(init(rng, shape), dtype=np.float64, copy=True)
        if len(shape) == 2:
            out[row] = 0.0
            return out
        flat = out.reshape(-1)
        lo, hi = row * width - drawn[0], (row + 1) * width - drawn[0]
        flat[max(lo, 0):max(min(hi, flat.size), 0)] = 0.0
        drawn[0] += flat.size
        return out
    return zeroed


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


def embedding(ctx: Ctx, x: "T", input_dim: "count", output_dim: "count", init: "word" = Symbol("uniform"),
              padding_idx: "int" = None, dtype: "word" = None):
    """Rows of a [input_dim, output_dim] table. With `padding_idx` (torch's; negative counts from
    the end) that row starts at zero and its lookups give zeros and pass no gradient back. The table
    is `dtype` (default: f64 among f64 values, else f32)."""
    x = _t(ctx, x, arg="x")
    dtype = _float_dtype(ctx, dtype)
    if x.dtype not in ("i64", "i32"):
        raise ctx.error(f"embedding needs integer indices, got {x.type}", "x", "use cast(x, i64)")
    if padding_idx is not None:
        if not -input_dim <= padding_idx < input_dim:
            raise ctx.error(f"embedding padding_idx {padding_idx} is out of range for input_dim={input_dim}",
                            "padding_idx", f"use an index in [{-input_dim}, {input_dim - 1}]")
        padding_idx %= input_dim
    path = _weighted(ctx)
    table_init = _init(ctx, init, "init", input_dim, output_dim)
    if padding_idx is not None:
        table_init = _zero_row(table_init, padding_idx, output_dim)
    w = ctx.lw.weight(f"{path}.weight", (input_dim, output_dim), table_init, span=ctx.span, dtype=dtype)
    b = ctx.b
    y = b.op("Gather", [w, x], {"axis": 0})
    if padding_idx is not None:  # lookups of the padding row: zero, and so no gradient for it
        keep = b.op("Not", [b.op("Equal", [x, b.const(padding_idx, x.dtype)])])
        keep = b.op("Unsqueeze", [b.op("Cast", [keep], {"to": DTYPE_CODE[w.dtype]}), b.ints([-1])])
        y = b.op("Mul", [y, keep])
    return _record(ctx, path, y, input_dim * output_dim)


def layer_norm(ctx: Ctx, x: "T", axis: "int" = -1, eps: "float" = 1e-3):
    """Keras LayerNormalization over one axis: (x - mean) / sqrt(var + eps) * gamma + beta, the
    biased variance, gamma and beta over the normalized axis (Keras' default eps; PyTorch's is 1e-5)."""
    x = _float_tensor(ctx, x, "x")
    if not -x.rank <= axis < x.rank:
        raise ctx.error(f"axis {axis} is out of range for {x.type}", "axis", cls=DslShapeError)
    d = x.shape[axis]
    if not isinstance(d, int):
        raise ctx.error(f"layer_norm needs a static size on the normalized axis {axis}, got {x.type}", "axis",
                        cls=DslShapeError)
    if eps <= 0:
        raise ctx.error(f"layer_norm eps must be positive, got {eps}", "eps")
    path = _weighted(ctx)
    lw, b = ctx.lw, ctx.b
    gamma = lw.weight(f"{path}.gamma", (d,), I.ones, span=ctx.span, dtype=x.dtype)
    beta = lw.weight(f"{path}.beta", (d,), I.zeros, span=ctx.span, dtype=x.dtype)
    along = b.ints([d] + [1] * (x.rank - 1 - axis % x.rank))  # gamma, beta lined up with the axis
    y = b.op("Mul", [_standardize(b, x, axis, eps), b.op("Reshape", [gamma, along])])
    return _record(ctx, path, b.op("Add", [y, b.op("Reshape", [beta, along])]), 2 * d)


def _standardize(b, x: Value, axis: int, eps: float) -> Value:
    """(x - mean) / sqrt(var + eps) along one axis, with the biased variance (layer and group norm)."""
    axes = b.ints([axis])
    centered = b.op("Sub", [x, b.op("ReduceMean", [x, axes], {"keepdims": 1})])
    var = b.op("ReduceMean", [b.op("Mul", [centered, centered]), axes], {"keepdims": 1})
    return b.op("Mul", [centered, b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps, x.dtype)])])])])


def group_norm(ctx: Ctx, x: "T", groups: "count", eps: "float" = 1e-3):
    """torch.nn.GroupNorm on channels-first [N, C, ...]: the channels split into `groups` runs, each
    run normalized with its mean and biased variance over its channels and all spatial positions,
    then gamma and beta per channel (eps 1e-3 as layer_norm; torch's default is 1e-5)."""
    x = _float_tensor(ctx, x, "x")
    if x.rank < 2 or not isinstance(x.shape[1], int):
        raise ctx.error(f"group_norm needs channels-first input [N, C, ...] with a static C, got {x.type}", "x",
                        cls=DslShapeError)
    c = x.shape[1]
    if c % groups:
        raise ctx.error(f"group_norm with groups={groups} needs channels divisible by it, got {x.type}", "groups",
                        f"use a divisor of {c} channels", DslShapeError)
    if eps <= 0:
        raise ctx.error(f"group_norm eps must be positive, got {eps}", "eps")
    path = _weighted(ctx)
    lw, b = ctx.lw, ctx.b
    gamma = lw.weight(f"{path}.gamma", (c,), I.ones, span=ctx.span, dtype=x.dtype)
    beta = lw.weight(f"{path}.beta", (c,), I.zeros, span=ctx.span, dtype=x.dtype)
    grouped = b.op("Reshape", [x, b.ints([0, groups, -1])])  # [N, G, C/G * spatial]
    normed = _standardize(b, grouped, 2, eps)
    if all(isinstance(d, int) for d in x.shape[1:]):
        back = b.ints([0] + list(x.shape[1:]))
    else:
        back = patterns.shape_of(b, x)
    normed = b.op("Reshape", [normed, back])
    along = b.ints([c] + [1] * (x.rank - 2))  # gamma, beta per channel
    y = b.op("Mul", [normed, b.op("Reshape", [gamma, along])])
    return _record(ctx, path, b.op("Add", [y, b.op("Reshape", [beta, along])]), 2 * c)


def conv1d(ctx: Ctx, x: "T", filters: "count", kernel: "count" = 3, strides: "count" = 1,
           padding=Symbol("valid"), dilation: "count" = 1, groups: "count" = 1, activation=None,
           use_bias: "bool" = True, kernel_init: "word" = Symbol("glorot_uniform")):
    """x [N, C, L] -> [N, filters, L']: conv2d on a 1-high image. The weight is [filters, C/groups,
    kernel], as torch Conv1d keeps it."""
    x = _float_tensor(ctx, x, "x")
    if x.rank != 3:
        raise ctx.error(f"conv1d() expects a rank-3 value [N, C, L], got {x.type}", "x", cls=DslShapeError)
    if isinstance(padding, list):
        raise ctx.error("conv1d padding must be `same`, `valid` or an integer", "padding")
    cin = x.shape[1]
    if not isinstance(cin, int) or cin % groups or filters % groups:
        raise ctx.error(f"conv1d with groups={groups} needs channels divisible by it, got {x.type} "
                        f"and {filters} filters", "groups", cls=DslShapeError)
    b = ctx.b
    image = b.op("Unsqueeze", [x, b.ints([2])])  # [N, C, 1, L]
    k, s, d = [1, kernel], [1, strides], [1, dilation]
    image, padding, same_dims = _same_at_run_time(ctx, image, padding, k, s, d)
    pads = _pads(ctx, padding, image, k, s, d)
    pads[0] = pads[2] = 0  # nothing above or below the one row
    path = _weighted(ctx)
    w = ctx.lw.weight(f"{path}.weight", (filters, cin // groups, kernel),
                      _init(ctx, kernel_init, "kernel_init", cin // groups * kernel, filters * kernel),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    w4 = b.op("Unsqueeze", [w, b.ints([2])])
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv2d_im2col(b, image, w4, bias, s, pads, d, groups)
    else:
        attrs = {"kernel_shape": k, "strides": s, "pads": pads, "dilations": d, "group": groups}
        y = b.op("Conv", [image, w4] + ([bias] if bias is not None else []), attrs)
    y = b.op("Squeeze", [_named_spatial(ctx, y, same_dims), b.ints([2])])
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


def conv3d(ctx: Ctx, x: "T", filters: "count", kernel: "ints" = 3, strides: "ints" = 1, padding=Symbol("valid"),
           dilation: "ints" = 1, groups: "count" = 1, activation=None, use_bias: "bool" = True,
           kernel_init: "word" = Symbol("glorot_uniform")):
    """x [N, C, D, H, W] -> [N, filters, D', H', W'], weight [filters, C/groups, kd, kh, kw] as torch
    Conv3d; padding: valid, same, one number, one per axis or [d0, h0, w0, d1, h1, w1]."""
    x = _ranked_input(ctx, x, 3)
    k, s, d = _tuple(ctx, kernel, 3, "kernel"), _tuple(ctx, strides, 3, "strides"), _tuple(ctx, dilation, 3, "dilation")
    cin = x.shape[1]
    if not isinstance(cin, int) or cin % groups or filters % groups:
        raise ctx.error(f"conv3d with groups={groups} needs channels divisible by it, got {x.type} "
                        f"and {filters} filters", "groups", cls=DslShapeError)
    x, padding, same_dims = _same_at_run_time(ctx, x, padding, k, s, d)
    pads = _window_pads(ctx, padding, x, k, s, d, pool=False)
    path = _weighted(ctx)
    taps = k[0] * k[1] * k[2]
    w = ctx.lw.weight(f"{path}.weight", (filters, cin // groups, *k),
                      _init(ctx, kernel_init, "kernel_init", cin // groups * taps, filters * taps),
                      span=ctx.span, dtype=x.dtype)
    bias = ctx.lw.weight(f"{path}.bias", (filters,), I.zeros, span=ctx.span, dtype=x.dtype) if use_bias else None
    if ctx.lw.options.conv_lowering == "im2col":
        y = patterns.conv_nd_im2col(ctx.b, x, w, bias, s, pads, d, groups)
    else:
        attrs = {"kernel_shape": k, "strides": s, "pads": pads, "dilations": d, "group": groups}
        y = ctx.b.op("Conv", [x, w] + ([bias] if bias is not None else []), attrs)
    y = _named_spatial(ctx, y, same_dims)
    n = int(np.prod(w.shape)) + (filters if use_bias else 0)
    return _record(ctx, path, _activate(ctx, y, activation), n)


# ------------------------------------------------------------------ layers without weights
def _pool(ctx: Ctx, op: str, x, pool, strides, padding, extra=None) -> Value:
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    k = _pair(ctx, pool, "pool")
    s = _pair(ctx, strides if strides is not None else pool, "strides")
    return _record(ctx, _layer_name(ctx), _pool_op(ctx, op, x, k, s, padding, extra))


def _pool_op(ctx: Ctx, op: str, x: Value, k, s, padding, extra=None) -> Value:
    """MaxPool / AveragePool on [N, C, *spatial]; `same` at stride > 1 on a symbolic dim pads at run
    time (-inf for the maximum; the average divides by the same pool of a zero-padded map of ones, so
    the padding is not counted)."""
    padded, padding, same_dims = _same_at_run_time(ctx, x, padding, k, s, fill=-np.inf if op == "MaxPool" else 0.0)
    pads = _window_pads(ctx, padding, padded, k, s)
    attrs = {"kernel_shape": k, "strides": s, "pads": pads, **(extra or {})}
    y = ctx.b.op(op, [padded], attrs)
    if same_dims is not None and op == "AveragePool":
        b = ctx.b
        ones = b.op("ConstantOfShape", [b.op("Shape", [x])], {"value": np.ones(1, DTYPES[x.dtype])})
        mask, _, _ = _same_at_run_time(ctx, ones, Symbol("same"), k, s)
        y = b.op("Div", [y, b.op(op, [mask], attrs)])
    return _named_spatial(ctx, y, same_dims)


def max_pool2d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool(ctx, "MaxPool", x, pool, strides, padding)


def avg_pool2d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    # Keras averages over the window taps inside the image: padding is not counted
    return _pool(ctx, "AveragePool", x, pool, strides, padding, {"count_include_pad": 0})


def global_avg_pool2d(ctx: Ctx, x: "T"):
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    y = ctx.b.op("Flatten", [ctx.b.op("GlobalAveragePool", [x])], {"axis": 1})
    return _record(ctx, _layer_name(ctx), y)


# 1-D pools run as 2-D ones on a one-row image; 3-D pools are 5-D MaxPool / AveragePool.
_LAYOUTS = {1: "[N, C, L]", 3: "[N, C, D, H, W]"}


def _ranked_input(ctx: Ctx, x, spatial: int) -> Value:
    x = _float_tensor(ctx, x, "x")
    if x.rank != spatial + 2:
        raise ctx.error(f"{ctx.name}() expects a rank-{spatial + 2} value {_LAYOUTS[spatial]}, got {x.type}", "x",
                        cls=DslShapeError)
    return x


def _tuple(ctx: Ctx, v, n: int, arg: str) -> list[int]:
    vals = [v] * n if isinstance(v, int) else list(v)
    if len(vals) != n or any(x < 1 for x in vals):
        what = "integer" if n == 1 else f"integer or a list of {n}"
        raise ctx.error(f"{ctx.name}() expects `{arg}` as a positive {what}, got {describe(v)}", arg)
    return vals


def _window_pads(ctx: Ctx, padding, x: Value, k: list[int], s: list[int], d: list[int] | None = None,
                 pool: bool = True) -> list[int]:
    """valid | same | INT | one per spatial axis | begin and end per axis, as ONNX `pads` (all the
    begins, then all the ends); none negative, and for a pool each smaller than the window, as
    ONNX and torch require."""
    n = len(k)
    if isinstance(padding, Symbol) and padding.name in ("valid", "same"):
        if padding.name == "valid":
            return [0] * 2 * n
        return _same_pads(ctx, x, k, s, d or [1] * n)
    if isinstance(padding, int) and not isinstance(padding, bool):
        pads = [padding] * 2 * n
    elif isinstance(padding, list) and all(isinstance(p, int) for p in padding) and len(padding) in (n, 2 * n):
        pads = padding * 2 if len(padding) == n else list(padding)
    else:
        lists = f"a list of {n} or {2 * n} integers" if n > 1 else "a list of 2 integers (begin, end)"
        raise ctx.error(f"{ctx.name}() padding must be `same`, `valid`, an integer or {lists}", "padding")
    if not pool and any(p < 0 for p in pads):
        raise ctx.error(f"{ctx.name}() padding {padding} is negative", "padding")
    for i, p in enumerate(pads if pool else []):
        if not 0 <= p < k[i % n]:
            window = k[0] if n == 1 else k
            raise ctx.error(f"{ctx.name}() padding {padding} does not fit the pool window {window}: each pad "
                            f"must be at least 0 and smaller than the window on its axis", "padding",
                            "use a smaller padding or padding=same")
    return pads


def _pool_1d(ctx: Ctx, op: str, x, pool, strides, padding, extra=None) -> Value:
    x = _ranked_input(ctx, x, 1)
    k = _tuple(ctx, pool, 1, "pool")
    s = _tuple(ctx, strides if strides is not None else pool, 1, "strides")
    b = ctx.b
    image = b.op("Unsqueeze", [x, b.ints([2])])  # [N, C, 1, L]: the 2-D pool and its gradient rule
    if not (isinstance(padding, Symbol) and padding.name == "same"):  # (same: worked out on the image)
        pads = _window_pads(ctx, padding, x, k, s)
        padding = [0, pads[0], 0, pads[1]]
    y = _pool_op(ctx, op, image, [1, *k], [1, *s], padding, extra)
    return _record(ctx, _layer_name(ctx), b.op("Squeeze", [y, b.ints([2])]))


def _pool_3d(ctx: Ctx, op: str, x, pool, strides, padding, extra=None) -> Value:
    x = _ranked_input(ctx, x, 3)
    k = _tuple(ctx, pool, 3, "pool")
    s = _tuple(ctx, strides if strides is not None else pool, 3, "strides")
    return _record(ctx, _layer_name(ctx), _pool_op(ctx, op, x, k, s, padding, extra))


def max_pool1d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_1d(ctx, "MaxPool", x, pool, strides, padding)


def avg_pool1d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_1d(ctx, "AveragePool", x, pool, strides, padding, {"count_include_pad": 0})


def max_pool3d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_3d(ctx, "MaxPool", x, pool, strides, padding)


def avg_pool3d(ctx: Ctx, x: "T", pool: "ints" = 2, strides: "ints" = None, padding=Symbol("valid")):
    return _pool_3d(ctx, "AveragePool", x, pool, strides, padding, {"count_include_pad": 0})


def _global_mean(spatial: int):
    def pool(ctx: Ctx, x: "T"):
        x = _ranked_input(ctx, x, spatial)
        y = ctx.b.op("ReduceMean", [x, ctx.b.ints(list(range(2, 2 + spatial)))], {"keepdims": 0})
        return _record(ctx, _layer_name(ctx), y)
    return pool


def dropout(ctx: Ctx, x: "T", rate: "float"):
    x = _float_tensor(ctx, x, "x")
    if not 0 <= rate < 1:
        raise ctx.error(f"dropout rate must be in [0, 1), got {rate}", "rate")
    if not ctx.sc.training or rate == 0:
        return _record(ctx, _layer_name(ctx), x)
    keep = _keep_mask(ctx, x, rate)
    b = ctx.b  # (the key moved the builder's span)
    # (Cast + Mul: onnxruntime's Where with scalar branches measured slower, bench/README.md)
    scaled = b.op("Mul", [b.op("Cast", [keep], {"to": DTYPE_CODE[x.dtype]}), b.const(1.0 / (1.0 - rate), x.dtype)])
    return _record(ctx, _layer_name(ctx), b.op("Mul", [x, scaled]))


def flatten(ctx: Ctx, x: "T"):
    x = _t(ctx, x, arg="x")
    if x.rank < 2:
        raise ctx.error(f"flatten needs a batch axis and at least one more, got {x.type}", "x", cls=DslShapeError)
    return _record(ctx, _layer_name(ctx), ctx.b.op("Flatten", [x], {"axis": 1}))


def reshape(ctx: Ctx, x: "T", shape: "any"):
    x = _t(ctx, x, arg="x")
    if isinstance(shape, list) and is_shape_list(shape):  # [N, 12]: dims as values
        target = ctx.lw.shape_vector(ctx.sc, shape, ctx.arg_spans.get("shape", ctx.span))
        return _record(ctx, _layer_name(ctx), ctx.b.op("Reshape", [x, target]))
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ctx.error("reshape() expects the shape as a list of integers (-1 for one inferred dim)", "shape")
    return _record(ctx, _layer_name(ctx), ctx.b.op("Reshape", [x, ctx.b.ints(shape)]))


def concat(ctx: Ctx, *xs, axis: "int" = -1):
    if len(xs) < 1:
        raise ctx.error("concat() needs at least one value")
    return ctx.b.op("Concat", list(xs), {"axis": axis})


def upsample2d(ctx: Ctx, x: "T", size: "ints" = 2, mode: "word" = Symbol("nearest")):
    """Each pixel repeated (nearest), or bilinear interpolation as torch's
    interpolate(mode="bilinear", align_corners=False) (ONNX Resize, half_pixel coordinates)."""
    x = _spatial_input(ctx, _float_tensor(ctx, x, "x"))
    sh, sw = _pair(ctx, size, "size")
    if mode.name not in ("nearest", "bilinear"):
        raise ctx.error(f"unknown upsampling mode `{mode.name}`", "mode", "use nearest or bilinear")
    up = patterns.upsample_nearest if mode.name == "nearest" else patterns.upsample_bilinear
    return _record(ctx, _layer_name(ctx), up(ctx.b, x, sh, sw))


# ------------------------------------------------------------------ activations
def _unary(op: str, attrs=None):
    def act(ctx: Ctx, x: "T"):
        return ctx.b.op(op, [_float_tensor(ctx, x, "x")], attrs or {})
    return act


def leaky_relu(ctx: Ctx, x: "T", alpha: "float" = 0.3):
    return ctx.b.op("LeakyRelu", [_float_tensor(ctx, x, "x")], {"alpha": float(alpha)})


def elu(ctx: Ctx, x: "T", alpha: "float" = 1.0):
    return ctx.b.op("Elu", [_float_tensor(ctx, x, "x")], {"alpha": float(alpha)})


def softmax(ctx: Ctx, x: "T", axis: "int" = -1):
    return ctx.b.op("Softmax", [_float_tensor(ctx, x, "x")], {"axis": axis})


def log_softmax(ctx: Ctx, x: "T", axis: "int" = -1):
    return ctx.b.op("LogSoftmax", [_float_tensor(ctx, x, "x")], {"axis": axis})


def gelu(ctx: Ctx, x: "T"):
    """Exact GELU, x * Phi(x), from Erf so that every part has a gradient rule."""
    x = _float_tensor(ctx, x, "x")
    b = ctx.b
    phi = b.op("Add", [b.const(1.0, x.dtype), b.op("Erf", [b.op("Mul", [x, b.const(1 / math.sqrt(2), x.dtype)])])])
    return b.op("Mul", [b.op("Mul", [x, phi]), b.const(0.5, x.dtype)])


def square(ctx: Ctx, x: "T"):
    x = _float_tensor(ctx, x, "x")
    return ctx.b.op("Mul", [x, x])


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


# ------------------------------------------------------------------ math
def clip(ctx: Ctx, x: "T", low: "T", high: "T"):
    x = _float_tensor(ctx, x, "x")
    lo, hi = _t(ctx, low, x, "low"), _t(ctx, high, x, "high")
    if lo.rank or hi.rank:
        raise ctx.error("clip() bounds must be scalars", "low")
    return ctx.b.op("Clip", [x, lo, hi])


def _reduction(op: str):
    def reduce(ctx: Ctx, x: "T", axis: "ints" = None, keepdims: "bool" = False):
        x = _numbers(ctx, _t(ctx, x, arg="x"))
        axes = _keepdims_axes(ctx, x, axis)
        b = ctx.b
        inputs = [x] if axes is None else [x, b.ints(axes)]
        return b.op(op, inputs, {"keepdims": int(keepdims)})
    return reduce


def argmax(ctx: Ctx, x: "T", axis: "int" = -1, keepdims: "bool" = False):
    x = _numbers(ctx, _t(ctx, x, arg="x"))
    _keepdims_axes(ctx, x, axis)
    return ctx.b.op("ArgMax", [x], {"axis": axis, "keepdims": int(keepdims)})


def cast(ctx: Ctx, x: "T", dtype: "word"):
    x = _t(ctx, x, arg="x")
    if dtype.name not in DTYPE_CODE:
        raise ctx.error(f"unknown dtype `{dtype.name}`", "dtype", f"use one of {', '.join(DTYPE_CODE)}")
    return ctx.b.op("Cast", [x], {"to": DTYPE_CODE[dtype.name]})


def where(ctx: Ctx, cond: "T", a: "T", b: "T"):
    like = a if isinstance(a, Value) else b if isinstance(b, Value) else None
    return ctx.b.op("Where", [_t(ctx, cond, arg="cond"), _t(ctx, a, like, "a"), _t(ctx, b, like, "b")])


def one_hot(ctx: Ctx, indices: "T", depth: "count", dtype: "word" = None):
    """0/1 rows of `dtype` (default: f64 among f64 values, else f32)."""
    idx = _t(ctx, indices, arg="indices")
    if idx.dtype not in ("i64", "i32"):
        raise ctx.error(f"one_hot needs integer indices, got {idx.type}", "indices", "use cast(x, i64)")
    dtype = _float_dtype(ctx, dtype)
    b = ctx.b
    return b.op("OneHot", [idx, b.const(depth, "i64"), b.const([0.0, 1.0], dtype)], {"axis": -1})


def transpose(ctx: Ctx, x: "T", perm: "ints" = None):
    x = _t(ctx, x, arg="x")
    perm = [perm] if isinstance(perm, int) else perm
    if x.rank == 0 and not perm:  # a scalar is its own transpose (and ONNX wants a non-empty perm)
        return x
    return ctx.b.op("Transpose", [x], {"perm": perm if perm is not None else list(range(x.rank))[::-1]})


def _pairwise(op: str):
    """minimum / maximum with broadcasting; the gradient goes to the selected side (to `a` on ties,
    as TensorFlow does)."""
    def pick(ctx: Ctx, a: "T", b: "T"):
        like = a if isinstance(a, Value) else b if isinstance(b, Value) else None
        x, y = _float_tensor(ctx, _t(ctx, a, like, "a"), "a"), _t(ctx, b, like, "b")
        if x.dtype != y.dtype:
            text = source_text(ctx.arg_spans.get("b")) or "b"
            raise ctx.error(f"{ctx.name}() needs operands of one dtype, got {x.type} and {y.type}", "b",
                            f"convert one of them, e.g. cast({text}, {x.dtype})")
        return ctx.b.op(op, [x, y])
    return pick


# ------------------------------------------------------------------ random
def _random(ctx: Ctx, kind: str, like_or_shape) -> Value:
    """Standard draws (uniform in [0, 1) or normal) shaped like a tensor or a shape, from the
    counter-based generator (random.py); with the `random="input"` option a graph input instead,
    so that a test can feed its own noise."""
    lw, b = ctx.lw, ctx.b
    if isinstance(like_or_shape, Value) and like_or_shape.dtype == "i64":  # a shape computed at run time
        like_or_shape = R.shaped_like(b, like_or_shape)
    if lw.options.random == "input":
        from ..ir.core import TensorType
        shape = like_or_shape.shape if isinstance(like_or_shape, Value) else tuple(like_or_shape)
        dtype = like_or_shape.dtype if isinstance(like_or_shape, Value) else "f32"
        return lw.root.input(f"random.{next(lw.random_count)}", TensorType(dtype, shape))
    like = like_or_shape if isinstance(like_or_shape, Value) else R.shaped_like(b, like_or_shape)
    dtype = like.dtype if like.type.is_float else "f32"
    keys = [lw.random_key(ctx.sc) for _ in range(2 if kind == "normal" else 1)]
    b = ctx.b  # (random_key moved the builder's span)
    return R.normal(b, like, keys, dtype) if kind == "normal" else R.uniform(b, like, keys, dtype)


def _keep_mask(ctx: Ctx, x: Value, rate: float) -> Value:
    """uniform(like x) >= rate (dropout's kept elements), the same mask _random's draw would give."""
    lw = ctx.lw
    if lw.options.random == "input":
        return ctx.b.op("GreaterOrEqual", [_random(ctx, "uniform", x), ctx.b.const(rate, x.dtype)])
    key = lw.random_key(ctx.sc)
    return R.keep_mask(ctx.b, x, [key], rate, x.dtype)


def _shape_or_like(ctx: Ctx, shape, like) -> Value | list:
    if (shape is None) == (like is None):
        raise ctx.error(f"{ctx.name}() takes either a shape or like=")
    if like is not None:
        return _float_tensor(ctx, like, "like")
    if isinstance(shape, list) and is_shape_list(shape):  # [N, 100]: a run-time shape
        return ctx.lw.shape_vector(ctx.sc, shape, ctx.arg_spans.get("shape", ctx.span))
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ctx.error(f"{ctx.name}() needs the shape as a list of positive integers or dims such as "
                        f"[N, 100]", "shape")
    return shape


def _affine(ctx: Ctx, x: Value, scale: float, shift: float) -> Value:
    b = ctx.b
    if scale != 1.0 or ctx.lw.options.random == "input":  # (a fed draw's first use is its own call)
        x = b.op("Mul", [x, b.const(scale, x.dtype)])
    return b.op("Add", [x, b.const(shift, x.dtype)]) if shift != 0.0 else x


def random_normal(ctx: Ctx, shape: "any" = None, mean: "float" = 0.0, stddev: "float" = 1.0, like: "any" = None):
    z = _random(ctx, "normal", _shape_or_like(ctx, shape, like))
    return _affine(ctx, z, float(stddev), float(mean))


def random_uniform(ctx: Ctx, shape: "any" = None, low: "float" = 0.0, high: "float" = 1.0, like: "any" = None):
    u = _random(ctx, "uniform", _shape_or_like(ctx, shape, like))
    return _affine(ctx, u, float(high) - float(low), float(low))


def randint(ctx: Ctx, high: "count", shape: "any" = None, like: "any" = None):
    u = random_uniform(ctx, shape, 0.0, float(high), like)
    b = ctx.b
    return b.op("Cast", [b.op("Floor", [u])], {"to": DTYPE_CODE["i64"]})


# ------------------------------------------------------------------ losses (all averaged over the batch)
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
    t = b.op("OneHot", [y, b.const(depth, "i64"), b.const([0.0, 1.0], p.dtype)], {"axis": -1})
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


# ------------------------------------------------------------------ gradients
def grad(ctx: Ctx, y: "T", x: "any"):
    """d sum(y) / dx, like tf.grad; x may be a list of values."""
    from ..autodiff import grad as autodiff_grad
    y = _float_tensor(ctx, y, "y")
    xs = x if isinstance(x, list) else [x]
    for v in xs:
        if not isinstance(v, Value) or not v.type.is_float:
            raise ctx.error(f"grad() can differentiate with respect to float tensors only, got "
                            f"{v.type if isinstance(v, Value) else type(v).__name__}", "x")
    grads = autodiff_grad(ctx.b, y, xs)
    return tuple(grads) if isinstance(x, list) else grads[0]  # a tuple unpacks: `gx, gw = grad(...)`


def stop_gradient(ctx: Ctx, x: "T"):
    return ctx.b.op("StopGradient", [_t(ctx, x, arg="x")])


BUILTINS = {
    # layers with weights
    "dense": dense, "conv2d": conv2d, "conv2d_transpose": conv2d_transpose, "batch_norm": batch_norm,
    "embedding": embedding,
    # layers without weights
    "max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d, "global_avg_pool2d": global_avg_pool2d,
    "dropout": dropout, "flatten": flatten, "reshape": reshape, "concat": concat, "upsample2d": upsample2d,
    # activations
    **{k: v for k, v in ACTIVATIONS.items() if k != "linear"},
    # math
    "exp": _unary("Exp"), "log": _unary("Log"), "sqrt": _unary("Sqrt"), "abs": _unary("Abs"), "square": square,
    "clip": clip, "sum": _reduction("ReduceSum"), "mean": _reduction("ReduceMean"), "max": _reduction("ReduceMax"),
    "min": _reduction("ReduceMin"), "argmax": argmax, "cast": cast, "where": where, "one_hot": one_hot,
    "transpose": transpose,
    # random
    "random_normal": random_normal, "random_uniform": random_uniform, "randint": randint,
    # losses
    "mse": mse, "binary_crossentropy": binary_crossentropy, "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy, "kl_divergence": kl_divergence,
    # gradients
    "grad": grad, "stop_gradient": stop_gradient,
    # issue 12: more math, layers and losses
    "sin": _unary("Sin"), "cos": _unary("Cos"), "tan": _unary("Tan"), "atan": _unary("Atan"),
    "erf": _unary("Erf"), "sign": _unary("Sign"), "floor": _unary("Floor"), "ceil": _unary("Ceil"),
    "round": _unary("Round"), "minimum": _pairwise("Min"), "maximum": _pairwise("Max"),
    "layer_norm": layer_norm, "silu": silu, "swish": silu, "mish": mish, "mae": mae, "huber": huber,
    "conv1d": conv1d, "group_norm": group_norm,
    "conv3d": conv3d,
    "max_pool1d": max_pool1d, "avg_pool1d": avg_pool1d, "global_avg_pool1d": _global_mean(1),
    "max_pool3d": max_pool3d, "avg_pool3d": avg_pool3d, "global_avg_pool3d": _global_mean(3),
}

# Built-ins in modules of their own add themselves to BUILTINS (issue 21): arange, zeros, ones, full,
# masked_fill (creation.py); lstm, gru, multi_head_attention, positional_embedding (sequence.py).
for _module in ("creation", "sequence"):  # (import_module: either may be the one being imported first)
    importlib.import_module(f"{__package__}.{_module}")
