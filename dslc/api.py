"""The Python API: what the CLI calls, and what users call from their own code.

    import dslc
    prog = dslc.load("specs/vae.dsl")
    model = dslc.compile(prog, "Encoder")            # an onnx.ModelProto
    dslc.compile_file("specs/vae.dsl", "out/")       # one .onnx per target
    print(dslc.summary("specs/vae.dsl", "Encoder"))
    outputs = dslc.run("out/Encoder.onnx", {"x": batch})
    history = dslc.train("specs/convnet.dsl", epochs=1)  # the file's `train` declaration

`compile` needs only lark, onnx and numpy; `run` imports onnxruntime when called.
"""
from __future__ import annotations

import functools
import gc
from pathlib import Path

import numpy as np
import onnx

from .diagnostics import DslError, format_bytes
from .emit.onnx_emit import check, constants_as_initializers, to_onnx
from .emit.state import INIT_SUFFIX, init_path, join_state, split_state
from .fileio import MAX_PROTO, prepare_output_dir, save_onnx
from .ir.formulations import check as check_formulations
from .lower.lowerer import Options
from .lower.program import Program, load_program, load_source
from .lower.targets import Lowered, lower_target
from .passes.portable import emission, rewrite


def _gc_paused(fn):
    """Run fn with Python's cyclic garbage collector off. Compiling builds a graph of many small
    objects that point at each other (values and their producers); the collector's passes over
    them grew with the graph and took about 30% of compile time at 100-200 layers, making it
    grow faster than linearly (bench/README.md, scaling). What is garbage is collected afterwards."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
    return paused


def load(path: str | Path, import_path=None) -> Program:
    """Parse a .dsl file and its imports. Imports stay inside the file's folder and the folders
    of `import_path` (one path or a list)."""
    return load_program(path, import_path)


def loads(text: str, file: str = "<string>", import_path=None) -> Program:
    """Parse .dsl source text."""
    return load_source(text, file, import_path)


def _program(source: Program | str | Path) -> Program:
    return source if isinstance(source, Program) else load(source)


@_gc_paused
def lower(source: Program | str | Path, target: str, *, emit: str | None = None, conv_lowering: str = "conv",
          seed: int = 0, random: str = "op", float64: bool = False, wrt_inputs: bool = False,
          weights: bool = True, formulations: dict[str, str] | None = None, passes_off=()) -> Lowered:
    """A target as IR (with its layer table for summaries). weights=False gives every weight its
    shape but no memory (check, summary): do not emit such a graph."""
    if conv_lowering not in ("conv", "im2col"):
        raise DslError(f"unknown conv lowering `{conv_lowering}`: use conv or im2col")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise DslError(f"the seed must be an integer from 0 to {2**63 - 1}, got {seed!r}")
    check_formulations(formulations, passes_off)
    options = Options(seed=seed, conv_lowering=conv_lowering, random=random, float64=float64,
                      wrt_inputs=wrt_inputs, weights=weights, formulations=tuple((formulations or {}).items()),
                      passes_off=tuple(passes_off))
    return lower_target(_program(source), target, options, emit)


@_gc_paused
def compile(source: Program | str | Path, target: str, *, opset: int | None = None,
            target_runtime: str | None = None, **options) -> onnx.ModelProto:
    """One target as an ONNX model. Options: emit (for a step: 'train', the default, the whole training
    step; 'gradients'; 'apply', the update alone; 'forward', the loss alone), conv_lowering
    ('conv' | 'im2col'), seed (weight initialization), random ('op' | 'input'), float64 (widen
    every float32 value: for finite-difference checks), wrt_inputs (with emit='gradients', also
    the gradients of the step's float inputs), formulations ({point: option}, forced wherever the
    option applies) and passes_off (pass names not to run): see dslc/ir/formulations.py; opset (21,
    the default, or 17) and target_runtime ('tract', 'onnx2torch', ...: that runtime's opset and
    rewrites; see dslc/passes/portable.py)."""
    opset, rules, hoisted, needed = emission(opset, target_runtime)  # first: a bad option costs no compile time
    if needed:  # what the runtime cannot take, unless the caller forces it
        options["formulations"] = {**needed, **(options.get("formulations") or {})}
    graph = lower(source, target, **options).graph
    rewrite(graph, rules)
    size = sum(p.init.nbytes for p in graph.params if p.init is not None)
    if size >= MAX_PROTO:  # before copying them into protobuf (where an allocation failure crashes)
        raise DslError(f"`{target}` cannot be one ONNX file: its weights take {format_bytes(size)}, more than the "
                       f"2 GiB one ONNX file can hold", hint="use smaller layers")
    try:
        model = to_onnx(graph, opset)
    except MemoryError:  # the ModelProto copies every weight once more
        raise DslError(f"out of memory emitting `{target}`: its weights take {format_bytes(size)}, and emitting "
                       f"needs about {format_bytes(2 * size)}", hint="use smaller layers, or free memory") from None
    if hoisted:
        constants_as_initializers(model, hoisted)
    return model


def check_file(path: str | Path, import_path=None) -> list[str]:
    """Parse and type-check every target and every `train` declaration of a file; returns the target
    names or raises DslError. No weight is allocated: a 2 GB layer checks in milliseconds."""
    from .train.plan import plan
    prog = load(path, import_path)
    for t in prog.targets():
        lower(prog, t, weights=False)
    for name in prog.trainings():  # a mistake in a `train` declaration shows up before `dslc train`
        plan(prog, name)
    return prog.targets()


def compile_file(path: str | Path, out_dir: str | Path | None = None, targets: list[str] | None = None,
                 verify: bool = False, import_path=None, state: str = "file", **options) -> list[Path]:
    """Write `out_dir/NAME.onnx` for each target (all of the file's by default). state="file": a
    graph whose inputs have defaults (a step's weights, optimizer state, step, seed) gets them as
    plain inputs, and their initial values go to NAME.init.onnx beside it (dslc/emit/state.py);
    state="embedded": one file, the defaults as initializers of the inputs."""
    if state not in ("file", "embedded"):
        raise DslError(f"unknown state layout `{state}`: use file or embedded")
    prog = load(path, import_path)
    out = Path(out_dir) if out_dir is not None else Path(path).parent
    names = targets or prog.targets()
    prepare_output_dir(out, "-o")  # before any work: a bad -o costs no compile time
    written = []
    for t in names:
        model = compile(prog, t, **options)
        if verify:
            check(model)
        dest = out / f"{t}.onnx"
        init = None
        if state == "file":
            model, init = split_state(model)
        save_onnx(dest, model, durable=False)  # recomputable: no fsync
        written.append(dest)
        if init is not None:
            save_onnx(init_path(dest), init, durable=False)
            written.append(init_path(dest))
        elif init_path(dest).exists():  # a stale one from an earlier compile would be joined by `dslc run`
            init_path(dest).unlink()
    return written


def summary(source: Program | str | Path, target: str | None = None, import_path=None) -> str:
    """A Keras-style table (layer, output shape, parameters) of each model in the file, or of one target.
    An .onnx file is imported as `model NAME = onnx("file.onnx")` would import it: one row per node."""
    if not isinstance(source, Program) and str(source).endswith(".onnx"):
        prog, name = _onnx_program(Path(source)), target or _onnx_model_name(Path(source))
        try:
            return _summary_table(lower(prog, name, emit="forward", weights=False))
        except DslError as e:  # located in the one-line program: the message alone names the file
            e.span = None
            raise
    prog = source if isinstance(source, Program) else load(source, import_path)
    names = [target] if target else [t for t in prog.targets()]
    return "\n\n".join(_summary_table(lower(prog, t, emit="forward", weights=False)) for t in names)


def _onnx_model_name(path: Path) -> str:
    import re
    name = re.sub(r"\W", "_", path.stem)
    return name if name and not name[0].isdigit() else f"m_{name}"


def _onnx_program(path: Path) -> Program:
    """A one-line program that imports the file, as if written beside it."""
    text = f'model {_onnx_model_name(path)} = onnx("{path.name}")\n'
    if '"' in path.name or "\n" in path.name:
        raise DslError(f"cannot name {path} in a program: rename the file")
    try:
        return load_source(text, str(path.parent / f"<summary of {path.name}>"), None)
    except DslError as e:  # located in the one-line program: the message alone names the file
        e.span = None
        raise


def _summary_table(low: Lowered) -> str:
    rows = [(r.name, r.kind, r.out, r.params) for r in low.layers]
    if low.kind != "model":  # steps and fns: each weighted layer once, however often it is called
        rows = [r for i, r in enumerate(rows) if r[3] and r[0] not in {q[0] for q in rows[:i]}]
    header = ("Layer", "Type", "Output shape", "Param #")
    width = [max(len(str(x)) for x in col) for col in zip(header, *[(a, b, c, f"{d:,}") for a, b, c, d in rows])]
    line = "  ".join(f"{{:<{w}}}" for w in width)
    total = sum(int(np.prod(p.value.shape)) for p in low.graph.params)
    trainable = sum(int(np.prod(p.value.shape)) for p in low.graph.params if p.trainable)
    out = [f'{low.kind} "{low.name}"', line.format(*header), "-" * (sum(width) + 2 * (len(width) - 1))]
    out += [line.format(a, b, c, f"{d:,}") for a, b, c, d in rows]
    out += ["-" * (sum(width) + 2 * (len(width) - 1)),
            f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}"]
    if low.kind == "step":
        updated = sum(int(np.prod(p.value.shape)) for p in low.graph.params
                      if p.trainable and p.value.name.split(".")[0] in low.updates)
        out.append(f"Updated by this step: {updated:,} ({', '.join(low.updates)})")
    return "\n".join(out)


def train(path: str | Path, *, target: str | None = None, data: str | None = None, epochs: int | None = None,
          batch: int | None = None, seed: int | None = None, device: str = "auto", out: str | Path | None = None,
          resume: bool = False, max_steps: int | None = None, import_path=None, log=print,
          collective_timeout: float = 120.0, tune: bool | None = None) -> list[dict]:
    """Run the file's first `train` declaration (or `target`): returns the per-epoch history (the
    rows of history.json). Writes checkpoints, curves, pictures and the trained model into `out`.
    Started as several MPI ranks (`mpiexec -n K`), it trains data-parallel (runtime/distributed.py)."""
    from .runtime.trainer import train as run_training
    return run_training(path, target=target, data=data, epochs=epochs, batch=batch, seed=seed, device=device,
                        out=out, resume=resume, max_steps=max_steps, import_path=import_path, log=log,
                        collective_timeout=collective_timeout, tune=tune)


def tune(source: Program | str | Path, target: str, *, batch: int | None = None, budget: float | None = None,
         threads: int | None = None, seed: int | None = None, cache: bool = True, import_path=None):
    """Time the formulations a step reaches on this machine (dslc/tuner); returns a Tuning: `.table()`
    per choice point, `.formulations()` the forcing that compiles the picks (formulations=), `.session()`.
    `batch` defaults to that of the first train declaration running the step, else 64; the picks are
    cached per (graph, batch, CPU, onnxruntime version, threads)."""
    from .tuner import tune_declared_step
    program = source if isinstance(source, Program) else load_program(source, import_path)
    return tune_declared_step(program, target, batch, budget, threads, seed, cache)


def generate(path: str | Path, prompt: str = "", *, length: int = 200, temperature: float = 1.0,
             checkpoint: str | Path | None = None, target: str | None = None, seed: int = 0,
             import_path=None) -> str:
    """`length` characters after `prompt`, from the language model of a `data = text` run, with the
    weights and vocabulary of its checkpoint (default runs/TRAIN/). See dslc/runtime/generate.py."""
    from .runtime.generate import generate_text
    return generate_text(path, prompt, length, temperature, checkpoint, target, seed, import_path)


def run(model: onnx.ModelProto | str | Path, inputs: dict[str, np.ndarray], *, target: str | None = None,
        device: str = "auto", weights: dict[str, np.ndarray] | None = None, **options) -> dict[str, np.ndarray]:
    """Run a forward graph with onnxruntime. `model` is a ModelProto, an .onnx path, or a .dsl path
    (then `target` names what to compile)."""
    from .runtime import run_model
    if isinstance(model, (str, Path)) and str(model).endswith(".dsl"):
        prog = load(model)
        if target is None:
            if len(prog.targets()) != 1:
                raise DslError(f"{model} has several targets ({', '.join(prog.targets())}): choose one with --target")
            target = prog.targets()[0]
        model = compile(prog, target, **options)
    elif isinstance(model, (str, Path)):
        model = load_model(model)
    return run_model(model, inputs, device=device, weights=weights)


def load_model(path: str | Path) -> onnx.ModelProto:
    """An .onnx file, with the initial state in NAME.init.onnx beside it (if there is one) as the
    defaults of its inputs again: self-contained, as `dslc.compile` returns it."""
    from .runtime import load_onnx
    model = load_onnx(path)
    init = init_path(path)
    if not str(path).endswith(INIT_SUFFIX) and init.is_file():
        model = join_state(model, load_onnx(init))
    return model


def export_web(path: str | Path, out: str | Path, *, target: str | None = None, ort_dist: str | Path | None = None,
               npm_cache: str | Path | None = None, data: str | Path | None = None, log=print) -> Path:
    """A static folder that trains the file's first `train` declaration (or `target`) in the browser with
    onnxruntime-web (WASM): page, train-step and inference .onnx, a dataset slice, onnxruntime-web's
    files (from `ort_dist`, else npm-installed into `npm_cache`); `data` as `dslc train --data` takes
    it. See dslc/web/export.py."""
    from .web.export import export_web as export
    return export(path, out, target=target, ort_dist=ort_dist, npm_cache=npm_cache, data=data, log=log)
