"""An exported .onnx file, read and checked: the second frontend (the first reads .dsl text).

`read_onnx` returns an `OnnxFile`: the graph's inputs (dtype and dims, symbols kept), outputs,
initializers as numpy arrays and nodes in an order where every node comes after what it reads.
Everything a hostile or damaged file can do wrong is one DslError naming the file (and the node,
tensor or external-data file): a truncated or foreign file, dims past any device, a cycle, a name
read but never made, external data outside the project or shorter than it claims. The nodes'
meaning is the importer's (lower/onnx_import.py); this module only vouches for the file's form.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import numpy_helper

from ..diagnostics import DslError, Span, format_bytes
from ..fileio import check_regular, read_regular

MAX_ONNX_BYTES = 2**31 - 1  # protobuf's own cap on one message
MAX_EXTERNAL_BYTES = 2**34  # every external-data file of one model together
MAX_DIM = 2**31 - 1  # as a .dsl dim
MAX_TENSOR_ELEMENTS = 2**31  # one initializer or constant
MAX_NODES = 2**20

# ONNX element type -> dslc dtype (the ones the IR computes in)
ELEMENT_TYPES = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.FLOAT16: "f16",
                 onnx.TensorProto.INT64: "i64", onnx.TensorProto.INT32: "i32", onnx.TensorProto.UINT32: "u32",
                 onnx.TensorProto.UINT8: "u8", onnx.TensorProto.BOOL: "bool"}
# Integer types a constant may have in the file; it is widened to i64 (a shape, an index)
WIDENED = {onnx.TensorProto.INT8: np.int64, onnx.TensorProto.INT16: np.int64, onnx.TensorProto.UINT16: np.int64}


@dataclass
class OnnxFile:
    path: Path  # resolved
    shown: str  # as the source wrote it (messages name the file so)
    opset: int  # of the default domain
    inputs: list[tuple[str, str, tuple]]  # (name, dtype, dims: ints and symbols)
    outputs: list[str]
    initializers: dict[str, np.ndarray]
    nodes: list[onnx.NodeProto]  # in dependency order
    producer: str = ""
    roots: list[Path] = field(default_factory=list)

    def node_label(self, node: onnx.NodeProto) -> str:
        return f"node `{node.name}` ({node.op_type})" if node.name else f"a {node.op_type} node"

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> DslError:
        return DslError(f"{self.shown}: {message}", span, hint)

    def tensor(self, t: onnx.TensorProto, what: str, span: Span | None = None) -> np.ndarray:
        """A TensorProto (an initializer, a Constant's value) as an array, sizes checked first."""
        return _tensor(t, what, self.path, self.roots, self.shown, span, [0])


def read_onnx(path: Path, shown: str, roots: list[Path], span: Span | None = None) -> OnnxFile:
    """Read and check `path` (already confined to `roots` by the caller); `shown` names it in messages
    and `span` (the `onnx(...)` call) locates them."""
    def fail(message: str, hint: str | None = None) -> DslError:
        return DslError(f"{shown}: {message}", span, hint)

    try:
        data = read_regular(path, "ONNX file", limit=MAX_ONNX_BYTES)
    except DslError as e:
        raise DslError(e.message.replace(str(path), shown), span) from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001 -- protobuf's DecodeError, or RecursionError for a nesting bomb
        raise fail("not an ONNX file, or a damaged one (truncated?): protobuf cannot decode it",
                   "export it again, e.g. with torch.onnx.export") from None
    if not model.HasField("graph") or model.ir_version <= 0 or not model.graph.output:
        raise fail("not an ONNX model: it has no graph with outputs (is it truncated, or another kind of file?)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise fail("it imports no version of the standard ONNX operator set")
    newest = onnx.defs.onnx_opset_version()
    if not 11 <= opset <= newest:
        raise fail(f"opset {opset} is not supported: dslc imports opsets 11 to {newest}",
                   "export with opset_version=17 (torch.onnx.export) or convert it with onnx.version_converter")
    g = model.graph
    if len(g.node) > MAX_NODES:
        raise fail(f"it has {len(g.node):,} nodes, more than the {MAX_NODES:,} dslc imports")
    if g.sparse_initializer:
        raise fail("sparse initializers are not supported", "export with dense weights")
    external = [0]
    inits = {}
    for t in g.initializer:
        if t.name in inits:
            raise fail(f"the initializer `{t.name}` is defined twice")
        inits[t.name] = _tensor(t, f"initializer `{t.name}`", path, roots, shown, span, external)
    inputs = []
    for i, v in enumerate(g.input):
        if v.name in inits:  # (IR < 4 files list their initializers among the inputs too)
            continue
        inputs.append((v.name, *_input_type(v, i, fail)))
    defined = set(inits) | {name for name, _, _ in inputs} | {""}
    nodes = _ordered(list(g.node), defined, fail)
    made = defined | {o for n in nodes for o in n.output}
    for o in g.output:
        if o.name not in made:
            raise fail(f"the graph output `{o.name}` is made by no node", "the file is damaged")
    return OnnxFile(Path(path), shown, opset, inputs, [o.name for o in g.output], inits, nodes,
                    f"{model.producer_name} {model.producer_version}".strip(), list(roots))


def _input_type(v: onnx.ValueInfoProto, index: int, fail) -> tuple[str, tuple]:
    t = v.type.tensor_type if v.type.HasField("tensor_type") else None
    if t is None:
        raise fail(f"the graph input `{v.name}` is not a tensor", "dslc imports graphs of tensors")
    if t.elem_type not in ELEMENT_TYPES:
        name = onnx.TensorProto.DataType.Name(t.elem_type) if t.elem_type in onnx.TensorProto.DataType.values() \
            else str(t.elem_type)
        raise fail(f"the graph input `{v.name}` has element type {name}, which dslc does not compute in",
                   f"dslc's types: {', '.join(sorted(set(ELEMENT_TYPES.values())))}")
    if not t.HasField("shape"):
        raise fail(f"the graph input `{v.name}` has no declared shape", "export with a shape for every input")
    dims = []
    for axis, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            if not 1 <= d.dim_value <= MAX_DIM:
                raise fail(f"the graph input `{v.name}` declares dim {d.dim_value:,} on axis {axis}: "
                           f"dims must be from 1 to {MAX_DIM:,}")
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(symbol_name(d.dim_param))
        else:  # unknown: a fresh symbol of its own
            dims.append(symbol_name(f"{v.name}_{axis}"))
    return ELEMENT_TYPES[t.elem_type], tuple(dims)


def symbol_name(text: str) -> str:
    """A dim_param as a symbolic dim of the language: an identifier ("batch size" -> batch_size)."""
    name = re.sub(r"\W", "_", text)
    return name if name and not name[0].isdigit() else f"d_{name}"


def _ordered(nodes: list, defined: set, fail) -> list:
    """The nodes in an order where each comes after the nodes whose outputs it reads (ONNX asks files
    to be sorted so; not every writer does). A name read but made by nobody, made twice, or a cycle
    is an error naming the nodes."""
    def label(n):
        return f"node `{n.name}` ({n.op_type})" if n.name else f"a {n.op_type} node (#{nodes.index(n)})"

    producer = {}
    for n in nodes:
        for o in n.output:
            if not o:
                continue
            if o in producer or o in defined:
                raise fail(f"`{o}` is made twice (by {label(n)} and before it)", "the file is damaged")
            producer[o] = n
    for n in nodes:
        for i in n.input:
            if i not in defined and i not in producer:
                raise fail(f"{label(n)} reads `{i}`, which no node, input or initializer makes",
                           "the file is damaged, or it reads a value of an enclosing graph")
    seen = set(defined)
    in_order = True
    for n in nodes:  # the file's own order, when it is valid (ONNX asks writers for one)
        if any(i not in seen for i in n.input):
            in_order = False
            break
        seen.update(n.output)
    if in_order:
        return nodes
    waiting = {id(n): sum(1 for i in set(n.input) if i in producer) for n in nodes}
    readers: dict[str, list] = {}
    for n in nodes:
        for i in set(n.input):
            if i in producer:
                readers.setdefault(i, []).append(n)
    ready = [n for n in reversed(nodes) if waiting[id(n)] == 0]
    order = []
    while ready:
        n = ready.pop()
        order.append(n)
        for o in n.output:
            for r in readers.get(o, ()):
                waiting[id(r)] -= 1
                if waiting[id(r)] == 0:
                    ready.append(r)
    if len(order) != len(nodes):
        stuck = [n for n in nodes if waiting[id(n)] > 0]
        shown = ", ".join(label(n) for n in stuck[:4]) + (f" and {len(stuck) - 4} more" if len(stuck) > 4 else "")
        raise fail(f"the graph has a cycle: {shown} wait on each other's outputs",
                   "a graph's nodes must form a DAG; the file is damaged")
    return order


def _tensor(t: onnx.TensorProto, what: str, path: Path, roots: list[Path], shown: str, span, external: list) \
        -> np.ndarray:
    def fail(message, hint=None):
        return DslError(f"{shown}: {message}", span, hint)

    if t.data_type not in ELEMENT_TYPES and t.data_type not in WIDENED:
        name = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type in onnx.TensorProto.DataType.values() \
            else str(t.data_type)
        raise fail(f"{what} has element type {name}, which dslc does not compute in")
    dims = list(t.dims)
    if any(d < 0 or d > MAX_DIM for d in dims):
        raise fail(f"{what} declares dims [{', '.join(map(str, dims))}]: each must be from 0 to {MAX_DIM:,}")
    n = int(np.prod(dims, dtype=object)) if dims else 1
    if n > MAX_TENSOR_ELEMENTS:
        raise fail(f"{what} declares dims [{', '.join(map(str, dims))}], {n:,} numbers: more than any "
                   f"device holds")
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    if t.data_location == onnx.TensorProto.EXTERNAL:
        t = _with_external(t, what, path, roots, n * itemsize, shown, span, external)
    elif t.HasField("raw_data") and len(t.raw_data) != n * itemsize:
        raise fail(f"{what} declares {n:,} numbers ({n * itemsize:,} bytes) but holds {len(t.raw_data):,} bytes",
                   "the file is damaged")
    elif not t.HasField("raw_data"):
        held = max(len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.double_data), len(t.uint64_data))
        if held != n:
            raise fail(f"{what} declares {n:,} numbers but holds {held:,}", "the file is damaged")
    try:
        array = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 -- whatever the converter objects to
        raise fail(f"{what} cannot be read: {e}") from None
    if t.data_type in WIDENED:
        array = array.astype(WIDENED[t.data_type])
    return array


def _with_external(t: onnx.TensorProto, what: str, path: Path, roots: list[Path], nbytes: int, shown: str, span,
                   external: list) -> onnx.TensorProto:
    """A copy of t with its bytes read from its external-data file: a relative path with no `..`,
    inside the project once symlinks are followed, a regular file, the range inside it."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")

    def fail(message, hint=None):
        return DslError(f"{shown}: {what} keeps its data in \"{loc}\": {message}", span, hint)

    confined = "external data must be a relative path inside the model's folder, within the project"
    if not loc or "\0" in loc:
        raise fail("not a file name")
    if (PurePosixPath(loc).is_absolute() or PureWindowsPath(loc).is_absolute() or loc.startswith("~")
            or ".." in PurePosixPath(loc.replace("\\", "/")).parts):
        raise fail("an absolute path or one that climbs out with `..`", confined)
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", nbytes))
    except ValueError:
        raise fail("its offset or length is not a number") from None
    target = (path.parent / loc)
    try:
        resolved = target.resolve()
    except OSError as e:
        raise fail((e.strerror or str(e)).lower()) from None
    if not any(resolved.is_relative_to(r) for r in roots):
        raise fail("it is outside the project (a symlink out?)", confined)
    try:
        check_regular(resolved, "external data")
    except DslError as e:
        raise fail(e.message.rsplit(": ", 1)[-1]) from None
    size = os.stat(resolved).st_size
    if length != nbytes:
        raise fail(f"it says {length:,} bytes, the tensor needs {nbytes:,}", "the file is damaged")
    if offset < 0 or offset + length > size:
        raise fail(f"bytes {offset:,} to {offset + length:,} are past its end ({size:,} bytes)",
                   "the data file is truncated or is not this model's")
    external[0] += length
    if external[0] > MAX_EXTERNAL_BYTES:
        raise fail(f"the model's external data passes {format_bytes(MAX_EXTERNAL_BYTES)}")
    with open(resolved, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    copy = onnx.TensorProto()
    copy.CopyFrom(t)
    del copy.external_data[:]
    copy.data_location = onnx.TensorProto.DEFAULT
    copy.raw_data = raw
    return copy
