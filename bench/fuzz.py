"""The long fuzz run: N mutated sources through the front end and lowering, in parallel.

    python bench/fuzz.py --count 100000 --workers 2       # from the repository root

Each source is a seed program of tests/test_fuzz.py with 1-3 random edits, or one of the
hostile shapes below (nesting 10,000 deep, a byte-order mark, form feeds and U+2028, NULs,
names over the OS limit); each must compile every target or fail with a located `DslError`.
Anything else is a crash: its source is written to bench/fuzz-crashes/ and counted. CI runs the
3,000-source subset in tests/test_fuzz.py; this is the bounded run that takes minutes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dslc  # noqa: E402
from dslc.fileio import write_bytes  # noqa: E402
from tests.test_fuzz import SEEDS, mutate  # noqa: E402

BODY = "fn f(x: f32[N, 4]) {{\n    return {}\n}}\n"


def hostile(rng: random.Random) -> str:
    """Inputs people do not write but files can hold."""
    n = rng.choice([10, 99, 100, 101, 500, 10_000])
    return rng.choice([
        lambda: BODY.format(" + ".join(["x"] * n)),
        lambda: BODY.format("-" * n + "x"),
        lambda: BODY.format("relu(" * n + "x" + ")" * n),
        lambda: BODY.format("^".join(["x"] * n)),
        lambda: BODY.format("(" * n + "x" + ")" * n),
        lambda: BODY.format("[" * n + "1" + "]" * n),
        lambda: BODY.format("x" + " |> relu" * n),
        lambda: BODY.format("x" + "[0:1]" * n),
        lambda: "fn f(x: f32[N, 4]) {\n    y = x\n" + "repeat 1 {\n" * n + "y = y * 2\n" + "}\n" * n + "return y\n}\n",
        lambda: "\ufeff" + rng.choice(SEEDS),
        lambda: rng.choice(SEEDS).replace("\n", rng.choice(["\f\n", "\u2028", "\n\u2028", "\r\n", "\x0b"])),
        lambda: f'import "{"a" * rng.choice([255, 256, 5000])}.dsl"\n' + rng.choice(SEEDS),
        lambda: f'import "{rng.choice(["/etc/passwd", "../x.dsl", "/dev/zero", "", "x.txt", "a/../../b.dsl"])}"\n',
        lambda: rng.choice(SEEDS)[: rng.randrange(200)] + "\0" + rng.choice(SEEDS),
    ])()


def source(i: int, seed: int) -> str:
    rng = random.Random(seed * 1_000_003 + i)
    if rng.random() < 0.03:
        return hostile(rng)
    return mutate(rng.choice(SEEDS), rng.randrange)


def check(text: str) -> str | None:
    """None when the property holds, else what went wrong."""
    try:
        prog = dslc.loads(text, str(ROOT / "bench" / "fuzz.dsl"))  # imports resolve inside bench/
        for target in prog.targets():
            dslc.lower(prog, target)
    except dslc.DslError as e:
        e.render()
        if e.span is None or e.span.line < 1:
            return f"error without a location: {e.render()}"
    except Exception:
        return traceback.format_exc()
    return None


def work(args: tuple[int, int, int]) -> tuple[int, list[tuple[int, str]]]:
    start, stop, seed = args
    crashes = []
    for i in range(start, stop):
        problem = check(source(i, seed))
        if problem:
            crashes.append((i, problem))
    return stop - start, crashes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=500)
    args = p.parse_args()
    chunks = [(s, min(s + args.chunk, args.count), args.seed) for s in range(0, args.count, args.chunk)]
    done, crashes, t0 = 0, [], time.perf_counter()
    with multiprocessing.Pool(args.workers) as pool:
        for n, found in pool.imap_unordered(work, chunks):
            done += n
            crashes += found
            for i, problem in found:
                write_bytes(ROOT / "bench" / "fuzz-crashes" / f"{args.seed}-{i}.dsl", source(i, args.seed).encode())
                print(f"crash on input {i}:\n{problem}", flush=True)
            print(f"{done:,}/{args.count:,} inputs, {len(crashes)} crashes, "
                  f"{done / (time.perf_counter() - t0):.0f}/s", flush=True)
    print(f"fuzz: {done:,} inputs, {len(crashes)} crashes in {time.perf_counter() - t0:.0f} s")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
