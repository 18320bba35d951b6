"""ONNX's LSTM and GRU nodes, unrolled over their (static) sequence into MatMul, Add, Slice, Sigmoid,
Tanh and Mul: ops with VJP rules, so an imported recurrent layer trains and differentiates again
like the rest.

ONNX's layout: X [T, B, I] (layout=1: [B, T, I]), W [D, gH, I], R [D, gH, H], B [D, 2gH] (input
then recurrent biases), g = 4 gates i, o, f, c for LSTM, 3 gates z, r, h for GRU; outputs
Y [T, D, B, H] and Y_h (and LSTM's Y_c) [D, B, H].
"""
from __future__ import annotations

import numpy as np

DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]
MAX_STEPS = 4096  # unrolled: each step is a dozen nodes


def lstm(cx, ins):
    return _recurrent(cx, ins, "LSTM")


def gru(cx, ins):
    return _recurrent(cx, ins, "GRU")


def _recurrent(cx, ins, kind: str):
    gates = 4 if kind == "LSTM" else 3
    ins = list(ins) + [None] * (8 - len(ins))
    x, w, r, bias, seq_lens, h0 = ins[:6]
    c0 = ins[6] if kind == "LSTM" else None
    a = cx.attrs
    hidden = a["hidden_size"]
    direction = a.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    layout = a.get("layout", 0)
    default = (DEFAULT_ACTIVATIONS if kind == "LSTM" else ["Sigmoid", "Tanh"]) * dirs
    if a.get("activations", default) != default:
        raise cx.fail(f"{kind} activations {a['activations']} are not supported (only the default ones)")
    if "clip" in a or a.get("input_forget", 0) or (kind == "LSTM" and ins[7] is not None):
        raise cx.fail(f"{kind} with clip, input_forget or peepholes is not supported")
    if seq_lens is not None:
        raise cx.fail(f"{kind} with sequence_lens is not supported", "export without packed sequences")
    # the exporters' zero initial states, as if left out (see _lstm_step)
    h0, c0 = (None if v is not None and _zeros(v) else v for v in (h0, c0))
    if layout:
        x = cx.op("Transpose", [x], perm=[1, 0, 2])
        h0 = cx.op("Transpose", [h0], perm=[1, 0, 2]) if h0 is not None else None
        c0 = cx.op("Transpose", [c0], perm=[1, 0, 2]) if c0 is not None else None
    steps = x.shape[0]
    if not isinstance(steps, int) or steps > MAX_STEPS:
        raise cx.fail(f"{kind} over {steps} steps: the sequence length must be static (at most {MAX_STEPS})",
                      "export with a fixed sequence length")

    def index(v, i):
        return cx.op("Gather", [v, cx.b.const(np.int64(i), "i64")], axis=0)

    def cut(v, k):  # gate k of [B, gH] (or of a bias [gH]): along the last axis
        return cx.op("Slice", [v, cx.ints([k * hidden]), cx.ints([(k + 1) * hidden]), cx.ints([-1])])

    ys, hs, cs = [], [], []
    for d in range(dirs):
        xw = cx.op("MatMul", [x, cx.op("Transpose", [index(w, d)], perm=[1, 0])])  # [T, B, gH]
        rb = None
        if bias is not None:
            bd = index(bias, d)
            wb = cx.op("Slice", [bd, cx.ints([0]), cx.ints([gates * hidden])])
            rb = cx.op("Slice", [bd, cx.ints([gates * hidden]), cx.ints([2 * gates * hidden])])
            xw = cx.op("Add", [xw, cx.op("Add", [wb, rb]) if kind == "LSTM" else wb])
        rt = cx.op("Transpose", [index(r, d)], perm=[1, 0])  # [H, gH]
        h = index(h0, d) if h0 is not None else None
        c = index(c0, d) if c0 is not None else None
        outs = [None] * steps
        backward = direction == "reverse" or d == 1
        for t in (reversed(range(steps)) if backward else range(steps)):
            if kind == "LSTM":
                h, c = _lstm_step(cx, index(xw, t), h, c, rt, cut)
            else:
                h = _gru_step(cx, index(xw, t), h, rt, rb, cut, hidden, a.get("linear_before_reset", 0))
            outs[t] = cx.op("Unsqueeze", [h, cx.ints([0])])
        ys.append(cx.op("Concat", outs, axis=0) if steps > 1 else outs[0])
        hs.append(cx.op("Unsqueeze", [h, cx.ints([0])]))
        cs.append(cx.op("Unsqueeze", [c, cx.ints([0])]) if kind == "LSTM" else None)
    y = cx.op("Concat", [cx.op("Unsqueeze", [v, cx.ints([1])]) for v in ys], axis=1) if dirs > 1 else \
        cx.op("Unsqueeze", [ys[0], cx.ints([1])])
    states = [hs] + ([cs] if kind == "LSTM" else [])
    finals = [cx.op("Concat", s, axis=0) if dirs > 1 else s[0] for s in states]
    if layout:
        y = cx.op("Transpose", [y], perm=[2, 0, 1, 3])
        finals = [cx.op("Transpose", [v], perm=[1, 0, 2]) for v in finals]
    return [y, *finals]


def _lstm_step(cx, xw_t, h, c, rt, cut):
    """i, o, f, c~ from x W^T + b and h R^T; c' = f c + i c~, h' = o tanh(c'). A state of None is the
    zero initial state: its terms (h R^T, f c) are exact zeros and are left out, as the DSL's own
    recurrences do (lower/sequence.py: less work; tract's declutter fails on a MatMul of zeros)."""
    g = xw_t if h is None else cx.op("Add", [xw_t, cx.op("MatMul", [h, rt])])
    i, o = cx.op("Sigmoid", [cut(g, 0)]), cx.op("Sigmoid", [cut(g, 1)])
    new = cx.op("Mul", [i, cx.op("Tanh", [cut(g, 3)])])
    c = new if c is None else cx.op("Add", [cx.op("Mul", [cx.op("Sigmoid", [cut(g, 2)]), c]), new])
    return cx.op("Mul", [o, cx.op("Tanh", [c])]), c


def _gru_step(cx, xw_t, h, rt, rb, cut, hidden: int, linear_before_reset: int):
    """z, r, h~ from x W^T + (b_W) and h R^T (+ b_R); h' = (1 - z) h~ + z h. A state of None is the
    zero initial state: h R^T and z h are exact zeros and are left out, as in _lstm_step."""
    if h is None:
        hr_b = rb  # h R^T = 0: the recurrent side is its bias alone
    else:
        hr = cx.op("MatMul", [h, rt])  # [B, 3H]
        hr_b = hr if rb is None else cx.op("Add", [hr, rb])

    def gate(k):
        return cut(xw_t, k) if hr_b is None else cx.op("Add", [cut(xw_t, k), cut(hr_b, k)])
    z, r = cx.op("Sigmoid", [gate(0)]), cx.op("Sigmoid", [gate(1)])
    if linear_before_reset:
        cand = None if hr_b is None else cx.op("Mul", [r, cut(hr_b, 2)])
    elif h is None:
        cand = None if rb is None else cut(rb, 2)  # (r h) R_h^T = 0
    else:
        r_h = cx.op("MatMul", [cx.op("Mul", [r, h]), cut_rows(cx, rt, hidden)])
        cand = r_h if rb is None else cx.op("Add", [r_h, cut(rb, 2)])
    cand = cx.op("Tanh", [cut(xw_t, 2) if cand is None else cx.op("Add", [cut(xw_t, 2), cand])])
    one = cx.b.const(np.asarray(1.0), xw_t.dtype)
    new = cx.op("Mul", [cx.op("Sub", [one, z]), cand])
    return new if h is None else cx.op("Add", [new, cx.op("Mul", [z, h])])


def cut_rows(cx, rt, hidden: int):
    """R_h^T: the last H columns of R^T [H, 3H]."""
    return cx.op("Slice", [rt, cx.ints([2 * hidden]), cx.ints([3 * hidden]), cx.ints([1])])  # (axis 1)


_ZERO_PRESERVING = {"Identity", "Expand", "Slice", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Gather", "Cast"}


def _zeros(v) -> bool:
    """Whether v is zeros whatever the feeds: a zero constant or a ConstantOfShape of 0, maybe
    expanded, sliced or reshaped (torch's exporters pass the zero initial state so). A weight never
    is (its gradient flows through the state)."""
    if v.const is not None:
        return not np.any(v.const)
    p = v.producer
    if p is not None and p.op == "ConstantOfShape":
        return not np.any(p.attrs.get("value", 0))
    return p is not None and p.op in _ZERO_PRESERVING and _zeros(p.inputs[0])
