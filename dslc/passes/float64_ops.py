"""Float64 nodes that onnxruntime's CPU provider has no kernel for, rewritten as standard ops it has.

onnxruntime 1.31 (CPU) runs Softplus, Elu, LeakyRelu, Erf, Gelu, Tan, Atan, Conv, ConvTranspose,
AveragePool, GlobalAveragePool, Resize, OneHot (to float64 values) and LayerNormalization in float32 only: a float64
model using them fails to load ("Could not find an implementation for Softplus(1)"), and so does a
float64 Clip fed by a Relu (its FuseReluClip rewrite fails). Each float64 node of those ops becomes an
equivalent made of ops every runtime has in float64 (found by trying each op, tests/test_float64_ops.py):
closed forms for the activations, Cephes' rational approximations for erf and atan (accurate to a
few float64 ulps), im2col convolutions (ir/patterns.py) and slice sums for average pooling. The pass
runs after autodiff, so gradients keep the ops' own rules; float32 graphs are left as they are.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..ir import patterns as P
from ..ir.builder import Builder
from ..ir.core import Graph, Node, Value

# Cephes (Moshier, public domain) erf / erfc and atan coefficients, highest power first.
_ERF_T = [9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
          7.00332514112805075473E3, 5.55923013010394962768E4]
_ERF_U = [1.0, 3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
          2.26290000613890934246E4, 4.92673942608635921086E4]
_ERFC_P = [2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
           4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
           9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2]
_ERFC_Q = [1.0, 1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
           9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
           1.65666309194161350182E3, 5.57535340817727675546E2]
_ERFC_R = [5.64189583547755073984E-1, 1.27536670759978104416E0, 5.01905042251180477414E0,
           6.16021097993053585195E0, 7.40974269950448939160E0, 2.97886665372100240670E0]
_ERFC_S = [1.0, 2.26052863220117276590E0, 9.39603524938001434673E0, 1.20489539808096656605E1,
           1.70814450747565897222E1, 9.60896809063285878198E0, 3.36907645100081516050E0]
_ATAN_P = [-8.750608600031904122785E-1, -1.615753718733365076637E1, -7.500855792314704667340E1,
           -1.228866684490136173410E2, -6.485021904942025371773E1]
_ATAN_Q = [1.0, 2.485846490142306297962E1, 1.650270098316988542046E2, 4.328810604912902668951E2,
           4.853903996359136964868E2, 1.945506571482613964425E2]


def _op(b: Builder, name: str, *inputs, **attrs) -> Value:
    return b.op(name, list(inputs), attrs)


def _c(b: Builder, value) -> Value:
    return b.const(np.asarray(value, np.float64), "f64")


def _where(b, cond, a, c):
    return _op(b, "Where", cond, a, c)


def _poly(b, x, coefficients):
    """Horner's rule, highest power first."""
    acc = _c(b, coefficients[0])
    for c in coefficients[1:]:
        acc = _op(b, "Add", _op(b, "Mul", acc, x), _c(b, c))
    return acc


def _log1p(b, u):
    """log(1 + u) accurate for tiny u (Kahan: u * log(w) / (w - 1) with w = 1 + u, u where w == 1)."""
    w = _op(b, "Add", u, _c(b, 1.0))
    exact = _op(b, "Equal", w, _c(b, 1.0))
    safe = _where(b, exact, _c(b, 2.0), w)  # (no 0/0 in the branch Where drops)
    ratio = _op(b, "Div", _op(b, "Log", safe), _op(b, "Sub", safe, _c(b, 1.0)))
    return _where(b, exact, u, _op(b, "Mul", u, ratio))


def _expm1(b, x):
    """exp(x) - 1 accurate near 0 (Kahan: (u - 1) * x / log(u) with u = exp(x)), for x <= 0."""
    u = _op(b, "Exp", x)
    plain = _op(b, "Or", _op(b, "Equal", u, _c(b, 1.0)), _op(b, "Less", x, _c(b, -1.0)))
    safe = _where(b, plain, _c(b, 0.5), u)
    kahan = _op(b, "Div", _op(b, "Mul", _op(b, "Sub", safe, _c(b, 1.0)), x), _op(b, "Log", safe))
    return _where(b, _op(b, "Equal", u, _c(b, 1.0)), x, _where(b, plain, _op(b, "Sub", u, _c(b, 1.0)), kahan))


def _positive(b, x):
    return _op(b, "Greater", x, _c(b, 0.0))


# ------------------------------------------------------------------ elementwise
def _softplus(b, n):
    x = n.inputs[0]  # max(x, 0) + log1p(exp(-|x|)): no overflow, no cancellation
    return _op(b, "Add", _op(b, "Relu", x), _log1p(b, _op(b, "Exp", _op(b, "Neg", _op(b, "Abs", x)))))


def _elu(b, n):
    x, alpha = n.inputs[0], n.attrs.get("alpha", 1.0)
    neg = _op(b, "Mul", _c(b, alpha), _expm1(b, _op(b, "Min", x, _c(b, 0.0))))
    return _where(b, _positive(b, x), x, neg)


def _leaky_relu(b, n):
    x = n.inputs[0]
    return _where(b, _positive(b, x), x, _op(b, "Mul", x, _c(b, n.attrs.get("alpha", 0.01))))


def _tan(b, n):
    return _op(b, "Div", _op(b, "Sin", n.inputs[0]), _op(b, "Cos", n.inputs[0]))


def _erf(b, n):
    return _erf_of(b, n.inputs[0])


def _erf_of(b, x: Value) -> Value:
    """Cephes: x T(x^2) / U(x^2) for |x| <= 1, else sign(x) (1 - erfc(|x|)), erfc(a) = exp(-a^2) P(a)/Q(a)
    below 8 and exp(-a^2) R(a)/S(a) above. Each branch sees its arguments clamped to its range."""
    small = _op(b, "Clip", x, _c(b, -1.0), _c(b, 1.0))
    z = _op(b, "Mul", small, small)
    inner = _op(b, "Div", _op(b, "Mul", small, _poly(b, z, _ERF_T)), _poly(b, z, _ERF_U))
    a = _op(b, "Clip", _op(b, "Abs", x), _c(b, 1.0), _c(b, 30.0))  # erfc(30) is below float64's smallest
    near = _op(b, "Div", _poly(b, a, _ERFC_P), _poly(b, a, _ERFC_Q))
    far = _op(b, "Div", _poly(b, a, _ERFC_R), _poly(b, a, _ERFC_S))
    ratio = _where(b, _op(b, "Less", a, _c(b, 8.0)), near, far)
    erfc = _op(b, "Mul", _op(b, "Exp", _op(b, "Neg", _op(b, "Mul", a, a))), ratio)
    outer = _op(b, "Mul", _op(b, "Sign", x), _op(b, "Sub", _c(b, 1.0), erfc))
    return _where(b, _op(b, "LessOrEqual", _op(b, "Abs", x), _c(b, 1.0)), inner, outer)


def _gelu(b, n):
    """x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, or the tanh approximation (approximate="tanh")."""
    x = n.inputs[0]
    if n.attrs.get("approximate", "none") == "tanh":
        cube = _op(b, "Mul", _op(b, "Mul", x, x), x)
        inner = _op(b, "Tanh", _op(b, "Mul", _c(b, math.sqrt(2 / math.pi)),
                                   _op(b, "Add", x, _op(b, "Mul", _c(b, 0.044715), cube))))
    else:
        inner = _erf_of(b, _op(b, "Mul", x, _c(b, 1 / math.sqrt(2))))
    return _op(b, "Mul", _op(b, "Mul", x, _op(b, "Add", _c(b, 1.0), inner)), _c(b, 0.5))


def _atan(b, n):
    """Cephes: |x| reduced to [0, 0.66] by atan(x) = pi/2 - atan(1/x) above tan(3pi/8) and
    pi/4 + atan((x-1)/(x+1)) above 0.66, then t + t^3 P(t^2)/Q(t^2); the sign put back."""
    x = n.inputs[0]
    a = _op(b, "Abs", x)
    big = _op(b, "Greater", a, _c(b, 2.41421356237309504880))
    mid = _op(b, "Greater", a, _c(b, 0.66))
    safe = _op(b, "Max", a, _c(b, 1e-300))
    t_big = _op(b, "Neg", _op(b, "Reciprocal", safe))
    t_mid = _op(b, "Div", _op(b, "Sub", a, _c(b, 1.0)), _op(b, "Add", a, _c(b, 1.0)))
    t = _where(b, big, t_big, _where(b, mid, t_mid, a))
    base = _where(b, big, _c(b, math.pi / 2), _where(b, mid, _c(b, math.pi / 4), _c(b, 0.0)))
    more = _where(b, big, _c(b, 6.123233995736765886130E-17),
                  _where(b, mid, _c(b, 0.5 * 6.123233995736765886130E-17), _c(b, 0.0)))
    z = _op(b, "Mul", t, t)
    r = _op(b, "Div", _op(b, "Mul", _op(b, "Mul", z, t), _poly(b, z, _ATAN_P)), _poly(b, z, _ATAN_Q))
    y = _op(b, "Add", _op(b, "Add", base, more), _op(b, "Add", t, r))
    return _op(b, "Mul", _op(b, "Sign", x), y)


# ------------------------------------------------------------------ convolution and pooling
def _spatial(n: Node, name: str, default):
    return list(n.attrs.get(name, default * (n.inputs[0].rank - 2)))


def _conv(b, n):
    x, w, bias = n.inputs[0], n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
    im2col = P.conv2d_im2col if x.rank == 4 else P.conv_nd_im2col  # (conv3d)
    return im2col(b, x, w, bias, _spatial(n, "strides", [1]), _spatial(n, "pads", [0, 0]),
                           _spatial(n, "dilations", [1]), n.attrs.get("group", 1))


def _conv_transpose(b, n):
    x, w, bias = n.inputs[0], n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
    return P.conv_transpose2d_im2col(b, x, w, bias, _spatial(n, "strides", [1]), _spatial(n, "pads", [0, 0]),
                                     _spatial(n, "dilations", [1]), n.attrs.get("group", 1),
                                     _spatial(n, "output_padding", [0]))


def _average_pool(b, n):
    """The sum over kernel offsets of strided slices of the zero-padded input, divided by the taps
    that each window counts (a constant: the padding counts only with count_include_pad)."""
    x = n.inputs[0]
    kernel, k = list(n.attrs["kernel_shape"]), len(n.attrs["kernel_shape"])
    s, p, d = _spatial(n, "strides", [1]), _spatial(n, "pads", [0, 0]), _spatial(n, "dilations", [1])
    if P.symbolic_spatial(x):
        return P.average_pool_windows(b, x, kernel, s, p, d, bool(n.attrs.get("count_include_pad", 0)))
    out = n.outputs[0].shape[2:]
    xp = P.pad_or_crop(b, x, {2 + i: (p[i], p[i + k]) for i in range(k)})
    total = None
    for offset in itertools.product(*[range(m) for m in kernel]):
        starts = [o * di for o, di in zip(offset, d)]
        ends = [st + si * (m - 1) + 1 for st, si, m in zip(starts, s, out)]
        part = P.slice_axes(b, xp, starts, ends, list(range(2, 2 + k)), s)
        total = part if total is None else _op(b, "Add", total, part)
    counts = np.ones(())
    for i in range(k):
        lo, hi = (-p[i], x.shape[2 + i] + p[i + k]) if n.attrs.get("count_include_pad", 0) else (0, x.shape[2 + i])
        taps = [sum(lo <= o * s[i] - p[i] + t * d[i] < hi for t in range(kernel[i])) for o in range(out[i])]
        counts = np.multiply.outer(counts, np.array(taps, np.float64))
    return _op(b, "Mul", total, _c(b, 1.0 / counts))


def _global_average_pool(b, n):
    x = n.inputs[0]
    return _op(b, "ReduceMean", x, b.ints(list(range(2, x.rank))), keepdims=1)


def _resize(b, n):
    """Linear half_pixel Resize by integer scales (upsample2d bilinear): A_h x A_w^T."""
    x = n.inputs[0]
    scales = [int(f) for f in np.asarray(n.inputs[2].const).reshape(-1)]
    if P.symbolic_spatial(x):
        return P.upsample_bilinear_windows(b, x, scales[2], scales[3])
    rows = _op(b, "MatMul", x, _c(b, P.linear_resize_matrix(x.shape[3], scales[3]).T))
    return _op(b, "MatMul", _c(b, P.linear_resize_matrix(x.shape[2], scales[2])), rows)


def _resizable(n: Node) -> bool:
    scales = n.inputs[2].const if len(n.inputs) > 2 and n.inputs[2] is not None else None
    return (n.attrs.get("mode") == "linear" and n.attrs.get("coordinate_transformation_mode") == "half_pixel"
            and n.inputs[0].rank == 4 and scales is not None and all(float(f).is_integer() for f in scales))


def _one_hot(b, n):
    """Cast(Equal(index, 0..depth-1)) scaled to the off/on values; negative indices count from the end."""
    idx, depth, values = n.inputs
    k = int(np.asarray(depth.const).reshape(-1)[0])
    idx = _op(b, "Cast", idx, to=7) if idx.dtype != "i64" else idx
    idx = _where(b, _op(b, "Less", idx, b.ints(0)), _op(b, "Add", idx, b.ints(k)), idx)
    hit = _op(b, "Cast", _op(b, "Equal", _op(b, "Unsqueeze", idx, b.ints([-1])), b.ints(np.arange(k))), to=11)
    off = P.slice_axes(b, values, [0], [1], [0])
    on = P.slice_axes(b, values, [1], [2], [0])
    return _op(b, "Add", _op(b, "Mul", hit, _op(b, "Sub", on, off)), off)


def _clip(b, n):
    """Max then Min: the same values. onnxruntime's FuseReluClip rewrite fails to load a float64 Clip
    fed by a Relu ("Unexpected data type for Clip 'min' input"), at every optimization level."""
    x, lo, hi = n.inputs[0], _input(n, 1), _input(n, 2)
    y = _op(b, "Max", x, lo) if lo is not None else x
    return _op(b, "Min", y, hi) if hi is not None else _op(b, "Identity", y)


def _layer_normalization(b, n):
    """Y, Mean and InvStdDev written out in float64 ops (layer_norm's `onnx` form: no float64 kernel,
    and ONNX would keep the statistics in float32)."""
    x = n.inputs[0]
    axes = list(range(n.attrs.get("axis", -1) % x.rank, x.rank))
    return P.layer_norm_ops(b, x, axes, n.attrs.get("epsilon", 1e-5), n.inputs[1], _input(n, 2))


def _input(n: Node, i: int):
    return n.inputs[i] if len(n.inputs) > i else None


# op -> (whether this node can be rewritten, the rewrite)
REWRITES = {
    "Clip": (lambda n: n.inputs[0].producer is not None and n.inputs[0].producer.op == "Relu", _clip),
    "Softplus": (None, _softplus), "Elu": (None, _elu), "LeakyRelu": (None, _leaky_relu), "Erf": (None, _erf),
    "Gelu": (None, _gelu),
    "Tan": (None, _tan), "Atan": (None, _atan),
    "Conv": (lambda n: n.attrs.get("auto_pad", "NOTSET") == "NOTSET", _conv),
    "ConvTranspose": (lambda n: n.inputs[0].rank == 4 and n.attrs.get("auto_pad", "NOTSET") == "NOTSET",
                      _conv_transpose),
    "AveragePool": (lambda n: not n.attrs.get("ceil_mode", 0) and n.attrs.get("auto_pad", "NOTSET") == "NOTSET",
                    _average_pool),
    "GlobalAveragePool": (None, _global_average_pool),
    "Resize": (_resizable, _resize),
    "OneHot": (lambda n: n.attrs.get("axis", -1) == -1 and n.inputs[1].const is not None, _one_hot),
    "LayerNormalization": (None, _layer_normalization),
}


def rewrite_float64_ops(graph: Graph) -> bool:
    """Replace each float64 node of REWRITES' ops (here and in Loop bodies); each of its outputs keeps
    its name and Value (an Identity of the replacement's), so consumers and graph outputs stay wired."""
    changed = False
    nodes = []
    for n in graph.nodes:
        for sub in (a for a in n.attrs.values() if isinstance(a, Graph)):
            changed |= rewrite_float64_ops(sub)
        entry = REWRITES.get(n.op)
        if entry is None or n.outputs[0].dtype != "f64" or (entry[0] is not None and not entry[0](n)):
            nodes.append(n)
            continue
        scratch = Graph(f"{graph.name}/{n.name}")
        b = Builder(scratch, itertools.count(), n.span, scope=f"{n.name}/f64")
        replacement = entry[1](b, n)
        replacement = replacement if isinstance(replacement, tuple) else (replacement,)
        keeps = []
        for k, (new, out) in enumerate(zip(replacement, n.outputs)):
            keeps.append(Node("Identity", [new], [out], {}, n.span, name=f"{n.name}/f64/Identity" + (f"_{k}" if k else "")))
            out.producer = keeps[-1]
        nodes.extend(scratch.nodes + keeps)
        graph.exact.update(scratch.exact)
        changed = True
    graph.nodes = nodes
    return changed
