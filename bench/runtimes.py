"""The ONNX runtimes dslc's graphs are checked against, behind one interface, and a timing of the
convnet's forward graph and train step in each of them.

    python bench/runtimes.py                 # batch 64, median of 10 runs after one warm-up
    python bench/runtimes.py --batch 64 --reps 20 --write   # also rewrite bench/README.md's table

Runtimes (each skipped with a note when it is not installed):
  onnxruntime       the reference every other runtime is compared with (CPU execution provider)
  onnx.reference    onnx's pure-Python evaluator
  openvino          pip install openvino; runs `--target-runtime openvino` graphs
  tract             pip install tract; runs `--target-runtime tract` graphs
  onnx2torch        pip install onnx2torch (torch is needed too); runs `--target-runtime onnx2torch` graphs
  ort-node          npm onnxruntime-node, run by node (bench/ort_js_runner.js)
  ort-web           npm onnxruntime-web (WASM, one thread), run by node

The npm packages come from dslc's npm cache ($DSLC_NPM_CACHE, else ~/.cache/dslc/npm); install them
with `npm install --ignore-scripts --prefix ~/.cache/dslc/npm onnxruntime-node onnxruntime-web`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import quiet  # noqa: E402

from dslc.web.npm import find_package  # noqa: E402

JS_RUNNER = ROOT / "bench" / "ort_js_runner.js"
_JS_DTYPE = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64", np.dtype(np.int64): "int64",
             np.dtype(np.int32): "int32", np.dtype(np.uint8): "uint8", np.dtype(np.bool_): "bool",
             np.dtype(np.uint32): "uint32"}
_NP_DTYPE = {v: k for k, v in _JS_DTYPE.items()}


class Failure(Exception):
    """A runtime's refusal, in a few words."""


def short(e: BaseException | str, width: int = 70) -> str:
    """An error in a few words: its first meaningful line, cut at `width` characters."""
    text = str(e).strip() or type(e).__name__
    m = re.search(r"operation_type='(\w+)', version=(\d+)", text)  # onnx2torch
    if m:
        return f"no converter for {m.group(1)}-{m.group(2)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # onnxruntime-style "[ONNXRuntimeError] : 1 : FAIL : Load model ... failed:REASON"
    # OpenVINO: "Exception from src/...:\nCheck 'x' failed at ...:\nREASON": the last line says why
    line = lines[-1] if lines and lines[0].startswith("Exception from") else (lines[0] if lines else text)
    for marker in ("failed:", "Exception:", "error:"):
        if marker in line and len(line.split(marker, 1)[1].strip()) > 10:
            line = line.split(marker, 1)[1].strip()
    line = line.replace("|", "/")
    return line if len(line) <= width else line[:width - 1] + "…"


# ------------------------------------------------------------------ Python runtimes
def _output_names(path: Path) -> list[str]:
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def _timed(fn, reps: int):
    out = fn()  # warm-up (and the result)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, (statistics.median(times) if times else None)


class OnnxRuntime:
    name = "onnxruntime"

    def missing(self):
        return None

    def run(self, path: Path, feeds: dict, reps: int = 0):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs, ms = _timed(lambda: sess.run(names, feeds), reps)
        return dict(zip(names, outs)), ms


class Reference:
    name = "onnx.reference"

    def missing(self):
        return None

    def run(self, path: Path, feeds: dict, reps: int = 0):
        from onnx.reference import ReferenceEvaluator
        ev = ReferenceEvaluator(str(path))
        names = _output_names(path)
        outs, ms = _timed(lambda: ev.run(names, feeds), reps)
        return dict(zip(names, outs)), ms


class OpenVINO:
    """Its column is compiled with `target_runtime='openvino'` (stride-1 ConvTranspose as Conv)."""
    name = "openvino"
    target = "openvino"

    def missing(self):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "not installed (pip install openvino)"

    def run(self, path: Path, feeds: dict, reps: int = 0):
        import openvino as ov
        core = ov.Core()
        # f32: on CPUs with bf16 units OpenVINO's default inference precision is bf16
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        names = {p.get_any_name() for p in compiled.inputs}
        # (by the dtype's name: onnxruntime returns int64 as C `long long`, which OpenVINO's binding
        # does not map, where numpy's own int64 is `long`)
        feed = {k: np.asarray(v, dtype=np.dtype(v.dtype.name)) for k, v in feeds.items() if k in names}

        outs = _output_names(path)  # compiled.outputs keep the graph's order; their names may be others

        def go():
            res = request.infer(feed)
            return {n: np.array(res[o]) for n, o in zip(outs, compiled.outputs)}
        return _timed(go, reps)


class Tract:
    """Its column is compiled with `target_runtime='tract'` (loops unrolled, ConstantOfShape of a computed
    shape as Expand)."""
    name = "tract"
    target = "tract"

    def missing(self):
        try:
            import tract  # noqa: F401
        except ImportError:
            return "not installed (pip install tract)"

    seconds = 60.0  # tract optimises a graph when loading it: more than 5 minutes for a ResNet's train step

    def run(self, path: Path, feeds: dict, reps: int = 0):
        return _in_child(_tract_run, (path, feeds, reps, 1), self.seconds)

    def run_steps(self, path: Path, feeds: dict, steps: int) -> list[dict] | Failure:
        """A train step run `steps` times on one loaded model, each `X.next` fed back into `X`."""
        try:
            return _in_child(_tract_run, (path, feeds, 0, steps), self.seconds)
        except Failure as e:
            return e


def _tract_run(path: Path, feeds: dict, reps: int, steps: int):
    """(outputs, ms) of one run, or with steps > 1 every step's outputs (in the child process)."""
    import tract
    from tract.transform import SetSymbols
    model = tract.onnx().load(str(path))
    order = [model.input_name(i) for i in range(model.input_count())]
    for name in order:
        if name not in feeds:
            raise Failure(f"tract wants input {name} fed")
    # (the inputs keep their declared facts: fixing N to the batch clashes with value_info's N)
    outs = _output_names(path)  # in order (dslc names the node of each output after it, so tract keeps the names)
    typed = model.into_model()
    # A count input that sizes a shape (`n` of random_normal([n, 100])) names a dim of the graph's
    # value_info; tract cannot read a dim from a value at run time, so the symbol is bound to it.
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {d.dim_param for vi in [*graph.input, *graph.value_info, *graph.output]
            for d in vi.type.tensor_type.shape.dim}
    bound = {n: int(v) for n, v in feeds.items() if np.ndim(v) == 0 and v.dtype.kind in "iu" and n in dims}
    if bound:
        typed.transform(SetSymbols(bound))
    runnable = typed.into_runnable()

    def go():
        return {n: v.to_numpy() for n, v in zip(outs, runnable.run([feeds[n] for n in order]))}
    if steps == 1:
        return _timed(go, reps)
    feeds, every = dict(feeds), []
    for _ in range(steps):
        every.append(go())
        feeds.update({n[:-len(".next")]: v for n, v in every[-1].items() if n.endswith(".next") and n[:-len(".next")] in feeds})
    return every


def _in_child(fn, args, seconds: float):
    """fn(*args) in a forked process, its result (or its refusal) back through a pipe; a Failure if it
    takes longer than `seconds` (the child is killed)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def work():
        try:
            with quiet():
                child.send(("ok", fn(*args)))
        except Exception as e:  # noqa: BLE001 - sent back as this run's refusal
            child.send(("failed", short(e)))
    proc = ctx.Process(target=work, daemon=True)
    proc.start()
    try:
        if not parent.poll(seconds):
            raise Failure(f"not done in {seconds:.0f} s (tract's optimisation of this graph)")
        kind, value = parent.recv()
    finally:
        proc.kill()
        proc.join()
    if kind == "failed":
        raise Failure(value)
    return value


def _import_onnx2torch():
    """onnx2torch imports torchvision for NMS and RoIAlign alone; a torchvision built for another torch
    (its C ops fail to register) is replaced by a stub, which those two converters would report."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to load it
        import types
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

        def unavailable(*_, **__):
            raise RuntimeError("torchvision does not load with this torch")
        ops.nms = ops.roi_align = unavailable
        stub.ops = ops
        sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    from onnx2torch import convert
    return convert


class Onnx2Torch:
    """onnx2torch converts opsets up to ~17: its column is compiled with `target_runtime='onnx2torch'`
    (opset 17, loops unrolled; dslc/passes/portable.py). It builds a Conv only from an initializer
    kernel, so its files keep the state inside (`dslc compile --state embedded`): a converted module's
    weights are its parameters, set through torch, not fed."""
    name = "onnx2torch"
    target = "onnx2torch"
    embedded_state = True

    def missing(self):
        try:
            import torch  # noqa: F401
            _import_onnx2torch()
        except ImportError:
            return "not installed (pip install onnx2torch)"

    def run(self, path: Path, feeds: dict, reps: int = 0):
        import torch
        convert = _import_onnx2torch()
        model = onnx.load(str(path))
        inits = {t.name for t in model.graph.initializer}
        order = [i.name for i in model.graph.input if i.name not in inits]
        names = [o.name for o in model.graph.output]
        module = convert(model)
        # (np.ascontiguousarray would turn a 0-d count such as `n` into shape [1])
        args = [torch.from_numpy(np.array(feeds[n], order="C", copy=True)) for n in order]

        def go():
            with torch.no_grad():
                out = module(*args)
            out = out if isinstance(out, (tuple, list)) else (out,)
            return {n: (o.numpy() if hasattr(o, "numpy") else np.asarray(o)) for n, o in zip(names, out)}
        return _timed(go, reps)


# ------------------------------------------------------------------ Node runtimes (one node process per batch)
class OrtJs:
    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"ort-{kind}"
        self.package = "onnxruntime-node" if kind == "node" else "onnxruntime-web"

    def missing(self):
        if shutil.which("node") is None:
            return "node not on PATH"
        if find_package(self.package) is None:
            return f"npm {self.package} not in the dslc npm cache"

    def run(self, path: Path, feeds: dict, reps: int = 0):
        return self.run_many([(path, feeds)], reps)[0]

    def run_steps(self, path: Path, feeds: dict, steps: int) -> list[dict] | Failure:
        """A train step run `steps` times in one session, each `X.next` fed back into `X`: every
        step's outputs (loading onnxruntime-web once, not once a step)."""
        return self.run_many([(path, feeds)], steps=steps)[0]

    def run_many(self, cases, reps: int = 0, timeout: float = 1800, steps: int = 1):
        """[(path, feeds)] -> [(outputs, ms) | Failure], in one node process; with steps > 1, each
        case's result is the list of every step's outputs (or a Failure)."""
        node_modules = find_package(self.package).parent
        with tempfile.TemporaryDirectory(prefix="dslc-js-") as tmp:
            tmp = Path(tmp)
            jobs = []
            for k, (path, feeds) in enumerate(cases):
                fl = []
                for j, (name, a) in enumerate(feeds.items()):
                    f = tmp / f"in{k}_{j}.bin"
                    np.ascontiguousarray(a).tofile(f)
                    fl.append({"name": name, "dtype": _JS_DTYPE[a.dtype], "dims": list(a.shape), "file": str(f)})
                jobs.append({"model": str(path), "feeds": fl, "out": str(tmp / f"out{k}"), "reps": reps, "steps": steps})
            (tmp / "jobs.json").write_text(json.dumps(jobs))
            done = subprocess.run(["node", str(JS_RUNNER), self.kind, str(tmp / "jobs.json")],
                                  capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "NODE_PATH": str(node_modules)})
            results = []
            for k in range(len(cases)):
                out = tmp / f"out{k}"
                if (out / "error.txt").is_file():
                    results.append(Failure((out / "error.txt").read_text()))
                elif steps > 1 and (out / f"step{steps - 1}" / "outputs.json").is_file():
                    results.append([_read_outputs(out / f"step{j}")[0] for j in range(steps)])
                elif (out / "outputs.json").is_file():
                    results.append(_read_outputs(out))
                else:
                    results.append(Failure(f"node exited {done.returncode}: {done.stderr.strip()[-300:]}"))
            return results


def _read_outputs(folder: Path) -> tuple[dict, float | None]:
    """What ort_js_runner.js wrote into `folder`: (outputs by name, ms)."""
    meta = json.loads((folder / "outputs.json").read_text())
    return {o["name"]: np.fromfile(o["file"], dtype=_NP_DTYPE[o["dtype"]]).reshape(o["dims"])
            for o in meta["outputs"]}, meta["ms"]


RUNTIMES = [OnnxRuntime(), Reference(), OpenVINO(), Tract(), Onnx2Torch(), OrtJs("node"), OrtJs("web")]


def run_cases(runtime, cases, reps: int = 0):
    """[(path, feeds)] -> [(outputs, ms) | Failure] in `runtime`."""
    if hasattr(runtime, "run_many"):
        return runtime.run_many(cases, reps)
    results = []
    for path, feeds in cases:
        try:
            with quiet():
                results.append(runtime.run(path, feeds, reps))
        except Exception as e:  # noqa: BLE001 - every refusal is a result here
            results.append(Failure(short(e)))
    return results


# ------------------------------------------------------------------ timing (python bench/runtimes.py)
def convnet_cases(batch: int, folder: Path, target_runtime: str | None = None):
    import dslc
    prog = dslc.load(ROOT / "specs" / "convnet.dsl")
    rng = np.random.default_rng(0)
    image = rng.random((batch, 1, 28, 28), dtype=np.float32)
    label = rng.integers(0, 10, batch).astype(np.int64)
    cases = []
    for target, emit, feeds in (
            ("ConvNet", None, {"image": image}),
            ("train_convnet", None, {"image": image, "label": label})):  # step, seed: defaults
        path = folder / f"{target}-{target_runtime or 'default'}.onnx"
        onnx.save(dslc.compile(prog, target, emit=emit, target_runtime=target_runtime), str(path))
        cases.append((f"{target} ({'forward' if target == 'ConvNet' else 'train step'})", path, feeds))
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="rewrite the table in bench/README.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cases = convnet_cases(args.batch, Path(tmp))
        table = {}
        notes = []
        for rt in RUNTIMES:
            why = rt.missing()
            if why:
                notes.append(f"{rt.name}: skipped, {why}")
                continue
            reps = max(1, args.reps // 5) if rt.name == "onnx.reference" else args.reps
            own = convnet_cases(args.batch, Path(tmp), rt.target) if getattr(rt, "target", None) else cases
            t0 = time.perf_counter()
            results = run_cases(rt, [(p, f) for _, p, f in own], reps)
            print(f"{rt.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            table[rt.name] = results
    lines = [f"| runtime | {' | '.join(c[0] for c in cases)} |", "|---|" + "---|" * len(cases)]
    base = table["onnxruntime"]
    for name, results in table.items():
        cells = []
        for r, b in zip(results, base):
            if isinstance(r, Failure):
                cells.append(f"fails: {short(r, 50)}")
            else:
                cells.append(f"{r[1]:.1f} ms ({r[1] / b[1]:.2f}x)")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    text = "\n".join(lines + [""] + [f"- {n}" for n in notes])
    print(text)
    if args.write:
        _write_readme(text, args)
    return 0


BEGIN, END = "<!-- runtimes table: begin -->", "<!-- runtimes table: end -->"


def _write_readme(text: str, args) -> None:
    readme = ROOT / "bench" / "README.md"
    old = readme.read_text()
    block = (f"{BEGIN}\nBatch {args.batch}, median of {args.reps} runs after one warm-up (onnx.reference: "
             f"{max(1, args.reps // 5)}), each runtime with its default threads "
             f"(ort-web: 1, WASM) on a {os.cpu_count()}-core CPU; OpenVINO, tract and onnx2torch run the graphs "
             f"compiled with their `--target-runtime`; ratio to onnxruntime (CPU EP) in parentheses.\n\n{text}\n{END}")
    if BEGIN in old:
        new = old.split(BEGIN)[0] + block + old.split(END, 1)[1]
    else:
        new = old.rstrip() + "\n\n## `runtimes.py`: the convnet in every installed runtime\n\n" \
              "```\npython bench/runtimes.py --write\n```\n\n" + block + "\n"
    readme.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
