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

from ..diagnostics import DslError
from ..emit.onnx_emit import to_onnx
from ..lower.lowerer import Options
from ..lower.targets import Lowered, lower_target
from ..train.plan import Measure, Plan
from .plots import image_grid, latent_grid_points
from .session import make_session

EVAL_BATCH = 500
REGRESSION = ("mse", "mae", "r2")


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
    # class numbers (uint8 labels, a text's characters) widened to the int64 the graph takes
    wide = {i.name for i in sess.get_inputs() if i.type == "tensor(int64)"}
    feeds = {k: v.astype(np.int64) if k in wide and np.asarray(v).dtype.kind in "iu" else v for k, v in feeds.items()}
    return sess.run(None, {**{k: v for k, v in weights.items() if k in names}, **feeds})


def in_batches(n: int):
    for start in range(0, n, EVAL_BATCH):
        yield np.arange(start, min(start + EVAL_BATCH, n))


def score_width(graphs: Graphs, model: str) -> int | None:
    """The static last dimension of a model's first output (the V of scores [N, V] or [N, seq, V])."""
    shape = graphs.session(model).get_outputs()[0].shape
    return shape[-1] if len(shape) >= 2 and isinstance(shape[-1], int) else None


def class_count(graphs: Graphs, model: str, widest: bool = False) -> int | None:
    """How many classes a model scores: the static width of its first output [N, C] (with `widest`,
    the widest such output, C > 1); None where it has no such output (a regression, an image)."""
    widths = []
    for o in graphs.session(model).get_outputs():
        if len(o.shape) == 2 and isinstance(o.shape[1], int) and (o.shape[1] > 1 or not widest):
            widths.append(o.shape[1])
        if not widest:
            break
    return max(widths) if widths else None


def accuracy(m: Measure, graphs: Graphs, fields, weights: dict) -> float:
    """The share of examples whose label is the argmax prediction (with k > 1: among the k highest)."""
    return accuracy_and_confusion(m, graphs, fields, weights)[0]


def accuracy_and_confusion(m: Measure, graphs: Graphs, fields, weights: dict) -> tuple[float, np.ndarray | None]:
    """(accuracy, counts[true, predicted] of the argmax prediction), in one pass; the counts are
    None where the scores are not [N, classes]."""
    sess = graphs.session(m.call.name)
    correct, total, counts = 0, 0, None
    for idx in in_batches(fields.n):
        feeds = {p: fields.get(src, idx) for p, src in m.call.args}
        pred, labels = _positions(run(sess, feeds, weights)[0], fields.get(m.label, idx))
        total += len(labels)
        if m.k == 1:
            correct += int((pred.argmax(-1) == labels).sum())
        else:  # top-k: fewer than k scores above the label's (a tie counts for the label)
            score = np.take_along_axis(pred, labels[:, None], axis=-1)
            correct += int(((pred > score).sum(-1) < m.k).sum())
        if pred.ndim == 2 and len(labels) == len(pred):
            k = pred.shape[1]
            counts = np.zeros((k, k), np.int64) if counts is None else counts
            np.add.at(counts, (labels, pred.argmax(-1)), 1)
    return correct / max(total, 1), counts


def _positions(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores [positions, classes] and class indices [positions]: one position per example, or per
    sequence element for scores [N, T, classes] against labels [N, T] (or one-hot [N, T, classes])."""
    if labels.shape == pred.shape:  # one-hot
        labels = labels.argmax(-1)
    return pred.reshape(-1, pred.shape[-1]), labels.reshape(-1).astype(np.int64)


def bits_per_character(m: Measure, graphs: Graphs, fields, weights: dict) -> float:
    """The mean cross-entropy, in bits, of the model's scores (logits [N, V] or [N, seq, V]) against the
    characters that follow ([N] or [N, seq]): log2(perplexity)."""
    sess = graphs.session(m.call.name)
    total, count = 0.0, 0
    for idx in in_batches(fields.n):
        logits = np.asarray(run(sess, {p: fields.get(src, idx) for p, src in m.call.args}, weights)[0], np.float64)
        target = np.asarray(fields.get(m.label, idx), np.int64)
        if logits.shape[:-1] != target.shape:
            raise DslError(f"bits_per_character: {m.call.name} gives scores {list(logits.shape)}, the characters "
                           f"`{m.label}` are {list(target.shape)}", m.span,
                           "scores [N, V] for next_char, [N, seq, V] for next")
        shifted = logits - logits.max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(log_p, target[..., None], -1).sum())
        count += target.size
    return total / max(count, 1) / np.log(2)


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


def predictions(m: Measure, graphs: Graphs, fields, weights: dict, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, target) of examples idx as float64 [n, outputs]: a model's [N, 1] or [N] output
    against targets [N] or [N, 1]; other mismatches are an error that names both shapes."""
    sess = graphs.session(m.call.name)
    pred = run(sess, {p: fields.get(src, idx) for p, src in m.call.args}, weights)[0]
    target = fields.get(m.label, idx)
    n = len(idx)
    pred, target = np.asarray(pred, np.float64).reshape(n, -1), np.asarray(target, np.float64).reshape(n, -1)
    if pred.shape != target.shape:
        raise DslError(f"{m.kind}: {m.call.name} gives {pred.shape[1]} value(s) per example, the field `{m.label}` "
                       f"{target.shape[1]}", m.span, "a regression model gives one value per target, e.g. "
                       "dense(h, 1) for one target")
    return pred, target


def regression(m: Measure, graphs: Graphs, fields, weights: dict) -> float:
    """mse, mae or r2 over the split; r2 = 1 - SSE / SST per target column, averaged (as scikit-learn),
    and 1 (a perfect fit) or 0 where a column's targets are all one value."""
    sse = sae = total = total_sq = 0.0
    for idx in in_batches(fields.n):
        pred, target = predictions(m, graphs, fields, weights, idx)
        sse, sae = sse + ((pred - target) ** 2).sum(0), sae + np.abs(pred - target).sum(0)
        total, total_sq = total + target.sum(0), total_sq + (target ** 2).sum(0)
    n = fields.n
    if m.kind == "mse":
        return float(np.mean(sse) / n)
    if m.kind == "mae":
        return float(np.mean(sae) / n)
    sst = np.maximum(total_sq - total ** 2 / n, 0.0)
    r2 = np.where(sst > 1e-12 * np.maximum(total_sq, 1.0), 1 - sse / np.where(sst > 0, sst, 1.0),
                  np.where(sse > 0, 0.0, 1.0))
    return float(np.mean(r2))


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
    """The share of generated images (100 per class) that the judge classifies as the class asked for."""
    if judge.classes is None:
        raise DslError(f"the judge's model {judge.model} gives no class scores [N, classes]", m.span)
    classes = np.repeat(np.arange(judge.classes), 100)
    images = generate(graphs, m.model, weights, classes, seed)
    return float((judge.classify(images) == classes).mean())


# ------------------------------------------------------------------ pictures
def as_images(x: np.ndarray, fields) -> np.ndarray:
    """Grey images [k, h, w] to draw from a model's output or a field: [k, 1, h, w] and [k, h, w, 1]
    lose the channel, colour is averaged to grey, flat rows [k, h * w] take the data's image size (or
    a square's)."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = x.mean(1) if x.shape[1] in (1, 3) else x.mean(-1)
    if x.ndim == 3:
        return x
    raw = fields.arrays.get("image")
    size = raw.shape[1:3] if raw is not None and raw.dtype != object and raw.ndim >= 3 else ()
    if x.ndim == 2 and size and size[0] * size[1] == x.shape[1]:
        return x.reshape(len(x), *size)
    side = int(round(np.sqrt(x.shape[-1]))) if x.ndim == 2 else 0
    if side and side * side == x.shape[1]:
        return x.reshape(len(x), side, side)
    raise DslError(f"cannot draw an array of shape {list(x.shape)} as images",
                   hint="pictures draw images [k, h, w], [k, channels, h, w] or square rows [k, h * w]")


def draw(m: Measure, graphs: Graphs, fields, weights: dict, out: Path, epoch: int, plan: Plan, seed: int,
         classes: int | None = None) -> Path:
    """One picture of `show`; `classes`: how many rows a class grid has (the class count of the models
    the first step trains)."""
    value_range = fields.value_range("image")
    if m.kind == "latent_grid":
        sess = graphs.session(m.model)
        side = 20  # points per axis, over [-2.5, 2.5]: where a standard-normal prior puts the data
        decoded = run(sess, {sess.get_inputs()[0].name: latent_grid_points(side, -2.5, 2.5)}, weights)[0]
        return image_grid(as_images(decoded, fields), side, side, out / "latent_grid.png",
                          value_range=value_range, scale=2, pad=1)
    if m.kind == "reconstructions":
        idx = np.arange(min(10, fields.n))
        sess = graphs.session(m.call.name)
        feeds = {p: fields.get(src, idx) for p, src in m.call.args}
        inputs = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
        feeds.update({"seed": np.array(seed, np.int64)} if "seed" in inputs else {})
        recon = run(sess, feeds, weights)[0]
        originals = next(iter(feeds.values()))
        both = np.concatenate([as_images(originals, fields), as_images(recon, fields)])
        return image_grid(both, 2, len(idx), out / "reconstructions.png", value_range=value_range)
    if m.kind == "class_grid":
        if not classes:
            raise DslError("class_grid: the models the first step trains give no class scores [N, classes]",
                           m.span, "class_grid draws one row per class of a class-conditional generator")
        images = generate(graphs, m.model, weights, np.repeat(np.arange(classes), 10), seed)
        path = out / f"generated_epoch{epoch}.png"
        image_grid(as_images(images, fields), classes, 10, path, value_range=value_range,
                   labels=[str(c) for c in range(classes)])
        return path
    if m.kind == "kernels":
        first = sorted((k for k in weights if k.startswith(m.model + ".") and weights[k].ndim == 4))[0]
        w = weights[first][:, 0]  # [filters, k, k]: each filter's kernel on the first input channel
        lo, hi = float(w.min()), float(w.max())
        cols = int(np.ceil(np.sqrt(len(w))))
        return image_grid(w, int(np.ceil(len(w) / cols)), cols, out / "kernels.png", value_range=(lo, hi), scale=8)
    raise AssertionError(m.kind)
