"""A `train` declaration -> a Plan: what `dslc train` runs, checked at compile time with located errors.

    train mnist {
        data     = mnist                                       # or fashion_mnist; npz, images, csv
        image    = image |> scale(0, 1) |> channels_first      # a dataset field, preprocessed
        batch    = 64
        epochs   = 2
        steps    = [train_convnet(image, label)]               # run in this order on every batch
        evaluate = accuracy(ConvNet(image), label)             # once per epoch, on the test split
        show     = [filters(ConvNet)]                          # pictures written after each epoch
    }

Settings are the names in SETTINGS; every other `name = expr` defines a field: a dataset field
(`image`, `label`, a CSV's `features`, or an .npz array's name) piped through PIPES. A step's
arguments are fields, or integers computed from `batch` (the size of the batch at hand:
`train_generator(2 * batch)`). `data = npz | images | csv | text` names the format of the files
--data gives (a text: windows of `seq` characters); `validation = 0.1` holds out a share of the
training split, evaluated beside the test split.
Around the steps: `export = [Encoder, Decoder]`, `log_every`, `monitor` / `early_stopping` /
`reduce_lr_on_plateau`, `accumulate` (micro-batches), `tensorboard` (SETTINGS says what each does).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import DslError, DslNameError, DslTypeError, Span, did_you_mean
from ..frontend import ast as A
from ..lower.program import Program

# What `data =` may say: a dataset by name, or the format of the files --data gives (datasets.FORMATS).
NAMED_DATASETS, DATA_FORMATS = ("mnist", "fashion_mnist"), ("npz", "images", "csv", "text")
DATASETS = NAMED_DATASETS + DATA_FORMATS
# What the readers give (an .npz: its own names).
DATA_FIELDS = ("image", "label", "features", "chars", "next", "next_char")
# The settings of a `train` declaration, each with what it does (`dslc train --help` lists them).
SETTINGS = {
    "data": "mnist | fashion_mnist, or the format of the --data files: npz | images | csv | text",
    "batch": "examples per step (64)",
    "epochs": "passes over the training split (1)",
    "seed": "weights, data order, noise and augmentation all follow it (0)",
    "steps": "[step(field, ...), ...]: run in this order on every batch",
    "evaluate": "an evaluation or a list, after each epoch on the test split and the validation share",
    "show": "[picture(...), ...]: pictures written after each epoch",
    "export": "a model or a list [Encoder, Decoder]: written as MODEL.onnx after each epoch "
              "(default: the first model the first step updates)",
    "validation": "a share of the training split held out and evaluated each epoch (e.g. 0.1), or a folder "
                  '(data = images: "path/to/val" of <class>/ folders; default: root/val/ where it exists)',
    "label_column": 'the CSV column read as `label` (e.g. "quality")',
    "log_every": "without a terminal, a progress line every N steps (default: every 30 s)",
    "monitor": "the history key that picks the best epoch (e.g. val_accuracy, val_loss): "
               "MODEL.best.onnx and weights.best.npz; lower is better for loss, mse, mae",
    "early_stopping": "stop when `monitor` has not improved for N epochs",
    "reduce_lr_on_plateau": "N, or plateau(patience=N, factor=0.1, min_scale=0): multiply the learning rate by "
                            "`factor` when `monitor` has not improved for N epochs (as Keras' ReduceLROnPlateau)",
    "accumulate": "split each batch into N micro-batches: gradients run on each, averaged, one update",
    "tensorboard": "true: TensorBoard event files beside history.json (per-step reports, each epoch's row)",
    "tune": "true: time the formulations on this machine before the first step (cached); false: the static "
            "picks (default: the cache's picks, measured only for runs of 500+ steps; README, \"Tuning\")",
    "seq": "data = text: characters per window (the fields chars, next [N, seq] and next_char [N])",
    "stride": "data = text: a window starts every N characters (default: seq, windows side by side)",
}
# Preprocessing steps a field may pipe through: name -> number of arguments.
PIPES = {"scale": 2, "flatten": 0, "channels_first": 0, "one_hot": 1, "int64": 0, "float32": 0, "standardize": 0,
         "resize": 2, "random_crop": 2, "random_flip": 0}
POSITIVE_INT_PIPES = ("one_hot", "resize", "random_crop")  # their arguments are counts
# Evaluations: what each measures on the test split (and the validation split) after every epoch.
EVALUATIONS = {
    "accuracy": "accuracy(Model(field, ...), label, k=1): the share of examples whose label is among the k "
                "highest scores (k=1: argmax(prediction) == label)",
    "mse": "mse(Model(field, ...), target): the mean squared error of a regression",
    "mae": "mae(Model(field, ...), target): the mean absolute error of a regression",
    "r2": "r2(Model(field, ...), target): the coefficient of determination, 1 - SSE / SST",
    "loss": "loss(step(field, ...)): the step's loss, without updating anything",
    "bits_per_character": "bits_per_character(Model(chars), next): the mean cross-entropy of the model's "
                          "character scores [N, V] or [N, seq, V] against the characters, in bits",
    "generated_accuracy": "generated_accuracy(Generator, judge=TRAIN): the share of generated digits the "
                          "model trained by TRAIN classifies as the class asked for",
}
PICTURES = {
    "latent_grid": "latent_grid(Decoder): a 20x20 grid of decoded points of a 2-D latent space",
    "reconstructions": "reconstructions(Model(field)): test images above their reconstructions",
    "class_grid": "class_grid(Generator): generated digits, one row per class",
    "kernels": "kernels(Model): its first conv layer's kernels, as images",
}


@dataclass(frozen=True)
class Field:
    name: str
    source: str  # a dataset field, or an earlier field
    pipes: tuple[tuple[str, tuple], ...]
    span: Span


@dataclass(frozen=True)
class Call:
    """`train_convnet(image, label)` or `ConvNet(image)`: a declaration with its arguments, each a
    field name or an integer expression of `batch`."""
    name: str
    args: tuple[tuple[str, object], ...]  # (parameter, field name | A.Expr)
    span: Span


@dataclass(frozen=True)
class Measure:
    kind: str  # an EVALUATIONS or PICTURES key
    call: Call | None  # the model or step call it runs
    model: str | None  # the model it reads (latent_grid, class_grid, generated_accuracy, filters)
    label: str | None = None  # accuracy: the labels field; mse, mae, r2: the targets field
    judge: str | None = None  # generated_accuracy: the train declaration whose model judges
    span: Span | None = None
    k: int = 1  # accuracy: top-k


@dataclass(frozen=True)
class Plateau:
    """reduce_lr_on_plateau: the learning rate times `factor` after `patience` epochs without a better
    `monitor` (the wait starts again after each cut), never below `min_scale` times the step's own."""
    patience: int
    factor: float = 0.1
    min_scale: float = 0.0

    def scales(self, values: list, lower_is_better: bool) -> list[float]:
        """The learning-rate scale after each epoch, from `monitor`'s value of each epoch (Keras'
        ReduceLROnPlateau, cooldown 0): a pure function of the history, so a resumed run agrees."""
        sign = 1 if lower_is_better else -1
        best, wait, scale, out = None, 0, 1.0, []
        for v in values:
            if v is not None and (best is None or sign * v < sign * best):
                best, wait = v, 0
            else:
                wait += 1
                if wait >= self.patience:
                    scale, wait = max(scale * self.factor, self.min_scale), 0
            out.append(scale)
        return out


@dataclass(frozen=True)
class Plan:
    name: str
    file: str
    dataset: str
    fields: dict[str, Field]
    batch: int
    epochs: int
    seed: int
    steps: tuple[Call, ...]
    evaluate: Measure | None
    show: tuple[Measure, ...]
    export: str  # the model written as the trained inference .onnx
    span: Span = field(compare=False, repr=False)
    evaluations: tuple[Measure, ...] = ()  # all of `evaluate` (a list or one); `evaluate` is the first
    validation: float | str = 0.0  # the share of the training split held out, or a folder (data = images)
    label_column: str | None = None  # a CSV's column read as `label` (default: `label`, else `target`)
    exports: tuple[str, ...] = ()  # every model written as an inference .onnx (`export` is the first)
    log_every: int | None = None  # progress lines every N steps when stdout is not a terminal
    monitor: str | None = None  # the history key that picks the best epoch
    early_stopping: int | None = None  # epochs without improvement of `monitor` before stopping
    accumulate: int = 1  # micro-batches per batch
    tensorboard: bool = False
    seq: int | None = None  # data = text: characters per window
    stride: int | None = None  # data = text: characters between window starts
    plateau: "Plateau | None" = None  # reduce_lr_on_plateau
    tune: bool | None = None  # measure formulations before the first step (dslc/tuner); None: auto

    def lower_is_better(self) -> bool:
        """Whether `monitor` improves downwards: losses and errors do, accuracies and R^2 do not."""
        return any(w in (self.monitor or "") for w in ("loss", "mse", "mae", "bits_per_character"))

    def value_range(self, field: str) -> tuple[float, float]:
        """The pixel range a field's `scale(lo, hi)` gives (0-1 without one)."""
        f = self.fields.get(field)
        for pipe, args in (f.pipes if f else ()):
            if pipe == "scale":
                return float(args[0]), float(args[1])
        return 0.0, 1.0

    def settings(self) -> dict:
        """What a checkpoint must agree on to be resumed."""
        settings = {"train": self.name, "dataset": self.dataset, "batch": self.batch, "seed": self.seed,
                    "steps": [s.name for s in self.steps]}
        # (each only when set: checkpoints written before they existed still resume)
        settings.update({k: v for k, v in (("validation", self.validation), ("label_column", self.label_column),
                                           ("accumulate", self.accumulate if self.accumulate > 1 else None),
                                           ("seq", self.seq), ("stride", self.stride),
                                           ("reduce_lr_on_plateau", self.plateau and [
                                               self.plateau.patience, self.plateau.factor, self.plateau.min_scale]))
                         if v})
        return settings


def plan(program: Program, name: str | None = None) -> Plan:
    names = program.trainings()
    if name is None:
        if not names:
            raise DslError(f"{program.file} has no `train` declaration", None,
                           "add one, e.g. train mnist { data = mnist  batch = 64  epochs = 2  steps = [...] }")
        name = names[0]
    d = program.decls.get(name)
    if not isinstance(d, A.Train):
        raise DslError(f"no train declaration named `{name}` in {program.file}", None,
                       did_you_mean(name, names) or (f"train declarations: {', '.join(names)}" if names else None))
    return _Reader(program, d).read()


class _Reader:
    def __init__(self, program: Program, d: A.Train):
        self.program, self.d = program, d
        self.values: dict[str, A.Assign] = {}

    def read(self) -> Plan:
        d = self.d
        for st in d.body:
            if not isinstance(st, A.Assign) or len(st.targets) != 1:
                raise DslError("a train declaration holds settings and fields, each `name = value`", st.span)
            if st.targets[0] in self.values:
                raise DslError(f"`{st.targets[0]}` is set twice", st.span)
            self.values[st.targets[0]] = st
        self.dataset = dataset = self._word("data", DATASETS)
        self.fields = fields = {}
        for n, st in self.values.items():
            if n not in SETTINGS:
                fields[n] = self._field(st)
        batch = self._int("batch", 64)
        epochs = self._int("epochs", 1)
        seed = self._int("seed", 0, minimum=0)
        if "steps" not in self.values:
            raise DslError(f"train `{d.name}` has no `steps = [...]`", d.name_span or d.span,
                           "list the steps to run on each batch, e.g. steps = [train_convnet(image, label)]")
        steps = tuple(self._call(e, A.Step, "a step") for e in self._list("steps"))
        if not steps:
            raise DslError("`steps` is empty", self.values["steps"].value.span, "name at least one step")
        evaluations = tuple(self._measure(e, EVALUATIONS) for e in self._list("evaluate")) \
            if "evaluate" in self.values else ()
        show = tuple(self._measure(e, PICTURES) for e in self._list("show")) if "show" in self.values else ()
        exports = self._export(steps)
        early = self._int("early_stopping", 0) or None
        monitor = self._monitor(evaluations, early)
        plateau = self._plateau(monitor)
        return Plan(d.name, self.program.file, dataset, fields, batch, epochs, seed, steps,
                    evaluations[0] if evaluations else None, show, exports[0], d.span, evaluations, self._validation(),
                    self._column(), exports, self._int("log_every", 0) or None, monitor, early,
                    self._int("accumulate", 1), self._bool("tensorboard"), *self._text(), plateau,
                    self._bool("tune") if "tune" in self.values else None)

    # ---- settings
    def _word(self, key: str, allowed) -> str:
        if key not in self.values:
            raise DslError(f"train `{self.d.name}` does not say which data it reads", self.d.name_span,
                           f"add `{key} = mnist` (or {', '.join(allowed)})")
        e = self.values[key].value
        if not isinstance(e, A.Name) or e.id not in allowed:
            raise DslError(f"`{key}` must be a dataset ({', '.join(NAMED_DATASETS)}) or the format of the "
                           f"--data files ({', '.join(DATA_FORMATS)})", e.span,
                           did_you_mean(e.id, allowed) if isinstance(e, A.Name) else None)
        return e.id

    def _column(self) -> str | None:
        if "label_column" not in self.values:
            return None
        e = self.values["label_column"].value
        if not isinstance(e, (A.String, A.Name)) or not (e.value if isinstance(e, A.String) else e.id):
            raise DslTypeError("`label_column` names the CSV column to read as `label`", e.span,
                               'e.g. label_column = "quality"')
        return e.value if isinstance(e, A.String) else e.id

    def _validation(self) -> float | str:
        if "validation" not in self.values:
            return 0.0
        e = self.values["validation"].value
        if isinstance(e, A.String):  # a folder of class folders, beside train/ (relative: to the data root)
            if self.dataset != "images":
                raise DslTypeError(f"a validation folder is for image folders, and `data` is {self.dataset}", e.span,
                                   "hold out a share instead, e.g. validation = 0.1")
            if not e.value.strip():
                raise DslTypeError("`validation` names a folder: it is empty", e.span, 'e.g. validation = "val"')
            return e.value
        if not isinstance(e, A.Number) or not 0 < e.value < 1:
            raise DslTypeError("`validation` is the share of the training split held out, a number "
                               "between 0 and 1, or a folder", e.span, 'e.g. validation = 0.1, or "val"')
        return float(e.value)

    def _monitor(self, evaluations: tuple[Measure, ...], early: int | None) -> str | None:
        """The history key `monitor` names (a run's keys: `loss`, a step's reports, `val_`/`test_` + an
        evaluation); checked against the run's first row, since only the run knows the reports."""
        if "monitor" not in self.values:
            if early:
                raise DslError("`early_stopping` needs `monitor`: the history key to watch",
                               self.values["early_stopping"].span, "e.g. monitor = val_accuracy")
            return None
        e = self.values["monitor"].value
        if not isinstance(e, (A.Name, A.String)):
            raise DslTypeError("`monitor` names a key of the history, e.g. val_accuracy or loss", e.span)
        return e.value if isinstance(e, A.String) else e.id

    def _plateau(self, monitor: str | None) -> Plateau | None:
        """`reduce_lr_on_plateau = 2` or `= plateau(patience=2, factor=0.5, min_scale=0.01)`."""
        if "reduce_lr_on_plateau" not in self.values:
            return None
        st = self.values["reduce_lr_on_plateau"]
        e, usage = st.value, "e.g. reduce_lr_on_plateau = plateau(patience=2, factor=0.5)"
        if monitor is None:
            raise DslError("`reduce_lr_on_plateau` needs `monitor`: the history key to watch", st.span,
                           "e.g. monitor = val_loss")
        if isinstance(e, A.Number):
            args, kwargs = (e,), {}
        elif isinstance(e, A.Call) and isinstance(e.func, A.Name) and e.func.id == "plateau":
            args, kwargs = e.args, {k.name: k.value for k in e.kwargs}
            for k in e.kwargs:
                if k.name not in ("patience", "factor", "min_scale"):
                    raise DslTypeError(f"plateau has no option `{k.name}`", k.span,
                                       did_you_mean(k.name, ("patience", "factor", "min_scale")) or usage)
        else:
            raise DslTypeError("`reduce_lr_on_plateau` is a patience (epochs) or plateau(patience=N, factor=F)",
                               e.span, usage)
        if len(args) > 1:
            raise DslTypeError("plateau takes the patience, then options by name", args[1].span, usage)
        given = dict(kwargs, **({"patience": args[0]} if args else {}))
        if "patience" not in given:
            raise DslTypeError("plateau needs `patience`: epochs without improvement before each cut", e.span, usage)
        p = given["patience"]
        if not isinstance(p, A.Number) or not isinstance(p.value, int) or isinstance(p.value, bool) or p.value < 1:
            raise DslTypeError("`patience` must be an integer >= 1", p.span)
        numbers = {}
        for key, default, ok, wants in (("factor", 0.1, lambda v: 0 < v < 1, "a number between 0 and 1"),
                                        ("min_scale", 0.0, lambda v: 0 <= v <= 1, "a number in [0, 1]")):
            v = given.get(key)
            if v is not None and (not isinstance(v, A.Number) or isinstance(v.value, bool) or not ok(v.value)):
                raise DslTypeError(f"`{key}` must be {wants}", v.span, usage)
            numbers[key] = float(v.value) if v is not None else default
        return Plateau(p.value, **numbers)

    def _text(self) -> tuple[int | None, int | None]:
        """(seq, stride): a text's windows; `seq` is what `data = text` needs, and only it."""
        given = [k for k in ("seq", "stride") if k in self.values]
        if self.dataset != "text":
            if given:
                raise DslError(f"`{given[0]}` sets the windows of a text, and `data` is {self.dataset}",
                               self.values[given[0]].span, "remove it, or say data = text")
            return None, None
        if "seq" not in self.values:
            raise DslError("`data = text` needs `seq`: the characters of each window", self.d.name_span,
                           "e.g. seq = 64")
        seq = self._int("seq", 1)
        return seq, self._int("stride", seq)

    def _bool(self, key: str) -> bool:
        if key not in self.values:
            return False
        e = self.values[key].value
        if not isinstance(e, A.Bool):
            raise DslTypeError(f"`{key}` is true or false", e.span)
        return bool(e.value)

    def _int(self, key: str, default: int, minimum: int = 1) -> int:
        if key not in self.values:
            return default
        e = self.values[key].value
        if not isinstance(e, A.Number) or not isinstance(e.value, int) or e.value < minimum:
            raise DslTypeError(f"`{key}` must be an integer >= {minimum}", e.span)
        return e.value

    def _list(self, key: str) -> tuple[A.Expr, ...]:
        e = self.values[key].value
        return e.items if isinstance(e, A.ListExpr) else (e,)

    # ---- fields
    def _field(self, st: A.Assign) -> Field:
        pipes = []
        e = st.value
        while isinstance(e, A.Call):
            if not isinstance(e.func, A.Name) or e.func.id not in PIPES:
                name = e.func.id if isinstance(e.func, A.Name) else "?"
                raise DslNameError(f"unknown preprocessing step `{name}`", e.func.span,
                                   did_you_mean(name, PIPES) or f"steps: {', '.join(PIPES)}")
            args = e.args[1:]
            if not e.args or len(args) != PIPES[e.func.id] or e.kwargs:
                raise DslTypeError(f"`{e.func.id}` takes {PIPES[e.func.id]} argument(s) after the field", e.span,
                                   "e.g. image |> scale(0, 1) |> channels_first, label |> one_hot(10)")
            values = tuple(self._number(a) for a in args)
            for a, v in zip(args, values):
                if e.func.id in POSITIVE_INT_PIPES and (not isinstance(v, int) or v < 1):
                    raise DslTypeError(f"{e.func.id} takes " + ("the number of classes" if e.func.id == "one_hot"
                                       else "a height and a width") + ", positive integers", a.span)
            pipes.append((e.func.id, values))
            e = e.args[0]
        if not isinstance(e, A.Name):
            raise DslError("a field is a dataset field piped through preprocessing steps", st.value.span,
                           "e.g. image = image |> scale(0, 1) |> channels_first")
        if e.id != st.targets[0] and e.id in self.values and e.id not in self.fields:
            raise DslError(f"the field `{e.id}` is defined further down", e.span, "define it before its uses")
        return Field(st.targets[0], e.id, tuple(reversed(pipes)), st.span)

    @staticmethod
    def _number(e: A.Expr):
        if isinstance(e, A.UnaryOp) and isinstance(e.operand, A.Number):
            return -e.operand.value
        if not isinstance(e, A.Number):
            raise DslTypeError("expected a number", e.span)
        return e.value

    # ---- calls
    def _call(self, e: A.Expr, kind, what: str) -> Call:
        if not isinstance(e, A.Call) or not isinstance(e.func, A.Name):
            raise DslTypeError(f"expected a call of {what}, e.g. name(image, label)", e.span)
        d = self.program.decls.get(e.func.id)
        if not isinstance(d, kind):
            names = [n for n, x in self.program.decls.items() if isinstance(x, kind)]
            raise DslNameError(f"`{e.func.id}` is not {what}", e.func.span,
                               did_you_mean(e.func.id, names) or (f"choose one of {', '.join(names)}" if names else None))
        params = [p.name for p in d.params]
        if len(e.args) > len(params):
            raise DslTypeError(f"`{d.name}` takes {len(params)} inputs, got {len(e.args)}", e.args[len(params)].span)
        given = dict(zip(params, e.args))
        for k in e.kwargs:
            if k.name not in params:
                raise DslTypeError(f"`{d.name}` has no input `{k.name}`", k.span, did_you_mean(k.name, params))
            given[k.name] = k.value
        missing = [p for p in params if p not in given]
        if missing:
            raise DslTypeError(f"`{d.name}` needs its input `{missing[0]}`", e.span,
                               f"{d.name}({', '.join(params)}): give each a field or a count such as 2 * batch")
        return Call(d.name, tuple((p, self._feed(given[p])) for p in params), e.span)

    def _feed(self, e: A.Expr):
        if isinstance(e, A.Name) and e.id != "batch":
            # (an .npz names its own arrays: any name is a dataset field, that the run checks)
            if e.id not in self.fields and e.id not in DATA_FIELDS and self.dataset != "npz":
                raise DslNameError(f"unknown field `{e.id}`", e.span,
                                   did_you_mean(e.id, list(self.fields)) or "define it: `name = image |> ...`")
            return e.id
        _check_count_expr(e)
        return e

    def _measure(self, e: A.Expr, table: dict) -> Measure:
        if not isinstance(e, A.Call) or not isinstance(e.func, A.Name) or e.func.id not in table:
            name = e.func.id if isinstance(e, A.Call) and isinstance(e.func, A.Name) else ""
            raise DslNameError(f"unknown {'evaluation' if table is EVALUATIONS else 'picture'} `{name}`", e.span,
                               did_you_mean(name, table) or "; ".join(table.values()))
        kind, args = e.func.id, e.args
        kwargs = {k.name: k.value for k in e.kwargs}
        usage = table[kind]
        if not args:
            raise DslTypeError(f"{kind} needs an argument", e.span, usage)
        allowed = {"accuracy": ("k",), "generated_accuracy": ("judge",)}.get(kind, ())
        for kw in e.kwargs:
            if kw.name not in allowed:
                raise DslTypeError(f"{kind} has no option `{kw.name}`", kw.span, usage)
        if kind in ("accuracy", "mse", "mae", "r2", "reconstructions", "bits_per_character"):
            call = self._call(args[0], A.Model, "a model")
            label = None
            if kind != "reconstructions":
                if len(args) != 2 or not isinstance(args[1], A.Name):
                    raise DslTypeError(f"{kind} takes a model call and a field of "
                                       f"{'labels' if kind == 'accuracy' else 'targets'}", e.span, usage)
                label = self._feed(args[1])
            k = kwargs.get("k")
            if k is not None and (not isinstance(k, A.Number) or not isinstance(k.value, int) or k.value < 1):
                raise DslTypeError("`k` counts the highest scores a label may be among: an integer >= 1", k.span)
            return Measure(kind, call, call.name, label=label, span=e.span, k=k.value if k is not None else 1)
        if kind == "loss":
            return Measure(kind, self._call(args[0], A.Step, "a step"), None, span=e.span)
        model = self._model_name(args[0])
        judge = None
        if kind == "generated_accuracy":
            if "judge" not in kwargs:
                raise DslTypeError("generated_accuracy needs `judge=`: a train declaration of a classifier",
                                   e.span, usage)
            j = kwargs["judge"]
            if not isinstance(j, A.Name) or not isinstance(self.program.decls.get(j.id), A.Train):
                raise DslNameError("`judge` must name a train declaration (it trains the judging classifier)",
                                   j.span, did_you_mean(getattr(j, "id", ""), self.program.trainings()))
            judge = j.id
        return Measure(kind, None, model, judge=judge, span=e.span)

    def _model_name(self, e: A.Expr) -> str:
        if not isinstance(e, A.Name) or not isinstance(self.program.decls.get(e.id), A.Model):
            models = [n for n, x in self.program.decls.items() if isinstance(x, A.Model)]
            raise DslNameError("expected a model's name", e.span,
                               did_you_mean(getattr(e, "id", ""), models) or f"models: {', '.join(models)}")
        return e.id

    def _export(self, steps: tuple[Call, ...]) -> tuple[str, ...]:
        if "export" in self.values:
            names = tuple(self._model_name(e) for e in self._list("export"))
            if not names or len(set(names)) != len(names):
                raise DslError("`export` lists each model once, at least one", self.values["export"].value.span)
            return names
        return (self.program.decls[steps[0].name].updates[0],)


def _check_count_expr(e: A.Expr) -> None:
    """A step's integer argument: literals, `batch`, + - * and parentheses (checked once, evaluated per batch)."""
    if isinstance(e, A.Number) and isinstance(e.value, int):
        return
    if isinstance(e, A.Name) and e.id == "batch":
        return
    if isinstance(e, A.BinOp) and e.op in ("+", "-", "*"):
        _check_count_expr(e.left)
        _check_count_expr(e.right)
        return
    raise DslTypeError("a step's input is a field or a count such as `2 * batch`", e.span)


def count(e: A.Expr, batch: int) -> int:
    """Evaluate a count expression for a batch of `batch` examples."""
    if isinstance(e, A.Number):
        return e.value
    if isinstance(e, A.Name):
        return batch
    a, b = count(e.left, batch), count(e.right, batch)
    return a + b if e.op == "+" else a - b if e.op == "-" else a * b
