"""Timing compiled steps against each other on this machine: a real-shaped synthetic batch, and two
sessions run in alternation so that a drift of the machine (another process, the CPU's clock) hits
both alike; each side's time is the median of its runs."""
from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..runtime.session import _dims, make_session

MIN_REPEATS = 3
RUNS_PER_TURN = 2  # timed runs of one side after its untimed one
OTHER_DIM = 16  # a symbolic dim that is not the batch (a sequence length): any size the graph takes


def synthetic_feeds(model: onnx.ModelProto, batch: int, counts: dict | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Every input of a step: its state from the initializers, its data drawn at the step's shapes
    (a symbolic leading dim is the batch): normal floats, zero integers (a valid class or index), and
    an integer scalar (a count: `train_generator(2 * batch)`) from `counts`, else the batch."""
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            feeds[vi.name] = numpy_helper.to_array(inits[vi.name])
            continue
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        dims = _dims(vi)
        if not dims and dtype.kind in "iu" and vi.name not in ("seed", "step"):
            feeds[vi.name] = np.array((counts or {}).get(vi.name, batch), dtype)
            continue
        shape = [d if isinstance(d, int) else batch if i == 0 else OTHER_DIM for i, d in enumerate(dims)]
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype)
    return feeds


class Timed:
    """One candidate graph in a session, warmed up (its first run plans memory and packs weights)."""

    def __init__(self, model: onnx.ModelProto, feeds: dict, session_option: str = "default",
                 threads: int | None = None):
        self.session = make_session(model, "cpu", session_option, threads)
        self.feeds = feeds
        self.once()

    def once(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feeds)
        return time.perf_counter() - start


def interleaved(a: Timed, b: Timed, repeats: int, deadline: float | None = None) -> tuple[list[float], list[float]]:
    """`repeats` timed runs of each, in seconds, in turns that alternate which goes first; past
    `deadline` (a perf_counter time) it stops after MIN_REPEATS. Each turn starts with an untimed run:
    onnxruntime's threads spin a while after a run, and the other session's spinning threads slowed the
    first run after a switch by up to 2x on 2 cores (alternating single runs buried wins in that noise)."""
    ta, tb = [], []
    turn = 0
    while len(ta) < repeats:
        if deadline is not None and len(ta) >= MIN_REPEATS and time.perf_counter() > deadline:
            break
        for side, times in ((b, tb), (a, ta)) if turn % 2 else ((a, ta), (b, tb)):
            side.once()
            times.extend(side.once() for _ in range(min(RUNS_PER_TURN, repeats - len(times))))
        turn += 1
    return ta, tb


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def noise(times: list[float]) -> float:
    """The relative spread of repeated runs of one graph: the median absolute deviation over the
    median, scaled to a normal's standard deviation."""
    m = statistics.median(times)
    return 1.4826 * statistics.median(abs(t - m) for t in times) / m if m > 0 else 0.0
