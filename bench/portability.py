"""Portability: every target of every spec, run in every installed ONNX runtime and compared with
onnxruntime.

    python bench/portability.py            # print the matrix
    python bench/portability.py --write    # and rewrite the matrix in README.md ("Portability")
    python bench/portability.py --only convnet --runtime tract
    python bench/portability.py --train-steps 10 --write   # every step trained 10 steps in each runtime

Graphs: each model and typed fn (its forward graph) and each step four times: `train` (forward +
backward + optimizer update, the default), `gradients`, `apply` (the update alone) and `forward` (the
loss alone); batch 2, compiled with the default options (weight seed 0), and once more per target
runtime that a column asks for (`target` of its runtime in runtimes.py: tract, onnx2torch), whose
numbers are compared with the default emission's in onnxruntime. Every graph is saved as `dslc compile`
writes it: its training state (weights, optimizer state, `step`, `seed`) plain inputs, fed in every
runtime with the initial values of the default emission's NAME.init.onnx. Other feeds: every other
input, seeded (numpy default_rng(0) per graph): floats uniform in [0, 1), integer labels in [0, 3),
integer scalars (counts) in [1, 10).

Error: per output, max |x - ref| / max(max |ref|, 1e-6) (scale-aware relative error; integer and
boolean outputs must be equal), the largest over the outputs. A cell is `ok` when it is <= 1e-4,
`differs` above, or the runtime's error in a few words.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import runtimes as R  # noqa: E402

import dslc  # noqa: E402
from dslc.frontend import ast as A  # noqa: E402

TOLERANCE = 1e-4
BATCH = 2
EMITS = ("train", "gradients", "apply", "forward")
_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
       onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


def graphs(specs=None):
    """(spec, target, emit) for every graph of the suite: emit None for models and fns."""
    for path in sorted((ROOT / "specs").glob("*.dsl")):
        if specs and path.stem not in specs:
            continue
        prog = dslc.load(path)
        for t in prog.targets():
            if isinstance(prog.decls.get(t), A.Step):
                for emit in EMITS:
                    yield path, t, emit
            else:
                yield path, t, None


def label(path: Path, target: str, emit: str | None) -> str:
    return f"{path.stem}/{target}" + (f" ({emit})" if emit else "")


def feeds_for(model: onnx.ModelProto, n: int = BATCH, seed: int = 0, skip=()) -> dict[str, np.ndarray]:
    """Seeded values for the inputs without a default, except those in `skip` (the state)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits or vi.name in skip:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else n for d in tt.shape.dim]
        dtype = _NP[tt.elem_type]
        if np.issubdtype(dtype, np.integer):
            # labels below 3, the fewest classes of a spec (tabular's wine: tract aborts on a OneHot
            # index past its depth); counts (scalars) from 1 to 9
            feeds[vi.name] = np.asarray(rng.integers(0, 3, size=shape) if shape else rng.integers(1, 10), dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            feeds[vi.name] = rng.random(shape).astype(dtype)
    return feeds


def rel_error(out: dict, ref: dict) -> float | str:
    """The largest scale-aware relative error over the reference's outputs, or what is wrong."""
    worst = 0.0
    for name, r in ref.items():
        if name not in out:
            return f"no output {name}"
        x, r = np.asarray(out[name]), np.asarray(r)
        if x.shape != r.shape:
            return f"{name}: shape {list(x.shape)} != {list(r.shape)}"
        if r.dtype.kind in "iub":
            if not np.array_equal(x.astype(r.dtype), r):
                return f"{name}: integers differ"
            continue
        x, r = x.astype(np.float64), r.astype(np.float64)
        if not np.all(np.isfinite(x) == np.isfinite(r)):
            return f"{name}: non-finite values differ"
        finite = np.isfinite(r)
        if finite.any():
            scale = max(float(np.max(np.abs(r[finite]))), 1e-6)
            worst = max(worst, float(np.max(np.abs(x[finite] - r[finite]))) / scale)
    return worst


def cell(result) -> tuple[bool, str]:
    if isinstance(result, R.Failure):
        return False, R.short(result, 60)
    if isinstance(result, str):
        return False, result
    return (result <= TOLERANCE), (f"ok {result:.0e}" if result <= TOLERANCE else f"differs {result:.0e}")


def target_of(runtime) -> str | None:
    """The dslc target runtime a runtime's column is compiled for (None: the default emission)."""
    return getattr(runtime, "target", None)


def save_cases(folder: Path, specs=None, runtimes=(), graph_list=None):
    """Compile every graph once per target runtime needed, as `dslc compile` writes it (the state as
    plain inputs, its initial values in NAME.init.onnx): [(label, {target: path}, state)], state being
    the default emission's initial values by name (each runtime is fed the same)."""
    targets = [None] + sorted({target_of(rt) for rt in runtimes} - {None})
    embedded = {target_of(rt) for rt in runtimes if getattr(rt, "embedded_state", False)}
    cases = []
    for k, (path, target, emit) in enumerate(graph_list or graphs(specs)):
        paths, state = {}, {}
        for t in targets:
            dest = folder / f"g{k}-{t or 'default'}.onnx"
            try:
                model = dslc.compile(path, target, emit=emit, target_runtime=t)
                step, init = (model, None) if t in embedded else dslc.split_state(model)
                onnx.save(step, str(dest))
                if t is None and init is not None:
                    onnx.save(init, str(dest.with_suffix(".init.onnx")))
                    state = R.OnnxRuntime().run(dest.with_suffix(".init.onnx"), {})[0]
            except Exception as e:  # noqa: BLE001 - a rewrite that fails is this column's cell
                dest = R.Failure(f"dslc --target-runtime {t}: {R.short(e)}")
            paths[t] = dest
        cases.append((label(path, target, emit), paths, state))
    return cases


def run_suite(cases, runtimes, log=print):
    """cases: [(label, {target runtime: path}, state)] of saved models (key None: the default emission,
    every runtime's reference). Returns ({label: {runtime: cell}}, notes)."""
    feeds = {lab: {**feeds_for(onnx.load(str(p[None]), load_external_data=False), skip=state), **state}
             for lab, p, state in cases}
    cases = [(lab, p) for lab, p, _ in cases]
    matrix = {lab: {} for lab, _ in cases}
    ref = R.run_cases(R.OnnxRuntime(), [(p[None], feeds[lab]) for lab, p in cases])
    notes = []
    for (lab, _), r in zip(cases, ref):
        matrix[lab]["onnxruntime"] = (False, R.short(r)) if isinstance(r, R.Failure) else (True, "ref")
    for rt in runtimes:
        why = rt.missing()
        if why:
            notes.append(f"{rt.name}: skipped, {why}")
            continue
        t0 = time.perf_counter()
        paths = [p.get(target_of(rt), p[None]) for _, p in cases]
        runnable = [k for k, p in enumerate(paths) if not isinstance(p, R.Failure)]
        results = list(paths)
        for k, res in zip(runnable, R.run_cases(rt, [(paths[k], feeds[cases[k][0]]) for k in runnable])):
            results[k] = res
        for (lab, _), res, base in zip(cases, results, ref):
            if isinstance(base, R.Failure):
                matrix[lab][rt.name] = (False, "no reference")
            elif isinstance(res, R.Failure):
                matrix[lab][rt.name] = cell(res)
            else:
                matrix[lab][rt.name] = cell(rel_error(res[0], base[0]))
        log(f"{rt.name}: {time.perf_counter() - t0:.1f} s")
    return matrix, notes


def save_step_files(folder: Path, spec: Path, target: str, target_runtime: str | None = None) -> tuple[Path, Path]:
    """A step's train graph as `dslc compile` writes it by default: NAME.onnx with its state as plain
    inputs, NAME.init.onnx with the initial state (dslc/emit/state.py)."""
    step, init = dslc.split_state(dslc.compile(spec, target, target_runtime=target_runtime))
    paths = folder / f"{target}-{target_runtime or 'default'}.onnx", folder / f"{target}-{target_runtime or 'default'}.init.onnx"
    onnx.save(step, str(paths[0]))
    onnx.save(init, str(paths[1]))
    return paths


def train_steps(runtime, step: Path, init: Path, batch: dict, steps: int) -> list[dict] | R.Failure:
    """`steps` train steps in `runtime` as a user of the files would run them: the init graph once,
    its outputs fed by name with the batch, then each output `X.next` fed back into `X`. Returns each
    step's outputs, or the runtime's refusal."""
    state = R.run_cases(runtime, [(init, {})])[0]
    if isinstance(state, R.Failure):
        return state
    feeds = {**batch, **state[0]}
    if hasattr(runtime, "run_steps"):  # the loop inside the runtime's own process
        return runtime.run_steps(step, feeds, steps)
    outputs = []
    for _ in range(steps):
        out = R.run_cases(runtime, [(step, feeds)])[0]
        if isinstance(out, R.Failure):
            return out
        outputs.append(out[0])
        feeds.update({name[:-len(".next")]: v for name, v in out[0].items()
                      if name.endswith(".next") and name[:-len(".next")] in feeds})
    return outputs


def training_suite(folder: Path, runtimes, specs=None, steps: int = 10, log=print):
    """Every step of every spec trained `steps` steps from the files `dslc compile` writes (state fed
    by name from NAME.init.onnx, each runtime running the init graph itself), against onnxruntime:
    ({label: {runtime: cell}}, notes), a cell's error the largest over the steps and outputs."""
    matrix, notes = {}, []
    todo = [(path, target) for path, target, emit in graphs(specs) if emit == "train"]
    for rt in runtimes:
        why = rt.missing() or (getattr(rt, "embedded_state", False) and "converts weights into module "
                                                                         "parameters: no state to feed")
        if why:
            notes.append(f"{rt.name}: skipped, {why}")
    for path, target in todo:
        lab = f"{path.stem}/{target}"
        step, init = save_step_files(folder, path, target)
        state = R.OnnxRuntime().run(init, {})[0]
        # batch 8: with 2 examples a few steps fit a loss near 0, whose relative round-off is large
        batch = feeds_for(onnx.load(str(step), load_external_data=False), n=8, skip=state)
        ref = train_steps(R.OnnxRuntime(), step, init, batch, steps)
        matrix[lab] = {"onnxruntime": (False, R.short(ref)) if isinstance(ref, R.Failure) else (True, "ref")}
        for rt in runtimes:
            if rt.missing() or getattr(rt, "embedded_state", False):
                continue
            try:
                files = save_step_files(folder, path, target, target_of(rt))
                got = train_steps(rt, *files, batch, steps)
            except Exception as e:  # noqa: BLE001 - a rewrite that fails is this cell
                got = R.Failure(R.short(e))
            if isinstance(ref, R.Failure):
                matrix[lab][rt.name] = (False, "no reference")
            elif isinstance(got, R.Failure):
                matrix[lab][rt.name] = cell(got)
            else:
                errors = [rel_error(g, w) for g, w in zip(got, ref)]
                bad = next((e for e in errors if isinstance(e, str)), None)
                matrix[lab][rt.name] = cell(bad or max(errors))
        log(f"{lab}: trained")
    return matrix, notes


def markdown(matrix, notes, names) -> str:
    names = [n for n in names if any(n in row for row in matrix.values())]
    head = ["| graph | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [f"| {lab} | " + " | ".join(row.get(n, (False, "-"))[1] for n in names) + " |"
            for lab, row in matrix.items()]
    total = len(matrix)
    summary = ", ".join(f"{n} {sum(row.get(n, (False,))[0] for row in matrix.values())}/{total}" for n in names)
    return "\n".join([f"Graphs that run and agree (<= {TOLERANCE:g}): {summary}.", ""] + head + rows +
                     ([""] + [f"- {n}" for n in notes] if notes else []))


BEGIN, END = "<!-- portability matrix: begin -->", "<!-- portability matrix: end -->"


def write_readme(text: str, which: str = "matrix") -> None:
    readme = ROOT / "README.md"
    old = readme.read_text()
    begin, end = BEGIN.replace("matrix", which), END.replace("matrix", which)
    block = f"{begin}\n{text}\n{end}"
    if begin in old:
        readme.write_text(old.split(begin)[0] + block + old.split(end, 1)[1])
    elif which != "matrix":
        readme.write_text(old.replace(END, END + "\n\n" + block, 1))
    else:
        readme.write_text(old.rstrip() + "\n\n## Portability\n\nEvery graph of every spec (batch 2) in every "
                          "ONNX runtime installed, compared with onnxruntime; regenerate with "
                          "`python bench/portability.py --write` (what each column needs: `bench/runtimes.py`; "
                          "the method: `bench/portability.py`).\n\n" + block + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="only this spec (file stem; repeatable)")
    ap.add_argument("--runtime", action="append", help="only this runtime (repeatable)")
    ap.add_argument("--write", action="store_true", help="rewrite the matrix (or training table) in README.md")
    ap.add_argument("--train-steps", type=int, default=0, metavar="K",
                    help="instead: train every step of every spec K steps from the default files in each runtime")
    args = ap.parse_args(argv)
    runtimes = [rt for rt in R.RUNTIMES[1:] if not args.runtime or rt.name in args.runtime]
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="dslc-port-") as tmp:
        if args.train_steps:
            matrix, notes = training_suite(Path(tmp), runtimes, args.only, args.train_steps, log)
        else:
            cases = save_cases(Path(tmp), args.only, runtimes)
            log(f"{len(cases)} graphs")
            matrix, notes = run_suite(cases, runtimes, log=log)
    text = markdown(matrix, notes, ["onnxruntime"] + [rt.name for rt in runtimes])
    if args.train_steps:
        text = text.replace("Graphs that run and agree", f"Steps that train {args.train_steps} steps and agree "
                                                         f"at every step", 1)
    print(text)
    if args.write:
        write_readme(text, "training" if args.train_steps else "matrix")
    return 0


if __name__ == "__main__":
    sys.exit(main())
