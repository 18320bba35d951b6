"""The IR: typed values, nodes named after ONNX ops, and graphs (builder.py makes them).

Op names and attributes are ONNX's own (opset 21), so emission is a direct translation; the
only IR-only op is `StopGradient` (emitted as Identity). Every value has a `TensorType`:
a dtype and a shape whose dims are ints or symbols (strings such as "N" or "2*N").
"""
from __future__ import annotations

import functools
import math
import re
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
    """The one spelling of a symbolic dim: its polynomial expanded, each product an integer
    coefficient and its symbols sorted, the products ordered by degree, then name, the constant
    last. "H*2-1" and "2*H-1" are "2*H-1"; "2*(2*(H+1))-1" and "4*((H+1))-1" are "4*H+3"; "N-N+3"
    is 3. ceil(...) and a quotient stay one symbol, their insides in normal form: "ceil((H)/2)"."""
    tokens = _DIM_TOKEN.findall(d.replace(" ", ""))
    if "".join(tokens) != d.replace(" ", ""):
        return d  # not an expression this parser knows: kept as written
    try:
        poly, rest = _sum(tokens, 0)
    except (IndexError, ValueError):
        return d
    return _render(poly) if rest == len(tokens) else d


def dims_differ(a: Dim, b: Dim) -> bool:
    """Whether two dims differ at every size their symbols can take (each at least 1): a - b has all
    its coefficients of one sign, e.g. 3*N against N, or N+1 against N. (N against M may be equal.)"""
    if isinstance(a, int) and isinstance(b, int):
        return a != b
    polys = []
    for d in (str(a), str(b)):
        tokens = _DIM_TOKEN.findall(d)
        if "".join(tokens) != d:  # a run-time value's name (x[0]): nothing is known of it
            return False
        try:
            poly, end = _sum(tokens, 0)
        except (IndexError, ValueError):
            return False
        if end != len(tokens):
            return False
        polys.append(poly)
    diff = _add(polys[0], polys[1], -1)
    return bool(diff) and (all(c > 0 for c in diff.values()) or all(c < 0 for c in diff.values()))


_DIM_TOKEN = re.compile(r"\d+|[A-Za-z_][A-Za-z0-9_]*|[-+*/(),]")
Poly = dict  # {sorted tuple of symbols: integer coefficient}; () is the constant


def _sum(tokens: list[str], i: int) -> tuple[Poly, int]:
    poly, i = _product(tokens, i)
    while i < len(tokens) and tokens[i] in "+-":
        sign = 1 if tokens[i] == "+" else -1
        term, i = _product(tokens, i + 1)
        poly = _add(poly, term, sign)
    return poly, i


def _product(tokens: list[str], i: int) -> tuple[Poly, int]:
    poly, i = _factor(tokens, i)
    while i < len(tokens) and tokens[i] in "*/":
        op = tokens[i]
        other, i = _factor(tokens, i + 1)
        if op == "*":
            poly = _mul(poly, other)
        elif list(other) == [()] and all(c % other[()] == 0 for c in poly.values()):
            poly = {k: c // other[()] for k, c in poly.items()}  # divides exactly: 2*(H+2) / 2 is H+2
        else:  # a quotient is one symbol of its own
            poly = {(f"({_render(poly)})/{_wrapped(other)}",): 1}
    return poly, i


def _factor(tokens: list[str], i: int) -> tuple[Poly, int]:
    t = tokens[i]
    if t == "-":
        poly, i = _factor(tokens, i + 1)
        return {k: -c for k, c in poly.items()}, i
    if t == "(":
        poly, i = _sum(tokens, i + 1)
        if tokens[i] != ")":
            raise ValueError(d)
        return poly, i + 1
    if t.isdigit():
        return ({(): int(t)} if int(t) else {}), i + 1
    if i + 1 < len(tokens) and tokens[i + 1] == "(":  # ceil(...), same_begin(..., ...): one symbol
        args, j = [], i + 1
        while tokens[j] in "(,":
            arg, j = _sum(tokens, j + 1)
            args.append(arg)
        if tokens[j] != ")":
            raise ValueError(t)
        if t in ("ceil", "floor") and len(args) == 1 and not any(a.startswith("(") for k in args[0] for a in k):
            return args[0], j + 1  # of a sum of integer products (no quotient left in it): itself
        return {(f"{t}({','.join(str(_render(a)) for a in args)})",): 1}, j + 1
    if t.isidentifier():
        return {(t,): 1}, i + 1
    raise ValueError(t)


def _add(p: Poly, q: Poly, sign: int = 1) -> Poly:
    out = dict(p)
    for k, c in q.items():
        out[k] = out.get(k, 0) + sign * c
    return {k: c for k, c in out.items() if c}


def _mul(p: Poly, q: Poly) -> Poly:
    out: Poly = {}
    for a, c in p.items():
        for b, e in q.items():
            k = tuple(sorted(a + b))
            out[k] = out.get(k, 0) + c * e
    return {k: c for k, c in out.items() if c}


def _wrapped(p: Poly) -> str:
    text = str(_render(p))
    return text if text.isidentifier() or text.isdigit() else f"({text})"


def _render(p: Poly) -> Dim:
    """A polynomial as text: factored where it is a monomial times linear factors in distinct
    symbols (N*(H-2)*(W-2), 2*(H+1): how shapes read), else expanded."""
    if not p:
        return 0
    if list(p) == [()]:
        return p[()]
    if len(p) > 1:
        factored = _factored(p)
        if factored is not None:
            return factored
    text = ""
    for k in sorted(p, key=lambda k: (-len(k), k)):
        c = p[k]
        body = "*".join(([str(abs(c))] if abs(c) != 1 or not k else []) + [_atom(s, len(k) + (abs(c) != 1))
                                                                          for s in k])
        text += ("-" if c < 0 else "+" if text else "") + body
    return text


def _atom(s: str, factors: int) -> str:
    return f"({s})" if s.startswith("(") and factors > 1 else s  # a quotient inside a product


def _factored(p: Poly) -> str | None:
    """g * m * (v1 + c1) * (v2 + c2) ... for p, or None: g the coefficients' gcd, m the symbols
    every product has, each v a symbol of degree one."""
    keys = list(p)
    common = [a for a in sorted(set(keys[0])) for _ in range(min(k.count(a) for k in keys))]
    g = math.gcd(*p.values())
    rest: Poly = {}
    for k, c in p.items():
        left = list(k)
        for a in common:
            left.remove(a)
        rest[tuple(left)] = c // g
    factors = []
    while list(rest) != [()]:
        for v in sorted({a for k in rest for a in k}):
            if any(k.count(v) > 1 for k in rest):
                continue
            with_v = {tuple(a for a in k if a != v): c for k, c in rest.items() if v in k}
            without = {k: c for k, c in rest.items() if v not in k}
            k0 = next(iter(with_v))
            ratio = without.get(k0, 0) // with_v[k0] if with_v[k0] else None
            if ratio and without == {k: c * ratio for k, c in with_v.items()}:
                factors.append(f"({v}{ratio:+d})")
                rest = with_v
                break
        else:
            return None
    if rest[()] < 0 or len(factors) + len(common) + (g != 1) < 2:
        return None  # a negative product, or one factor alone: the expanded sum reads as well
    return "*".join(([str(g)] if g != 1 else []) + common + factors)


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
