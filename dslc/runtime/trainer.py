"""`dslc train`: run a file's `train` declaration on real data, as a tool people leave running.

Every batch runs the plan's steps in order, each a compiled train-step graph whose state outputs
(`X.next`) become the next step's inputs. Nothing random lives in the process: data order is a
function of (seed, epoch) and the graphs draw their noise from (seed, step), so a checkpoint (state,
global step, position in the epoch) resumes bit for bit. Checkpoints are written atomically; Ctrl-C
finishes the current step, writes one and exits 130; a NaN or inf loss stops before any bad state
is saved. Around the loop: a progress bar (or, without a terminal, a line every so often), an
evaluation per epoch, history.json (with each step's reports), curves and pictures, TensorBoard
events, and after every epoch the `export` models as inference .onnx files and a weights .npz (the
best epoch's too, by `monitor`; `early_stopping` ends the run). `dslc export` does the same from any
checkpoint.

Batches are made ahead of the steps by a background thread (prefetch.py), each a pure function of
(examples, global step): the same arrays in the same order as made in the loop. With
`reduce_lr_on_plateau` the steps take an `lr_scale` input, kept in the state like any other and
decided from the history after each epoch, so a resumed run scales as the uninterrupted one did.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..diagnostics import DslError, did_you_mean
from ..emit.onnx_emit import to_onnx
from ..fileio import remove_stale_temps, save_npz, save_onnx, write_bytes
from ..lower.program import load_program
from ..train import plan as P
from ..train.optimizers import LR_SCALE, scaled_learning_rate
from . import distributed
from . import evaluate as E
from .accumulate import AccumulatingStepRunner
from .checkpoint import CHECKPOINT, check_meta, damaged, is_count, read_checkpoint
from .datasets import (batches, describe_source, epoch_order, has_split, load_dataset, load_text, load_validation,
                       resolve_source, validation_folder)
from .fields import Fields
from .plots import plot_confusion, plot_curves
from .prefetch import Prefetch
from .progress import EpochProgress, ProgressLines, epoch_line, read_history, write_history
from .runner import StepRunner, host
from .session import _dims, cuda_available, type_str
from .tensorboard import EventWriter
from ..tuner.training import tune_training_steps

CHECKPOINT_SECONDS = 30.0  # also one at the end of every epoch, on Ctrl-C and at the end
PROGRESS_SECONDS = 30.0  # without a terminal (and without `log_every`), a progress line this often
SAMPLE_LENGTH = 200  # characters a text run generates after each epoch (sample.txt)
VALIDATION_SEED = 0x5EED  # which examples `validation = 0.1` holds out: the same for every --seed


# ------------------------------------------------------------------ the run
@dataclass
class Options:
    target: str | None = None
    data: str | None = None
    epochs: int | None = None
    batch: int | None = None
    seed: int | None = None
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    max_steps: int | None = None
    import_path: object = None
    log: object = print
    comm: object = None  # MPI: several ranks train data-parallel (distributed.py); found by train()
    collective_timeout: float = 120.0
    prefetch: int = 32  # batches made ahead by a background thread while steps run (0: in the loop)
    tune: bool | None = None  # measure formulations (dslc/tuner); None: the train declaration's `tune`, else auto


def train(path, **options) -> list[dict]:
    """Train the file's first `train` declaration (or `target`); returns the per-epoch history."""
    o = Options(**options)
    if o.data:  # a checkpoint records the data as an absolute path: resumable from any folder
        o.data = str(Path(o.data).expanduser().absolute())
    o.comm = o.comm or distributed.world()
    program = load_program(path, o.import_path)
    plan = P.plan(program, o.target)
    for key in ("epochs", "batch", "seed"):
        value = getattr(o, key)
        if value is not None:
            if value < (0 if key == "seed" else 1):
                raise DslError(f"--{key} must be {'>= 0' if key == 'seed' else 'a positive integer'}, got {value}")
            if key == "seed" and value >= 2**63:  # the graphs' `seed` input is an int64, as for compile
                raise DslError(f"--seed must be from 0 to {2**63 - 1}, got {value}")
            plan = _replace(plan, **{key: value})
    if o.max_steps is not None and o.max_steps < 0:
        raise DslError(f"--max-steps must be >= 0, got {o.max_steps}")
    out = Path(o.out) if o.out else Path("runs") / plan.name
    _check_writable(out)
    return Trainer(program, plan, o, out).run()


def _replace(plan: P.Plan, **changes) -> P.Plan:
    from dataclasses import replace
    return replace(plan, **changes)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DslError(f"cannot write to the output folder {out}: {e.strerror or e}",
                       hint="choose another with --out") from None


class Trainer:
    def __init__(self, program, plan: P.Plan, o: Options, out: Path):
        self.program, self.plan, self.o, self.out, self.log = program, plan, o, out, o.log
        if self.log is print:  # each line out at once: a file or a pipe would hold them in a buffer
            self.log = functools.partial(print, flush=True)
        self.device = self._device(o.device)
        self.interrupted = False
        self.epoch_timings: list[dict] = []  # per epoch: its seconds, and those inside the steps' sessions
        self.saved_step = None  # the global step of the last checkpoint this run wrote or resumed from
        self.rank = o.comm.Get_rank() if o.comm else 0  # only rank 0 writes files and prints
        self.tensorboard = EventWriter(out) if plan.tensorboard and not self.rank else None
        if self.rank:
            self.log = lambda *args, **kwargs: None

    @staticmethod
    def _device(device: str) -> str:
        if device not in ("auto", "cpu", "cuda"):
            raise DslError(f"unknown device `{device}`", hint="use cpu, cuda or auto")
        if device == "cuda" and not cuda_available():
            raise DslError("CUDA was requested but no usable CUDA device/runtime was found",
                           hint="use --device cpu or auto")
        return "cuda" if device != "cpu" and cuda_available() else "cpu"

    # ---- set-up
    def _compile(self) -> None:
        self.models, self.runners, self.input_dtypes = {}, [], {}
        if self.plan.accumulate > 1 and self.o.comm:
            raise DslError("`accumulate` and several workers both split the batch: use one of them",
                           self.plan.span, "each rank's share is already a micro-batch")
        # (reduce_lr_on_plateau: every step takes the input `lr_scale`, kept in the state)
        with scaled_learning_rate() if self.plan.plateau else nullcontext():
            self._compile_steps()
        self.fingerprint = {s: hashlib.sha256(m.SerializeToString()).hexdigest()[:16] for s, m in self.models.items()}

    def _compile_steps(self) -> None:
        for s in self.plan.steps:
            model = E.compile_target(self.program, s.name, seed=self.plan.seed)
            self.models[s.name] = model
            self.runners.append(distributed.DistributedStepRunner(
                self.program, s.name, self.device, self.plan.seed, self.o.comm, self.o.collective_timeout)
                if self.o.comm else AccumulatingStepRunner(self.program, s.name, self.device, self.plan.seed,
                                                           self.plan.accumulate)
                if self.plan.accumulate > 1 else StepRunner(model, self.device))
            self.input_dtypes[s.name] = {i.name: _NP_OF.get(i.type.tensor_type.elem_type) for i in model.graph.input}

    def _initial_state(self) -> dict[str, np.ndarray]:
        from onnx import numpy_helper
        state = {}
        for model in self.models.values():
            for t in model.graph.initializer:
                if t.name not in ("step", "seed") and t.name not in state:
                    state[t.name] = numpy_helper.to_array(t)
        return state

    def _load_data(self) -> None:
        """The training split (less what `validation` holds out) and the splits evaluated each epoch:
        `val` (the held-out share) and `test` (where the data has one, or where there is no `val`)."""
        p = self.plan
        source = describe_source(p.dataset, self.o.data)
        self.log(f"data: {source}")
        self.vocabulary = None  # a text's characters, class 0 first (kept in checkpoints and vocabulary.json)
        if p.dataset == "text":  # (its validation share is the text's tail: no window overlaps training's)
            arrays, held, self.vocabulary = load_text(resolve_source("text", self.o.data).path, p.seq, p.stride,
                                                      p.validation)
            self.log(f"vocabulary: {len(self.vocabulary)} characters")
        else:
            arrays, held = load_dataset(p.dataset, "train", self.o.data, p.label_column), None
        folder = None if isinstance(p.validation, float) and p.validation else \
            validation_folder(p.dataset, self.o.data, p.validation or None)
        if folder is not None:  # an image folder's own validation split (root/val/, or `validation = "..."`)
            held = load_validation(p.dataset, self.o.data, folder)
            self.log(f"validation: {folder}")
        elif p.validation and held is None and any(len(a) for a in arrays.values()):  # (none at all: said below)
            arrays, held = _hold_out(arrays, p.validation, source)
        self.train_fields = Fields(p, arrays, f"the training split of {source}")
        if self.train_fields.n == 0:
            raise DslError(f"the training split of {source} holds no examples")
        needs_eval = any(m.kind != "generated_accuracy" for m in p.evaluations) or \
            any(m.kind == "reconstructions" for m in p.show)
        self.eval_fields = {}  # split -> Fields, in the order the history reports them
        if needs_eval and held is not None:
            where = f"the validation split {folder}" if folder else f"the validation share of {source}"
            self.eval_fields["val"] = Fields(p, held, where, fitted=self.train_fields)
        if needs_eval and (held is None or has_split(p.dataset, "test", self.o.data)):
            self.eval_fields["test"] = Fields(p, load_dataset(p.dataset, "test", self.o.data, p.label_column),
                                              f"the test split of {source}", fitted=self.train_fields)
        # pictures and the judge read one split: the test split, else the validation share
        self.test_fields = self.eval_fields.get("test", self.eval_fields.get("val", self.train_fields))
        self._check_feeds()

    def _check_feeds(self) -> None:
        """Each step input against the field that feeds it (dtype and static dims), on a first batch."""
        idx = np.arange(min(2, self.train_fields.n))
        for s, model in zip(self.plan.steps, self.models.values()):
            inputs = {i.name: i for i in model.graph.input}
            for param, src in s.args:
                vi = inputs[param]
                want_dtype = _NP_OF[vi.type.tensor_type.elem_type]
                if not isinstance(src, str):
                    continue
                value = self._feed(s.name, param, src, idx)
                dims = _dims(vi)
                ok = value.dtype == want_dtype and value.ndim == len(dims) and all(
                    not isinstance(d, int) or d == v for d, v in zip(dims, value.shape))
                if not ok:
                    hint = _feed_hint(value, dims, want_dtype)
                    raise DslError(f"step {s.name}: input `{param}` expects {type_str(vi)}, but the field `{src}` "
                                   f"gives {value.dtype.name}[{', '.join(['N'] + [str(d) for d in value.shape[1:]])}]",
                                   s.span, hint)
                if value.dtype.kind == "i" and value.ndim == 1 or self._one_hot(src):  # class numbers
                    self._check_labels(self.train_fields, src, s.span, classes=self._step_classes(s.name))
        for split, fields in self.eval_fields.items():
            for m in self.plan.evaluations:
                self._check_measure(m, fields, "validation " if split == "val" else "test ")
        grid = next((m for m in self.plan.show if m.kind == "class_grid"), None)
        if grid and not self._step_classes(self.plan.steps[0].name)[0]:
            raise DslError("class_grid: the models the first step trains give no class scores [N, classes]",
                           grid.span, "class_grid draws a row per class of a class-conditional generator")

    def _check_measure(self, m: P.Measure, fields: Fields, split: str) -> None:
        """An evaluation's labels (or targets) on a split it runs on, before any step is taken."""
        if m.kind == "bits_per_character":  # every character among the model's scores
            width = E.score_width(self.graphs, m.call.name)
            if self.vocabulary and width and len(self.vocabulary) > width:
                raise DslError(f"the text has {len(self.vocabulary)} distinct characters, and {m.call.name} scores "
                               f"{width}", m.span, f"give the model {len(self.vocabulary)} outputs (and its "
                               f"embedding {len(self.vocabulary)} rows)")
            self._check_labels(fields, m.label, m.span, split, (width, m.call.name))
        elif m.kind == "accuracy":
            classes = E.class_count(self.graphs, m.call.name)
            if classes and m.k > classes:
                raise DslError(f"accuracy with k={m.k}: {m.call.name} scores only {classes} classes", m.span,
                               f"k counts the highest scores a label may be among: at most {classes}")
            self._check_labels(fields, m.label, m.span, split, (classes, m.call.name))
        elif m.kind in E.REGRESSION:  # the model's output and the targets agree, on two examples
            E.predictions(m, self.graphs, fields, self._initial_state(), np.arange(min(2, fields.n)))
        elif m.kind == "loss" and m.call.name in self.models:  # the labels the step's loss reads
            inputs = {i.name: i for i in self.models[m.call.name].graph.input}
            for param, src in m.call.args:
                vi = inputs.get(param)
                if isinstance(src, str) and vi is not None and _NP_OF.get(vi.type.tensor_type.elem_type) == np.int64 \
                        and len(_dims(vi)) == 1:
                    self._check_labels(fields, src, m.span, split, self._step_classes(m.call.name))

    def _step_classes(self, step: str) -> tuple[int | None, str | None]:
        """(class count, model) for the labels a step reads: the widest class-score output of the
        models it updates (the ACGAN discriminator's `c` [N, 10] beside its `p` [N, 1])."""
        widths = [(E.class_count(self.graphs, m, widest=True), m) for m in self.program.decls[step].updates]
        widths = [w for w in widths if w[0]]
        return max(widths) if widths else (None, None)

    def _one_hot(self, name: str) -> bool:
        """Whether the field is made by one_hot, itself or through the fields it is made from."""
        f = self.plan.fields.get(name)
        while f is not None:
            if any(pipe == "one_hot" for pipe, _ in f.pipes):
                return True
            f = self.plan.fields.get(f.source) if f.source != f.name else None
        return False

    @staticmethod
    def _check_labels(fields: Fields, name: str, span, split: str = "", classes=(None, None)) -> None:
        """Class numbers in [0, classes) (the width of the model's class scores), over the whole split,
        before any step: a test label of 99 makes the accuracy meaningless, and one_hot sees one batch at
        a time (a bad label mid-epoch)."""
        classes, model = classes  # (count, the model whose class scores it is), or (None, None): unknown
        try:
            labels = fields.get(name, np.arange(fields.n))
        except DslError as e:  # one_hot's range check
            raise DslError(f"the {split}field `{name}`: {e.message}", span, e.hint) from None
        if labels.ndim == 2:  # one_hot made them, and has checked them
            return
        want = f"class numbers 0-{classes - 1} ({model} gives {classes} class scores)" if classes \
            else "class numbers 0, 1, 2, ..."
        if labels.dtype.kind not in "iuf" or labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise DslError(f"the {split}field `{name}` holds {labels.dtype.name} values that are not class numbers",
                           span, f"labels must be {want}")
        if labels.size and (labels.min() < 0 or classes and labels.max() >= classes):
            bad = int(labels.min() if labels.min() < 0 else labels.max())
            raise DslError(f"the {split}field `{name}` holds the label {bad}, outside "
                           f"[0, {classes or 'inf'})", span, f"labels must be {want}")

    # ---- checkpoints
    def _meta(self, global_step: int, epoch: int, batch_index: int, sums: dict | None = None,
              per_step: dict | None = None) -> dict:
        # sums: the epoch's running loss and metric totals, so a resumed epoch reports the whole epoch;
        # per_step: its reports so far, step by step (the history's per-step curves)
        return {"global_step": global_step, "epoch": epoch, "batch_index": batch_index, "sums": sums or {},
                "per_step": per_step or {}, **({"vocabulary": self.vocabulary} if self.vocabulary else {}),
                "settings": self.plan.settings(), "graphs": self.fingerprint,
                "data": describe_source(self.plan.dataset, self.o.data),
                **({"tuning": self.tuning} if getattr(self, "tuning", None) else {})}  # the picks (dslc/tuner/training.py)

    def _save_checkpoint(self, state: dict, meta: dict) -> None:
        if self.rank:
            return
        if self.tensorboard:  # (flushed with each checkpoint: a killed run keeps what it saved)
            self.tensorboard.flush()
        arrays = {f"state/{k}": host(v) for k, v in state.items()}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        try:
            save_npz(self.out / CHECKPOINT, arrays)
            self.saved_step = meta["global_step"]
        except OSError as e:
            raise DslError(f"cannot write the checkpoint {self.out / CHECKPOINT}: {e.strerror or e}",
                           hint="the previous checkpoint is intact; free some space or choose another --out") from None

    def _load_checkpoint(self) -> tuple[dict, dict]:
        path = self.out / CHECKPOINT
        if not os.path.lexists(path):
            raise DslError(f"--resume: no checkpoint in {self.out}", hint="run without --resume to start afresh")
        meta, state = read_checkpoint(path)  # (a folder, a FIFO or a dangling link there: said so)
        check_meta(path, meta)
        changed = []
        for k, v in self.plan.settings().items():
            if meta["settings"].get(k) != v:
                changed.append(f"{k} was {meta['settings'].get(k)}, now {v}")
        for s, fp in self.fingerprint.items():
            if meta["graphs"].get(s) != fp:
                changed.append(f"step {s} compiles differently (the .dsl changed)")
        if meta.get("vocabulary") != self.vocabulary:
            changed.append("the text's characters changed")
        if meta.get("data") != describe_source(self.plan.dataset, self.o.data):
            changed.append(f"the data was {meta.get('data')}, now {describe_source(self.plan.dataset, self.o.data)}")
        if changed:
            raise DslError("cannot resume: " + "; ".join(changed),
                           hint="resume with the same file and options, or start afresh without --resume")
        self._check_position(path, meta)
        self._check_state(path, state)
        return state, meta

    def _check_position(self, path: Path, meta: dict) -> None:
        """The step, epoch and batch agree with each other, this data and --epochs; the sums name this
        run's reports. (A tampered epoch would otherwise skip the training and export the old weights.)"""
        per_epoch = math.ceil(self.train_fields.n / self.plan.batch)
        step, epoch, b = meta["global_step"], meta["epoch"], meta["batch_index"]
        if b > per_epoch or step != epoch * per_epoch + b:
            raise damaged(path, f"global step {step} is not epoch {epoch}, batch {b} of {per_epoch} batches "
                                 f"an epoch ({self.train_fields.n:,} examples, batch {self.plan.batch})",
                           hint="it is damaged, or the data file changed since: start afresh without --resume")
        if epoch > self.plan.epochs or epoch == self.plan.epochs and b:
            raise DslError(f"cannot resume: the checkpoint {path} is in epoch {epoch + 1}, beyond the "
                           f"{self.plan.epochs} epoch(s) of this run", hint=f"pass --epochs {epoch + 1} or more")
        reports = {s: [o.name for o in m.graph.output if not o.name.endswith(".next")] for s, m in self.models.items()}
        names = {(f"{s}/" if len(reports) > 1 else "") + r for s, rs in reports.items() for r in rs}
        unknown = sorted(set(meta.get("sums") or ()) - names)
        if unknown:
            raise damaged(path, f"its running sums name `{unknown[0]}`, which no step reports")

    def _check_state(self, path: Path, state: dict) -> None:
        """Exactly the state the compiled steps hold: every name, with its shape and dtype, finite."""
        want = self._initial_state()
        missing, extra = sorted(want.keys() - state.keys()), sorted(state.keys() - want.keys())
        if missing or extra:
            what = f"it lacks `{missing[0]}`" if missing else f"it holds `{extra[0]}`, which no step uses"
            more = len(missing) + len(extra) - 1
            raise damaged(path, what + (f" (and {more} more difference(s))" if more else ""))
        for name, w in want.items():
            v = state[name]
            if v.dtype != w.dtype or v.shape != w.shape:
                raise damaged(path, f"`{name}` is {v.dtype.name}{list(v.shape)}, the step expects "
                                     f"{w.dtype.name}{list(w.shape)}")
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise damaged(path, f"`{name}` holds NaN or infinite values")

    def _resumed_history(self, path: Path, start_epoch: int) -> list[dict]:
        """The rows of the epochs the checkpoint has done; each must carry its epoch number."""
        if not path.is_file():
            return []
        rows = read_history(path)
        for i, h in enumerate(rows):
            if not is_count(h.get("epoch")) or h["epoch"] < 1:
                raise DslError(f"cannot resume: {path} is damaged: row {i + 1} has no epoch number",
                               hint="delete it to resume without the earlier epochs' rows")
        return [h for h in rows if h["epoch"] <= start_epoch]

    @contextmanager
    def _catch_interrupt(self):
        """Ctrl-C (SIGINT) and SIGTERM ask the loop to stop after the current step."""
        def handler(signum, frame):
            self.interrupted = True
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers, Ctrl-C interrupts as usual
            pass
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    # ---- the loop
    def run(self) -> list[dict]:
        p, o = self.plan, self.o
        if not self.rank:  # what a killed write of ours left behind (this folder is this run's alone)
            remove_stale_temps(self.out, (".npz", ".json", ".png", ".onnx"))
        self._compile()
        self.graphs = E.Graphs(self.program, self.device, p.seed)
        self._load_data()
        self.tuning = tune_training_steps(self)  # formulations measured on this machine (dslc/tuner)
        history_path = self.out / "history.json"
        if o.resume:
            arrays, meta = self._load_checkpoint()
            global_step, start_epoch, start_batch = meta["global_step"], meta["epoch"], meta["batch_index"]
            start_sums = meta.get("sums")  # None in a checkpoint written before sums were kept
            start_per_step = meta.get("per_step") or {}
            history = self._resumed_history(history_path, start_epoch)
            self.saved_step = global_step
            self.log(f"resuming from step {global_step} (epoch {start_epoch + 1}, batch {start_batch})")
            if not start_batch and self._patience_spent(history):  # (it stopped early: nothing left to train)
                start_epoch = p.epochs
        else:
            arrays, global_step, start_epoch, start_batch, history = self._initial_state(), 0, 0, 0, []
            start_sums, start_per_step = {}, {}
        runner0 = self.runners[0]
        state = {k: runner0.device_value(v) for k, v in arrays.items()}
        n = self.train_fields.n
        per_epoch = math.ceil(n / p.batch)
        self.log(f"train {p.name}: {', '.join(s.name for s in p.steps)} on {n:,} examples, batch {p.batch}, "
                 f"{p.epochs} epoch(s), device {self.device}, output in {self.out}")
        seeds = {s.name: np.int64(zlib.crc32(f"{p.seed}/{s.name}".encode()) & 0x7FFFFFFF) for s in p.steps}
        last_save = time.monotonic()
        stopped = latest_written = False
        # without a terminal (no bar), a line every `log_every` steps or PROGRESS_SECONDS
        isatty = getattr(sys.stdout, "isatty", None)
        lines = None if self.rank or isatty and isatty() else \
            ProgressLines(self.log, per_epoch * p.epochs, p.log_every, PROGRESS_SECONDS)
        # every batch of the run, in order, made ahead of the steps by a background thread (prefetch.py)
        todo = ((b, idx, epoch * per_epoch + b) for epoch in range(start_epoch, p.epochs)
                for b, idx in enumerate(batches(n, p.batch, epoch_order(n, p.seed, epoch)))
                if epoch > start_epoch or b >= start_batch)
        with self._catch_interrupt(), Prefetch(todo, lambda item: self._batch(item[1], item[2]), o.prefetch) as ahead:
            made = iter(ahead)
            for epoch in range(start_epoch, p.epochs):
                restored = epoch == start_epoch and start_sums is not None
                sums: dict[str, float] = dict(start_sums) if restored else {}
                # each report, step by step (the history's per-step curves; a resumed epoch's so far)
                per_step: dict[str, list] = {k: list(v) for k, v in (start_per_step if restored else {}).items()}
                started = time.monotonic()
                first = next_batch = start_batch if epoch == start_epoch else 0
                stopped = False
                bar = EpochProgress(per_epoch, epoch + 1, p.epochs, enabled=False if self.rank else None)
                if first:
                    bar.update(first)
                self.step_seconds = 0.0  # inside the steps' sessions (bench/epoch_overlap.py)
                for (b, idx, _), feeds in itertools.islice(made, per_epoch - first):
                    if self.interrupted or o.max_steps is not None and global_step >= o.max_steps:
                        stopped = True
                        break
                    reports = self._one_batch(feeds, state, global_step, seeds)
                    global_step, next_batch = global_step + 1, b + 1
                    for k, v in reports.items():
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                        per_step.setdefault(k, []).append(v)
                    shown = {k.split("/")[-1]: v for k, v in reports.items()}
                    bar.update(1, **shown)
                    if lines:
                        lines.update(global_step, epoch + 1, p.epochs, reports)
                    if self.tensorboard:
                        self.tensorboard.scalars(global_step, {f"step/{k}": v for k, v in reports.items()})
                    if time.monotonic() - last_save > CHECKPOINT_SECONDS:
                        self._save_checkpoint(state, self._meta(global_step, epoch, next_batch, sums, per_step))
                        last_save = time.monotonic()
                bar.close()
                self.epoch_timings.append({"epoch": epoch + 1, "seconds": time.monotonic() - started,
                                           "step_seconds": self.step_seconds, "steps": next_batch - first})
                if not self._tuned:  # (after the bar: a line printed under a live bar splits it)
                    self._report_tuning()
                if stopped:
                    self._save_checkpoint(state, self._meta(global_step, epoch, next_batch, sums, per_step))
                    break
                seen = n if restored else n - first * p.batch
                row = {"epoch": epoch + 1, "steps": global_step, **{k: v / seen for k, v in sums.items()},
                       "seconds": round(time.monotonic() - started, 2)}
                row.update(self._evaluate(state, epoch + 1))
                row.update({f"step_{k}": v for k, v in per_step.items()})
                history.append(row)
                cut = self._reduce_on_plateau(history, state) if p.plateau else None
                if self.tensorboard:
                    self.tensorboard.scalars(global_step, {k: v for k, v in row.items() if k not in ("epoch", "steps")})
                self._save_checkpoint(state, self._meta(global_step, epoch + 1, 0))
                last_save = time.monotonic()
                self._write_history(history)
                self._export(state)  # the latest model, each epoch: an interrupted run has one
                latest_written = True
                shown = {k: v for k, v in row.items() if k not in ("epoch", "steps", "seconds")}
                self.log(epoch_line(epoch + 1, p.epochs, shown, row["seconds"], per_epoch - first))
                if cut:
                    self.log(cut)
                if p.monitor and self._best_and_patience(history, state):
                    break
        if self.interrupted:  # the CLI prints the message on stderr and exits 130
            raise KeyboardInterrupt(f"interrupted at step {global_step}: checkpoint written to "
                                    f"{self.out / CHECKPOINT}; continue with --resume")
        if stopped or not latest_written:  # (--max-steps mid-epoch, or nothing left to train)
            self._export(state)
        self._say_exported()
        return history

    def _reduce_on_plateau(self, history: list[dict], state: dict) -> str | None:
        """The learning-rate scale for the next epoch, from the history (Plan.Plateau.scales): set in
        the state (the steps' input `lr_scale`, saved with the checkpoint) and in the epoch's row; what
        to say when it changed."""
        p = self.plan
        scale = p.plateau.scales([h.get(p.monitor) for h in history], p.lower_is_better())[-1]
        if self.o.comm:  # rank 0 alone evaluates: every rank takes its scale
            scale = self.o.comm.bcast(scale, root=0)
        changed = scale != float(host(state[LR_SCALE]))
        state[LR_SCALE] = self.runners[0].device_value(np.array(scale, np.float32))
        history[-1]["lr_scale"] = scale
        return f"reduce_lr_on_plateau: {p.monitor} has not improved for {p.plateau.patience} epoch(s): " \
               f"learning rate x {scale:g} from now on" if changed else None

    def _patience_spent(self, history: list[dict]) -> bool:
        """Whether `monitor` has not improved for `early_stopping` epochs (said once, when it has)."""
        if not (self.plan.early_stopping and history and self.plan.monitor in history[-1]):
            return False
        best, waited = _best(history, self.plan)
        if waited < self.plan.early_stopping:
            return False
        self.log(f"early stopping: {self.plan.monitor} has not improved for {waited} epoch(s) "
                 f"(best {history[best][self.plan.monitor]:.4g} after epoch {history[best]['epoch']})")
        return True

    def _best_and_patience(self, history: list[dict], state: dict) -> bool:
        """Keep the best epoch's models by `monitor` (MODEL.best.onnx, weights.best.npz); True when
        `early_stopping` epochs have passed without improvement. Both follow from the history, so a
        resumed run decides as the uninterrupted one would."""
        p, key = self.plan, self.plan.monitor
        if self.rank:  # (rank 0 alone evaluates; every rank must stop together: it decides)
            return bool(self.o.comm.bcast(None, root=0))
        if key not in history[-1] or not isinstance(history[-1][key], (int, float)):
            keys = [k for k, v in history[-1].items()
                    if isinstance(v, (int, float)) and k not in ("epoch", "steps", "seconds")]
            stop = DslError(f"monitor = {key}: the history has no such number", p.span,
                            f"{did_you_mean(key, keys) or 'the history keys: ' + ', '.join(keys)}; the checkpoint "
                            f"after epoch {history[-1]['epoch']} is written: fix the .dsl and start afresh")
            if self.o.comm:
                self.o.comm.bcast(True, root=0)
            raise stop
        best, waited = _best(history, p)
        if not waited:
            self._export(state, suffix=".best")
        stop = self._patience_spent(history)
        if self.o.comm:
            self.o.comm.bcast(stop, root=0)
        return stop

    def _batch(self, idx: np.ndarray, global_step: int) -> list[dict[str, np.ndarray]]:
        """Each step's inputs for this batch: a pure function of (examples, global step), so the
        prefetching thread makes exactly what the loop would (random_crop, random_flip draw from
        (seed, global step))."""
        key = (self.plan.seed, global_step)
        return [{param: self._feed(s.name, param, src, idx, key) for param, src in s.args} for s in self.plan.steps]

    def _one_batch(self, feeds: list[dict], state: dict, global_step: int, seeds: dict) -> dict[str, float]:
        reports = {}
        for s, runner, data in zip(self.plan.steps, self.runners, feeds):
            counters = {"step": np.array(global_step, np.int64), "seed": np.array(seeds[s.name], np.int64)}
            started = time.perf_counter()
            out, new = runner.run(data, state, counters)
            self.step_seconds += time.perf_counter() - started
            bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
            if bad:
                raise DslError(f"step {s.name}: {bad[0]} became {float(np.asarray(out[bad[0]]).reshape(-1)[0])} at "
                               f"global step {global_step + 1}; stopped before saving it",
                               hint=f"{self._last_checkpoint()}; a smaller learning rate "
                                    f"or gradient clipping (clip_norm=1.0) may help")
            state.update(new)
            prefix = f"{s.name}/" if len(self.plan.steps) > 1 else ""
            reports.update({prefix + k: float(v) for k, v in out.items()})
        return reports

    def _last_checkpoint(self) -> str:
        if self.saved_step is None:  # a checkpoint in --out from an earlier run is not this run's
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.out / CHECKPOINT} (global step {self.saved_step})"

    _tuned = False

    def _report_tuning(self) -> None:
        for s, r in zip(self.plan.steps, self.runners):
            if getattr(r, "timings", None):
                ms = ", ".join(f"{k} {v:.1f} ms" for k, v in r.timings.items())
                self.log(f"session settings for {s.name}: {r.tuning} ({ms})")
        self._tuned = True

    def _feed(self, step: str, param: str, src, idx: np.ndarray, key=None) -> np.ndarray:
        """A step input for this batch: a field (class numbers widened to the input's integer type) or
        a count such as 2 * batch. `key`: (seed, global step) of a training batch, which augmentation
        draws from (None: train_fields.rng_key)."""
        if not isinstance(src, str):
            return np.array(P.count(src, len(idx)), np.int64)
        value = self.train_fields.get(src, idx, key=key or self.train_fields.rng_key)
        want = self.input_dtypes[step][param]
        return value.astype(want) if value.dtype != want and value.dtype.kind in "iu" and np.dtype(want).kind == "i" \
            else value

    def _evaluate(self, state: dict, epoch: int) -> dict:
        if self.rank:
            return {}
        p = self.plan
        weights = {k: host(v) for k, v in state.items()}
        row = {}
        eval_seed = p.seed + 1_000_003  # noise for evaluation, apart from training's
        for m in p.evaluations:
            if m.kind == "generated_accuracy":
                row["generated_accuracy"] = E.generated_accuracy(m, self.graphs, weights, self._judge(m), eval_seed)
                continue
            for split, fields in self.eval_fields.items():
                key = f"{split}_{m.kind}" if m.k == 1 else f"{split}_top{m.k}_{m.kind}"
                key = key if key not in row else f"{key}_{m.call.name}"  # two models measured alike
                if m.kind == "accuracy":
                    row[key], counts = E.accuracy_and_confusion(m, self.graphs, fields, weights)
                    if fields is self.test_fields and counts is not None and m.k == 1:
                        self._confusion(m, counts)
                elif m.kind == "bits_per_character":
                    row[key] = E.bits_per_character(m, self.graphs, fields, weights)
                elif m.kind == "loss":
                    row[key] = E.loss(m, self.graphs, fields, weights, eval_seed)
                else:
                    row[key] = E.regression(m, self.graphs, fields, weights)
        if self.vocabulary:
            self._sample_text(weights, epoch)
        for picture in p.show:
            E.draw(picture, self.graphs, self.test_fields, weights, self.out, epoch, p, eval_seed,
                   classes=self._step_classes(p.steps[0].name)[0])
        return row

    def _sample_text(self, weights: dict, epoch: int) -> None:
        """A text run's sample after each epoch: SAMPLE_LENGTH characters after the first window of the
        evaluated text, drawn at temperature 1 (seeded), into sample.txt and one line of the log."""
        from .generate import Generator, model_of
        chars = self.test_fields.arrays["chars"]
        prompt = "".join(self.vocabulary[c] for c in chars[0]) if len(chars) else ""
        try:
            text = Generator(self.graphs, model_of(self.plan), weights, self.vocabulary).continue_text(
                prompt, SAMPLE_LENGTH, 1.0, self.plan.seed + epoch)
        except DslError as e:  # (a model that does not read characters and score the next: no sample)
            if not getattr(self, "_said_no_sample", False):
                self.log(f"sample: none ({e.message})")
                self._said_no_sample = True
            return
        write_bytes(self.out / "sample.txt", f"epoch {epoch}\n--- prompt\n{prompt}\n--- generated\n{text}\n".encode())
        self.log(f"sample: {prompt[-20:] + text[:60]!r}")

    def _confusion(self, m: P.Measure, counts: np.ndarray) -> None:
        """confusion_matrix.png (of the split pictures read; a second model measured: one per model),
        each epoch; a text's classes are named by their characters."""
        first = next(e for e in self.plan.evaluations if e.kind == "accuracy" and e.k == 1)
        name = "confusion_matrix.png" if m.call.name == first.call.name else f"confusion_matrix_{m.call.name}.png"
        names = None if not self.vocabulary else \
            ["space" if c == " " else repr(c)[1:-1] for c in self.vocabulary[:len(counts)]] + \
            [str(i) for i in range(len(self.vocabulary), len(counts))]
        split = "test" if "test" in self.eval_fields else "validation"
        plot_confusion(counts, self.out / name, f"{m.call.name} on the {split} split", names)

    def _judge(self, m: P.Measure):
        if not hasattr(self, "judge"):
            self.judge = Judge(self.program, m.judge, self, self.out / f"judge-{m.judge}")
        return self.judge

    def _write_history(self, history: list[dict]) -> None:
        if self.rank:
            return
        write_history(self.out / "history.json", history)
        if history:
            plot_curves(history, self.out / "curves.png", title=f"{self.plan.name} ({self.plan.file})")

    def _export(self, state: dict, suffix: str = "") -> None:
        """Every model of `export` as an inference .onnx (weights inside) and every weight as an .npz:
        MODEL.onnx and weights.npz (the latest), or MODEL.best.onnx and weights.best.npz."""
        if self.rank:
            return
        weights = {k: host(v) for k, v in state.items() if k.split(".")[0] in self.program.decls}
        written = write_models(self.program, self.plan, weights, self.out, suffix, self.vocabulary)
        if not suffix:
            self.exported = written

    def _say_exported(self) -> None:
        if not self.rank and getattr(self, "exported", None):
            self.log(f"wrote {' and '.join(str(p) for p in self.exported)}")


def _best(history: list[dict], plan: P.Plan) -> tuple[int, int]:
    """(the best row by `monitor`, the epochs since it): the earliest of equal values."""
    sign = 1 if plan.lower_is_better() else -1
    values = [h.get(plan.monitor) for h in history]
    best = min(range(len(values)), key=lambda i: (sign * values[i] if values[i] is not None else math.inf, i))
    return best, len(values) - 1 - best


def write_models(program, plan: P.Plan, weights: dict, out: Path, suffix: str = "",
                 vocabulary: str | None = None) -> list[Path]:
    """The plan's `export` models with these weights, as OUT/MODEL{suffix}.onnx, and OUT/weights{suffix}.npz;
    for a text, OUT/vocabulary.json: the character of each class number."""
    written = []
    if vocabulary:
        write_bytes(out / "vocabulary.json", (json.dumps(list(vocabulary), ensure_ascii=False) + "\n").encode())
    for name in plan.exports or (plan.export,):
        low = E.lower(program, name, seed=plan.seed)
        for param in low.graph.params:
            if param.value.name in weights:
                param.init = weights[param.value.name]
        path = out / f"{name}{suffix}.onnx"
        save_onnx(path, to_onnx(low.graph))
        written.append(path)
    save_npz(out / f"weights{suffix}.npz", weights)
    return written + [out / f"weights{suffix}.npz"] + ([out / "vocabulary.json"] if vocabulary else [])


def export_checkpoint(path, out, checkpoint=None, target=None, import_path=None) -> list[Path]:
    """`dslc export FILE --out DIR [--checkpoint PATH]`: the `export` models of the train declaration
    with a checkpoint's weights (default: runs/TRAIN/checkpoint.npz), checked against the compiled steps."""
    program = load_program(path, import_path)
    plan = P.plan(program, target)
    ckpt = Path(checkpoint) if checkpoint else Path("runs") / plan.name / CHECKPOINT
    if not os.path.lexists(ckpt):
        raise DslError(f"no checkpoint at {ckpt}", hint="name one with --checkpoint PATH")
    meta, state = read_checkpoint(ckpt)
    check_meta(ckpt, meta)
    if meta["settings"].get("train") != plan.name:
        raise DslError(f"the checkpoint {ckpt} was written by train `{meta['settings'].get('train')}`, "
                       f"not `{plan.name}`", hint="choose the train declaration with --target")
    wanted = {}
    for s in plan.steps:  # every weight the export models read must be there, with the shape they expect
        model = E.compile_target(program, s.name, seed=plan.seed)
        for t in model.graph.initializer:
            wanted[t.name] = (tuple(t.dims), _NP_OF.get(t.data_type))
    for name, (shape, dtype) in wanted.items():
        if name in ("step", "seed"):
            continue
        v = state.get(name)
        if v is None or v.shape != shape or v.dtype != dtype:
            raise damaged(ckpt, f"`{name}` is " + ("missing" if v is None else f"{v.dtype.name}{list(v.shape)}")
                           + f", the .dsl's steps expect {np.dtype(dtype).name}{list(shape)}",
                           hint="the .dsl changed since the checkpoint, or it is another run's")
    weights = {k: v for k, v in state.items() if k.split(".")[0] in program.decls}
    out = Path(out)
    _check_writable(out)
    return write_models(program, plan, weights, out, vocabulary=meta.get("vocabulary"))


class Judge:
    """The classifier that judges generated digits: trained by its own `train` declaration into
    `out/judge-NAME/` the first time, then reused."""

    def __init__(self, program, name: str, parent: Trainer, out: Path):
        plan = P.plan(program, name)
        if plan.evaluate is None or plan.evaluate.kind != "accuracy":
            raise DslError(f"the judge `{name}` must evaluate accuracy(Model(image), label)", plan.span)
        self.model = plan.evaluate.call.name
        self.image_range = plan.value_range(plan.evaluate.call.args[0][1])
        self.generated_range = parent.test_fields.value_range("image")
        weights_file = out / "weights.npz"
        if not weights_file.is_file():
            parent.log(f"training the judge `{name}` into {out}")
            Trainer(program, plan, Options(data=parent.o.data, device=parent.o.device, log=parent.log), out).run()
        from .session import load_weights
        self.weights = load_weights(weights_file)
        self.plan = plan
        self.graphs = E.Graphs(program, parent.device, plan.seed)
        self.classes = E.class_count(self.graphs, self.model)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class numbers for generated images, mapped from the generator's pixel range to the judge's."""
        (glo, ghi), (jlo, jhi) = self.generated_range, self.image_range
        x = (images - glo) / (ghi - glo) * (jhi - jlo) + jlo
        sess = self.graphs.session(self.model)
        name = self.plan.evaluate.call.args[0][0]
        return np.concatenate([E.run(sess, {name: x[idx].astype(np.float32)}, self.weights)[0].argmax(-1)
                               for idx in E.in_batches(len(x))])


def _hold_out(arrays: dict[str, np.ndarray], share: float, source: str) -> tuple[dict, dict]:
    """(kept, held out): `share` of the examples, chosen by VALIDATION_SEED, each part in file order."""
    n = min((len(a) for a in arrays.values()), default=0)
    k = int(round(n * share))
    if k < 1 or k >= n:
        raise DslError(f"validation = {share:g} of the {n:,} training examples of {source} is {k}: "
                       f"{'none' if k < 1 else 'all'} of them",
                       hint="hold out a share that leaves examples on both sides")
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    held, kept = np.sort(order[:k]), np.sort(order[k:])
    return {f: a[kept] for f, a in arrays.items()}, {f: a[held] for f, a in arrays.items()}


def _feed_hint(value: np.ndarray, dims: list, dtype) -> str | None:
    if value.dtype != dtype:
        if dtype == np.int64:
            return "class numbers: pipe the field through int64, e.g. label = label |> int64"
        if dtype == np.float32 and value.dtype.kind in "iu" and value.ndim == 1:
            return "one-hot labels: label = label |> one_hot(10)"
        return "scale pixels to floats: image = image |> scale(0, 1)"
    if value.ndim == 3 and len(dims) == 4:
        return "add a channel axis: image = image |> scale(0, 1) |> channels_first"
    if value.ndim > 2 and len(dims) == 2:
        return "flatten it: image = image |> scale(0, 1) |> flatten"
    return None


_NP_OF = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_}
