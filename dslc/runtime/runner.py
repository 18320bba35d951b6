"""Running one compiled step again and again: its state stays where the session computes.

A train-step graph's inputs are data, state (every input `X` with an output `X.next`: weights,
optimizer slots, batch-norm statistics) and the `seed` / `step` counters. On the CPU, state lives
in NumPy arrays fed to `session.run`. On CUDA it lives in OrtValues on the device, bound with
IOBinding: each step's `X.next` outputs stay on the GPU and become the next step's inputs, and only
the loss and metrics are copied back.
"""
from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort

from .session import TUNINGS, make_session

NEXT = ".next"


class StepRunner:
    def __init__(self, model: onnx.ModelProto, device: str, threads: int | None = None, tune: bool = True):
        self.model, self.device, self.threads = model, device, threads
        self.session = make_session(model, device, threads=threads)
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.tuning = None if tune and not self.on_cuda else "default"  # chosen on the first batch
        outputs = [o.name for o in self.session.get_outputs()]
        self.state_outputs = [o for o in outputs if o.endswith(NEXT) and o != "step.next"]
        self.report_outputs = [o for o in outputs if not o.endswith(NEXT)]  # loss and metrics
        inits = {t.name for t in model.graph.initializer}
        self.state_inputs = [o[:-len(NEXT)] for o in self.state_outputs]
        # Inputs read but never written (a frozen model's weights): state too, shared with other steps.
        self.read_only = [i.name for i in model.graph.input
                          if i.name in inits and i.name not in self.state_inputs and i.name not in ("step", "seed")]
        self.counters = [i.name for i in model.graph.input if i.name in ("step", "seed")]

    def device_value(self, array: np.ndarray):
        """State as this runner keeps it: a NumPy array, or an OrtValue on the GPU."""
        if not self.on_cuda:
            return array
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)

    def run(self, data: dict[str, np.ndarray], state: dict, counters: dict[str, np.ndarray]):
        """One step: returns ({loss, metric: float}, {state name: new value})."""
        if self.on_cuda:
            return self._run_bound(data, state, counters)
        feeds = {**data, **{k: counters[k] for k in self.counters},
                 **{k: state[k] for k in self.state_inputs + self.read_only}}
        if self.tuning is None:
            self._tune(feeds)
        names = self.report_outputs + self.state_outputs
        values = self.session.run(names, feeds)
        reports = {n: v for n, v in zip(self.report_outputs, values)}
        new = {n[:-len(NEXT)]: v for n, v in zip(self.state_outputs, values[len(self.report_outputs):])}
        return reports, new

    def _tune(self, feeds: dict, rounds: int = 3) -> None:
        """Pick the faster session settings for this graph by timing both on the first batch (a step
        is a pure function: running it more often changes nothing)."""
        sessions = {"default": self.session,
                    **{k: make_session(self.model, self.device, k, self.threads) for k in TUNINGS if k != "default"}}
        times = {k: [] for k in sessions}
        for k, sess in sessions.items():
            sess.run(None, feeds)  # warm-up
        for _ in range(rounds):
            for k, sess in sessions.items():
                sess.run(None, feeds)  # untimed: the other session's threads spin a while after its run
                start = time.perf_counter()
                sess.run(None, feeds)
                times[k].append(time.perf_counter() - start)
        self.timings = {k: float(np.median(v)) * 1000 for k, v in times.items()}
        self.tuning = min(self.timings, key=self.timings.get)
        self.session = sessions[self.tuning]

    def _run_bound(self, data, state, counters):
        binding = self.session.io_binding()
        for k, v in {**data, **{k: counters[k] for k in self.counters}}.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for k in self.state_inputs + self.read_only:
            binding.bind_ortvalue_input(k, state[k])
        for n in self.report_outputs:
            binding.bind_output(n, "cpu")
        for n in self.state_outputs:
            binding.bind_output(n, "cuda", 0)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        reports = {n: values[i].numpy() for i, n in enumerate(self.report_outputs)}
        start = len(self.report_outputs)
        new = {n[:-len(NEXT)]: values[start + i] for i, n in enumerate(self.state_outputs)}
        return reports, new


def host(value) -> np.ndarray:
    """State back in host memory (for checkpoints and evaluation)."""
    return value if isinstance(value, np.ndarray) else value.numpy()
