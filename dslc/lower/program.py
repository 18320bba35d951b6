"""A program: the parsed file and its imports, with one table of declarations by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..diagnostics import DslError, DslNameError
from ..frontend import ast as A
from ..frontend.parser import parse, parse_file


@dataclass
class Program:
    file: str
    decls: dict[str, A.Decl] = field(default_factory=dict)
    # Declarations of the file itself (not its imports): what `dslc compile` emits by default.
    own: list[str] = field(default_factory=list)

    def trainings(self) -> list[str]:
        """The file's own `train` declarations, in source order (`dslc train` runs the first by default)."""
        return [n for n in self.own if isinstance(self.decls[n], A.Train)]

    def targets(self) -> list[str]:
        """Declarations that compile to a graph of their own: models, steps, and fns whose parameters
        all have tensor types (an `int` or `float` hyperparameter makes a fn a helper)."""
        out = []
        for name in self.own:
            d = self.decls[name]
            if isinstance(d, (A.Model, A.Step)) or (isinstance(d, A.Fn) and all(
                    p.type is not None and not (p.type.dtype in ("int", "float") and p.type.dims is None)
                    for p in d.params)):
                out.append(name)
        return out


def load_program(path: str | Path) -> Program:
    return _load(parse_file(path), str(path))


def load_source(text: str, file: str = "<string>") -> Program:
    return _load(parse(text, file), file)


def _load(module: A.Module, file: str) -> Program:
    prog = Program(file)
    _add_module(prog, module, seen={str(Path(file).resolve())})
    prog.own = [d.name for d in module.decls]
    return prog


def _add_module(prog: Program, module: A.Module, seen: set[str]) -> None:
    for imp in module.imports:
        path = Path(module.file).parent / imp.path
        target = path.resolve()
        if str(target) in seen:
            continue  # already loaded (or a cycle): its declarations are in the table
        seen.add(str(target))
        if not target.is_file():
            raise DslError(f"cannot import \"{imp.path}\": file not found", imp.span,
                           f"import paths are relative to the importing file: looked for {path}")
        try:
            imported = parse_file(path)
        except DslError as e:
            if e.span is None:  # unreadable: say so at the import
                e.span = imp.span
            raise
        _add_module(prog, imported, seen)
    for d in module.decls:
        if d.name in prog.decls and prog.decls[d.name] is not d:
            first = prog.decls[d.name]
            raise DslNameError(f"`{d.name}` is declared twice", d.name_span or d.span,
                               f"the first `{d.name}` is at {first.name_span or first.span}; rename one of them")
        prog.decls[d.name] = d
