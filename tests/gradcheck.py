"""Finite-difference checks of IR gradients, run with onnx.reference on the emitted model.

The dot-product test: for random directions t_i and a random cotangent c,
    <c, (f(x + eps t) - f(x - eps t)) / (2 eps)>  ==  sum_i <vjp_i(c), t_i>.
Models are float64 (onnxruntime lacks many f64 kernels; the reference evaluator has them all).
Order 2 checks the VJP of the VJP, (x, c) -> vjp(c), the same way: second derivatives.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _ReferenceConvTranspose

from dslc.autodiff import vjp
from dslc.emit.onnx_emit import check, to_onnx
from dslc.ir.core import Graph, TensorType, Value
from dslc.ir.builder import Builder

# fn(b, inputs) -> outputs: the function under test, built on graph-input Values
Fn = Callable[[Builder, list[Value]], list[Value]]


@dataclass
class Spec:
    """A float64 function input: the shape it is sampled with, the sampler, and optionally the
    shape the graph declares (with symbols such as "N", bound from `shape`)."""
    shape: tuple
    kind: str | Callable = "normal"  # a sampler name, or fn(rng, shape) -> array
    declared: tuple | None = None


class ConvTranspose(_ReferenceConvTranspose):
    """onnx.reference's ConvTranspose mixes up channels when group > 1 (onnx 1.23): run each
    group on its own with group=1, which it gets right."""
    op_domain = ""

    def _run(self, X, W, B=None, group=None, **attrs):
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **attrs)
        parts = [super(ConvTranspose, self)._run(x, w, None, group=1, **attrs)[0]
                 for x, w in zip(np.split(X, group, axis=1), np.split(W, group, axis=0))]
        y = np.concatenate(parts, axis=1)
        return (y if B is None else y + B.reshape(1, -1, 1, 1),)


class _Pool(OpRun):
    """onnx.reference (1.23) pools with stride 1 misplace pads that are not 4 numbers and read 4 pads
    as [top, bottom, left, right]: 3-D pooling with padding fails. This is the definition instead:
    each kernel offset's strided slice of the padded input, then the max or the mean over the taps
    inside the input (and the padding too where count_include_pad=1)."""
    op_domain = ""
    kind = ""

    def _run(self, x, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None, count_include_pad=0):
        assert auto_pad in ("NOTSET", None) and not ceil_mode
        n = len(kernel_shape)
        strides, dilations = strides or [1] * n, dilations or [1] * n
        pads = pads or [0] * 2 * n
        fill = -np.inf if self.kind == "max" else (0.0 if count_include_pad else np.nan)
        xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)], constant_values=fill)
        out = [(xp.shape[2 + i] - (kernel_shape[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(n)]
        taps = []
        for offset in itertools.product(*[range(k) for k in kernel_shape]):
            index = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                          for o, d, s, m in zip(offset, dilations, strides, out))
            taps.append(xp[(slice(None), slice(None)) + index])
        taps = np.stack(taps)
        y = taps.max(0) if self.kind == "max" else np.nanmean(taps, 0)
        return (y.astype(x.dtype),)


class MaxPool(_Pool):
    kind = "max"


class AveragePool(_Pool):
    kind = "avg"


def reference(model) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=[ConvTranspose, MaxPool, AveragePool])


def sample(rng: np.random.Generator, shape, kind: str = "normal") -> np.ndarray:
    """Inputs inside an op's smooth domain, so that x +- eps*t crosses no kink."""
    if callable(kind):
        return kind(rng, shape)
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "positive":  # Log, Sqrt, a Pow base
        return rng.uniform(0.5, 2.0, shape)
    if kind == "away":  # away from 0: Relu, Abs, Reciprocal, ReduceProd
        return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 1.5, shape)
    if kind == "distinct":  # no near-ties: MaxPool, ReduceMax
        n = int(np.prod(shape))
        return (rng.permutation(n) * 0.1 + rng.uniform(0, 0.02, n)).reshape(shape) - 0.05 * n
    raise ValueError(kind)


def build(fn: Fn, specs: list[Spec], order: int = 1) -> tuple[Graph, int, int]:
    """The graph of the function under test and its VJP. Inputs: the function's arguments, then
    the cotangents; outputs: the function's results, then the gradients. Returns (graph, number
    of arguments, number of results)."""
    graph = Graph("gradcheck")
    b = Builder(graph)
    args = [b.input(f"x{i}", TensorType("f64", s.declared or s.shape)) for i, s in enumerate(specs)]
    ys = fn(b, args)
    if order == 2:  # the function under test becomes (x, c1) -> vjp(c1)
        c1 = [b.input(f"c1_{j}", y.type) for j, y in enumerate(ys)]
        ys = vjp(b, ys, c1, args)
        args = args + c1
    cs = [b.input(f"c{j}", y.type) for j, y in enumerate(ys)]
    grads = vjp(b, ys, cs, args)
    graph.outputs = [b.op("Identity", [v]) for v in list(ys) + list(grads)]
    return graph, len(args), len(ys)


@dataclass
class Result:
    fd: float
    analytic: float
    graph: Graph

    def close(self, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
        return abs(self.fd - self.analytic) <= atol + rtol * max(abs(self.fd), abs(self.analytic))


def dot_check(fn: Fn, specs: list[Spec], order: int = 1, eps: float = 1e-5, seed: int = 0) -> Result:
    rng = np.random.default_rng(seed)
    graph, n_args, n_out = build(fn, specs, order)
    model = to_onnx(graph)
    check(model)
    symbols = {d: n for s in specs if s.declared for d, n in zip(s.declared, s.shape) if isinstance(d, str)}
    feeds = {v.name: sample(rng, s.shape, s.kind) for v, s in zip(graph.inputs, specs)}
    for v in graph.inputs[len(specs):]:
        feeds[v.name] = rng.standard_normal([d if isinstance(d, int) else eval(d, {}, dict(symbols))
                                             for d in v.shape])
    args = [v.name for v in graph.inputs[:n_args]]
    directions = {name: rng.standard_normal(feeds[name].shape) for name in args}
    run = reference(model)

    def at(step: float) -> list[np.ndarray]:
        return run.run(None, {**feeds, **{n: feeds[n] + step * directions[n] for n in args}})

    plus, minus, grads = at(eps)[:n_out], at(-eps)[:n_out], at(0.0)[n_out:]
    cots = [feeds[v.name] for v in graph.inputs[n_args:]]
    fd = sum(float(np.sum(c * (p - m))) for c, p, m in zip(cots, plus, minus)) / (2 * eps)
    analytic = sum(float(np.sum(g * directions[n])) for g, n in zip(grads, args))
    return Result(fd, analytic, graph)


def op_fn(op: str, n_float: int, consts: dict | None = None, attrs: dict | None = None,
          n_out: int | None = None) -> Fn:
    """A function applying one op: inputs are the n_float arguments in order, with `consts`
    ({position: Value-maker or None}) spliced in as compile-time constants or omitted inputs."""
    consts = consts or {}

    def fn(b: Builder, xs: list[Value]) -> list[Value]:
        it = iter(xs)
        ins = []
        for pos in range(n_float + len(consts)):
            if pos in consts:
                make = consts[pos]
                ins.append(make(b) if make is not None else None)
            else:
                ins.append(next(it))
        out = b.op(op, ins, attrs or {}, n_out=n_out)
        return list(out) if isinstance(out, tuple) else [out]
    return fn
