"""The search: which formulations a step reaches, and which of them run faster on this machine.

A compile records every choice point it decides (ir/formulations.py: the point, the layer it is
decided for, the static rule's pick and the options that apply there) and the onnxruntime session
option (runtime/session.py TUNINGS) is one more, for the whole step. Coordinate descent from the
static picks: each alternative is compiled with that one point forced, on that one layer, and timed
against the static step in alternation on a synthetic batch of the step's shapes; it wins when its
median beats the static one's by more than the uncertainty of the two medians, measured from the
spread of the same runs. Layers interact
(memory traffic, the arena, threads), and one lucky run on a busy machine is no win, so the winners
are then timed again together as one step, and kept only if that beats the static step too (else
the best one alone, timed again the same way; else the static picks). Everything runs within a time
budget (room for that second measurement kept); what it leaves untried keeps its static pick. Every
option is exact (tests/test_formulations.py, tests/test_opinfo.py): picks change speed, not results
beyond float32 round-off.
"""
from __future__ import annotations

import hashlib
import math
import statistics
import time
from dataclasses import dataclass, field

from ..diagnostics import DslError, did_you_mean
from ..ir import formulations as F
from ..runtime.evaluate import compile_target
from ..runtime.session import TUNINGS
from .measure import Timed, interleaved, median_ms, noise, synthetic_feeds

SESSION = "session"  # the session-option point: onnxruntime's NCHWc layout on or off, whole step
DEFAULT_BUDGET = 20.0  # seconds
MIN_MARGIN = 0.02  # a win must be at least 2% (and about two standard errors of the difference)
REPEATS = (3, 200)  # runs of each side per comparison (about 0.5 s of them): fewer for slow steps


@dataclass(frozen=True)
class Point:
    point: str
    place: str  # the layer ("" for the whole step)
    static: str  # the static rule's pick
    options: tuple[str, ...]  # those that apply here

    @property
    def key(self) -> str:
        return F.key(self.point, self.place)


@dataclass
class Trial:
    key: str
    option: str
    ms: float | None = None  # the candidate's median
    base_ms: float | None = None  # the static step's median in the same runs
    verdict: str = ""  # faster | not faster | same graph | not tried | failed: why


@dataclass
class Tuning:
    step: str
    graph: str  # fingerprint() of the static step
    batch: int
    machine: dict
    points: list[Point] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # integer scalar inputs (counts), by name
    picks: dict[str, str] = field(default_factory=dict)  # key -> option, where it is not the static one
    trials: list[Trial] = field(default_factory=list)
    static_ms: float | None = None
    tuned_ms: float | None = None
    seconds: float = 0.0  # spent measuring
    budget: float = 0.0  # the seconds it was allowed
    source: str = "measured"  # measured | cache | checkpoint

    def formulations(self) -> dict[str, str]:
        """The forcing that compiles the picked step (formulations.forcing)."""
        return {k: v for k, v in self.picks.items() if k != SESSION}

    def session(self) -> str:
        return self.picks.get(SESSION, "default")

    def record(self) -> dict:
        """As JSON: the cache entry and the checkpoint's field."""
        return {"step": self.step, "graph": self.graph, "batch": self.batch, "machine": self.machine,
                "counts": self.counts,
                "picks": self.picks, "static_ms": self.static_ms, "tuned_ms": self.tuned_ms,
                "seconds": round(self.seconds, 3), "budget": self.budget,
                "points": [[p.point, p.place, p.static, list(p.options)] for p in self.points],
                "trials": [[t.key, t.option, t.ms, t.base_ms, t.verdict] for t in self.trials]}

    @classmethod
    def from_record(cls, r, source: str) -> "Tuning | None":
        """The tuning a record describes, or None where it is not one (damaged, another layout)."""
        try:
            points = [Point(str(a), str(b), str(c), tuple(map(str, d))) for a, b, c, d in r["points"]]
            picks = {str(k): str(v) for k, v in r["picks"].items()}
            known = {p.key: p.options for p in points} | {SESSION: tuple(TUNINGS)}
            if any(k not in known or v not in known[k] for k, v in picks.items()):
                return None
            trials = [Trial(str(k), str(o), _ms(m), _ms(b), str(v)) for k, o, m, b, v in r["trials"]]
            counts = {str(k): int(v) for k, v in r.get("counts", {}).items()}
            return cls(str(r["step"]), str(r["graph"]), int(r["batch"]), dict(r["machine"]), points, counts, picks,
                       trials, _ms(r["static_ms"]), _ms(r["tuned_ms"]), float(r["seconds"]),
                       float(r.get("budget", 0)), source)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def table(self) -> str:
        """Per choice point: each option's ms (the static pick's marked *), and the pick."""
        m = self.machine
        head = (f"tune {self.step} (batch {self.batch}) on {m.get('cpu')}, onnxruntime {m.get('onnxruntime')}, "
                f"threads {m.get('threads')}: {self.source}" + (f" in {self.seconds:.1f} s" if self.source ==
                                                                 "measured" else ""))
        rows = [("point", "layer", "options: ms (* static pick)", "pick")]
        for p in [Point(SESSION, "", "default", tuple(TUNINGS)), *self.points]:
            if len(p.options) < 2:  # nothing to choose on this layer
                continue
            cells = []
            for o in p.options:
                t = next((t for t in self.trials if t.key == p.key and t.option == o), None)
                if o == p.static:
                    base = [t.base_ms for t in self.trials if t.key == p.key and t.base_ms is not None]
                    cells.append(f"{o}* {base[0]:.1f}" if base else f"{o}*")
                elif t is None or t.ms is None:
                    cells.append(f"{o} ({t.verdict if t else 'not tried'})")
                else:
                    cells.append(f"{o} {t.ms:.1f}")
            pick = self.picks.get(p.key, p.static)
            changed = " <" if pick != p.static else ""
            rows.append((p.point, p.place or "(whole step)", " | ".join(cells), pick + changed))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        for t in self.trials:
            if t.option in ("together", "again") and t.ms is not None:
                what = "the faster ones together" if t.option == "together" else f"{t.key} again"
                lines.append(f"{what}: {t.ms:.1f} ms against {t.base_ms:.1f} ms: {t.verdict}")
        if self.static_ms is not None:
            tuned = self.tuned_ms if self.picks and self.tuned_ms is not None else self.static_ms
            lines.append(f"step: static picks {self.static_ms:.1f} ms, tuned {tuned:.1f} ms "
                         f"({tuned / self.static_ms:.2f}x)" + ("" if self.picks else ": the static picks stay"))
        return "\n".join(lines)


def _ms(v) -> float | None:
    return None if v is None else float(v)


def fingerprint(model) -> str:
    """A hash of the graph as it runs: its nodes, inputs, outputs and opsets, and each initializer's
    name, type and shape but not its values (speed does not depend on them), so that the picks hold
    for any seed's initial weights."""
    import onnx
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[:]
    h = hashlib.sha256(graph.SerializeToString())
    for op in model.opset_import:
        h.update(op.SerializeToString())
    for t in model.graph.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())
    return h.hexdigest()[:16]


def static_step(program, step: str, seed: int = 0):
    """(the step as the static rules compile it, its choice points)."""
    with F.recording(places=True) as taken:
        model = compile_target(program, step, seed=seed)
    points = {}
    for point, place, option, applicable in sorted(taken):
        points.setdefault(F.key(point, place), Point(point, place, option, applicable))
    return model, list(points.values())


def compile_with(program, step: str, picks: dict[str, str], seed: int = 0):
    with F.forcing({k: v for k, v in picks.items() if k != SESSION}):
        return compile_target(program, step, seed=seed)


def measure_step(program, step: str, batch: int, machine: dict, budget: float = DEFAULT_BUDGET,
                 threads: int | None = None, seed: int = 0, planned_steps: int | None = None,
                 share: float = 0.05, static=None, counts: dict | None = None) -> Tuning:
    """Tune one step within `budget` seconds. With `planned_steps` (dslc train's auto mode) the budget
    is also held to `share` of the run's estimated step time."""
    clock = time.perf_counter()
    model, points = static if static is not None else static_step(program, step, seed)
    compile_s = time.perf_counter() - clock
    tuning = Tuning(step, fingerprint(model), batch, machine, points, dict(counts or {}))
    feeds = synthetic_feeds(model, batch, counts)
    opened = time.perf_counter()
    try:
        base = Timed(model, feeds, threads=threads)
    except DslError as e:
        raise DslError(f"cannot time step `{step}` on a synthetic batch of {batch}: {e.message}") from None
    open_s = time.perf_counter() - opened
    step_s = min(base.once() for _ in range(2))
    if planned_steps is not None:
        budget = min(budget, share * planned_steps * step_s)
    tuning.budget = budget
    repeats = max(REPEATS[0], min(REPEATS[1], int(0.5 / max(step_s, 1e-6))))
    cost = (compile_s + open_s + (3 * repeats + 2) * step_s) * 1.2  # of one candidate (measure.interleaved), a guess

    def time_left(need: float) -> bool:
        return time.perf_counter() - clock + need <= budget

    candidates = [(SESSION, o) for o in TUNINGS if o != "default"]
    candidates += [(p.key, o) for p in points for o in p.options if o != p.static]
    static_fp = tuning.graph
    wins = []  # (ratio, picks, the static step's ms, the candidate's ms)
    for key, option in candidates:
        trial = Trial(key, option)
        tuning.trials.append(trial)
        need = (cost if key != SESSION else cost - compile_s) + (cost if wins else 0)  # (room to confirm a win)
        if not time_left(need):
            trial.verdict = "not tried"
            continue
        picks = {key: option}
        try:
            cand = model if key == SESSION else compile_with(program, step, picks, seed)
            if key != SESSION and fingerprint(cand) == static_fp:
                trial.verdict = "same graph"
                continue
            timed = Timed(cand, feeds, picks.get(SESSION, "default"), threads)
        except DslError as e:
            trial.verdict = f"failed: {e.message[:60]}"
            continue
        ratio = _race(trial, base, timed, repeats, clock + budget)
        if trial.verdict == "faster":
            wins.append((ratio, picks, trial.base_ms, trial.ms))
        del timed
    bases = [t.base_ms for t in tuning.trials if t.base_ms is not None]
    tuning.static_ms = statistics.median(bases) if bases else step_s * 1000
    # Confirmed by a second measurement as a whole step: the winners together, else the best one
    # alone (a single lucky run on a busy machine is not a win).
    wins.sort(key=lambda w: w[0])
    tries = ([{k: v for _, p, _, _ in wins for k, v in p.items()}] if len(wins) > 1 else []) + [w[1] for w in wins[:1]]
    for picks in tries:
        trial = Trial("+".join(picks), "together" if len(picks) > 1 else "again")
        tuning.trials.append(trial)
        if not time_left(cost * 0.8):
            trial.verdict = "not tried"
            continue
        try:
            cand = model if list(picks) == [SESSION] else compile_with(program, step, picks, seed)
            timed = Timed(cand, feeds, picks.get(SESSION, "default"), threads)
        except DslError as e:
            trial.verdict = f"failed: {e.message[:60]}"
            continue
        _race(trial, base, timed, repeats, clock + budget)
        del timed
        if trial.verdict == "faster":
            tuning.picks, tuning.tuned_ms = picks, trial.ms * tuning.static_ms / trial.base_ms
            break
    tuning.seconds = time.perf_counter() - clock
    return tuning


def step_plan(program, step: str):
    """The first train declaration that runs `step` (a step must be one: an error otherwise), with
    that call of the step, or (None, None)."""
    from ..frontend import ast as A
    from ..train import plan as P
    d = program.decls.get(step)
    if not isinstance(d, A.Step):
        steps = [n for n, v in program.decls.items() if isinstance(v, A.Step)]
        what = f"there is no `{step}` in {program.file}" if d is None else \
            f"`{step}` is a {type(d).__name__.lower()} in {program.file}"
        raise DslError(f"`dslc tune` times a training step: {what}",
                       hint=did_you_mean(step, steps) or "steps: " + (", ".join(steps) or "(none)"))
    for name in program.trainings():
        try:
            plan = P.plan(program, name)
        except DslError:
            continue
        for s in plan.steps:
            if s.name == step:
                return plan, s
    return None, None


def step_counts(call, batch: int) -> dict[str, int]:
    """The integer arguments a train declaration passes a step (`train_generator(2 * batch)`)."""
    from ..train import plan as P
    return {param: int(P.count(src, batch)) for param, src in call.args if not isinstance(src, str)}


def _race(trial: Trial, base, timed, repeats: int, deadline: float) -> float:
    """Time `timed` alternately with the static step; the trial records both medians and whether the
    candidate is faster by more than about two standard errors of the difference of the medians (and
    MIN_MARGIN). Returns the ratio. (The margin was twice the spread of single runs: at 10% spread a
    candidate then had to be 20% faster, and the NCHWc option's 14-17% on the MNIST convnets was never
    taken.)"""
    tb, tc = interleaved(base, timed, repeats, deadline)
    trial.base_ms, trial.ms = median_ms(tb), median_ms(tc)
    # a median's standard error is ~1.25 sigma / sqrt(n); the difference of two, sqrt(2) times that
    runs = min(len(tb), len(tc))
    margin = max(MIN_MARGIN, 2 * math.sqrt(2) * 1.2533 * max(noise(tb), noise(tc)) / math.sqrt(runs))
    ratio = trial.ms / trial.base_ms
    trial.verdict = "faster" if ratio < 1 - margin else "not faster"
    return ratio
