"""How far 10 training steps of node_convnet part between runtimes, against PyTorch's own runs (issue 19).

    python bench/node_convnet_runtimes.py              # n = 8 real MNIST digits, 10 steps
    python bench/node_convnet_runtimes.py --n 16 --steps 10
    python bench/node_convnet_runtimes.py --synthetic  # the portability suite's batch: uniform noise

The portability table (README, `bench/portability.py --train-steps 10`) shows `train_mnist_node_convnet`
parting in onnx.reference after a few steps while its gradient graph agrees to 1e-6. This runs the same
step (specs/convnet.dsl, RMSprop, two dropouts) from dslc's initial weights on real digits (the
embedded MNIST subset: blank pixels are exact zeros, so relu units sit on their kink) with the same
dropout draws (the step compiled with `random="input"`, standard uniforms from numpy, default_rng(step)):

- dslc: onnxruntime float32 (1 and 2 threads), onnx.reference float32, onnxruntime float64;
- a PyTorch twin (functional: the same layers, Keras' categorical crossentropy from probabilities,
  TF.js' RMSprop): float64, float32 with 1 and 2 threads and with oneDNN (mkldnn) off;

and prints the worst tensor's relative difference (max |a - b| / max |b|, over the 12 trained weights)
after each step for each pair. The float64 rows check that the twin is the same step; the float32 rows
show how far float32 runs of one step part in PyTorch itself, the yardstick for the runtimes' spread.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dslc  # noqa: E402

SPEC = ROOT / "specs" / "convnet.dsl"
STEP = "train_mnist_node_convnet"
LAYERS = ["conv1", "conv2", "conv3", "conv4", "hidden", "probs"]
WEIGHTS = [f"MnistNodeConvNet.{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")]
LR, RHO, EPS = 1e-3, 0.9, 1e-7


def batches(n: int, steps: int, synthetic: bool = False) -> list[dict[str, np.ndarray]]:
    """One batch of n real digits (scaled to [0, 1], one-hot labels), or of uniform noise for images
    and labels (bench/portability.py's `feeds_for`, seed 0), and, per step, the two dropout layers'
    uniforms as `random="input"` takes them."""
    if synthetic:
        rng = np.random.default_rng(0)
        image = rng.random((n, 1, 28, 28)).astype(np.float32)
        label = rng.random((n, 10)).astype(np.float32)
    else:
        data = np.load(Path(dslc.__file__).parent / "data" / "embedded.npz")
        image = (data["mnist_train_image"][:n, None] / 255.0).astype(np.float32)
        label = np.eye(10, dtype=np.float32)[data["mnist_train_label"][:n]]
    out = []
    for k in range(steps):
        rng = np.random.default_rng(k)
        out.append({"image": image, "label": label, "random.0": rng.random((n, 1024), dtype=np.float32),
                    "random.1": rng.random((n, 512), dtype=np.float32)})
    return out


def initial_weights() -> dict[str, np.ndarray]:
    import onnxruntime as ort
    _, init = dslc.split_state(dslc.compile(SPEC, STEP, random="input"))
    sess = ort.InferenceSession(init.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in init.graph.output], sess.run(None, {})))


def dslc_run(feeds_list: list[dict], runtime: str = "onnxruntime", float64: bool = False,
             threads: int = 0) -> list[dict]:
    """The compiled step fed back by name (X.next into X): the weights after each step."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    step, init = dslc.split_state(dslc.compile(SPEC, STEP, random="input", float64=float64))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    state = dict(zip([o.name for o in init.graph.output],
                     ort.InferenceSession(init.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {})))
    names = [o.name for o in step.graph.output]
    if runtime == "onnx.reference":
        run = ReferenceEvaluator(step).run
    else:
        run = ort.InferenceSession(step.SerializeToString(), so, providers=["CPUExecutionProvider"]).run
    dt = np.float64 if float64 else np.float32
    out = []
    for feeds in feeds_list:
        got = dict(zip(names, run(names, {**state, **{k: v.astype(dt) for k, v in feeds.items()}})))
        state.update({k[:-5]: v for k, v in got.items() if k.endswith(".next") and k[:-5] in state})
        out.append({w: np.asarray(state[w], np.float64) for w in WEIGHTS})
    return out


def torch_run(init: dict[str, np.ndarray], feeds_list: list[dict], dtype: str = "float32", threads: int = 1,
              mkldnn: bool = True) -> list[dict]:
    """The step in PyTorch from the same weights on the same batch and draws: the weights after each step."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    P = {w: torch.tensor(init[w], dtype=dt, requires_grad=True) for w in WEIGHTS}
    ms = {w: torch.zeros_like(P[w]) for w in WEIGHTS}

    def conv(x, name):
        return F.relu(F.conv2d(x, P[f"MnistNodeConvNet.{name}.weight"], P[f"MnistNodeConvNet.{name}.bias"]))

    def dense(x, name):  # dslc's dense kernel is [in, out]
        return x @ P[f"MnistNodeConvNet.{name}.weight"] + P[f"MnistNodeConvNet.{name}.bias"]

    def dropout(x, u, rate):
        return x * ((u >= rate).to(dt) * (1.0 / (1.0 - rate)))

    out = []
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        for feeds in feeds_list:
            r = {k: torch.tensor(v).to(dt) for k, v in feeds.items()}
            x = F.max_pool2d(conv(conv(r["image"], "conv1"), "conv2"), 2)
            x = F.max_pool2d(conv(conv(x, "conv3"), "conv4"), 2)
            h = F.relu(dense(dropout(x.flatten(1), r["random.0"], 0.25), "hidden"))
            p = torch.softmax(dense(dropout(h, r["random.1"], 0.5), "probs"), -1)
            p = p / p.sum(1, keepdim=True)  # Keras' categorical crossentropy from probabilities
            loss = -(r["label"] * p.clamp(1e-7, 1 - 1e-7).log()).sum(1).mean()
            grads = torch.autograd.grad(loss, [P[w] for w in WEIGHTS])
            with torch.no_grad():
                for w, g in zip(WEIGHTS, grads):  # TF.js RMSprop: eps inside the sqrt
                    ms[w] = RHO * ms[w] + (1 - RHO) * g * g
                    P[w] -= LR * g / torch.sqrt(ms[w] + EPS)
            out.append({w: P[w].detach().double().numpy().copy() for w in WEIGHTS})
    return out


def worst(a: dict, b: dict) -> tuple[float, str]:
    """The largest per-tensor relative difference (max |a - b| / max |b|) and its tensor."""
    return max((float(np.abs(a[w] - b[w]).max() / max(np.abs(b[w]).max(), 1e-30)), w) for w in b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="digits in the batch (default 8)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--synthetic", action="store_true", help="uniform noise for images and labels (the "
                    "portability suite's batch) instead of real digits")
    args = ap.parse_args(argv)
    feeds = batches(args.n, args.steps, args.synthetic)
    init = initial_weights()
    runs = {
        "torch f64": torch_run(init, feeds, "float64"),
        "torch f32 1 thread": torch_run(init, feeds, "float32", 1),
        "torch f32 2 threads": torch_run(init, feeds, "float32", 2),
        "torch f32 mkldnn off": torch_run(init, feeds, "float32", 1, mkldnn=False),
        "dslc f64 (onnxruntime)": dslc_run(feeds, float64=True),
        "dslc f32 (onnxruntime, 1 thread)": dslc_run(feeds, threads=1),
        "dslc f32 (onnxruntime, 2 threads)": dslc_run(feeds, threads=2),
        "dslc f32 (onnx.reference)": dslc_run(feeds, "onnx.reference"),
    }
    pairs = [("dslc f64 (onnxruntime)", "torch f64"),
             ("torch f32 1 thread", "torch f64"), ("torch f32 2 threads", "torch f32 1 thread"),
             ("torch f32 mkldnn off", "torch f32 1 thread"),
             ("dslc f32 (onnxruntime, 1 thread)", "torch f64"),
             ("dslc f32 (onnxruntime, 1 thread)", "torch f32 1 thread"),
             ("dslc f32 (onnxruntime, 2 threads)", "dslc f32 (onnxruntime, 1 thread)"),
             ("dslc f32 (onnx.reference)", "dslc f32 (onnxruntime, 1 thread)"),
             ("dslc f32 (onnx.reference)", "torch f64")]
    print(f"n = {args.n} {'noise images' if args.synthetic else 'MNIST digits'}, {args.steps} steps, the same weights and draws; worst tensor's "
          "relative difference after each step")
    print("| runs compared | " + " | ".join(str(k + 1) for k in range(args.steps)) + " | worst tensor at the end |")
    print("|---|" + "---|" * (args.steps + 1))
    for a, b in pairs:
        row = [worst(x, y) for x, y in zip(runs[a], runs[b])]
        print(f"| {a} vs {b} | " + " | ".join(f"{e:.0e}" for e, _ in row) + f" | {row[-1][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
