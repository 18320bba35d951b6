"""PyTorch twins of the family specs, trained as `dslc train` trains them, over several seeds.

    python bench/twins.py tabular --seeds 3          # wine and diabetes (specs/tabular.dsl)
    python bench/twins.py digits charlm lstm resnet --seeds 3
    python bench/twins.py all --check-only           # the check of every twin, no training

For each seed, dslc trains the spec's `train` declaration through `dslc.train` (the real pipeline,
nothing replaced), and its twin -- a torch model written with torch's own layers (nn.Linear,
nn.Conv2d, nn.LSTM, nn.MultiheadAttention, nn.LayerNorm, nn.Embedding) -- trains with:

  - the SAME initial weights: the initial state of dslc's compiled step for that seed (the weights
    `dslc train` starts from), copied into torch's layout (dense [in, out] -> Linear [out, in]; the
    attention's query/key/value kernels stacked into in_proj_weight; an LSTM's single bias as
    bias_ih_l0, with bias_hh_l0 held at zero);
  - the SAME batches in the same order: drawn from dslc's own trainer (`Trainer._load_data`, its
    `Fields` pipes, `epoch_order(n, seed, epoch)` and `batches`), so preprocessing, the validation
    hold-out, standardisation and the short last batch are dslc's;
  - the SAME steps and optimizer: Keras' Adam (eps=1e-7 outside the sqrt, inside the bias
    correction), global-norm clipping as tf.clip_by_global_norm, the options read from the step's
    `using adam(...)`; batch norm as Keras' (the spec's momentum on the old value, the biased batch
    variance in the moving statistics, eps 1e-3), layer norm eps 1e-3;
  - the SAME evaluation: the spec's first `evaluate` measure on the same split (test where the data
    has one, else the validation share), computed as dslc/runtime/evaluate.py does.

Before training, one check per spec (`check`): from the same weights, dslc's compiled step (run as
its trainer runs it) and the twin's step give the same loss on the first batch (relative 1e-5) and
again on the second after one update (1e-4); then every weight and batch-norm statistic agrees
(1e-4 of its largest value) and dslc's trainer and the twin evaluate them alike. The table: the
final figure per seed, mean and spread (min..max) for both, and whether dslc's mean lies inside the
twin's spread. Runs are shortened for the comparison where a spec's full run takes minutes (see
CASES: `epochs`); the README's results rows are full runs.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
# The twin's torch runs one thread: on a shared machine OpenMP threads that wait spin (a digits
# twin took 268 s on two threads at load 12, 14 s on one), and its figures are compared, not times.
THREADS = 1


# ================================================================== the twins
def _torch():
    import torch
    return torch


def twin_wine():
    from torch import nn

    class WineMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.logits = nn.Linear(13, 32), nn.Linear(32, 3)

        def forward(self, x):
            return self.logits(self.hidden(x).relu())
    m = WineMLP()
    return m, {**dense("WineMLP.hidden", m.hidden), **dense("WineMLP.logits", m.logits)}


def twin_diabetes():
    from torch import nn

    class DiabetesMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.progression = nn.Linear(10, 32), nn.Linear(32, 1)

        def forward(self, x):
            return self.progression(self.hidden(x).relu()).reshape(-1)
    m = DiabetesMLP()
    return m, {**dense("DiabetesMLP.hidden", m.hidden), **dense("DiabetesMLP.progression", m.progression)}


def twin_digits():
    import torch.nn.functional as F
    from torch import nn

    class DigitsNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
            self.logits = nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(self.conv1(x).relu(), 2)
            x = F.max_pool2d(self.conv2(x).relu(), 2)
            return self.logits(x.flatten(1))
    m = DigitsNet()
    return m, {**conv("DigitsNet.conv1", m.conv1), **conv("DigitsNet.conv2", m.conv2),
               **dense("DigitsNet.logits", m.logits)}


def _batch_norm_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BatchNorm(nn.Module):
        """Keras' BatchNormalization (dslc's batch_norm): training normalizes with the batch's mean and
        biased variance; the moving statistics take (1 - momentum) of the batch's (momentum on the old
        value), the *biased* variance too (torch's BatchNorm2d keeps the unbiased one); eps 1e-3."""

        def __init__(self, channels: int, momentum: float = 0.99):
            super().__init__()
            self.momentum = momentum
            self.gamma = nn.Parameter(torch.ones(channels))
            self.beta = nn.Parameter(torch.zeros(channels))
            self.register_buffer("moving_mean", torch.zeros(channels))
            self.register_buffer("moving_variance", torch.ones(channels))

        def forward(self, x):
            if not self.training:
                return F.batch_norm(x, self.moving_mean, self.moving_variance, self.gamma, self.beta, False, 0.0, 1e-3)
            with torch.no_grad():
                var, mean = torch.var_mean(x, (0, 2, 3), correction=0)
                self.moving_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.moving_variance.mul_(self.momentum).add_((1 - self.momentum) * var)
            return F.batch_norm(x, None, None, self.gamma, self.beta, True, 0.0, 1e-3)
    return BatchNorm


def twin_resnet(keras_batch_norm: bool = True):
    """keras_batch_norm=False: torch's own nn.BatchNorm2d (eps 1e-3, momentum 0.1), whose training
    steps are the same (its moving variance is the unbiased one): bench/steps.py times that."""
    import torch.nn.functional as F
    from torch import nn
    # specs/resnet.dsl: batch_norm(x, momentum=0.9) (Keras' convention: the old value's weight; torch's 0.1)
    keras = _batch_norm_class()
    BatchNorm = (lambda c: keras(c, momentum=0.9)) if keras_batch_norm else \
        (lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.1))

    def same_stride2(x):  # TensorFlow 'same' at stride 2 on an even size: the one extra row/column at the end
        return F.pad(x, (0, 1, 0, 1))

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.norm1 = nn.Conv2d(c, c, 3, padding=1, bias=False), BatchNorm(c)
            self.conv2, self.norm2 = nn.Conv2d(c, c, 3, padding=1, bias=False), BatchNorm(c)

        def forward(self, x):
            h = self.norm1(self.conv1(x)).relu()
            return (x + self.norm2(self.conv2(h))).relu()

    class Downsample(nn.Module):
        def __init__(self, c_in, c):
            super().__init__()
            self.conv1, self.norm1 = nn.Conv2d(c_in, c, 3, stride=2, bias=False), BatchNorm(c)
            self.conv2, self.norm2 = nn.Conv2d(c, c, 3, padding=1, bias=False), BatchNorm(c)
            self.project, self.shortcut = nn.Conv2d(c_in, c, 1, stride=2, bias=False), BatchNorm(c)

        def forward(self, x):
            h = self.norm1(self.conv1(same_stride2(x))).relu()
            return (self.shortcut(self.project(x)) + self.norm2(self.conv2(h))).relu()

    class DigitsResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.norm = nn.Conv2d(1, 16, 3, padding=1, bias=False), BatchNorm(16)
            self.block1, self.block2, self.block3 = Residual(16), Downsample(16, 32), Residual(32)
            self.logits = nn.Linear(32, 10)

        def forward(self, x):
            x = self.norm(self.stem(x)).relu()
            x = self.block3(self.block2(self.block1(x)))
            return self.logits(x.mean((2, 3)))
    m = DigitsResNet()
    names = {**conv("DigitsResNet.stem", m.stem), **dense("DigitsResNet.logits", m.logits)}
    for name, module in m.named_modules():
        if isinstance(module, nn.Conv2d) and name != "stem":
            names.update(conv(f"DigitsResNet.{name}", module))
        if isinstance(module, nn.BatchNorm2d):
            for k, t in zip(("gamma", "beta", "moving_mean", "moving_variance"), ("weight", "bias", "running_mean",
                                                                                  "running_var")):
                names[f"DigitsResNet.{name}.{k}"] = (getattr(module, t), None)
        elif hasattr(module, "moving_mean"):
            for k in ("gamma", "beta", "moving_mean", "moving_variance"):
                names[f"DigitsResNet.{name}.{k}"] = (getattr(module, k), None)
    return m, names


def twin_lstm():
    from torch import nn

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(128, 32)
            self.lstm = nn.LSTM(32, 128, batch_first=True)
            self.lstm.bias_hh_l0.requires_grad_(False)  # dslc (Keras) has one bias: this one stays 0
            self.logits = nn.Linear(128, 128)

        def forward(self, chars):
            return self.logits(self.lstm(self.embed(chars))[0])
    m = CharLSTM()
    with _torch().no_grad():
        m.lstm.bias_hh_l0.zero_()
    return m, {"CharLSTM.h.weight": (m.embed.weight, None),
               "CharLSTM.h_2.kernel": (m.lstm.weight_ih_l0, "T"),
               "CharLSTM.h_2.recurrent_kernel": (m.lstm.weight_hh_l0, "T"),
               "CharLSTM.h_2.bias": (m.lstm.bias_ih_l0, None),
               **dense("CharLSTM.logits", m.logits)}


def twin_charlm(width: int = 64, heads: int = 4, context: int = 64, blocks: int = 2, chars: int = 128):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(width, eps=1e-3)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.norm2 = nn.LayerNorm(width, eps=1e-3)
            self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.register_buffer("mask", torch.triu(torch.ones(context, context, dtype=torch.bool), 1))

        def forward(self, x):
            a = self.norm1(x)
            h = x + self.attn(a, a, a, attn_mask=self.mask, is_causal=True, need_weights=False)[0]
            return h + self.down(nn.functional.gelu(self.up(self.norm2(h))))

    class CharTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Embedding(chars, width)
            self.pos = nn.Parameter(torch.zeros(context, width))
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))
            self.norm = nn.LayerNorm(width, eps=1e-3)
            self.logits = nn.Linear(width, chars)

        def forward(self, x):
            h = self.token(x) + self.pos
            for b in self.blocks:
                h = b(h)
            return self.logits(self.norm(h))
    m = CharTransformer()
    p = "CharTransformer"
    names = {f"{p}.token.weight": (m.token.weight, None), f"{p}.pos.weight": (m.pos, None),
             **norm(f"{p}.norm", m.norm), **dense(f"{p}.logits", m.logits)}
    for i, b in enumerate(m.blocks):
        q = f"{p}.block{i + 1}"
        names.update({**norm(f"{q}.norm1", b.norm1), **norm(f"{q}.norm2", b.norm2),
                      **dense(f"{q}.up", b.up), **dense(f"{q}.down", b.down),
                      **dense(f"{q}.attn.output", b.attn.out_proj)})
        for k, part in enumerate(("query", "key", "value")):  # stacked rows of in_proj: [q; k; v]
            rows = slice(k * width, (k + 1) * width)
            names[f"{q}.attn.{part}.weight"] = (b.attn.in_proj_weight, ("T", rows))
            names[f"{q}.attn.{part}.bias"] = (b.attn.in_proj_bias, (None, rows))
    return m, names


def dense(name: str, layer) -> dict:
    return {f"{name}.weight": (layer.weight, "T"), f"{name}.bias": (layer.bias, None)}


def conv(name: str, layer) -> dict:
    out = {f"{name}.weight": (layer.weight, None)}
    if layer.bias is not None:
        out[f"{name}.bias"] = (layer.bias, None)
    return out


def norm(name: str, layer) -> dict:
    return {f"{name}.gamma": (layer.weight, None), f"{name}.beta": (layer.bias, None)}


def read_weights(names: dict) -> dict:
    """The torch tensors back in dslc's layout (load_weights' inverse), by dslc name."""
    out = {}
    for key, (tensor, how) in names.items():
        rows = None
        if isinstance(how, tuple):
            how, rows = how
        value = (tensor if rows is None else tensor[rows]).detach().numpy()
        out[key] = value.T if how == "T" else value
    return out


def load_weights(names: dict, state: dict) -> None:
    """dslc's values into the torch tensors: (tensor, how) with how None (as is), "T" (transposed),
    or (None | "T", rows) for a block of rows of a stacked tensor. Every tensor is covered."""
    torch = _torch()
    with torch.no_grad():
        for key, (tensor, how) in names.items():
            value = np.asarray(state[key])
            rows = None
            if isinstance(how, tuple):
                how, rows = how
            if how == "T":
                value = value.T
            target = tensor if rows is None else tensor[rows]
            assert tuple(target.shape) == value.shape, (key, tuple(target.shape), value.shape)
            target.copy_(torch.from_numpy(np.array(value)))


# ================================================================== Keras' Adam, as dslc/train/optimizers.py
class KerasAdam:
    """w' = w - lr sqrt(1 - b2^t) / (1 - b1^t) m' / (sqrt(v') + eps), t = step + 1, after clipping the
    gradients by their global norm (clip_norm: scale = clip / max(norm, clip)), as dslc's update."""

    def __init__(self, params, lr: float, beta1: float, beta2: float, eps: float, clip_norm: float = 0.0):
        torch = _torch()
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.b1, self.b2, self.eps, self.clip = lr, beta1, beta2, eps, clip_norm
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        torch = _torch()
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            if self.clip:
                total = torch.sqrt(sum((g * g).sum() for g in grads))
                scale = self.clip / torch.maximum(total, torch.tensor(self.clip))
                grads = [g * scale for g in grads]
            self.t += 1
            rate = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                m.mul_(self.b1).add_(g, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                p.sub_(rate * m / (v.sqrt() + self.eps))


# ================================================================== the cases
@dataclass(frozen=True)
class Case:
    spec: str
    target: str
    data: str  # under the data folder (written by the tests' writers)
    epochs: int  # for the comparison (the README's rows are full runs)
    figure: str  # the history key compared
    build: Callable
    loss: str  # "scce" (from logits, any rank) or "mse"


CASES = {
    "wine": Case("tabular.dsl", "wine", "wine/train.csv", 20, "test_accuracy", twin_wine, "scce"),
    "diabetes": Case("tabular.dsl", "diabetes", "diabetes/train.csv", 40, "test_r2", twin_diabetes, "mse"),
    "digits": Case("digits.dsl", "digits", "digits", 20, "test_accuracy", twin_digits, "scce"),
    "resnet": Case("resnet.dsl", "digits_resnet", "digits", 15, "test_accuracy", twin_resnet, "scce"),
    "lstm": Case("lstm.dsl", "pydoc_lstm", "topics.txt", 2, "val_bits_per_character", twin_lstm, "scce"),
    "charlm": Case("charlm.dsl", "pydoc_transformer", "topics.txt", 2, "val_bits_per_character", twin_charlm, "scce"),
}
SPECS = {"tabular": ["wine", "diabetes"], "digits": ["digits"], "resnet": ["resnet"], "lstm": ["lstm"],
         "charlm": ["charlm"]}


def write_data(folder: Path, case: Case) -> Path:
    """The README's data (no download): scikit-learn's tables and digits, CPython's documentation."""
    path = folder / case.data
    if not path.exists():
        from test_data_formats import write_digits, write_table
        from test_training_features import write_topics
        folder.mkdir(parents=True, exist_ok=True)
        if case.data == "digits":
            write_digits(folder / "digits")
        elif case.data == "topics.txt":
            write_topics(folder / "topics.txt")
        else:
            write_table(folder / case.data.split("/")[0], case.data.split("/")[0])
    return path


class Pipeline:
    """dslc's own trainer, set up for (case, seed, epochs) but never run: its initial state, its
    compiled step, its fields and its batch order feed the twin."""

    def __init__(self, case: Case, data: Path, seed: int, epochs: int, out: Path):
        from dslc.lower.program import load_program
        from dslc.runtime import evaluate as E
        from dslc.runtime import trainer as T
        from dslc.train import plan as P

        program = load_program(ROOT / "specs" / case.spec)
        plan = replace(P.plan(program, case.target), epochs=epochs, seed=seed)
        self.plan = plan
        self.trainer = T.Trainer(program, plan, T.Options(target=case.target, data=str(data), epochs=epochs,
                                                          seed=seed, out=str(out), log=lambda *a, **k: None), out)
        self.trainer.device = "cpu"
        self.trainer._compile()
        self.trainer.graphs = E.Graphs(program, "cpu", plan.seed)
        self.trainer._load_data()
        self.state = self.trainer._initial_state()
        self.step = plan.steps[0]
        self.options = dict(program_optimizer(program, self.step.name))

    def batches(self):
        """(global step, {step input: array}) for every batch of every epoch, as the trainer makes them."""
        from dslc.runtime.datasets import batches, epoch_order
        t, p = self.trainer, self.plan
        n, k = t.train_fields.n, 0
        for epoch in range(p.epochs):
            for idx in batches(n, p.batch, epoch_order(n, p.seed, epoch)):
                t.train_fields.rng_key = (p.seed, k)
                yield k, {param: t._feed(self.step.name, param, src, idx) for param, src in self.step.args}
                k += 1

    def dslc_step(self, data: dict, state: dict, k: int) -> tuple[float, dict]:
        runner = self.trainer.runners[0]
        runner.tuning = runner.tuning or "default"  # (no timing of session settings for a check)
        seed = np.int64(zlib.crc32(f"{self.plan.seed}/{self.step.name}".encode()) & 0x7FFFFFFF)
        out, new = runner.run(data, state, {"step": np.array(k, np.int64), "seed": seed})
        return float(out["loss"]), {**state, **new}


def program_optimizer(program, step: str) -> dict:
    from dslc.runtime import evaluate as E
    low = E.lower(program, step)
    o = dict(low.optimizer.options)
    assert low.optimizer.name == "adam", low.optimizer.name
    return {k: float(o[k]) for k in ("lr", "beta1", "beta2", "eps", "clip_norm")}


class Twin:
    def __init__(self, case: Case, pipe: Pipeline):
        torch = _torch()
        self.case, self.pipe = case, pipe
        self.model, self.names = case.build()
        load_weights(self.names, pipe.state)
        self.model.train()
        o = pipe.options
        self.opt = KerasAdam(self.model.parameters(), o["lr"], o["beta1"], o["beta2"], o["eps"], o["clip_norm"])
        self.inputs = [param for param, _ in pipe.step.args]
        self.torch = torch

    def loss(self, data: dict):
        torch, F = self.torch, self.torch.nn.functional
        x = torch.from_numpy(np.ascontiguousarray(data[self.inputs[0]]))
        target = torch.from_numpy(np.ascontiguousarray(data[self.inputs[1]]))
        out = self.model(x)
        if self.case.loss == "mse":
            return ((out - target) ** 2).mean()
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1).long())

    def step(self, data: dict) -> float:
        self.opt.zero_grad()
        loss = self.loss(data)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def evaluate(self) -> float:
        """The spec's first `evaluate` measure on the compared split, as dslc/runtime/evaluate.py."""
        torch = self.torch
        t = self.pipe.trainer
        m = self.pipe.plan.evaluations[0]
        split = self.case.figure.split("_")[0]
        fields = t.eval_fields[split]
        self.model.eval()
        preds, targets = [], []
        with torch.no_grad():
            for start in range(0, fields.n, 500):
                idx = np.arange(start, min(start + 500, fields.n))
                feeds = {p: fields.get(src, idx) for p, src in m.call.args}
                x = np.asarray(feeds[m.call.args[0][0]])
                x = torch.from_numpy(x.astype(np.int64) if x.dtype.kind in "iu" else np.ascontiguousarray(x))
                preds.append(self.model(x).numpy().astype(np.float64))
                targets.append(np.asarray(fields.get(m.label, idx)))
        self.model.train()
        pred, target = np.concatenate(preds), np.concatenate(targets)
        if m.kind == "accuracy":
            return float((pred.argmax(-1) == target.reshape(-1)).mean())
        if m.kind == "bits_per_character":
            shifted = pred - pred.max(-1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            return float(-np.take_along_axis(log_p, target.astype(np.int64)[..., None], -1).mean() / np.log(2))
        if m.kind == "r2":
            target = target.astype(np.float64).reshape(len(target), -1)
            pred = pred.reshape(len(pred), -1)
            sst = ((target - target.mean(0)) ** 2).sum(0)
            return float(np.mean(1 - ((pred - target) ** 2).sum(0) / sst))
        raise NotImplementedError(m.kind)


# ================================================================== runs
def check(case: Case, data: Path, tmp: Path) -> tuple[bool, str]:
    """Two steps from the same weights on the first two batches: the losses agree (1e-5 relative at
    the first, 1e-4 after one update), then every weight and statistic (1e-4 of its largest value),
    then the evaluation of those weights by dslc's trainer and by the twin (the figure compared)."""
    pipe = Pipeline(case, data, 0, 1, tmp / "check")
    twin = Twin(case, pipe)
    state = dict(pipe.state)
    got = []
    for k, batch in pipe.batches():
        d_loss, state = pipe.dslc_step(batch, state, k)
        t_loss = twin.step(batch)
        got.append((d_loss, t_loss))
        if k == 1:
            break
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in got]
    mine = read_weights(twin.names)
    # (the attention's key bias has an exact zero gradient -- softmax ignores a shift of a query's
    # scores -- so both sides update it by their round-off, amplified by Adam's normalisation: skipped)
    parted = {k: float(np.abs(mine[k] - state[k]).max() / max(np.abs(state[k]).max(), 1e-6)) for k in mine
              if not k.endswith(".attn.key.bias")}
    worst = max(parted, key=parted.get)
    weights = parted[worst]
    (tmp / "check").mkdir(parents=True, exist_ok=True)
    d_fig = pipe.trainer._evaluate(state, 1)[case.figure]
    t_fig = twin.evaluate()
    n = pipe.trainer.eval_fields[case.figure.split("_")[0]].n
    same_fig = abs(d_fig - t_fig) <= (1.01 / n if "accuracy" in case.figure else 1e-4)  # (one example; round-off)
    ok = bool(rel[0] <= 1e-5 and rel[1] <= 1e-4 and weights <= 1e-4 and same_fig)
    return ok, (f"step 1 loss dslc {got[0][0]:.7f} twin {got[0][1]:.7f} (rel {rel[0]:.1e}); after one update "
                f"dslc {got[1][0]:.7f} twin {got[1][1]:.7f} (rel {rel[1]:.1e}); weights and statistics after "
                f"2 steps within {weights:.1e} ({worst}); {case.figure} dslc {d_fig:.6f} twin {t_fig:.6f} "
                f"{'PASS' if ok else 'FAIL'}")


def run_dslc(case: Case, data: Path, seed: int, epochs: int, out: Path) -> float:
    import dslc
    history = dslc.train(ROOT / "specs" / case.spec, target=case.target, data=str(data), epochs=epochs, seed=seed,
                         out=str(out), device="cpu", log=lambda *a, **k: None)
    return float(history[-1][case.figure])


def run_twin(case: Case, data: Path, seed: int, epochs: int, out: Path) -> float:
    pipe = Pipeline(case, data, seed, epochs, out)
    twin = Twin(case, pipe)
    for _, batch in pipe.batches():
        loss = twin.step(batch)
        if not math.isfinite(loss):
            raise RuntimeError(f"twin loss became {loss}")
    return twin.evaluate()


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ({min(values):.4f}..{max(values):.4f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", choices=sorted(SPECS) + ["all"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "dslc-twins-data",
                    help="where the README's data is written once (default: the temp folder)")
    ap.add_argument("--epochs", type=int, help="override every case's comparison epochs")
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args(argv)
    torch = _torch()
    torch.set_num_threads(THREADS)
    names = [c for s in (sorted(SPECS) if "all" in args.specs else args.specs) for c in SPECS[s]]
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="dslc-twins-") as tmp:
        tmp = Path(tmp)
        for name in names:
            case = CASES[name]
            data = write_data(args.data, case)
            ok, said = check(case, data, tmp / name)
            print(f"{name}: check: {said}", flush=True)
            failed |= not ok
            if args.check_only or not ok:
                continue
            epochs = args.epochs or case.epochs
            d, t = [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                start = time.perf_counter()
                d.append(run_dslc(case, data, seed, epochs, tmp / name / f"dslc{seed}"))
                mid = time.perf_counter()
                t.append(run_twin(case, data, seed, epochs, tmp / name / f"twin{seed}"))
                print(f"{name} seed {seed}: {case.figure} dslc {d[-1]:.4f} ({mid - start:.0f} s), twin {t[-1]:.4f} "
                      f"({time.perf_counter() - mid:.0f} s)", flush=True)
            inside = min(t) <= statistics.mean(d) <= max(t)
            rows.append((name, f"{case.spec} --target {case.target}", epochs, case.figure, d, t, inside))
    if rows:
        print(f"\n{args.seeds} seeds ({args.first_seed}..{args.first_seed + args.seeds - 1}); dslc through "
              f"dslc.train, the twin in torch "
              f"{torch.__version__} from dslc's initial weights and batches\n")
        print("| case | spec | epochs | figure | dslc per seed | twin per seed | dslc mean (min..max) | "
              "twin mean (min..max) | dslc mean within twin spread |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, spec, epochs, figure, d, t, inside in rows:
            print(f"| {name} | {spec} | {epochs} | {figure} | {', '.join(f'{v:.4f}' for v in d)} | "
                  f"{', '.join(f'{v:.4f}' for v in t)} | {spread(d)} | {spread(t)} | {'yes' if inside else 'NO'} |")
    return 1 if failed or not all(r[-1] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
