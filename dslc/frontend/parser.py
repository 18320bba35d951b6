"""Text -> AST: lark parses with `grammar/dslc.lark`, a Transformer builds the dataclass AST.

Syntax errors become `DslSyntaxError` with the file, line and column and what was expected.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Transformer_NonRecursive, v_args

from ..fileio import read_regular
from ..diagnostics import DslError, DslNameError, DslSyntaxError, DslTypeError, Span, register_source
from . import ast as A
from .depth import check_depth
from .parser_cache import load_or_build
from .syntax_errors import syntax_error


def _grammar_text() -> str:
    # Installed: the grammar ships as package data (dslc/grammar/); in a checkout it is at the top.
    packaged = resources.files("dslc").joinpath("grammar", "dslc.lark")
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "grammar" / "dslc.lark").read_text()


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    # Never lark's cache=True: it unpickles a file at a predictable path in the shared temp dir,
    # which another local user can plant. parser_cache keeps one in a verified per-user folder.
    grammar = _grammar_text()
    key = hashlib.sha256(grammar.encode()).hexdigest()[:16]
    return load_or_build(key, lambda: lark.Lark(grammar, parser="lalr", propagate_positions=True,
                                                 maybe_placeholders=True))


@functools.lru_cache(maxsize=1)
def _literals() -> dict[str, str]:
    """Terminal name -> its text, for the terminals that are plain strings ('->', 'model')."""
    return {t.name: t.pattern.value for t in _parser().terminals if t.pattern.type == "str"}


def parse(text: str, file: str = "<string>") -> A.Module:
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as some editors write
    register_source(file, text)
    try:
        tree = _parser().parse(text)
    except lark.UnexpectedInput as e:
        raise syntax_error(e, text, file, _literals()) from None
    try:
        # Non-recursive: `x + x + ... + x` with 10,000 terms is a tree 10,000 deep.
        module = _ToAst(file).transform(tree)
    except lark.exceptions.VisitError as e:  # a DslSyntaxError raised inside the Transformer
        if isinstance(e.orig_exc, DslError):
            raise e.orig_exc from None
        raise
    check_depth(module)
    return module


def parse_file(path: str | Path) -> A.Module:
    path = Path(path)
    data = read_regular(path, "source file", limit=MAX_SOURCE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data, e) from None
    return parse(text, str(path))


def _not_utf8(path: Path, data: bytes, e: UnicodeDecodeError) -> DslSyntaxError:
    """Located as the parser locates: the line, and the column in characters (the bytes before the
    bad one on its line are valid UTF-8), with the line shown as far as it decodes."""
    start = data.rfind(b"\n", 0, e.start) + 1
    line = data.count(b"\n", 0, e.start) + 1
    before = data[start:e.start].decode("utf-8").removeprefix("\ufeff" if start == 0 else "")
    register_source(str(path), data.decode("utf-8", "replace").removeprefix("\ufeff"))
    return DslSyntaxError(f"the file is not UTF-8 text: invalid byte 0x{data[e.start]:02x}",
                          Span(str(path), line, len(before) + 1), "save the file as UTF-8")


MAX_SOURCE_BYTES = 64 << 20  # a .dsl file is text a person wrote; more is a wrong file


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _span(self, meta) -> Span:
        if getattr(meta, "empty", False) or not hasattr(meta, "line"):
            return Span(self.file, 0, 0)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def _unique(self, tokens, what: str) -> None:
        """Names listed together (outputs, `a, b = ...`) must differ: a repeat is a typo."""
        seen = set()
        for t in tokens:
            if str(t) in seen:
                raise DslNameError(f"{what} `{t}` is listed twice", self._tok_span(t))
            seen.add(str(t))

    # ---- declarations
    def start(self, meta, items):
        imports = tuple(i for i in items if isinstance(i, A.Import))
        decls = tuple(i for i in items if isinstance(i, A.Decl))
        return A.Module(self.file, imports, decls)

    def import_(self, meta, c):
        return A.Import(str(c[0])[1:-1], self._span(meta))

    def model(self, meta, c):
        name, params, outputs, body = c
        self._unique(outputs, "output")
        return A.Model(str(name), params or (), body, self._span(meta), self._tok_span(name),
                       outputs=tuple(str(t) for t in outputs),
                       output_spans=tuple(self._tok_span(t) for t in outputs))

    def onnx_model(self, meta, c):
        name, func, args = c
        value = self.call(meta, [A.Name(self._tok_span(func), str(func)), args])
        if str(func) != "onnx":
            raise DslSyntaxError("`model NAME = ...` takes an imported file: onnx(\"file.onnx\")", value.func.span,
                                 "declare a model of the language with `model NAME(inputs) -> outputs { ... }`")
        if len(value.args) != 1 or not isinstance(value.args[0], A.String):
            at = value.args[1].span if len(value.args) > 1 else value.span
            raise DslSyntaxError("onnx() takes one path, a string: onnx(\"file.onnx\")", at,
                                 "options go by name: onnx(\"file.onnx\", frozen=true)")
        return A.OnnxModel(str(name), (), (), self._span(meta), self._tok_span(name),
                           path=value.args[0].value, options=value.kwargs, path_span=value.args[0].span)

    def outputs(self, meta, c):
        return tuple(c)  # the NAME tokens: model() keeps their spans

    def layer(self, meta, c):
        name, params, body = c
        return A.Layer(str(name), params or (), body, self._span(meta), self._tok_span(name))

    def fn(self, meta, c):
        name, params, body = c
        return A.Fn(str(name), params or (), body, self._span(meta), self._tok_span(name))

    def step(self, meta, c):
        name, params, updates, opt, body = c
        return A.Step(str(name), params or (), body, self._span(meta), self._tok_span(name),
                      updates=tuple(str(t) for t in updates), optimizer=opt,
                      update_spans=tuple(self._tok_span(t) for t in updates))

    def train(self, meta, c):
        name, body = c
        return A.Train(str(name), (), body, self._span(meta), self._tok_span(name))

    def updates(self, meta, c):
        return tuple(c)  # the NAME tokens: step() keeps their spans

    def params(self, meta, c):
        params = tuple(p for p in c if p is not None)
        seen = set()
        for p in params:
            if p.name in seen:
                raise DslNameError(f"parameter `{p.name}` is declared twice", p.span)
            seen.add(p.name)
        return params

    def param(self, meta, c):
        name, type_, default = c
        return A.Param(str(name), type_, default, self._tok_span(name))

    def type(self, meta, c):
        name, *dims = c
        if len(dims) == 1 and dims[0] is None:  # `f32` without brackets
            return A.TypeExpr(str(name), None, self._span(meta))
        return A.TypeExpr(str(name), tuple(d for d in dims if d is not None), self._span(meta))

    def dim(self, meta, c):
        t = c[0]
        if t.type == "INT" and (len(t) > 10 or not 1 <= int(t) < 2**31):
            raise DslTypeError(f"a dim must be from 1 to {2**31 - 1}, got {t}", self._tok_span(t))
        return int(t) if t.type == "INT" else str(t)

    def block(self, meta, c):
        return tuple(c)

    # ---- statements
    def assign(self, meta, c):
        *targets, value = c
        self._unique(targets, "name")
        return A.Assign(self._span(meta), tuple(str(t) for t in targets), value)

    def return_(self, meta, c):
        return A.Return(self._span(meta), tuple(c))

    def minimize(self, meta, c):
        return A.Minimize(self._span(meta), c[0])

    def metric(self, meta, c):
        return A.Metric(self._span(meta), str(c[0]), c[1])

    def repeat(self, meta, c):
        return A.Repeat(self._span(meta), c[0], c[1])

    # ---- expressions
    def pipe(self, meta, c):
        # The call takes the span of the stage after `|>`, so that an error in `a |> f |> g` points at
        # the stage that failed rather than at the whole chain.
        left, target = c
        if isinstance(target, A.Call):
            return A.Call(target.span, target.func, (left,) + target.args, target.kwargs)
        if isinstance(target, (A.Name, A.Attr)):
            return A.Call(target.span, target, (left,), ())
        raise DslSyntaxError("the right side of `|>` must be a function or a call", target.span,
                             "write `x |> relu` or `x |> dense(10)`")

    def compare(self, meta, c):
        return A.BinOp(self._span(meta), str(c[1]), c[0], c[2])

    def binop(self, meta, c):
        return A.BinOp(self._span(meta), str(c[1]), c[0], c[2])

    def pow(self, meta, c):
        return A.BinOp(self._span(meta), "^", c[0], c[1])

    def neg(self, meta, c):
        if isinstance(c[0], A.Number):  # fold `-2` into a literal
            return A.Number(self._span(meta), -c[0].value)
        return A.UnaryOp(self._span(meta), "-", c[0])

    def call(self, meta, c):
        func, args = c
        pos, kws = [], []
        for a in (args or ()):
            if isinstance(a, A.Keyword):
                kws.append(a)
            elif kws:
                raise DslSyntaxError("a positional argument cannot follow a keyword argument", a.span,
                                     "put the positional arguments first, then the `name=value` ones")
            else:
                pos.append(a)
        names = [k.name for k in kws]
        for k in kws:
            if names.count(k.name) > 1:
                raise DslSyntaxError(f"keyword argument `{k.name}` given twice", k.span)
        return A.Call(self._span(meta), func, tuple(pos), tuple(kws))

    def args(self, meta, c):
        return [a for a in c if a is not None]

    def kwarg(self, meta, c):
        return A.Keyword(str(c[0]), c[1], self._tok_span(c[0]))

    def attr(self, meta, c):
        return A.Attr(self._span(meta), c[0], str(c[1]))

    def index(self, meta, c):
        return A.Index(self._span(meta), c[0], tuple(c[1:]))

    def slice(self, meta, c):
        lo, hi, step = (c + [None, None, None])[:3]
        return A.SliceExpr(self._span(meta), lo, hi, step)

    def ellipsis(self, meta, c):
        return A.EllipsisExpr(self._span(meta))

    def name(self, meta, c):
        return A.Name(self._span(meta), str(c[0]))

    def int(self, meta, c):
        if len(c[0]) > 19 or int(c[0]) >= 2**63:  # every integer becomes an i64 somewhere
            raise DslSyntaxError(f"the integer {c[0]} is too large (at most {2**63 - 1})", self._span(meta))
        return A.Number(self._span(meta), int(c[0]))

    def float(self, meta, c):
        return A.Number(self._span(meta), float(c[0]))

    def true(self, meta, c):
        return A.Bool(self._span(meta), True)

    def false(self, meta, c):
        return A.Bool(self._span(meta), False)

    def string(self, meta, c):
        return A.String(self._span(meta), str(c[0])[1:-1])

    def list(self, meta, c):
        return A.ListExpr(self._span(meta), tuple(x for x in c if x is not None))
