"""Builder-level patterns shared by the lowering and autodiff.

Shape vectors, zero fills and pad/crop helpers, nearest upsampling, and 2-D convolution written
without Conv/ConvTranspose (strided Slices + MatMul) for runtimes that lack those kernels, and
ConvTranspose as GEMM + 0/1 col2im MatMuls where that is faster in onnxruntime.
Spatial code takes NCHW values with static H and W; the batch dim may be symbolic, so reshape
targets copy it with 0 or from Shape. The last section works at any H and W (window slices).
"""
from __future__ import annotations

import itertools

import numpy as np

from ..diagnostics import DslShapeError
from .core import DTYPES, Value
from .builder import Builder
from .formulations import CHOICES, choose

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)  # Slice end meaning "past the start" for a negative step


# ------------------------------------------------------------------ shapes and fills
def shape_of(b: Builder, v: Value) -> Value:
    """v's shape as a 1-D i64 value: a constant when static, else Shape(v)."""
    if v.type.static():
        return b.ints(list(v.shape))
    return b.op("Shape", [v])


def shape_with(b: Builder, v: Value, new_dims: dict[int, int]) -> Value:
    """v's shape with the dims at some axes replaced; symbolic dims are read with Shape at run time."""
    new_dims = {a % v.rank: d for a, d in new_dims.items()}
    dims = [new_dims.get(a, d) for a, d in enumerate(v.shape)]
    if all(isinstance(d, int) for d in dims):
        return b.ints(dims)
    shape = b.op("Shape", [v])
    pieces, run_start = [], None
    for a in range(v.rank + 1):
        kept = a < v.rank and a not in new_dims
        if kept and run_start is None:
            run_start = a
        if not kept and run_start is not None:
            pieces.append(b.op("Slice", [shape, b.ints([run_start]), b.ints([a])]))
            run_start = None
        if a in new_dims:
            pieces.append(b.ints([new_dims[a]]))
    return pieces[0] if len(pieces) == 1 else b.op("Concat", pieces, {"axis": 0})


def full_like(b: Builder, v: Value, fill: float) -> Value:
    """A tensor of v's shape and dtype filled with `fill` (no big constant in the file)."""
    return b.op("ConstantOfShape", [shape_of(b, v)], {"value": np.full(1, fill, DTYPES[v.dtype])})


def zeros_like(b: Builder, v: Value) -> Value:
    return full_like(b, v, 0)


def scalar(b: Builder, value: float, dtype: str) -> Value:
    return b.const(np.asarray(value), dtype)


def transpose_last_two(b: Builder, v: Value) -> Value:
    """v with its last two axes swapped (a batch of matrices transposed)."""
    perm = list(range(v.rank))
    perm[-2:] = perm[-1], perm[-2]
    return b.op("Transpose", [v], {"perm": perm})


def slice_axes(b: Builder, x: Value, starts, ends, axes, steps=None) -> Value:
    ins = [x, b.ints(starts), b.ints(ends), b.ints(axes)]
    return b.op("Slice", ins + ([b.ints(steps)] if steps else []))


def pad_or_crop(b: Builder, x: Value, widths: dict[int, tuple[int, int]],
                value: Value | None = None) -> Value:
    """Add (positive) or remove (negative) `before, after` elements on each given axis."""
    widths = {a % x.rank: w for a, w in widths.items() if w != (0, 0)}
    crops = {a: (max(-lo, 0), max(-hi, 0)) for a, (lo, hi) in widths.items() if lo < 0 or hi < 0}
    if crops:
        axes = sorted(crops)
        x = slice_axes(b, x, [crops[a][0] for a in axes],
                       [-crops[a][1] if crops[a][1] else INT64_MAX for a in axes], axes)
    pads = [0] * (2 * x.rank)
    for a, (lo, hi) in widths.items():
        pads[a], pads[a + x.rank] = max(lo, 0), max(hi, 0)
    if any(pads):
        x = b.op("Pad", [x, b.ints(pads)] + ([value] if value is not None else []))
    return x


def zero_insert(b: Builder, x: Value, axis: int, step: int) -> Value:
    """Follow each element along `axis` by step-1 zeros (length n -> n*step): a strided scatter."""
    if step == 1:
        return x
    axis %= x.rank
    n = x.shape[axis]
    u = b.op("Unsqueeze", [x, b.ints([axis + 1])])
    pads = [0] * (2 * u.rank)
    pads[u.rank + axis + 1] = step - 1
    u = b.op("Pad", [u, b.ints(pads)])
    return b.op("Reshape", [u, shape_with(b, x, {axis: n * step if isinstance(n, int) else -1})])


def _static_hw(b: Builder, x: Value, what: str) -> tuple[int, int]:
    h, w = x.shape[2], x.shape[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise DslShapeError(f"{what} needs static spatial dims, got {x.type}", b.span)
    return h, w


def upsample_nearest(b: Builder, x: Value, sh: int, sw: int) -> Value:
    """[N, C, H, W] -> [N, C, H*sh, W*sw], each pixel repeated (no Resize op)."""
    h, w = x.shape[2], x.shape[3]
    x6 = b.op("Unsqueeze", [x, b.ints([3, 5])])  # [N, C, H, 1, W, 1]
    x6 = b.op("Expand", [x6, b.ints([1, 1, 1, sh, 1, sw])])
    if isinstance(h, int) and isinstance(w, int):
        return b.op("Reshape", [x6, b.ints([0, 0, h * sh, w * sw])])
    # symbolic H or W: the target's last two sizes from Shape(x) times the factors (dims H*2, W*2)
    shape = b.op("Shape", [x])
    hw = b.op("Mul", [b.op("Slice", [shape, b.ints([2]), b.ints([4])]), b.ints([sh, sw])])
    return b.op("Reshape", [x6, b.op("Concat", [b.ints([0, 0]), hw], {"axis": 0})])


def linear_resize_matrix(n: int, s: int) -> np.ndarray:
    """[n*s, n]: linear interpolation from n samples to n*s with ONNX Resize's half_pixel
    coordinates (torch's align_corners=False): output i reads source (i + 0.5) / s - 0.5, clamped
    to [0, n - 1]."""
    a = np.zeros((n * s, n))
    for i in range(n * s):
        src = min(max((i + 0.5) / s - 0.5, 0.0), n - 1)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n - 1)
        frac = src - i0
        a[i, i0] += 1 - frac
        a[i, i1] += frac
    return a


def upsample_bilinear(b: Builder, x: Value, sh: int, sw: int) -> Value:
    """[N, C, H, W] -> [N, C, H*sh, W*sw] by ONNX Resize (linear, half_pixel); its gradient rule
    applies the transposed interpolation matrices (linear_resize_matrix), or, for a symbolic H or W,
    three taps per output block."""
    roi = b.const(np.zeros(0), "f32")
    scales = b.const([1.0, 1.0, float(sh), float(sw)], "f32")
    return b.op("Resize", [x, roi, scales], {"mode": "linear", "coordinate_transformation_mode": "half_pixel"})


# ------------------------------------------------------------------ convolution without Conv
def conv_out_size(size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    return (size + p0 + p1 - (k - 1) * d - 1) // s + 1


def _batch_shape(b: Builder, x: Value, tail: list[int]) -> Value:
    """[N, *tail] with x's batch dim N, read at run time when symbolic."""
    if isinstance(x.shape[0], int):
        return b.ints([x.shape[0], *tail])
    n = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([1])])
    return b.op("Concat", [n, b.ints(tail)], {"axis": 0})


def _out_hw(x: Value, kernel, strides, pads, dilations) -> tuple[int, int]:
    return tuple(conv_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + 2])
                 for i in range(2))


def im2col_slices(b: Builder, x: Value, kernel, strides, pads, dilations) -> Value:
    """Patches of x [N, C, H, W] as [N, C*kh*kw, Ho*Wo], features ordered (c, kh, kw), from one
    strided Slice per kernel offset: no Conv op."""
    _static_hw(b, x, "conv2d")
    kh, kw = kernel
    ho, wo = _out_hw(x, kernel, strides, pads, dilations)
    xp = pad_or_crop(b, x, {2: (pads[0], pads[2]), 3: (pads[1], pads[3])})
    cols = []
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            s = slice_axes(b, xp, [r0, c0], [r0 + strides[0] * (ho - 1) + 1, c0 + strides[1] * (wo - 1) + 1],
                           [2, 3], strides)
            cols.append(b.op("Unsqueeze", [s, b.ints([2])]))
    patches = cols[0] if len(cols) == 1 else b.op("Concat", cols, {"axis": 2})  # [N, C, kh*kw, Ho, Wo]
    c = x.shape[1]
    return b.op("Reshape", [patches, b.ints([0, c * kh * kw if isinstance(c, int) else -1, ho * wo])])


def im2col_conv(b: Builder, x: Value, kernel, strides, pads, dilations) -> Value:
    """Same result as im2col_slices via one Conv with a one-hot kernel per offset on [N*C, 1, H, W]."""
    h, w = _static_hw(b, x, "conv2d")
    kh, kw = kernel
    ho, wo = _out_hw(x, kernel, strides, pads, dilations)
    x1 = b.op("Reshape", [x, b.ints([-1, 1, h, w])])
    eye = b.const(np.eye(kh * kw).reshape(kh * kw, 1, kh, kw), x.dtype)
    cols = b.op("Conv", [x1, eye], {"strides": list(strides), "pads": list(pads),
                                    "dilations": list(dilations)})  # [N*C, kh*kw, Ho, Wo]
    c = x.shape[1]
    return b.op("Reshape", [cols, _batch_shape(b, x, [c * kh * kw if isinstance(c, int) else -1, ho * wo])])


def conv2d_im2col(b: Builder, x: Value, w: Value, bias: Value | None, strides, pads, dilations,
                  group: int = 1) -> Value:
    """ONNX Conv as im2col_slices + MatMul: x [N, C, H, W], w [O, C/g, kh, kw] -> [N, O, Ho, Wo]."""
    if symbolic_spatial(x):
        return conv_windows(b, x, w, bias, strides, pads, dilations, group)
    o, cg, kh, kw = w.shape
    ho, wo = _out_hw(x, (kh, kw), strides, pads, dilations)
    cols = im2col_slices(b, x, (kh, kw), strides, pads, dilations)  # [N, C*k, L]
    k = cg * kh * kw
    if group == 1:
        y = b.op("MatMul", [b.op("Reshape", [w, b.ints([o, k])]), cols])  # [N, O, L]
    else:
        w3 = b.op("Reshape", [w, b.ints([group, o // group, k])])
        cols = b.op("Reshape", [cols, b.ints([0, group, k, ho * wo])])
        y = b.op("MatMul", [w3, cols])  # [N, g, O/g, L]
    y = b.op("Reshape", [y, b.ints([0, o, ho, wo])])
    if bias is not None:
        y = b.op("Add", [y, b.op("Reshape", [bias, b.ints([o, 1, 1])])])
    return y


def conv_transpose2d_im2col(b: Builder, x: Value, w: Value, bias: Value | None, strides, pads, dilations,
                            group: int = 1, output_padding=(0, 0)) -> Value:
    """ONNX ConvTranspose without Conv ops: insert stride-1 zeros between pixels, pad by
    d*(k-1)-p, then a stride-1 conv with the kernel flipped and its in/out channels swapped."""
    cin, cog, kh, kw = w.shape
    z = zero_insert(b, zero_insert(b, x, 2, strides[0]), 3, strides[1])  # [N, Cin, H*s, W*s]
    widths = {}
    for i, k in enumerate((kh, kw)):
        reach = dilations[i] * (k - 1)
        # the zero insertion left s-1 zeros after the last pixel: take them off the end padding
        widths[2 + i] = (reach - pads[i], reach - pads[i + 2] + output_padding[i] - (strides[i] - 1))
    z = pad_or_crop(b, z, widths)
    wt = b.op("Reshape", [w, b.ints([group, cin // group, cog, kh, kw])])
    wt = b.op("Transpose", [wt], {"perm": [0, 2, 1, 3, 4]})
    wt = b.op("Reshape", [wt, b.ints([group * cog, cin // group, kh, kw])])
    wt = slice_axes(b, wt, [-1, -1], [INT64_MIN, INT64_MIN], [2, 3], [-1, -1])
    return conv2d_im2col(b, z, wt, bias, (1, 1), (0, 0, 0, 0), dilations, group)


def transposed_conv_phases(kernel, strides, pads, dilations, out_hw) -> list[list[tuple[int, int]]] | None:
    """The kernel taps (a, c) grouped by the output phase (row % sh, column % sw) they land on in a
    transposed convolution (phases in row-major order); None when the phases do not tile the
    output evenly or some phase gets no tap."""
    if out_hw[0] % strides[0] or out_hw[1] % strides[1]:
        return None
    groups = [[] for _ in range(strides[0] * strides[1])]
    for a in range(kernel[0]):
        for c in range(kernel[1]):
            rh, rw = (a * dilations[0] - pads[0]) % strides[0], (c * dilations[1] - pads[1]) % strides[1]
            groups[rh * strides[1] + rw].append((a, c))
    return groups if all(groups) else None


def col2im_matrix(h: int, w: int, taps, phase, strides, pads, dilations, out_hw) -> np.ndarray:
    """[pixels of the phase, H*W*len(taps)] 0/1: which output pixel of `phase` (every stride-th row
    and column from (rh, rw)) each (input pixel, tap) product of a transposed convolution lands on
    (columns ordered h, w, tap); products cropped by the pads land nowhere."""
    ho, wo = out_hw[0] // strides[0], out_hw[1] // strides[1]
    m = np.zeros((ho * wo, h * w * len(taps)))
    for i in range(h):
        for j in range(w):
            for t, (a, c) in enumerate(taps):
                r = i * strides[0] + a * dilations[0] - pads[0]
                q = j * strides[1] + c * dilations[1] - pads[1]
                if 0 <= r < out_hw[0] and 0 <= q < out_hw[1]:
                    m[(r // strides[0]) * wo + q // strides[1], (i * w + j) * len(taps) + t] = 1
    return m


def conv_transpose_as_matmuls(x: Value, w_shape, strides, pads, dilations, out_hw, group: int = 1) -> bool:
    """Whether conv_transpose2d_matmuls beats onnxruntime's ConvTranspose (which runs a GEMM per
    image with only H*W columns, then a single-threaded col2im). Measured on the ACGAN generator
    (bench/README.md): faster for few output pixels per phase against many input channels (49
    against 384 and 192 channels; the 28x28 output layer, 196 against 96, stays a ConvTranspose).
    The same holds for the input gradients of convolutions (the ACGAN discriminator's conv4: 49
    pixels against 256 channels, 23 vs 29 ms; its conv3, 49 against 128 at stride 2, 15 vs 11 ms).
    Rule: the 0/1 col2im product costs (output pixels per phase) multiply-adds per product where
    the GEMM costs Cin; take it while that is at most Cin / 3 and the 0/1 matrices stay small."""
    cin, _, kh, kw = w_shape
    h, wd = x.shape[2], x.shape[3]
    if group != 1 or not all(isinstance(d, int) for d in (cin, h, wd)):
        return False
    phases = transposed_conv_phases((kh, kw), strides, pads, dilations, out_hw)
    if phases is None:
        return False
    pixels = out_hw[0] * out_hw[1] // len(phases)
    return 3 * pixels <= cin and pixels * h * wd * kh * kw <= 1 << 20


def transposed_conv_form(point: str, x: Value, w_shape, strides, pads, dilations, out_hw, group: int = 1) -> str:
    """`matmuls` where conv_transpose2d_matmuls is chosen for this ConvTranspose (by the rule above or
    forced, where its preconditions hold), else the point's native form (formulations.CHOICES)."""
    return choose(point, *_transposed_conv_options(point, x, w_shape, strides, pads, dilations, out_hw, group))


def _transposed_conv_options(point: str, x: Value, w_shape, strides, pads, dilations, out_hw, group: int):
    """(the rule's option, the options that apply) of a point whose forms are ConvTranspose and its MatMuls."""
    native, matmuls = CHOICES[point][:2]
    possible = (group == 1 and all(isinstance(d, int) for d in (w_shape[0], *x.shape[2:4], *out_hw))
                and transposed_conv_phases(tuple(w_shape[2:]), strides, pads, dilations, out_hw) is not None)
    rule = matmuls if possible and conv_transpose_as_matmuls(x, w_shape, strides, pads, dilations, out_hw, group) else native
    return rule, (native, matmuls) if possible else (native,)


def conv_input_grad_form(dy: Value, w_shape, strides, pads, dilations, x_hw, group: int = 1) -> str:
    """How dx of a 2-D Conv is written: as its ConvTranspose (transposed_conv_form's forms), or at
    stride 1 as `flipped_conv` (conv_input_grad_flipped), which no rule picks: on one CPU it won one
    layer (1.1x) and lost others (0.8x) (bench/formulations.py), so `dslc tune` decides it per layer."""
    rule, applicable = _transposed_conv_options("conv_input_grad", dy, w_shape, strides, pads, dilations, x_hw, group)
    if flipped_conv_applies(w_shape, strides, pads, dilations):
        applicable += ("flipped_conv",)
    return choose("conv_input_grad", rule, applicable)


def flipped_conv_pads(w_shape, pads, dilations) -> list[int]:
    """The pads that make Conv(dy, flipped W) as long as x: d*(k-1) - p at each end."""
    n = len(w_shape) - 2
    full = [d * (k - 1) for k, d in zip(w_shape[2:], dilations)]
    return [f - p for f, p in zip(full + full, pads[:n] + pads[n:])]


def flipped_conv_applies(w_shape, strides, pads, dilations) -> bool:
    return all(s == 1 for s in strides) and all(q >= 0 for q in flipped_conv_pads(w_shape, pads, dilations))


def conv_input_grad_flipped(b: Builder, dy: Value, w: Value, pads, dilations, group: int = 1) -> Value:
    """dx of a stride-1 Conv(x, W) as Conv(dy, W'): W' is W with its kernels flipped and, per group,
    its input and output channels swapped; padded by d*(k-1) - p at each end. The same sums as
    ConvTranspose(dy, W)."""
    o, cg, *kernel = w.shape
    n = len(kernel)
    spatial = list(range(2, 2 + n))
    if group == 1:
        wt = b.op("Transpose", [w], {"perm": [1, 0, *spatial]})
    else:
        wt = b.op("Reshape", [w, b.ints([group, o // group, cg, *kernel])])
        wt = b.op("Transpose", [wt], {"perm": [0, 2, 1, *range(3, 3 + n)]})
        wt = b.op("Reshape", [wt, b.ints([group * cg, o // group, *kernel])])
    wt = slice_axes(b, wt, [-1] * n, [INT64_MIN] * n, spatial, [-1] * n)
    return b.op("Conv", [dy, wt], {"kernel_shape": kernel, "pads": flipped_conv_pads(w.shape, pads, dilations),
                                   "dilations": list(dilations), "group": group})


def conv_transpose2d_matmuls(b: Builder, x: Value, w: Value, bias: Value | None, strides, pads, dilations,
                             out_hw) -> Value:
    """ONNX ConvTranspose (group 1) as MatMuls: every input pixel times every kernel tap in one GEMM
    over the whole batch ([N*H*W, Cin] x [Cin, taps*Cout], one GEMM per output phase with the taps
    that land on it), then per phase the overlapping products summed into its output pixels by a
    constant 0/1 matrix (col2im_matrix), and the phases interleaved by two Transposes. Its autodiff keeps the
    batch folded: the weight gradient is one GEMM contracting over N*H*W."""
    cin, cout, kh, kw = w.shape
    h, wd = x.shape[2], x.shape[3]
    sh, sw = strides
    phases = transposed_conv_phases((kh, kw), strides, pads, dilations, out_hw)
    rows = b.op("Reshape", [b.op("Transpose", [x], {"perm": [0, 2, 3, 1]}), b.ints([-1, cin])])  # [N*H*W, Cin]
    w3 = b.op("Reshape", [b.op("Transpose", [w], {"perm": [0, 2, 3, 1]}), b.ints([cin, kh * kw, cout])])
    ys = []
    for phase, taps in enumerate(phases):  # one GEMM per phase: no Split / Concat copies of the products
        wp = w3 if len(taps) == kh * kw else b.op("Gather", [w3, b.ints([a * kw + c for a, c in taps])], {"axis": 1})
        part = b.op("MatMul", [rows, b.op("Reshape", [wp, b.ints([cin, len(taps) * cout])])])  # [N*H*W, taps*Cout]
        part = b.op("Reshape", [part, _batch_shape(b, x, [h * wd * len(taps), cout])])
        scatter = b.const(col2im_matrix(h, wd, taps, phase, strides, pads, dilations, out_hw), x.dtype)
        ys.append(b.op("MatMul", [scatter, part]))  # [N, pixels of the phase, Cout]
    ho, wo = out_hw[0] // sh, out_hw[1] // sw
    if len(ys) == 1:
        y = b.op("Reshape", [b.op("Transpose", [ys[0]], {"perm": [0, 2, 1]}), b.ints([0, cout, ho, wo])])
    else:
        y = b.op("Concat", [b.op("Unsqueeze", [v, b.ints([1])]) for v in ys], {"axis": 1})  # [N, phases, pixels, Cout]
        y = b.op("Reshape", [y, _batch_shape(b, x, [sh, sw, ho, wo, cout])])
        # Interleave the phases with Cout kept innermost (rows of Cout floats move; 4.3 vs 20 ms for
        # one 6-D Transpose straight to [N, Cout, ...] on the ACGAN's up2), then one batched 2-D Transpose.
        y = b.op("Transpose", [y], {"perm": [0, 3, 1, 4, 2, 5]})  # [N, ho, sh, wo, sw, Cout]
        y = b.op("Reshape", [y, _batch_shape(b, x, [out_hw[0] * out_hw[1], cout])])
        y = b.op("Reshape", [b.op("Transpose", [y], {"perm": [0, 2, 1]}), b.ints([0, cout, out_hw[0], out_hw[1]])])
    if bias is not None:
        y = b.op("Add", [y, b.op("Reshape", [bias, b.ints([cout, 1, 1])])])
    return y


def conv_weight_grad(b: Builder, x: Value, dy: Value, w_shape, strides, pads, dilations,
                     group: int = 1) -> Value:
    """dL/dW of Conv(x, W) given dL/dy: patches of x times dy, summed over the batch and positions.

    Two formulations, chosen by the number of output positions L (`bench/formulations.py` times
    them per layer): with many (L > 64) a per-sample MatMul of dy [O, L] and x's patches [L, k] is
    efficient, then a ReduceSum over the batch; with few, those per-sample products are thin and the
    sum would hold N x [O, k] (1.5 GB for the ACGAN generator's first layer at batch 200), so the
    patches are built channels-last, [N*L, k], and one MatMul contracts over batch and positions.
    `patches_first` is the per-sample product the other way round (weight_grad_per_sample)."""
    length = dy.shape[2] * dy.shape[3]
    static = group == 1 and isinstance(length, int)
    rule = "channels_last" if static and length <= 64 else "per_sample"
    options = ("per_sample", "channels_last", "patches_first") if static else ("per_sample", "patches_first")
    form = choose("conv_weight_grad", rule, options)
    if form == "channels_last":
        return weight_grad_channels_last(b, x, dy, w_shape, strides, pads, dilations)
    return weight_grad_per_sample(b, x, dy, w_shape, strides, pads, dilations, group, form == "patches_first")


def weight_grad_channels_last(b: Builder, x: Value, dy: Value, w_shape, strides, pads, dilations) -> Value:
    """conv_weight_grad (group 1) as x's channels-last patches [N*L, k] and one MatMul with dy^T [O, N*L]."""
    o, cg, kh, kw = w_shape
    cols = patches_channels_last(b, x, cg, (kh, kw), strides, pads, dilations)  # [N*L, kh*kw*C]
    dy_t = b.op("Reshape", [b.op("Transpose", [dy], {"perm": [1, 0, 2, 3]}), b.ints([o, -1])])  # [O, N*L]
    dw = b.op("Reshape", [b.op("MatMul", [dy_t, cols]), b.ints([o, kh, kw, cg])])
    return b.op("Transpose", [dw], {"perm": [0, 3, 1, 2]})


def weight_grad_per_sample(b: Builder, x: Value, dy: Value, w_shape, strides, pads, dilations,
                           group: int = 1, patches_first: bool = False) -> Value:
    """conv_weight_grad as x's patches by im2col_conv, a MatMul per sample, a ReduceSum over the batch.
    With `patches_first` the product is patches [k, L] times dy^T [L, O], then one Transpose of the
    small sum: onnxruntime ran that 1.04-1.3x faster than dy [O, L] times patches^T on all six layers
    of bench/formulations.py in two runs, and on two of them in a third (one 2-core Xeon). No rule
    picks it: it changes float32 round-off, and
    30 Adam steps of the convnet then parted by 5e-3 between onnxruntime and onnxruntime-web
    (tests/test_web.py, 9e-6 with the static form), so `dslc tune` decides it on the user's machine."""
    o, cg, kh, kw = w_shape
    length = dy.shape[2] * dy.shape[3]
    cols = im2col_conv(b, x, (kh, kw), strides, pads, dilations)  # [N, C*k, L]
    k = cg * kh * kw
    if group == 1:
        dy_g = b.op("Reshape", [dy, b.ints([0, o, length])])
    else:
        dy_g = b.op("Reshape", [dy, b.ints([0, group, o // group, length])])
        cols = b.op("Reshape", [cols, b.ints([0, group, k, length])])
    if patches_first:
        per_sample = b.op("MatMul", [cols, transpose_last_two(b, dy_g)])  # [N, (g,) k, O/g]
        dw = transpose_last_two(b, b.op("ReduceSum", [per_sample, b.ints([0])], {"keepdims": 0}))
    else:
        per_sample = b.op("MatMul", [dy_g, transpose_last_two(b, cols)])  # [N, (g,) O/g, k]
        dw = b.op("ReduceSum", [per_sample, b.ints([0])], {"keepdims": 0})
    return b.op("Reshape", [dw, b.ints(list(w_shape))])


def patches_channels_last(b: Builder, x: Value, channels: int, kernel, strides, pads, dilations) -> Value:
    """Patches of x [N, C, H, W] (C = channels) as [N*Ho*Wo, kh*kw*C], features ordered (kh, kw, c): x goes
    channels-last once (the small tensor), then one strided Slice per kernel offset, concatenated
    on the channel axis, is already the row-major patch matrix (no transpose of the big one)."""
    _static_hw(b, x, "conv2d")
    ho, wo = _out_hw(x, kernel, strides, pads, dilations)
    xt = pad_or_crop(b, b.op("Transpose", [x], {"perm": [0, 2, 3, 1]}), {1: (pads[0], pads[2]), 2: (pads[1], pads[3])})
    taps = [slice_axes(b, xt, starts, ends, [1, 2], strides)
            for starts, ends in offset_slices(kernel, strides, dilations, (ho, wo))]  # each [N, Ho, Wo, C]
    cols = taps[0] if len(taps) == 1 else b.op("Concat", taps, {"axis": 3})
    return b.op("Reshape", [cols, b.ints([-1, len(taps) * channels])])


# ------------------------------------------------------------------ convolution over any number of spatial axes
def offset_slices(kernel, strides, dilations, out):
    """(starts, ends) of the strided Slice that each kernel offset reads, in row-major window order,
    for `out` (static) output positions per axis."""
    for offset in itertools.product(*[range(k) for k in kernel]):
        starts = [o * d for o, d in zip(offset, dilations)]
        yield starts, [st + s * (n - 1) + 1 for st, s, n in zip(starts, strides, out)]


def window_slices(b: Builder, xp: Value, kernel, strides, dilations, out) -> list[Value]:
    """One strided Slice of the padded xp [N, C, *spatial] per kernel offset, in row-major window
    order, each [N, C, *out]: the taps of every output position."""
    axes = list(range(2, 2 + len(kernel)))
    return [slice_axes(b, xp, starts, ends, axes, strides)
            for starts, ends in offset_slices(kernel, strides, dilations, out)]


def im2col_nd(b: Builder, x: Value, kernel, strides, pads, dilations) -> Value:
    """Patches of x [N, C, *spatial] as [N, C*K, L] (K taps per window, L output positions),
    features ordered (c, taps in row-major order); C must be static."""
    n = len(kernel)
    if not all(isinstance(d, int) for d in x.shape[1:]):
        raise DslShapeError(f"convolution needs static channels and spatial dims, got {x.type}", b.span)
    out = [conv_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n]) for i in range(n)]
    xp = pad_or_crop(b, x, {2 + i: (pads[i], pads[i + n]) for i in range(n)})
    taps = [b.op("Unsqueeze", [t, b.ints([2])]) for t in window_slices(b, xp, kernel, strides, dilations, out)]
    patches = taps[0] if len(taps) == 1 else b.op("Concat", taps, {"axis": 2})  # [N, C, K, *out]
    return b.op("Reshape", [patches, b.ints([0, x.shape[1] * len(taps), int(np.prod(out))])])


def conv_nd_im2col(b: Builder, x: Value, w: Value, bias: Value | None, strides, pads, dilations,
                   group: int = 1) -> Value:
    """ONNX Conv on [N, C, *spatial] as im2col_nd + MatMul (no Conv op): w [O, C/g, *kernel]."""
    if symbolic_spatial(x):
        return conv_windows(b, x, w, bias, strides, pads, dilations, group)
    o, cg, *kernel = w.shape
    n = len(kernel)
    out = [conv_out_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n]) for i in range(n)]
    cols = im2col_nd(b, x, kernel, strides, pads, dilations)  # [N, C*K, L]
    k = cg * int(np.prod(kernel))
    if group == 1:
        y = b.op("MatMul", [b.op("Reshape", [w, b.ints([o, k])]), cols])  # [N, O, L]
    else:
        w3 = b.op("Reshape", [w, b.ints([group, o // group, k])])
        y = b.op("MatMul", [w3, b.op("Reshape", [cols, b.ints([0, group, k, -1])])])  # [N, g, O/g, L]
    y = b.op("Reshape", [y, b.ints([0, o, *out])])
    if bias is not None:
        y = b.op("Add", [y, b.op("Reshape", [bias, b.ints([o] + [1] * n)])])
    return y


# ------------------------------------------------------------------ windows on symbolic spatial dims
# An H, W (L, D) known only at run time: each kernel offset reads a strided Slice of the padded
# input whose end counts from the axis' end, so it has the output's length at any size (and the
# Slice rule names that length as the conv/pool shape rule does).
def tail_window_slices(kernel, strides, dilations):
    """(starts, ends) per kernel offset in row-major window order; `end` is minus the reach left
    after the tap, so the slice holds ceil((padded - (k-1)*d) / s) elements: the output's length."""
    for offset in itertools.product(*[range(k) for k in kernel]):
        starts = [o * d for o, d in zip(offset, dilations)]
        yield starts, [st - (k - 1) * d or INT64_MAX for st, k, d in zip(starts, kernel, dilations)]


def symbolic_spatial(x: Value) -> bool:
    return any(not isinstance(d, int) for d in x.shape[2:])


def pad_spatial(b: Builder, x: Value, pads, value: Value | None = None) -> Value:
    n = x.rank - 2
    return pad_or_crop(b, x, {2 + i: (pads[i], pads[i + n]) for i in range(n)}, value)


def conv_windows(b: Builder, x: Value, w: Value, bias: Value | None, strides, pads, dilations,
                 group: int = 1) -> Value:
    """ONNX Conv on [N, C, *spatial] of any (symbolic) size without a Conv op: per kernel offset,
    that tap of W times the offset's window slice, summed."""
    o, cg, *kernel = w.shape
    axes = list(range(2, x.rank))
    xp = pad_spatial(b, x, pads)
    w_taps = b.op("Transpose", [b.op("Reshape", [w, b.ints([group, o // group, cg, -1])])],
                  {"perm": [3, 0, 1, 2]})  # [K, g, O/g, C/g]
    y, like = None, None
    for t, (starts, ends) in enumerate(tail_window_slices(kernel, strides, dilations)):
        like = slice_axes(b, xp, starts, ends, axes, strides)  # [N, C, *out]
        tap = b.op("Reshape", [like, b.ints([0, group, cg, -1])])  # [N, g, C/g, L]
        part = b.op("MatMul", [b.op("Gather", [w_taps, b.ints(t)], {"axis": 0}), tap])  # [N, g, O/g, L]
        y = part if y is None else b.op("Add", [y, part])
    y = b.op("Reshape", [y, shape_with(b, like, {1: o})])
    if bias is not None:
        y = b.op("Add", [y, b.op("Reshape", [bias, b.ints([o] + [1] * len(kernel))])])
    return y


def average_pool_windows(b: Builder, x: Value, kernel, strides, pads, dilations, include_pad: bool) -> Value:
    """AveragePool of any (symbolic) size: the window sums of the zero-padded input over the taps
    counted, found by the same sums over a padded map of ones unless the padding counts."""
    total = _window_sums(b, pad_spatial(b, x, pads), kernel, strides, dilations)
    if include_pad or not any(pads):
        return b.op("Mul", [total, scalar(b, 1.0 / float(np.prod(kernel)), x.dtype)])
    return b.op("Div", [total, window_counts(b, x, kernel, strides, pads, dilations)])


def window_counts(b: Builder, x: Value, kernel, strides, pads, dilations) -> Value:
    """[1, 1, *out]: how many taps of each window fall inside x (not in the padding), at run time."""
    ones = pad_spatial(b, full_like(b, slice_axes(b, x, [0, 0], [1, 1], [0, 1]), 1.0), pads)
    return _window_sums(b, ones, kernel, strides, dilations)


def _window_sums(b: Builder, xp: Value, kernel, strides, dilations) -> Value:
    """The sum over each window's taps of the padded xp, at any size."""
    axes, total = list(range(2, xp.rank)), None
    for starts, ends in tail_window_slices(kernel, strides, dilations):
        part = slice_axes(b, xp, starts, ends, axes, strides)
        total = part if total is None else b.op("Add", [total, part])
    return total


def bilinear_taps(s: int) -> np.ndarray:
    """[s, 3]: upsampling by s (linear, half_pixel), output q*s + r reads the edge-padded input xe
    (xe[j+1] = x[j]; xe[0] = x[0] and xe[n+1] = x[n-1] give half_pixel's clamping) at q, q+1, q+2
    with these weights."""
    k = np.zeros((s, 3))
    for r in range(s):
        t = (r + 0.5) / s - 0.5
        k[r] = [-t, 1 + t, 0] if t < 0 else [0, 1 - t, t]
    return k


def upsample_bilinear_windows(b: Builder, x: Value, sh: int, sw: int) -> Value:
    """Resize (linear, half_pixel) by sh, sw on [N, C, H, W] of any size without a Resize op: per
    axis, three shifted slices of the edge-padded input times bilinear_taps (one MatMul)."""
    size = b.op("Shape", [x])
    y = _bilinear_last_axis(b, x, slice_axes(b, size, [3], [4], [0]), sw)  # [N, C, H, W*sw]
    y = _bilinear_last_axis(b, b.op("Transpose", [y], {"perm": [0, 1, 3, 2]}), slice_axes(b, size, [2], [3], [0]), sh)
    return b.op("Transpose", [y], {"perm": [0, 1, 3, 2]})


def _bilinear_last_axis(b: Builder, x: Value, n: Value, s: int) -> Value:
    r = x.rank
    pads = [0] * (2 * r)
    pads[r - 1] = pads[2 * r - 1] = 1
    xe = b.op("Pad", [x, b.ints(pads)], {"mode": "edge"})
    taps = [b.op("Unsqueeze", [slice_axes(b, xe, [j], [j - 2 or INT64_MAX], [r - 1]), b.ints([r])]) for j in range(3)]
    windows = b.op("Concat", taps, {"axis": r})  # [..., n, 3]
    blocks = b.op("MatMul", [windows, b.const(bilinear_taps(s).T, x.dtype)])  # [..., n, s]
    head = slice_axes(b, b.op("Shape", [x]), [0], [r - 1], [0])
    return b.op("Reshape", [blocks, b.op("Concat", [head, b.op("Mul", [n, b.ints([s])])], {"axis": 0})])


# ------------------------------------------------------------------ sequence models (issue 23)
def matmul_weight_grad(a: Value, w: Value, dy: Value) -> str:
    """dW of MatMul(a [..., T, K], w [K, U]) (a dense layer over a sequence or any batch of rows):
    `batched` is the rule's plain form, a MatMul per leading index then the driver's ReduceSum over
    them; `flattened` folds the leading axes into the rows, one GEMM [K, rows] x [rows, U] (on 2 cores,
    the transformer's dense layers at [32, 64, 64]: see bench/README.md). The point exists only where
    both apply: a has the same leading axes as dy, and w is a matrix."""
    possible = (w.rank == 2 and a.rank >= 3 and a.rank == dy.rank and tuple(a.shape[:-1]) == tuple(dy.shape[:-1])
                and isinstance(a.shape[-1], int) and isinstance(dy.shape[-1], int))
    return choose("matmul_weight_grad", "flattened") if possible else "batched"


def weight_grad_flattened(b: Builder, a: Value, dy: Value) -> Value:
    """sum over the leading axes of a^T dy as one GEMM: [K, rows] x [rows, U] -> [K, U]."""
    rows_a = b.op("Reshape", [a, b.ints([-1, a.shape[-1]])])
    rows_dy = b.op("Reshape", [dy, b.ints([-1, dy.shape[-1]])])
    return b.op("MatMul", [b.op("Transpose", [rows_a], {"perm": [1, 0]}), rows_dy])


# ------------------------------------------------------------------ normalization
def layer_norm_ops(b: Builder, x: Value, axes: list[int], eps: float, scale: Value | None = None,
                   bias: Value | None = None) -> tuple[Value, Value, Value]:
    """ONNX LayerNormalization's Y, Mean and InvStdDev over `axes` in ops that have VJP rules and
    float64 kernels everywhere: (x - mean) * 1/sqrt(var + eps) with the biased variance, then
    * scale + bias where given (statistics kept as size 1). The one write-out of the DSL's layer_norm
    and group_norm, the importer's normalizations and the float64 pass's LayerNormalization."""
    ax = b.ints(axes)
    mean = b.op("ReduceMean", [x, ax], {"keepdims": 1})
    centered = b.op("Sub", [x, mean])
    var = b.op("ReduceMean", [b.op("Mul", [centered, centered]), ax], {"keepdims": 1})
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps, x.dtype)])])])
    y = b.op("Mul", [centered, inv])
    y = y if scale is None else b.op("Mul", [y, scale])
    return (y if bias is None else b.op("Add", [y, bias])), mean, inv
