"""What `dslc train` calls once its steps are compiled: each step's picks (from the checkpoint being
resumed on this same machine key, from the cache, or measured), its graph recompiled with them and
its runner's session made with the picked session option. Returns the checkpoint's `tuning` field.

`tune = true | false` in the train declaration, `--tune/--no-tune` on the command line (it wins).
Neither (auto): the cache's picks when it has them; else measure only when the run is long enough
to pay for it (AUTO_MIN_STEPS), within DEFAULT_BUDGET and at most AUTO_SHARE of the run's estimated
step time, so a short run never waits and a long one spends at most ~5% of its time to gain more.

Bit-exactness: a resumed run on the same machine key (CPU, onnxruntime, threads) reuses the picks
recorded in its checkpoint, so it runs the same graphs with the same session option and continues
bit for bit. On another machine key it measures afresh (or reads that machine's cache): the graphs
may differ by formulation, each exact, so the run agrees to float32 round-off only. (Where the
budget did not reach the session option, the runner times it on its first batch as it does without
tuning, and a resumed run may take the other one: round-off again.)
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext

from ..runtime.checkpoint import CHECKPOINT, read_checkpoint
from ..runtime.runner import StepRunner
from ..runtime.session import make_session
from . import tune_step
from .machine import machine_key
from .search import DEFAULT_BUDGET, SESSION, Tuning, compile_with, fingerprint, step_counts

AUTO_MIN_STEPS = 500  # a shorter run (tests, smoke runs) keeps the static picks unless the cache has some
AUTO_SHARE = 0.05


def tune_training_steps(trainer) -> dict:
    """Apply the picks to `trainer`'s compiled steps (models and runners); the checkpoint record."""
    o, plan = trainer.o, trainer.plan
    mode = o.tune if o.tune is not None else plan.tune  # None: auto
    if mode is False:
        return {}
    if trainer.device != "cpu" or o.comm or plan.accumulate > 1:
        if mode:
            trainer.log("tune: only single-process CPU steps are tuned here; the static picks run")
        return {}
    machine = machine_key()
    recorded = _recorded(trainer) if o.resume else {}
    planned = plan.epochs * math.ceil(trainer.train_fields.n / plan.batch)
    if o.max_steps is not None:
        planned = min(planned, o.max_steps)
    records = {}
    with _as_trainer_compiles(trainer):
        for i, s in enumerate(plan.steps):
            _one_step(trainer, i, s, mode, machine, recorded.get(s.name), planned, records)
    return records


def _one_step(trainer, i: int, s, mode, machine: dict, rec, planned: int, records: dict) -> None:
    """One step's picks: the checkpoint's (same machine key), the cache's, or measured; applied."""
    plan = trainer.plan
    model = trainer.models[s.name]
    graph, counts = fingerprint(model), step_counts(s, plan.batch)
    tuning = Tuning.from_record(rec, "checkpoint") if isinstance(rec, dict) and rec.get("machine") == machine \
        and rec.get("graph") == graph and rec.get("batch") == plan.batch \
        and rec.get("counts", {}) == counts else None
    if tuning is None:
        tuning = tune_step(trainer.program, s.name, plan.batch, budget=DEFAULT_BUDGET, seed=plan.seed,
                           planned_steps=None if mode else planned, model=model, counts=counts,
                           measure_if_missing=bool(mode) or planned >= AUTO_MIN_STEPS)
    if tuning is None:
        return
    if tuning.graph != graph:  # (the tuner compiled another graph than dslc train)
        trainer.log(f"tune {s.name}: skipped (the step compiles differently here); the static picks run")
        return
    records[s.name] = tuning.record()
    _apply(trainer, i, s.name, tuning)
    picks = ", ".join(f"{k}={v}" for k, v in tuning.picks.items()) or "the static ones"
    took = f"measured in {tuning.seconds:.1f} s (before the first step)" if tuning.source == "measured" \
        else f"from the {tuning.source}"
    trainer.log(f"tune {s.name}: picks {picks}; {took}")


def _as_trainer_compiles(trainer):
    """The context dslc train compiles its steps in: with reduce_lr_on_plateau each step takes the
    input `lr_scale` (runtime/trainer.py, Trainer._compile)."""
    from ..train.optimizers import scaled_learning_rate
    return scaled_learning_rate() if trainer.plan.plateau else nullcontext()


def _apply(trainer, i: int, name: str, tuning: Tuning) -> None:
    runner = trainer.runners[i]
    if not isinstance(runner, StepRunner):
        return
    if tuning.formulations():
        model = compile_with(trainer.program, name, tuning.picks, trainer.plan.seed)
        trainer.models[name] = model
        runner = trainer.runners[i] = StepRunner(model, trainer.device)
    # the session option, where the tuner measured it: never timed again on the first batch, so a
    # resumed run keeps it (else the runner times it on its first batch, as without tuning)
    if any(t.key == SESSION and t.ms is not None for t in tuning.trials):
        runner.tuning = tuning.session()
        runner.session = make_session(runner.model, trainer.device, runner.tuning)


def _recorded(trainer) -> dict:
    """The checkpoint's `tuning` field, where there is a readable one (its checks come later)."""
    path = trainer.out / CHECKPOINT
    if not os.path.isfile(path):
        return {}
    try:
        meta, _ = read_checkpoint(path)
    except Exception:  # a damaged checkpoint is reported by the trainer's own checks
        return {}
    field = meta.get("tuning") if isinstance(meta, dict) else None
    return field if isinstance(field, dict) else {}
