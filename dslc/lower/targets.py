"""One target (a model, a typed fn, a step) -> one IR graph with named inputs and outputs."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..autodiff import grad
from ..diagnostics import DslError, DslTypeError, did_you_mean
from ..frontend import ast as A
from ..ir.core import DTYPES, Graph, TensorType, Value
from ..ir.builder import Builder
from ..ir.verify import verify
from ..ir.formulations import forcing, pass_on
from ..passes import optimize
from ..passes.float64_ops import rewrite_float64_ops
from ..passes.precision import to_float64
from ..passes.reorder import pool_before_relu
from ..train.optimizers import apply_updates
from .lowerer import Lowerer, Options, Scope, add_dims, input_type, unbound_output
from .program import Program
from .values import LayerRecord, ModelResult, OptimizerSpec

# What a step compiles to: `train` (the default) is the whole step, forward + backward + update;
# `gradients` stops before the update; `apply` is the update alone; `forward` is the loss alone.
EMITS = ("forward", "gradients", "train", "apply")
STEP_ONLY = ("gradients", "train", "apply")
COUNTERS = ("seed", "step")  # i64 inputs of every graph that draws random numbers or updates weights


@dataclass
class Lowered:
    name: str
    kind: str  # 'model' | 'fn' | 'step'
    graph: Graph
    layers: list[LayerRecord] = field(default_factory=list)
    optimizer: OptimizerSpec | None = None
    updates: tuple[str, ...] = ()


def lower_target(program: Program, name: str, options: Options | None = None, emit: str | None = None) -> Lowered:
    """`emit` None is the target's own graph: the train step for a step, the forward graph otherwise."""
    options = options or Options()
    with forcing(dict(options.formulations), options.passes_off):
        return _lower_target(program, name, options, emit)


def _lower_target(program: Program, name: str, options: Options, emit: str | None) -> Lowered:
    if name not in program.decls:
        raise DslError(f"no target named `{name}` in {program.file}", None,
                       did_you_mean(name, program.targets()) or f"targets: {', '.join(program.targets())}")
    d = program.decls[name]
    if isinstance(d, A.Train):
        raise DslError(f"`{name}` is a train declaration: run it with `dslc train {program.file} --target {name}`",
                       d.name_span or d.span)
    if isinstance(d, A.Layer):
        raise DslError(f"`{name}` is a layer template; it compiles as part of the models that call it", d.span)
    if emit is None:
        emit = "train" if isinstance(d, A.Step) else "forward"
    if emit not in EMITS:
        raise DslError(f"unknown --emit `{emit}`: use one of {', '.join(EMITS)}")
    if emit in STEP_ONLY and not isinstance(d, A.Step):
        raise DslError(f"--emit {emit} needs a step; `{name}` is a {type(d).__name__.lower()}", d.span,
                       "a fn can call grad() itself and compiles with its backward pass inside")
    lw = Lowerer(program, options)
    g = lw.graph
    g.name = name
    g.source_root = "" if program.file.startswith("<") else os.path.dirname(os.path.abspath(program.file))
    g.doc = f"{type(d).__name__.lower()} {name} from {d.span.relative_to(g.source_root)}"
    b = lw.root
    b.span = d.span
    kind = "model" if isinstance(d, A.Model) else {A.Fn: "fn", A.Step: "step"}[type(d)]
    for p in d.params:
        if kind == "step" and p.name in COUNTERS:
            raise DslError(f"a step's input cannot be named `{p.name}`: every step has a `{p.name}` input of its "
                           f"own", p.span, "rename it")
    env = {p.name: b.input(p.name, input_type(p)) for p in d.params}
    for p in d.params:
        add_dims(env, p, env[p.name])
        if env[p.name].type == TensorType("i64", ()):  # a count such as `n: i64` can size a shape: [2 * n, 100]
            env[p.name].sym = (p.name,)
    lw.is_step = kind == "step"
    sc = Scope(b, env, d.name if kind == "model" else "", training=(kind == "step"), kind=kind)
    result = lw.run_body(sc, d)
    out = Lowered(name, kind, g, lw.layers)

    if isinstance(d, A.Model):
        for o, at in zip(d.outputs, d.output_spans or [d.span] * len(d.outputs)):
            if o not in sc.env:
                raise unbound_output(d, o, sc.env)
            if any(p.name == o for p in d.params):
                raise DslError(f"output `{o}` has the name of an input", at,
                               "name the output after the binding that computes it")
            _output(b, o, lw.tensor(sc, sc.env[o], at))
    elif isinstance(d, A.Fn):
        if result is None:
            raise DslError(f"fn `{name}` ends without `return`", d.name_span or d.span,
                           "give its result with `return <value>` as the last statement")
        ret = next(s for s in d.body if isinstance(s, A.Return))
        exprs = sc.env.get("__returned__", ret.values)  # (one per value: grad(y, [a, b]) gives two)
        names = _return_names(d, len(result), exprs)
        for o, v, e in zip(names, result, exprs):
            if isinstance(v, ModelResult) and len(v.outputs) == 1:
                v = v.outputs[0]
            _output(b, o, lw.tensor(sc, v, e.span))
    else:
        _lower_step(lw, sc, d, emit, out)
        g = out.graph
    if lw.options.float64:  # before folding, so constants fold in float64 from their exact values
        to_float64(g)
    rewrite_float64_ops(g)  # (float64 nodes onnxruntime has no kernel for)
    optimize(g)
    verify(g)
    return out


def _lower_step(lw: Lowerer, sc: Scope, d: A.Step, emit: str, out: Lowered) -> None:
    b = lw.root
    if "__loss__" not in sc.env:
        raise DslError(f"step `{d.name}` has no `minimize` statement", d.name_span or d.span,
                       "end the step with `minimize <loss>`, the scalar its update makes smaller")
    loss, loss_span = sc.env["__loss__"]
    if not loss.type.is_float or loss.rank != 0:
        raise DslTypeError(f"minimize needs a float scalar, got {loss.type}", loss_span,
                           "average it, e.g. minimize mean(...)")
    models = [k for k, v in lw.program.decls.items() if isinstance(v, A.Model)]
    for m, at in zip(d.updates, d.update_spans or [d.span] * len(d.updates)):
        if not isinstance(lw.program.decls.get(m), A.Model):
            what = "is not a model" if m in lw.program.decls else "is not declared"
            raise DslError(f"step `{d.name}` updates `{m}`, which {what}", at,
                           did_you_mean(m, models) or "`updates` names the models whose weights the step trains"
                           + (f": {', '.join(models)}" if models else ""))
    out.optimizer = lw.optimizer(sc, d.optimizer)
    out.updates = d.updates
    owned = [p for p in lw.graph.params if p.value.name.split(".")[0] in d.updates]
    if not any(p.trainable for p in owned):
        raise DslError(f"step `{d.name}` updates {', '.join(d.updates)} but its loss uses none of their weights",
                       d.name_span or d.span, "call the model(s) it updates inside the step")
    if emit == "apply":
        _lower_apply(lw, d, out, [p for p in owned if p.trainable])
        return
    _output(b, "loss", loss)
    for metric, v in sc.env.get("__metrics__", {}).items():
        _output(b, metric, v)
    for p in owned:  # batch-norm statistics of the updated models, after this pass
        if p.value.name in lw.state_updates:
            _output(b, f"{p.value.name}.next", lw.state_updates[p.value.name])
    if emit == "forward":
        return
    b.span = loss_span
    trainable = [p.value for p in owned if p.trainable]
    wrt = list(trainable)
    if emit == "gradients" and lw.options.wrt_inputs:
        wrt += [v for v in b.graph.inputs if v.type.is_float and not v.name.startswith("random.")]
    if pass_on("pool_before_relu"):
        pool_before_relu(b.graph)  # the backward then masks at pooled size
    grads = grad(b, loss, wrt)
    lw.graph.params_are_inputs = True
    if emit == "gradients":
        for v, gv in zip(wrt, grads):
            _output(b, f"grad.{v.name}", gv)
        return
    _update(lw, b, out.optimizer, trainable, grads[:len(trainable)])


def _update(lw: Lowerer, b, spec, weights: list[Value], grads: list[Value]) -> None:
    """The optimizer's update as graph outputs: `W.next` per weight, `S.next` per state input, `step.next`."""
    def state_input(name: str, like: Value) -> Value:
        return b.input(name, like.type, default=np.zeros(like.shape, DTYPES[like.dtype]))

    step = lw.counter("step")
    b.scope = spec.name  # its nodes are `adam/...`, not the loss's (profiles sum time by this prefix)
    new_weights, new_state = apply_updates(b, spec.name, spec.options, weights, grads, step, state_input)
    for w, nw in zip(weights, new_weights):
        _output(b, f"{w.name}.next", nw)
    for name, v in new_state:
        _output(b, f"{name}.next", v)
    _output(b, "step.next", b.op("Add", [step, b.const(np.int64(1), "i64")]))


def _lower_apply(lw: Lowerer, d: A.Step, out: Lowered, owned: list) -> None:
    """`--emit apply`: (weights, grad.<weight>, optimizer state, step) -> (weights', state', step'), a graph
    of its own, so gradients averaged elsewhere (workers, micro-batches) can be applied."""
    g = Graph(lw.graph.name, doc=f"{lw.graph.doc}: the optimizer update alone", source_root=lw.graph.source_root)
    b = Builder(g, span=d.span)
    weights = [b.param(p.value.name, p.init, trainable=True) for p in owned]
    grads = [b.input(f"grad.{w.name}", w.type) for w in weights]
    g.params_are_inputs = True
    lw.graph, lw.root, lw.counters = g, b, {}
    _update(lw, b, out.optimizer, weights, grads)
    out.graph = g


def _output(b, name: str, v: Value) -> None:
    if any(i.name == name for i in b.graph.inputs):
        raise DslError(f"output `{name}` has the name of an input; rename one of them", b.span)
    b.graph.outputs.append(b.op("Identity", [v], names=[name]))


def _return_names(d: A.Fn, n: int, exprs=None) -> list[str]:
    """Outputs are named after the returned bindings; `return x` of an input `x` gives `x_out`."""
    ret = next((s for s in d.body if isinstance(s, A.Return)), None)
    exprs = exprs if exprs is not None else ret.values if ret is not None else []
    inputs = {p.name for p in d.params}
    names = []
    for i in range(n):
        e = exprs[i] if i < len(exprs) else None
        name = e.id if isinstance(e, A.Name) else ("output" if n == 1 else f"output_{i}")
        name = f"{name}_out" if name in inputs else name
        names.append(name if name not in names else f"{name}_{i}")
    return names
