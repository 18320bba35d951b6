"""AST -> IR: statements, expressions and calls of user declarations.

Built-in functions and layers live in `builtins/` (one table); this module owns names, scopes,
model/layer/fn inlining, indexing, `repeat` loops and target graphs.
"""
from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..diagnostics import DslError, DslNameError, DslShapeError, DslTypeError, Span, did_you_mean, source_text
from ..frontend import ast as A
from ..ir.core import DTYPES, Graph, TensorType, Value
from ..ir.builder import Builder
from ..ir.formulations import at
from .init import generate
from .program import Program
from .values import DeclRef, LayerRecord, ModelResult, OptimizerSpec, Symbol, describe, is_shape_list

# Bare words that name options rather than values.
WORDS = {"same", "valid", "causal", "nearest", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
         "lecun_normal", "zeros", "ones", "uniform", "normal", *DTYPES,
         "relu", "sigmoid", "tanh", "softplus", "leaky_relu", "elu", "softmax", "log_softmax", "gelu", "linear"}
WORDS |= {"silu", "swish", "mish"}  # activation names usable as `activation=` words
WORDS |= {"bilinear"}  # upsample2d(mode=)
WORDS |= {"relu6", "hard_sigmoid", "hard_swish"}  # issue 21: activation names

MAX_NESTING = 100  # expressions inside expressions, through calls too (each takes ~5 Python frames)
MAX_LOOP_NESTING = 16  # Loop bodies inside Loop bodies: protobuf readers stop at ~30
MAX_WEIGHT = 2**29  # f32 numbers in one weight: protobuf caps an ONNX file at 2 GiB

BINARY_OPS = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div", "@": "MatMul", "^": "Pow",
              "==": "Equal", "<": "Less", ">": "Greater", "<=": "LessOrEqual", ">=": "GreaterOrEqual"}


@dataclass
class Options:
    seed: int = 0
    conv_lowering: str = "conv"  # or "im2col": no Conv/ConvTranspose ops in the graph
    random: str = "op"  # or "input": random tensors become graph inputs (deterministic tests)
    float64: bool = False  # compute in float64 (finite-difference gradient checks)
    wrt_inputs: bool = False  # --emit gradients: also the gradients of the step's float inputs
    weights: bool = True  # False (check, summary): weights get their shapes but no memory
    formulations: tuple[tuple[str, str], ...] = ()  # (point, option) forced (ir/formulations.py)
    passes_off: tuple[str, ...] = ()  # passes not to run (ir/formulations.PASSES)


@dataclass
class Scope:
    """Where lowering is: the builder to append to, the names in sight, the weight prefix."""
    b: Builder
    env: dict[str, object]
    prefix: str  # weight names start with it: "ConvNet", "Generator.block1"
    training: bool
    kind: str  # 'model' | 'layer' | 'fn' | 'step'
    binding: str = ""
    layer_counts: dict[str, int] = field(default_factory=dict)

    def weight_path(self, kind: str) -> str:
        """`ConvNet.conv1` for the first weighted layer of binding conv1, `conv1_2` for the next."""
        key = self.binding or kind
        n = self.layer_counts.get(key, 0) + 1
        self.layer_counts[key] = n
        name = key if n == 1 else f"{key}_{n}"
        return f"{self.prefix}.{name}" if self.prefix else name


class Lowerer:
    def __init__(self, program: Program, options: Options | None = None):
        self.program = program
        self.options = options or Options()
        self.graph = Graph("main")
        self.root = Builder(self.graph)
        self.weights: dict[str, Value] = {}
        self.state_updates: dict[str, Value] = {}  # batch-norm statistics after a training pass
        self.layers: list[LayerRecord] = []
        self.random_count = itertools.count()  # random ops: their site number, or input names
        self.counters: dict[str, Value] = {}  # the `seed` and `step` inputs, once used
        self.is_step = False  # random draws depend on the step counter too
        self.call_stack: list[str] = []
        self.call_spans: list[Span] = []  # where each call of call_stack was made
        self.depth = 0  # expressions being lowered, one inside the other
        self.loops = 0  # and `repeat` loops

    # ------------------------------------------------------------------ weights
    def weight(self, name: str, shape: tuple, init, trainable: bool = True, span: Span | None = None,
               dtype: str = "f32") -> Value:
        """The weight `name`, created on first use with `init(rng, shape)` in the float type of the
        layer's input; later uses share it."""
        if name in self.weights:
            w = self.weights[name]
            if tuple(w.shape) != tuple(shape) or w.dtype != dtype:
                raise self._weight_mismatch(name, w, shape, dtype, span)
            return w
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise DslShapeError(f"weight `{name}` needs static, positive sizes, got "
                                f"[{', '.join(map(str, shape))}]", span)
        if math.prod(shape) > MAX_WEIGHT:
            raise DslShapeError(f"weight `{name}` would hold {math.prod(shape):,} numbers, more than the "
                                f"{MAX_WEIGHT:,} an ONNX file can hold (2 GiB)", span)
        if self.options.weights:
            rng = np.random.default_rng([self.options.seed, zlib.crc32(name.encode())])
            data = generate(init, rng, tuple(shape), DTYPES[dtype], f"weight `{name}`", span)
        else:  # a zero-stride view: the right shape and dtype, and no memory at all
            data = np.broadcast_to(np.zeros((), DTYPES[dtype]), tuple(shape))
        w = self.root.param(name, data, trainable)
        self.weights[name] = w
        return w

    def _weight_mismatch(self, name: str, w: Value, shape: tuple, dtype: str, span: Span | None) -> DslShapeError:
        """A second call of a model whose inputs do not fit the weights its first call made: report it
        at that call (the layer inside the model is fine, the call's input is not)."""
        model = name.split(".")[0]
        at = next((s for n, s in zip(self.call_stack, self.call_spans) if n == model), span)
        layer = f" (the weight belongs to the layer at line {span.line})" if span and at is not span else ""
        return DslShapeError(f"this call of {model} needs its weight `{name}` as "
                             f"{dtype}[{', '.join(map(str, shape))}], but an earlier call made it {w.type}", at,
                             f"a model's weights are shared by all its calls: give every call inputs of the "
                             f"same shape{layer}")

    def counter(self, name: str) -> Value:
        """The i64 scalar input `seed` or `step` (created on first use, 0 when the caller leaves it out)."""
        if name not in self.counters:
            self.counters[name] = self.root.input(name, TensorType("i64", ()), default=np.int64(0))
        return self.counters[name]

    def random_key(self, sc: Scope) -> Value:
        """The key of one more random op: (seed, step in a training step, loop pass, op number)."""
        from . import random as R
        step = self.counter("step") if self.is_step else None
        return R.site_key(sc.b, self.counter("seed"), step, next(self.random_count), sc.env.get("__iteration__"))

    # ------------------------------------------------------------------ statements
    def run_block(self, sc: Scope, body: tuple[A.Stmt, ...]):
        """Lower statements; returns what a `return` gives (a tuple) or None."""
        for k, st in enumerate(body):
            if isinstance(st, A.Assign):
                sc.binding = st.targets[0] if len(st.targets) == 1 else "_".join(st.targets)
                sc.b.scope = self._scope_name(sc)
                with at(sc.b.scope):  # the layer a formulation is chosen for (ir/formulations.py)
                    value = self.expr(sc, st.value)
                self.bind(sc, st.targets, value, st.span)
            elif isinstance(st, A.Return):
                if sc.kind in ("model", "step"):
                    raise DslError(f"`return` is not allowed in a {sc.kind}", st.span,
                                   "a model's outputs are named after `->`; a step ends with `minimize`")
                if k + 1 < len(body):
                    raise DslError("this statement comes after `return`, so it would never run", body[k + 1].span,
                                   "`return` must be the last statement")
                sc.binding = "return"
                values, exprs = [], []
                for e in st.values:  # `return grad(loss, [a, b])`: each gradient is one returned value
                    v = self.expr(sc, e)
                    parts = v if isinstance(v, tuple) else (v,)
                    values += parts
                    exprs += [e] * len(parts)
                sc.env["__returned__"] = exprs  # the expression each value comes from (targets name outputs)
                return tuple(values)
            elif isinstance(st, A.Minimize):
                if sc.kind != "step":
                    raise DslError("`minimize` is only allowed in a step", st.span,
                                   f"a {sc.kind} gives its result with `return`" if sc.kind in ("fn", "layer")
                                   else "move the loss into a `step`")
                if "__loss__" in sc.env:
                    raise DslError("a step has one `minimize`", st.span,
                                   "add the losses up in one: `minimize loss_a + loss_b`")
                sc.binding = "loss"
                sc.b.scope = "loss"
                sc.env["__loss__"] = (self.tensor(sc, self.expr(sc, st.value), st.value.span), st.value.span)
            elif isinstance(st, A.Metric):
                self.metric(sc, st)
            elif isinstance(st, A.Repeat):
                self.repeat(sc, st)
        return None

    def run_body(self, sc: Scope, d: A.Decl):
        """A declaration's body; a model declared with onnx() has the file's nodes for one."""
        if isinstance(d, A.OnnxModel):
            from .onnx_import import lower_onnx_call
            return lower_onnx_call(self, sc, d)
        return self.run_block(sc, d.body)

    def metric(self, sc: Scope, st: A.Metric) -> None:
        """`metric accuracy = ...`: a named scalar the step reports next to its loss."""
        if sc.kind != "step":
            raise DslError("`metric` is only allowed in a step", st.span,
                           "a step reports metrics next to its loss; elsewhere bind the value with `=`")
        metrics = sc.env.setdefault("__metrics__", {})
        if st.name in metrics or st.name == "loss":
            raise DslError(f"the step already reports `{st.name}`", st.span, "give each metric its own name")
        sc.binding = st.name
        sc.b.scope = f"metric.{st.name}"
        v = self.tensor(sc, self.expr(sc, st.value), st.value.span)
        if v.rank != 0 or v.dtype == "bool":
            raise DslTypeError(f"a metric is a number: a scalar, got {v.type}", st.value.span,
                               "average it, e.g. metric accuracy = mean(cast(argmax(p, axis=1) == label, f32))")
        metrics[st.name] = v
        sc.env[st.name] = v

    def bind(self, sc: Scope, targets: tuple[str, ...], value, span: Span) -> None:
        if len(targets) == 1:
            if isinstance(value, ModelResult):
                value = value.outputs[0] if len(value.outputs) == 1 else value
            if isinstance(value, tuple):
                value = value[0] if len(value) == 1 else value
            sc.env[targets[0]] = value
            return
        items = getattr(value, "all_outputs", value.outputs) if isinstance(value, ModelResult) else value
        if not isinstance(items, tuple) or len(items) != len(targets):
            hint = "one value binds to one name"
            if isinstance(value, ModelResult):
                outs = self.program.decls[value.model].outputs
                hint = f"{value.model}'s outputs are ({', '.join(outs)})"
            raise DslTypeError(f"cannot unpack {describe(value)} into {len(targets)} names", span, hint)
        for t, v in zip(targets, items):
            sc.env[t] = v

    def _scope_name(self, sc: Scope) -> str:
        return f"{sc.prefix}.{sc.binding}" if sc.prefix else sc.binding

    # ------------------------------------------------------------------ repeat -> Loop
    def repeat(self, sc: Scope, st: A.Repeat) -> None:
        ends = next((s for s in st.body if isinstance(s, (A.Return, A.Minimize))), None)
        if ends is not None:
            word = "return" if isinstance(ends, A.Return) else "minimize"
            raise DslError(f"`{word}` cannot be inside `repeat`", ends.span,
                           f"assign inside the loop, then `{word}` after it")
        count = self.expr(sc, st.count)
        if (isinstance(count, bool) or not isinstance(count, (int, Value)) or
                isinstance(count, Value) and (count.dtype != "i64" or count.rank != 0)):
            raise DslTypeError(f"repeat needs an integer count, got {describe(count)}", st.count.span,
                               "a number, or an i64 scalar input such as `steps: i64`")
        if isinstance(count, int) and count < 0:
            raise DslError(f"repeat needs a count of 0 or more, got {count}", st.count.span)
        if self.loops >= MAX_LOOP_NESTING:  # (also through calls): ONNX readers cap message depth
            raise DslError(f"`repeat` nested too deeply (limit {MAX_LOOP_NESTING})", st.span)
        self.loops += 1
        try:
            self._repeat_body(sc, st, count)
        finally:
            self.loops -= 1

    def _repeat_body(self, sc: Scope, st: A.Repeat, count) -> None:
        assigned = _assigned_names(st.body)
        # `t = 0` before the loop and `t = t + 1` in it: t is carried like a tensor. A float takes
        # the float dtype of the tensors the loop carries (f64 beside f64 tensors), else f32.
        floats = {v.dtype for n in assigned if isinstance(v := sc.env.get(n), Value) and v.type.is_float}
        float_dtype = floats.pop() if len(floats) == 1 else "f32"
        for n in assigned:
            if _is_number(sc.env.get(n)) or isinstance(sc.env.get(n), bool):
                sc.env[n] = _number_value(sc.b, sc.env[n], float_dtype)
        carried = [n for n in assigned if isinstance(sc.env.get(n), Value)]
        if not carried:
            raise DslError("this repeat changes no value defined before it", st.span,
                           "assign to a name bound before the loop, e.g. `image = step(image)`")
        body = Graph(f"repeat_{st.span.line}")
        bb = sc.b.child(body)
        bb.span = st.span
        iteration = bb.input(bb.fresh("iteration"), TensorType("i64", ()))
        cond_in = bb.input(bb.fresh("cond"), TensorType("bool", ()))
        env = dict(sc.env)
        for n in carried:
            env[n] = bb.input(bb.fresh(n), sc.env[n].type)
        env["__iteration__"] = iteration
        inner = Scope(bb, env, sc.prefix, sc.training, sc.kind, layer_counts=sc.layer_counts)
        self.run_block(inner, st.body)
        body.outputs = [bb.op("Identity", [cond_in])]
        for n in carried:
            out = inner.env[n]
            if (_is_number(out) or isinstance(out, bool)) and sc.env[n].rank == 0:  # `t = 5` in the body
                out = bb.const(np.asarray(out), sc.env[n].dtype)
            if not isinstance(out, Value) or out.type != sc.env[n].type:
                raise DslShapeError(f"repeat must keep the type of `{n}`: {sc.env[n].type} before, "
                                    f"{describe(out)} after one pass", _last_assign(st.body, n) or st.span,
                                    f"each pass starts from the `{n}` the previous one left, so its shape "
                                    f"cannot change")
            body.outputs.append(bb.op("Identity", [out]))
        b = sc.b
        b.span = st.span
        trip = count if isinstance(count, Value) else b.const(np.asarray(count, np.int64), "i64")
        outs = b.op("Loop", [trip, b.const(np.asarray(True), "bool")] + [sc.env[n] for n in carried],
                    {"body": body})
        outs = outs if isinstance(outs, tuple) else (outs,)
        for n, v in zip(carried, outs):
            sc.env[n] = v

    # ------------------------------------------------------------------ expressions
    def expr(self, sc: Scope, e: A.Expr):
        # How deep expressions nest comes from the user's text (and adds up through calls of
        # declarations): past a bound it is a located error rather than Python's RecursionError.
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise DslError(f"expression nested too deeply (limit {MAX_NESTING})", e.span,
                               "give inner parts names of their own: `t = ...` on a line before")
            return self._expr(sc, e)
        finally:
            self.depth -= 1

    def _expr(self, sc: Scope, e: A.Expr):
        sc.b.span = e.span
        if isinstance(e, A.Number):
            return e.value
        if isinstance(e, A.Bool):
            return e.value
        if isinstance(e, A.String):
            return e.value
        if isinstance(e, A.Name):
            return self.lookup(sc, e)
        if isinstance(e, A.ListExpr):
            return [self.expr(sc, x) for x in e.items]
        if isinstance(e, A.BinOp):
            return self.binop(sc, e)
        if isinstance(e, A.UnaryOp):
            return self.negate(sc, e)
        if isinstance(e, A.Call):
            return self.call(sc, e)
        if isinstance(e, A.Attr):
            return self.attr(sc, e)
        if isinstance(e, A.Index):
            from .indexing import index
            return index(self, sc, e)
        raise DslError(f"`{type(e).__name__}` is not allowed here", e.span)

    def lookup(self, sc: Scope, e: A.Name):
        if e.id in sc.env:
            return sc.env[e.id]
        if e.id in sc.env.get("__dims__", {}):  # a symbolic dim of an input, as a value: [N, 100]
            x, axis = sc.env["__dims__"][e.id]
            return sc.b.op("Gather", [sc.b.op("Shape", [x]), sc.b.const(axis, "i64")], {"axis": 0})
        if e.id in self.program.decls:
            return DeclRef(e.id)
        if e.id == "None":
            raise DslError("`None` adds an axis of size 1 inside brackets only", e.span,
                           "e.g. x[None] or x[:, None]")
        if e.id == "inf":  # -inf is its negation: masks such as where(causal, s, -inf)
            return math.inf
        if e.id in WORDS:
            return Symbol(e.id)
        from .builtins import BUILTINS
        if e.id in BUILTINS:
            raise DslNameError(f"`{e.id}` is a function: call it, e.g. `{e.id}(x)`", e.span)
        candidates = [k for k in sc.env if not k.startswith("__")] + list(self.program.decls) + list(WORDS)
        raise DslNameError(f"unknown name `{e.id}`", e.span, did_you_mean(e.id, candidates))

    def tensor(self, sc: Scope, v, span: Span, like: Value | None = None) -> Value:
        """`v` as an IR value; a literal takes `like`'s dtype (f32 without one)."""
        if isinstance(v, Value):
            return v
        if isinstance(v, ModelResult):
            if len(v.outputs) == 1:
                return v.outputs[0]
            outs = self.program.decls[v.model].outputs
            raise DslTypeError(f"expected one tensor, got the {len(outs)} outputs of {v.model}", span,
                               f"unpack them first (`{', '.join(outs)} = {v.model}(...)`) or pick one: "
                               f"`{v.model}(...).{outs[0]}`")
        if isinstance(v, (bool, int, float)):
            dtype = like.dtype if like is not None else ("bool" if isinstance(v, bool) else
                                                         "i64" if isinstance(v, int) else "f32")
            if isinstance(v, float) and not isinstance(v, bool) and dtype in ("i64", "i32"):
                raise DslTypeError(f"cannot combine the number {v} with an integer value {like.type}", span,
                                   "use cast(x, f32) first")
            sc.b.span = span
            return sc.b.const(np.asarray(v), dtype)
        if isinstance(v, list) and is_shape_list(v):
            return self.shape_vector(sc, v, span)
        if isinstance(v, list):
            _, dtype = _list_array(v, span)  # (checks it: numbers, rectangular)
            if like is not None and (like.type.is_float or like.dtype in ("i64", "i32") and dtype == "i64"):
                dtype = like.dtype  # [1, 2, 3] beside an f32 value is f32, as a number is
            sc.b.span = span
            return sc.b.const(v, dtype)  # (from the numbers as written: f32 ones keep their exact values)
        from .builtins import BUILTINS
        hint = (f"`{v.name}` is also a function: call it, e.g. `{v.name}(x)`"
                if isinstance(v, Symbol) and v.name in BUILTINS else None)
        if isinstance(v, DeclRef) and v.path:
            raise DslNameError(f"`{v.path}` is not a weight of this graph", span,
                               f"a model's weights exist once it is called here: call `{v.name}(...)` first")
        if isinstance(v, DeclRef):
            hint = f"call it: `{v.name}(...)`"
        raise DslTypeError(f"expected a tensor, got {describe(v)}", span, hint)

    def shape_vector(self, sc: Scope, items: list, span: Span) -> Value:
        """`[N, 100]`, `[2 * N, 12]`, `[x.shape[0], -1]`: a 1-D i64 shape computed at run time, whose
        symbolic contents the shape rules read."""
        b = sc.b
        parts = []
        for x in items:
            if isinstance(x, int) and not isinstance(x, bool):
                parts.append(b.ints([x]))
            elif isinstance(x, Value) and x.dtype == "i64" and x.rank == 0:
                parts.append(b.op("Unsqueeze", [x, b.ints([0])]))
            else:
                raise DslTypeError(f"a shape holds integers and dims, got {describe(x)} in it", span,
                                   "e.g. [N, 100] with N a dim of an input, or x.shape[0]")
        return b.op("Concat", parts, {"axis": 0}) if len(parts) > 1 else parts[0]

    def negate(self, sc: Scope, e: A.UnaryOp):
        # A run of `-` (its length is the user's) is walked in a loop, not by recursion.
        run = [e]
        while isinstance(run[-1].operand, A.UnaryOp):
            run.append(run[-1].operand)
        x = self.expr(sc, run[-1].operand)
        for u in reversed(run):
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                x = -x
            else:
                sc.b.span = u.span
                x = sc.b.op("Neg", [self.tensor(sc, x, u.operand.span)])
        return x

    def binop(self, sc: Scope, e: A.BinOp):
        # `a + b + ... + z` leans left: its spine is walked in a loop, so a chain of 10,000 terms
        # needs no deeper Python stack than one of two (frontend/depth.py counts it so).
        chain = [e]
        while isinstance(chain[-1].left, A.BinOp):
            chain.append(chain[-1].left)
        left = _single(self.expr(sc, chain[-1].left))
        for link in reversed(chain):
            right = _single(self.expr(sc, link.right))
            sc.b.span = link.span
            left = self._binop_values(sc, link, left, right)
        return left

    def _binop_values(self, sc: Scope, e: A.BinOp, left, right):
        if _is_number(left) and _is_number(right):
            return _fold(e.op, left, right, e.span)
        if e.op == "!=":
            return sc.b.op("Not", [self._binary(sc, "==", left, right, e)])
        return self._binary(sc, e.op, left, right, e)

    def _binary(self, sc: Scope, op: str, left, right, e: A.BinOp) -> Value:
        like = left if isinstance(left, Value) else right if isinstance(right, Value) else None
        a = self.tensor(sc, left, e.left.span, like)
        if op == "^" and right == 2:  # x^2: a multiply is cheaper and its gradient simpler
            sc.b.span = e.span
            return sc.b.op("Mul", [a, a])
        c = self.tensor(sc, right, e.right.span, like)
        sc.b.span = e.span
        if a.dtype != c.dtype and op != "^":  # (Pow takes an exponent of another dtype)
            # Quote the operand to convert (the integer one, as a float is what arithmetic wants).
            convert, other = (e.left, c) if not a.type.is_float else (e.right, a)
            text = source_text(convert.span) or "x"
            raise DslTypeError(f"`{op}` needs operands of one dtype, got {a.type} and {c.type}", e.span,
                               f"convert one of them, e.g. cast({text}, {other.dtype})")
        if op == "@" and (a.rank < 2 or c.rank < 2):
            raise DslShapeError(f"`@` needs values of rank 2 or more, got {a.type} @ {c.type}", e.span)
        return sc.b.op(BINARY_OPS[op], [a, c])

    def attr(self, sc: Scope, e: A.Attr):
        base = self.expr(sc, e.value)
        if isinstance(base, ModelResult):
            if e.name in base.bindings:
                return base.bindings[e.name]
            # Point at the name after the dot: it is the last thing the Attr spans.
            at = Span(e.span.file, e.span.end_line, e.span.end_col - len(e.name), e.span.end_line, e.span.end_col)
            names = [k for k in base.bindings if not k.startswith("__")]
            raise DslNameError(f"{base.model} has no binding `{e.name}`", at,
                               did_you_mean(e.name, names) or f"{base.model}'s bindings: {', '.join(names)}")
        if isinstance(base, Value) and e.name == "shape":  # x.shape[0]: the run-time shape, as i64
            return sc.b.op("Shape", [base])
        if isinstance(base, DeclRef):
            path = f"{base.path}.{e.name}" if base.path else f"{base.name}.{e.name}"
            if path in self.weights:
                return self.weights[path]
            return DeclRef(base.name, path)
        raise DslTypeError(f"`.{e.name}` needs a model call such as `ConvNet(x).{e.name}`, "
                           f"got {describe(base)}", e.span)

    # ------------------------------------------------------------------ calls
    def call(self, sc: Scope, e: A.Call):
        if not isinstance(e.func, A.Name):
            raise DslError("only named functions, layers and models can be called", e.func.span)
        name = e.func.id
        if name in sc.env:
            raise DslTypeError(f"`{name}` is a value ({describe(sc.env[name])}), not a function", e.func.span)
        if name in self.program.decls:
            return self.call_decl(sc, self.program.decls[name], e)
        from .builtins import BUILTINS, call_builtin
        if name in BUILTINS:
            return call_builtin(self, sc, name, e)
        candidates = list(BUILTINS) + list(self.program.decls)
        raise DslNameError(f"unknown function `{name}`", e.func.span, did_you_mean(name, candidates))

    def call_decl(self, sc: Scope, d: A.Decl, e: A.Call):
        if isinstance(d, A.Step):
            raise DslTypeError(f"`{d.name}` is a step; steps are compiled, not called", e.span)
        if isinstance(d, A.Train):
            raise DslTypeError(f"`{d.name}` is a train declaration; `dslc train` runs it", e.span)
        if d.name in self.call_stack:
            chain = self.call_stack[self.call_stack.index(d.name):] + [d.name]
            raise DslError(f"`{d.name}` calls itself ({' -> '.join(chain)}): recursion is not supported", e.span,
                           "to loop, use `repeat n { ... }`")
        kwargs = dict((k.name, k) for k in e.kwargs)
        training = sc.training
        if "training" in kwargs and isinstance(d, A.Model):
            training = self.expr(sc, kwargs.pop("training").value)
            if not isinstance(training, bool):
                raise DslTypeError("`training=` takes true or false", e.span)
        args = self.bind_args(sc, d, e, kwargs)
        if isinstance(d, A.Model):
            prefix, kind = d.name, "model"
        elif isinstance(d, A.Layer):
            if sc.kind not in ("model", "layer"):
                raise DslError(f"layer `{d.name}` has weights: call it inside a model", e.span,
                               f"a {sc.kind} can call models, whose weights it shares; it cannot own weights")
            prefix, kind = sc.weight_path(d.name), "layer"
        else:
            prefix, kind = sc.prefix, "fn"
        inner = Scope(sc.b, args, prefix, training, kind)
        self.call_stack.append(d.name)
        self.call_spans.append(e.span)
        saved_scope = sc.b.scope
        try:
            result = self.run_body(inner, d)
        finally:
            self.call_stack.pop()
            self.call_spans.pop()
            sc.b.scope = saved_scope
        if isinstance(d, A.OnnxModel):  # its first output where one tensor is wanted
            from .onnx_import import imported_result
            return imported_result(d, inner.env)
        if isinstance(d, A.Model):
            missing = [o for o in d.outputs if o not in inner.env]
            if missing:
                raise unbound_output(d, missing[0], inner.env)
            return ModelResult(d.name, tuple(inner.env[o] for o in d.outputs),
                               {k: v for k, v in inner.env.items() if not k.startswith("__")})
        if result is None:
            raise DslError(f"{kind} `{d.name}` ends without `return`", d.span)
        return result if len(result) > 1 else result[0]

    def bind_args(self, sc: Scope, d: A.Decl, e: A.Call, kwargs: dict) -> dict[str, object]:
        params = d.params
        if len(e.args) > len(params):
            raise DslTypeError(f"`{d.name}` takes {len(params)} argument{'s' * (len(params) != 1)}, "
                               f"got {len(e.args)}", e.args[len(params)].span,
                               f"{d.name}({', '.join(p.name for p in params)}) is declared at line {d.span.line}")
        env: dict[str, object] = {}
        dims: dict[str, object] = {}
        for i, p in enumerate(params):
            if i < len(e.args):
                arg_expr = e.args[i]
            elif p.name in kwargs:
                arg_expr = kwargs.pop(p.name).value
            elif p.default is not None:
                arg_expr = p.default
            else:
                raise DslTypeError(f"`{d.name}` is missing its argument `{p.name}`", e.span,
                                   f"{d.name}({', '.join(p.name for p in params)}) is declared at line {d.span.line}")
            value = self.expr(sc, arg_expr)
            if isinstance(value, ModelResult) and len(value.outputs) == 1:
                value = value.outputs[0]
            if p.type is not None:
                value = check_arg_type(p, value, arg_expr.span, dims, sc, self, owner=d.name)
                add_dims(env, p, value)
            env[p.name] = value
        if kwargs:
            k = next(iter(kwargs.values()))
            raise DslTypeError(f"`{d.name}` has no parameter `{k.name}`", k.span,
                               did_you_mean(k.name, [p.name for p in params]) or
                               f"{d.name}({', '.join(p.name for p in params)}) is declared at line {d.span.line}")
        return env

    # ------------------------------------------------------------------ optimizers
    def optimizer(self, sc: Scope, e: A.Expr) -> OptimizerSpec:
        """`adam(lr=0.001, beta1=0.5)`: options by name, each checked where it is written; `lr` may be
        a schedule such as `cosine_decay(0.001, decay_steps=1000)`."""
        from ..train.optimizers import OPTIMIZERS, options_of
        if not isinstance(e, A.Call) or not isinstance(e.func, A.Name):
            raise DslError("`using` needs an optimizer call such as `adam(lr=0.001)`", e.span)
        name = e.func.id
        if name not in OPTIMIZERS:
            raise DslNameError(f"unknown optimizer `{name}`", e.func.span, did_you_mean(name, OPTIMIZERS)
                               or f"optimizers: {', '.join(OPTIMIZERS)}")
        allowed = options_of(name)
        if e.args:
            raise DslTypeError(f"give {name}'s options by name, e.g. {name}(lr=0.001)", e.args[0].span)
        options = {k: default for k, (default, _) in allowed.items()}
        for k in e.kwargs:
            if k.name not in allowed:
                raise DslTypeError(f"{name} has no option `{k.name}`", k.span,
                                   did_you_mean(k.name, allowed) or f"{name}'s options: {', '.join(allowed)}")
            if k.name == "lr" and isinstance(k.value, A.Call):
                options["lr"] = self.schedule(sc, k.value)
                continue
            options[k.name] = _option_value(self.expr(sc, k.value), f"{name}'s `{k.name}`", allowed[k.name],
                                            k.value.span)
        return OptimizerSpec(name, options)

    def schedule(self, sc: Scope, e: A.Call):
        from ..train.schedules import SCHEDULES, Schedule
        name = e.func.id if isinstance(e.func, A.Name) else "?"
        if name not in SCHEDULES:
            raise DslNameError(f"unknown learning-rate schedule `{name}`", e.func.span,
                               did_you_mean(name, SCHEDULES) or f"schedules: {', '.join(SCHEDULES)}")
        params = SCHEDULES[name]
        names = [p for p, _, _ in params]
        given: dict[str, A.Expr] = {}
        if len(e.args) > len(params):
            raise DslTypeError(f"{name} takes at most {len(params)} arguments", e.args[len(params)].span)
        for p, a in zip(names, e.args):
            given[p] = a
        for k in e.kwargs:
            if k.name not in names:
                raise DslTypeError(f"{name} has no parameter `{k.name}`", k.span,
                                   did_you_mean(k.name, names) or f"{name}({', '.join(names)})")
            given[k.name] = k.value
        args = []
        for p, default, check in params:
            if p not in given:
                if default is None:
                    raise DslTypeError(f"{name} needs `{p}`", e.span, f"{name}({', '.join(names)})")
                args.append((p, default))
                continue
            args.append((p, _option_value(self.expr(sc, given[p]), f"{name}'s `{p}`", (default, check),
                                          given[p].span)))
        return Schedule(name, tuple(args))


def _option_value(v, what: str, spec: tuple, span: Span):
    """An optimizer or schedule option: a number (or true/false where the default is a bool), checked."""
    default, (ok, wants) = spec
    if isinstance(default, bool) != isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DslTypeError(f"{what} must be {wants}, got {describe(v)}", span)
    if not ok(v):
        raise DslError(f"{what} must be {wants}, got {v}", span)
    return v


def check_arg_type(p: A.Param, value, span: Span, dims: dict, sc: Scope, lw: Lowerer, owner: str = ""):
    """Check an argument against a declared parameter type, binding symbolic dims (N) as it goes.
    `owner` (the called declaration) names whose parameter it is in the messages."""
    t = p.type
    who = f"{owner}'s input `{p.name}`" if owner else f"`{p.name}`"
    if t.dtype in ("int", "float", "bool") and t.dims is None:
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: _is_number(v), "bool": lambda v: isinstance(v, bool)}[t.dtype]
        if not ok(value):
            who = f"{owner}'s parameter `{p.name}`" if owner else who
            got = value if _is_number(value) else describe(value)
            raise DslTypeError(f"{who} must be {'an' if t.dtype == 'int' else 'a'} {t.dtype}, got {got}", span)
        return value
    if t.dtype not in DTYPES:
        raise DslTypeError(f"unknown type `{t.dtype}`", t.span, did_you_mean(t.dtype, list(DTYPES) + ["int", "float"]))
    if _is_number(value) and not t.dims:  # a literal passed for a scalar tensor parameter
        return sc.b.const(np.asarray(value), t.dtype)
    if isinstance(value, list) and not is_shape_list(value):  # a list literal: a constant of the declared dtype
        _, dtype = _list_array(value, span)
        if dtype == "f32" and t.dtype not in ("f16", "f32", "f64", "bf16"):
            raise DslTypeError(f"{who} must be {type_str(t)}, got a list of floats", span)
        sc.b.span = span
        value = sc.b.const(value, t.dtype)
    if not isinstance(value, Value):
        raise DslTypeError(f"{who} must be {type_str(t)}, got {describe(value)}", span)
    want = t.dims or ()
    if value.dtype != t.dtype or value.rank != len(want):
        hint = (_reshape_hint(value, want, span) if value.dtype == t.dtype
                else f"convert it with cast({source_text(span) or 'x'}, {t.dtype})")
        raise DslTypeError(f"{who} must be {type_str(t)}, got {value.type}", span, hint)
    for w, got in zip(want, value.shape):
        if isinstance(w, int):
            if isinstance(got, int) and got != w:
                raise DslShapeError(f"{who} must be {type_str(t)}, got {value.type}", span)
        elif w in dims and dims[w] != got:
            raise DslShapeError(f"{who} must be {type_str(t)} with {w} = {dims[w]}, got {value.type}", span)
        else:
            dims[w] = got
    return value


def _reshape_hint(value: Value, want: tuple, span: Span) -> str | None:
    """When only the rank is off and the elements per batch row agree: say how to reshape."""
    if value.rank < 2 or len(want) < 2 or value.rank == len(want) or value.dtype == "bool":
        return None
    have, need = value.shape[1:], want[1:]
    if not all(isinstance(d, int) for d in (*have, *need)) or np.prod(have) != np.prod(need):
        return None
    text = source_text(span) or "x"
    if len(want) == 2:
        return f"flatten it first: flatten({text})"
    return f"reshape it first: reshape({text}, [-1, {', '.join(map(str, need))}])"


def add_dims(env: dict, p: A.Param, value) -> None:
    """Make the symbolic dims of a typed parameter (`N` of `x: f32[N, 784]`) usable as values in the body."""
    if isinstance(value, Value) and p.type is not None and p.type.dims:
        dims = env.setdefault("__dims__", {})
        for axis, d in enumerate(p.type.dims):
            if isinstance(d, str) and d not in dims:
                dims[d] = (value, axis)


def unbound_output(d: A.Model, name: str, env: dict) -> DslNameError:
    """`model M(...) -> name` whose body never assigns `name`: point at it after the arrow."""
    at = d.output_spans[d.outputs.index(name)] if d.output_spans else d.span
    bound = [k for k, v in env.items() if not k.startswith("__") and k not in (p.name for p in d.params)]
    return DslNameError(f"model {d.name} never binds its output `{name}`", at,
                        did_you_mean(name, bound) or f"assign it in the body: `{name} = ...`")


def type_str(t: A.TypeExpr) -> str:
    if t.dims is None:
        return t.dtype
    return f"{t.dtype}[{', '.join(str(d) for d in t.dims)}]"


def input_type(p: A.Param) -> TensorType:
    t = p.type
    if t is None:
        raise DslTypeError(f"input `{p.name}` needs a type to be compiled, e.g. `{p.name}: f32[N, 784]`", p.span)
    if t.dtype not in DTYPES:
        raise DslTypeError(f"unknown type `{t.dtype}` for input `{p.name}`", t.span,
                           did_you_mean(t.dtype, list(DTYPES)) or f"use one of {', '.join(DTYPES)}")
    return TensorType(t.dtype, tuple(t.dims or ()))


def _assigned_names(body) -> list[str]:
    out = []
    for st in body:
        if isinstance(st, A.Assign):
            out += [t for t in st.targets if t not in out]
        elif isinstance(st, A.Repeat):
            out += [t for t in _assigned_names(st.body) if t not in out]
    return out


def _single(v):
    """A call of a one-output model stands for that output in arithmetic."""
    return v.outputs[0] if isinstance(v, ModelResult) and len(v.outputs) == 1 else v


def _list_array(items: list, span: Span) -> tuple[np.ndarray, str]:
    """A list literal as a constant: numbers only, nested lists rectangular; f32 if any is a float."""
    flat = list(items)
    while any(isinstance(x, list) for x in flat):
        flat = [y for x in flat for y in (x if isinstance(x, list) else [x])]
    if not all(_is_number(x) for x in flat):
        bad = next(x for x in flat if not _is_number(x))
        raise DslTypeError(f"a list used as a tensor must hold numbers only, got {describe(bad)} in it", span,
                           "to join tensors, use concat(a, b, axis=...)" if isinstance(bad, Value) else None)
    dtype = "f32" if any(isinstance(x, float) for x in flat) else "i64"
    try:
        return np.asarray(items, dtype=DTYPES[dtype]), dtype
    except ValueError:
        raise DslTypeError("a nested list used as a tensor must be rectangular", span) from None


def _last_assign(body, name: str) -> Span | None:
    """The span of the last statement in `body` (or nested repeats) that assigns `name`."""
    found = None
    for st in body:
        if isinstance(st, A.Assign) and name in st.targets:
            found = st.span
        elif isinstance(st, A.Repeat):
            found = _last_assign(st.body, name) or found
    return found


def _number_value(b: Builder, v, float_dtype: str = "f32") -> Value:
    """A number as a scalar tensor: bool, i64 for an int, float_dtype for a float."""
    dtype = "bool" if isinstance(v, bool) else "i64" if isinstance(v, int) else float_dtype
    return b.const(np.asarray(v), dtype)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fold(op: str, a, b, span: Span):
    if op == "^" and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b >= 64:
        raise DslError(f"{a}^{b} does not fit in 64 bits", span)  # and Python would take long to compute it
    try:
        r = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
             "^": lambda: a ** b, "==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b,
             ">": lambda: a > b, "<=": lambda: a <= b, ">=": lambda: a >= b}[op]()
    except ZeroDivisionError:
        raise DslError("division by zero", span) from None
    except OverflowError:
        raise DslError(f"`{a} {op} {b}` is too large for a number", span) from None
    except KeyError:
        raise DslTypeError(f"`{op}` needs tensors, got two numbers", span) from None
    if isinstance(r, complex):  # (-8) ^ 0.5: NaN, as numpy (and ONNX Pow) give
        return float("nan")
    if isinstance(r, int) and not isinstance(r, bool) and not -2**63 <= r < 2**63:
        raise DslError(f"`{a} {op} {b}` does not fit in 64 bits", span)
    return r
