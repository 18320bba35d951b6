"""The dslc AST: frozen dataclasses, every node with the span it came from.

Pipes are desugared by the parser: `x |> f(a)` becomes `Call(f, [x, a])`, `x |> f` becomes `Call(f, [x])`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import Span


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Expr:
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Name(Expr):
    id: str = ""


@dataclass(frozen=True)
class Number(Expr):
    value: int | float = 0


@dataclass(frozen=True)
class Bool(Expr):
    value: bool = False


@dataclass(frozen=True)
class String(Expr):
    value: str = ""


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class Keyword:
    name: str
    value: Expr
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Call(Expr):
    func: Expr = None  # a Name, or an Attr (`ConvNet.conv1` is not callable, but kept general)
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()


@dataclass(frozen=True)
class Attr(Expr):
    value: Expr = None
    name: str = ""


@dataclass(frozen=True)
class SliceExpr(Expr):
    """`lo:hi:step` inside brackets; any part may be None."""
    lo: Expr | None = None
    hi: Expr | None = None
    step: Expr | None = None


@dataclass(frozen=True)
class EllipsisExpr(Expr):
    pass


@dataclass(frozen=True)
class Index(Expr):
    value: Expr = None
    items: tuple[Expr, ...] = ()  # each an Expr, SliceExpr or EllipsisExpr


@dataclass(frozen=True)
class BinOp(Expr):
    op: str = ""  # + - * / ^ @ == != < <= > >=
    left: Expr = None
    right: Expr = None


@dataclass(frozen=True)
class UnaryOp(Expr):
    op: str = ""  # '-' or 'not'
    operand: Expr = None


# ---------------------------------------------------------------- statements
@dataclass(frozen=True)
class Stmt:
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Assign(Stmt):
    targets: tuple[str, ...] = ()
    value: Expr = None


@dataclass(frozen=True)
class Return(Stmt):
    values: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class Minimize(Stmt):
    value: Expr = None


@dataclass(frozen=True)
class Metric(Stmt):
    name: str = ""
    value: Expr = None


@dataclass(frozen=True)
class Repeat(Stmt):
    count: Expr = None
    body: tuple[Stmt, ...] = ()


# ---------------------------------------------------------------- declarations
@dataclass(frozen=True)
class TypeExpr:
    """`f32[N, 1, 28, 28]`, `i64` (a scalar), or a hyperparameter kind `int` / `float`."""
    dtype: str
    dims: tuple[int | str, ...] | None  # None: no brackets (a scalar, or int/float hyperparameter)
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Param:
    name: str
    type: TypeExpr | None
    default: Expr | None
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Decl:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span = field(compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)  # the name after the keyword


@dataclass(frozen=True)
class Model(Decl):
    outputs: tuple[str, ...] = ()
    output_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class OnnxModel(Model):
    """`model Backbone = onnx("file.onnx", frozen=true)`: an exported ONNX graph as a model. The parser
    leaves params and outputs empty; the program loader reads the file (frontend/onnx_file.py) and
    fills them in from its inputs and outputs, with the file and its names in `source`."""
    path: str = ""
    options: tuple[Keyword, ...] = ()
    path_span: Span | None = field(default=None, compare=False, repr=False)
    source: object = field(default=None, compare=False, repr=False)  # a lower/onnx_decl.Imported once loaded


@dataclass(frozen=True)
class Layer(Decl):
    pass


@dataclass(frozen=True)
class Fn(Decl):
    pass


@dataclass(frozen=True)
class Step(Decl):
    updates: tuple[str, ...] = ()
    optimizer: Call | None = None
    update_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Train(Decl):
    """`train NAME { key = expr ... }`: what `dslc train` runs (read by train/plan.py)."""


@dataclass(frozen=True)
class Import:
    path: str
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Module:
    file: str
    imports: tuple[Import, ...]
    decls: tuple[Decl, ...]
