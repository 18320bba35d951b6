"""The seed steps with the static rules' formulations against the tuner's picks (dslc/tuner), timed
side by side.

    python bench/tune.py                          # every case, a 60 s tuning budget each
    python bench/tune.py --case convnet --budget 20 --rounds 10
    python bench/tune.py --fresh                  # measure again instead of reading the tune cache

Per case (bench/steps.py's CASES: the same specs, steps, batches and data): `dslc tune` picks
within --budget seconds (or reads its cache); then the static step and the picked step, each in its
own onnxruntime session (CPU, onnxruntime's default threads as `dslc train` runs them, the picked
session option for the tuned one), run alternately for --rounds rounds of --calls calls after one
untimed call each. The table gives each one's median ms per step, the median of the per-round
ratios tuned / static, and the picks (POINT@LAYER=OPTION; `session` is onnxruntime's NCHWc option).
Where the tuner keeps the static picks both sides run the same graph: the ratio is then the noise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import CASES, make_data  # noqa: E402

import dslc  # noqa: E402
from dslc.runtime.session import make_session  # noqa: E402
from dslc.tuner import tune_step  # noqa: E402
from dslc.tuner.measure import synthetic_feeds  # noqa: E402
from dslc.tuner.search import compile_with, step_counts  # noqa: E402
from dslc.train import plan as P  # noqa: E402

SEED_CASES = ("convnet", "node_convnet", "vae", "acgan_d", "acgan_g")


def counts_for(program, step: str, batch: int) -> dict:
    for name in program.trainings():
        for s in P.plan(program, name).steps:
            if s.name == step:
                return step_counts(s, batch)
    return {}


def feeds(model, case: str, batch: int) -> dict:
    """The case's data (bench/steps.py) and the step's initial state."""
    import numpy as np
    base = synthetic_feeds(model, batch)
    data = make_data(case, batch)
    inputs = {i.name: i for i in model.graph.input}
    for k, v in data.items():
        want = base[k].dtype
        base[k] = np.asarray(v).astype(want) if k in inputs else base[k]
    return base


def time_pair(static, tuned, feed: dict, rounds: int, calls: int) -> tuple[list, list, list]:
    ts, tt, ratios = [], [], []
    pair = [("s", static), ("t", tuned)]
    for sess in (static, tuned):
        sess.run(None, feed)
    for r in range(rounds):
        got = {"s": [], "t": []}
        for name, sess in (pair if r % 2 == 0 else pair[::-1]):
            sess.run(None, feed)  # untimed
            for _ in range(calls):
                start = time.perf_counter()
                sess.run(None, feed)
                got[name].append(time.perf_counter() - start)
        ts += got["s"]
        tt += got["t"]
        ratios.append(statistics.median(got["t"]) / statistics.median(got["s"]))
    return ts, tt, ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=SEED_CASES, default=None)
    ap.add_argument("--budget", type=float, default=60.0, help="tuning seconds per case (default 60)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="measure again (the cache is not read or written)")
    args = ap.parse_args()
    rows, details = [], []
    for case in args.case or SEED_CASES:
        c = CASES[case]
        program = dslc.load(ROOT / "specs" / c["spec"])
        counts = counts_for(program, c["step"], c["batch"])
        if "n" in make_data(case, c["batch"]):
            counts = {"n": c["batch"]}  # bench/steps.py's generator step: n = the case's batch
        tuning = tune_step(program, c["step"], c["batch"], budget=args.budget, use_cache=not args.fresh,
                           counts=counts)
        static_model = compile_with(program, c["step"], {})
        tuned_model = compile_with(program, c["step"], tuning.picks)
        feed = feeds(static_model, case, c["batch"])
        static = make_session(static_model, "cpu")
        tuned = make_session(tuned_model, "cpu", tuning.session())
        ts, tt, ratios = time_pair(static, tuned, feed, args.rounds, args.calls)
        picks = ", ".join(f"{k}={v}" for k, v in tuning.picks.items()) or "(the static picks)"
        took = f"{tuning.seconds:.0f} s" if tuning.source == "measured" else tuning.source
        rows.append((case, c["batch"], statistics.median(ts) * 1000, statistics.median(tt) * 1000,
                     statistics.median(ratios), took, picks))
        details.append(tuning.table())
        print(f"{case}: static {rows[-1][2]:.1f} ms, tuned {rows[-1][3]:.1f} ms ({rows[-1][4]:.2f}x); {picks}",
              flush=True)
    print()
    print("| case | batch | static ms | tuned ms | tuned / static | tuning | picks |")
    print("|---|---:|---:|---:|---:|---|---|")
    for case, batch, s, t, r, took, picks in rows:
        print(f"| {case} | {batch} | {s:.1f} | {t:.1f} | {r:.2f} | {took} | {picks} |")
    print()
    for table in details:
        print(table, end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
