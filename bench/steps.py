"""Whole training steps (forward + backward + optimizer update): dslc vs PyTorch eager and peers.

    python bench/steps.py                    # every case and section (~20 minutes on 2 cores)
    python bench/steps.py --quick            # smoke: small batches, 2 rounds, short sections
    python bench/steps.py --case convnet --case vae --rounds 8 --calls 3
    python bench/steps.py --case charlm --case lstm --case resnet --only steps   # issue 21's families
    python bench/steps.py --only steps       # sections: steps, e2e, compile, forward, scaling

Every contender runs in its own process (`--worker KIND`), commanded block by block by the
driver; the contenders alternate over rounds (each round: one untimed call, then --calls timed
calls; the contender that starts rotates). All get the same batch and the same initial weights
(dslc's initializers; dense [in, out] transposed into torch's [out, in]). The table gives the
median ms per whole training step, the ratio to PyTorch eager (median over rounds of the
per-round ratio) and each process's peak RSS (ru_maxrss, imports included).

Contenders: dslc's train-step graph in onnxruntime (CPU, 2 intra-op threads) with the default
session options, with disabled_optimizers=["NchwcTransformer"], and with that plus
session.set_denormal_as_zero; the same on CUDA when onnxruntime has a working CUDA provider;
PyTorch eager (torch.set_num_threads(2)); onnxruntime-training 1.19.2 artifacts (own venv,
`--ortt-python`, default $ORTT_PYTHON or ~/.cache/dslc/venv-ortt/bin/python); onnxsim 0.8.1 compile_training_loop where
the model fits its op set and optimizers (otherwise the reason is printed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ORTT_PYTHON, quiet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
# Between two contenders' turns: onnxruntime's (and OpenMP's) threads spin a while after a run, in
# the worker process that just ran; the next one's untimed call did not absorb it (a VAE step, 8 ms,
# ran 1.5x slower in the slot after another dslc worker's than in the first, the same graph).
SETTLE_S = 0.2

# name -> spec, step target, batch (full, quick), optimizer as torch gets it, the loss fn that the
# onnxruntime-training / onnxsim contenders differentiate (a typed fn compiled by dslc).
CASES = {
    "convnet": dict(spec="convnet.dsl", step="train_convnet", batch=64, quick=16, opt=("adam", 1e-3, 0.9),
                    model="ConvNet", desc="ConvNet conv32-conv64-fc128, batch 64, Adam",
                    loss_fn="fn bench_loss(image: f32[N, 1, 28, 28], label: i64[N]) {\n"
                            "    return sparse_categorical_crossentropy(ConvNet(image, training=true), label,"
                            " from_logits=true)\n}\n"),
    "node_convnet": dict(spec="convnet.dsl", step="train_mnist_node_convnet", batch=128, quick=16,
                         opt=("rmsprop", 1e-3, 0.9), model="MnistNodeConvNet",
                         desc="MnistNodeConvNet (594,922 params), batch 128, RMSProp",
                         loss_fn="fn bench_loss(image: f32[N, 1, 28, 28], label: f32[N, 10]) {\n"
                                 "    return categorical_crossentropy(MnistNodeConvNet(image, training=true), label)\n}\n"),
    "vae": dict(spec="vae.dsl", step="train_vae", batch=256, quick=16, opt=("adam", 1e-3, 0.9), model="VAE",
                desc="VAE 784-512-2-512-784, batch 256, Adam",
                loss_fn="fn bench_loss(x: f32[N, 784]) {\n    z_mean, z_log_var, z = Encoder(x, training=true)\n"
                        "    return vae_loss(x, Decoder(z, training=true), z_mean, z_log_var)\n}\n"),
    "acgan_d": dict(spec="acgan.dsl", step="train_discriminator", batch=100, quick=8, opt=("adam", 2e-4, 0.5),
                    model="Discriminator", desc="ACGAN discriminator step, batch 100 (+100 fakes), Adam",
                    loss_fn="fn bench_loss(real: f32[N, 1, 28, 28], real_class: i64[N], z: f32[N, 100], "
                            "fake_class: i64[N]) {\n"
                            "    fake = stop_gradient(Generator(z, fake_class, training=false))\n"
                            "    real_p, real_c = Discriminator(real, training=true)\n"
                            "    fake_p, fake_c = Discriminator(fake, training=true)\n"
                            "    return binary_crossentropy(real_p, 0.95) + binary_crossentropy(fake_p, 0.0)"
                            " + sparse_categorical_crossentropy(real_c, real_class)"
                            " + sparse_categorical_crossentropy(fake_c, fake_class)\n}\n"),
    "acgan_g": dict(spec="acgan.dsl", step="train_generator", batch=200, quick=8, opt=("adam", 2e-4, 0.5),
                    model="Generator", desc="ACGAN generator step, n = 200, Adam",
                    loss_fn="fn bench_loss(z: f32[M, 100], cls: i64[M]) {\n"
                            "    p, c = Discriminator(Generator(z, cls, training=true), training=true)\n"
                            "    return binary_crossentropy(p, 0.95) + sparse_categorical_crossentropy(c, cls)\n}\n"),
    "charlm": dict(spec="charlm.dsl", step="train_charlm", batch=32, quick=8, opt=("adam", 2e-3, 0.9), clip=1.0,
                   model="CharTransformer", desc="CharTransformer (2 blocks, d 64, 4 heads, context 64), batch 32, Adam",
                   loss_fn="fn bench_loss(chars: i64[N, 64], next: i64[N, 64]) {\n    return "
                           "sparse_categorical_crossentropy(CharTransformer(chars, training=true), next, from_logits=true)"
                           "\n}\n"),
    "lstm": dict(spec="lstm.dsl", step="train_lstm", batch=64, quick=8, opt=("adam", 5e-3, 0.9), clip=1.0,
                 model="CharLSTM", desc="CharLSTM (LSTM 128 over 32 characters, unrolled), batch 64, Adam",
                 loss_fn="fn bench_loss(chars: i64[N, 32], next: i64[N, 32]) {\n    return "
                         "sparse_categorical_crossentropy(CharLSTM(chars, training=true), next, from_logits=true)\n}\n"),
    "resnet": dict(spec="resnet.dsl", step="train_resnet", batch=32, quick=8, opt=("adam", 1e-3, 0.9),
                   model="DigitsResNet", desc="DigitsResNet (3 residual blocks, batch norms, 8x8 digits), batch 32, Adam",
                   loss_fn="fn bench_loss(image: f32[N, 1, 8, 8], label: i64[N]) {\n    return "
                           "sparse_categorical_crossentropy(DigitsResNet(image, training=true), label, from_logits=true)"
                           "\n}\n"),
}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "[ONNXRuntimeError]" in text:  # the location part is long; the reason comes after it
        text = text[text.index("[ONNXRuntimeError]"):]
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ================================================================== data and weights
def make_data(case: str, n: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    if case == "convnet":
        return {"image": rng.random((n, 1, 28, 28), dtype=np.float32), "label": rng.integers(0, 10, n)}
    if case == "node_convnet":
        return {"image": rng.random((n, 1, 28, 28), dtype=np.float32),
                "label": np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]}
    if case == "vae":
        return {"x": rng.random((n, 784), dtype=np.float32)}
    if case == "acgan_d":
        return {"real": rng.random((n, 1, 28, 28), dtype=np.float32) * 2 - 1, "real_class": rng.integers(0, 10, n)}
    if case == "acgan_g":
        return {"n": np.array(n, np.int64)}
    if case in ("charlm", "lstm"):  # character classes of the 103 in CPython's documentation
        seq = 64 if case == "charlm" else 32
        text = rng.integers(0, 103, (n, seq + 1))
        return {"chars": text[:, :-1], "next": text[:, 1:]}
    if case == "resnet":
        return {"image": rng.random((n, 1, 8, 8), dtype=np.float32), "label": rng.integers(0, 10, n)}
    raise KeyError(case)


def initializers(model) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def data_names(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


# ================================================================== PyTorch twins
class Noise:
    """Random draws for the torch models: fresh ones, or fixed ones (the check feeds dslc's)."""
    draws = None
    pos = 0

    @classmethod
    def take(cls):
        d = cls.draws[cls.pos]
        cls.pos += 1
        return d


def t_dropout(x, rate):
    import torch
    import torch.nn.functional as F

    if Noise.draws is None:
        return F.dropout(x, rate, training=True)
    u = torch.from_numpy(Noise.take())
    return x * (u >= rate).to(x.dtype) * (1.0 / (1.0 - rate))


def torch_models(case: str):
    """(trainable module, extra modules, {dslc weight name: torch tensor}, loss(batch) -> scalar)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cce_probs(p, onehot):  # Keras categorical_crossentropy from probabilities
        p = p / p.sum(1, keepdim=True)
        return -(onehot * p.clamp(1e-7, 1 - 1e-7).log()).sum(1).mean()

    def scce_probs(p, label):
        p = p / p.sum(1, keepdim=True)
        return -p.clamp(1e-7, 1 - 1e-7).log().gather(1, label[:, None]).mean()

    def bce(p, t):
        p = p.clamp(1e-7, 1 - 1e-7)
        return -(t * p.log() + (1 - t) * (1 - p).log()).mean()

    if case in ("charlm", "lstm", "resnet"):  # bench/twins.py's twins, in torch's own layers
        import twins
        m, names = twins.twin_resnet(keras_batch_norm=False) if case == "resnet" else getattr(twins, f"twin_{case}")()
        key, target = ("image", "label") if case == "resnet" else ("chars", "next")

        def loss(b):
            out = m(b[key])
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), b[target].reshape(-1))
        return m, [], names, loss
    if case == "convnet":
        class ConvNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
                self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
                self.hidden = nn.Linear(3136, 128)
                self.logits = nn.Linear(128, 10)

            def forward(self, x):
                x = F.max_pool2d(self.conv1(x).relu(), 2)
                x = F.max_pool2d(self.conv2(x).relu(), 2)
                return self.logits(t_dropout(self.hidden(x.flatten(1)).relu(), 0.25))
        m = ConvNet()
        return m, [], _named(m, "ConvNet"), lambda b: F.cross_entropy(m(b["image"]), b["label"])
    if case == "node_convnet":
        class Node(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.conv2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 32, 3)
                self.conv3, self.conv4 = nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
                self.hidden, self.probs = nn.Linear(1024, 512), nn.Linear(512, 10)

            def forward(self, x):
                x = F.max_pool2d(self.conv2(self.conv1(x).relu()).relu(), 2)
                x = F.max_pool2d(self.conv4(self.conv3(x).relu()).relu(), 2)
                x = self.hidden(t_dropout(x.flatten(1), 0.25)).relu()
                return self.probs(t_dropout(x, 0.5)).softmax(1)
        m = Node()
        return m, [], _named(m, "MnistNodeConvNet"), lambda b: cce_probs(m(b["image"]), b["label"])
    if case == "vae":
        class VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.e_h, self.e_mean, self.e_lv = nn.Linear(784, 512), nn.Linear(512, 2), nn.Linear(512, 2)
                self.d_h, self.d_out = nn.Linear(2, 512), nn.Linear(512, 784)

            def forward(self, x):
                h = self.e_h(x).relu()
                mean, lv = self.e_mean(h), self.e_lv(h)
                eps = torch.randn_like(mean) if Noise.draws is None else torch.from_numpy(Noise.take())
                z = mean + (0.5 * lv).exp() * eps
                x_hat = self.d_out(self.d_h(z).relu()).sigmoid()
                recon = 784 * ((x - x_hat) ** 2).mean()
                kl = (-0.5 * (1 + lv - mean ** 2 - lv.exp()).sum(1)).mean()
                return recon + kl
        m = VAE()
        names = {"Encoder.h": m.e_h, "Encoder.z_mean": m.e_mean, "Encoder.z_log_var": m.e_lv,
                 "Decoder.h": m.d_h, "Decoder.x_hat": m.d_out}
        return m, [], _from_layers(names), lambda b: m(b["x"])

    # ---- ACGAN
    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 100)
            self.fc = nn.Linear(100, 3456)
            self.up1 = nn.ConvTranspose2d(384, 192, 5)
            self.bn1 = nn.BatchNorm2d(192, eps=1e-3, momentum=0.01)
            self.up2 = nn.ConvTranspose2d(192, 96, 5, stride=2, padding=1)   # + crop: TF 'same'
            self.bn2 = nn.BatchNorm2d(96, eps=1e-3, momentum=0.01)
            self.image = nn.ConvTranspose2d(96, 1, 5, stride=2, padding=1)

        def forward(self, z, cls):
            h = self.fc(z * self.emb(cls)).relu().reshape(-1, 384, 3, 3)
            h = self.bn1(self.up1(h).relu())
            h = self.bn2(self.up2(h)[..., :14, :14].relu())
            return self.image(h)[..., :28, :28].tanh()

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 2), nn.Conv2d(32, 64, 3, padding=1)
            self.conv3, self.conv4 = nn.Conv2d(64, 128, 3, 2), nn.Conv2d(128, 256, 3, padding=1)
            self.realness, self.class_probs = nn.Linear(12544, 1), nn.Linear(12544, 10)

        def forward(self, x):
            act = lambda y: t_dropout(F.leaky_relu(y, 0.2), 0.3)  # noqa: E731
            x = act(self.conv1(F.pad(x, (0, 1, 0, 1))))   # TF 'same' at stride 2: the extra row at the end
            x = act(self.conv2(x))
            x = act(self.conv3(F.pad(x, (0, 1, 0, 1))))
            x = act(self.conv4(x)).flatten(1)
            return self.realness(x).sigmoid(), self.class_probs(x).softmax(1)

    g, d = Generator(), Discriminator()
    names = {**_named(g, "Generator"), **_named(d, "Discriminator")}
    for bn in ("bn1", "bn2"):
        names[f"Generator.{bn}.gamma"] = getattr(g, bn).weight
        names[f"Generator.{bn}.beta"] = getattr(g, bn).bias
        names[f"Generator.{bn}.moving_mean"] = getattr(g, bn).running_mean
        names[f"Generator.{bn}.moving_variance"] = getattr(g, bn).running_var

    def draws(n):
        if Noise.draws is None:
            return torch.rand(n, 100) * 2 - 1, torch.randint(0, 10, (n,))
        z, c = Noise.take(), Noise.take()
        return torch.from_numpy(z), torch.from_numpy(c)

    if case == "acgan_d":
        def loss_d(b):
            n = b["real"].shape[0]
            z, fc = draws(n)
            g.eval()
            with torch.no_grad():
                fake = g(z, fc)
            rp, rc = d(b["real"])
            fp, fcp = d(fake)
            return bce(rp, 0.95) + bce(fp, 0.0) + scce_probs(rc, b["real_class"]) + scce_probs(fcp, fc)
        return d, [g], names, loss_d

    def loss_g(b):
        z, c = draws(int(b["n"]))
        g.train()
        p, cp = d(g(z, c))
        return bce(p, 0.95) + scce_probs(cp, c)
    for p in d.parameters():
        p.requires_grad_(False)
    return g, [d], names, loss_g


def _named(module, prefix: str) -> dict:
    from torch import nn

    return _from_layers({f"{prefix}.{k}": m for k, m in module.named_children()
                         if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding))})


def _from_layers(layers: dict) -> dict:
    out = {}
    for name, m in layers.items():
        out[f"{name}.weight"] = m.weight
        if getattr(m, "bias", None) is not None:
            out[f"{name}.bias"] = m.bias
    return out


def load_into_torch(names: dict, weights: dict):
    import torch
    from torch import nn  # noqa: F401

    if any(isinstance(v, tuple) for v in names.values()):  # bench/twins.py's (tensor, layout) pairs
        import twins
        return twins.load_weights(names, weights)
    with torch.no_grad():
        for k, t in names.items():
            w = weights[k]
            if w.ndim == 2 and tuple(t.shape) != w.shape:  # dense [in, out] -> Linear [out, in]
                w = w.T
            t.copy_(torch.from_numpy(w.copy()))


def torch_optimizer(case: str, params):
    import torch

    kind, lr, beta1 = CASES[case]["opt"]
    if kind == "adam":  # dslc (Keras): eps outside the sqrt, inside the bias correction; torch: after it
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), eps=1e-7)
    # dslc (TF.js): w -= lr g / sqrt(ms + eps); torch: lr g / (sqrt(ms) + eps); rho 0.9 = alpha
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)


# ================================================================== workers
class Worker:
    """Setup, then serve `N` (one untimed + N timed steps -> {"ms": [...]}) and `quit` (-> rss)."""

    def __init__(self, work: Path, spec: dict):
        self.work, self.spec = work, spec

    def serve(self, proto) -> int:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                proto.write(json.dumps({"rss_mb": peak_rss_mb()}) + "\n")
                return 0
            n = int(cmd)
            self.call()
            times = []
            for _ in range(n):
                start = time.perf_counter()
                self.call()
                times.append((time.perf_counter() - start) * 1e3)
            proto.write(json.dumps({"ms": times}) + "\n")
        return 0


class DslcWorker(Worker):
    def setup(self):
        import numpy as np
        import onnxruntime as ort

        import dslc

        s = self.spec
        model = dslc.compile(str(ROOT / "specs" / CASES[s["case"]]["spec"]), CASES[s["case"]]["step"],
                             formulations=s.get("formulations"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if s["daz"]:
            so.add_session_config_entry("session.set_denormal_as_zero", "1")
        so.enable_mem_pattern = False  # as dslc's own sessions (dslc/runtime/session.py): the peak-memory choice
        providers = ["CUDAExecutionProvider"] if s["device"] == "cuda" else ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers,
                                         disabled_optimizers=["NchwcTransformer"] if s["no_nchwc"] else [])
        self.state = initializers(model)
        data = dict(np.load(self.work / "data.npz"))
        self.data = {k: data[k] for k in data_names(model)}
        self.outs = [o.name for o in self.sess.get_outputs()]

    def call(self):
        return run_and_feed_back(self.sess, self.outs, self.data, self.state)


def run_and_feed_back(sess, outs: list[str], data: dict, state: dict) -> float:
    """One compiled step: each output `X.next` replaces `X` in `state`; returns the loss."""
    values = sess.run(outs, {**data, **state})
    for name, v in zip(outs, values):
        if name.endswith(".next"):
            state[name[:-5]] = v
    return float(values[outs.index("loss")])


class TorchWorker(Worker):
    def setup(self):
        import numpy as np
        import torch

        torch.set_num_threads(THREADS)
        case = self.spec["case"]
        self.model, extra, names, self.loss = torch_models(case)
        load_into_torch(names, dict(np.load(self.work / "weights.npz")))
        self.model.train()
        self.opt = torch_optimizer(case, [p for p in self.model.parameters() if p.requires_grad])
        self.batch = {k: torch.from_numpy(v) for k, v in np.load(self.work / "data.npz").items()}

    def call(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.batch)
        loss.backward()
        if CASES[self.spec["case"]].get("clip"):  # the spec's clip_norm (dslc clips by the global norm too)
            import torch
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), CASES[self.spec["case"]]["clip"])
        self.opt.step()
        return loss.item()


class OnnxsimWorker(Worker):
    """onnxsim.compile_training_loop on dslc's forward ConvNet, rewritten as bench/gradients.py does."""

    def setup(self):
        import numpy as np
        import onnxsim

        import dslc
        import gradients as G

        data = dict(np.load(self.work / "data.npz"))
        G.BATCH = len(data["label"])
        weights = dict(np.load(self.work / "weights.npz"))
        forward = G.onnxsim_forward(dslc.compile(str(ROOT / "specs" / "convnet.dsl"), "ConvNet"),
                                    rewrite=True, dropout_mask=True)
        from onnx import numpy_helper
        for t in forward.graph.initializer:
            if t.name in weights:
                t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
        self.loop = onnxsim.compile_training_loop(forward, "loss", G.PARAMS, optimizer="adam")
        self.rng = np.random.default_rng(1)
        self.image, self.onehot = data["image"], np.eye(10, dtype=np.float32)[data["label"]]

    def call(self):
        import numpy as np

        mask = (self.rng.random((len(self.image), 128), dtype=np.float32) >= 0.25) * np.float32(1 / 0.75)
        return float(np.asarray(self.loop({"image": self.image, "onehot": self.onehot, "dropout_mask": mask},
                                          lr=1e-3)))


class OrttWorker(Worker):
    """Runs in the onnxruntime-training venv (no dslc, no torch): artifacts from dslc's loss fn."""

    def setup(self):
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnxruntime.training import artifacts, onnxblock
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        ort.set_default_logger_severity(3)
        s = self.spec
        model = onnx.load(str(self.work / "loss.onnx"))
        out = self.work / "ortt-artifacts"
        out.mkdir(exist_ok=True)

        class PassThrough(onnxblock.Block):  # the graph already ends in the scalar loss
            def build(self, loss_name):
                name = "bench_loss_out"
                self.base.graph.node.append(onnx.helper.make_node("Identity", [loss_name], [name]))
                return name

        artifacts.generate_artifacts(model, requires_grad=s["params"], frozen_params=s["frozen"],
                                     loss=PassThrough(), optimizer=artifacts.OptimType.AdamW,
                                     artifact_directory=str(out))
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        state = CheckpointState.load_checkpoint(str(out / "checkpoint"))
        self.module = Module(str(out / "training_model.onnx"), state, str(out / "eval_model.onnx"),
                             device="cpu", session_options=so)
        self.module.train()
        self.opt = Optimizer(str(out / "optimizer_model.onnx"), self.module)
        self.opt.set_learning_rate(s["lr"])
        self.data = dict(np.load(self.work / "ortt_data.npz"))
        self.names = self.module.input_names()
        self.random = {name: (shape, kind) for name, shape, kind in s["random"]}
        self.rng = np.random.default_rng(2)

    def call(self):
        import numpy as np

        feeds = dict(self.data)
        for name, (shape, kind) in self.random.items():
            feeds[name] = (self.rng.standard_normal(shape, dtype=np.float32) if kind == "normal"
                           else self.rng.random(shape, dtype=np.float32))
        loss = self.module(*[feeds[k] for k in self.names])
        self.opt.step()
        self.module.lazy_reset_grad()
        return float(loss)


WORKERS = {"dslc": DslcWorker, "torch": TorchWorker, "onnxsim": OnnxsimWorker, "ortt": OrttWorker}


def worker_main(kind: str, work: Path, spec_json: str) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter to stderr; the protocol stays clean
    sys.path.insert(0, str(ROOT))
    try:
        w = WORKERS[kind](work, json.loads(spec_json))
        start = time.perf_counter()
        w.setup()
        build = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        loss = w.call()
        first = (time.perf_counter() - start) * 1e3
        proto.write(json.dumps({"build_ms": build, "first_ms": first, "loss": loss}) + "\n")
    except Exception as e:  # noqa: BLE001 - reported to the driver, which skips this contender
        proto.write(json.dumps({"error": first_line(e)}) + "\n")
        return 1
    return w.serve(proto)


class Proc:
    """The driver's handle on one worker process."""

    def __init__(self, name: str, python: str, kind: str, work: Path, spec: dict):
        self.name = name
        self.log = open(work / f"{kind}-{abs(hash(name))}.log", "w")
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", kind, str(work),
                                      json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(THREADS)})
        hello = self._read()
        self.build_ms, self.first_ms, self.loss = hello["build_ms"], hello["first_ms"], hello["loss"]
        self.rss = float("nan")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text().strip().splitlines()[-2:]
            raise RuntimeError("worker exited: " + " | ".join(tail))
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def block(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        return self._read()["ms"]

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.rss = self._read()["rss_mb"]
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=20)
        self.log.close()


# ================================================================== driver: one case
def cuda_ok() -> bool:
    try:
        from dslc.runtime.session import cuda_available
        return cuda_available()
    except Exception:  # noqa: BLE001
        return False


def onnxsim_fit(case: str, loss_model) -> str | None:
    """Why onnxsim's compile_training_loop cannot take this case (None: it can, via the rewrite)."""
    try:
        from onnxsim import graph_grad
    except ImportError:
        return "onnxsim not installed (pip install onnxsim==0.8.1)"
    if case == "convnet":
        return None
    ops = {n.op_type for n in loss_model.graph.node} - set(graph_grad.supported_ops()) - {"Constant"}
    reasons = []
    if ops:
        reasons.append(f"no gradient rule for {', '.join(sorted(ops))} (dslc's loss graph)")
    if CASES[case]["opt"][0] not in ("adam",):
        reasons.append(f"no {CASES[case]['opt'][0]} optimizer (only adam, sgd_momentum or a CustomOptimizer)")
    reasons.append("dslc's random ops (counter-based hash: BitShift/BitwiseXor) would have to become fed inputs")
    return "; ".join(reasons)


def check_case(case: str, batch: int) -> str:
    """dslc's loss at steps 1 and 2 vs PyTorch's with identical weights, batch and random draws."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import dslc

    c = CASES[case]
    if case.startswith("acgan"):
        return "check: not done for ACGAN (its random draws -- z, classes, 4-8 dropout masks -- are not mapped)"
    model = dslc.compile(str(ROOT / "specs" / c["spec"]), c["step"], random="input")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    state = initializers(model)
    data = make_data(case, batch)
    rng = np.random.default_rng(7)
    rand_inputs = sorted((i for i in model.graph.input if i.name.startswith("random.")),
                         key=lambda i: int(i.name.split(".")[1]))
    draws = []
    for i in rand_inputs:
        shape = [batch if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim]
        draws.append(rng.standard_normal(shape).astype(np.float32) if case == "vae"
                     else rng.random(shape, dtype=np.float32))
    feeds_r = {i.name: d for i, d in zip(rand_inputs, draws)}
    outs = [o.name for o in sess.get_outputs()]
    dslc_losses = []
    for _ in range(2):
        vals = sess.run(outs, {**data, **state, **feeds_r})
        for n, v in zip(outs, vals):
            if n.endswith(".next"):
                state[n[:-5]] = v
        dslc_losses.append(float(vals[outs.index("loss")]))
    torch.manual_seed(0)
    m, extra, names, loss_fn = torch_models(case)
    load_into_torch(names, initializers(model))
    m.train()
    opt = torch_optimizer(case, [p for p in m.parameters() if p.requires_grad])
    batch_t = {k: torch.from_numpy(np.asarray(v)) for k, v in data.items()}
    torch_losses = []
    params = [p for p in m.parameters() if p.requires_grad]
    rmsprop = c["opt"][0] == "rmsprop"
    ms = [torch.zeros_like(p) for p in params]
    Noise.draws = draws
    try:
        for _ in range(2):
            Noise.pos = 0
            opt.zero_grad()
            loss = loss_fn(batch_t)
            loss.backward()
            if rmsprop:  # dslc's (TF.js) equation, eps inside the sqrt: torch.optim.RMSprop cannot do it
                with torch.no_grad():
                    for p, s_ in zip(params, ms):
                        s_.mul_(0.9).add_(0.1 * p.grad * p.grad)
                        p.sub_(c["opt"][1] * p.grad / (s_ + 1e-7).sqrt())
            else:
                if c.get("clip"):
                    torch.nn.utils.clip_grad_norm_(params, c["clip"])
                opt.step()
            torch_losses.append(loss.item())
    finally:
        Noise.draws = None
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(dslc_losses, torch_losses)]
    ok = rel[0] <= 1e-4 and rel[1] <= 1e-3
    return (f"check: loss step 1 dslc {dslc_losses[0]:.6f} torch {torch_losses[0]:.6f} (rel {rel[0]:.1e}); "
            f"step 2 (after one update) dslc {dslc_losses[1]:.6f} torch {torch_losses[1]:.6f} (rel {rel[1]:.1e})"
            f" {'PASS' if ok else 'FAIL'}" + (" (torch side: a hand-written update with dslc's RMSProp "
                                              "equation; the timed torch.optim.RMSprop puts eps outside the sqrt)"
                                              if rmsprop else ""))


def prepare_case(case: str, batch: int, work: Path, ortt_ok: bool) -> tuple[dict, list[str]]:
    """Write data.npz, weights.npz (and loss.onnx + ortt_data.npz for onnxruntime-training)."""
    import numpy as np
    import onnx

    import dslc

    c = CASES[case]
    notes = []
    work.mkdir(parents=True, exist_ok=True)
    model = dslc.compile(str(ROOT / "specs" / c["spec"]), c["step"])
    weights = {k: v for k, v in initializers(model).items() if k not in ("step", "seed") and "." in k
               and not k.startswith(("adam.", "rmsprop."))}
    np.savez(work / "weights.npz", **weights)
    data = make_data(case, batch)
    np.savez(work / "data.npz", **data)
    # The loss as a typed fn, for the contenders that differentiate a forward graph themselves.
    spec_dir = work / "spec"
    spec_dir.mkdir(exist_ok=True)
    for f in (ROOT / "specs").glob("*.dsl"):
        (spec_dir / f.name).write_text(f.read_text())
    (spec_dir / "bench_loss.dsl").write_text(f'import "{c["spec"]}"\n' + c["loss_fn"])
    loss_model = dslc.compile(str(spec_dir / "bench_loss.dsl"), "bench_loss")
    info = {"loss_model": loss_model}
    # onnxruntime-training 1.19 has no kernels for the integer ops of dslc's in-graph random generator
    # (Mul on unsigned ints): its graph takes the random draws as inputs, drawn in numpy per call.
    ortt_model = dslc.compile(str(spec_dir / "bench_loss.dsl"), "bench_loss", random="input")
    random_inputs = [[i.name, [batch if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim],
                      "normal" if case == "vae" else "uniform"]
                     for i in ortt_model.graph.input if i.name.startswith("random.")]
    if ortt_ok:
        loss_model = ortt_model
        inits = {t.name for t in loss_model.graph.initializer}
        train_prefix = c["model"] if case != "vae" else ("Encoder.", "Decoder.")
        params = [t.name for t in loss_model.graph.initializer
                  if t.name.startswith(train_prefix) and "moving_" not in t.name]
        frozen = sorted(inits - set(params) - {i.name for i in loss_model.graph.input})
        for t in loss_model.graph.initializer:
            if t.name in weights:
                t.CopyFrom(onnx.numpy_helper.from_array(weights[t.name], t.name))
        onnx.save(loss_model, work / "loss.onnx")
        rng = np.random.default_rng(3)
        feeds = dict(data)
        if case == "acgan_d":
            feeds.update(z=rng.uniform(-1, 1, (batch, 100)).astype(np.float32), fake_class=rng.integers(0, 10, batch))
        if case == "acgan_g":
            feeds = dict(z=rng.uniform(-1, 1, (batch, 100)).astype(np.float32), cls=rng.integers(0, 10, batch))
        np.savez(work / "ortt_data.npz", **feeds)
        info.update(params=params, frozen=frozen, lr=c["opt"][1], random=random_inputs)
        notes.append("onnxruntime-training: its graph is dslc's loss as a typed fn compiled with random=input "
                     "(it has no kernels for dslc's integer random-generator ops); the dropout masks / noise "
                     "are drawn in numpy every step (timed)")
        if case == "acgan_d":
            notes.append("onnxruntime-training: z and fake classes are fed (drawn once in numpy), "
                         "not drawn in the graph")
        if case == "acgan_g":
            notes.append("onnxruntime-training: z and classes are fed, not drawn in the graph")
        if c["opt"][0] != "adam":
            notes.append(f"onnxruntime-training: AdamW (its artifacts offer AdamW and SGD, no {c['opt'][0]})")
        else:
            notes.append("onnxruntime-training: AdamW (its artifacts' Adam flavour; weight decay as generated)")
    return info, notes


def run_rounds(procs: list, rounds: int, calls: int) -> tuple[dict, dict]:
    times = {p.name: [] for p in procs}
    per_round = {p.name: [] for p in procs}
    for r in range(rounds):
        order = procs[r % len(procs):] + procs[:r % len(procs)]
        for p in order:
            ms = p.block(calls)
            times[p.name] += ms
            per_round[p.name].append(statistics.median(ms))
            time.sleep(SETTLE_S)
    return times, per_round


def bench_case(case: str, args, tmp: Path, out: list[str], session_table: list) -> None:
    c = CASES[case]
    batch = c["quick"] if args.quick else c["batch"]
    work = tmp / case
    ortt_ok = os.path.exists(args.ortt_python)
    info, notes = prepare_case(case, batch, work, ortt_ok)
    try:
        notes.insert(0, check_case(case, min(batch, 32)))
    except Exception as e:  # noqa: BLE001
        notes.insert(0, f"check failed to run: {first_line(e)}")
    me = sys.executable
    wanted = [("dslc ORT CPU, default options", me, "dslc", dict(device="cpu", no_nchwc=False, daz=False)),
              ("dslc ORT CPU, -NchwcTransformer", me, "dslc", dict(device="cpu", no_nchwc=True, daz=False)),
              ("dslc ORT CPU, -Nchwc +denormal_as_zero", me, "dslc", dict(device="cpu", no_nchwc=True, daz=True)),
              ("PyTorch eager", me, "torch", {})]
    skipped = []
    if args.tune:  # the tuner's picks for this machine (dslc tune), a contender beside the static rules
        import dslc
        t = dslc.tune(ROOT / "specs" / c["spec"], c["step"], batch=batch, budget=args.tune, cache=False)
        picks = ", ".join(f"{k}={v}" for k, v in t.picks.items()) or "the static picks"
        wanted.insert(1, ("dslc ORT CPU, tuned", me, "dslc", dict(device="cpu", no_nchwc=t.session() == "no-nchwc",
                                                                   daz=False, formulations=t.formulations())))
        notes.append(f"tuned ({t.seconds:.0f} s, budget {args.tune:.0f} s): {picks}")
    if cuda_ok():
        wanted.insert(3, ("dslc ORT CUDA", me, "dslc", dict(device="cuda", no_nchwc=False, daz=False)))
    else:
        skipped.append("dslc ORT CUDA: no working CUDA provider on this machine")
    if ortt_ok:
        wanted.append(("onnxruntime-training 1.19.2", args.ortt_python, "ortt",
                       {k: info[k] for k in ("params", "frozen", "lr", "random")}))
    else:
        skipped.append(f"onnxruntime-training: no venv python at {args.ortt_python}")
    why = onnxsim_fit(case, info["loss_model"])
    if why is None and not args.no_onnxsim:
        wanted.append(("onnxsim compile_training_loop", me, "onnxsim", {}))
        notes.append("onnxsim: dslc's forward ConvNet with Flatten -> Reshape, static batch, dropout as a fed "
                     "mask (numpy, timed), one-hot labels, log-softmax loss from primitive ops (as bench/gradients.py)")
    else:
        skipped.append(f"onnxsim: {why or '--no-onnxsim'}")
    procs = []
    for name, python, kind, spec in wanted:
        try:
            procs.append(Proc(name, python, kind, work, {"case": case, **spec}))
        except Exception as e:  # noqa: BLE001
            skipped.append(f"{name}: {first_line(e)}")
    try:
        times, per_round = run_rounds(procs, args.rounds, args.calls)
    finally:
        for p in procs:
            p.close()
    base = "PyTorch eager" if "PyTorch eager" in times else None
    out.append(f"\n### {case}: {c['desc']}" + (f" (--quick: batch {batch})" if args.quick else "") + "\n")
    out.append("| contender | median ms/step | vs PyTorch | peak RSS MB | build ms | first ms | loss at call 1 |")
    out.append("|---|---|---|---|---|---|---|")
    for p in procs:
        med = statistics.median(times[p.name])
        ratio = (statistics.median(a / b for a, b in zip(per_round[p.name], per_round[base])) if base else float("nan"))
        out.append(f"| {p.name} | {med:.1f} | {ratio:.2f}x | {p.rss:.0f} | {p.build_ms:.0f} | {p.first_ms:.1f} | "
                   f"{p.loss:.4f} |")
    dslc_rows = {p.name: statistics.median(a / b for a, b in zip(per_round[p.name], per_round[base]))
                 for p in procs if p.name.startswith("dslc ORT CPU") and base}
    if dslc_rows:
        session_table.append((case, dslc_rows))
    out.append("")
    for n in notes:
        out.append(f"- {n}")
    for s in skipped:
        out.append(f"- skipped: {s}")
    print("\n".join(out[-(len(procs) + len(notes) + len(skipped) + 4):]), flush=True)


# ================================================================== end-to-end epoch
E2E_TORCH = r'''
import sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/bench")
import steps
torch.set_num_threads(2)
K, out = int(sys.argv[2]), sys.argv[3]
d = np.load(sys.argv[1] + "/dslc/data/embedded.npz")          # data loading, as dslc train does
images = (d["mnist_train_image"].astype(np.float32) / 255)[:, None]
labels = d["mnist_train_label"].astype(np.int64)
m, _, names, loss_fn = steps.torch_models("convnet")
steps.load_into_torch(names, dict(np.load(sys.argv[4])))
m.train()
opt = steps.torch_optimizer("convnet", m.parameters())
order = np.random.default_rng(0).permutation(len(images))
for b in range(K):
    idx = order[b * 64:(b + 1) * 64]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn({"image": torch.from_numpy(images[idx]), "label": torch.from_numpy(labels[idx])})
    loss.backward(); opt.step()
    if not np.isfinite(loss.item()):
        raise SystemExit("non-finite loss")
np.savez(out + "/checkpoint.npz", **{k: v.detach().numpy() for k, v in names.items()},
         **{f"opt/{i}": s["exp_avg"].numpy() for i, s in enumerate(opt.state.values())})
'''


def bench_e2e(args, tmp: Path, out: list[str]) -> None:
    import numpy as np

    import dslc

    k = 5 if args.quick else 78
    rounds = 1 if args.quick else 3
    work = tmp / "e2e"
    work.mkdir()
    model = dslc.compile(str(ROOT / "specs" / "convnet.dsl"), "train_convnet")
    np.savez(work / "weights.npz", **initializers(model))
    (work / "torch_e2e.py").write_text(E2E_TORCH)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmds = {"dslc train (CLI process)": [sys.executable, "-m", "dslc.cli", "train", str(ROOT / "specs" / "convnet.dsl"),
                                         "--max-steps", str(k), "--device", "cpu", "--out", str(work / "dslc-out")],
            "PyTorch loop (process)": [sys.executable, str(work / "torch_e2e.py"), str(ROOT), str(k), str(work),
                                       str(work / "weights.npz")]}
    walls = {n: [] for n in cmds}
    rss = {n: [] for n in cmds}
    for r in range(rounds):
        for n in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
            import shutil
            shutil.rmtree(work / "dslc-out", ignore_errors=True)
            start = time.perf_counter()
            res = subprocess.run(["/usr/bin/time", "-f", "RSSKB %M", *cmds[n]], capture_output=True, text=True,
                                 env=env, cwd=str(ROOT))
            walls[n].append(time.perf_counter() - start)
            if res.returncode:
                out.append(f"- {n} failed: {res.stderr.strip().splitlines()[-1:]}")
            m = re.search(r"RSSKB (\d+)", res.stderr)
            rss[n].append(int(m.group(1)) / 1024 if m else float("nan"))
    base = statistics.median(walls["PyTorch loop (process)"])
    out.append(f"\n### End-to-end: {k} training steps of ConvNet on MNIST, batch 64, Adam, whole process\n")
    out.append(f"`dslc train specs/convnet.dsl --max-steps {k} --device cpu` vs the same loop in PyTorch "
               f"(the embedded 5,000-image MNIST subset -- no full MNIST on this machine -- so one epoch is 79 "
               f"batches; --max-steps {k} stops before the last, 8-image batch, so neither side evaluates or "
               "draws pictures). Timed: the process, from start to exit (imports, compile / model build, data "
               f"loading, shuffling, the steps, the checkpoint); median of {rounds} alternating runs.\n")
    out.append("| contender | median s | vs PyTorch | peak RSS MB |")
    out.append("|---|---|---|---|")
    for n in cmds:
        out.append(f"| {n} | {statistics.median(walls[n]):.2f} | {statistics.median(walls[n]) / base:.2f}x | "
                   f"{statistics.median(rss[n]):.0f} |")
    print("\n".join(out[-5:]), flush=True)


# ================================================================== compile time, forward inference
def bench_compile(args, tmp: Path, out: list[str]) -> None:
    import numpy as np
    import torch

    import dslc

    reps = 2 if args.quick else 5
    spec = str(ROOT / "specs" / "convnet.dsl")
    dslc.compile(spec, "train_convnet")  # parser cache warm
    d_ms = []
    for _ in range(reps):
        start = time.perf_counter()
        dslc.compile(spec, "train_convnet")
        d_ms.append((time.perf_counter() - start) * 1e3)
    f_ms = []  # the forward graph alone, what torch.onnx.export writes
    for _ in range(reps):
        start = time.perf_counter()
        dslc.compile(spec, "ConvNet")
        f_ms.append((time.perf_counter() - start) * 1e3)
    cli = []
    for _ in range(max(1, reps // 2)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dslc.cli", "compile", spec, "-o", str(tmp / "cc"), "--target",
                        "train_convnet"], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        cli.append((time.perf_counter() - start) * 1e3)
    m, _, names, _ = torch_models("convnet")
    m.eval()
    x = torch.zeros(64, 1, 28, 28)
    t_ms = []
    for i in range(reps):
        start = time.perf_counter()
        with quiet():
            torch.onnx.export(m, (x,), str(tmp / "torch_convnet.onnx"), dynamo=False, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": {0: "N"}}, opset_version=17)
        t_ms.append((time.perf_counter() - start) * 1e3)
    dyn_ms, dyn_note = [], ""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        for i in range(reps + 1):  # the first call sets the exporter up: left out
            start = time.perf_counter()
            with quiet():
                torch.onnx.export(m, (x,), str(tmp / "torch_dynamo.onnx"), dynamo=True, input_names=["image"],
                                  output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("N")}})
            if i:
                dyn_ms.append((time.perf_counter() - start) * 1e3)
    except Exception as e:  # noqa: BLE001
        dyn_note = f"dynamo exporter: {first_line(e)}"
    gen, mm = "n/a (no onnxruntime-training venv)", None
    if os.path.exists(args.ortt_python):
        import onnx
        from onnx import helper as oh
        mdl = onnx.load(str(tmp / "torch_convnet.onnx"))
        mdl.ir_version = min(mdl.ir_version, 9)
        onnx.save(mdl, str(tmp / "torch_convnet.onnx"))
        code = ("import os,sys,time,onnx\nfrom onnxruntime.training import artifacts\nts=[]\n"
                f"for i in range({reps}):\n m=onnx.load(sys.argv[1]); os.makedirs(sys.argv[2]+str(i)); s=time.perf_counter()\n"
                " artifacts.generate_artifacts(m, requires_grad=[t.name for t in m.graph.initializer if t.data_type==1],"
                " loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.AdamW,"
                " artifact_directory=sys.argv[2]+str(i))\n ts.append((time.perf_counter()-s)*1e3)\n"
                "ts.sort(); print('MS', ts[len(ts)//2])\n")
        res = subprocess.run([args.ortt_python, "-c", code, str(tmp / "torch_convnet.onnx"), str(tmp / "gen")],
                             capture_output=True, text=True)
        mm = re.search(r"MS ([0-9.]+)", res.stdout)
        gen = f"{float(mm.group(1)):.0f}" if mm else f"failed: {(res.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        del oh
    dm, tm = statistics.median(d_ms), statistics.median(t_ms)
    out.append("\n### Compile time: ConvNet training step (convnet.dsl)\n")
    out.append(f"Median of {reps} warm in-process calls (imports and lark's parser build excluded).\n")
    out.append("| what | median ms |")
    out.append("|---|---|")
    out.append(f"| `dslc.compile(convnet.dsl, 'train_convnet')` (whole step graph: fwd + bwd + Adam) | {dm:.0f} |")
    out.append(f"| `dslc compile specs/convnet.dsl --target train_convnet` (CLI process, imports included) | "
               f"{statistics.median(cli):.0f} |")
    fm = statistics.median(f_ms)
    out.append(f"| `dslc.compile(convnet.dsl, 'ConvNet')` (forward graph) | {fm:.1f} |")
    if dyn_ms:
        dy = statistics.median(dyn_ms)
        out.append(f"| `torch.onnx.export` (dynamo exporter, torch's default, forward only) | {dy:.0f} "
                   f"({dy / fm:.0f}x dslc's forward) |")
    out.append(f"| `torch.onnx.export` (TorchScript exporter, forward only) | {tm:.0f} ({tm / fm:.1f}x dslc's forward) |")
    out.append(f"| onnxruntime-training `generate_artifacts` on that export (CrossEntropyLoss, AdamW) | {gen} |")
    if mm:
        out.append(f"| torch.onnx.export + generate_artifacts | {tm + float(mm.group(1)):.0f} "
                   f"({(tm + float(mm.group(1))) / dm:.1f}x dslc) |")
    if not dyn_ms:
        out.append(f"\nThe dynamo exporter (torch's default) did not run: {dyn_note or 'onnxscript missing'}.")
    print("\n".join(out[-12:]), flush=True)

    # ---- forward inference
    import onnxruntime as ort
    fwd = dslc.compile(spec, "ConvNet")
    w = initializers(fwd)
    load_into_torch(names, w)
    with quiet():
        torch.onnx.export(m, (x,), str(tmp / "torch_convnet.onnx"), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "N"}}, opset_version=17)

    def sess(model_bytes, no_nchwc=False, optimized_to=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if optimized_to:
            so.optimized_model_filepath = str(optimized_to)
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["NchwcTransformer"] if no_nchwc else [])
    torch_bytes = (tmp / "torch_convnet.onnx").read_bytes()
    contenders = {"dslc ConvNet forward, default options": sess(fwd.SerializeToString(), optimized_to=tmp / "opt_dslc.onnx"),
                  "dslc ConvNet forward, -NchwcTransformer": sess(fwd.SerializeToString(), True),
                  "torch.onnx.export ConvNet, default options": sess(torch_bytes, optimized_to=tmp / "opt_torch.onnx"),
                  "torch.onnx.export ConvNet, -NchwcTransformer": sess(torch_bytes, True)}
    import onnx
    # what onnxruntime runs after its own rewrites, for both graphs: equal op lists mean any gap is noise
    optimized = [[n.op_type for n in onnx.load(str(tmp / f)).graph.node] for f in ("opt_dslc.onnx", "opt_torch.onnx")]
    img = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    outs = {k: s.run(None, {"image": img})[0] for k, s in contenders.items()}
    diff = float(np.abs(outs[list(outs)[0]] - outs[list(outs)[2]]).max())
    rounds, calls = (3, 5) if args.quick else (15, 10)
    times = {k: [] for k in contenders}
    per_round = {k: [] for k in contenders}
    keys = list(contenders)
    for r in range(rounds):
        for k in keys[r % 4:] + keys[:r % 4]:
            s = contenders[k]
            s.run(None, {"image": img})
            ms = []
            for _ in range(calls):
                start = time.perf_counter()
                s.run(None, {"image": img})
                ms.append((time.perf_counter() - start) * 1e3)
            times[k] += ms
            per_round[k].append(statistics.median(ms))
    base = keys[2]
    out.append("\n### Forward inference: ConvNet, batch 64, onnxruntime CPU 2 threads\n")
    out.append(f"Same weights in both graphs (max |logit diff| {diff:.1e}); {rounds} interleaved rounds x {calls} "
               "calls, in one process; the ratio is to the torch.onnx.export graph with default options. After "
               "onnxruntime's rewrites (default options) the two graphs run "
               + ("the same ops: " + ", ".join(optimized[0]) if optimized[0] == optimized[1] else
                  f"different ops: dslc {', '.join(optimized[0])}; torch {', '.join(optimized[1])}") + ".\n")
    out.append("| graph | median ms | vs torch.onnx.export graph | nodes |")
    out.append("|---|---|---|---|")
    nodes = {keys[0]: len(fwd.graph.node), keys[1]: len(fwd.graph.node)}
    tn = len(onnx.load_from_string(torch_bytes).graph.node)
    for k in keys:
        ratio = statistics.median(a / b for a, b in zip(per_round[k], per_round[base]))
        out.append(f"| {k} | {statistics.median(times[k]):.2f} | {ratio:.2f}x | {nodes.get(k, tn)} |")
    print("\n".join(out[-8:]), flush=True)


# ================================================================== scaling
def deep_dsl(layers: int, kind: str) -> str:
    if kind == "dense":
        lines = [f"    h{i} = dense(h{i - 1}, 128) |> relu" for i in range(1, layers + 1)]
        return ("model Deep(h0: f32[N, 128]) -> y {\n" + "\n".join(lines) + f"\n    y = dense(h{layers}, 10)\n}}\n"
                "step train_deep(x: f32[N, 128], label: i64[N]) updates Deep using adam(lr=0.001) {\n"
                "    minimize sparse_categorical_crossentropy(Deep(x), label, from_logits=true)\n}\n")
    lines = [f"    h{i} = conv2d(h{i - 1}, 8, kernel=3, padding=same) |> relu" for i in range(1, layers + 1)]
    return ("model Deep(h0: f32[N, 8, 8, 8]) -> y {\n" + "\n".join(lines) +
            f"\n    y = dense(flatten(h{layers}), 10)\n}}\n"
            "step train_deep(x: f32[N, 8, 8, 8], label: i64[N]) updates Deep using adam(lr=0.001) {\n"
            "    minimize sparse_categorical_crossentropy(Deep(x), label, from_logits=true)\n}\n")


def bench_scaling(args, tmp: Path, out: list[str]) -> None:
    import numpy as np

    import dslc
    from dslc.runtime.session import make_session

    sizes = [25, 50] if args.quick else [25, 50, 100, 200]
    rounds = args.rounds
    out.append("\n### Scaling: generated deep models (compile time and step time vs depth)\n")
    out.append("Dense: L x (dense 128 + relu) on f32[N, 128], batch 32; conv: L x (conv2d 8 ch 3x3 same + relu) on "
               "f32[N, 8, 8, 8], batch 16; then dense(10), cross-entropy, Adam. The depths of one kind alternate "
               f"within each of {rounds} rounds (the machine's speed drifts): compile = median over the rounds of one "
               "`dslc.compile` of the step from .dsl text; step = dslc's step graph in onnxruntime CPU (2 threads, "
               "dslc's session options), median over the rounds of each round's median of 5 steps. x2 = ratio to the "
               "previous depth (2.0 = linear).\n")
    out.append("| model | layers | graph nodes | compile ms | x2 | step ms | x2 |")
    out.append("|---|---|---|---|---|---|---|")
    for kind, batch, shape in (("dense", 32, (128,)), ("conv", 16, (8, 8, 8))):
        paths, compile_ms, step_ms, runs = {}, {L: [] for L in sizes}, {L: [] for L in sizes}, {}
        for L in sizes:
            paths[L] = tmp / f"deep_{kind}_{L}.dsl"
            paths[L].write_text(deep_dsl(L, kind))
        rng = np.random.default_rng(0)
        feeds = {"x": rng.random((batch, *shape), dtype=np.float32), "label": rng.integers(0, 10, batch)}
        for r in range(rounds + 1):  # round 0 warms up (parser, sessions) and is not counted
            for L in sizes:
                start = time.perf_counter()
                model = dslc.compile(str(paths[L]), "train_deep")
                if r:
                    compile_ms[L].append((time.perf_counter() - start) * 1e3)
                if L not in runs:
                    # dslc's own session settings (denormals as zero among them: through 200 relu convs the
                    # gradients vanish into denormals, ~30% of the step's outputs, which made steps 2-3x slower)
                    s = make_session(model, "cpu", threads=THREADS)
                    runs[L] = (s, initializers(model), [o.name for o in s.get_outputs()], len(model.graph.node))
                s, state, outs, _ = runs[L]
                s.run(outs, {**feeds, **state})
                ms = []
                for _ in range(5):
                    start = time.perf_counter()
                    vals = s.run(outs, {**feeds, **state})
                    ms.append((time.perf_counter() - start) * 1e3)
                    state.update({n[:-5]: v for n, v in zip(outs, vals) if n.endswith(".next")})
                if r:
                    step_ms[L].append(statistics.median(ms))
        prev = None
        for L in sizes:
            cm, sm = statistics.median(compile_ms[L]), statistics.median(step_ms[L])
            x2c = f"{cm / prev[0]:.2f}" if prev else "-"
            x2s = f"{sm / prev[1]:.2f}" if prev else "-"
            out.append(f"| {kind} | {L} | {runs[L][3]} | {cm:.0f} | {x2c} | {sm:.1f} | {x2s} |")
            print(out[-1], flush=True)
            prev = (cm, sm)


# ================================================================== main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6; --quick 2)")
    ap.add_argument("--calls", type=int, default=None, help="timed steps per contender per round (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke: small batches, 2 rounds, short sections")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="only these cases (repeatable)")
    ap.add_argument("--only", action="append", choices=["steps", "e2e", "compile", "scaling", "check"],
                    help="only these sections (repeatable; compile includes forward inference)")
    ap.add_argument("--ortt-python", default=DEFAULT_ORTT_PYTHON)
    ap.add_argument("--no-onnxsim", action="store_true")
    ap.add_argument("--tune", type=float, default=0, metavar="SECONDS",
                    help="also time dslc with `dslc tune`'s picks, tuned this long per case (default: off)")
    ap.add_argument("--report", metavar="FILE", help="also write the tables (markdown) to FILE")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "DIR", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker[0], Path(args.worker[1]), args.worker[2])
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.calls = args.calls or (2 if args.quick else 3)
    sys.path.insert(0, str(ROOT))
    with quiet():
        import onnxruntime as ort
        import torch
    ort.set_default_logger_severity(3)
    torch.set_num_threads(THREADS)
    sections = args.only or ["steps", "e2e", "compile", "scaling"]
    out: list[str] = []
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; rounds {args.rounds} x calls {args.calls}"
          + (" (--quick)" if args.quick else ""), flush=True)
    session_table: list = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dslc-bench-steps-") as tmp:
        tmp = Path(tmp)
        if sections == ["check"]:
            for case in args.case or list(CASES):
                print(f"{case}: {check_case(case, 32)}", flush=True)
        if "steps" in sections:
            out.append("\n## Training steps (median ms per whole step: forward + backward + optimizer update)")
            for case in args.case or list(CASES):
                try:
                    bench_case(case, args, tmp, out, session_table)
                except Exception as e:  # noqa: BLE001
                    out.append(f"\n### {case}: failed: {first_line(e)}")
                    print(out[-1], flush=True)
        if "e2e" in sections:
            bench_e2e(args, tmp, out)
        if "compile" in sections:
            bench_compile(args, tmp, out)
        if "scaling" in sections:
            bench_scaling(args, tmp, out)
    if session_table:
        out.append("\n### Session options for dslc's step graphs (ratio to PyTorch, same rounds; lower is better)\n")
        columns = list(dict.fromkeys(name for _, rows in session_table for name in rows))
        out.append("| case | " + " | ".join(c.replace("dslc ORT CPU, ", "") for c in columns) + " | fastest |")
        out.append("|---|" + "---|" * (len(columns) + 1))
        for case, rows in session_table:
            best = min(rows, key=rows.get).replace("dslc ORT CPU, ", "")
            out.append(f"| {case} | " + " | ".join(f"{rows[c]:.2f}x" if c in rows else "-" for c in columns)
                       + f" | {best} |")
        print("\n".join(out[-(len(session_table) + 4):]))
        print("note: denormals only appear once losses get tiny (late in training); these short runs from "
              "fresh weights cannot show set_denormal_as_zero's benefit, only its cost.")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
    if args.report:
        Path(args.report).write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
