"""An imported LSTM's initial states (lower/onnx_rnn.py): a given initial_h / initial_c keeps its
terms (h R^T, f c) in the first step, and its values and gradients (the states' own included) match
ONNX's equations written in torch float64; a zero state, left out or passed as an Expand of a zero
constant (torch's dynamo exporter), leaves those terms out: no MatMul or Expand of zeros remains.
A zero-valued weight used as the state stays a weight: its gradient flows. Expected values come from
torch, never from dslc."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import dslc  # noqa: E402

T, B, I, H = 4, 2, 3, 5


def _lstm_torch(x, w, r, b, h, c):
    """ONNX's LSTM equations (gates i, o, f, c) from the states h, c: Y [T, 1, B, H], Y_h, Y_c."""
    bias = b[:4 * H] + b[4 * H:]
    ys = []
    for t in range(x.shape[0]):
        i, o, f, cc = (x[t] @ w.T + h @ r.T + bias).split(H, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cc)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys)[:, None], h[None], c[None]


def _file(path, states: dict, extra_nodes=(), extra_inits=()):
    """One LSTM node on x [T, B, I] with W, R, B as weights; `states` maps initial_h / initial_c to
    the value name that feeds it (a graph input when it is one of h0, c0)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(-0.5, 0.5, s), n)
             for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)))] + list(extra_inits)
    ins = ["x", "W", "R", "B", "", states.get("initial_h", ""), states.get("initial_c", "")]
    node = helper.make_node("LSTM", ins, ["y", "yh", "yc"], hidden_size=H)
    inputs = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, [T, B, I] if n == "x" else [1, B, H])
              for n in ["x"] + [v for v in states.values() if v in ("h0", "c0")]]
    outs = [helper.make_empty_tensor_value_info(n) for n in ("y", "yh", "yc")]
    graph = helper.make_graph(list(extra_nodes) + [node], "lstm", inputs, outs, inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    return {n.name: numpy_helper.to_array(n) for n in inits}


def _session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _probe(tmp_path, inputs: list[str], weights: list[str]):
    """y, Y_h, Y_c and the gradient of a weighted sum of them w.r.t. x, the given states and weights."""
    wrt = inputs + [f"Net.{w}" for w in weights]
    gs = ", ".join(f"g{k}" for k in range(len(wrt)))
    args = ", ".join([f"{n}: f64[{T}, {B}, {I}]" if n == "x" else f"{n}: f64[1, {B}, {H}]" for n in inputs]
                     + [f"cy: f64[{T}, 1, {B}, {H}]", f"ch: f64[1, {B}, {H}]", f"cc: f64[1, {B}, {H}]"])
    (tmp_path / "p.dsl").write_text(
        'model Net = onnx("lstm.onnx")\n'
        f'fn probe({args}) {{\n    y, yh, yc = Net({", ".join(inputs)})\n'
        f'    {gs} = grad(sum(y * cy) + sum(yh * ch) + sum(yc * cc), [{", ".join(wrt)}])\n'
        f'    return y, yh, yc, {gs}\n}}\n')
    return dslc.compile(dslc.load(tmp_path / "p.dsl"), "probe")


def _check(model, feeds: dict, torch_args: dict, wrt: list[str]):
    """The probe's outputs against torch: values and the gradients w.r.t. `wrt` (names of torch_args)."""
    rng = np.random.default_rng(1)
    cots = {"cy": rng.standard_normal((T, 1, B, H)), "ch": rng.standard_normal((1, B, H)),
            "cc": rng.standard_normal((1, B, H))}
    sess = _session(model)
    got = sess.run(None, {i.name: {**feeds, **cots}[i.name] for i in sess.get_inputs()})
    t = {k: torch.tensor(v, requires_grad=k in wrt) for k, v in torch_args.items()}
    outs = _lstm_torch(t["x"], t["W"][0], t["R"][0], t["B"][0], t["h0"][0], t["c0"][0])
    loss = sum((o * torch.tensor(cots[k])).sum() for o, k in zip(outs, ("cy", "ch", "cc")))
    want = list(outs) + list(torch.autograd.grad(loss, [t[k] for k in wrt]))
    for label, g, e in zip(["y", "yh", "yc"] + wrt, got, want):
        np.testing.assert_allclose(g, e.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=label)


def _counts(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _forward(tmp_path):
    (tmp_path / "f.dsl").write_text('model Net = onnx("lstm.onnx")\n')
    return dslc.compile(dslc.load(tmp_path / "f.dsl"), "Net")


@pytest.mark.parametrize("given", [("h0", "c0"), ("h0",), ("c0",), ()], ids=["h0+c0", "h0", "c0", "none"])
def test_given_states_keep_their_terms_and_absent_ones_drop_them(tmp_path, given):
    rng = np.random.default_rng(2)
    states = {"initial_h": "h0", "initial_c": "c0"}
    weights = _file(tmp_path / "lstm.onnx", {k: v for k, v in states.items() if v in given})
    feeds = {"x": rng.uniform(-1, 1, (T, B, I)), **{k: rng.uniform(-1, 1, (1, B, H)) for k in given}}
    torch_args = {**weights, "h0": np.zeros((1, B, H)), "c0": np.zeros((1, B, H)), **feeds}
    model = _probe(tmp_path, ["x", *given], ["W", "R", "B"])
    _check(model, feeds, torch_args, ["x", *given, "W", "R", "B"])
    counts = _counts(_forward(tmp_path))
    # x W^T is one MatMul; h R^T one per step, the first one only with a given h0
    assert counts["MatMul"] == 1 + (T if "h0" in given else T - 1), counts
    assert counts["Expand"] == counts["ConstantOfShape"] == 0, counts


def test_exported_zero_state_is_left_out(tmp_path):
    """initial_h and initial_c as torch's dynamo exporter writes them: Slice(Expand(0, shape))."""
    zero = numpy_helper.from_array(np.zeros((), np.float64), "zero")
    shape = numpy_helper.from_array(np.asarray([2, B, H], np.int64), "shape")
    nodes = [helper.make_node("Expand", ["zero", "shape"], ["zeros"]),
             helper.make_node("Slice", ["zeros", "start", "end"], ["z0"])]
    consts = [zero, shape, numpy_helper.from_array(np.asarray([0], np.int64), "start"),
              numpy_helper.from_array(np.asarray([1], np.int64), "end")]
    weights = _file(tmp_path / "lstm.onnx", {"initial_h": "z0", "initial_c": "z0"}, nodes, consts)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.uniform(-1, 1, (T, B, I))}
    torch_args = {**weights, "h0": np.zeros((1, B, H)), "c0": np.zeros((1, B, H)), **feeds}
    _check(_probe(tmp_path, ["x"], ["W", "R", "B"]), feeds, torch_args, ["x", "W", "R", "B"])
    counts = _counts(_forward(tmp_path))
    assert counts["MatMul"] == T and counts["Expand"] == 0, counts


def test_zero_weight_as_the_state_stays_trainable(tmp_path):
    """A learned initial state that starts at zero is a weight, not a zero state: its gradient flows."""
    h0 = numpy_helper.from_array(np.zeros((1, B, H)), "h0w")
    weights = _file(tmp_path / "lstm.onnx", {"initial_h": "h0w"}, extra_inits=[h0])
    rng = np.random.default_rng(4)
    feeds = {"x": rng.uniform(-1, 1, (T, B, I))}
    torch_args = {**weights, "h0": weights["h0w"], "c0": np.zeros((1, B, H)), **feeds}
    _check(_probe(tmp_path, ["x"], ["h0w", "R"]), feeds, torch_args, ["x", "h0", "R"])
    assert _counts(_forward(tmp_path))["MatMul"] == 1 + T


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_without_a_state_multiplies_no_zeros(tmp_path, linear_before_reset):
    """The GRU's first step likewise: no zero state is made, and neither h R^T nor (r h) R_h^T is
    computed for it (its values and gradients against ONNX's equations in torch:
    tests/test_onnx_import_ops.py, gru-default and gru-linear_before_reset)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.uniform(-0.5, 0.5, s), n)
             for n, s in (("W", (1, 3 * H, I)), ("R", (1, 3 * H, H)), ("B", (1, 6 * H)))]
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["y", "yh"], hidden_size=H,
                            linear_before_reset=linear_before_reset)
    graph = helper.make_graph([node], "gru", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [T, B, I])],
                              [helper.make_empty_tensor_value_info(n) for n in ("y", "yh")], inits)
    (tmp_path / "lstm.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                           ir_version=8).SerializeToString())
    counts = _counts(_forward(tmp_path))
    recurrent = (T - 1) * (1 if linear_before_reset else 2)  # h R^T, and (r h) R_h^T without linear_before_reset
    assert counts["MatMul"] == 1 + recurrent, counts
    assert counts["ConstantOfShape"] == counts["Expand"] == 0, counts
