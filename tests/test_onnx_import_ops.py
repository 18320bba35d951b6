"""The imported-ONNX-node sample table: each sample is a small ONNX graph (one node, or the few an
exporter writes for one layer) in float64, imported with `onnx(...)` and probed as tests/opinfo.py
probes built-ins:

    fn probe(<inputs>, cot, dir_k ...) {
        y = Net(<inputs>)
        g.. = grad(sum(y * cot), [<inputs>, Net.<weights>])              # first derivatives
        h.. = grad(sum(g0 * dir_0) + ..., [<inputs>, Net.<weights>])    # Hessian-vector products
    }

y, g and h are checked in onnxruntime against torch float64 autograd (create_graph=True), on
inputs away from kinks. It covers what the importer rewrites (DECOMPOSED in dslc/lower/onnx_ops.py:
Gemm, LayerNormalization, BatchNormalization, Trilu, IsNaN, Resize, LSTM, 1-D Conv, MaxPool's
ceil_mode, variadic ops, opset forms of Split/Reduce*/Squeeze) and the IR ops the exporters' files
reach through them. Expected values come from torch, never from dslc.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
F = torch.nn.functional

import dslc  # noqa: E402
from dslc.lower.onnx_decl import weight_name  # noqa: E402


@dataclass
class NodeSample:
    name: str
    nodes: list                     # helper.make_node(...) ...; the graph's output is `y`
    inputs: dict                    # graph input -> shape (float64, differentiated)
    torch_fn: Callable              # (inputs, weights) -> y, by the ONNX names
    weights: dict = field(default_factory=dict)   # float initializers -> shape (weights)
    consts: dict = field(default_factory=dict)    # other initializers -> array (constants)
    opset: int = 17
    frozen: tuple = ()              # weights that are not trained (batch-norm statistics)
    positive: tuple = ()            # inputs / weights sampled positive
    declared: dict = field(default_factory=dict)  # input -> declared dims (symbols)
    distinct: bool = False          # sample without near-ties (max pooling)
    rtol: float = 1e-9


# Float attributes are float32 in ONNX: the samples use values float32 holds exactly (0.75, 2**-16).
def N(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), name=f"{op.lower()}_node", **attrs)


def _i64(*v):
    return np.asarray(v, np.int64)


def _lstm_torch(x, w, r, b, hidden, reverse=False):
    """ONNX's LSTM equations (gates i, o, f, c; zero initial state), written in torch."""
    steps, batch = x.shape[0], x.shape[1]
    h = torch.zeros(batch, hidden, dtype=x.dtype)
    c = torch.zeros(batch, hidden, dtype=x.dtype)
    bias = b[:4 * hidden] + b[4 * hidden:]
    ys = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        g = x[t] @ w.T + h @ r.T + bias
        i, o, f, cc = g.split(hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cc)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys[t] = h
    return torch.stack(ys)


def _gru_torch(x, w, r, b, hidden, linear_before_reset):
    """ONNX's GRU equations (gates z, r, h; zero initial state), written in torch."""
    h = torch.zeros(x.shape[1], hidden, dtype=x.dtype)
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    wz, wr, wh = w.split(hidden)
    rz, rr, rh = r.split(hidden)
    bz, br, bh = wb.split(hidden)
    cz, cr, ch = rb.split(hidden)
    ys = []
    for t in range(x.shape[0]):
        z = torch.sigmoid(x[t] @ wz.T + h @ rz.T + bz + cz)
        rt = torch.sigmoid(x[t] @ wr.T + h @ rr.T + br + cr)
        if linear_before_reset:
            cand = torch.tanh(x[t] @ wh.T + rt * (h @ rh.T + ch) + bh)
        else:
            cand = torch.tanh(x[t] @ wh.T + (rt * h) @ rh.T + ch + bh)
        h = (1 - z) * cand + z * h
        ys.append(h)
    return torch.stack(ys)[:, None]


def _lstm_both(i, w):
    fwd = _lstm_torch(i["x"], w["W"][0], w["R"][0], w["B"][0], 3)
    bwd = _lstm_torch(i["x"], w["W"][1], w["R"][1], w["B"][1], 3, reverse=True)
    return torch.stack([fwd, bwd], 1)


SAMPLES = [
    NodeSample("gemm-trans-alpha-beta", [N("Gemm", ["a", "b", "c"], transA=1, transB=1, alpha=0.75, beta=1.25)],
               {"a": (4, 2)}, lambda i, w: 0.75 * (i["a"].T @ w["b"].T) + 1.25 * w["c"], {"b": (3, 4), "c": (3,)}),
    NodeSample("gemm-plain", [N("Gemm", ["a", "b"])], {"a": (2, 4)}, lambda i, w: i["a"] @ w["b"], {"b": (4, 3)}),
    NodeSample("layer_norm-last", [N("LayerNormalization", ["x", "s", "b"], epsilon=2**-16)], {"x": (2, 3, 4)},
               lambda i, w: F.layer_norm(i["x"], (4,), w["s"], w["b"], 2**-16), {"s": (4,), "b": (4,)}),
    NodeSample("layer_norm-axis1", [N("LayerNormalization", ["x", "s"], axis=1, epsilon=2**-10)], {"x": (2, 3, 4)},
               lambda i, w: F.layer_norm(i["x"], (3, 4), w["s"], None, 2**-10), {"s": (3, 4)}),
    NodeSample("batch_norm-inference", [N("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=2**-10)],
               {"x": (2, 3, 4, 4)},
               lambda i, w: F.batch_norm(i["x"], w["m"], w["v"], w["g"], w["b"], False, 0.0, 2**-10),
               {"g": (3,), "b": (3,), "m": (3,), "v": (3,)}, frozen=("m", "v"), positive=("v",)),
    NodeSample("trilu-upper-k1", [N("Trilu", ["x", "k"])], {"x": (3, 4)}, lambda i, w: torch.triu(i["x"], 1),
               consts={"k": _i64(1)}),
    NodeSample("trilu-lower-symbolic", [N("Trilu", ["x"], upper=0)], {"x": (4, 3)}, lambda i, w: torch.tril(i["x"]),
               declared={"x": ("R", "C")}),
    NodeSample("isnan-where", [N("IsNaN", ["x"], ["nan"]), N("Where", ["nan", "zero", "x"])], {"x": (2, 3)},
               lambda i, w: i["x"] * 1.0, consts={"zero": np.zeros((), np.float64)}),
    NodeSample("resize-nearest-asymmetric", [N("Resize", ["x", "", "s"], mode="nearest",
                                               coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
               {"x": (1, 2, 3, 3)}, lambda i, w: F.interpolate(i["x"], scale_factor=2, mode="nearest"),
               consts={"s": np.asarray([1, 1, 2, 2], np.float32)}),
    NodeSample("resize-nearest-sizes-symbolic", [N("Shape", ["x"], ["shp"]), N("Mul", ["shp", "two"], ["size"]),
                                                 N("Div", ["size", "one_two"], ["sizes"]),
                                                 N("Resize", ["x", "", "", "sizes"], mode="nearest")],
               {"x": (2, 2, 3, 2)}, lambda i, w: F.interpolate(i["x"], scale_factor=(3, 2), mode="nearest"),
               consts={"two": _i64(1, 1, 3, 2), "one_two": _i64(1, 1, 1, 1)}, declared={"x": ("B", 2, "H", "W")}),
    NodeSample("resize-linear-pytorch_half_pixel", [N("Resize", ["x", "", "s"], mode="linear",
                                                      coordinate_transformation_mode="pytorch_half_pixel")],
               {"x": (1, 2, 3, 4)},
               lambda i, w: F.interpolate(i["x"], scale_factor=2, mode="bilinear", align_corners=False),
               consts={"s": np.asarray([1, 1, 2, 2], np.float32)}),
    NodeSample("lstm-forward", [N("LSTM", ["x", "W", "R", "B"], ["y4"], hidden_size=3),
                                N("Squeeze", ["y4", "ax1"])], {"x": (4, 2, 2)},
               lambda i, w: _lstm_torch(i["x"], w["W"][0], w["R"][0], w["B"][0], 3),
               {"W": (1, 12, 2), "R": (1, 12, 3), "B": (1, 24)}, consts={"ax1": _i64(1)}),
    NodeSample("lstm-bidirectional", [N("LSTM", ["x", "W", "R", "B"], hidden_size=3, direction="bidirectional")],
               {"x": (3, 2, 2)}, _lstm_both, {"W": (2, 12, 2), "R": (2, 12, 3), "B": (2, 24)}),
    NodeSample("gru-linear_before_reset", [N("GRU", ["x", "W", "R", "B"], hidden_size=3, linear_before_reset=1)],
               {"x": (4, 2, 2)}, lambda i, w: _gru_torch(i["x"], w["W"][0], w["R"][0], w["B"][0], 3, 1),
               {"W": (1, 9, 2), "R": (1, 9, 3), "B": (1, 18)}),
    NodeSample("gru-default", [N("GRU", ["x", "W", "R", "B"], hidden_size=3)],
               {"x": (3, 2, 2)}, lambda i, w: _gru_torch(i["x"], w["W"][0], w["R"][0], w["B"][0], 3, 0),
               {"W": (1, 9, 2), "R": (1, 9, 3), "B": (1, 18)}),
    NodeSample("conv1d-same_upper-stride2", [N("Conv", ["x", "w", "b"], auto_pad="SAME_UPPER", strides=[2])],
               {"x": (2, 3, 7)}, lambda i, w: F.conv1d(i["x"], w["w"], w["b"], stride=2, padding=1),
               {"w": (4, 3, 3), "b": (4,)}),
    NodeSample("conv2d-groups", [N("Conv", ["x", "w"], group=2, pads=[1, 0, 1, 0])], {"x": (1, 4, 4, 3)},
               lambda i, w: F.conv2d(i["x"], w["w"], padding=(1, 0), groups=2), {"w": (2, 2, 3, 3)}),
    NodeSample("maxpool-ceil_mode", [N("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
               {"x": (1, 2, 5, 5)}, lambda i, w: F.max_pool2d(i["x"], 2, ceil_mode=True), distinct=True),
    NodeSample("global_max_pool", [N("GlobalMaxPool", ["x"])], {"x": (2, 3, 2, 3)},
               lambda i, w: i["x"].amax((2, 3), keepdim=True), distinct=True),
    NodeSample("split-opset13-sizes", [N("Split", ["x", "sz"], ["a", "b"], axis=1), N("Concat", ["b", "a"], axis=1)],
               {"x": (2, 5)}, lambda i, w: torch.cat([i["x"][:, 2:], i["x"][:, :2]], 1), consts={"sz": _i64(2, 3)},
               opset=13),
    NodeSample("split-opset18-num_outputs", [N("Split", ["x"], ["a", "b", "c"], axis=0, num_outputs=3),
                                             N("Concat", ["c", "a"], axis=0)], {"x": (6, 2)},
               lambda i, w: torch.cat([i["x"][4:], i["x"][:2]], 0), opset=18),
    NodeSample("reduce_mean-opset17-attr", [N("ReduceMean", ["x"], axes=[1], keepdims=0)], {"x": (2, 3, 4)},
               lambda i, w: i["x"].mean(1), opset=17),
    NodeSample("reduce_sum-opset13-input", [N("ReduceSum", ["x", "ax"], keepdims=1)], {"x": (2, 3, 4)},
               lambda i, w: i["x"].sum((0, 2), keepdim=True), consts={"ax": _i64(0, 2)}, opset=13),
    NodeSample("reduce_max-opset18", [N("ReduceMax", ["x", "ax"], keepdims=0)], {"x": (2, 3, 4)},
               lambda i, w: i["x"].amax(-1), consts={"ax": _i64(-1)}, opset=18, distinct=True),
    NodeSample("squeeze-unsqueeze-opset11-attr", [N("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
                                                  N("Squeeze", ["u"], axes=[0])], {"x": (2, 3)},
               lambda i, w: i["x"][:, :, None], opset=11),
    NodeSample("sum-mean-max-variadic", [N("Sum", ["a", "b", "c"], ["s"]), N("Mean", ["a", "b"], ["m"]),
                                         N("Max", ["s", "m", "c"])],
               {"a": (2, 3), "b": (2, 3), "c": (3,)},
               lambda i, w: torch.maximum(torch.maximum(i["a"] + i["b"] + i["c"], (i["a"] + i["b"]) / 2), i["c"]),
               distinct=True),
    NodeSample("erf-gelu-chain", [N("Div", ["x", "sqrt2"], ["d"]), N("Erf", ["d"], ["e"]),
                                  N("Add", ["e", "one"], ["p"]),
                                  N("Mul", ["x", "p"], ["m"]), N("Mul", ["m", "half"])], {"x": (2, 5)},
               lambda i, w: F.gelu(i["x"]),
               consts={"sqrt2": np.asarray(np.sqrt(2.0)), "one": np.asarray(1.0), "half": np.asarray(0.5)}),
    NodeSample("gelu-opset20-tanh", [N("Gelu", ["x"], approximate="tanh")], {"x": (2, 5)},
               lambda i, w: F.gelu(i["x"], approximate="tanh"), opset=20,
               rtol=1e-7),  # onnxruntime's float64 Gelu kernel: 7e-9 from torch's on y
    NodeSample("softmax-axis1", [N("Softmax", ["x"], axis=1)], {"x": (2, 3, 4)}, lambda i, w: torch.softmax(i["x"], 1)),
    NodeSample("pow-sqrt-reciprocal", [N("Pow", ["x", "three"], ["p"]), N("Sqrt", ["x"], ["s"]),
                                       N("Reciprocal", ["s"], ["r"]), N("Add", ["p", "r"])], {"x": (2, 3)},
               lambda i, w: i["x"] ** 3 + 1 / torch.sqrt(i["x"]), consts={"three": np.asarray(3.0)},
               positive=("x",)),
    NodeSample("clip-min-max", [N("Clip", ["x", "lo", "hi"])], {"x": (3, 4)},
               lambda i, w: torch.clamp(i["x"], -0.5, 0.5), consts={"lo": np.asarray(-0.5), "hi": np.asarray(0.5)},
               distinct=True),
    NodeSample("matmul-1d", [N("MatMul", ["x", "v"])], {"x": (2, 3, 4)}, lambda i, w: i["x"] @ w["v"], {"v": (4,)}),
    NodeSample("einsum-batched-matmul", [N("Einsum", ["a", "b"], equation="bij,bjk->bik")], {"a": (2, 3, 4)},
               lambda i, w: torch.einsum("bij,bjk->bik", i["a"], w["b"]), {"b": (2, 4, 5)}),
    NodeSample("einsum-implicit-transpose", [N("Einsum", ["a", "b"], equation="ik,jk")], {"a": (3, 4), "b": (2, 4)},
               lambda i, w: torch.einsum("ik,jk", i["a"], i["b"])),
    NodeSample("einsum-three-operands", [N("Einsum", ["a", "b", "c"], equation="i,ij,j->")],
               {"a": (3,), "b": (3, 4), "c": (4,)}, lambda i, w: torch.einsum("i,ij,j->", i["a"], i["b"], i["c"])),
    NodeSample("conv_transpose-stride2-pads", [N("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 0, 1, 0],
                                                output_padding=[1, 1])], {"x": (1, 2, 3, 3)},
               lambda i, w: F.conv_transpose2d(i["x"], w["w"], w["b"], stride=2, padding=(1, 0), output_padding=1),
               {"w": (2, 3, 3, 2), "b": (3,)}),
    NodeSample("instance_norm", [N("InstanceNormalization", ["x", "s", "b"], epsilon=2**-10)], {"x": (2, 3, 4, 3)},
               lambda i, w: F.instance_norm(i["x"], weight=w["s"], bias=w["b"], eps=2**-10), {"s": (3,), "b": (3,)}),
    NodeSample("group_norm-opset21", [N("GroupNormalization", ["x", "s", "b"], num_groups=2, epsilon=2**-10)],
               {"x": (2, 4, 3, 2)}, lambda i, w: F.group_norm(i["x"], 2, w["s"], w["b"], 2**-10),
               {"s": (4,), "b": (4,)}, opset=21, declared={"x": ("B", 4, 3, 2)}),
    NodeSample("group_norm-opset18-per-group", [N("GroupNormalization", ["x", "s", "b"], num_groups=2, epsilon=2**-10)],
               {"x": (2, 4, 3)},
               lambda i, w: F.group_norm(i["x"], 2, w["s"].repeat_interleave(2), w["b"].repeat_interleave(2), 2**-10),
               {"s": (2,), "b": (2,)}, opset=18),
    NodeSample("reduce_l2-l1-sumsquare", [N("ReduceL2", ["x"], ["a"], axes=[1], keepdims=1),
                                          N("ReduceL1", ["x"], ["b"], axes=[1], keepdims=1),
                                          N("ReduceSumSquare", ["x"], ["c"], axes=[1], keepdims=1),
                                          N("Sum", ["a", "b", "c"])], {"x": (2, 3, 2)},
               lambda i, w: (i["x"].norm(dim=1, keepdim=True) + i["x"].abs().sum(1, keepdim=True)
                             + (i["x"] ** 2).sum(1, keepdim=True)), opset=17),
    NodeSample("reduce_logsumexp-opset18", [N("ReduceLogSumExp", ["x", "ax"], keepdims=0)],
               {"x": (2, 3, 4)},
               lambda i, w: torch.logsumexp(i["x"], 2), consts={"ax": _i64(2)}, opset=18),
    NodeSample("tile-symbolic", [N("Tile", ["x", "r"])], {"x": (2, 3)}, lambda i, w: i["x"].repeat(2, 3),
               consts={"r": _i64(2, 3)}, declared={"x": ("B", 3)}),
    NodeSample("hard_sigmoid-hard_swish", [N("HardSigmoid", ["x"], ["h"], alpha=0.25, beta=0.5),
                                           N("HardSwish", ["x"], ["s"]), N("Add", ["h", "s"])], {"x": (3, 4)},
               lambda i, w: torch.clamp(0.25 * i["x"] + 0.5, 0, 1) + F.hardswish(i["x"])),
    NodeSample("prelu-mish-softsign-selu", [N("PRelu", ["x", "slope"], ["p"]), N("Mish", ["x"], ["m"]),
                                            N("Softsign", ["x"], ["s"]), N("Selu", ["x"], ["e"]),
                                            N("Sum", ["p", "m", "s", "e"])], {"x": (2, 3)},
               lambda i, w: F.prelu(i["x"], w["slope"]) + F.mish(i["x"]) + F.softsign(i["x"]) + F.selu(i["x"]),
               {"slope": (3,)}, opset=18, rtol=1e-7),  # Selu's alpha and gamma are float32 attributes
    NodeSample("gather-elements-expand", [N("GatherElements", ["x", "idx"], ["g"], axis=1),
                                          N("Expand", ["g", "shape"])], {"x": (2, 4)},
               lambda i, w: torch.gather(i["x"], 1, torch.tensor([[0, 3], [1, 1]])).expand(3, 2, 2),
               consts={"idx": np.asarray([[0, 3], [1, 1]], np.int64), "shape": _i64(3, 2, 2)}),
]


def _sample_values(s: NodeSample, rng):
    def draw(name, shape):
        if name in s.positive:
            return rng.uniform(0.5, 1.5, shape)
        if s.distinct:
            n = int(np.prod(shape))
            return (rng.permutation(n) * 0.37 / n - 0.18 + rng.uniform(0, 0.01, n)).reshape(shape) * 5
        return rng.uniform(-1, 1, shape)
    return {k: draw(k, v) for k, v in s.inputs.items()}, {k: draw(k, v) for k, v in s.weights.items()}


def _onnx(s: NodeSample, weights: dict) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(k, TensorProto.DOUBLE, list(s.declared.get(k, v)))
              for k, v in s.inputs.items()]
    inits = [numpy_helper.from_array(np.asarray(a, np.float64), k) for k, a in weights.items()]
    inits += [numpy_helper.from_array(a, k) for k, a in s.consts.items()]
    graph = helper.make_graph(s.nodes, s.name, inputs, [helper.make_empty_tensor_value_info("y")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", s.opset)], ir_version=8)


def _dims(shape):
    return ", ".join(map(str, shape))


@pytest.mark.parametrize("s", SAMPLES, ids=[s.name for s in SAMPLES])
def test_imported_node_first_and_second_derivatives(tmp_path, s):
    rng = np.random.default_rng(abs(hash(s.name)) % 2**32)
    xs, ws = _sample_values(s, rng)
    (tmp_path / "node.onnx").write_bytes(_onnx(s, ws).SerializeToString())

    ti = {k: torch.tensor(v, requires_grad=True) for k, v in xs.items()}
    tw = {k: torch.tensor(v, requires_grad=k not in s.frozen) for k, v in ws.items()}
    y = s.torch_fn(ti, tw)
    diff_names = list(xs) + [k for k in ws if k not in s.frozen]
    diff_t = [ti[k] for k in xs] + [tw[k] for k in ws if k not in s.frozen]
    cot = rng.standard_normal(tuple(y.shape))
    dirs = [rng.standard_normal(tuple(t.shape)) for t in diff_t]
    gs = torch.autograd.grad((y * torch.tensor(cot)).sum(), diff_t, create_graph=True)
    second = sum((g * torch.tensor(d)).sum() for g, d in zip(gs, dirs))
    hs = torch.autograd.grad(second, diff_t, allow_unused=True) if second.requires_grad else [None] * len(diff_t)
    hs = [torch.zeros_like(t) if h is None else h for h, t in zip(hs, diff_t)]
    expected = [y] + list(gs) + list(hs)

    wrt = [k for k in xs] + [f"Net.{weight_name(k)}" for k in ws if k not in s.frozen]
    decl = {k: _dims(s.declared.get(k, v)) for k, v in s.inputs.items()}
    decl.update({f"Net.{weight_name(k)}": _dims(v) for k, v in s.weights.items()})
    cot_decl = _dims([f"Q{i}" for i in range(cot.ndim)]) if s.declared else _dims(cot.shape)
    args = [f"{k}: f64[{decl[k]}]" for k in xs] + [f"cot: f64[{cot_decl}]"]
    args += [f"dir_{k}: f64[{decl[n]}]" for k, n in enumerate(wrt)]
    n = len(wrt)
    gn, hn = ", ".join(f"g{k}" for k in range(n)), ", ".join(f"h{k}" for k in range(n))
    src = (f'model Net = onnx("node.onnx")\n'
           f'fn probe({", ".join(args)}) {{\n'
           f'    y = Net({", ".join(xs)})\n'
           f'    {gn} = grad(sum(y * cot), [{", ".join(wrt)}])\n'
           f'    s = {" + ".join(f"sum(g{k} * dir_{k})" for k in range(n))}\n'
           f'    {hn} = grad(s, [{", ".join(wrt)}])\n'
           f'    return y, {gn}, {hn}\n}}\n')
    (tmp_path / "probe.dsl").write_text(src)
    model = dslc.compile(dslc.load(tmp_path / "probe.dsl"), "probe")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {**xs, "cot": cot, **{f"dir_{k}": d for k, d in enumerate(dirs)}}
    got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    labels = ["y"] + [f"d/d{k}" for k in diff_names] + [f"hvp {k}" for k in diff_names]
    for label, g, e in zip(labels, got, expected):
        e = e.detach().numpy()
        assert g.shape == e.shape, (label, g.shape, e.shape)
        err = np.max(np.abs(g - e)) / max(np.max(np.abs(e)), 1e-3) if e.size else 0.0
        assert err < s.rtol, (s.name, label, err)
