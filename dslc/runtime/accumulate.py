"""Gradient accumulation (`accumulate = 4`): each batch split into micro-batches, as data-parallel
training splits it over ranks (distributed.py), but one after the other in this process.

Per step, the step's `--emit gradients` graph runs on each micro-batch; the gradients, the reports
and the batch-norm statistics, each times its micro-batch's size, are summed and divided by the
batch size, so they are the batch's mean; the `--emit apply` graph then makes one update. A model
without dropout, noise or batch norm follows the accumulate = 1 run up to float32 rounding; random
draws differ per micro-batch (micro-batch i > 0 feeds the seed rank i would) and batch norm
normalizes with each micro-batch's statistics. Memory is that of one micro-batch.
"""
from __future__ import annotations

import numpy as np

from .distributed import _shard_data, rank_seed
from .evaluate import compile_target
from .runner import StepRunner, host


class AccumulatingStepRunner:
    """StepRunner's interface: run(batch, state, counters) -> (reports, new state)."""

    def __init__(self, program, step: str, device: str, seed: int, parts: int):
        self.parts = parts
        self.grads = StepRunner(compile_target(program, step, "gradients", seed), device, tune=False)
        self.apply = StepRunner(compile_target(program, step, "apply", seed), device, tune=False)
        self.on_cuda = self.grads.on_cuda
        self.reports = [o for o in self.grads.report_outputs if not o.startswith("grad.")]
        self.gradients = [o for o in self.grads.report_outputs if o.startswith("grad.")]
        self.stats = [s[:-5] for s in self.grads.state_outputs]  # batch-norm statistics

    def device_value(self, array: np.ndarray):
        return self.grads.device_value(array)

    def run(self, data: dict[str, np.ndarray], state: dict, counters: dict[str, np.ndarray]):
        sums, total = {}, 0
        for i in range(self.parts):
            micro, n, total = _shard_data(data, i, self.parts)
            if not n:  # a last batch smaller than `accumulate`
                continue
            out, new = self.grads.run(micro, state, {**counters, "seed": rank_seed(counters.get("seed", 0), i)})
            values = {**{k: out[k] for k in self.reports + self.gradients}, **{s: host(new[s]) for s in self.stats}}
            for k, v in values.items():  # (float64 sums: the order of the parts barely matters)
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64) * n
        if not hasattr(self, "_dtypes"):  # what gradients and statistics go back to (read once: on CUDA a copy)
            self._dtypes = {k: host(state[k[5:] if k.startswith("grad.") else k]).dtype
                            for k in self.gradients + self.stats}
        mean = {k: v / total for k, v in sums.items()}
        reports = {k: np.float32(mean[k]) for k in self.reports}
        grads = {k: mean[k].astype(self._dtypes[k]) for k in self.gradients}
        _, new = self.apply.run(grads, state, counters)
        new.update({s: self.device_value(mean[s].astype(self._dtypes[s])) for s in self.stats})
        return reports, new
