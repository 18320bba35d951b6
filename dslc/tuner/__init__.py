"""`dslc tune`: which formulations run a step fastest on this machine, measured (the CLI/runtime
stage: it times compiled graphs in onnxruntime; `dslc compile` never imports it).

    tuning = dslc.tune("specs/convnet.dsl", "train_convnet")   # or: dslc tune FILE --target STEP
    print(tuning.table())                                      # per choice point: options, ms, pick
    model = dslc.compile(prog, "train_convnet", formulations=tuning.formulations())

search.py measures, cache.py keeps the picks per (graph, batch, machine key), training.py is what
`dslc train` calls.
"""
from __future__ import annotations

from contextlib import nullcontext

from ..diagnostics import DslError
from ..train.optimizers import scaled_learning_rate
from . import cache
from .machine import machine_key
from .search import (DEFAULT_BUDGET, SESSION, Tuning, compile_with, fingerprint, measure_step, static_step,
                     step_counts, step_plan)

__all__ = ["DEFAULT_BUDGET", "SESSION", "Tuning", "compile_with", "tune_declared_step", "tune_step"]


def tune_declared_step(program, step: str, batch: int | None = None, budget: float | None = None,
                       threads: int | None = None, seed: int | None = None, use_cache: bool = True) -> Tuning:
    """`dslc tune`: the step as the first train declaration that runs it compiles and feeds it (its
    batch and seed unless given, its counts such as `2 * batch`, reduce_lr_on_plateau's `lr_scale`
    input), else at batch 64."""
    if threads is not None and threads < 1:
        raise DslError(f"--threads must be a positive integer, got {threads}")
    plan, call = step_plan(program, step)
    batch = batch or (plan.batch if plan else 64)
    seed = seed if seed is not None else plan.seed if plan else 0
    with scaled_learning_rate() if plan and plan.plateau else nullcontext():
        return tune_step(program, step, batch, budget=DEFAULT_BUDGET if budget is None else budget, threads=threads,
                         seed=seed, use_cache=use_cache, counts=step_counts(call, batch) if call else {})


def tune_step(program, step: str, batch: int, *, budget: float = DEFAULT_BUDGET, threads: int | None = None,
              seed: int = 0, use_cache: bool = True, planned_steps: int | None = None,
              measure_if_missing: bool = True, model=None, counts: dict | None = None) -> Tuning | None:
    """The picks for `step` at `batch`: from the cache when it has them for this graph and machine
    (and a budget at least this one, or any budget when it may not measure), else measured within
    `budget` seconds and stored. `model`: the step as the static rules compile it, where the caller
    has it (a cache hit then compiles nothing). None: not cached, and `measure_if_missing` false."""
    if budget <= 0:
        raise DslError(f"the tuning budget must be positive, got {budget:g} s")
    if batch < 1:
        raise DslError(f"the batch must be a positive integer, got {batch}")
    machine = machine_key(threads)
    static = None if model is not None else static_step(program, step, seed)
    graph = fingerprint(model if model is not None else static[0])
    if use_cache:
        record = cache.load(graph, batch, machine, counts)
        found = Tuning.from_record(record, "cache") if record else None
        if found is not None and (found.budget >= budget or not measure_if_missing or
                                  not any(t.verdict == "not tried" for t in found.trials)):
            return found
    if not measure_if_missing:
        return None
    tuning = measure_step(program, step, batch, machine, budget, threads, seed, planned_steps,
                          static=static or static_step(program, step, seed), counts=counts)
    if use_cache:
        cache.store(tuning.record())
    return tuning
