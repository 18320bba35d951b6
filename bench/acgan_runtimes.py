"""The ACGAN generator's training step across runtimes (issue 19). Four measurements:

    python bench/acgan_runtimes.py --n 8                  # 10 train steps in every runtime vs onnxruntime
    python bench/acgan_runtimes.py --n 8 --runtime tract --runtime openvino --float64
    python bench/acgan_runtimes.py --gradients --n 4      # one gradient graph: float32 runtimes vs float64
    python bench/acgan_runtimes.py --kinks --n 8          # each step's gradients on onnxruntime's trajectory
    python bench/acgan_runtimes.py --torch --n 8          # the PyTorch twin's own runs against each other

Default: `steps` train steps of `train_generator` from the default files (NAME.onnx + NAME.init.onnx,
state fed back by name: bench/portability.py `train_steps`) in each installed runtime (each column's
own `--target-runtime` files where it has one), compared with onnxruntime after every step: the worst
tensor's scale-aware relative error (`rel_error`, over every output). `--float64` does the same with
the float64 emission (`float64=True`).

--gradients: the step's gradient graph in float32 (onnxruntime, onnx.reference) and float64
(onnxruntime), per weight: the elements exactly zero in float64 and whether they are exact zeros in
float32 too, the tiny ones (< 1e-4 of the tensor's largest), sign disagreements, the errors.

--kinks: along onnxruntime's trajectory, each step's gradient graph fed the state before that step in
onnxruntime, onnx.reference and float64, and every relu / leaky-relu unit that the two float32
runtimes put on different sides of its kink, with its value in each.

--torch: the same step in PyTorch (a twin, autograd and Keras' Adam), from dslc's initial weights on
the same draws (the step compiled with `random="input"`, draws from numpy): float64, float32 with 1
and 2 threads and with oneDNN (mkldnn) off, and dslc in onnxruntime (float64; float32 with 1 and 2
threads), compared after every step (worst tensor of the 13 trained weights).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import portability as P  # noqa: E402
import runtimes as R  # noqa: E402

import dslc  # noqa: E402

SPEC = ROOT / "specs" / "acgan.dsl"
NOT_FEEDABLE = {"onnx2torch": "weights cannot be inputs (tests/test_portability.py)"}


def trajectories(n: int, steps: int, names: list[str] | None, log=print, float64: bool = False) -> dict:
    """{runtime: [outputs of each step] | Failure}, onnxruntime first."""
    runtimes = [rt for rt in R.RUNTIMES if rt.name == "onnxruntime" or not names or rt.name in names]
    batch = {"n": np.array(n, np.int64)}
    out = {}
    with tempfile.TemporaryDirectory(prefix="dslc-acgan-") as tmp:
        files = {}
        for rt in runtimes:
            why = rt.missing() or NOT_FEEDABLE.get(rt.name)
            if why:
                log(f"{rt.name}: skipped, {why}")
                continue
            t = P.target_of(rt)
            if t not in files:
                files[t] = _step_files(Path(tmp), t, float64)
            out[rt.name] = P.train_steps(rt, *files[t], batch, steps)
            log(f"{rt.name}: done")
    return out


def _step_files(folder: Path, target_runtime: str | None, float64: bool) -> tuple[Path, Path]:
    """The step's default files (as `dslc compile` writes them) for a runtime's column."""
    import onnx
    step, init = dslc.split_state(dslc.compile(SPEC, "train_generator", target_runtime=target_runtime,
                                               float64=float64))
    paths = folder / f"step-{target_runtime}.onnx", folder / f"step-{target_runtime}.init.onnx"
    onnx.save(step, str(paths[0]))
    onnx.save(init, str(paths[1]))
    return paths


def report(traj: dict, log=print) -> None:
    ref = traj["onnxruntime"]
    for name, outs in traj.items():
        if name == "onnxruntime":
            continue
        if isinstance(outs, R.Failure):
            log(f"{name}: {R.short(outs)}")
            continue
        row = []
        for k, (a, b) in enumerate(zip(outs, ref)):
            errs = {t: P.rel_error({t: a[t]}, {t: b[t]}) for t in b}
            worst = max(errs, key=lambda t: errs[t] if isinstance(errs[t], float) else np.inf)
            row.append(f"{errs[worst]:.0e}" if isinstance(errs[worst], float) else errs[worst])
            if k == len(outs) - 1:
                top = sorted(((e, t) for t, e in errs.items() if isinstance(e, float)), reverse=True)[:3]
        log(f"{name}: worst tensor per step " + " ".join(row))
        log("    after the last step: " + ", ".join(f"{t} {e:.1e}" for e, t in top))


def gradients(n: int, log=print) -> None:
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    def run_ort(m):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(names, {"n": np.array(n, np.int64)})))

    g32 = dslc.compile(SPEC, "train_generator", emit="gradients")
    g64 = dslc.compile(SPEC, "train_generator", emit="gradients", float64=True)
    o32, o64 = run_ort(g32), run_ort(g64)
    names = [o.name for o in g32.graph.output]
    ref = dict(zip(names, ReferenceEvaluator(g32).run(names, {"n": np.array(n, np.int64)})))
    log(f"n = {n}: loss float32 onnxruntime {o32['loss']:.8g}, onnx.reference {ref['loss']:.8g}, float64 {o64['loss']:.10g}")
    log("| gradient | elements | exact 0 (f64) | of them exact 0 in ort, ref | tiny (< 1e-4 max, f64) | sign ort != ref | sign ort != f64 | ort vs f64 | ref vs f64 |")
    log("|---|---|---|---|---|---|---|---|---|")
    for k in names:
        if not k.startswith("grad."):
            continue
        a, r, b = o32[k].astype(np.float64), ref[k].astype(np.float64), o64[k]
        scale = max(np.abs(b).max(), 1e-30)
        zero = b == 0
        tiny = (np.abs(b) < 1e-4 * scale) & ~zero
        log(f"| {k[5:]} | {b.size} | {zero.sum()} | {(a[zero] == 0).sum()}, {(r[zero] == 0).sum()} | {tiny.sum()} | "
            f"{(np.sign(a) != np.sign(r)).sum()} | {(np.sign(a) != np.sign(b)).sum()} | "
            f"{np.abs(a - b).max() / scale:.0e} | {np.abs(r - b).max() / scale:.0e} |")


# ------------------------------------------------------------------ the PyTorch twin (--torch)
GEN = ["emb.weight", "fc.weight", "fc.bias", "up1.weight", "up1.bias", "bn1.gamma", "bn1.beta", "up2.weight",
       "up2.bias", "bn2.gamma", "bn2.beta", "image.weight", "image.bias"]
GEN = [f"Generator.{w}" for w in GEN]
DROP = [(32, 14, 14), (64, 14, 14), (128, 7, 7), (256, 7, 7)]


def draws(n: int, steps: int) -> list[dict[str, np.ndarray]]:
    """The step's random draws as `random="input"` feeds them (standard uniforms): z, the classes,
    the four dropout masks; numpy default_rng(step)."""
    out = []
    for k in range(steps):
        rng = np.random.default_rng(k)
        feeds = {"random.0": rng.random((n, 100), dtype=np.float32), "random.1": rng.random(n, dtype=np.float32)}
        feeds.update({f"random.{2 + i}": rng.random((n, *s), dtype=np.float32) for i, s in enumerate(DROP)})
        out.append(feeds)
    return out


def dslc_run(n: int, batches: list[dict], float64: bool = False, threads: int = 0) -> list[dict]:
    """The dslc step (random="input") in onnxruntime, fed back by name: the weights after each step."""
    import onnxruntime as ort
    step, init = dslc.split_state(dslc.compile(SPEC, "train_generator", random="input", float64=float64))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    state = dict(zip([o.name for o in init.graph.output],
                     ort.InferenceSession(init.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {})))
    sess = ort.InferenceSession(step.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    dt = np.float64 if float64 else np.float32
    out = []
    for feeds in batches:
        got = dict(zip(names, sess.run(names, {"n": np.array(n, np.int64), **state,
                                                **{k: v.astype(dt) for k, v in feeds.items()}})))
        state.update({k[:-5]: v for k, v in got.items() if k.endswith(".next") and k[:-5] in state})
        out.append({w: state[w].astype(np.float64) for w in GEN})
    return out


def torch_run(init: dict[str, np.ndarray], batches: list[dict], dtype: str = "float32", threads: int = 1,
              mkldnn: bool = True) -> list[dict]:
    """The same step written in PyTorch (autograd; Keras' Adam, lr 2e-4, beta1 0.5, eps 1e-7, as
    README's equations), from the same weights on the same draws: the weights after each step."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    P = {k: torch.tensor(v, dtype=dt if v.dtype.kind == "f" else None) for k, v in init.items()}
    for w in GEN:
        P[w].requires_grad_(True)
    m = {w: torch.zeros_like(P[w]) for w in GEN}
    v = {w: torch.zeros_like(P[w]) for w in GEN}
    lr, b1, b2, eps = 2e-4, 0.5, 0.999, 1e-7

    def bn(x, name):
        mean = x.mean((0, 2, 3), keepdim=True)
        c = x - mean
        var = (c * c).mean((0, 2, 3), keepdim=True)
        return c / torch.sqrt(var + 1e-3) * P[f"{name}.gamma"].view(1, -1, 1, 1) + P[f"{name}.beta"].view(1, -1, 1, 1)

    def up(x, name, stride, crop):  # Keras 'same' for stride 2: the full transposed conv, cropped (1, 2)
        y = F.conv_transpose2d(x, P[f"Generator.{name}.weight"], P[f"Generator.{name}.bias"], stride=stride)
        return y[:, :, 1:-2, 1:-2] if crop else y

    def conv(x, name, stride, masks):
        x = F.pad(x, (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1))  # Keras 'same'
        y = F.leaky_relu(F.conv2d(x, P[f"Discriminator.{name}.weight"], P[f"Discriminator.{name}.bias"], stride=stride), 0.2)
        return y * ((masks >= 0.3).to(dt) * (1 / 0.7))

    out = []
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        for k, feeds in enumerate(batches):
            r = {key: torch.tensor(val) for key, val in feeds.items()}
            z = (r["random.0"] * 2 - 1).to(dt)
            cls = torch.floor(r["random.1"] * 10).long()
            h = z * P["Generator.emb.weight"][cls]
            fc = F.relu(h @ P["Generator.fc.weight"] + P["Generator.fc.bias"]).reshape(-1, 384, 3, 3)
            b_1 = bn(F.relu(up(fc, "up1", 1, False)), "Generator.bn1")
            b_2 = bn(F.relu(up(b_1, "up2", 2, True)), "Generator.bn2")
            image = torch.tanh(up(b_2, "image", 2, True))
            x = image
            for i, (name, s) in enumerate((("conv1", 2), ("conv2", 1), ("conv3", 2), ("conv4", 1))):
                x = conv(x, name, s, r[f"random.{2 + i}"].to(dt))
            f = x.flatten(1)
            p = torch.sigmoid(f @ P["Discriminator.realness.weight"] + P["Discriminator.realness.bias"])
            c = torch.softmax(f @ P["Discriminator.class_probs.weight"] + P["Discriminator.class_probs.bias"], -1)
            pc, qc = p.clamp(1e-7, 1 - 1e-7), (1 - p).clamp(1e-7, 1 - 1e-7)
            bce = -(0.95 * torch.log(pc) + 0.05 * torch.log(qc)).mean()
            picked = (c / c.sum(-1, keepdim=True)).gather(1, cls[:, None])[:, 0]
            loss = bce - torch.log(picked.clamp(1e-7, 1 - 1e-7)).mean()
            grads = torch.autograd.grad(loss, [P[w] for w in GEN])
            t = k + 1
            with torch.no_grad():
                for w, g in zip(GEN, grads):
                    m[w] = b1 * m[w] + (1 - b1) * g
                    v[w] = b2 * v[w] + (1 - b2) * g * g
                    P[w] -= (m[w] / (torch.sqrt(v[w]) + eps)) * (lr * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t))
            out.append({w: P[w].detach().double().numpy().copy() for w in GEN})
    return out


def _worst(a: dict, b: dict) -> tuple[float, str]:
    """The largest per-tensor relative difference (max |a - b| / max |b|) and its tensor."""
    return max((float(np.abs(a[w] - b[w]).max() / max(np.abs(b[w]).max(), 1e-30)), w) for w in b)


def torch_twin(n: int, steps: int, log=print) -> None:
    batches = draws(n, steps)
    _, init = dslc.split_state(dslc.compile(SPEC, "train_generator", random="input"))
    import onnxruntime as ort
    init = dict(zip([o.name for o in init.graph.output],
                    ort.InferenceSession(init.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})))
    runs = {"torch float64": torch_run(init, batches, "float64", 1)}
    runs["torch float32, 1 thread"] = torch_run(init, batches, "float32", 1)
    runs["torch float32, 2 threads"] = torch_run(init, batches, "float32", 2)
    runs["torch float32, mkldnn off"] = torch_run(init, batches, "float32", 1, mkldnn=False)
    runs["dslc float64 (onnxruntime)"] = dslc_run(n, batches, float64=True)
    runs["dslc float32 (onnxruntime, 1 thread)"] = dslc_run(n, batches, threads=1)
    runs["dslc float32 (onnxruntime, 2 threads)"] = dslc_run(n, batches, threads=2)
    pairs = [("torch float64", r) for r in runs if r != "torch float64"] + [
        ("torch float32, 1 thread", "torch float32, 2 threads"), ("torch float32, 1 thread", "torch float32, mkldnn off"),
        ("torch float32, 1 thread", "dslc float32 (onnxruntime, 1 thread)"),
        ("dslc float32 (onnxruntime, 1 thread)", "dslc float32 (onnxruntime, 2 threads)")]
    log(f"n = {n}, {steps} steps, the same weights and draws; worst tensor's relative difference after each step")
    log("| runs compared | " + " | ".join(str(k + 1) for k in range(steps)) + " | worst tensor at the end |")
    log("|---|" + "---|" * (steps + 1))
    for ref, other in pairs:
        row = [_worst(a, b) for a, b in zip(runs[other], runs[ref])]
        log(f"| {other} vs {ref} | " + " | ".join(f"{e:.0e}" for e, _ in row) + f" | {row[-1][1]} |")


# ------------------------------------------------------------------ kinks (--kinks)
def _with_masks(model):
    """The gradient graph with each relu / leaky-relu derivative's mask (a Greater on the unit's
    value, which autodiff emits) and the value it tests as extra outputs: [(layer, mask, value)]."""
    import onnx
    found = []
    for node in model.graph.node:
        if node.op_type == "Greater" and node.output[0].startswith("grad/") and "/loss/" not in node.output[0] \
                and not node.output[0].startswith("grad/loss"):
            layer = node.output[0].split("/")[1]
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.BOOL, None))
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
            found.append((layer, node.output[0], node.input[0]))
    return found


def kinks(n: int, steps: int, log=print) -> None:
    """Along onnxruntime's trajectory (the default files, state fed back), each step's gradient graph
    fed that step's state in onnxruntime, onnx.reference (float32) and onnxruntime in float64: how far
    each float32 gradient is from float64's, and every relu / leaky-relu unit whose derivative (its
    mask) onnxruntime and onnx.reference take on different sides of the kink, with its value in each."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    so = ort.SessionOptions()
    so.log_severity_level = 3
    g32, init = dslc.split_state(dslc.compile(SPEC, "train_generator", emit="gradients"))
    g64, _ = dslc.split_state(dslc.compile(SPEC, "train_generator", emit="gradients", float64=True))
    masks = _with_masks(g32)
    s0 = ort.InferenceSession(init.SerializeToString(), so, providers=["CPUExecutionProvider"])
    state = dict(zip([o.name for o in init.graph.output], s0.run(None, {})))
    with tempfile.TemporaryDirectory(prefix="dslc-acgan-") as tmp:
        traj = P.train_steps(R.OnnxRuntime(), *P.save_step_files(Path(tmp), SPEC, "train_generator"),
                             {"n": np.array(n, np.int64)}, steps)
    s32 = ort.InferenceSession(g32.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s64 = ort.InferenceSession(g64.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(g32)
    names32 = [o.name for o in g32.graph.output]
    names64 = [o.name for o in g64.graph.output]
    log(f"n = {n}: each step's gradients fed onnxruntime's state before it; float32 vs float64, worst tensor")
    for k in range(steps):
        feeds = {"n": np.array(n, np.int64), **state}
        a = dict(zip(names32, s32.run(names32, feeds)))
        r = dict(zip(names32, ref.run(names32, feeds)))
        d = dict(zip(names64, s64.run(names64, {k_: (v.astype(np.float64) if v.dtype == np.float32 else v)
                                                for k_, v in feeds.items()})))
        grads = [t for t in names64 if t.startswith("grad.")]
        want = {t: d[t] for t in grads}
        ea, er = _worst(a, want), _worst(r, want)
        flips = []
        for layer, mask, value in masks:
            for idx in zip(*np.nonzero(a[mask] != r[mask])):
                flips.append(f"{layer}{list(map(int, idx))} onnxruntime {a[value][idx]:.2g}, onnx.reference {r[value][idx]:.2g}")
        log(f"step {k + 1}: onnxruntime {ea[0]:.0e} ({ea[1][5:]}), onnx.reference {er[0]:.0e} ({er[1][5:]}); "
            f"units on different sides of their kink: {'; '.join(flips) or 'none'}")
        state.update({t[:-5]: v for t, v in traj[k].items() if t.endswith(".next") and t[:-5] in state})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="the step's sample count (default 4)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--runtime", action="append", help="only this runtime besides onnxruntime (repeatable)")
    ap.add_argument("--gradients", action="store_true", help="the gradient graph in float32 and float64 instead")
    ap.add_argument("--torch", action="store_true", help="the PyTorch twin's runs against each other instead")
    ap.add_argument("--float64", action="store_true", help="train the float64 emission")
    ap.add_argument("--kinks", action="store_true", help="each step's gradients on onnxruntime's trajectory instead")
    args = ap.parse_args(argv)
    if args.kinks:
        kinks(args.n, args.steps)
        return 0
    if args.torch:
        torch_twin(args.n, args.steps)
        return 0
    if args.gradients:
        gradients(args.n)
        return 0
    report(trajectories(args.n, args.steps, args.runtime, log=lambda s: print(s, file=sys.stderr), float64=args.float64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
