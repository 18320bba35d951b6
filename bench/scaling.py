"""Data-parallel scaling of `dslc train`: steps/s and examples/s for K workers, global batch fixed.

    python bench/scaling.py                      # K = 1, 2; specs/convnet.dsl, 40 steps, 2 rounds
    python bench/scaling.py --workers 1 2 4 --steps 40 --rounds 3

Each measurement runs `dslc train specs/convnet.dsl --max-steps S --workers K` twice, with S = 40
and S = 0, as separate processes; the difference of their wall times is the time of S training
steps alone (compilation, data loading, MPI start-up and the export cancel out). K = 1 is the plain
single-process trainer. Rounds interleave the K values; the median over rounds is reported.
Needs the mpi extra (`pip install -e ".[mpi]"`) for K > 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "convnet.dsl"
BATCH = 64  # the `mnist` train declaration's global batch


def wall(workers: int, steps: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "dslc.cli", "train", str(SPEC), "--max-steps", str(steps), "--out", str(out),
           "--device", "cpu", "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    per_step = {k: [] for k in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k in args.workers:
                out = Path(tmp) / f"k{k}-{r}"
                t0, t1 = wall(k, 0, out / "zero"), wall(k, args.steps, out / "run")
                per_step[k].append((t1 - t0) / args.steps)
                print(f"round {r + 1}: K={k}  {args.steps} steps {t1:.1f} s, start-up and export {t0:.1f} s",
                      flush=True)
    print(f"\nspecs/convnet.dsl (ConvNet, batch {BATCH} global), {os.cpu_count()} CPU cores, median of "
          f"{args.rounds} round(s)")
    print(f"{'K':>3} {'ms/step':>9} {'steps/s':>8} {'examples/s':>11} {'speed-up':>9}")
    base = statistics.median(per_step[args.workers[0]])
    for k in args.workers:
        s = statistics.median(per_step[k])
        print(f"{k:>3} {1000 * s:>9.1f} {1 / s:>8.2f} {BATCH / s:>11.0f} {base / s:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
