"""Convolution gradient formulations on the seed models' layer shapes, timed side by side.

The per-shape rules in dslc/ir/patterns.py (conv_weight_grad, conv_transpose_as_matmuls) come from
these numbers, on one CPU; `dslc tune` (dslc/tuner/, bench/tune.py) measures the same choices per layer
inside the whole step on the user's machine. Each row builds the same gradient several ways as standalone graphs and times them
interleaved in onnxruntime (CPU, 2 threads, -NchwcTransformer as dslc's step graphs mostly run),
after checking every formulation against the first one (max |diff| / max |value| <= 1e-5).

    python bench/formulations.py               # 8 rounds x 3 calls
    python bench/formulations.py --rounds 16

Weight gradient dW of Conv(x, W) from dy:
  per-sample   im2col by a one-hot-kernel Conv, dy [O, L] times patches^T [L, k] per sample, ReduceSum
               over the batch (dslc, L > 64)
  patches-first  the same as patches [k, L] times dy^T [L, O], one Transpose of the sum
               (conv_weight_grad=patches_first: no rule picks it, `dslc tune` may)
  transposed   the same patches transposed to [N*L, k], one MatMul (dslc's earlier few-positions form)
  chan-last    x channels-last, one strided Slice per tap, Concat = [N*L, k], one MatMul (dslc, L <= 64)
Input gradient dx (a ConvTranspose of dy):
  convT        onnxruntime's ConvTranspose
  flip-conv    patterns.conv_input_grad_flipped: Conv of dy with the flipped, transposed kernel (stride 1;
               conv_input_grad=flipped_conv, which no rule picks)
  matmuls      patterns.conv_transpose2d_matmuls: one GEMM over the batch, 0/1 col2im MatMuls
torch: PyTorch's own kernel for the gradient (aten::convolution_backward, oneDNN), for scale; it is
checked against the first formulation like the others (--no-torch leaves it out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import interleaved_ms  # noqa: E402
from dslc.emit.onnx_emit import to_onnx  # noqa: E402
from dslc.ir import patterns as P  # noqa: E402
from dslc.ir.builder import Builder  # noqa: E402
from dslc.ir.core import Graph, TensorType  # noqa: E402

# layer: x [N, C, H, W], O output channels, kernel, stride, pad (same on all sides)
LAYERS = {
    "convnet conv2": ((64, 32, 14, 14), 64, 3, 1, 1),
    "node_convnet conv2": ((128, 32, 26, 26), 32, 3, 1, 0),
    "node_convnet conv3": ((128, 32, 12, 12), 64, 3, 1, 0),
    "node_convnet conv4": ((128, 64, 10, 10), 64, 3, 1, 0),
    "acgan D conv3": ((100, 64, 14, 14), 128, 3, 2, 1),
    "acgan D conv4": ((100, 128, 7, 7), 256, 3, 1, 1),
}


def _graph(inputs: dict, build) -> bytes:
    g = Graph("f")
    b = Builder(g)
    vals = {k: b.input(k, TensorType("f32", shape)) for k, shape in inputs.items()}
    g.outputs = [b.op("Identity", [build(b, **vals)])]
    return to_onnx(g).SerializeToString()


def weight_gradient(xs, o, k, s, p):
    n, c, h, w = xs
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    shapes = {"x": xs, "dy": (n, o, ho, wo)}
    win = ([s, s], [p] * 4, [1, 1])
    wshape = (o, c, k, k)

    def per_sample(b, x, dy):
        return P.weight_grad_per_sample(b, x, dy, wshape, *win)

    def transposed(b, x, dy):  # dslc's earlier few-positions form, kept here for comparison
        cols = P.im2col_conv(b, x, (k, k), *win)
        cols_t = b.op("Reshape", [b.op("Transpose", [cols], {"perm": [0, 2, 1]}), b.ints([-1, c * k * k])])
        dy_t = b.op("Reshape", [b.op("Transpose", [b.op("Reshape", [dy, b.ints([0, o, ho * wo])])], {"perm": [1, 0, 2]}),
                                b.ints([o, -1])])
        return b.op("Reshape", [b.op("MatMul", [dy_t, cols_t]), b.ints(list(wshape))])

    def chan_last(b, x, dy):
        return P.weight_grad_channels_last(b, x, dy, wshape, *win)

    def patches_first(b, x, dy):
        return P.weight_grad_per_sample(b, x, dy, wshape, *win, patches_first=True)

    forms = {"per-sample": per_sample, "patches-first": patches_first, "transposed": transposed, "chan-last": chan_last}
    pick = "chan-last" if ho * wo <= 64 else "per-sample"
    torch_dw = _torch_backward(xs, wshape, s, p, which=1)
    return shapes, {name: _graph(shapes, f) for name, f in forms.items()}, f"{pick} (L = {ho * wo})", torch_dw


def input_gradient(xs, o, k, s, p):
    n, c, h, wd = xs
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    shapes = {"dy": (n, o, ho, wo), "w": (o, c, k, k)}
    out_pad = [h - ((ho - 1) * s + k - 2 * p)] * 2

    def conv_t(b, dy, w):
        return b.op("ConvTranspose", [dy, w], {"strides": [s, s], "pads": [p] * 4, "output_padding": out_pad})

    def flip_conv(b, dy, w):
        return P.conv_input_grad_flipped(b, dy, w, [p] * 4, [1, 1])

    def matmuls(b, dy, w):
        return P.conv_transpose2d_matmuls(b, dy, w, None, [s, s], [p] * 4, [1, 1], (h, wd))

    forms = {"convT": conv_t, "matmuls": matmuls}
    if s == 1:
        forms["flip-conv"] = flip_conv
    rule = P.conv_transpose_as_matmuls(_probe(shapes["dy"]), (o, c, k, k), [s, s], [p] * 4, [1, 1], (h, wd))
    torch_dx = _torch_backward(xs, (o, c, k, k), s, p, which=0)
    return (shapes, {name: _graph(shapes, f) for name, f in forms.items()}, f"rule: {'matmuls' if rule else 'convT'}",
            torch_dx)


def _torch_backward(xs, wshape, s, p, which: int):
    """PyTorch's own kernel for the same gradient (aten::convolution_backward: oneDNN on CPU, 2
    threads): `which` 0 is dx from (dy, w), 1 is dW from (x, dy). A column for scale, not a form dslc
    could emit."""
    import torch

    torch.set_num_threads(2)
    mask = [which == 0, which == 1, False]

    def make(feeds):
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        x = t.get("x", torch.empty(xs))
        w = t.get("w", torch.empty(wshape))
        return lambda: torch.ops.aten.convolution_backward(t["dy"], x, w, None, [s, s], [p, p], [1, 1], False,
                                                           [0, 0], 1, mask)[which].numpy()
    return make


def _probe(shape):
    """A value of this shape, for asking a rule."""
    return Builder(Graph("probe")).input("x", TensorType("f32", shape))


def time_forms(shapes, graphs, rounds, calls, torch_make=None) -> dict[str, float]:
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 2, 1, 3
    sessions = {name: ort.InferenceSession(g, so, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=["NchwcTransformer"]) for name, g in graphs.items()}
    first = None
    for name, sess in sessions.items():
        out = sess.run(None, feeds)[0]
        first = out if first is None else first
        err = float(np.abs(out - first).max() / np.abs(first).max())
        if err > 1e-5:
            raise SystemExit(f"{name} differs from the first formulation by {err:.1e}")
    contenders = {name: lambda sess=sess: sess.run(None, feeds) for name, sess in sessions.items()}
    if torch_make is not None:
        contenders["torch"] = torch_make(feeds)
        err = float(np.abs(contenders["torch"]() - first).max() / np.abs(first).max())
        if err > 1e-5:
            raise SystemExit(f"PyTorch's kernel differs from the first formulation by {err:.1e}")
    return interleaved_ms(contenders, rounds, calls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="leave out PyTorch's own kernel (the `torch` column)")
    args = ap.parse_args(argv)
    for title, make in (("weight gradient", weight_gradient), ("input gradient", input_gradient)):
        print(f"\n{title} (median ms)\n")
        rows = []
        for layer, spec in LAYERS.items():
            shapes, graphs, note, torch_make = make(*spec)
            ms = time_forms(shapes, graphs, args.rounds, args.calls, None if args.no_torch else torch_make)
            rows.append((layer, note, ms))
        names = list(dict.fromkeys(n for _, _, ms in rows for n in ms))
        print("| layer | " + " | ".join(names) + " | dslc picks |")
        print("|---" * (len(names) + 2) + "|")
        for layer, note, ms in rows:
            print(f"| {layer} | " + " | ".join(f"{ms[n]:.2f}" if n in ms else "-" for n in names) + f" | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
