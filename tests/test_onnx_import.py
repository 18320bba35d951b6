"""Exported PyTorch models imported with `model Net = onnx("file.onnx")`: every weight's gradient
against torch autograd on the same weights and batch (float32), the imported forward against
onnxruntime on the original file, and a training step that compiles and runs.

Both exporters: TorchScript (`dynamo=False`, opset 17) and torch.export (`dynamo=True`, opset 18,
needs onnxscript). Expected values come from torch and onnxruntime, never from dslc.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn

import dslc  # noqa: E402
from dslc.lower.onnx_decl import weight_name  # noqa: E402

try:
    import onnxscript  # noqa: F401 -- the dynamo exporter needs it
    EXPORTERS = ["torchscript", "dynamo"]
except ImportError:  # pragma: no cover
    EXPORTERS = ["torchscript"]


# ------------------------------------------------------------------ the models
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        h = nn.functional.max_pool2d(h, 2)  # 8 -> 4
        h = self.up(h)  # 4 -> 8
        h = torch.sigmoid(self.conv2(h))  # 8 -> 3
        return self.fc(h.flatten(1))


class Block(nn.Module):
    """A pre-norm transformer block: LayerNorm, attention with Softmax, erf GELU."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.heads, self.d = heads, d

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(self.d, dim=-1)
        q, k, v = (z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        h = (att @ v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(h)
        return x + self.ff2(nn.functional.gelu(self.ff1(self.ln2(x))))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 5, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y.mean(1))


CASES = {  # name: (module, input shape, output shape, symbolic batch)
    "mlp": (MLP, (5, 8), (5, 4)),
    "cnn": (CNN, (2, 3, 8, 8), (2, 5)),
    "block": (Block, (2, 5, 16), (2, 5, 16)),
    "lstm": (LSTMNet, (3, 5, 4), (3, 3)),
    "gru": (GRUNet, (2, 4, 4), (2, 3)),
}


def _export(module, x, path, exporter):
    kw = dict(input_names=["x"], output_names=["y"])
    if exporter == "dynamo":
        torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=18, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("N", min=2, max=64)}}, **kw)
    else:
        # PRESERVE: the module's eval mode without folding batch norms into the convolutions before
        # them, so every weight is a torch parameter to compare with
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **kw)


def _dims(shape, batch="N"):
    return ", ".join([batch] + [str(d) for d in shape[1:]])


def _module(name):
    torch.manual_seed(0)
    module = CASES[name][0]().eval()
    with torch.no_grad():  # as trained weights are: no two equal (the exporter would share them)
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if name == "cnn":  # running statistics away from 0 and 1
            module.bn.running_mean.uniform_(-0.5, 0.5)
            module.bn.running_var.uniform_(0.5, 1.5)
    return module


def _prepared(tmp_path, name, exporter):
    _, xs, ys = CASES[name]
    module = _module(name)
    x = torch.randn(*xs)
    _export(module, x, tmp_path / "m.onnx", exporter)
    if name == "cnn" and exporter == "dynamo":  # torch.export folds the eval-mode batch norm into conv1
        from torch.nn.utils.fusion import fuse_conv_bn_eval
        module.conv1, module.bn = fuse_conv_bn_eval(module.conv1, module.bn), nn.Identity()
    src = (f'model Net = onnx("m.onnx")\n'
           f'step probe(x: f32[{_dims(xs)}], cot: f32[{_dims(ys)}]) updates Net using sgd(lr=0.1) {{\n'
           f'    minimize sum(Net(x) * cot)\n}}\n')
    (tmp_path / "t.dsl").write_text(src)
    return module, x, dslc.load(tmp_path / "t.dsl")


def _session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _torch_param(module, onnx_name: str, init: np.ndarray):
    """The torch parameter an initializer is, and how: by name, else by value (exporters transpose
    and reorder weights: a Linear's weight as MatMul's [in, out], an LSTM's gates i,o,f,c)."""
    params = dict(module.named_parameters())
    for pname, p in params.items():
        if weight_name(pname) == weight_name(onnx_name) and tuple(p.shape) == init.shape and \
                np.allclose(p.detach().numpy(), init, rtol=1e-5, atol=1e-6):
            return p, lambda g: g
    for p in params.values():
        a = p.detach().numpy()
        if a.shape == init.shape and np.array_equal(a, init):
            return p, lambda g: g
        if a.ndim == 2 and a.T.shape == init.shape and np.array_equal(a.T, init):
            return p, lambda g: g.T
    return None, None


def _lstm_grads(module) -> dict:
    """torch's LSTM gradients in ONNX's layout: W [1, 4H, I], R [1, 4H, H], B [1, 8H], gates i, o, f, c."""
    lstm = module.lstm

    def iofc(t):
        i, f, g, o = t.chunk(4, 0)
        return torch.cat([i, o, f, g], 0)

    return {"W": iofc(lstm.weight_ih_l0.grad)[None], "R": iofc(lstm.weight_hh_l0.grad)[None],
            "B": torch.cat([iofc(lstm.bias_ih_l0.grad), iofc(lstm.bias_hh_l0.grad)])[None]}


def _gru_grads(module) -> dict:
    """torch's GRU gradients in ONNX's layout: gates r, z, n reordered to z, r, h."""
    gru = module.gru

    def zrh(t):
        r, z, n = t.chunk(3, 0)
        return torch.cat([z, r, n], 0)

    return {"W": zrh(gru.weight_ih_l0.grad)[None], "R": zrh(gru.weight_hh_l0.grad)[None],
            "B": torch.cat([zrh(gru.bias_ih_l0.grad), zrh(gru.bias_hh_l0.grad)])[None]}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_torch(tmp_path, name, exporter):
    module, x, prog = _prepared(tmp_path, name, exporter)
    imp = prog.decls["Net"].source
    rng = np.random.default_rng(1)
    cot = rng.standard_normal(CASES[name][2]).astype(np.float32)

    # forward: the imported graph against onnxruntime on the file itself
    ours = _session(dslc.compile(prog, "Net")).run(None, {"x": x.numpy()})[0]
    theirs = _session_file(tmp_path / "m.onnx").run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    grads = _session(dslc.compile(prog, "probe", emit="gradients"))
    names = [o.name for o in grads.get_outputs()]
    out = dict(zip(names, grads.run(None, {"x": x.numpy(), "cot": cot})))
    module.zero_grad()
    (module(x) * torch.tensor(cot)).sum().backward()
    lstm = _lstm_grads(module) if name == "lstm" else _gru_grads(module) if name == "gru" else {}
    assert imp.weights, "no weights imported"
    worst = 0.0
    for onnx_name, wname in imp.weights.items():
        if wname in imp.frozen:  # batch-norm statistics
            continue
        got = out[f"grad.Net.{wname}"]
        p, how = _torch_param(module, onnx_name, imp.file.initializers[onnx_name])
        if p is not None:
            want = how(p.grad.numpy())
        else:  # the LSTM's or GRU's W, R, B
            key = next(k for k, v in lstm.items() if tuple(v.shape) == got.shape)
            want = lstm[key].numpy()
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-3)
        worst = max(worst, err)
        assert err < 1e-4, (wname, err)
    print(f"{name} {exporter}: {len(imp.weights)} weights, worst relative gradient difference {worst:.2e}")


def _session_file(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_train_step_runs(tmp_path, exporter):
    """`step ... updates Net using adam`: compiles and a few steps lower the loss on a fixed batch."""
    _export(_module("cnn"), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", exporter)
    (tmp_path / "t.dsl").write_text(
        'model Net = onnx("m.onnx")\n'
        'step fit(x: f32[N, 3, 8, 8], label: i64[N]) updates Net using adam(lr=0.01) {\n'
        '    minimize sparse_categorical_crossentropy(Net(x), label, from_logits=true)\n}\n')
    prog = dslc.load(tmp_path / "t.dsl")
    model = dslc.compile(prog, "fit")
    sess = _session(model)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32), "label": np.array([0, 1, 2, 3])}
    inputs = {i.name for i in model.graph.input}
    state = {i.name: onnx_numpy(i) for i in model.graph.initializer if i.name in inputs}
    names = [o.name for o in sess.get_outputs()]
    losses = []
    for _ in range(5):
        out = dict(zip(names, sess.run(None, {**feeds, **state})))
        losses.append(float(out["loss"]))
        state = {k: out[f"{k}.next"] for k in state if f"{k}.next" in out}
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def onnx_numpy(t):
    from onnx import numpy_helper
    return numpy_helper.to_array(t)


def test_named_outputs_and_weights(tmp_path):
    """Several outputs by name, weights reachable as Net.<initializer>, frozen=true trains nothing."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            h = self.body(x)
            return h, torch.relu(h)

    torch.onnx.export(Two().eval(), (torch.randn(2, 4),), str(tmp_path / "two.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["pre", "post"], dynamic_axes={"x": {0: "N"}})
    (tmp_path / "t.dsl").write_text(
        'model Net = onnx("two.onnx")\n'
        'model Frozen = onnx("two.onnx", frozen=true)\n'
        'model Head(x: f32[N, 4]) -> (a, b, w, first, c) {\n  a = Net(x).post\n  b = Net(x).pre\n'
        '  w = Net.body.weight\n  first = relu(Net(x))\n  p, c = Net(x)\n}\n'
        'step s(x: f32[N, 4]) updates Net using sgd(lr=0.1) { minimize mean(Net(x).post) + mean(Frozen(x).pre) }\n')
    prog = dslc.load(tmp_path / "t.dsl")
    assert prog.decls["Net"].outputs == ("pre", "post")
    out = _session(dslc.compile(prog, "Head")).run(None, {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_allclose(out[0], np.maximum(out[1], 0))
    assert out[2].shape == (3, 4)
    np.testing.assert_allclose(out[3], out[0])  # Net(x) is its first output, `pre`
    np.testing.assert_allclose(out[4], out[0])  # and unpacks into both
    text = dslc.summary(prog, "s")
    assert "Non-trainable params: 15" in text, text


def test_summary_of_an_onnx_file(tmp_path, capsys):
    _export(_module("cnn"), torch.randn(2, 3, 8, 8), tmp_path / "cnn.onnx", "torchscript")
    text = dslc.summary(tmp_path / "cnn.onnx")
    n = sum(p.numel() for p in CNN().parameters())
    stats = 2 * 6  # the batch norm's running mean and variance: weights, not trained
    assert f"Total params: {n + stats:,}" in text, text
    assert f"Non-trainable params: {stats:,}" in text
    assert "Conv" in text and "f32[N, 6, 8, 8]" in text
    from dslc.cli import main
    assert main(["summary", str(tmp_path / "cnn.onnx")]) == 0
    assert "Total params" in capsys.readouterr().out
