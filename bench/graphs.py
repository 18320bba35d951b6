"""Graph sizes and compile times of the MNIST convnets: forward graph vs gradient graph.

    python bench/graphs.py [--reps 15]

For each convnet of specs/convnet.dsl: the node count of its forward graph (`dslc compile
--target ConvNet`) and of its step's gradient graph (`--emit gradients`: forward, loss and
backward), the most frequent ops, and the median in-memory compile time (parse excluded: the
program is loaded once; lowering, autodiff, passes and emission to a ModelProto included).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = (("ConvNet", "train_convnet"), ("MnistConvNet", "train_mnist_convnet"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    import dslc

    prog = dslc.load(ROOT / "specs" / "convnet.dsl")
    print(f"{'target':<22} {'emit':<10} {'nodes':>5} {'compile ms':>10}  most frequent ops")
    for pair in PAIRS:
        for target, emit in zip(pair, ("forward", "gradients")):
            dslc.compile(prog, target, emit=emit)  # warm
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                model = dslc.compile(prog, target, emit=emit)
                times.append((time.perf_counter() - start) * 1e3)
            ops = collections.Counter(n.op_type for n in model.graph.node).most_common(5)
            print(f"{target:<22} {emit:<10} {len(model.graph.node):>5} {statistics.median(times):>10.1f}  "
                  + ", ".join(f"{op} {n}" for op, n in ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
