"""Source spans and the errors dslc reports to people.

Every user-facing problem is a `DslError` carrying a `Span`; `render()` prints
`FILE:LINE:COL: error: MESSAGE`, the source line and a caret, then an optional hint.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

# Source text of every file read, so an error can quote its line.
_SOURCES: dict[str, str] = {}


def register_source(path: str, text: str) -> None:
    _SOURCES[path] = text


def source_lines(file: str) -> list[str]:
    """The lines of a registered source as the parser counts them: split at '\n' only.
    (str.splitlines also splits at form feeds, U+2028 and others, and would quote the wrong line.)"""
    return [line.removesuffix("\r") for line in _SOURCES.get(file, "").split("\n")]


def _printable(line: str) -> str:
    # A form feed or U+2028 printed raw would break the quoted line; a space keeps the columns.
    return "".join(c if c.isprintable() or c == "\t" else " " for c in line)


@dataclass(frozen=True)
class Span:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def relative_to(self, root: str) -> str:
        """file:line:col with the file named relative to the folder `root` (the main source file's):
        what compiled outputs say, so that they hold no path of the compiling machine and the same
        source compiles to the same bytes in any folder. Without a root, or for `<string>`, as is."""
        if not root or self.file.startswith("<"):
            return str(self)
        name = os.path.relpath(os.path.abspath(self.file), root).replace(os.sep, "/")
        return f"{name}:{self.line}:{self.col}"


NO_SPAN = Span("<builtin>", 0, 0)


class DslError(Exception):
    """A problem in the user's input. `kind` is 'syntax', 'name', 'type', 'shape', ..."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def render(self) -> str:
        if self.span is None or self.span is NO_SPAN:
            out = f"error: {self.message}"
        else:
            out = f"{self.span}: error: {self.message}"
            lines = source_lines(self.span.file)
            if 0 < self.span.line <= len(lines):
                src = _printable(lines[self.span.line - 1])
                width = 1
                if self.span.end_line == self.span.line and self.span.end_col > self.span.col:
                    width = self.span.end_col - self.span.col
                out += f"\n    {src}\n    {' ' * (self.span.col - 1)}{'^' * width}"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        return out

    def __str__(self) -> str:
        return self.render()


class DslSyntaxError(DslError):
    kind = "syntax"


class DslNameError(DslError):
    kind = "name"


class DslTypeError(DslError):
    kind = "type"


class DslShapeError(DslError):
    kind = "shape"


def source_text(span: Span | None) -> str | None:
    """The source text a one-line span covers (to quote it in a hint), or None."""
    if span is None or span.line < 1 or span.end_line != span.line or span.end_col <= span.col:
        return None
    lines = source_lines(span.file)
    return lines[span.line - 1][span.col - 1:span.end_col - 1] if span.line <= len(lines) else None


def did_you_mean(name: str, candidates) -> str | None:
    """'did you mean `x`?' for the closest candidate, or None."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def format_bytes(n: float) -> str:
    """`2.0 GiB`: sizes in messages about memory and files."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n):,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
