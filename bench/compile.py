"""Compile time: `dslc compile` of every specs/*.dsl versus torch.onnx.export of the MNIST convnet.

    python bench/compile.py [--reps 7]

Warm times are medians over --reps calls after one untimed call (so lark's parser construction
and torch's import are excluded); the cold column is that first call. The convnet contenders run
interleaved, round by round, because a machine's speed drifts within seconds.
Needs torch (bench-only: pip install torch==2.13.0); the default exporter also needs onnxscript.
Tests never import this file.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import quiet, torch_convnet  # bench/ is on sys.path when a bench script runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn) -> tuple[float, object]:
    """(milliseconds, result) of one call of fn, its output silenced."""
    with quiet():
        start = time.perf_counter()
        result = fn()
        return (time.perf_counter() - start) * 1e3, result


# ------------------------------------------------------------------ contenders
def dslc_contender(spec: Path, out_dir: Path, targets: list[str] | None = None):
    from dslc.api import compile_file

    def run():
        return compile_file(str(spec), str(out_dir), targets)

    return run


def torch_contender(model, path: Path, dynamo: bool):
    import torch

    x = torch.zeros(2, 1, 28, 28)
    if dynamo:  # the default exporter since torch 2.9 (torch.export + onnxscript)
        kwargs = dict(dynamo=True, opset_version=21, dynamic_shapes=({0: torch.export.Dim("N")},))
    else:  # the TorchScript exporter stops at opset 20
        kwargs = dict(dynamo=False, opset_version=20, dynamic_axes={"x": {0: "N"}})

    def run():
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"],
                          verbose=False, **kwargs)

    return run


# ------------------------------------------------------------------ driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="warm repetitions per contender")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dslc-bench-") as tmp:
        return bench(Path(tmp), args.reps)


EXPORTERS = {True: "torch.onnx.export (dynamo)", False: "torch.onnx.export (torchscript)"}


SAME = "dslc convnet.dsl --target ConvNet"


def bench(tmp: Path, reps: int) -> int:
    start = time.perf_counter()
    try:
        import dslc.api
        have_api = hasattr(dslc.api, "compile_file")
    except Exception as e:  # noqa: BLE001 - the API may be mid-change; still time torch
        print(f"note: cannot import dslc.api: {type(e).__name__}: {e}")
        have_api = False
    import_dslc = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    with quiet():
        import torch
    import_torch = (time.perf_counter() - start) * 1e3

    candidates = {}
    if not have_api:
        print("note: dslc.api.compile_file is not available yet; timing torch only")
    for spec in sorted((ROOT / "specs").glob("*.dsl")) if have_api else []:
        (tmp / spec.stem).mkdir()
        candidates[f"dslc {spec.name}"] = dslc_contender(spec, tmp / spec.stem)
    if have_api:  # the like-for-like row: the one forward model torch exports too
        candidates[SAME] = dslc_contender(ROOT / "specs" / "convnet.dsl", tmp / "convnet", ["ConvNet"])
    model = torch_convnet().eval()  # dropout is identity on export
    for dynamo, label in EXPORTERS.items():
        candidates[label] = torch_contender(model, tmp / f"torch-{dynamo}.onnx", dynamo)

    # Cold: the first call of each, which also proves it runs. The first dslc spec pays for
    # building the lark parser; the first torch export pays for the exporter's set-up.
    cold, targets, contenders = {}, {}, {}
    for name, fn in candidates.items():
        try:
            cold[name], result = timed(fn)
        except Exception as e:  # noqa: BLE001 - one broken contender must not stop the bench
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"skip {name}: {type(e).__name__}: {first}")
            continue
        targets[name] = len(result) if name.startswith("dslc ") else 1
        contenders[name] = fn
    warm: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):  # interleaved rounds
        for name, fn in contenders.items():
            warm[name].append(timed(fn)[0])
    median = {name: statistics.median(ms) for name, ms in warm.items()}

    print(f"\nimports: dslc.api {import_dslc:.0f} ms, torch {import_torch:.0f} ms; "
          f"warm = median of {reps}, cold = first call; torch threads {torch.get_num_threads()}\n")
    print(f"{'spec / contender':<34} {'targets':>7} {'cold ms':>9} {'median ms':>10}")
    for name in contenders:
        print(f"{name:<34} {targets[name]:>7} {cold[name]:>9.1f} {median[name]:>10.1f}")

    print()
    for row, what in ((SAME, "the same forward graph"), ("dslc convnet.dsl", "all targets of convnet.dsl")):
        base = median.get(row)
        if base is None:
            print(f"ratio torch.onnx.export / dslc compile ({what}): n/a (not compiled)")
            continue
        for dynamo, label in EXPORTERS.items():
            if label in median:
                kind = "dynamo (default)" if dynamo else "torchscript"
                print(f"ratio torch.onnx.export [{kind}] / dslc compile [{what}]: {median[label] / base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
