"""The long gradient-fuzz run: N random programs, dslc (float64, onnxruntime) against a PyTorch twin.

    python bench/fuzz_gradients.py --count 10000 --seed 0 --workers 1      # from the repository root
    python bench/fuzz_gradients.py --count 2000 --seed 8 --max-stmts 14   # deeper models
    python bench/fuzz_gradients.py --count 2000 --seed 9 --f32-share 1    # all float32 graphs
    python bench/fuzz_gradients.py --count 2000 --seed 10 --symbolic-share 1   # images as f32[N, C, H, W]

Each program comes from tests/gradfuzz.py's `generate(seed * 1_000_003 + i, max_stmts, f32_share, symbolic_share)`: a random model
(layers, activations, reshapes, indexing, concat, `repeat` loops), loss, optimizer and input data
with exact zeros and ties. Its loss, every gradient (weights and inputs) and the weights and
optimizer state after 2-3 train steps are compared with the twin's (tests/gradfuzz.py: `compare`).
Each mismatch or error is written, with its rendered `.dsl`, to --out (default
bench/fuzz-crashes/gradients/, git-ignored), and the first few of each kind are minimised
(`--reduce K`, default 3; 0 turns it off): keep a minimised one as a regression test by adding it
to tests/fuzz_regressions/ (tests/test_fuzz_gradients.py reruns each). Prints programs run,
mismatches, errors, ambiguous programs skipped (kinks that round-off decides), notes (graphs
that needed a workaround to load), and the time.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import gradfuzz as G  # noqa: E402


def kind_of(r: G.Result) -> str:
    """A coarse class of a failure: status, phase and the first differing output's kind."""
    first = r.details[0] if r.details else ""
    words = [w for w in first.replace(":", " ").split() if not w.startswith("M.") and not w[:1].isdigit()]
    return f"{r.status}/{r.phase}/{' '.join(words[:3])}"


def work(args: tuple) -> list[tuple[int, str, list, list]]:
    start, stop, seed, max_stmts, f32_share, symbolic_share = args
    out = []
    for i in range(start, stop):
        s = seed * 1_000_003 + i
        try:
            r = G.compare(G.generate(s, max_stmts, f32_share, symbolic_share))
        except Exception as e:  # the harness itself: count it, keep going
            r = G.Result("error", "harness", [f"{type(e).__name__}: {e}"])
        out.append((s, r.status, r.details if r.status in ("mismatch", "error") else r.details[:3], r.notes))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--max-stmts", type=int, default=7, help="statements drawn per model: 1 to this many")
    ap.add_argument("--f32-share", type=float, default=0.2, help="share of programs compiled as float32 graphs")
    ap.add_argument("--symbolic-share", type=float, default=0.0,
                    help="share of image programs declared with symbolic H and W (x: f32[N, C, H, W])")
    ap.add_argument("--reduce", type=int, default=3, help="minimise the first K findings of each kind")
    ap.add_argument("--out", default=str(ROOT / "bench" / "fuzz-crashes" / "gradients"))  # (git-ignored)
    a = ap.parse_args()
    out_dir = Path(a.out)
    t0 = time.time()
    jobs = [(i, min(i + a.chunk, a.count), a.seed, a.max_stmts, a.f32_share, a.symbolic_share)
            for i in range(0, a.count, a.chunk)]
    counts: collections.Counter = collections.Counter()
    notes: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    skipped: collections.Counter = collections.Counter()
    findings = []
    done = 0
    pool = multiprocessing.Pool(a.workers) if a.workers > 1 else None
    results = pool.imap_unordered(work, jobs) if pool else map(work, jobs)
    for chunk in results:
        for s, status, details, nts in chunk:
            done += 1
            counts[status] += 1
            notes.update(nts)
            if status == "ambiguous":  # which kink round-off decided (the first one named)
                why = [d for d in details if not d.startswith("step")]
                skipped[why[0] if why else "?"] += 1
            if status in ("mismatch", "error"):
                findings.append((s, status, details))
                print(f"seed {s}: {status}: {'; '.join(details[:4])}", flush=True)
        print(f"[{time.time() - t0:7.0f} s] {done}/{a.count} programs: {dict(counts)}"
              + (f" notes {dict(notes)}" if notes else ""), flush=True)
    if pool:
        pool.close()
    elapsed = time.time() - t0
    reduced_of: collections.Counter = collections.Counter()
    for s, status, details in findings:
        out_dir.mkdir(parents=True, exist_ok=True)
        prog = G.generate(s, a.max_stmts, a.f32_share, a.symbolic_share)
        r = G.compare(prog)
        k = kind_of(r)
        kinds[k] += 1
        entry = {"seed": s, "status": status, "details": details, "kind": k, "program": prog, "dsl": G.render(prog)}
        if reduced_of[k] < a.reduce and r.status in ("mismatch", "error"):
            reduced_of[k] += 1
            small = G.reduce(prog)
            entry["reduced"] = small
            entry["reduced_dsl"] = G.render(small)
            entry["reduced_result"] = str(G.compare(small))
        (out_dir / f"seed-{s}.json").write_text(json.dumps(entry, indent=1, sort_keys=True))
    print(f"{done} programs in {elapsed:.0f} s ({elapsed / max(done, 1):.3f} s each): "
          f"{counts['ok']} agree, {counts['mismatch']} mismatches, {counts['error']} errors, "
          f"{counts['ambiguous']} ambiguous (near-ties, skipped)"
          + (f"; notes {dict(notes)}" if notes else ""))
    if skipped:
        print("ambiguous, by the kink round-off decided: " + ", ".join(f"{k} {n}" for k, n in skipped.most_common()))
    for k, n in kinds.most_common():
        print(f"  {n:5d}  {k}")
    if findings:
        print(f"findings written to {out_dir}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
