"""Where bench/steps.py's training steps spend their time: onnxruntime's profiler on dslc's compiled
step (kernel time per node, summed by op type and by the layer the node comes from) beside
torch.profiler on bench/steps.py's PyTorch eager twin (same model, optimizer and batch).

    python bench/profile_families.py                       # charlm, lstm, resnet; 20 profiled steps
    python bench/profile_families.py --case node_convnet   # any of steps.py's cases
    python bench/profile_families.py --case charlm --steps 40 --top 25
    python bench/profile_families.py --case lstm --formulation embedding_grad=scatter
    python bench/profile_families.py --case charlm --ab attention_mask=where --ab attention_mask=additive

--ab: instead of profiling, A/B whole steps: each --ab (comma-separated POINT=OPTION, `default`, or
file:PATH of a step compiled elsewhere, `{case}` in PATH standing for the case) is compiled, checked against the first (every output of one step, max |diff| / max |value|) and timed
interleaved with the others in one process (median ms per step over --rounds x 5 calls).

Kernel times are summed over the profiled steps and divided by their number (ms per step); they
leave out the executor's own time between nodes, which the "wall" figure (median ms per whole
step, timed apart from the profile, dslc and torch alternating) includes. 2 intra-op threads,
-NchwcTransformer and no memory pattern, as bench/steps.py's dslc rows.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import steps as S  # noqa: E402
from dslc.train.optimizers import OPTIMIZERS  # noqa: E402
from common import interleaved_ms  # noqa: E402

THREADS = 2


def dslc_session(case: str, forced: dict, profile: str | None = None, path: str | None = None):
    import onnx
    import onnxruntime as ort

    import dslc

    model = (onnx.load(path) if path else
             dslc.compile(str(ROOT / "specs" / S.CASES[case]["spec"]), S.CASES[case]["step"], formulations=forced))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = THREADS, 1, 3
    so.enable_mem_pattern = False
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["NchwcTransformer"])
    return model, sess


class DslcStep:
    def __init__(self, case, data, forced, profile=None, path=None):
        self.model, self.sess = dslc_session(case, forced, profile, path)
        self.state = S.initializers(self.model)
        self.data = {k: data[k] for k in S.data_names(self.model)}
        self.outs = [o.name for o in self.sess.get_outputs()]

    def __call__(self):
        return S.run_and_feed_back(self.sess, self.outs, self.data, self.state)


class TorchStep:
    def __init__(self, case, data, weights):
        import torch

        self.case = case
        self.model, _, names, self.loss = S.torch_models(case)
        S.load_into_torch(names, weights)
        self.model.train()
        self.opt = S.torch_optimizer(case, [p for p in self.model.parameters() if p.requires_grad])
        self.batch = {k: torch.from_numpy(v) for k, v in data.items()}

    def __call__(self):
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.batch)
        loss.backward()
        if S.CASES[self.case].get("clip"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), S.CASES[self.case]["clip"])
        self.opt.step()
        return loss.item()


def layer_of(node: str) -> str:
    """The binding a node comes from: `grad/M.h/...` -> `M.h (bwd)`, `M.h/...` -> `M.h`."""
    parts = node.split("/")
    if parts[0] == "grad" and len(parts) > 1:
        return parts[1] + " (bwd)"
    if parts[0] in OPTIMIZERS or node.startswith("adam"):  # the update's nodes: `adam/...`
        return "optimizer"
    return parts[0] if len(parts) > 1 else "(other)"


def summarize(profile_json: str, steps: int, top: int) -> list[str]:
    events = json.loads(Path(profile_json).read_text())
    by_op, by_layer, by_node = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node, op = e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?")
        us = e["dur"]
        by_op[op] += us
        by_layer[layer_of(node)] += us
        by_node[f"{node} [{op}]"] += us
    total = sum(by_op.values())
    out = [f"kernel time {total / steps / 1e3:.2f} ms per step (sum over nodes)"]
    for title, table in (("by op type", by_op), ("by layer", by_layer), ("by node", by_node)):
        out.append(f"  {title}:")
        for name, us in table.most_common(top):
            out.append(f"    {us / steps / 1e3:7.3f} ms {100 * us / total:5.1f}%  {name}")
    return out


def torch_profile(step, steps: int, top: int) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda r: r.self_cpu_time_total, reverse=True)
    total = sum(r.self_cpu_time_total for r in rows)
    out = [f"torch self CPU time {total / steps / 1e3:.2f} ms per step"]
    for r in rows[:top]:
        out.append(f"    {r.self_cpu_time_total / steps / 1e3:7.3f} ms {100 * r.self_cpu_time_total / total:5.1f}%  "
                   f"{r.key} (x{r.count // steps})")
    return out


def ab(case: str, variants: list[str], rounds: int) -> None:
    data = S.make_data(case, S.CASES[case]["batch"])
    steps = {}
    for v in variants:
        if v.startswith("file:"):  # a step compiled elsewhere (another checkout): {case} in the path
            steps[v] = DslcStep(case, data, {}, path=v[5:].format(case=case))
            continue
        forced = {} if v == "default" else dict(f.split("=", 1) for f in v.split(","))
        steps[v] = DslcStep(case, data, forced)
    first = next(iter(steps.values()))

    def updates(st):  # loss, and each weight's change in the step (dslc's state names: W -> W.next)
        got = dict(zip(st.outs, st.sess.run(st.outs, {**st.data, **first.state})))
        return float(got["loss"]), {n[:-5]: got[n] - first.state[n[:-5]] for n in st.outs
                                    if n.endswith(".next") and not n.startswith("adam.") and got[n].dtype.kind == "f"}
    ref_loss, ref = updates(first)
    scale = max(float(np.max(np.abs(u))) for u in ref.values() if u.size)
    for v, st in steps.items():
        st.state = {k: x.copy() for k, x in first.state.items()}
        loss, got = updates(st)
        worst = max(float(np.max(np.abs(got[n] - u))) for n, u in ref.items() if u.size) / scale
        print(f"  {v}: {len(st.model.graph.node)} nodes; against the first: loss {abs(loss - ref_loss) / abs(ref_loss):.1e} "
              f"relative, weight updates differ by at most {worst:.1e} of the largest update", flush=True)
    ms = interleaved_ms(steps, rounds, 5)
    base = ms[next(iter(steps))]
    for k, med in ms.items():
        print(f"  {case} {k}: {med:.2f} ms/step ({med / base:.2f}x the first)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=sorted(S.CASES))
    ap.add_argument("--steps", type=int, default=20, help="profiled steps per contender")
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds for the wall figure")
    ap.add_argument("--formulation", action="append", default=[], metavar="POINT=OPTION")
    ap.add_argument("--no-torch-profile", action="store_true")
    ap.add_argument("--ab", action="append", metavar="POINT=OPTION[,...]|default")
    args = ap.parse_args(argv)
    if args.ab:
        for case in args.case or ["charlm", "lstm", "resnet"]:
            print(f"## {case}: A/B of whole steps", flush=True)
            ab(case, args.ab, args.rounds)
        return 0
    import torch

    torch.set_num_threads(THREADS)
    forced = dict(f.split("=", 1) for f in args.formulation)
    for case in args.case or ["charlm", "lstm", "resnet"]:
        batch = S.CASES[case]["batch"]
        data = S.make_data(case, batch)
        with tempfile.TemporaryDirectory() as tmp:
            d = DslcStep(case, data, forced)
            t = TorchStep(case, data, {k: v for k, v in d.state.items()})
            print(f"\n## {case}: {S.CASES[case]['desc']} (forced: {forced or 'none'}); "
                  f"first loss dslc {d():.5f} torch {t():.5f}", flush=True)
            d2 = DslcStep(case, data, forced, profile=os.path.join(tmp, "q"))
            for _ in range(3):
                d2()
            for _ in range(args.steps):
                d2()
            path = d2.sess.end_profiling()
            # the warm-up steps are in the file too: count them
            print("\n".join(summarize(path, args.steps + 3, args.top)), flush=True)
        if not args.no_torch_profile:
            print("\n".join(torch_profile(t, args.steps, args.top)), flush=True)
        fast = DslcStep(case, data, forced)
        w = interleaved_ms({"dslc": fast, "torch": t}, args.rounds, 3)
        print(f"wall (median ms/step, interleaved {args.rounds} rounds x 3): dslc {w['dslc']:.2f}  torch "
              f"{w['torch']:.2f}  ratio {w['dslc'] / w['torch']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
