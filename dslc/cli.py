"""`dslc compile | check | summary | run | train | export | generate | export-web`: parse arguments, call the API, report.

Exit codes: 0 success, 1 a problem in the user's input (a located error), 2 a usage error,
3 an internal error (a bug in dslc: please report it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

from . import api
from .diagnostics import DslError
from .fileio import check_output_file, save_npz
from .emit.state import INIT_SUFFIX
from .ir.formulations import CHOICES, PASSES
from .passes.portable import DEFAULT_OPSET, OPSETS, RUNTIMES


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except DslError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # `dslc train` says where its checkpoint is and how to resume
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:  # numpy says how much it wanted: "Unable to allocate 93.1 GiB for ..."
        print(f"error: out of memory{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 1
    except OSError as e:  # the machine's refusal (disk full, permissions), not a bug in dslc
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {(e.strerror or str(e)).lower()}{where}", file=sys.stderr)
        return 1
    except Exception:  # a bug in dslc, not in the user's input
        print("internal error in dslc (please report it):\n" + traceback.format_exc(), file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dslc", description="Compile .dsl neural-network models to ONNX.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="write one .onnx per target")
    c.add_argument("file")
    _import_path(c)
    c.add_argument("-o", "--out", default=None, help="output directory (default: beside the file)")
    c.add_argument("--target", action="append", help="compile only this target (repeatable)")
    _compile_options(c)
    c.add_argument("--opset", type=int, choices=OPSETS, default=None,
                   help=f"ONNX opset of the files (default {DEFAULT_OPSET}; 17: for converters such as onnx2torch)")
    c.add_argument("--target-runtime", choices=sorted(RUNTIMES), default=None, metavar="NAME",
                   help="emit for this runtime's gaps (its opset, unrolled loops, ...): "
                        + ", ".join(sorted(RUNTIMES)))
    c.add_argument("--verify", action="store_true",
                   help="also run onnx.checker (full) and strict shape inference on each model")
    c.add_argument("--state", choices=("file", "embedded"), default="file",
                   help="file (default): a step's weights, optimizer state, step and seed are plain inputs, "
                        "their initial values in NAME.init.onnx beside it (every runtime feeds them); "
                        "embedded: inputs with their initial values as defaults, one file (Python "
                        "onnxruntime and onnx.reference only)")
    c.set_defaults(func=_compile)

    k = sub.add_parser("check", help="parse and type-check only")
    k.add_argument("file")
    _import_path(k)
    k.set_defaults(func=_check)

    s = sub.add_parser("summary", help="layers, output shapes and parameter counts")
    s.add_argument("file", help="a .dsl file, or an .onnx file (imported as with onnx(...))")
    s.add_argument("--target", default=None)
    _import_path(s)
    s.set_defaults(func=_summary)

    r = sub.add_parser("run", help="run a forward graph with onnxruntime")
    r.add_argument("model", help="a .dsl file (with --target) or a compiled .onnx")
    r.add_argument("--target", default=None)
    r.add_argument("--input", action="append", default=[], metavar="NAME=PATH.npy|NUMBER",
                   help="an input: a .npy file or a number (repeatable)")
    r.add_argument("--sweep", default=None, metavar="NAME=START:STOP",
                   help="run once per integer value of this input and stack the outputs")
    r.add_argument("--weights", default=None, help=".npz of weights that replace the initializers")
    r.add_argument("--output", default=None, help="save the outputs to this .npz")
    r.add_argument("--png", default=None, help="save the first output as a grid of images")
    r.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    _import_path(r)
    _compile_options(r)
    r.set_defaults(func=_run)

    t = sub.add_parser("train", help="train a model as the file's `train` declaration says",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_train_settings())
    t.add_argument("file")
    t.add_argument("--target", default=None, help="the train declaration to run (default: the file's first)")
    t.add_argument("--data", default=None, metavar="DIR|FILE",
                   help="IDX files, an .npz, an image folder, a CSV or a text file "
                        "(default: $DSLC_DATA, else the embedded subset)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch", type=int, default=None)
    t.add_argument("--seed", type=_seed, default=None, help="weights, data order and noise all follow it (0 or more)")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    t.add_argument("--out", default=None, help="output folder (default: runs/TRAIN)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--max-steps", type=int, default=None, metavar="K", help="stop at global step K")
    _import_path(t)
    t.add_argument("--workers", type=int, default=None, metavar="K",
                   help="data-parallel over K processes on this machine (re-runs itself under mpiexec -n K; "
                        "needs the mpi extra); under your own mpiexec, K is the number of ranks")
    t.add_argument("--collective-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="with several workers: how long a rank waits for the others at a step before it "
                        "names the ones that did not answer and stops every rank (default 120)")
    t.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="time the formulations on this machine before the first step (cached per machine); "
                        "default: the declaration's `tune`, else the cache's picks, measured for runs of 500+ steps")
    t.set_defaults(func=_train)

    u = sub.add_parser("tune", help="time a step's formulations on this machine and cache the fastest")
    u.add_argument("file")
    u.add_argument("--target", required=True, metavar="STEP", help="the training step to time")
    u.add_argument("--batch", type=int, default=None,
                   help="the batch size timed (default: the train declaration's that runs the step, else 64)")
    u.add_argument("--budget", type=float, default=None, metavar="SECONDS", help="time limit (default 20)")
    u.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: one per core)")
    u.add_argument("--seed", type=_seed, default=None, help="initial weights (default: the declaration's seed)")
    u.add_argument("--no-cache", action="store_true", help="measure again, and do not store the picks")
    _import_path(u)
    u.set_defaults(func=_tune)

    x = sub.add_parser("export", help="the `export` models of a train declaration with a checkpoint's weights")
    x.add_argument("file")
    x.add_argument("--out", required=True, help="the folder to write MODEL.onnx and weights.npz to")
    x.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="a checkpoint dslc train wrote (default: runs/TRAIN/checkpoint.npz)")
    x.add_argument("--target", default=None, help="the train declaration (default: the file's first)")
    _import_path(x)
    x.set_defaults(func=_export)

    g = sub.add_parser("generate", help="text from a trained character-level language model (`data = text`)")
    g.add_argument("file")
    g.add_argument("--prompt", default="", help="the text to continue (default: none)")
    g.add_argument("--length", type=int, default=200, help="characters to generate (default 200)")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature: lower is surer, 0 takes the likeliest character (default 1)")
    g.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="a run folder or checkpoint dslc train wrote (default: runs/TRAIN/)")
    g.add_argument("--target", default=None, help="the train declaration (default: the file's first)")
    _import_path(g)
    g.set_defaults(func=_generate)

    w = sub.add_parser("export-web", help="a static web page that trains the `train` declaration in the browser")
    w.add_argument("file")
    w.add_argument("--out", required=True, help="the folder to write (serve it with python -m http.server)")
    w.add_argument("--target", default=None, help="the train declaration (default: the file's first)")
    w.add_argument("--data", default=None, metavar="DIR|FILE",
                   help="the dataset, as dslc train --data takes it (default: $DSLC_DATA, else the embedded subset)")
    w.add_argument("--ort-dist", default=None, metavar="DIR",
                   help="onnxruntime-web's dist/ folder (default: npm install it into the npm cache)")
    w.add_argument("--npm-cache", default=None, metavar="DIR",
                   help="where npm installs onnxruntime-web (default: $DSLC_NPM_CACHE, else ~/.cache/dslc/npm)")
    w.set_defaults(func=_export_web)
    return p


def _compile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--emit", choices=("train", "gradients", "apply", "forward"), default=None,
                   help="for steps: train (default) the whole training step; gradients: (weights, inputs) -> "
                        "(loss, one gradient per weight); apply: the optimizer update alone; forward: the loss")
    p.add_argument("--conv-lowering", choices=("conv", "im2col"), default="conv",
                   help="im2col: convolutions as patches + MatMul, no Conv/ConvTranspose ops")
    p.add_argument("--wrt-inputs", action="store_true",
                   help="with --emit gradients: also the gradients of the step's float inputs")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the weight initialization (0 or more)")
    p.add_argument("--float64", action="store_true",
                   help="compute in float64 end to end (constants rebuilt from the source, not widened)")
    p.add_argument("--formulation", action="append", default=[], type=_formulation, metavar="POINT=OPTION",
                   help="force a formulation wherever it applies, or POINT@LAYER=OPTION on one layer "
                        "(repeatable; `dslc tune` lists the layers): "
                        + "; ".join(f"{k}={'|'.join(v)}" for k, v in CHOICES.items()))
    p.add_argument("--no-pass", action="append", default=[], choices=PASSES, metavar="PASS",
                   help=f"do not run this graph pass (repeatable): {', '.join(PASSES)}")


def _import_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import-path", action="append", default=None, metavar="DIR",
                   help="a folder imports may also come from (repeatable); by default imports stay "
                        "inside the file's own folder")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**63 - 1}, got {value}")
    return value


def _formulation(text: str) -> tuple[str, str]:
    key, eq, option = text.partition("=")
    point = key.partition("@")[0]  # POINT@LAYER: that layer only (as `dslc tune` prints them)
    if not eq or point not in CHOICES or option not in CHOICES[point] or key.endswith("@"):
        raise argparse.ArgumentTypeError(f"expected POINT=OPTION, one of "
                                         f"{', '.join(f'{k}={o}' for k, v in CHOICES.items() for o in v)}; got {text!r}")
    return key, option


def _options(args) -> dict:
    return {"emit": args.emit, "conv_lowering": args.conv_lowering, "seed": args.seed,
            "wrt_inputs": args.wrt_inputs, "float64": args.float64,
            "formulations": dict(args.formulation), "passes_off": tuple(args.no_pass)}


def _compile(args) -> int:
    start = time.perf_counter()
    written = api.compile_file(args.file, args.out, args.target, verify=args.verify, state=args.state,
                               import_path=args.import_path, opset=args.opset,
                               target_runtime=args.target_runtime, **_options(args))
    for path in written:
        print(f"wrote {path}")
    n = sum(not path.name.endswith(INIT_SUFFIX) for path in written)
    print(f"compiled {n} target{'s' * (n != 1)} in {time.perf_counter() - start:.3f} s")
    return 0


def _check(args) -> int:
    targets = api.check_file(args.file, import_path=args.import_path)
    print(f"{args.file}: ok ({len(targets)} target{'s' * (len(targets) != 1)}: {', '.join(targets)})")
    return 0


def _summary(args) -> int:
    print(api.summary(args.file, args.target, import_path=args.import_path))
    return 0


def _parse_inputs(items: list[str]) -> dict[str, np.ndarray]:
    feeds = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise DslError(f"--input needs NAME=PATH.npy or NAME=NUMBER, got `{item}`")
        feeds[name] = _load_value(name, value)
    return feeds


def _load_value(name: str, value: str) -> np.ndarray:
    try:
        return np.asarray(int(value), np.int64)
    except ValueError:
        pass
    try:
        return np.asarray(float(value), np.float32)
    except ValueError:
        pass
    from .runtime import load_npy
    return load_npy(value, f"input `{name}`")


def _run(args) -> int:
    from .runtime import load_weights, save_grid
    from .runtime.images import deprocess

    # Everything that can be wrong with the arguments is found before the computation starts.
    output = _npz_name(args.output) if args.output else None
    if output:
        check_output_file(output, "--output")
    if args.png:
        check_output_file(args.png, "--png")
    sweep = _sweep(args.sweep) if args.sweep else None
    feeds = _parse_inputs(args.input)
    weights = load_weights(args.weights) if args.weights else None
    model = args.model
    if model.endswith(".dsl"):
        prog = api.load(model, args.import_path)
        target = args.target or _only_target(prog)
        model = api.compile(prog, target, **_options(args))
    else:
        model = api.load_model(model)  # with NAME.init.onnx's initial state, where there is one

    runs = [feeds]
    if sweep:
        name, lo, hi = sweep
        runs = [{**feeds, name: np.asarray(i, np.int64)} for i in range(lo, hi)]
    results = [api.run(model, f, device=args.device, weights=weights) for f in runs]
    outputs = results[0] if len(results) == 1 else {k: np.concatenate([np.atleast_1d(r[k]) for r in results])
                                                   for k in results[0]}
    for name, v in outputs.items():
        stats = f"min {v.min():.4g} max {v.max():.4g} mean {v.mean():.4g}" if v.size and v.dtype.kind == "f" else ""
        print(f"{name}: {v.dtype}{list(v.shape)} {stats}")
        if v.size <= 20:
            print(f"  {np.array2string(v, precision=4)}")
    if output:
        save_npz(output, outputs)  # by hand, atomically: an output named `file` is fine too
        print(f"wrote {output}")
    if args.png:
        first = next(iter(outputs.values()))
        if first.ndim < 2 or not first.size:
            raise DslError(f"--png needs an output of rank 2 or more, got {first.dtype}{list(first.shape)}")
        images = np.stack([deprocess(im) for im in first.reshape(-1, *first.shape[-2:])])
        save_grid(args.png, images, scale=4)
        print(f"wrote {args.png}")
    return 0


def _train(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise DslError(f"--workers must be a positive integer, got {args.workers}")
    if args.collective_timeout <= 0:
        raise DslError(f"--collective-timeout must be positive, got {args.collective_timeout:g}")
    from .runtime.distributed import under_launcher
    if args.workers and args.workers > 1 and not under_launcher():
        return _launch(args)
    api.train(args.file, target=args.target, data=args.data, epochs=args.epochs, batch=args.batch, seed=args.seed,
              device=args.device, out=args.out, resume=args.resume, max_steps=args.max_steps,
              import_path=args.import_path, collective_timeout=args.collective_timeout, tune=args.tune)
    return 0


def _tune(args) -> int:
    tuning = api.tune(args.file, args.target, batch=args.batch, budget=args.budget, threads=args.threads,
                      seed=args.seed, cache=not args.no_cache, import_path=args.import_path)
    print(tuning.table())
    picks = " ".join(f"--formulation {k}={v}" for k, v in tuning.formulations().items())
    print(f"compile with these picks: {picks}" if picks else "the static picks stay")
    return 0


def _launch(args) -> int:
    """`--workers K`: this same command again, as K MPI ranks started by mpiexec (the mpich wheel's)."""
    import importlib.util
    import subprocess
    from pathlib import Path

    from .runtime.distributed import MPI_EXTRA, find_mpiexec
    mpiexec = find_mpiexec()
    if importlib.util.find_spec("mpi4py") is None or mpiexec is None:
        missing = "mpi4py" if importlib.util.find_spec("mpi4py") is None else "mpiexec"
        raise DslError(f"--workers {args.workers} needs {missing}, which is not installed", hint=MPI_EXTRA)
    env = {**os.environ, "DSLC_WORKERS": str(args.workers)}
    # MPICH's hydra would kill every rank the moment one exits; without its clean-up the others reach
    # the collective timeout and name the rank that stopped (then MPI_Abort ends them all).
    hydra = (Path(mpiexec).parent / "mpiexec.hydra").exists() or "hydra" in Path(mpiexec).resolve().name
    # Each rank runs under rank_watch.py, which names a rank killed by a signal (hydra would not).
    watch = Path(__file__).resolve().parent / "runtime" / "rank_watch.py"
    cmd = [mpiexec, *(["-disable-auto-cleanup"] if hydra else []), "-n", str(args.workers),
           sys.executable, str(watch), sys.executable, "-m", "dslc.cli", *args.argv]
    code = subprocess.run(cmd, env=env).returncode
    if code not in (0, 130):  # 130: Ctrl-C, which the ranks reported themselves
        print(f"error: the {args.workers} workers stopped (mpiexec exit status {code}); the last complete "
              f"checkpoint is intact: continue with --resume, with any --workers", file=sys.stderr)
    return code


def _train_settings() -> str:
    """The settings a `train` declaration takes, for `dslc train --help`."""
    from .train.plan import EVALUATIONS, PICTURES, PIPES, SETTINGS
    width = max(map(len, SETTINGS))
    return ("settings of a `train` declaration (README, \"Training\"):\n"
            + "\n".join(f"  {k:<{width}}  {v}" for k, v in SETTINGS.items())
            + "\nany other `name = field |> pipe ...` is a field; pipes: " + ", ".join(PIPES)
            + "\nevaluations: " + ", ".join(EVALUATIONS) + "; pictures: " + ", ".join(PICTURES))


def _export(args) -> int:
    from .runtime.trainer import export_checkpoint
    for path in export_checkpoint(args.file, args.out, args.checkpoint, args.target, args.import_path):
        print(f"wrote {path}")
    return 0


def _generate(args) -> int:
    text = api.generate(args.file, args.prompt, length=args.length, temperature=args.temperature,
                        checkpoint=args.checkpoint, target=args.target, seed=args.seed, import_path=args.import_path)
    print(args.prompt + text)
    return 0


def _export_web(args) -> int:
    api.export_web(args.file, args.out, target=args.target, ort_dist=args.ort_dist, npm_cache=args.npm_cache,
                   data=args.data)
    return 0


def _npz_name(path: str) -> str:
    # As np.savez does, `--output results` writes results.npz; what is printed is what is written.
    return path if path.endswith(".npz") else path + ".npz"


def _sweep(text: str) -> tuple[str, int, int]:
    name, sep, span = text.partition("=")
    try:
        lo, hi = (int(x) for x in span.split(":"))
    except ValueError:
        raise DslError(f"--sweep needs NAME=START:STOP with integers, got `{text}`") from None
    if not sep or not name:
        raise DslError(f"--sweep needs NAME=START:STOP, got `{text}`")
    if hi <= lo:
        raise DslError(f"--sweep {text} is an empty range: STOP must be greater than START",
                       hint=f"e.g. {name}={lo}:{lo + 1} runs once, with {name} = {lo}")
    if hi - lo > 100_000:
        raise DslError(f"--sweep {text} would run {hi - lo:,} times: at most 100,000")
    return name, lo, hi


def _only_target(prog) -> str:
    targets = prog.targets()
    if len(targets) != 1:
        raise DslError(f"{prog.file} has several targets ({', '.join(targets)}): choose one with --target")
    return targets[0]


if __name__ == "__main__":
    sys.exit(main())
