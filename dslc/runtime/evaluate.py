"""What `dslc train` measures and draws after each epoch: one function per kind of the plan's
`evaluate` and `show` (train/plan.py lists them), run on the test split with the weights so far.

Models run in inference mode (dropout off, batch norm on its moving statistics) with their weights
fed as inputs, so one session serves every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import onnx

from ..emit.onnx_emit import to_onnx
from ..lower.lowerer import Options
from ..lower.targets import Lowered, lower_target
from ..train.plan import Measure, Plan
from .plots import image_grid, latent_grid_points
from .session import make_session

EVAL_BATCH = 500
N_CLASSES = 10


def lower(program, name: str, emit: str | None = None, seed: int = 0) -> Lowered:
    return lower_target(program, name, Options(seed=seed), emit)


def compile_target(program, name: str, emit: str | None = None, seed: int = 0,
                   weights_as_inputs: bool = False) -> onnx.ModelProto:
    """A target of the program as ONNX; `weights_as_inputs` lists its weights as inputs too (with
    their initial values as defaults), so one session serves any weights."""
    low = lower(program, name, emit, seed)
    low.graph.params_are_inputs |= weights_as_inputs
    return to_onnx(low.graph)


@dataclass
class Graphs:
    """Sessions of the plan's models and loss graphs, made once, fed weights by name."""
    program: object
    device: str
    seed: int

    def __post_init__(self):
        self.sessions = {}

    def session(self, name: str, emit: str | None = None):
        key = (name, emit)
        if key not in self.sessions:
            model = compile_target(self.program, name, emit, self.seed, weights_as_inputs=True)
            self.sessions[key] = make_session(model, self.device)
        return self.sessions[key]


def run(sess, feeds: dict, weights: dict) -> list[np.ndarray]:
    # (onnxruntime lists inputs that have a default among the "overridable initializers", not the inputs)
    names = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    return sess.run(None, {**{k: v for k, v in weights.items() if k in names}, **feeds})


def in_batches(n: int):
    for start in range(0, n, EVAL_BATCH):
        yield np.arange(start, min(start + EVAL_BATCH, n))


def accuracy(m: Measure, graphs: Graphs, fields, weights: dict) -> float:
    """The share of test examples whose argmax prediction is the label."""
    sess = graphs.session(m.call.name)
    correct = 0
    for idx in in_batches(fields.n):
        feeds = {p: fields.get(src, idx) for p, src in m.call.args}
        pred = run(sess, feeds, weights)[0]
        labels = fields.get(m.label, idx)
        labels = labels.argmax(-1) if labels.ndim == 2 else labels.reshape(-1)
        correct += int((pred.argmax(-1) == labels).sum())
    return correct / fields.n


def loss(m: Measure, graphs: Graphs, fields, weights: dict, seed: int) -> float:
    """The step's loss over the test split (its forward pass alone: nothing is updated)."""
    sess = graphs.session(m.call.name, emit="forward")
    inputs = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    total = 0.0
    for k, idx in enumerate(in_batches(fields.n)):
        feeds = {p: fields.get(src, idx) for p, src in m.call.args}
        feeds.update({c: np.array(v, np.int64) for c, v in (("seed", seed), ("step", k)) if c in inputs})
        total += float(run(sess, feeds, weights)[0]) * len(idx)
    return total / fields.n


def generate(graphs: Graphs, generator: str, weights: dict, classes: np.ndarray, seed: int) -> np.ndarray:
    """Images from a class-conditional generator: latent codes ~ U(-1, 1) (the same every epoch)."""
    sess = graphs.session(generator)
    feeds = {}
    for i in sess.get_inputs():
        if i.name in weights or i.name == "seed":
            continue
        if "int64" in i.type:
            feeds[i.name] = classes.astype(np.int64)
        else:
            rng = np.random.default_rng(seed)
            feeds[i.name] = rng.uniform(-1, 1, (len(classes), i.shape[1])).astype(np.float32)
    return run(sess, feeds, weights)[0]


def generated_accuracy(m: Measure, graphs: Graphs, weights: dict, judge, seed: int) -> float:
    """The share of generated digits (100 per class) that the judge classifies as the class asked for."""
    classes = np.repeat(np.arange(N_CLASSES), 100)
    images = generate(graphs, m.model, weights, classes, seed)
    return float((judge.classify(images) == classes).mean())


# ------------------------------------------------------------------ pictures
def draw(m: Measure, graphs: Graphs, fields, weights: dict, out: Path, epoch: int, plan: Plan, seed: int) -> Path:
    value_range = fields.value_range("image")
    if m.kind == "latent_grid":
        sess = graphs.session(m.model)
        side = 20  # points per axis, over [-2.5, 2.5]: where a standard-normal prior puts the data
        decoded = run(sess, {sess.get_inputs()[0].name: latent_grid_points(side, -2.5, 2.5)}, weights)[0]
        return image_grid(decoded.reshape(side * side, 28, 28), side, side, out / "latent_grid.png",
                          value_range=value_range, scale=2, pad=1)
    if m.kind == "reconstructions":
        idx = np.arange(min(10, fields.n))
        sess = graphs.session(m.call.name)
        feeds = {p: fields.get(src, idx) for p, src in m.call.args}
        inputs = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
        feeds.update({"seed": np.array(seed, np.int64)} if "seed" in inputs else {})
        recon = run(sess, feeds, weights)[0]
        originals = next(iter(feeds.values()))
        both = np.concatenate([originals.reshape(len(idx), 28, 28), recon.reshape(len(idx), 28, 28)])
        return image_grid(both, 2, len(idx), out / "reconstructions.png", value_range=value_range)
    if m.kind == "class_grid":
        classes = np.repeat(np.arange(N_CLASSES), 10)
        images = generate(graphs, m.model, weights, classes, seed)
        path = out / f"generated_epoch{epoch}.png"
        image_grid(images.reshape(len(classes), 28, 28), N_CLASSES, 10, path, value_range=value_range,
                   labels=[str(c) for c in range(N_CLASSES)])
        return path
    if m.kind == "kernels":
        first = sorted((k for k in weights if k.startswith(m.model + ".") and weights[k].ndim == 4))[0]
        w = weights[first][:, 0]  # [filters, k, k]: each filter's kernel on the first input channel
        lo, hi = float(w.min()), float(w.max())
        cols = int(np.ceil(np.sqrt(len(w))))
        return image_grid(w, int(np.ceil(len(w) / cols)), cols, out / "kernels.png", value_range=(lo, hi), scale=8)
    raise AssertionError(m.kind)
