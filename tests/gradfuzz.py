"""A random-program differential fuzzer for gradients and training steps (after NNSmith / Csmith).

`generate(seed)` draws a valid, well-typed program as a JSON-able description: one model `M` (a
list of statements over an input `x` and maybe integer `ids`: layers, activations, math, reshapes,
indexing, concat, `repeat` loops carrying an integer index or a dense layer), a step that calls
it once or twice (shared weights; the second call on `x * 0.5`, `x[::-1]`, `x + 1` or in
inference mode) and minimizes one of the losses (plus maybe an L2 term and a gradient penalty
`grad(mean(p), x)`: second derivatives), an optimizer with its options and maybe a learning-rate
schedule, the number of train steps, and how the input data is drawn (random values, or exact
zeros and exact ties: blank samples, sparse, piecewise-constant and integer-valued inputs, zeroed
channels). `render(prog)` writes it as `.dsl`; `Twin` runs the same program in PyTorch float64
(dslc's conventions mapped: Keras batch norm, `minimum`/`maximum` ties to `a`, TensorFlow `same`
pads, Keras / TF.js optimizer updates written from README's equations).

`compare(prog)` compiles the step with `float64=True`, runs the gradient graph (`emit="gradients",
wrt_inputs=True`) and 2-3 train steps fed back (README "Training steps") in onnxruntime, and
compares the loss, every gradient (weights and float inputs), the batch-norm statistics and, at
each step, the new weights, optimizer slots and statistics with the twin's, each relative to its
tensor's magnitude (1e-9), above a noise floor (1e-12 of the largest gradient; for a weight, the
part of that floor an update can amplify: Adam divides by sqrt(v) + eps). Each train step is
checked from the state dslc fed back. One program in five compiles without `float64=True` instead
(dslc's float32 graphs: onnxruntime's own Conv, pooling and activation kernels and fusions) and is
compared at float32 tolerances. Expected values come only from the twin: nothing here derives
them from dslc.

Kinks (relu and friends, abs, clip, where, minimum/maximum, max-pool windows, max/min reductions,
mae, the losses' probability clips) decided by round-off make a program `ambiguous` (not
compared): an element within 1e-10 of the kink relative to the magnitude of the operands it was
computed from (not to itself: a batch norm of equal rows is ~1e-15 noise), or a kink that a pass
with every weight perturbed by 1e-9 (a function of the value: equal weights stay equal, zeros stay
zero) decides otherwise. Exact ties (exact zeros, equal data) are compared: both sides compute them
exactly.

`reduce(prog)` shrinks a failing program by delta debugging over its statements (a removed
statement's users read its input instead; candidates that no longer type-check are skipped), then
simplifies the step (one call, plain loss, SGD, fewer steps, ...) while the failure persists. The
minimised descriptions live in tests/fuzz_regressions/*.json (tests/test_fuzz_gradients.py reruns
them); bench/fuzz_gradients.py is the long run.
"""
from __future__ import annotations

import copy
import json
import math
import random
import traceback
from dataclasses import dataclass, field

import numpy as np

TOL = 1e-9          # relative to the magnitude of the tensor compared
NEAR = 1e-10        # a kink input this close (relative), but not exactly on it, is round-off's call


@dataclass(frozen=True)
class Precision:
    tol: float      # relative to the magnitude of the tensor compared
    near: float     # a kink input this close (relative to its operands' scale) is round-off's call
    jitter: float   # the relative perturbation of the second (perturbed) passes
    floor: float    # gradients: absolute floor, relative to the largest gradient / loss
    slot: float     # optimizer slots: relative to the slot's largest value over all weights


F64 = Precision(tol=TOL, near=NEAR, jitter=1e-9, floor=1e-12, slot=1e-10)
# A few programs compile without float64=True: dslc's float32 graphs (onnxruntime's Conv,
# ConvTranspose, AveragePool, Softplus kernels and its fusions, at the full optimization level)
# against the twin in float64 on the same float32 inputs and weights.
F32 = Precision(tol=3e-4, near=3e-5, jitter=3e-5, floor=3e-6, slot=3e-4)
_P = F64  # the precision of the comparison under way
EPS = 1e-7          # Keras' epsilon (the losses' probability clipping)
MAX_ELEMS = 400     # per-sample elements of any value


class Invalid(Exception):
    """A statement that does not type-check (generation retries, reduction skips the candidate)."""


# ================================================================== shapes of the statements
# A shape is the tuple of non-batch dims (the batch axis N is always axis 0 and never touched).

def _k2(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


def _conv_pads(padding, n_sp, k, s, d, sizes):
    """ONNX-order pads (all begins, then all ends) of padding valid | same | INT | [per axis] | [begin.., end..]."""
    if padding == "valid":
        return [0] * (2 * n_sp)
    if padding == "same":  # TensorFlow: output ceil(n / s), the odd pad at the end
        begin, end = [], []
        for n, ki, si, di in zip(sizes, k, s, d):
            total = max((-(-n // si) - 1) * si + (ki - 1) * di + 1 - n, 0)
            begin.append(total // 2)
            end.append(total - total // 2)
        return begin + end
    if isinstance(padding, int):
        return [padding] * (2 * n_sp)
    return list(padding) * 2 if len(padding) == n_sp else list(padding)


def _out_size(n, k, s, d, p0, p1):
    o = (n + p0 + p1 - d * (k - 1) - 1) // s + 1
    if n + p0 + p1 - d * (k - 1) - 1 < 0 or o < 1:
        raise Invalid("window larger than the input")
    return o


def _pads_fit_pool(pads, k):
    n = len(k)
    if any(not 0 <= p < k[i % n] for i, p in enumerate(pads)):
        raise Invalid("pool pad not smaller than the window")


def shape_of(op: str, ins: list, p: dict) -> tuple:
    """The output shape of statement `op` on input shapes `ins` with parameters `p`; Invalid if it does not fit."""
    a = ins[0] if ins else None
    r = len(a) if a is not None else 0
    if op in UNARY or op in ("act", "pow", "affine", "where", "stopgrad", "log", "sqrt", "exp", "clip"):
        return a
    if op in ("softmax", "log_softmax"):
        if not -(r + 1) <= p["axis"] < r + 1 or p["axis"] % (r + 1) == 0:
            raise Invalid("axis")
        return a
    if op in ("add", "sub", "mul", "div", "minimum", "maximum"):
        if ins[1] != a:
            raise Invalid("operands differ")
        return a
    if op in ("minimum_c", "maximum_c"):
        return a
    if op == "scale_by_mean":
        return a
    if op in ("sum", "mean", "max", "min"):
        axes = [x % (r + 1) - 1 for x in p["axes"]]  # DSL axes count the batch axis
        if len(set(axes)) != len(axes) or not all(-r - 1 <= x <= r for x in p["axes"]) or -1 in axes:
            raise Invalid("axes")
        if p["keepdims"]:
            return tuple(1 if i in axes else n for i, n in enumerate(a))
        out = tuple(n for i, n in enumerate(a) if i not in axes)
        if not out:
            raise Invalid("reduced to the batch axis")
        return out
    if op == "dense":
        if r not in (1, 2):
            raise Invalid("dense rank")
        return (*a[:-1], p["units"])
    if op in ("conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "upsample2d"):
        if r != 3:
            raise Invalid("needs [N, C, H, W]")
        c, h, w = a
        if op == "global_avg_pool2d":
            return (c,)
        if op == "upsample2d":
            sh, sw = _k2(p["size"])
            return (c, h * sh, w * sw)
        if op == "conv2d":
            k, s, d, g = _k2(p["kernel"]), _k2(p["strides"]), _k2(p["dilation"]), p["groups"]
            if c % g or p["filters"] % g:
                raise Invalid("groups")
            pads = _conv_pads(p["padding"], 2, k, s, d, (h, w))
            return (p["filters"], _out_size(h, k[0], s[0], d[0], pads[0], pads[2]),
                    _out_size(w, k[1], s[1], d[1], pads[1], pads[3]))
        if op == "conv2d_transpose":
            k, s, d = _k2(p["kernel"]), _k2(p["strides"]), _k2(p["dilation"])
            op_ = _k2(p.get("output_padding", 0))
            if p["padding"] == "same":
                return (p["filters"], h * s[0], w * s[1])
            if any(o >= max(si, di) for o, si, di in zip(op_, s, d)):
                raise Invalid("output_padding")
            pads = _conv_pads(p["padding"], 2, k, s, d, (h, w))
            outs = [(n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + op_[i] - pads[i] - pads[i + 2] for i, n in enumerate((h, w))]
            if min(outs) < 1:
                raise Invalid("cropped away")
            return (p["filters"], *outs)
        k = _k2(p["pool"])
        s = _k2(p["strides"]) if p.get("strides") is not None else k
        pads = _conv_pads(p["padding"], 2, k, s, [1, 1], (h, w))
        if p["padding"] != "same":
            _pads_fit_pool(pads, k)
        return (c, _out_size(h, k[0], s[0], 1, pads[0], pads[2]), _out_size(w, k[1], s[1], 1, pads[1], pads[3]))
    if op in ("conv1d", "max_pool1d", "avg_pool1d"):
        if r != 2:
            raise Invalid("needs [N, C, L]")
        c, n = a
        if op == "conv1d":
            g = p["groups"]
            if c % g or p["filters"] % g:
                raise Invalid("groups")
            pads = _conv_pads(p["padding"], 1, [p["kernel"]], [p["strides"]], [p["dilation"]], (n,))
            return (p["filters"], _out_size(n, p["kernel"], p["strides"], p["dilation"], pads[0], pads[1]))
        k = p["pool"]
        s = p["strides"] if p.get("strides") is not None else k
        pads = _conv_pads(p["padding"], 1, [k], [s], [1], (n,))
        if p["padding"] != "same":
            _pads_fit_pool(pads, [k])
        return (c, _out_size(n, k, s, 1, pads[0], pads[1]))
    if op == "batch_norm":
        return a
    if op == "layer_norm":
        if not -(r + 1) <= p["axis"] < r + 1 or p["axis"] % (r + 1) == 0:
            raise Invalid("axis")
        return a
    if op == "group_norm":
        if r < 2 or a[0] % p["groups"]:
            raise Invalid("groups")
        return a
    if op == "embedding":
        return (p["len"], p["dim"])
    if op == "flatten":
        if r < 2:
            raise Invalid("flat already")
        return (int(np.prod(a)),)
    if op == "reshape":
        if int(np.prod(a)) != int(np.prod(p["shape"])):
            raise Invalid("size")
        return tuple(p["shape"])
    if op == "transpose":
        if sorted(p["perm"]) != list(range(1, r + 1)):
            raise Invalid("perm")
        return tuple(a[i - 1] for i in p["perm"])
    if op == "concat":
        ax = p["axis"] % (r + 1)
        b = ins[1]
        if ax == 0 or len(b) != r or any(x != y for i, (x, y) in enumerate(zip(a, b)) if i != ax - 1):
            raise Invalid("concat shapes")
        return tuple(x + y if i == ax - 1 else x for i, (x, y) in enumerate(zip(a, b)))
    if op == "index":
        return _index_shape(a, p["index"])
    if op == "repeat_index":  # s = f(s * a + v[:, t]) for t = start .. start + K - 1
        if r < 1 or p["start"] + p["count"] > a[0]:
            raise Invalid("loop index out of range")
        return a[1:] if r >= 2 else (1,)
    if op == "repeat_dense":
        if r != 1:
            raise Invalid("repeat_dense needs [N, F]")
        return a
    if op == "shared":  # a call of the second model A (one set of weights for every call)
        if a != (p["dim"],):
            raise Invalid("A takes [N, dim]")
        return a
    raise AssertionError(op)


def _index_shape(a, index):
    """index: list of items (after the batch's `:`): ["slice", start, stop, step] | ["int", k] | ["none"] | ["ellipsis"]."""
    dims = list(a)
    items = list(index)
    if ["ellipsis"] in items:
        i = items.index(["ellipsis"])
        named = sum(1 for it in items if it[0] in ("slice", "int"))
        items = items[:i] + [["slice", None, None, None]] * (len(dims) - named) + items[i + 1:]
    out, pos = [], 0
    for it in items:
        if it[0] == "none":
            out.append(1)
            continue
        if pos >= len(dims):
            raise Invalid("too many indices")
        n = dims[pos]
        if it[0] == "int":
            if not -n <= it[1] < n:
                raise Invalid("index out of range")
        else:
            size = len(range(*slice(it[1], it[2], it[3]).indices(n)))
            if size < 1:
                raise Invalid("empty slice")
            out.append(size)
        pos += 1
    out += dims[pos:]
    if not out:
        raise Invalid("indexed down to the batch axis")
    return tuple(out)


def infer(prog: dict) -> dict:
    """Every value's shape (by name); Invalid where a statement does not fit."""
    shapes = {"x": tuple(prog["x"]["shape"])}
    for st in prog["stmts"]:
        for n in st["in"]:
            if n not in shapes:
                raise Invalid(f"unknown value {n}")
        out = shape_of(st["op"], [shapes[n] for n in st["in"]], st["p"])
        if int(np.prod(out)) > MAX_ELEMS or min(out) < 1:
            raise Invalid("too large")
        shapes[st["out"]] = tuple(out)
    return shapes


def output_name(prog: dict) -> str:
    return prog["stmts"][-1]["out"] if prog["stmts"] else "x"


WEIGHTED = {"dense", "conv2d", "conv2d_transpose", "conv1d", "batch_norm", "layer_norm", "group_norm", "embedding",
            "repeat_dense", "shared"}


def pruned(prog: dict) -> dict:
    """prog without the statements the output does not depend on."""
    need = {output_name(prog)}
    keep = []
    for st in reversed(prog["stmts"]):
        if st["out"] in need:
            keep.append(st)
            need.update(st["in"])
    return {**prog, "stmts": keep[::-1]}


# ================================================================== the vocabulary
UNARY = {  # name -> (dsl template, kink: None | "zero")
    "relu": "relu({})", "sigmoid": "sigmoid({})", "tanh": "tanh({})", "softplus": "softplus({})",
    "gelu": "gelu({})", "silu": "silu({})", "mish": "mish({})", "abs": "abs({})", "square": "square({})",
    "neg": "-{}", "sin": "sin({})", "cos": "cos({})", "atan": "atan({})", "erf": "erf({})", "swish": "swish({})",
}
ACTS = ["relu", "sigmoid", "tanh", "softplus", "gelu", "silu", "mish", "elu", "leaky_relu", "softmax"]


def _num(v: float) -> str:
    s = repr(float(v))
    return s if "e" not in s else f"{v:.10f}".rstrip("0")


def _item_text(it) -> str:
    if it[0] == "none":
        return "None"
    if it[0] == "ellipsis":
        return "..."
    if it[0] == "int":
        return str(it[1])
    _, a, b, c = it
    s = ("" if a is None else str(a)) + ":" + ("" if b is None else str(b))
    return s + (f":{c}" if c is not None else "")


def _pad_text(padding) -> str:
    return padding if isinstance(padding, str) else str(padding)


def stmt_dsl(st: dict, shapes: dict) -> list[str]:
    """The DSL lines of one statement."""
    op, p, o = st["op"], st["p"], st["out"]
    ins = st["in"]
    a = ins[0] if ins else None

    def act_kw():
        return f", activation={p['activation']}" if p.get("activation") else ""

    def bias_kw():
        return "" if p.get("use_bias", True) else ", use_bias=false"
    if op in UNARY:
        e = UNARY[op].format(a)
    elif op == "act":
        name = p["name"]
        e = {"leaky_relu": f"leaky_relu({a}, {_num(p.get('alpha', 0.3))})", "elu": f"elu({a}, {_num(p.get('alpha', 1.0))})"
             }.get(name, f"{a} |> {name}")
    elif op in ("softmax", "log_softmax"):
        e = f"{op}({a}, axis={p['axis']})"
    elif op == "pow":
        e = f"tanh({a}) ^ {p['n']}" if p["n"] == 3 else f"{a} ^ {p['n']}"
    elif op == "affine":
        e = f"{a} * {_num(p['a'])} + {_num(p['b'])}"
    elif op == "where":
        e = f"where({a} > 0.0, {a}, {a} * {_num(p['c'])})"
    elif op == "stopgrad":
        e = f"{a} + stop_gradient({a}) * {_num(p['c'])}"
    elif op == "log":
        e = f"log(abs({a}) + {_num(p['c'])})" if p["form"] == "abs" else f"log(sigmoid({a}))"
    elif op == "sqrt":
        e = f"sqrt(abs({a}) + {_num(p['c'])})"
    elif op == "exp":
        e = f"exp(tanh({a}))" if p["form"] == "tanh" else f"exp(clip({a}, -3.0, 2.0))"
    elif op == "clip":
        e = f"clip({a}, {_num(p['lo'])}, {_num(p['hi'])})"
    elif op in ("add", "sub", "mul"):
        e = f"{a} {dict(add='+', sub='-', mul='*')[op]} {ins[1]}"
    elif op == "div":
        e = f"{a} / (abs({ins[1]}) + 1.0)"
    elif op in ("minimum", "maximum"):
        e = f"{op}({a}, {ins[1]})"
    elif op in ("minimum_c", "maximum_c"):
        e = f"{op[:-2]}({a}, {_num(p['c'])})"
    elif op == "scale_by_mean":
        e = f"{a} * mean({a}, axis={p['axis']}, keepdims=true)"
    elif op in ("sum", "mean", "max", "min"):
        axes = p["axes"][0] if len(p["axes"]) == 1 else p["axes"]
        e = f"{op}({a}, axis={axes}" + (", keepdims=true" if p["keepdims"] else "") + ")"
    elif op == "dense":
        e = f"dense({a}, {p['units']}{act_kw()}{bias_kw()})"
    elif op == "conv2d":
        e = (f"conv2d({a}, {p['filters']}, kernel={p['kernel']}, strides={p['strides']}, padding={_pad_text(p['padding'])}, "
             f"dilation={p['dilation']}, groups={p['groups']}{act_kw()}{bias_kw()})")
    elif op == "conv2d_transpose":
        e = (f"conv2d_transpose({a}, {p['filters']}, kernel={p['kernel']}, strides={p['strides']}, "
             f"padding={_pad_text(p['padding'])}, dilation={p['dilation']}"
             + (f", output_padding={p['output_padding']}" if p.get("output_padding") else "") + f"{act_kw()}{bias_kw()})")
    elif op in ("max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d"):
        e = f"{op}({a}, {p['pool']}" + (f", strides={p['strides']}" if p.get("strides") is not None else "") + \
            f", padding={_pad_text(p['padding'])})"
    elif op == "global_avg_pool2d":
        e = f"global_avg_pool2d({a})"
    elif op == "upsample2d":
        e = f"upsample2d({a}, size={p['size']}, mode={p['mode']})"
    elif op == "conv1d":
        e = (f"conv1d({a}, {p['filters']}, kernel={p['kernel']}, strides={p['strides']}, padding={_pad_text(p['padding'])}, "
             f"dilation={p['dilation']}, groups={p['groups']}{act_kw()}{bias_kw()})")
    elif op == "batch_norm":
        e = f"batch_norm({a}" + (f", momentum={_num(p['momentum'])}" if p.get("momentum") is not None else "") + ")"
    elif op == "layer_norm":
        e = f"layer_norm({a}, axis={p['axis']})"
    elif op == "group_norm":
        e = f"group_norm({a}, {p['groups']})"
    elif op == "embedding":
        e = f"embedding(ids, {p['vocab']}, {p['dim']}" + (f", padding_idx={p['padding_idx']}" if p.get("padding_idx") is not None else "") + ")"
    elif op == "flatten":
        e = f"flatten({a})"
    elif op == "reshape":
        e = f"reshape({a}, {[-1] + list(p['shape'])})"
    elif op == "transpose":
        e = f"transpose({a}, {[0] + list(p['perm'])})"
    elif op == "concat":
        e = f"concat({a}, {ins[1]}, axis={p['axis']})"
    elif op == "index":
        e = f"{a}[{', '.join([':'] + [_item_text(it) for it in p['index']])}]"
    elif op == "repeat_index":
        t = f"i_{o}"
        r = len(shapes[a])
        pick = (lambda i: f"{a}[:, {i}]") if r >= 2 else (lambda i: f"{a}[:, {i}:{i} + 1]")
        body = {"tanh": "tanh({})", "relu": "relu({})", "id": "{}", "max": "maximum({}, " + pick(t) + ")",
                "sigmoid": "sigmoid({})"}[p["f"]]
        return [f"{o} = {pick(0)} * {_num(p['c0'])}", f"{t} = {p['start']}", f"repeat {p['count']} {{",
                f"    {o} = " + body.format(f"{o} * {_num(p['a'])} + {pick(t)}"), f"    {t} = {t} + 1", "}"]
    elif op == "shared":
        return [f"{o} = A({a})"]
    elif op == "repeat_dense":
        body = {"tanh": "tanh({})", "relu": "relu({})", "id": "{}", "sigmoid": "sigmoid({})"}[p["f"]]
        return [f"{o} = {a}", f"repeat {p['count']} {{",
                f"    {o} = " + body.format(f"dense({o}, {shapes[a][-1]}) * {_num(p['a'])} + {a}"), "}"]
    else:
        raise AssertionError(op)
    return [f"{o} = {e}"]


def _x_type(shape, dtype="f32", symbolic=False) -> str:
    if symbolic:  # symbolic spatial dims: one graph for any image size (README "Symbolic spatial dims")
        return f"{dtype}[N, {shape[0]}, H, W]"
    return f"{dtype}[N, {', '.join(str(d) for d in shape)}]"


def render(prog: dict) -> str:
    shapes = infer(prog)
    out_name = output_name(prog)
    out = shapes[out_name]
    has_ids = any(st["op"] == "embedding" for st in prog["stmts"])
    ids = prog.get("ids") or {"len": 3, "vocab": 7}
    params = [f"x: {_x_type(prog['x']['shape'], symbolic=prog['x'].get('symbolic', False))}"] + ([f"ids: i64[N, {ids['len']}]"] if has_ids else [])
    shared = next((st["p"] for st in prog["stmts"] if st["op"] == "shared"), None)
    lines = []
    if shared:  # a second model that M calls (maybe twice): its weights are shared by the calls
        lines += [f"model A(x: f32[N, {shared['dim']}]) -> y {{",
                  f"    y = dense(x, {shared['dim']}" + (f", activation={shared['act']}" if shared.get("act") else "") + ")",
                  "}"]
    lines += [f"model M({', '.join(params)}) -> y {{"]
    for st in prog["stmts"]:
        lines += ["    " + s for s in stmt_dsl(st, shapes)]
    lines += [f"    y = {out_name}", "}"]
    L = prog["loss"]
    kind = L["kind"]
    step_in = [f"x: {_x_type(prog['x']['shape'], symbolic=prog['x'].get('symbolic', False))}"] + ([f"ids: i64[N, {ids['len']}]"] if has_ids else [])
    call_args = ", ids" if has_ids else ""
    flat = (lambda v: f"flatten({v})") if len(out) > 1 else (lambda v: v)
    ncls = int(np.prod(out))
    if kind in ("mse", "mae", "huber"):
        step_in.append(f"t: {_x_type(out)}")
        extra = f", delta={_num(L['delta'])}" if kind == "huber" else ""
        loss = lambda v: f"{kind}({v}, t{extra})"  # noqa: E731
    elif kind == "bce":
        step_in.append(f"t: {_x_type(out)}")
        loss = (lambda v: f"binary_crossentropy({v}, t, from_logits=true)") if L["logits"] else \
            (lambda v: f"binary_crossentropy(sigmoid({v}), t)")
    elif kind == "cce":
        step_in.append(f"t: f32[N, {ncls}]")
        ls = f", label_smoothing={_num(L['smoothing'])}" if L.get("smoothing") else ""
        form = L["form"]
        loss = {"logits": lambda v: f"categorical_crossentropy({flat(v)}, t, from_logits=true{ls})",
                "softmax": lambda v: f"categorical_crossentropy(softmax({flat(v)}), t{ls})",
                "sigmoid": lambda v: f"categorical_crossentropy(sigmoid({flat(v)}), t{ls})"}[form]
    elif kind == "scce":
        step_in.append("labels: i64[N]")
        loss = (lambda v: f"sparse_categorical_crossentropy({flat(v)}, labels, from_logits=true)") if L["logits"] else \
            (lambda v: f"sparse_categorical_crossentropy(softmax({flat(v)}), labels)")
    elif kind == "kl":
        step_in.append(f"t: f32[N, {ncls}]")
        loss = (lambda v: f"kl_divergence(t, softmax({flat(v)}))") if L["target_first"] else \
            (lambda v: f"kl_divergence(softmax({flat(v)}), t)")
    else:
        raise AssertionError(kind)
    body = [f"    p = M(x{call_args})"]
    total = loss("p")
    if prog.get("twice"):
        x2 = {"scale": "x * 0.5", "flip": "x[::-1]", "shift": "x + 1.0", "eval": "x * 0.5"}[prog["twice"]]
        mode = ", training=false" if prog["twice"] == "eval" else ""  # batch norm on its moving statistics
        body.append(f"    q = M({x2}{call_args}{mode})")
        total += f" + 0.5 * {loss('q')}"
    if prog.get("reg"):
        total += f" + {_num(prog['reg'])} * mean(square(p))"
    if prog.get("gp"):  # a gradient penalty: second derivatives through the whole model
        total += f" + {_num(prog['gp'])} * mean(square(grad(mean(p), x)))"
    o = prog["opt"]
    opts = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else _num(v)}" for k, v in o["opts"].items()
                     if not (k == "lr" and o.get("schedule")))
    if o.get("schedule"):
        sch = o["schedule"]
        args = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else _num(v)}" for k, v in sch["args"].items())
        opts = f"lr={sch['name']}({_num(o['opts']['lr'])}, {args})" + (f", {opts}" if opts else "")
    models = "M, A" if shared else "M"
    lines += [f"step train({', '.join(step_in)}) updates {models} using {o['name']}({opts}) {{", *body,
              f"    minimize {total}", "}"]
    return "\n".join(lines) + "\n"


# ================================================================== generation
def _choice(rng, xs):
    return xs[rng.randrange(len(xs))]


def _sample_stmt(rng: random.Random, op: str, a: tuple, shapes: dict, cur: str, shared_of: dict | None = None):
    """Parameters and inputs for `op` applied to value `cur` of shape a (Invalid if it cannot apply)."""
    r = len(a)
    p: dict = {}
    ins = [cur]
    if op in UNARY:
        pass
    elif op == "act":
        p["name"] = _choice(rng, ["leaky_relu", "elu", "relu", "gelu", "softplus", "mish"])
        if p["name"] == "leaky_relu":
            p["alpha"] = _choice(rng, [0.3, 0.2, 0.01])
        if p["name"] == "elu":
            p["alpha"] = _choice(rng, [1.0, 0.5])
    elif op in ("softmax", "log_softmax"):
        p["axis"] = _choice(rng, [-1] * 3 + list(range(1, r + 1)))
    elif op == "pow":
        p["n"] = _choice(rng, [2, 3])
    elif op == "affine":
        p["a"], p["b"] = _choice(rng, [0.5, 2.0, -1.0, 1.5]), _choice(rng, [0.0, 0.0, 0.25, -0.5])
    elif op == "where":
        p["c"] = _choice(rng, [0.1, 0.5, -1.0])
    elif op == "stopgrad":
        p["c"] = _choice(rng, [0.5, -1.0])
    elif op == "log":
        p["form"], p["c"] = _choice(rng, ["abs", "abs", "sigmoid"]), _choice(rng, [0.5, 1.0])
    elif op == "sqrt":
        p["c"] = _choice(rng, [0.1, 1.0])
    elif op == "exp":
        p["form"] = _choice(rng, ["tanh", "clip"])
    elif op == "clip":
        lo = _choice(rng, [-1.0, -0.5, 0.0, -0.25])
        p["lo"], p["hi"] = lo, lo + _choice(rng, [0.5, 1.0, 1.5])
    elif op in ("add", "sub", "mul", "div", "minimum", "maximum"):
        same = [n for n, s in shapes.items() if s == a and n != cur]
        ins = [cur, _choice(rng, same) if same and rng.random() < 0.8 else cur]
    elif op in ("minimum_c", "maximum_c"):
        p["c"] = _choice(rng, [0.0, 0.0, 0.5, -0.5])
    elif op == "scale_by_mean":
        p["axis"] = _choice(rng, list(range(1, r + 1)))
    elif op in ("sum", "mean", "max", "min"):
        axes = list(range(1, r + 1))
        rng.shuffle(axes)
        p["axes"] = [(x if rng.random() < 0.7 else x - r - 1) for x in axes[:rng.randint(1, max(1, len(axes) - 1) if r > 1 else 1)]]
        p["keepdims"] = r == 1 or rng.random() < 0.4
    elif op == "dense":
        p["units"] = rng.randint(1, 8)
        if rng.random() < 0.4:
            p["activation"] = _choice(rng, ["relu", "tanh", "sigmoid", "elu", "softplus", "gelu"])
        if rng.random() < 0.2:
            p["use_bias"] = False
    elif op == "conv2d":
        c = a[0]
        g = _choice(rng, [1, 1, 1] + [d for d in (2, 3, c) if c % d == 0 and d > 1])
        p["groups"] = g
        p["filters"] = g * rng.randint(1, max(1, 4 // g) + 1)
        p["kernel"] = _choice(rng, [1, 2, 3, 3, [3, 2], [2, 1], [1, 3]])
        p["strides"] = _choice(rng, [1, 1, 2, [1, 2], [2, 1]])
        p["dilation"] = _choice(rng, [1, 1, 1, 2, [2, 1]])
        p["padding"] = _choice(rng, ["valid", "same", "same", 1, [1, 0], [0, 1, 1, 0], 2])
        if rng.random() < 0.3:
            p["activation"] = _choice(rng, ["relu", "tanh", "leaky_relu"])
        if rng.random() < 0.2:
            p["use_bias"] = False
    elif op == "conv2d_transpose":
        p["filters"] = rng.randint(1, 4)
        p["kernel"] = _choice(rng, [1, 2, 3, [3, 2], [2, 3]])
        p["strides"] = _choice(rng, [1, 2, 2, [2, 1]])
        p["dilation"] = _choice(rng, [1, 1, 2])
        p["padding"] = _choice(rng, ["valid", "same", 1, [0, 1, 1, 0]])
        if p["padding"] != "same" and rng.random() < 0.4:
            p["output_padding"] = _choice(rng, [1, [1, 0], [0, 1]])
        if rng.random() < 0.3:
            p["activation"] = _choice(rng, ["relu", "sigmoid"])
    elif op in ("max_pool2d", "avg_pool2d"):
        p["pool"] = _choice(rng, [2, 2, 3, [2, 1], [1, 2]])
        p["strides"] = _choice(rng, [None, None, 1, 2, [1, 2]])
        p["padding"] = _choice(rng, ["valid", "valid", "same", 1, [1, 0], [0, 1, 1, 0]])
    elif op in ("global_avg_pool2d", "flatten", "batch_norm"):
        if op == "batch_norm" and rng.random() < 0.3:
            p["momentum"] = _choice(rng, [0.9, 0.5])
    elif op == "upsample2d":
        p["size"] = _choice(rng, [2, [2, 1], [1, 2]])
        p["mode"] = _choice(rng, ["nearest", "bilinear"])
    elif op == "conv1d":
        c = a[0]
        g = _choice(rng, [1, 1] + [d for d in (2, c) if c % d == 0 and d > 1])
        p.update(groups=g, filters=g * rng.randint(1, 3), kernel=_choice(rng, [1, 2, 3]), strides=_choice(rng, [1, 1, 2]),
                 dilation=_choice(rng, [1, 1, 2]), padding=_choice(rng, ["valid", "same", 1]))
    elif op in ("max_pool1d", "avg_pool1d"):
        p.update(pool=_choice(rng, [2, 3]), strides=_choice(rng, [None, 1, 2]), padding=_choice(rng, ["valid", "same", 1]))
    elif op == "layer_norm":
        p["axis"] = _choice(rng, [-1, -1, 1] + ([2] if r >= 2 else []))
    elif op == "group_norm":
        c = a[0] if r >= 2 else 0
        divs = [d for d in range(1, c + 1) if c % d == 0]
        if not divs:
            raise Invalid("group_norm")
        p["groups"] = _choice(rng, divs)
    elif op == "embedding":
        ins = []
        p.update(vocab=7, dim=rng.randint(1, 4), len=3)
        if rng.random() < 0.5:
            p["padding_idx"] = 0
    elif op == "reshape":
        n = int(np.prod(a))
        divs = [d for d in range(1, n + 1) if n % d == 0]
        kind = rng.random()
        if kind < 0.5 and r == 1:
            c = _choice(rng, divs)
            rest = n // c
            d2 = [d for d in range(1, rest + 1) if rest % d == 0]
            h = _choice(rng, d2)
            p["shape"] = [c, h, rest // h]
        elif kind < 0.8:
            c = _choice(rng, divs)
            p["shape"] = [c, n // c]
        else:
            p["shape"] = [n]
    elif op == "transpose":
        perm = list(range(1, r + 1))
        rng.shuffle(perm)
        p["perm"] = perm
    elif op == "concat":
        ax = rng.randint(1, r)
        other = [n for n, s in shapes.items() if len(s) == r and all(x == y for i, (x, y) in enumerate(zip(s, a)) if i != ax - 1)]
        ins = [cur, _choice(rng, other)]
        p["axis"] = ax if rng.random() < 0.6 else ax - r - 1
    elif op == "index":
        items = []
        form = rng.random()
        if form < 0.25:
            items = [["slice", *_choice(rng, [(1, None, None), (None, -1, None), (None, None, -1), (None, None, 2),
                                                (-2, None, None), (1, -1, None), (None, None, -2)])]]
        elif form < 0.45 and r >= 2:
            items = [["ellipsis"], ["int", _choice(rng, [0, -1, 1])]]
        elif form < 0.6 and r >= 2:
            items = [["slice", None, None, None], ["slice", *_choice(rng, [(1, None, None), (None, None, -1), (None, -1, 2)])]]
        elif form < 0.75 and r <= 2:
            items = [["none"]] if rng.random() < 0.5 else [["slice", None, None, None], ["none"]]
        elif r >= 2:
            items = [["int", _choice(rng, [0, 1, -1])]]
        else:
            items = [["ellipsis"], ["slice", *_choice(rng, [(None, None, -1), (1, None, None)])]]
        p["index"] = items
    elif op == "repeat_index":
        n = a[0]
        p["count"] = rng.randint(1, min(4, n))
        p["start"] = rng.randint(0, n - p["count"])
        p["f"] = _choice(rng, ["tanh", "relu", "id", "max", "sigmoid"])
        p["a"], p["c0"] = _choice(rng, [0.5, 1.0, -0.5]), _choice(rng, [0.0, 1.0, 0.5])
    elif op == "shared":
        dims = [st["dim"] for st in shared_of.values()] if shared_of else []
        if dims and dims[0] != a[0]:
            raise Invalid("A takes another width")
        p.update(dims and shared_of["A"] or {"dim": a[0], "act": _choice(rng, ["tanh", "relu", None, "sigmoid"])})
        shared_of["A"] = dict(p)
    elif op == "repeat_dense":
        p["count"] = rng.randint(1, 3)
        p["f"] = _choice(rng, ["tanh", "relu", "id", "sigmoid"])
        p["a"] = _choice(rng, [0.5, 1.0])
    else:
        raise AssertionError(op)
    return ins, p


OPS_BY_RANK = {  # op -> weight in the draw, by input rank (non-batch dims)
    1: {"dense": 6, "act": 3, "relu": 3, "tanh": 1, "sigmoid": 1, "softplus": 1, "gelu": 1, "silu": 1, "mish": 1,
        "abs": 1, "square": 1, "neg": 0.3, "sin": 0.3, "cos": 0.3, "atan": 0.3, "erf": 0.3, "swish": 0.3,
        "softmax": 1, "log_softmax": 1, "pow": 0.5, "affine": 0.5, "where": 0.7, "stopgrad": 0.3, "log": 0.5,
        "sqrt": 0.5, "exp": 0.5, "clip": 1, "add": 1, "sub": 0.5, "mul": 1, "div": 0.5, "minimum": 1, "maximum": 1,
        "minimum_c": 0.5, "maximum_c": 1, "scale_by_mean": 0.3, "sum": 0.3, "mean": 0.3, "max": 0.6, "min": 0.3,
        "batch_norm": 1.5, "layer_norm": 1, "reshape": 2, "concat": 1, "index": 1.5, "repeat_index": 1.5,
        "repeat_dense": 1.5, "shared": 1.5},
    2: {"conv1d": 4, "max_pool1d": 2, "avg_pool1d": 1, "dense": 2, "act": 2, "relu": 2, "tanh": 1, "softmax": 1,
        "log_softmax": 0.5, "abs": 0.5, "clip": 0.5, "minimum": 0.5, "maximum": 0.7, "maximum_c": 0.5, "add": 0.5,
        "mul": 0.5, "batch_norm": 1.5, "layer_norm": 1, "group_norm": 1, "flatten": 2, "reshape": 1, "transpose": 1,
        "concat": 1, "index": 2, "repeat_index": 2, "sum": 0.3, "mean": 0.3, "max": 0.6, "min": 0.3,
        "scale_by_mean": 0.3, "gelu": 0.3, "elu": 0, "square": 0.3, "where": 0.3},
    3: {"conv2d": 6, "conv2d_transpose": 2.5, "max_pool2d": 3, "avg_pool2d": 1.5, "global_avg_pool2d": 1,
        "upsample2d": 1, "act": 2, "relu": 2, "tanh": 0.5, "softmax": 0.5, "abs": 0.5, "clip": 0.5, "maximum": 0.5,
        "minimum": 0.3, "maximum_c": 0.5, "add": 0.5, "mul": 0.3, "batch_norm": 2, "layer_norm": 0.7,
        "group_norm": 1, "flatten": 1.5, "reshape": 0.5, "transpose": 0.7, "concat": 0.7, "index": 1.5,
        "repeat_index": 1, "sum": 0.2, "mean": 0.2, "max": 0.5, "min": 0.2, "square": 0.2},
}


def _weighted_pick(rng, table):
    items = [(k, w) for k, w in table.items() if w > 0]
    total = sum(w for _, w in items)
    u = rng.random() * total
    for k, w in items:
        u -= w
        if u <= 0:
            return k
    return items[-1][0]


FILLS = ["normal", "normal", "blank_rows", "sparse", "piecewise", "integers", "relu", "zeros_some_channels"]
LOSSES = ["mse", "mae", "huber", "bce", "bce", "cce", "scce", "kl"]


def _optimizer(rng):
    name = _choice(rng, ["sgd", "sgd", "adam", "adamw", "rmsprop", "rmsprop"])
    o: dict = {}
    if name == "sgd":
        o["lr"] = _choice(rng, [0.1, 0.05, 0.01])
        if rng.random() < 0.7:
            o["momentum"] = _choice(rng, [0.9, 0.5])
            if rng.random() < 0.5:
                o["nesterov"] = True
    elif name in ("adam", "adamw"):
        o["lr"] = _choice(rng, [0.01, 0.05, 0.001])
        if rng.random() < 0.4:
            o["beta1"] = _choice(rng, [0.5, 0.8])
        if rng.random() < 0.3:
            o["eps"] = _choice(rng, [1e-3, 0.1])
        if name == "adamw" and rng.random() < 0.5:
            o["weight_decay"] = _choice(rng, [0.1, 0.01])
    else:
        o["lr"] = _choice(rng, [0.01, 0.001, 0.05])
        if rng.random() < 0.4:
            o["rho"] = _choice(rng, [0.8, 0.95])
        if rng.random() < 0.5:
            o["momentum"] = _choice(rng, [0.9, 0.5])
        if rng.random() < 0.5:
            o["centered"] = True
    sched = None
    if rng.random() < 0.15:
        sched = _choice(rng, [{"name": "exponential_decay", "args": {"decay_steps": 2, "decay_rate": 0.5}},
                              {"name": "exponential_decay", "args": {"decay_steps": 1, "decay_rate": 0.7, "staircase": True}},
                              {"name": "step_decay", "args": {"every": 1, "factor": 0.5}},
                              {"name": "cosine_decay", "args": {"decay_steps": 3, "alpha": 0.1}}])
    u = rng.random()
    if u < 0.12:
        o["clip_norm"] = _choice(rng, [0.1, 1.0])
    elif u < 0.2:
        o["clip_value"] = _choice(rng, [0.01, 0.1])
    elif u < 0.28 and name != "adamw":
        o["weight_decay"] = _choice(rng, [0.01, 0.1])
    if sched:
        o.setdefault("lr", 0.01)
        return {"name": name, "opts": o, "schedule": sched}
    return {"name": name, "opts": o}


def lr_at(opt: dict, o: dict, step: int) -> float:
    """The learning rate of update `step` (0-based): README's schedules."""
    sch = opt.get("schedule")
    lr = o["lr"]
    if not sch:
        return lr
    a = sch["args"]
    if sch["name"] == "exponential_decay":
        e = step / a["decay_steps"]
        return lr * a["decay_rate"] ** (math.floor(e) if a.get("staircase") else e)
    if sch["name"] == "step_decay":
        return lr * a["factor"] ** math.floor(step / a["every"])
    frac = min(step, a["decay_steps"]) / a["decay_steps"]
    alpha = a.get("alpha", 0.0)
    return lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * frac)) + alpha)


# With symbolic spatial dims (x: f32[N, C, H, W]) the image values take only what keeps H and W
# symbolic and the channels static; a global pool ends the image part.
SYMBOLIC_OPS = {"conv2d": 6, "conv2d_transpose": 2.5, "max_pool2d": 3, "avg_pool2d": 2, "global_avg_pool2d": 1,
                "upsample2d": 1, "act": 2, "relu": 2, "tanh": 0.5, "softmax": 0.5, "abs": 0.5, "clip": 0.5,
                "maximum_c": 0.5, "batch_norm": 2, "group_norm": 1, "square": 0.2, "where": 0.3, "max": 0.5,
                "mean": 0.3}


def generate(seed: int, max_stmts: int = 7, f32_share: float = 0.2, symbolic_share: float = 0.0) -> dict:
    """A random valid program (a JSON-able description) of 1 to max_stmts drawn statements; a share
    f32_share of them compiled without float64=True (dslc's float32 graphs), a share symbolic_share
    of those with image inputs declared with symbolic H and W (drawn apart: the other programs do
    not change with it)."""
    rng = random.Random(seed)
    symbolic = random.Random(seed * 7919 + 17).random() < symbolic_share
    rank = _choice(rng, [1, 2, 3, 3])
    if rank == 1:
        shape = [rng.randint(2, 12)]
    elif rank == 2:
        shape = [rng.randint(1, 4), rng.randint(3, 10)]
    else:
        shape = [rng.randint(1, 3), rng.randint(3, 8), rng.randint(3, 8)]
    prog = {"seed": seed, "batch": _choice(rng, [1, 2, 2, 3, 4]), "x": {"shape": shape, "fill": _choice(rng, FILLS)},
            "stmts": [], "twice": None, "reg": 0.0}
    symbolic = symbolic and rank == 3
    if symbolic:
        prog["x"]["symbolic"] = True
    shapes = {"x": tuple(shape)}
    shared_of: dict = {}
    cur = "x"
    n_stmts = rng.randint(1, max_stmts)
    if rng.random() < 0.08 and not symbolic:  # an embedding of integer ids, joined in where the shapes allow
        st = {"out": "e0", "op": "embedding", "in": [], "p": _sample_stmt(rng, "embedding", (), shapes, "x")[1]}
        prog["stmts"].append(st)
        shapes["e0"] = shape_of("embedding", [], st["p"])
        if rng.random() < 0.5:
            cur = "e0"
    for i in range(n_stmts):
        for _attempt in range(20):
            src = cur if rng.random() < 0.8 else _choice(rng, list(shapes))
            a = shapes[src]
            image = symbolic and len(a) == 3
            op = _weighted_pick(rng, SYMBOLIC_OPS if image else OPS_BY_RANK[min(len(a), 3)])
            try:
                trial = dict(shared_of)
                ins, p = _sample_stmt(rng, op, a, shapes, src, trial)
                if image and op in ("max", "mean"):  # over H and W only: static [N, C] or [N, C, 1, 1]
                    p["axes"] = _choice(rng, [[2, 3], [-1, -2]])
                if symbolic and any(len(shapes[n]) == 3 and n != src for n in ins):
                    raise Invalid("symbolic dims of two values")
                st = {"out": f"v{i + 1}", "op": op, "in": ins, "p": p}
                out = shape_of(op, [shapes[n] for n in ins], p)
                if int(np.prod(out)) > MAX_ELEMS or min(out) < 1:
                    raise Invalid("size")
            except Invalid:
                continue
            prog["stmts"].append(st)
            shapes[st["out"]] = tuple(out)
            shared_of.update(trial)
            cur = st["out"]
            break
    if symbolic and len(shapes[cur]) == 3:  # the output: static [N, C]
        prog["stmts"].append({"out": "vg", "op": "global_avg_pool2d", "in": [cur], "p": {}})
        shapes["vg"], cur = shape_of("global_avg_pool2d", [shapes[cur]], {}), "vg"
    prog["stmts"] = pruned({**prog, "stmts": [st for st in prog["stmts"] if st["out"] != cur] +
                            [st for st in prog["stmts"] if st["out"] == cur]})["stmts"] if prog["stmts"] else []
    if not any(st["op"] in WEIGHTED for st in prog["stmts"]):  # the step must train something
        if len(shapes[cur]) != 1:
            prog["stmts"].append({"out": "vf", "op": "flatten", "in": [cur], "p": {}})
            cur = "vf"
        prog["stmts"].append({"out": "vd", "op": "dense", "in": [cur], "p": {"units": rng.randint(1, 5)}})
    kind = _choice(rng, LOSSES)
    L: dict = {"kind": kind}
    if kind == "huber":
        L["delta"] = _choice(rng, [1.0, 0.5, 0.1])
    elif kind == "bce":
        L["logits"] = rng.random() < 0.6
    elif kind == "cce":
        L["form"] = _choice(rng, ["logits", "softmax", "sigmoid"])
        if rng.random() < 0.3:
            L["smoothing"] = _choice(rng, [0.1, 0.2])
    elif kind == "scce":
        L["logits"] = rng.random() < 0.6
    elif kind == "kl":
        L["target_first"] = rng.random() < 0.6
    prog["loss"] = L
    if rng.random() < 0.3:
        prog["twice"] = _choice(rng, ["scale", "flip", "shift", "eval"])
    if rng.random() < 0.2:
        prog["reg"] = 0.01
    if rng.random() < 0.12:
        prog["gp"] = _choice(rng, [0.1, 1.0])
    prog["opt"] = _optimizer(rng)
    prog["steps"] = rng.randint(2, 3)
    if rng.random() < f32_share:
        prog["f32"] = True
    infer(prog)
    return prog


# ================================================================== data
def _fill(rng: np.random.Generator, shape, mode: str) -> np.ndarray:
    if mode == "normal":
        return rng.standard_normal(shape)
    if mode == "blank_rows":
        x = rng.standard_normal(shape)
        x[rng.random(shape[0]) < 0.5] = 0.0
        x[0] = 0.0
        return x
    if mode == "sparse":
        return rng.standard_normal(shape) * (rng.random(shape) < 0.2)
    if mode == "piecewise":  # blocks of equal values: ties in every window
        if len(shape) == 4:
            small = rng.integers(-2, 3, size=(shape[0], shape[1], (shape[2] + 1) // 2, (shape[3] + 1) // 2)).astype(float)
            return np.repeat(np.repeat(small, 2, axis=2), 2, axis=3)[:, :, :shape[2], :shape[3]] * 0.5
        if len(shape) == 3:
            small = rng.integers(-2, 3, size=(shape[0], shape[1], (shape[2] + 1) // 2)).astype(float)
            return np.repeat(small, 2, axis=2)[:, :, :shape[2]] * 0.5
        small = rng.integers(-2, 3, size=(shape[0], (shape[1] + 1) // 2)).astype(float)
        return np.repeat(small, 2, axis=1)[:, :shape[1]] * 0.5
    if mode == "integers":
        return rng.integers(-2, 3, size=shape).astype(float)
    if mode == "relu":
        return np.maximum(rng.standard_normal(shape), 0.0)
    if mode == "zeros_some_channels":
        x = rng.standard_normal(shape)
        if len(shape) > 2:
            x[:, rng.random(shape[1]) < 0.5] = 0.0
        else:
            x[:, rng.random(shape[1]) < 0.5] = 0.0
        return x
    raise AssertionError(mode)


def make_data(prog: dict, shapes: dict) -> dict:
    """The step's inputs (float64 NumPy), a pure function of the program's seed and shapes."""
    rng = np.random.default_rng(prog["seed"])
    B = prog["batch"]
    data = {"x": _fill(rng, (B, *prog["x"]["shape"]), prog["x"]["fill"])}
    rng2 = np.random.default_rng([prog["seed"], 7])
    if any(st["op"] == "embedding" for st in prog["stmts"]):
        data["ids"] = rng2.integers(0, 7, size=(B, 3)).astype(np.int64)
    out = shapes[output_name(prog)]
    L = prog["loss"]
    ncls = int(np.prod(out))
    if L["kind"] in ("mse", "mae", "huber"):
        t = rng2.standard_normal((B, *out))
        t[rng2.random(t.shape) < 0.2] = 0.0
        data["t"] = t
    elif L["kind"] == "bce":
        t = rng2.choice([0.0, 1.0, 0.3, 1.0, 0.0], size=(B, *out))
        data["t"] = t
    elif L["kind"] in ("cce", "kl"):
        if rng2.random() < 0.5:
            t = np.eye(ncls)[rng2.integers(0, ncls, size=B)]
        else:
            t = rng2.dirichlet(np.ones(ncls), size=B)
        data["t"] = t
    elif L["kind"] == "scce":
        data["labels"] = rng2.integers(0, ncls, size=B).astype(np.int64)
    return data


# ================================================================== the PyTorch twin
class Twin:
    """The program in PyTorch float64, with the weights by dslc's names (and dslc's layouts)."""

    def __init__(self, prog: dict, shapes: dict):
        import torch
        if torch.get_num_threads() != 1:  # tiny tensors: threads only contend (10x slower on a busy machine)
            torch.set_num_threads(1)
        self.torch = torch
        self.F = torch.nn.functional
        self.prog, self.shapes = prog, shapes
        self.near: list[str] = []
        self.decisions: list = []  # (what, tensor) per kink met, in order: see `perturbed_decisions`
        # The magnitude of the operands each value was computed from (an upper bound, roughly):
        # round-off in a value is ~1e-16 of it, also where the value itself cancelled to ~0 (a batch
        # norm of equal rows): kinks are judged near relative to it, not to the value alone.
        self.scale: dict = {}
        self.cur_scale = 0.0
        self.jitter = None  # a torch.Generator while a perturbed pass runs
        self.out_scale = 0.0  # the model output's scale (round-off ~1e-16 of it reaches every gradient)
        self.stats: dict = {}  # batch-norm statistics after the pass: name -> tensor

    # ---- kinks
    def kink(self, what: str, diff, scale):
        """Record which side of a kink each element is on (a decision), and flag the pass when an
        element is nonzero but within NEAR (relative to `scale`) of the kink."""
        t = self.torch
        with t.no_grad():
            self.decisions.append((what, t.sign(diff.detach()).to(t.int8)))
            d = diff.detach().abs()
            s = float(scale.detach().abs().max()) if isinstance(scale, t.Tensor) else float(abs(scale))
            s = max(s, self.cur_scale, 1e-300)
            if bool(((d > 0) & (d <= _P.near * s)).any()):
                self.near.append(what)

    def act(self, name: str, v, alpha=None):
        F, t = self.F, self.torch
        if name in ("relu", "leaky_relu", "elu"):
            self.kink(name, v, v)
        if name == "relu":
            return F.relu(v)
        if name == "leaky_relu":
            return F.leaky_relu(v, 0.3 if alpha is None else alpha)
        if name == "elu":
            return F.elu(v, 1.0 if alpha is None else alpha)
        if name == "sigmoid":
            return t.sigmoid(v)
        if name == "tanh":
            return t.tanh(v)
        if name == "softplus":
            return F.softplus(v)
        if name == "gelu":
            return F.gelu(v)
        if name in ("silu", "swish"):
            return F.silu(v)
        if name == "mish":
            return F.mish(v)
        if name == "softmax":
            return t.softmax(v, -1)
        if name == "linear":
            return v
        raise AssertionError(name)

    def _minmax(self, a, b, op):
        t = self.torch
        b = b if isinstance(b, t.Tensor) else t.tensor(b, dtype=a.dtype)
        self.kink(op, a - b, t.maximum(a.abs(), b.abs()) if b.dim() else a)
        pick = (a <= b) if op == "minimum" else (a >= b)  # ties: the gradient goes to a (TensorFlow)
        return t.where(pick, a, b)

    # ---- statements
    def stmt(self, st: dict, env: dict, W: dict, training: bool, call: int):
        t, F = self.torch, self.F
        op, p, o = st["op"], st["p"], st["out"]
        x = env[st["in"][0]] if st["in"] else None
        name = f"M.{o}"

        def w(n):
            return W[f"{name}.{n}"]

        def post(y):
            if p.get("activation"):
                return self.act(p["activation"], y)
            return y

        def bias(n="bias"):
            return w(n) if p.get("use_bias", True) else None
        if op in UNARY:
            if op == "abs":
                self.kink("abs", x, x)
                return x.abs()
            if op == "square":
                return x * x
            if op == "neg":
                return -x
            if op in ("sin", "cos", "atan", "erf"):
                return getattr(t, op)(x)
            return self.act(op, x)
        if op == "act":
            return self.act(p["name"], x, p.get("alpha"))
        if op == "softmax":
            return t.softmax(x, p["axis"])
        if op == "log_softmax":
            return t.log_softmax(x, p["axis"])
        if op == "pow":
            return t.tanh(x) ** 3 if p["n"] == 3 else x ** 2
        if op == "affine":
            return x * p["a"] + p["b"]
        if op == "where":
            self.kink("where", x, x)
            return t.where(x > 0.0, x, x * p["c"])
        if op == "stopgrad":
            return x + x.detach() * p["c"]
        if op == "log":
            if p["form"] == "abs":
                self.kink("abs", x, x)
                return t.log(x.abs() + p["c"])
            return t.log(t.sigmoid(x))
        if op == "sqrt":
            self.kink("abs", x, x)
            return t.sqrt(x.abs() + p["c"])
        if op == "exp":
            if p["form"] == "tanh":
                return t.exp(t.tanh(x))
            return t.exp(self.clip(x, -3.0, 2.0))
        if op == "clip":
            return self.clip(x, p["lo"], p["hi"])
        if op in ("add", "sub", "mul", "div"):
            y = env[st["in"][1]]
            if op == "div":
                self.kink("abs", y, y)
                return x / (y.abs() + 1.0)
            return {"add": x + y, "sub": x - y, "mul": x * y}[op]
        if op in ("minimum", "maximum"):
            return self._minmax(x, env[st["in"][1]], op)
        if op in ("minimum_c", "maximum_c"):
            return self._minmax(x, t.full_like(x, p["c"]), op[:-2])
        if op == "scale_by_mean":
            return x * x.mean(dim=p["axis"], keepdim=True)
        if op in ("sum", "mean", "max", "min"):
            r = x.dim()
            axes = [a if a >= 0 else a + r for a in p["axes"]]
            if op in ("max", "min"):
                ext = x.amax(dim=axes, keepdim=True) if op == "max" else x.amin(dim=axes, keepdim=True)
                self.kink(op, x - ext, x)
                y = x.amax(dim=axes, keepdim=p["keepdims"]) if op == "max" else x.amin(dim=axes, keepdim=p["keepdims"])
                return y
            return x.sum(dim=axes, keepdim=p["keepdims"]) if op == "sum" else x.mean(dim=axes, keepdim=p["keepdims"])
        if op == "dense":
            y = x @ w("weight")
            if p.get("use_bias", True):
                y = y + w("bias")
            return post(y)
        if op == "conv2d":
            k, s, d = _k2(p["kernel"]), _k2(p["strides"]), _k2(p["dilation"])
            pads = _conv_pads(p["padding"], 2, k, s, d, x.shape[2:])
            xp = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            return post(F.conv2d(xp, w("weight"), bias(), stride=s, dilation=d, groups=p["groups"]))
        if op == "conv2d_transpose":
            k, s, d = _k2(p["kernel"]), _k2(p["strides"]), _k2(p["dilation"])
            if p["padding"] == "same":  # Keras: output = input * strides
                op_, crop = [0, 0], [0, 0, 0, 0]
                for i in range(2):
                    total = (k[i] - 1) * d[i] + 1 - s[i]
                    if total < 0:
                        op_[i] = -total
                    else:
                        crop[i], crop[i + 2] = total // 2, total - total // 2
            else:
                op_ = _k2(p.get("output_padding", 0))
                crop = _conv_pads(p["padding"], 2, k, s, d, x.shape[2:])
            y = F.conv_transpose2d(x, w("weight"), bias(), stride=s, dilation=d, output_padding=op_)
            H, Wd = y.shape[2], y.shape[3]
            return post(y[:, :, crop[0]:H - crop[2], crop[1]:Wd - crop[3]])
        if op in ("max_pool2d", "avg_pool2d"):
            k = _k2(p["pool"])
            s = _k2(p["strides"]) if p.get("strides") is not None else k
            pads = _conv_pads(p["padding"], 2, k, s, [1, 1], x.shape[2:])
            pt = (pads[1], pads[3], pads[0], pads[2])
            if op == "max_pool2d":
                xp = F.pad(x, pt, value=-math.inf)
                self._pool_ties(xp, k, s)
                return F.max_pool2d(xp, k, s)
            total = F.avg_pool2d(F.pad(x, pt), k, s)
            count = F.avg_pool2d(F.pad(t.ones_like(x[:1, :1]), pt), k, s)
            return total / count
        if op == "global_avg_pool2d":
            return x.mean(dim=(2, 3))
        if op == "upsample2d":
            sh, sw = _k2(p["size"])
            if p["mode"] == "nearest":
                return x.repeat_interleave(sh, dim=2).repeat_interleave(sw, dim=3)
            return F.interpolate(x, scale_factor=(float(sh), float(sw)), mode="bilinear", align_corners=False)
        if op == "conv1d":
            pads = _conv_pads(p["padding"], 1, [p["kernel"]], [p["strides"]], [p["dilation"]], x.shape[2:])
            return post(F.conv1d(F.pad(x, tuple(pads)), w("weight"), bias(), stride=p["strides"], dilation=p["dilation"],
                                 groups=p["groups"]))
        if op in ("max_pool1d", "avg_pool1d"):
            k = p["pool"]
            s = p["strides"] if p.get("strides") is not None else k
            pads = _conv_pads(p["padding"], 1, [k], [s], [1], x.shape[2:])
            if op == "max_pool1d":
                xp = F.pad(x, tuple(pads), value=-math.inf)
                self._pool_ties(xp[:, :, None], [1, k], [1, s])
                return F.max_pool1d(xp, k, s)
            total = F.avg_pool1d(F.pad(x, tuple(pads)), k, s)
            count = F.avg_pool1d(F.pad(t.ones_like(x[:1, :1]), tuple(pads)), k, s)
            return total / count
        if op == "batch_norm":
            axes = [0] + list(range(2, x.dim()))
            bshape = [1, x.shape[1]] + [1] * (x.dim() - 2)
            gamma, beta = w("gamma").reshape(bshape), w("beta").reshape(bshape)
            eps = 1e-3
            if training:
                mean = self._jit(x.mean(dim=axes, keepdim=True))
                c = x - mean
                var = (c * c).mean(dim=axes, keepdim=True)
                m = p.get("momentum", 0.99)
                for key, stat in (("moving_mean", mean), ("moving_variance", var)):
                    full = f"{name}.{key}"
                    prev = self.stats.get(full, W[full])  # a second call updates the first call's result
                    self.stats[full] = (prev * m + stat.detach().reshape(-1) * (1 - m)).detach()
            else:
                mean, var = w("moving_mean").reshape(bshape), w("moving_variance").reshape(bshape)
                c = x - mean
            return c * (1.0 / t.sqrt(var + eps)) * gamma + beta
        if op == "layer_norm":
            ax = p["axis"]
            mean = self._jit(x.mean(dim=ax, keepdim=True))
            c = x - mean
            var = (c * c).mean(dim=ax, keepdim=True)
            along = [x.shape[ax]] + [1] * (x.dim() - 1 - ax % x.dim())
            return c / t.sqrt(var + 1e-3) * w("gamma").reshape(along) + w("beta").reshape(along)
        if op == "group_norm":  # (by hand: F.group_norm refuses groups of one value)
            g = x.reshape(x.shape[0], p["groups"], -1)
            c = g - self._jit(g.mean(dim=2, keepdim=True))
            normed = (c / t.sqrt((c * c).mean(dim=2, keepdim=True) + 1e-3)).reshape(x.shape)
            along = [1, x.shape[1]] + [1] * (x.dim() - 2)
            return normed * w("gamma").reshape(along) + w("beta").reshape(along)
        if op == "embedding":
            ids = env["ids"]
            y = F.embedding(ids, w("weight"))
            if p.get("padding_idx") is not None:
                y = y * (ids != p["padding_idx"]).unsqueeze(-1).to(y.dtype)
            return y
        if op == "flatten":
            return x.reshape(x.shape[0], -1)
        if op == "reshape":
            return x.reshape(x.shape[0], *p["shape"])
        if op == "transpose":
            return x.permute(0, *p["perm"])
        if op == "concat":
            return t.cat([x, env[st["in"][1]]], dim=p["axis"])
        if op == "index":
            return _apply_index(t, x, self._index(p["index"], x))
        if op == "repeat_index":
            f = {"tanh": t.tanh, "relu": lambda v: self.act("relu", v), "id": lambda v: v,
                 "sigmoid": t.sigmoid}.get(p["f"])
            pick = (lambda i: x[:, i]) if x.dim() >= 3 else (lambda i: x[:, i:i + 1])
            s = pick(0) * p["c0"]
            for i in range(p["start"], p["start"] + p["count"]):
                u = s * p["a"] + pick(i)
                s = self._minmax(u, pick(i), "maximum") if p["f"] == "max" else f(u)
            return s
        if op == "shared":
            y = x @ W["A.y.weight"] + W["A.y.bias"]
            return self.act(p["act"], y) if p.get("act") else y
        if op == "repeat_dense":
            f = {"tanh": t.tanh, "relu": lambda v: self.act("relu", v), "id": lambda v: v, "sigmoid": t.sigmoid}[p["f"]]
            s = x
            for _ in range(p["count"]):
                s = f((s @ w("weight") + w("bias")) * p["a"] + x)
            return s
        raise AssertionError(op)

    def _jit(self, mean):
        """In a perturbed pass, a mean off by a relative 1e-9 (as round-off leaves it): x - mean(x)
        over equal values is exactly 0 on one side and ~1e-17 on the other, a kink's call."""
        if self.jitter is None:
            return mean
        t = self.torch
        with t.no_grad():
            u = t.rand(mean.shape, generator=self.jitter, dtype=mean.dtype) * 2 - 1
        return mean * (1 + _P.jitter * u)

    def _index(self, items, x):
        idx = [slice(None)]
        for it in items:
            if it[0] == "none":
                idx.append(None)
            elif it[0] == "ellipsis":
                idx.append(Ellipsis)
            elif it[0] == "int":
                idx.append(it[1])
            else:
                _, a, b, c = it
                if c is not None and c < 0:  # torch has no negative steps: flip, then slice forward
                    idx.append(("flip", a, b, c))
                else:
                    idx.append(slice(a, b, c))
        if not any(isinstance(i, tuple) for i in idx):
            return tuple(idx)
        return _FlipIndex(idx)

    def clip(self, x, lo, hi):
        self.kink("clip", x - lo, x)
        self.kink("clip", x - hi, x)
        return x.clamp(lo, hi)

    def _pool_ties(self, xp, k, s):
        t, F = self.torch, self.F
        with t.no_grad():
            n, c = xp.shape[:2]
            cols = F.unfold(xp.reshape(n * c, 1, *xp.shape[2:]), kernel_size=k, stride=s)  # [nc, taps, L]
            if cols.shape[1] < 2:
                return
            self.decisions.append(("max_pool", cols.argmax(dim=1)))
            top = cols.topk(2, dim=1).values
            finite = t.isfinite(top).all(dim=1)
            gap = (top[:, 0] - top[:, 1])[finite]
            if gap.numel():
                self.kink("max_pool", gap, top[:, 0][finite].abs().max())

    # ---- the model and the loss
    def _gain(self, st: dict, W: dict, env: dict) -> float:
        """How much a statement may scale up the magnitude (and so the round-off) of its inputs."""
        t = self.torch
        op, p, name = st["op"], st["p"], f"M.{st['out']}"
        with t.no_grad():
            def l1(w, dims):
                return float(w.detach().abs().sum(dim=dims).max())

            def b():
                bias = W.get(f"{name}.bias")
                return float(bias.detach().abs().max()) if bias is not None and p.get("use_bias", True) else 0.0
            if op == "dense":
                return l1(W[f"{name}.weight"], 0) + b()
            if op in ("conv2d", "conv1d"):
                w = W[f"{name}.weight"]
                return l1(w, tuple(range(1, w.dim()))) + b()
            if op == "conv2d_transpose":
                w = W[f"{name}.weight"]
                return l1(w, (0, 2, 3)) + b()
            if op in ("batch_norm", "layer_norm", "group_norm"):
                return float(W[f"{name}.gamma"].detach().abs().max()) / math.sqrt(1e-3) + float(W[f"{name}.beta"].detach().abs().max())
            if op == "repeat_dense":
                return (l1(W[f"{name}.weight"], 0) * abs(p["a"]) + b() + 1) ** p["count"]
            if op == "shared":
                return l1(W["A.y.weight"], 0) + float(W["A.y.bias"].detach().abs().max())
            if op in ("sum", "scale_by_mean"):
                return float(np.prod(list(env[st["in"][0]].shape[1:])))
            if op == "repeat_index":
                return (abs(p["a"]) + 1) ** p["count"]
            if op == "affine":
                return abs(p["a"]) + abs(p["b"])
        return 1.0

    def model(self, W: dict, x, ids, training=True, call=0):
        t = self.torch
        env = {"x": x}
        self.scale = {"x": float(x.detach().abs().max()) if x.numel() else 0.0}
        if ids is not None:
            env["ids"] = ids
        for st in self.prog["stmts"]:
            ins = [self.scale.get(n, 0.0) for n in st["in"]]
            if st["op"] in ("mul", "div", "pow", "square", "scale_by_mean"):  # products
                s_in = max(ins) * (max(ins) if st["op"] != "div" else 1.0) * (1 if st["op"] != "pow" else max(ins))
            else:
                s_in = sum(ins) if st["op"] in ("add", "sub", "minimum", "maximum") else max(ins, default=1.0)
            self.cur_scale = s_in * self._gain(st, W, env)
            y = self.stmt(st, env, W, training, call)
            if self.jitter is not None and _position_dependent(st):
                with t.no_grad():  # (a perturbed pass only: see perturbed_decisions)
                    y = y * (1 + _P.jitter * (t.rand(y.shape, generator=self.jitter, dtype=y.dtype) * 2 - 1))
            env[st["out"]] = y
            with t.no_grad():
                mag = float(y.detach().abs().max()) if y.numel() else 0.0
            self.scale[st["out"]] = max(mag, self.cur_scale) if math.isfinite(self.cur_scale) else mag
        self.cur_scale = self.scale[output_name(self.prog)]
        self.out_scale = max(self.out_scale, self.cur_scale)
        return env[output_name(self.prog)]

    def loss_of(self, p, data: dict):
        t, F = self.torch, self.F
        L = self.prog["loss"]
        kind = L["kind"]
        flat = p.reshape(p.shape[0], -1)
        # p's round-off scale matters to p - t (mae, huber); the probability clips see values in
        # [0, 1] whose round-off is relative to themselves: judged on their own magnitude
        S, self.cur_scale = self.cur_scale, 0.0
        if kind == "mse":
            return ((p - data["t"]) ** 2).mean()
        if kind == "mae":
            d = p - data["t"]
            self.kink("mae", d, max(S, float(t.maximum(p.detach().abs(), data["t"].detach().abs()).max())))
            return d.abs().mean()
        if kind == "huber":
            d = p - data["t"]
            a = d.abs()
            # (no kink to watch: huber's derivative is continuous, at 0 and at |d| = delta)
            delta = L["delta"]
            return t.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta)).mean()
        if kind == "bce":
            tt = data["t"]
            if L["logits"]:  # the exact derivative everywhere: sigmoid(z) - t
                return (F.softplus(p) - p * tt).mean()
            q = t.sigmoid(p)
            return -(tt * t.log(self.clip(q, EPS, 1 - EPS)) + (1 - tt) * t.log(self.clip(1 - q, EPS, 1 - EPS))).mean()
        if kind == "cce":
            tt = data["t"]
            if L.get("smoothing"):
                tt = tt * (1 - L["smoothing"]) + L["smoothing"] / flat.shape[1]
            form = L["form"]
            if form == "logits":
                logp = t.log_softmax(flat, -1)
            else:
                q = t.softmax(flat, -1) if form == "softmax" else t.sigmoid(flat)
                logp = t.log(self.clip(q / q.sum(-1, keepdim=True), EPS, 1 - EPS))
            return -(tt * logp).sum(-1).mean()
        if kind == "scce":
            lab = data["labels"]
            if L["logits"]:
                logp = t.log_softmax(flat, -1)
            else:
                q = t.softmax(flat, -1)
                logp = t.log(self.clip(q / q.sum(-1, keepdim=True), EPS, 1 - EPS))
            return -logp.gather(1, lab[:, None]).mean()
        if kind == "kl":
            q = t.softmax(flat, -1)
            a, b = (data["t"], q) if L["target_first"] else (q, data["t"])
            a, b = self.clip(a, EPS, 1.0), self.clip(b, EPS, 1.0)
            return (a * t.log(a / b)).sum(-1).mean()
        raise AssertionError(kind)

    def step_loss(self, W: dict, data: dict):
        """The step's loss (training mode), filling self.stats with the batch-norm statistics."""
        t = self.torch
        self.stats = {}
        self.decisions = []
        self.out_scale = 0.0
        x, ids = data["x"], data.get("ids")
        p = self.model(W, x, ids, True, 0)
        total = self.loss_of(p, data)
        self.cur_scale = 0.0
        if self.prog.get("twice"):
            x2 = {"scale": lambda: x * 0.5, "flip": lambda: t.flip(x, [0]), "shift": lambda: x + 1.0,
                  "eval": lambda: x * 0.5}[self.prog["twice"]]()
            q = self.model(W, x2, ids, self.prog["twice"] != "eval", 1)
            total = total + 0.5 * self.loss_of(q, data)
            self.cur_scale = 0.0
        if self.prog.get("reg"):
            total = total + self.prog["reg"] * (p * p).mean()
        if self.prog.get("gp") and t.is_grad_enabled() and x.requires_grad:
            gx, = t.autograd.grad(p.mean(), x, create_graph=True, allow_unused=True)
            if gx is not None:  # (None: p does not depend on x, a model of the ids alone)
                total = total + self.prog["gp"] * (gx * gx).mean()
        return total


def _keyed_noise(torch, v, salt: int):
    """A relative perturbation of 1e-9 that is a function of each element's value (and the salt):
    equal values stay equal and zeros stay zero, so the exact ties of the data survive it."""
    h = torch.frac(torch.sin(v * 12.9898 + salt * 78.233) * 43758.5453) * 2 - 1
    return v * (1 + _P.jitter * h)


def _position_dependent(st: dict) -> bool:
    """Statements whose outputs at different positions come from different arithmetic that is equal
    only analytically: an average over fewer taps at a padded border, bilinear weights that sum to
    one. Equal values there (an average of a constant region) are equal up to round-off only."""
    op, p = st["op"], st["p"]
    if op in ("avg_pool2d", "avg_pool1d"):
        return p.get("padding") != "valid"
    return op == "upsample2d" and p.get("mode") == "bilinear"


def perturbed_decisions(twin: "Twin", W: dict, data: dict, salt: int) -> list:
    """The kink decisions of a pass with every weight perturbed by `_keyed_noise` (not the data: its
    exact values may sit on a kink's constant, a one-hot 1 on a clip bound, on purpose), and the
    outputs of `_position_dependent` statements by 1e-9 at random."""
    torch = twin.torch
    with torch.no_grad():
        W2 = {k: _keyed_noise(torch, v.detach(), salt) for k, v in W.items()}
        saved = (twin.near, twin.stats)
        twin.jitter = torch.Generator().manual_seed(salt)
        try:
            twin.step_loss(W2, data)
        finally:
            twin.jitter = None
        out = twin.decisions
        twin.near, twin.stats = saved
    return out


def same_decisions(a: list, b: list) -> str | None:
    """None if two passes decided every kink alike, else the first kink where they differ."""
    if len(a) != len(b):
        return "kink count"
    for (what, x), (_, y) in zip(a, b):
        if x.shape != y.shape or not bool((x == y).all()):
            return what
    return None


class _FlipIndex:
    """Indexing with negative steps (torch has none): applied item by item."""

    def __init__(self, idx):
        self.idx = idx


def _apply_index(torch, x, idx):
    if not isinstance(idx, _FlipIndex):
        return x[idx]
    items = idx.idx
    # expand the ellipsis into full slices, then walk the axes
    named = sum(1 for i in items if not (i is None or i is Ellipsis))
    out_items = []
    for i in items:
        if i is Ellipsis:
            out_items += [slice(None)] * (x.dim() - named)
        else:
            out_items.append(i)
    y, axis = x, 0
    for it in out_items:
        if it is None:
            y = y.unsqueeze(axis)
            axis += 1
        elif isinstance(it, int):
            y = y.select(axis, it)
        elif isinstance(it, tuple):  # ("flip", a, b, c), c < 0
            _, a, b, c = it
            n = y.shape[axis]
            picks = list(range(*slice(a, b, c).indices(n)))
            y = y.index_select(axis, torch.tensor(picks, dtype=torch.long))
            axis += 1
        else:
            y = y[(slice(None),) * axis + (it,)]
            axis += 1
    return y




# ================================================================== the optimizer, from README's equations
def opt_defaults(name: str, o: dict) -> dict:
    base = {"sgd": {"lr": 0.01, "momentum": 0.0, "nesterov": False},
            "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7},
            "adamw": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "weight_decay": 0.004},
            "rmsprop": {"lr": 0.001, "rho": 0.9, "eps": 1e-7, "momentum": 0.0, "centered": False}}[name]
    common = {"clip_norm": 0.0, "clip_value": 0.0, "weight_decay": 0.0}
    return {**common, **base, **o}


def slots_of(name: str, o: dict) -> list[str]:
    if name == "sgd":
        return ["velocity"] if o["momentum"] else []
    if name in ("adam", "adamw"):
        return ["m", "v"]
    return ["ms"] + (["mg"] if o["centered"] else []) + (["mom"] if o["momentum"] else [])


def opt_update(torch, name: str, o: dict, weights: dict, grads: dict, state: dict, step: int,
               eg: dict | None = None, slack: dict | None = None):
    """Keras / TF.js updates (README "Training steps"), float64. Returns (weights', state', slack'):
    slack[n] bounds, per element, how far an update from gradients that are off by eg[n] (the
    gradient tolerance) may move the weight, summed over the steps (Adam and RMSProp divide by
    sqrt(v) + eps, so a gradient that is zero up to round-off still moves a weight by lr * noise / eps)."""
    eg, slack = eg or {}, slack or {}
    new_slack = {}
    t = step + 1
    names = list(weights)
    g = {n: grads[n] for n in names}
    if o["clip_norm"]:
        norm = math.sqrt(sum(float((g[n] * g[n]).sum()) for n in names))
        limit = o["clip_norm"]
        scale = limit / max(norm, limit)
        g = {n: v * scale for n, v in g.items()}
    if o["clip_value"]:
        g = {n: v.clamp(-o["clip_value"], o["clip_value"]) for n, v in g.items()}
    new_w, new_s = {}, {}
    lr = o["lr_now"] if "lr_now" in o else o["lr"]
    for n in names:
        w, gn = weights[n], g[n]
        if o["weight_decay"] and name != "adamw":
            gn = gn + w * o["weight_decay"]
        s = {k: state.get(f"{name}.{k}.{n}", torch.zeros_like(w)) for k in slots_of(name, o)}
        e = eg.get(n, 0.0)
        if name == "sgd":
            sens = lr * (1 + o["momentum"] if o["nesterov"] else 1) / (1 - o["momentum"])
        elif name in ("adam", "adamw"):
            v_ = s["v"] * o["beta2"] + gn * gn * (1 - o["beta2"])
            sens = lr * math.sqrt(1 - o["beta2"] ** t) / (1 - o["beta1"] ** t) * 2 / (torch.sqrt(v_) + o["eps"])
        else:
            sens = lr * 2 / math.sqrt(o["eps"]) / (1 - o["momentum"])
        new_slack[n] = slack.get(n, 0.0) + sens * e
        if name == "sgd":
            if not o["momentum"]:
                w2 = w - gn * lr
            else:
                v = s["velocity"] * o["momentum"] - gn * lr
                w2 = w + (v * o["momentum"] - gn * lr if o["nesterov"] else v)
                new_s[f"sgd.velocity.{n}"] = v
        elif name in ("adam", "adamw"):
            if name == "adamw":
                w = w - w * (lr * o["weight_decay"])
            b1, b2 = o["beta1"], o["beta2"]
            m = s["m"] * b1 + gn * (1 - b1)
            v = s["v"] * b2 + gn * gn * (1 - b2)
            corr = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            w2 = w - m / (torch.sqrt(v) + o["eps"]) * (lr * corr)
            new_s[f"{name}.m.{n}"], new_s[f"{name}.v.{n}"] = m, v
        else:
            rho = o["rho"]
            ms = s["ms"] * rho + gn * gn * (1 - rho)
            new_s[f"rmsprop.ms.{n}"] = ms
            denom = ms
            if o["centered"]:
                mg = s["mg"] * rho + gn * (1 - rho)
                new_s[f"rmsprop.mg.{n}"] = mg
                denom = ms - mg * mg
            stp = gn * lr / torch.sqrt(denom + o["eps"])
            if o["momentum"]:
                stp = s["mom"] * o["momentum"] + stp
                new_s[f"rmsprop.mom.{n}"] = stp
            w2 = w - stp
        new_w[n] = w2
    return new_w, new_s, new_slack


# ================================================================== running both and comparing
@dataclass
class Result:
    status: str                  # ok | mismatch | ambiguous | error
    phase: str = ""              # gradients | train | compile | twin
    details: list = field(default_factory=list)
    notes: list = field(default_factory=list)   # e.g. the graph needed a workaround to load

    def __str__(self):
        return f"{self.status} ({self.phase}): " + "; ".join(self.details[:6])


# onnxruntime's FuseReluClip (a basic-level rewrite) fails to load a float64 Relu -> Clip ("Unexpected
# data type for Clip 'min' input of 11"): such graphs are noted (Result.notes) and run without that rewrite.
RELU_CLIP = "FuseReluClip"


def _session(model, notes: list | None = None, f32: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    # float64 graphs at BASIC: the extended level's MatMulScaleFusion rounds scales to float32;
    # float32 graphs at the full level, as dslc's runtime runs them
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if f32 else
                                   ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    data = model.SerializeToString()
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        if RELU_CLIP not in str(e):
            raise
        if notes is not None:
            notes.append("onnxruntime-relu-clip")
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"], disabled_optimizers=[RELU_CLIP])


def _run(sess, feeds: dict) -> dict:
    names = {i.name for i in sess.get_inputs()} | {i.name for i in sess.get_overridable_initializers()}
    outs = [o.name for o in sess.get_outputs()]
    return dict(zip(outs, sess.run(outs, {k: v for k, v in feeds.items() if k in names})))


def _close(a: np.ndarray, b: np.ndarray, floor: float, extra=0.0) -> tuple[bool, float]:
    """|a - b| <= TOL * (magnitude of the two) + floor (+ extra, per element); returns (ok, relative error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, math.inf
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        same = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[~np.isnan(a)], b[~np.isnan(b)])
        return same, 0.0 if same else math.inf
    mag = max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)))
    diff = np.abs(a - b)
    err = float(diff.max(initial=0))
    return bool((diff <= _P.tol * mag + floor + extra).all()), err / max(mag, 1e-300)


def compare(prog: dict, train: bool = True) -> Result:
    """Compile `prog`, run it in onnxruntime and in the twin (float64) and compare everything."""
    global _P
    _P = F32 if prog.get("f32") else F64
    try:
        return _compare(prog, train)
    finally:
        _P = F64


def _compare(prog: dict, train: bool) -> Result:
    import torch
    import dslc
    f32 = bool(prog.get("f32"))
    try:
        shapes = infer(prog)
        src = render(prog)
    except Invalid as e:
        return Result("error", "generator", [f"invalid program: {e}"])
    try:
        parsed = dslc.loads(src)
        gmodel = dslc.compile(parsed, "train", float64=not f32, emit="gradients", wrt_inputs=True)
        tmodel = dslc.compile(parsed, "train", float64=not f32) if train else None
    except Exception as e:  # a valid program dslc refuses or crashes on
        return Result("error", "compile", [f"{type(e).__name__}: {str(e)[:400]}"])
    from onnx import numpy_helper
    native = {t.name: numpy_helper.to_array(t) for t in gmodel.graph.initializer}
    init = {k: v.astype(np.float64) for k, v in native.items()}
    data = make_data(prog, shapes)
    if f32:  # the twin computes in float64 on the float32 values dslc gets
        data = {k: (v.astype(np.float32).astype(np.float64) if v.dtype.kind == "f" else v) for k, v in data.items()}
    fed = {k: (v.astype(np.float32) if f32 and v.dtype.kind == "f" else v) for k, v in data.items()}
    notes: list = []
    twin = Twin(prog, shapes)
    tdata = {k: torch.tensor(v) for k, v in data.items()}
    opt = prog["opt"]
    o = opt_defaults(opt["name"], opt["opts"])
    stat_names = [n for n in init if n.endswith((".moving_mean", ".moving_variance"))]
    trainable = [n for n in init if n not in stat_names]
    try:
        sess = _session(gmodel, notes, f32)
        got = {k: np.asarray(v, np.float64) for k, v in _run(sess, {**fed, **native}).items()}
    except Exception as e:
        return Result("error", "gradients", [f"onnxruntime: {type(e).__name__}: {str(e)[:300]}"], notes=notes)

    def twin_grads(weights: dict):
        W = {n: torch.tensor(v, requires_grad=n in trainable) for n, v in weights.items()}
        floats = {k: v.clone().requires_grad_(True) for k, v in tdata.items() if v.dtype == torch.float64}
        feeds = {**tdata, **floats}
        twin.near = []
        loss = twin.step_loss(W, feeds)
        base = twin.decisions
        wrt = [W[n] for n in trainable] + list(floats.values())
        gs = torch.autograd.grad(loss, wrt, allow_unused=True)
        stats_base, near_base, out_scale = dict(twin.stats), list(twin.near), twin.out_scale
        for salt in (1, 2):  # a kink that a perturbation of 1e-9 decides otherwise is round-off's call
            where = same_decisions(base, perturbed_decisions(twin, W, feeds, salt))
            if where:
                near_base.append(f"{where} (perturbed)")
                break
        twin.stats, twin.near, twin.out_scale = stats_base, near_base, out_scale
        out = {"loss": loss.detach().numpy(), "@scale": np.array(out_scale)}
        for n, gv in zip(trainable + [f"@{k}" for k in floats], gs):
            ref = W[n] if not n.startswith("@") else floats[n[1:]]
            out[n] = (gv if gv is not None else torch.zeros_like(ref)).detach().numpy()
        stats = {n: v.numpy() for n, v in twin.stats.items()}
        return out, stats, list(twin.near)
    try:
        ref, stats, near = twin_grads(init)
    except Exception:
        return Result("error", "twin", [traceback.format_exc(limit=3)[-600:]], notes=notes)
    if near:
        return Result("ambiguous", "gradients", sorted(set(near)), notes=notes)
    G = max(float(np.abs(v).max(initial=0)) for v in ref.values())  # loss, gradients, the output's scale
    floor = _P.floor * max(G, 1e-5)  # (an absolute floor of 1e-17: gradients that cancel to ~0 are noise)
    bad = []

    def check(label, a, b, fl=floor, extra=0.0):
        ok, rel = _close(a, b, fl, extra)
        if not ok:
            bad.append(f"{label}: rel {rel:.2e}")
    check("loss", got["loss"], ref["loss"])
    for n in trainable:
        check(f"grad.{n}", got[f"grad.{n}"], ref[n])
    for k in data:
        if f"grad.{k}" in got:
            check(f"grad.{k}", got[f"grad.{k}"], ref[f"@{k}"])
    for n in stat_names:
        if f"{n}.next" in got:
            check(f"{n}.next", got[f"{n}.next"], stats.get(n, init[n]))
    if bad:
        return Result("mismatch", "gradients", bad, notes=notes)
    if not train:
        return Result("ok", "gradients", notes=notes)
    # ---- train steps fed back
    try:
        tsess = _session(tmodel, notes, f32)
    except Exception as e:
        return Result("error", "train", [f"onnxruntime: {type(e).__name__}: {str(e)[:300]}"], notes=notes)
    t_init = {t.name: numpy_helper.to_array(t) for t in tmodel.graph.initializer}
    state = dict(t_init)  # in the graph's own dtypes
    slot_names = [f"{opt['name']}.{sl}.{n}" for n in trainable for sl in slots_of(opt["name"], o)]
    # Each step is checked from the state dslc fed back (its weights, slots, statistics, step): the
    # twin computes the gradients there and applies the update, and dslc's outputs must match. (The
    # previous step's check bounds how far that state is from the twin's own; starting each step
    # from it keeps round-off from deciding kinks differently on the two sides, e.g. a bias that
    # Adam moved by lr * noise / eps sitting on a mae kink.)
    for step in range(prog["steps"]):
        try:
            out = _run(tsess, {**fed, **state})
        except Exception as e:
            return Result("error", "train", [f"step {step}: onnxruntime: {type(e).__name__}: {str(e)[:300]}"], notes=notes)
        cur = {n: np.asarray(state[n], np.float64) for n in init}
        try:
            ref, stats, near = twin_grads(cur)
        except Exception:
            return Result("error", "twin", [traceback.format_exc(limit=3)[-600:]], notes=notes)
        if near:
            return Result("ambiguous", "train", [f"step {step}"] + sorted(set(near)), notes=notes)
        check(f"step {step} loss", out["loss"], ref["loss"])
        Gs = max(float(np.abs(v).max(initial=0)) for v in ref.values())
        eg = {n: 10 * (_P.tol * float(np.abs(ref[n]).max(initial=0)) + _P.floor * max(Gs, 1e-5)) for n in trainable}
        slots = {k: torch.tensor(np.asarray(state[k], np.float64)) for k in slot_names if k in state}
        new_w, new_s, slack = opt_update(torch, opt["name"], {**o, "lr_now": lr_at(opt, o, int(state.get("step", 0)))},
                                         {n: torch.tensor(cur[n]) for n in trainable},
                                         {n: torch.tensor(ref[n]) for n in trainable}, slots,
                                         int(state.get("step", 0)), eg, {})
        expect = {n: new_w[n].numpy() for n in trainable}
        expect.update({n: stats[n] for n in stat_names if n in stats})
        wscale = max(float(np.abs(v).max(initial=0)) for v in expect.values()) if expect else 1.0
        for n, v in expect.items():
            if f"{n}.next" not in out:
                bad.append(f"step {step}: no output {n}.next")
                continue
            extra = slack.get(n, 0.0)
            check(f"step {step} {n}", out[f"{n}.next"], v, _P.floor * wscale, extra.numpy() if hasattr(extra, "numpy") else extra)
        e0 = 10 * _P.floor * max(Gs, 1e-5)  # the gradients' noise floor, as the slots carry it
        tstate = {k: v.numpy() for k, v in new_s.items()}
        for k, v in tstate.items():  # the floor: the largest value of that slot over all weights,
            if f"{k}.next" not in out:  # and what the gradients' noise floor puts into the slot
                bad.append(f"step {step}: no output {k}.next")
                continue
            kind = ".".join(k.split(".")[:2]) + "."
            top = max(float(np.abs(u).max(initial=0)) for q, u in tstate.items() if q.startswith(kind))
            slot = k.split(".")[1]
            lr_now = lr_at(opt, o, int(state.get("step", 0)))
            carry = {"velocity": lr_now + 1, "m": 1, "mg": 1, "v": 2 * Gs + e0, "ms": 2 * Gs + e0,
                     "mom": lr_now * 2 / math.sqrt(o["eps"]) if "eps" in o else 1}.get(slot, 1)
            check(f"step {step} {k}", out[f"{k}.next"], v, _P.slot * top + e0 * carry)
        if int(out.get("step.next", -1)) != step + 1:
            bad.append(f"step {step}: step.next {out.get('step.next')}")
        if bad:
            return Result("mismatch", "train", bad, notes=notes)
        for k, v in out.items():
            if k.endswith(".next"):
                state[k[:-5]] = v
    return Result("ok", "train", notes=notes)


# ================================================================== reduction
def _without(prog: dict, drop: set) -> dict:
    """prog without the statements at indices `drop`; their users read the dropped statement's input."""
    new = copy.deepcopy(prog)
    alias: dict = {}
    kept = []
    for i, st in enumerate(new["stmts"]):
        st["in"] = [alias.get(n, n) for n in st["in"]]
        if i in drop:
            alias[st["out"]] = st["in"][0] if st["in"] else "x"
        else:
            kept.append(st)
    new["stmts"] = kept
    return pruned(new)


def _signature(r: Result) -> tuple:
    return (r.status, r.phase)


def reduce(prog: dict, still=None, log=None) -> dict:
    """A smaller program with the same kind of failure (delta debugging over the statements, then
    simplifications of the step)."""
    target = _signature(compare(prog))

    def fails(p):
        try:
            infer(p)
        except Invalid:
            return False
        r = compare(p)
        return _signature(r) == target if still is None else still(r)
    # ddmin over statements
    n = 2
    while len(prog["stmts"]) >= 1:
        idx = list(range(len(prog["stmts"])))
        chunk = max(1, len(idx) // n)
        parts = [set(idx[i:i + chunk]) for i in range(0, len(idx), chunk)]
        progress = False
        for part in parts:
            cand = _without(prog, part)
            if cand["stmts"] and fails(cand):
                prog, n, progress = cand, max(n - 1, 2), True
                if log:
                    log(f"reduced to {len(prog['stmts'])} statements")
                break
        if not progress:
            if chunk == 1:
                break
            n = min(len(idx), n * 2)
    # simplify the step
    simplifications = [
        lambda p: {**p, "twice": None}, lambda p: {**p, "reg": 0.0}, lambda p: {**p, "gp": 0.0},
        lambda p: {**p, "f32": False},
        lambda p: {**p, "opt": {"name": "sgd", "opts": {"lr": 0.1}}},
        lambda p: {**p, "steps": 1},
        lambda p: {**p, "loss": {"kind": "mse"}},
        lambda p: {**p, "batch": 1}, lambda p: {**p, "batch": 2},
        lambda p: {**p, "x": {**p["x"], "fill": "normal"}},
    ]
    for simp in simplifications:
        cand = simp(copy.deepcopy(prog))
        if cand != prog and fails(cand):
            prog = cand
    # smaller parameters: drop optional keys of statements
    for i in range(len(prog["stmts"])):
        for key in ("activation", "use_bias", "momentum", "output_padding", "padding_idx"):
            if key in prog["stmts"][i]["p"]:
                cand = copy.deepcopy(prog)
                del cand["stmts"][i]["p"][key]
                if fails(cand):
                    prog = cand
    return prog


def dumps(prog: dict) -> str:
    return json.dumps(prog, indent=1, sort_keys=True)
