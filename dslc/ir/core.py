"""The IR: typed values, nodes named after ONNX ops, and graphs (builder.py makes them).

Op names and attributes are ONNX's own (opset 21), so emission is a direct translation; the
only IR-only op is `StopGradient` (emitted as Identity). Every value has a `TensorType`:
a dtype and a shape whose dims are ints or symbols (strings such as "N" or "2*N").
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..diagnostics import Span

Dim = int | str

# dslc dtype name -> numpy dtype; the ONNX enum lives in emit/.
DTYPES = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "i64": np.int64,
          "i32": np.int32, "u32": np.uint32, "u8": np.uint8, "bool": np.bool_}
FLOAT_DTYPES = ("f32", "f64", "f16")


def dtype_of(array: np.ndarray) -> str:
    for name, np_dtype in DTYPES.items():
        if array.dtype == np_dtype:
            return name
    raise TypeError(f"unsupported array dtype {array.dtype}")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):  # one spelling per dim, so that `2*H-1` and `H*2-1` are one size
        object.__setattr__(self, "shape", tuple(d if isinstance(d, int) else normal_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    return f"{_paren(a)}*{_paren(b)}"


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == b:
        return dim_mul(2, a)
    return _combine(a, b, 1)


def dim_sub(a: Dim, b: Dim) -> Dim:
    """a - b; symbolic terms cancel: (N-1) - (N-3) is 2, (N-k) + k is N."""
    return a - b if isinstance(a, int) and isinstance(b, int) else _combine(a, b, -1)


def dim_ceil_div(a: Dim, s: int) -> Dim:
    """ceil(a / s); a multiple of s divides exactly: ceil(H*2 / 2) is H."""
    if isinstance(a, int):
        return -(-a // s)
    if s == 1:
        return a
    terms, const = _terms(a)
    if terms == [(1, a)] and not const:  # one product term: drop a factor s at either end
        if a.endswith(f"*{s}"):
            return a[:-len(f"*{s}")]
        if a.startswith(f"{s}*"):
            return a[len(f"{s}*"):]
    return f"ceil(({a})/{s})"


def _combine(a: Dim, b: Dim, sign: int) -> Dim:
    terms_a, const_a = _terms(a)
    terms_b, const_b = _terms(b)
    terms = list(terms_a)
    for s, atom in terms_b:
        s *= sign
        if (-s, atom) in terms:
            terms.remove((-s, atom))
        else:
            terms.append((s, atom))
    const = const_a + sign * const_b
    if not terms:
        return const
    text = "".join(("-" if s < 0 else "+" if i else "") + atom for i, (s, atom) in enumerate(terms))
    return text + (f"{const:+d}" if const else "")


@functools.lru_cache(maxsize=4096)
def normal_dim(d: str) -> Dim:
    """The one spelling of a symbolic dim: a sum of products, each an integer coefficient first and
    its symbols sorted, like products merged, in the order they first appear: "H*2-1" and "2*H-1"
    are "2*H-1", "N*k+k*N" is "2*N*k", "N-N+3" is 3."""
    terms, const = _terms(d)
    coefficients: dict[tuple, int] = {}
    for sign, atom in terms:
        factors = dim_factors(atom)
        coefficient = sign
        for f in factors:
            coefficient *= f if isinstance(f, int) else 1
        key = tuple(sorted(f for f in factors if not isinstance(f, int)))
        coefficients[key] = coefficients.get(key, 0) + coefficient
    text = ""
    for symbols, c in coefficients.items():
        if c == 0:
            continue
        body = "*".join(symbols) if symbols else str(abs(c))
        if symbols and abs(c) != 1:
            body = f"{abs(c)}*{body}"
        text += ("-" if c < 0 else "+" if text else "") + body
    if not text:
        return const
    return text + (f"{const:+d}" if const else "")


def dim_factors(d: Dim) -> list:
    """A dim as the factors of its product: "n*49" -> ["n", 49]; a sum stays one factor."""
    if isinstance(d, int):
        return [d]
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(d):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in "+-":
            return [d]
        if depth == 0 and ch == "*":
            pieces.append(d[start:i])
            start = i + 1
    pieces.append(d[start:])
    return [int(p) if p.isdigit() else p for p in pieces]


def _terms(d: Dim) -> tuple[list[tuple[int, str]], int]:
    """A dim as signed atoms and a constant, split at the + and - outside parentheses:
    "N-k+2" -> ([(1, "N"), (-1, "k")], 2)."""
    if isinstance(d, int):
        return [], d
    terms, const, depth, start, sign = [], 0, 0, 0, 1
    for i, ch in enumerate(d + "+"):
        depth += (ch == "(") - (ch == ")")
        if ch in "+-" and depth == 0 and i > start:
            atom = d[start:i]
            if atom.isdigit():
                const += sign * int(atom)
            else:
                terms.append((sign, atom))
            sign, start = (1 if ch == "+" else -1), i + 1
        elif ch in "+-" and depth == 0 and i == start:
            sign, start = sign * (1 if ch == "+" else -1), i + 1
    return terms, const


def _paren(d: Dim) -> str:
    s = str(d)
    return f"({s})" if "+" in s or "-" in s else s


class ShapeIssue(Exception):
    """Raised by a shape rule; the Builder turns it into a located DslShapeError / DslTypeError."""

    def __init__(self, message: str, hint: str | None = None, kind: str = "shape"):
        super().__init__(message)
        self.message, self.hint, self.kind = message, hint, kind


class Value:
    """One tensor in a graph. `const` holds the data when known at compile time (small constants),
    `sym` the symbolic contents of a 1-D i64 shape tensor (from Shape, Constant, Concat, ...)."""

    __slots__ = ("name", "type", "producer", "const", "sym")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.const: np.ndarray | None = None
        self.sym: tuple[Dim, ...] | None = None

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def rank(self) -> int:
        return self.type.rank

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value | None]  # None: an omitted optional input
    outputs: list[Value]
    attrs: dict = field(default_factory=dict)  # ONNX attributes; a subgraph attribute holds a Graph
    span: Span | None = None
    name: str = ""

    def __repr__(self) -> str:
        ins = ", ".join(v.name if v else "_" for v in self.inputs)
        outs = ", ".join(v.name for v in self.outputs)
        return f"{outs} = {self.op}({ins}) {self.attrs or ''}"


@dataclass(eq=False)
class Param:
    """A weight (or a non-trainable state such as a batch-norm statistic) with its initial value."""
    value: Value
    init: np.ndarray
    trainable: bool = True


@dataclass(eq=False)
class Graph:
    name: str
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)  # emitted as initializers
    doc: str = ""
    # The main source file's folder: outputs name source files relative to it, never by absolute path
    source_root: str = ""
    params_are_inputs: bool = False  # also list the weights as inputs, so callers can feed their own
    # Inputs a caller may leave out (emitted as initializers of the same name): the random seed, the
    # step counter, optimizer state that starts at zero.
    input_defaults: dict[str, np.ndarray] = field(default_factory=dict)
    # Float32 constants as the source wrote them, before rounding (by output name), so that widening
    # to float64 gives lr=0.01 as the double 0.01, not as float32(0.01).
    exact: dict[str, np.ndarray] = field(default_factory=dict)

    def param_values(self) -> dict[str, Param]:
        return {p.value.name: p for p in self.params}
