"""Whole training trajectories against PyTorch, in float64: 50 steps of dslc's compiled train step
(onnxruntime, every output `X.next` fed back into input `X`) and 50 steps of a PyTorch twin of the
same model, started from the same weights (dslc's initializers copied into torch's layouts) and
updated by Keras' Adam written in torch from README's equations (torch.optim.Adam puts eps
elsewhere), on the same real MNIST batches from the embedded subset, with the same random draws
(dslc compiled with random="input": dropout's uniforms and the VAE's normals are fed to both).

Models: the ConvNet of specs/convnet.dsl (dropout, max pools, conv im2col in float64), the VAE of
specs/vae.dsl (the reparametrization noise) and an LSTM (LSTM_SOURCE below: a `repeat` over 28
time steps carrying an integer step counter; the twin is torch.nn.LSTMCell unrolled by hand).

Every step's loss and every weight after the 50 steps must agree to 1e-9, relative to the loss and
to each weight's largest element. Both sides compute in float64 with different kernels and orders
of summation, so each step adds round-off of ~1e-16 relative, which the trajectory may amplify
(Adam divides by sqrt(v), relu and max-pool routes are discontinuous); 1e-9 leaves room for that
amplification and none for a wrong gradient, update or initialization, which show up at 1e-6 or
more within a step or two (torch.optim.Adam's eps placement: 3e-6 at the second step). A max-pool
near-tie (two window elements within round-off of each other) decided differently by the two
sides would move the trajectory apart by far more than 1e-9: the ConvNet test reports the smallest
gap between distinct window maxima along torch's trajectory (2.6e-7 relative on these batches, far
above round-off) with any failure.
Skipped where torch is not installed (it is in the `bench` extra).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import dslc

torch = pytest.importorskip("torch", reason="PyTorch is the reference here (pip install dslc[bench])")
nn, F = torch.nn, torch.nn.functional

SPECS = Path(__file__).resolve().parent.parent / "specs"
EMBEDDED = Path(dslc.__file__).resolve().parent / "data" / "embedded.npz"
STEPS = 50
TOL = 1e-9


# ------------------------------------------------------------------ the two sides' machinery
def _mnist(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of the embedded MNIST training subset in [0, 1] (float64) and labels."""
    with np.load(EMBEDDED) as z:
        images = z["mnist_train_image"][:count].astype(np.float64) / 255.0
        labels = z["mnist_train_label"][:count].astype(np.int64)
    assert len(images) == count, "the embedded subset is smaller than these tests need"
    return images, labels


def _compile(spec: str, step: str) -> onnx.ModelProto:
    return dslc.compile(SPECS / spec, step, float64=True, random="input")  # noise and masks: inputs


def _initial_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The trainable weights' starting values (dslc's initializers), optimizer state and step left out."""
    trained = {o.name.removesuffix(".next") for o in model.graph.output if o.name.endswith(".next")}
    return {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer
            if i.name in trained and i.name != "step" and "." in i.name and not i.name.startswith("adam.")}


def _train_dslc(model: onnx.ModelProto, batches: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Losses of every step and the state after the last, the step's outputs `X.next` fed back as `X`."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the state's initializers are also inputs: by design
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    state: dict[str, np.ndarray] = {}
    losses = []
    for feeds in batches:
        out = dict(zip(names, sess.run(None, {**feeds, **state})))
        losses.append(float(out["loss"]))
        state = {k.removesuffix(".next"): v for k, v in out.items() if k.endswith(".next")}
    assert int(state["step"]) == len(batches)
    return np.array(losses), state


class KerasAdam:
    """README "Training steps" (dslc/train/optimizers.py), t = step + 1:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)."""

    def __init__(self, params, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        rate = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            m.mul_(self.b1).add_(g * (1 - self.b1))
            v.mul_(self.b2).add_(g * g * (1 - self.b2))
            p.sub_(m / (v.sqrt() + self.eps) * rate)
            p.grad = None


def _load_twin(twin: nn.Module, weights: dict[str, np.ndarray], layout: dict[str, tuple[str, bool]]) -> None:
    """dslc weight name -> (twin parameter name, transposed): dense kernels are [in, out], Linear's [out, in]."""
    params = {k: p for k, p in twin.named_parameters() if p.requires_grad}
    assert set(layout) == set(weights), "the twin must hold exactly dslc's trainable weights"
    assert {param for param, _ in layout.values()} == set(params)
    with torch.no_grad():
        for name, (param, transposed) in layout.items():
            value = weights[name].T if transposed else weights[name]
            assert params[param].shape == value.shape, (name, param)
            params[param].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _twin_weights(twin: nn.Module, layout: dict[str, tuple[str, bool]]) -> dict[str, np.ndarray]:
    params = dict(twin.named_parameters())
    out = {}
    for name, (param, transposed) in layout.items():
        value = params[param].detach().numpy()
        out[name] = value.T if transposed else value
    return out


def _train_twin(twin: nn.Module, loss_of, batches: list[dict]) -> np.ndarray:
    opt = KerasAdam(twin.parameters())
    losses = []
    for feeds in batches:
        loss = loss_of(twin, {k: torch.from_numpy(v) for k, v in feeds.items()})
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return np.array(losses)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference relative to the largest magnitude of `want` (a weight's scale)."""
    scale = float(np.max(np.abs(want)))
    return float(np.max(np.abs(got - want))) / scale if scale else float(np.max(np.abs(got)))


def _compare(what: str, dslc_losses, torch_losses, dslc_state, twin_weights, initial,
             note: str = "") -> dict[str, float]:
    """Assert the trajectories agree; returns the figures (printed with -s). `note` goes with a failure."""
    loss_rel = np.abs(dslc_losses - torch_losses) / np.abs(torch_losses)
    weight_rel = {k: _relative(dslc_state[k], v) for k, v in twin_weights.items()}
    figures = {"loss": float(loss_rel.max()), "weights": max(weight_rel.values())}
    print(f"\n{what}: max relative difference over {STEPS} steps: loss {figures['loss']:.2e}, "
          f"weights {figures['weights']:.2e} (worst {max(weight_rel, key=weight_rel.get)}); "
          f"loss {torch_losses[0]:.4f} -> {torch_losses[-1]:.4f}" + (f"; {note}" if note else ""))
    first = int(np.argmax(loss_rel > TOL)) if (loss_rel > TOL).any() else None
    assert first is None, (f"{what}: the losses part at step {first}: dslc {dslc_losses[first]!r}, "
                           f"torch {torch_losses[first]!r} (relative {loss_rel[first]:.2e}). {note}")
    for k, rel in weight_rel.items():
        assert rel <= TOL, f"{what}: {k} differs from torch's by {rel:.2e} (relative) after {STEPS} steps. {note}"
    # The trajectory is a real one: every weight moved far beyond the tolerance.
    for k, v in initial.items():
        assert _relative(dslc_state[k], v) > 1e3 * TOL, f"{what}: {k} hardly moved"
    assert torch_losses[-1] < torch_losses[0]
    return figures


@pytest.fixture(scope="module", autouse=True)
def float64_torch():
    """float64 twins; one torch thread (small steps: on a loaded machine a thread pool mostly waits)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ 1. the ConvNet (specs/convnet.dsl)
CONVNET_BATCH = 32
DROPOUT = 0.25


class ConvNetTwin(nn.Module):
    LAYOUT = {"ConvNet.conv1.weight": ("conv1.weight", False), "ConvNet.conv1.bias": ("conv1.bias", False),
              "ConvNet.conv2.weight": ("conv2.weight", False), "ConvNet.conv2.bias": ("conv2.bias", False),
              "ConvNet.hidden.weight": ("hidden.weight", True), "ConvNet.hidden.bias": ("hidden.bias", False),
              "ConvNet.logits.weight": ("logits.weight", True), "ConvNet.logits.bias": ("logits.bias", False)}

    def __init__(self):
        super().__init__()
        # padding=same at stride 1 with a 3x3 kernel: one row/column each side, as torch's padding=1
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.hidden = nn.Linear(64 * 7 * 7, 128)
        self.logits = nn.Linear(128, 10)
        self.pooled: list[torch.Tensor] = []  # the max pools' inputs, for counting near-ties

    def forward(self, image, uniform):
        conv1 = F.relu(self.conv1(image))
        pool1 = F.max_pool2d(conv1, 2)
        conv2 = F.relu(self.conv2(pool1))
        pool2 = F.max_pool2d(conv2, 2)
        self.pooled += [conv1.detach(), conv2.detach()]
        hidden = F.relu(self.hidden(pool2.flatten(1)))
        keep = (uniform >= DROPOUT).to(hidden.dtype)  # dslc's dropout: uniform >= rate, scaled by 1/(1-rate)
        return self.logits(hidden * (keep * (1.0 / (1.0 - DROPOUT))))


def _pool_ties(x: torch.Tensor) -> tuple[int, float]:
    """Over the 2x2 windows of `x` with a positive maximum: how many hold it twice or more, and the
    smallest gap between the two largest values of the others, relative to the largest (a near-tie
    where that gap is round-off). The exact ties are the blank background, where every position
    computes the same value from the same (zero) patch: both sides send the gradient to the first
    maximum, and any other choice gives the same weight gradients there (checked by routing torch's
    ties to the last maximum instead: the trajectories still agree to 1e-14)."""
    n, c, h, w = x.shape
    top2 = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(-1, 4).topk(2, dim=1).values
    top2 = top2[top2[:, 0] > 0]
    gap = (top2[:, 0] - top2[:, 1]) / top2[:, 0]
    return int((gap == 0).sum()), float(gap[gap > 0].min()) if (gap > 0).any() else math.inf


def test_convnet_trajectory_matches_torch():
    model = _compile("convnet.dsl", "train_convnet")
    initial = _initial_weights(model)
    images, labels = _mnist(STEPS * CONVNET_BATCH)
    rng = np.random.default_rng(0)
    batches = [{"image": images[k * CONVNET_BATCH:(k + 1) * CONVNET_BATCH, None],
                "label": labels[k * CONVNET_BATCH:(k + 1) * CONVNET_BATCH],
                "random.0": rng.random((CONVNET_BATCH, 128))} for k in range(STEPS)]
    dslc_losses, state = _train_dslc(model, batches)

    twin = ConvNetTwin()
    _load_twin(twin, initial, ConvNetTwin.LAYOUT)
    torch_losses = _train_twin(
        twin, lambda net, b: F.cross_entropy(net(b["image"], b["random.0"]), b["label"]), batches)
    ties = [_pool_ties(x) for x in twin.pooled]
    pools = (f"max pools along torch's trajectory: {sum(t for t, _ in ties):,} windows with exact ties, "
             f"smallest gap between distinct top-two values {min(g for _, g in ties):.1e} (relative)")
    _compare("ConvNet", dslc_losses, torch_losses, state, _twin_weights(twin, ConvNetTwin.LAYOUT), initial,
             note=pools)


# ------------------------------------------------------------------ 2. the VAE (specs/vae.dsl)
VAE_BATCH = 64


class VAETwin(nn.Module):
    LAYOUT = {f"{model}.{layer}.{kind}": (f"{model.lower()}_{layer}.{kind}", kind == "weight")
              for model, layers in (("Encoder", ("h", "z_mean", "z_log_var")), ("Decoder", ("h", "x_hat")))
              for layer in layers for kind in ("weight", "bias")}

    def __init__(self):
        super().__init__()
        self.encoder_h = nn.Linear(784, 512)
        self.encoder_z_mean = nn.Linear(512, 2)
        self.encoder_z_log_var = nn.Linear(512, 2)
        self.decoder_h = nn.Linear(2, 512)
        self.decoder_x_hat = nn.Linear(512, 784)

    def loss(self, x, noise):
        h = F.relu(self.encoder_h(x))
        z_mean, z_log_var = self.encoder_z_mean(h), self.encoder_z_log_var(h)
        z = z_mean + torch.exp(0.5 * z_log_var) * noise  # the reparametrization, eps fed as random.0
        x_hat = torch.sigmoid(self.decoder_x_hat(F.relu(self.decoder_h(z))))
        recon = 784 * torch.mean((x - x_hat) ** 2)
        kl = torch.mean(-0.5 * torch.sum(1 + z_log_var - z_mean ** 2 - torch.exp(z_log_var), dim=1))
        return recon + kl


def test_vae_trajectory_matches_torch():
    model = _compile("vae.dsl", "train_vae")
    initial = _initial_weights(model)
    images, _ = _mnist(STEPS * VAE_BATCH)
    rng = np.random.default_rng(1)
    batches = [{"x": images[k * VAE_BATCH:(k + 1) * VAE_BATCH].reshape(VAE_BATCH, 784),
                "random.0": rng.standard_normal((VAE_BATCH, 2))} for k in range(STEPS)]
    dslc_losses, state = _train_dslc(model, batches)

    twin = VAETwin()
    _load_twin(twin, initial, VAETwin.LAYOUT)
    torch_losses = _train_twin(twin, lambda net, b: net.loss(b["x"], b["random.0"]), batches)
    _compare("VAE", dslc_losses, torch_losses, state, _twin_weights(twin, VAETwin.LAYOUT), initial)


# ------------------------------------------------------------------ 3. an LSTM over time steps
LSTM_BATCH = 64
HIDDEN = 64
# MNIST digits read as sequences of 28 rows of 28 pixels, one row per step of a `repeat` that carries
# the integer t, classified from the last hidden state. The cell is Keras' / torch's (gates i, f, g, o
# in that order): z = x_t Wx + b + h Wh;  c = sigmoid(f) c + sigmoid(i) tanh(g);  h = sigmoid(o) tanh(c).
# (Kept here rather than in specs/: test_specs.py shortens every Loop's trip count to compare with
# onnx.reference, and a differentiated repeat's reverse Loop indexes its history with the constant
# count - 1, folded at compile time, which the shortening does not rewrite.)
LSTM_SOURCE = """
model LSTM(x: f32[N, 28, 28]) -> logits {
    h = flatten(0 * x[:, :4, :16])                     # [N, 64] zeros: the initial state
    c = h
    t = 0                                              # the time step, carried by the loop
    repeat 28 {
        xz = dense(x[:, t], 256)                       # [N, 256]: row t
        hz = dense(h, 256, use_bias=false)             # [N, 256]: the recurrent part
        z  = xz + hz
        c  = sigmoid(z[:, 64:128]) * c + sigmoid(z[:, :64]) * tanh(z[:, 128:192])
        h  = sigmoid(z[:, 192:]) * tanh(c)
        t  = t + 1
    }
    logits = dense(h, 10)                              # [N, 10]
}

step train_lstm(x: f32[N, 28, 28], label: i64[N]) updates LSTM using adam(lr=0.001) {
    minimize sparse_categorical_crossentropy(LSTM(x), label, from_logits=true)
}
"""


class LSTMTwin(nn.Module):
    # torch's LSTMCell: gates = x W_ih^T + b_ih + h W_hh^T + b_hh, in the order i, f, g, o (as dslc's
    # spec slices them); dslc has no b_hh, so the twin's stays zero and out of training.
    LAYOUT = {"LSTM.xz.weight": ("cell.weight_ih", True), "LSTM.xz.bias": ("cell.bias_ih", False),
              "LSTM.hz.weight": ("cell.weight_hh", True),
              "LSTM.logits.weight": ("logits.weight", True), "LSTM.logits.bias": ("logits.bias", False)}

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(28, HIDDEN)
        self.logits = nn.Linear(HIDDEN, 10)
        with torch.no_grad():
            self.cell.bias_hh.zero_()
        self.cell.bias_hh.requires_grad_(False)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], HIDDEN)
        for t in range(x.shape[1]):  # unrolled by hand, one row per step
            h, c = self.cell(x[:, t], (h, c))
        return self.logits(h)


def test_lstm_trajectory_matches_torch():
    model = dslc.compile(dslc.loads(LSTM_SOURCE, "lstm.dsl"), "train_lstm", float64=True, random="input")
    assert [n.op_type for n in model.graph.node].count("Loop") == 2  # forward and reverse: not unrolled
    initial = _initial_weights(model)
    images, labels = _mnist(STEPS * LSTM_BATCH)
    batches = [{"x": images[k * LSTM_BATCH:(k + 1) * LSTM_BATCH],
                "label": labels[k * LSTM_BATCH:(k + 1) * LSTM_BATCH]} for k in range(STEPS)]
    dslc_losses, state = _train_dslc(model, batches)

    twin = LSTMTwin()
    _load_twin(twin, initial, LSTMTwin.LAYOUT)
    torch_losses = _train_twin(twin, lambda net, b: F.cross_entropy(net(b["x"]), b["label"]), batches)
    assert not twin.cell.bias_hh.any()
    _compare("LSTM", dslc_losses, torch_losses, state, _twin_weights(twin, LSTMTwin.LAYOUT), initial)
