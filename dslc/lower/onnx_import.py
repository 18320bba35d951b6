"""A call of a model declared with onnx(): every node of the file lowered to IR ops on the call's
arguments, its float initializers the model's weights (shared by all its calls).

Before a node is lowered it is folded where its inputs are known when compiling: constants
through onnx.reference (one node at a time, the file's opset), and the shape arithmetic that
exporters write (Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Equal/Where on shapes, ...)
through `onnx_symbolic.py`, whose dims may be symbols (N). A fully known result becomes a Constant; a
symbolic 1-D shape keeps its run-time computation and records its contents (`Value.sym`) for
the shape rules downstream (Reshape, Expand, ConstantOfShape need them).
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from ..diagnostics import DslError, Span
from ..ir.core import DTYPES, Value, dtype_of
from . import onnx_symbolic as S
from .onnx_ops import PASS, Ctx, lower, supported
from .values import LayerRecord, ModelResult

NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
              "Dropout"}
MAX_FOLD_ELEMENTS = 1 << 22  # a folded constant larger than this stays a computation


def lower_onnx_call(lw, sc, d) -> None:
    """Bind d's outputs (by their names in the language) in sc.env, its parameters being bound already."""
    imp = d.source
    f = imp.file
    b = sc.b
    call_span = b.span
    saved_scope = b.scope
    b.scope = d.name
    env: dict[str, Value | None] = {"": None}
    for name, param in imp.inputs.items():
        env[name] = sc.env[param]
    for node in f.nodes:
        label = f.node_label(node)
        b.span = call_span
        if node.domain not in ("", "ai.onnx") or (node.op_type not in PASS and node.op_type not in _handled()):
            op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise DslError(f"{f.shown}: {label}: dslc cannot import the op {op}", call_span,
                           f"supported ops: {', '.join(supported())}")
        before = len(lw.graph.params)
        try:
            _check_schema(f, node)
            ins = [_value(lw, b, d, env, name) if name else None for name in node.input]
            attrs = {a.name: _attribute(f, a, label, call_span) for a in node.attribute}
            outs = _fold(b, node, attrs, ins, f.opset)
            if outs is None:
                outs = lower(Ctx(b, node, attrs, f.opset), ins)
        except DslError as e:
            if e.message.startswith(f.shown):
                raise
            raise type(e)(f"{f.shown}: {label}: {e.message}", e.span or call_span, e.hint) from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as e:
            # a node the schema check let through but whose values make no sense (a damaged file)
            raise DslError(f"{f.shown}: {label}: cannot import it ({type(e).__name__}: {e})", call_span,
                           "is the file valid? onnx.checker.check_model(path, full_check=True) may say more") from None
        for name, v in zip(node.output, outs):
            if name:
                env[name] = v
        first = next((v for v in outs if v is not None), None)
        if first is not None and first.type.is_float and node.op_type not in ("Constant", "Identity"):
            n_params = sum(int(np.prod(p.value.shape)) for p in lw.graph.params[before:])
            lw.layers.append(LayerRecord(node.name or node.op_type, node.op_type, str(first.type), n_params))
    for name, out in imp.outputs.items():
        sc.env[out] = _value(lw, b, d, env, name)
    b.scope = saved_scope
    b.span = call_span


class ImportedResult(ModelResult):
    """A call of a model imported with onnx(): it stands for its first output wherever one tensor is
    wanted (`outputs` holds that one); every output unpacks (`a, b = Net(x)`, `all_outputs`) and is a
    binding by name (`Net(x).logits`)."""

    def __init__(self, model: str, all_outputs: tuple, bindings: dict):
        super().__init__(model, all_outputs[:1], bindings)
        self.all_outputs = all_outputs


def imported_result(d, env: dict) -> ImportedResult:
    return ImportedResult(d.name, tuple(env[o] for o in d.outputs), {o: env[o] for o in d.outputs})


def _handled():
    from .onnx_ops import HANDLERS
    return HANDLERS.keys() | {"Constant"}


def _value(lw, b, d, env: dict, name: str) -> Value:
    """A value of the graph; an initializer is made on first use: a weight (float) or a constant."""
    if name in env:
        return env[name]
    imp = d.source
    array = imp.file.initializers[name]
    if name in imp.weights:
        full = f"{d.name}.{imp.weights[name]}"
        if full not in lw.weights:
            lw.weights[full] = lw.root.param(full, array, trainable=imp.weights[name] not in imp.frozen)
        v = lw.weights[full]
    else:
        v = b.const(array, dtype_of(array))
    env[name] = v
    return v


ATTRIBUTE_TYPES = {onnx.defs.OpSchema.AttrType.FLOAT: onnx.AttributeProto.FLOAT,
                   onnx.defs.OpSchema.AttrType.INT: onnx.AttributeProto.INT,
                   onnx.defs.OpSchema.AttrType.STRING: onnx.AttributeProto.STRING,
                   onnx.defs.OpSchema.AttrType.TENSOR: onnx.AttributeProto.TENSOR,
                   onnx.defs.OpSchema.AttrType.FLOATS: onnx.AttributeProto.FLOATS,
                   onnx.defs.OpSchema.AttrType.INTS: onnx.AttributeProto.INTS,
                   onnx.defs.OpSchema.AttrType.STRINGS: onnx.AttributeProto.STRINGS}


def _check_schema(f, node) -> None:
    """The node against ONNX's own schema of its op at the file's opset: input and output counts,
    required attributes present, attributes of the declared types."""
    try:
        schema = onnx.defs.get_schema(node.op_type, f.opset, "")
    except Exception:  # noqa: BLE001 -- not a standard op at this opset: the caller's error names it
        raise DslError(f"{node.op_type} is not an op of opset {f.opset}") from None
    n_in, n_out = len(node.input), len(node.output)
    if not schema.min_input <= n_in <= schema.max_input:
        raise DslError(f"it has {n_in} inputs; {node.op_type} takes {schema.min_input} to {schema.max_input}")
    if not 1 <= n_out <= schema.max_output or n_out < schema.min_output:
        raise DslError(f"it has {n_out} outputs; {node.op_type} makes {schema.min_output} to {schema.max_output}")
    given = {a.name: a for a in node.attribute}
    for name, attr in schema.attributes.items():
        if attr.required and name not in given:
            raise DslError(f"it lacks the required attribute `{name}`")
        if name in given and attr.type in ATTRIBUTE_TYPES and given[name].type != ATTRIBUTE_TYPES[attr.type]:
            raise DslError(f"its attribute `{name}` has the wrong type")


def _attribute(f, a: onnx.AttributeProto, label: str, span: Span):
    if a.type == onnx.AttributeProto.TENSOR:
        return f.tensor(a.t, f"the `{a.name}` of {label}", span)
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise DslError(f"{f.shown}: {label}: subgraphs (If, Loop, Scan bodies) are not supported", span,
                       "export without data-dependent control flow")
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def _constant(attrs: dict) -> np.ndarray:
    for key, kind in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], kind) if kind else np.asarray(attrs[key])
    raise DslError(f"a Constant with {', '.join(attrs) or 'no value'} is not supported")


def _fold(b, node, attrs: dict, ins: list, opset: int) -> list[Value] | None:
    """The node's outputs as Constants when its inputs are all known; a symbolic shape result is
    lowered as usual and given its contents. None: lower the node as usual."""
    if node.op_type == "Constant":
        return [b.const(_constant(attrs), dtype_of(_constant(attrs)))]
    if node.op_type in NOT_FOLDED or not ins:
        return None
    known = [S.contents(v) for v in ins]
    if any(v is not None and k is None for v, k in zip(ins, known)):
        return None
    if node.op_type in GROWING and _grown_size(node.op_type, known, ins) > MAX_FOLD_ELEMENTS:
        return None  # lowered instead: its shape rule bounds it (a file's ConstantOfShape([1e6, 1e6]))
    if all(k is None or k.dtype != object for k in known):
        arrays = _run_reference(node, opset, ins, known)
        if arrays is not None:
            return [b.const(a, dtype_of(a)) if a is not None else None for a in _aligned(node, arrays)]
        # (onnx.reference fails on some: GatherElements over more than 64 values, in onnx 1.23)
    result = S.evaluate(node.op_type, attrs, known, ins)
    if result is None:
        return None
    array, dtype = result
    if array.dtype != object or not any(isinstance(x, str) for x in array.reshape(-1)):
        return [b.const(np.asarray(array.tolist(), DTYPES[dtype]).reshape(array.shape), dtype)]
    outs = lower(Ctx(b, node, attrs, opset), ins)
    if len(outs) == 1 and outs[0].dtype == "i64" and outs[0].rank <= 1 and outs[0].type.static():
        outs[0].sym = tuple(array.reshape(-1).tolist())
    return outs


# Ops whose output may be far larger than their inputs: their size is computed before folding.
GROWING = {"ConstantOfShape", "Expand", "Range", "Tile", "OneHot", "Resize", "Upsample", "Pad"}


def _grown_size(op: str, known: list, ins: list) -> float:
    try:
        if op == "ConstantOfShape":
            return float(np.prod([float(d) for d in np.asarray(known[0]).reshape(-1)]))
        if op == "Expand":
            shape = [int(d) for d in np.asarray(known[1]).reshape(-1)]
            return float(np.prod([float(d) for d in np.broadcast_shapes(np.shape(known[0]), tuple(shape))]))
        if op == "Range":
            start, limit, delta = (float(np.asarray(k).reshape(-1)[0]) for k in known[:3])
            return abs((limit - start) / delta) if delta else math.inf
        if op == "Tile":
            return float(np.size(known[0])) * float(np.prod([float(r) for r in np.asarray(known[1]).reshape(-1)]))
        if op == "OneHot":
            return float(np.size(known[0])) * float(np.asarray(known[1]).reshape(-1)[0])
    except (TypeError, ValueError):
        return math.inf
    return math.inf  # Resize, Upsample, Pad: never folded


def _aligned(node, arrays: list) -> list:
    made = iter(arrays)
    return [next(made) if o else None for o in node.output]


def _run_reference(node, opset: int, ins: list, known: list) -> list[np.ndarray] | None:
    """One node on constant inputs with onnx.reference (ONNX's own semantics at the file's opset)."""
    if sum(int(k.size) for k in known if k is not None) > MAX_FOLD_ELEMENTS:
        return None
    from onnx.reference import ReferenceEvaluator
    feeds = {name: np.asarray(k, DTYPES[v.dtype]) for name, v, k in zip(node.input, ins, known) if name}
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001 -- left to the lowering, which reports it with the shapes
        return None
    arrays = [np.asarray(r) for r in results]
    if any(a.dtype not in [np.dtype(t) for t in DTYPES.values()] or a.size > MAX_FOLD_ELEMENTS for a in arrays):
        return None
    if len(arrays) != len([o for o in node.output if o]):
        return None
    return arrays
