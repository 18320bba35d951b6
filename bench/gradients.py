"""Gradient evaluation: loss + the gradients of all weights of ConvNet, batch 64, CPU, 2 threads.

    python bench/gradients.py [--rounds 20] [--calls 5] [--ortt-python VENV/bin/python]

One gradient evaluation = the forward pass of `ConvNet` (specs/convnet.dsl) in training mode
(dropout 0.25 active), sparse categorical cross-entropy from logits (mean over the batch), and
the gradients of that loss with respect to all 8 weight tensors. Contenders, all in one run:

- dslc: `dslc.compile("specs/convnet.dsl", "train_convnet", emit="gradients")` in onnxruntime
  (CPU, 2 intra-op threads, optimization level ALL), once as is and once with
  `disabled_optimizers=["NchwcTransformer"]`; the weights are fed on every call, as a
  training loop would (read once from the graph's initializers).
- PyTorch eager: the same model, nn.CrossEntropyLoss, train mode, zero_grad(set_to_none=True) +
  forward + backward, torch.set_num_threads(2).
- onnxsim 0.8.1 (optional, `pip install onnxsim==0.8.1`): `onnxsim.graph_grad.build_backward`
  differentiating dslc's forward `ConvNet` graph (with the rewrites it needs, printed), the
  gradient graph assembled by `onnxsim.qat_graph.make_step_graph`, run in onnxruntime with the
  same two session settings as dslc.
- onnxruntime-training 1.19.2 (optional, in its own venv: see bench/README.md): artifacts
  generated from dslc's forward `ConvNet` (+ a training-mode Dropout) with CrossEntropyLoss;
  timed is `Module.__call__` in train mode (forward + backward, no optimizer step) in a
  subprocess that the driver commands block by block, so it is interleaved like the others.

Rounds are interleaved: in each round every contender runs one untimed call and then --calls
timed calls, the starting contender rotating from round to round. The table shows the median of
all timed calls (rounds x calls) per contender and the ratio to PyTorch eager, which is the median
over rounds of (contender's median in the round / PyTorch's median in the same round), because
the machine's speed drifts by tens of percent within seconds. "build" is the one-off cost after
imports (dslc: compile + session, the first one also building lark's parser; PyTorch: model
construction; onnxsim: dslc's forward compile + differentiation + session; onnxruntime-training:
generate_artifacts + Module), "first" the first call after it. Exit status 1 if dslc's check fails.

Before timing, dslc's loss and gradients (and onnxsim's, when present) are checked against
PyTorch autograd with identical weights and inputs and no dropout, to 1e-4 relative (max |diff|
over max |torch| per tensor), using a temporary copy of ConvNet without its dropout call.
Needs torch (bench only: pip install torch==2.13.0). Tests never import this file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_ORTT_PYTHON, quiet, torch_convnet  # bench/ is on sys.path when a bench script runs

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
THREADS = 2
DROPOUT = 0.25
SPEC = ROOT / "specs" / "convnet.dsl"
PARAMS = [f"ConvNet.{layer}.{kind}" for layer in ("conv1", "conv2", "hidden", "logits")
          for kind in ("weight", "bias")]


def node_count(model) -> str:
    """Nodes of a graph, and how many of them are not standard ONNX ops (any domain other than
    the default one, or a default-domain op type onnx does not define, such as MaxPoolGrad)."""
    import onnx.defs

    foreign = [n for n in model.graph.node
               if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)]
    constants = sum(1 for n in model.graph.node if n.op_type == "Constant")
    total = f"{len(model.graph.node)}" + (f" ({constants} Constant)" if constants else "")
    if not foreign:
        return f"{total}, all standard ONNX"
    kinds = sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in foreign})
    return f"{total}, {len(foreign)} not standard ONNX: {', '.join(kinds)}"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


class Contender:
    """Something that evaluates loss + gradients. `call` runs one evaluation; `block(n)` runs one
    untimed call and n timed ones and returns their milliseconds."""

    name = "?"
    nodes: str = "-"           # node count of its gradient graph, where one exists
    build_ms = first_ms = float("nan")

    def call(self):
        raise NotImplementedError

    def block(self, n: int) -> list[float]:
        with quiet():
            self.call()  # untimed: lets the previous contender's spinning threads settle
            times = []
            for _ in range(n):
                start = time.perf_counter()
                self.call()
                times.append((time.perf_counter() - start) * 1e3)
        return times

    def close(self):
        pass


# ------------------------------------------------------------------ shared inputs and weights
def make_batch(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.random((BATCH, 1, 28, 28), dtype=np.float32)
    label = rng.integers(0, 10, BATCH).astype(np.int64)
    return image, label


def initializers(model) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def ort_session(model, nchwc: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    disabled = [] if nchwc else ["NchwcTransformer"]
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def session_label(nchwc: bool) -> str:
    return "ORT ALL" if nchwc else "ORT ALL - NchwcTransformer"


# ------------------------------------------------------------------ dslc
def dslc_gradients(spec, target: str):
    import dslc

    return dslc.compile(str(spec), target, emit="gradients")


class DslcContender(Contender):
    def __init__(self, image, label, nchwc: bool):
        self.name = f"dslc gradients, {session_label(nchwc)}"
        start = time.perf_counter()
        with quiet():
            model = dslc_gradients(SPEC, "train_convnet")
            self.sess = ort_session(model, nchwc)
        self.build_ms = (time.perf_counter() - start) * 1e3
        self.nodes = node_count(model)
        self.weights = {k: v for k, v in initializers(model).items() if k in PARAMS}
        self.image, self.label = image, label
        start = time.perf_counter()
        with quiet():
            self.call()
        self.first_ms = (time.perf_counter() - start) * 1e3

    def call(self):
        # A training loop's feeds: the batch and the current weights, every call.
        return self.sess.run(None, {"image": self.image, "label": self.label, **self.weights})


# ------------------------------------------------------------------ PyTorch
TORCH_NAMES = {"ConvNet.conv1": "conv1", "ConvNet.conv2": "conv2", "ConvNet.hidden": "fc1",
               "ConvNet.logits": "fc2"}


def load_dslc_weights(model, weights: dict, prefix: str = "ConvNet"):
    """dslc's weights into the torch model: conv OIHW alike, dense [in, out] vs Linear [out, in]."""
    import torch

    with torch.no_grad():
        for dslc_layer, torch_layer in TORCH_NAMES.items():
            module = getattr(model, torch_layer)
            w = weights[f"{prefix}{dslc_layer[len('ConvNet'):]}.weight"]
            b = weights[f"{prefix}{dslc_layer[len('ConvNet'):]}.bias"]
            module.weight.copy_(torch.from_numpy(w.T.copy() if w.ndim == 2 else w))
            module.bias.copy_(torch.from_numpy(b))


def torch_grads_as_dslc(model, prefix: str = "ConvNet") -> dict:
    out = {}
    for dslc_layer, torch_layer in TORCH_NAMES.items():
        module = getattr(model, torch_layer)
        w = module.weight.grad.numpy()
        name = f"{prefix}{dslc_layer[len('ConvNet'):]}"
        out[f"{name}.weight"] = w.T if w.ndim == 2 else w
        out[f"{name}.bias"] = module.bias.grad.numpy()
    return out


class TorchContender(Contender):
    name = "PyTorch eager"

    def __init__(self, image, label, weights):
        import torch

        start = time.perf_counter()
        self.model = torch_convnet().train()
        load_dslc_weights(self.model, weights)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.build_ms = (time.perf_counter() - start) * 1e3
        self.image, self.label = torch.from_numpy(image), torch.from_numpy(label)
        start = time.perf_counter()
        self.call()
        self.first_ms = (time.perf_counter() - start) * 1e3

    def call(self):
        self.model.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.image), self.label)
        loss.backward()
        return loss.item()


# ------------------------------------------------------------------ onnxsim
def onnxsim_forward(model, *, rewrite: bool, dropout_mask: bool):
    """dslc's forward ConvNet with a static batch and the loss appended as ops onnxsim's
    graph_grad differentiates (it has no LogSoftmax / SoftmaxCrossEntropyLoss / OneHot): the
    labels come one-hot, loss = -mean(sum(onehot * (logits - log(sum(exp(logits)))))).
    rewrite: Flatten -> Reshape (graph_grad has no Flatten rule). dropout_mask: dropout as a
    Mul by a fed mask already scaled by 1/(1-rate) (its Dropout rule refuses training mode)."""
    import numpy as np
    import onnx
    from onnx import helper as oh, numpy_helper as nh

    g = model.graph
    inputs = []
    for v in g.input:
        v = onnx.ValueInfoProto.FromString(v.SerializeToString())
        dim = v.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = BATCH
        inputs.append(v)
    nodes = []
    for n in g.node:
        if rewrite and n.op_type == "Flatten":
            nodes.append(oh.make_node("Reshape", [n.input[0], "flat_shape"], list(n.output), name=n.name))
        elif dropout_mask and n.op_type == "MatMul" and n.input[1] == "ConvNet.logits.weight":
            nodes.append(oh.make_node("Mul", [n.input[0], "dropout_mask"], ["dropped"], name="dropout"))
            nodes.append(oh.make_node("MatMul", ["dropped", n.input[1]], list(n.output), name=n.name))
        else:
            nodes.append(n)
    inputs.append(oh.make_tensor_value_info("onehot", onnx.TensorProto.FLOAT, [BATCH, 10]))
    if dropout_mask:
        inputs.append(oh.make_tensor_value_info("dropout_mask", onnx.TensorProto.FLOAT, [BATCH, 128]))
    nodes += [
        oh.make_node("Exp", ["logits"], ["loss/exp"]),
        oh.make_node("ReduceSum", ["loss/exp", "loss/axis1"], ["loss/sumexp"], keepdims=1),
        oh.make_node("Log", ["loss/sumexp"], ["loss/lse"]),
        oh.make_node("Sub", ["logits", "loss/lse"], ["loss/logp"]),
        oh.make_node("Mul", ["loss/logp", "onehot"], ["loss/picked"]),
        oh.make_node("ReduceSum", ["loss/picked", "loss/axis1"], ["loss/row"], keepdims=0),
        oh.make_node("ReduceMean", ["loss/row"], ["loss/mean"], keepdims=0),
        oh.make_node("Neg", ["loss/mean"], ["loss"]),
    ]
    inits = list(g.initializer) + [nh.from_array(np.array([1], np.int64), "loss/axis1"),
                                   nh.from_array(np.array([BATCH, 3136], np.int64), "flat_shape")]
    graph = oh.make_graph(nodes, "ConvNet_loss", inputs,
                          [oh.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, [])], inits)
    out = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])  # graph_grad's opset
    out.ir_version = 8
    return out


def onnxsim_gradients(model, params: list[str]):
    """(gradient model, {param: output name}) built with onnxsim's own machinery, the way its
    compile_training_loop does, minus the optimizer: the 'state' outputs are the gradients."""
    import numpy as np
    import onnx
    from onnxsim import graph_grad, qat_graph

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info)}
    shapes.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    b = qat_graph.GraphBuilder(prefix="grad__")
    b.nodes = list(model.graph.node)
    b.initializer = [t for t in model.graph.initializer if t.name not in params]
    seed = b.const(np.array(1.0, np.float32), "loss_seed")
    grads = graph_grad.build_backward(b, list(model.graph.node), shapes, {"loss": seed}, params)
    constants = {v.name: ([d.dim_value for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type)
                 for v in model.graph.input if v.name not in params}
    step = qat_graph.make_step_graph(b, constants=constants,
                                     state={p: (shapes[p], grads[p]) for p in params},
                                     loss="loss", name="onnxsim_gradients")
    return step.model, grads


def build_onnxsim(notes: list[str]):
    """(gradient model, {param: gradient output}, build ms) with onnxsim, trying dslc's forward
    graph unchanged first; build ms = dslc's forward compile + the successful differentiation."""
    import dslc
    from onnxsim import graph_grad

    start = time.perf_counter()
    forward = dslc.compile(str(SPEC), "ConvNet")
    compile_ms = (time.perf_counter() - start) * 1e3
    try:
        onnxsim_gradients(onnxsim_forward(forward, rewrite=False, dropout_mask=False), PARAMS)
        notes.append("onnxsim: dslc's ConvNet differentiated unchanged")
    except graph_grad.UnsupportedOpError as e:
        msg = str(e).split(";")[0]
        notes.append(f"onnxsim: dslc's ConvNet as is -> UnsupportedOpError: {msg}; "
                     "rewritten Flatten -> Reshape [64, 3136]")
    try:
        import numpy as np
        from onnx import helper as oh, numpy_helper as nh

        probe = onnxsim_forward(forward, rewrite=True, dropout_mask=False)
        # What its Dropout rule says about a training-mode Dropout:
        for i, n in enumerate(probe.graph.node):
            if n.op_type == "MatMul" and n.input[1] == "ConvNet.logits.weight":
                probe.graph.node.insert(i, oh.make_node("Dropout", [n.input[0], "ratio", "training"],
                                                        ["dropped"]))
                probe.graph.node[i + 1].input[0] = "dropped"
                break
        probe.graph.initializer.extend([nh.from_array(np.array(DROPOUT, np.float32), "ratio"),
                                        nh.from_array(np.array(True), "training")])
        onnxsim_gradients(probe, PARAMS)
        notes.append("onnxsim: training-mode Dropout accepted")
    except graph_grad.UnsupportedOpError as e:
        notes.append(f"onnxsim: training-mode Dropout -> UnsupportedOpError: {e}; "
                     "dropout done as Mul by a fed mask (drawn in numpy each call, timed)")
    start = time.perf_counter()
    model, grads = onnxsim_gradients(onnxsim_forward(forward, rewrite=True, dropout_mask=True), PARAMS)
    return model, grads, compile_ms + (time.perf_counter() - start) * 1e3


class OnnxsimContender(Contender):
    def __init__(self, image, label, weights, nchwc: bool, built=None, notes=None):
        import numpy as np

        self.name = f"onnxsim graph_grad, {session_label(nchwc)}"
        with quiet():
            model, grads, build_ms = built if built is not None else build_onnxsim(notes or [])
            start = time.perf_counter()
            self.sess = ort_session(model, nchwc)
        self.build_ms = build_ms + (time.perf_counter() - start) * 1e3
        self.model = model
        self.nodes = node_count(model)
        self.outputs = ["loss"] + [grads[p] for p in PARAMS]
        self.rng = np.random.default_rng(1)
        self.feeds = {"image": image, **{p: weights[p] for p in PARAMS}}
        self.label = label
        start = time.perf_counter()
        with quiet():
            self.call()
        self.first_ms = (time.perf_counter() - start) * 1e3

    def call(self, mask=None):
        import numpy as np

        if mask is None:  # inverted dropout, like Dropout in training mode
            mask = (self.rng.random((BATCH, 128), dtype=np.float32) >= DROPOUT) * np.float32(1 / (1 - DROPOUT))
        onehot = np.eye(10, dtype=np.float32)[self.label]
        return self.sess.run(self.outputs, {**self.feeds, "onehot": onehot, "dropout_mask": mask})


# ------------------------------------------------------------------ onnxruntime-training (subprocess)
def ortt_forward(model):
    """dslc's forward ConvNet plus a training-mode Dropout (with its mask output, which ORT's
    DropoutGrad needs) before the last dense layer."""
    import numpy as np
    from onnx import helper as oh, numpy_helper as nh

    nodes = []
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] == "ConvNet.logits.weight":
            nodes.append(oh.make_node("Dropout", [n.input[0], "dropout/ratio", "dropout/training"],
                                      ["dropped", "dropout/mask"], name="dropout"))
            nodes.append(oh.make_node("MatMul", ["dropped", n.input[1]], list(n.output), name=n.name))
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend([nh.from_array(np.array(DROPOUT, np.float32), "dropout/ratio"),
                                    nh.from_array(np.array(True), "dropout/training")])
    return model


class OrttContender(Contender):
    """Drives `python bench/gradients.py --worker-ortt DIR` in the onnxruntime-training venv."""

    name = "onnxruntime-training Module (fwd+bwd)"

    def __init__(self, python: str, tmp: Path, image, label, weights):
        import dslc
        import numpy as np
        import onnx

        work = tmp / "ortt"
        work.mkdir()
        forward = ortt_forward(dslc.compile(str(SPEC), "ConvNet"))
        for t in forward.graph.initializer:  # the same weights as everyone else
            if t.name in weights:
                t.CopyFrom(onnx.numpy_helper.from_array(weights[t.name], t.name))
        onnx.save(forward, work / "forward.onnx")
        np.save(work / "image.npy", image)
        np.save(work / "label.npy", label)
        self.log = open(work / "worker.log", "w")
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker-ortt", str(work)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)
        hello = self._read(work)
        self.build_ms, self.first_ms = hello["build_ms"], hello["first_ms"]
        self.nodes = hello["nodes"]
        self.versions = hello["versions"]
        self.work = work

    def _read(self, work: Path) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = (work / "worker.log").read_text().strip().splitlines()[-3:]
            raise RuntimeError("worker exited: " + " | ".join(tail))
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def block(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        return self._read(self.work)["ms"]

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        self.log.close()


def ortt_worker(work: Path) -> int:
    """Runs in the onnxruntime-training venv: build the artifacts, then answer block requests
    on stdin with one JSON line each (everything else goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter to stderr, the protocol stays clean
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        from onnxruntime.training import artifacts
        from onnxruntime.training.api import CheckpointState, Module

        start = time.perf_counter()
        model = onnx.load(str(work / "forward.onnx"))
        params = [t.name for t in model.graph.initializer if t.name.startswith("ConvNet.")]
        out = work / "artifacts"
        out.mkdir()
        artifacts.generate_artifacts(model, requires_grad=params, frozen_params=[],
                                     loss=artifacts.LossType.CrossEntropyLoss,
                                     optimizer=artifacts.OptimType.AdamW, artifact_directory=str(out))
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        state = CheckpointState.load_checkpoint(str(out / "checkpoint"))
        module = Module(str(out / "training_model.onnx"), state, str(out / "eval_model.onnx"),
                        device="cpu", session_options=so)
        module.train()
        build_ms = (time.perf_counter() - start) * 1e3
        image, label = np.load(work / "image.npy"), np.load(work / "label.npy")

        def call():
            module.lazy_reset_grad()  # the gradient buffers are overwritten, not accumulated
            return module(image, label)  # forward + backward; no optimizer step

        start = time.perf_counter()
        call()
        first_ms = (time.perf_counter() - start) * 1e3
        training = onnx.load(str(out / "training_model.onnx"))
        versions = f"onnxruntime-training {ort.__version__}, onnx {onnx.__version__}"
        proto.write(json.dumps(dict(build_ms=build_ms, first_ms=first_ms, nodes=node_count(training),
                                    versions=versions)) + "\n")
    except Exception as e:  # noqa: BLE001 - reported to the driver, which skips this contender
        proto.write(json.dumps(dict(error=first_line(e))) + "\n")
        return 1
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        n = int(line)
        call()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        proto.write(json.dumps(dict(ms=times)) + "\n")
    return 0


# ------------------------------------------------------------------ correctness
NO_DROPOUT_TARGET = "train_convnet_nodrop"


def no_dropout_spec(tmp: Path) -> Path:
    """A temporary .dsl: ConvNet's text, renamed, without its dropout call, and a step on it."""
    text = SPEC.read_text()
    body = re.search(r"^model ConvNet\(.*?^\}", text, re.S | re.M).group(0)
    body, count = re.subn(r"dropout\((\w+), [0-9.]+\)", r"\1", body)
    if count != 1:
        raise RuntimeError("cannot find ConvNet's dropout call in specs/convnet.dsl")
    body = body.replace("model ConvNet(", "model ConvNetNoDropout(", 1)
    path = tmp / "convnet_nodrop.dsl"
    path.write_text(body + f"""

step {NO_DROPOUT_TARGET}(image: f32[N, 1, 28, 28], label: i64[N]) updates ConvNetNoDropout using adam(lr=0.001) {{
    minimize sparse_categorical_crossentropy(ConvNetNoDropout(image), label, from_logits=true)
}}
""")
    return path


def rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_against_torch(tmp: Path, image, label, onnxsim_model=None) -> bool:
    """dslc's (and onnxsim's) loss and gradients vs PyTorch autograd, no dropout, same weights."""
    import numpy as np
    import torch

    with quiet():
        model = dslc_gradients(no_dropout_spec(tmp), NO_DROPOUT_TARGET)
    prefix = "ConvNetNoDropout"
    weights = {k: v for k, v in initializers(model).items() if k.startswith(prefix + ".")}
    net = torch_convnet().eval()  # no dropout
    load_dslc_weights(net, weights, prefix)
    loss = torch.nn.CrossEntropyLoss()(net(torch.from_numpy(image)), torch.from_numpy(label))
    loss.backward()
    ref = {"loss": loss.item(), **torch_grads_as_dslc(net, prefix)}

    results = {}
    for nchwc in (True, False):
        with quiet():
            sess = ort_session(model, nchwc)
            out = dict(zip([o.name for o in sess.get_outputs()],
                           sess.run(None, {"image": image, "label": label, **weights})))
        got = {"loss": out["loss"], **{k: out[f"grad.{k}"] for k in weights}}
        results[f"dslc, {session_label(nchwc)}"] = got
    if onnxsim_model is not None:
        sim_model, grads, _ = onnxsim_model
        with quiet():
            sess = ort_session(sim_model, True)
        feeds = {"image": image, "onehot": np.eye(10, dtype=np.float32)[label],
                 "dropout_mask": np.ones((BATCH, 128), np.float32),
                 **{p: weights[prefix + p[len("ConvNet"):]] for p in PARAMS}}
        out = sess.run(["loss"] + [grads[p] for p in PARAMS], feeds)
        results["onnxsim, ORT ALL"] = {"loss": out[0], **{prefix + p[len("ConvNet"):]: g
                                                          for p, g in zip(PARAMS, out[1:])}}
    ok = True
    print(f"check vs PyTorch autograd (no dropout, identical weights and batch; max |diff| / max |torch|,"
          f" tolerance 1e-4); torch loss {ref['loss']:.6f}")
    for who, got in results.items():
        errs = {k: rel_err(got[k], ref[k]) for k in ref}
        worst = max(errs, key=errs.get)
        passed = all(e <= 1e-4 for e in errs.values())
        ok &= passed if who.startswith("dslc") else True
        print(f"  {who:<36} loss {float(got['loss']):.6f}  worst {errs[worst]:.1e} ({worst.split('.', 1)[-1]})"
              f"  {'PASS' if passed else 'FAIL'}")
    return ok


def cpu_snapshot(pids: list[int]):
    """(CPU seconds used by the whole machine, CPU seconds used by pids) from /proc, or None."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest is in user)
        ours = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += int(stat[11]) + int(stat[12])  # utime, stime
        return busy / tick, ours / tick
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------ driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per contender per round")
    ap.add_argument("--ortt-python", default=DEFAULT_ORTT_PYTHON,
                    help="python of the onnxruntime-training venv (skipped when missing)")
    ap.add_argument("--no-onnxsim", action="store_true", help="skip onnxsim")
    ap.add_argument("--worker-ortt", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_ortt:
        return ortt_worker(Path(args.worker_ortt))
    with tempfile.TemporaryDirectory(prefix="dslc-bench-grad-") as tmp:
        return bench(Path(tmp), args)


def bench(tmp: Path, args) -> int:
    sys.path.insert(0, str(ROOT))
    with quiet():  # imports are not part of any build time
        import dslc  # noqa: F401
        import onnxruntime as ort
        import torch

    torch.set_num_threads(THREADS)
    ort.set_default_logger_severity(3)
    image, label = make_batch()
    notes: list[str] = []

    contenders: list[Contender] = []
    skipped: list[str] = []

    def add(label_, make):
        try:
            contenders.append(make())
        except Exception as e:  # noqa: BLE001 - one broken contender must not stop the bench
            skipped.append(f"{label_}: {first_line(e)}")

    add("dslc", lambda: DslcContender(image, label, nchwc=True))
    add("dslc (no NCHWc)", lambda: DslcContender(image, label, nchwc=False))
    if not contenders:
        print("dslc failed: " + "; ".join(skipped))
        return 1
    weights = contenders[0].weights
    add("PyTorch eager", lambda: TorchContender(image, label, weights))

    sim_built = None
    if args.no_onnxsim:
        skipped.append("onnxsim: --no-onnxsim")
    else:
        try:
            with quiet():
                import onnxsim
            sim_version = str(getattr(onnxsim, "__version__", "?")).lstrip("v")
            with quiet():
                sim_built = build_onnxsim(notes)
            notes.append(f"onnxsim {sim_version}")
        except Exception as e:  # noqa: BLE001
            skipped.append(f"onnxsim: {first_line(e)} (pip install onnxsim==0.8.1)")
    if sim_built is not None:
        add("onnxsim", lambda: OnnxsimContender(image, label, weights, True, sim_built))
        add("onnxsim (no NCHWc)", lambda: OnnxsimContender(image, label, weights, False, sim_built))
    if os.path.exists(args.ortt_python):
        try:
            ortt = OrttContender(args.ortt_python, tmp, image, label, weights)
            contenders.append(ortt)
            notes.append(ortt.versions + f" (python {args.ortt_python})")
        except Exception as e:  # noqa: BLE001
            skipped.append(f"onnxruntime-training: {first_line(e)}")
    else:
        skipped.append(f"onnxruntime-training: no venv python at {args.ortt_python} (see bench/README.md)")

    ok = check_against_torch(tmp, image, label, sim_built)

    by_name = {c.name: c for c in contenders}
    pids = [os.getpid()] + [c.proc.pid for c in contenders if isinstance(c, OrttContender)]
    cpu_before, wall_before = cpu_snapshot(pids), time.perf_counter()
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    per_round: dict[str, list[float]] = {c.name: [] for c in contenders}
    try:
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for c in order:
                ms = c.block(args.calls)
                times[c.name] += ms
                per_round[c.name].append(statistics.median(ms))
        cpu_after, wall = cpu_snapshot(pids), time.perf_counter() - wall_before
    finally:
        for c in contenders:
            c.close()
    others = None
    if cpu_before and cpu_after:
        others = max(0.0, (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1])) / wall

    base = "PyTorch eager" if "PyTorch eager" in by_name else None
    print(f"\nConvNet, batch {BATCH}, loss + gradients of all 8 weights; CPU, {THREADS} threads "
          f"(machine: {os.cpu_count()} cores); torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"median of {args.rounds} interleaved rounds x {args.calls} calls per contender; "
          "ratio = median over rounds of (round median / PyTorch's round median)\n")
    print(f"{'contender':<47} {'median ms':>9} {'vs torch':>8} {'build ms':>9} {'first ms':>9}  graph nodes")
    for c in contenders:
        med = statistics.median(times[c.name])
        ratio = (statistics.median(a / b for a, b in zip(per_round[c.name], per_round[base]))
                 if base else float("nan"))
        print(f"{c.name:<47} {med:>9.1f} {ratio:>7.2f}x {c.build_ms:>9.0f} {c.first_ms:>9.1f}  {c.nodes}")
    if others is not None:
        print(f"\nother processes used {others:.2f} of the {os.cpu_count()} cores on average while timing"
              " (from /proc; above ~0.1 the numbers are perturbed, rerun when the machine is idle)")
    for note in notes:
        print("note: " + note)
    for s in skipped:
        print("skipped: " + s)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
