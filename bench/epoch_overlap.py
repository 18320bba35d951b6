"""Whole-run throughput: is an epoch of `dslc train` the sum of its steps?

For each case, `dslc train` runs EPOCHS epochs twice, alternating: with the batches made in the loop
(`prefetch = 0`, as before the prefetching thread) and made ahead by it (`prefetch = 32`, the
default). The trainer times each epoch's loop and, inside it, the steps' session runs
(Trainer.epoch_timings); the table gives the last epoch of each (the first includes choosing
session settings) and its overhead, epoch / steps - 1. The weights of both runs are compared: the
prefetching thread must not change a bit.

    python bench/epoch_overlap.py                       # convnet (MNIST IDX files if found), digits
    python bench/epoch_overlap.py --cases digits_augmented --epochs 3 --data-mnist ../shared/data

The digits are scikit-learn's bundled 8x8 images written out as an image folder (no download).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dslc.runtime import trainer as T  # noqa: E402

AHEAD = T.Options.prefetch  # the trainer's default
CASES = {  # name -> (spec, train declaration, data)
    "convnet": ("convnet.dsl", "mnist", "mnist"),
    "digits": ("digits.dsl", "digits", "digits"),
    "digits_augmented": ("digits.dsl", "digits_augmented", "digits"),
}


def shared_mnist() -> str | None:
    for folder in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (folder / "mnist").is_dir():
            return str(folder)
    return None


def run_once(case: str, data: str | None, epochs: int, prefetch: int, out: Path) -> tuple[dict, dict]:
    spec, target, _ = CASES[case]
    options = dict(target=target, data=data, epochs=epochs, device="cpu", out=str(out), prefetch=prefetch,
                   log=lambda *a, **k: None)
    if "tune" in T.Options.__dataclass_fields__:  # (formulations measured: not what this bench is about)
        options["tune"] = False
    o = T.Options(**options)
    program = T.load_program(str(ROOT / "specs" / spec), None)
    plan = T.P.plan(program, target)
    plan = T._replace(plan, epochs=epochs)
    trainer = T.Trainer(program, plan, o, out)
    trainer.run()
    with np.load(out / "weights.npz") as z:
        weights = {k: z[k] for k in z.files}
    return trainer.epoch_timings[-1], weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["convnet", "digits"], choices=list(CASES))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="before/after pairs per case")
    ap.add_argument("--data-mnist", default=shared_mnist(), help="MNIST IDX folder (default: ../shared/data, "
                                                                 "else the embedded 5,000-image subset)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="epoch_overlap."))
    data = {"mnist": args.data_mnist}
    if any(CASES[c][2] == "digits" for c in args.cases):
        from test_data_formats import write_digits
        data["digits"] = str(write_digits(tmp / "digits"))
    print(f"{'case':<18} {'prefetch':>8} {'steps':>6} {'epoch s':>9} {'in steps s':>10} {'overhead':>9}")
    for case in args.cases:
        for r in range(args.rounds):
            weights = {}
            for prefetch in (0, AHEAD):
                started = time.perf_counter()
                timing, weights[prefetch] = run_once(case, data[CASES[case][2]], args.epochs, prefetch,
                                                     tmp / f"{case}-{r}-{prefetch}")
                overhead = timing["seconds"] / timing["step_seconds"] - 1
                print(f"{case:<18} {prefetch:>8} {timing['steps']:>6} {timing['seconds']:>9.3f} "
                      f"{timing['step_seconds']:>10.3f} {overhead:>8.1%}   (run {time.perf_counter() - started:.0f} s)",
                      flush=True)
            same = weights[0].keys() == weights[AHEAD].keys() and all(
                np.array_equal(weights[0][k], weights[AHEAD][k]) for k in weights[0])
            print(f"{case:<18} weights bit-identical with and without prefetching: {same}", flush=True)
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
