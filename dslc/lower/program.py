"""A program: the parsed file and its imports, with one table of declarations by name."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..diagnostics import DslError, DslNameError
from ..fileio import check_regular
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


def load_program(path: str | Path, import_path: ImportPath = None) -> Program:
    """Parse `path` and its imports. Imports may reach only the file's own folder and the folders
    of `import_path` (one or a list), the project roots."""
    return _load(parse_file(path), str(path), _roots(Path(path).parent, import_path))


def load_source(text: str, file: str = "<string>", import_path: ImportPath = None) -> Program:
    return _load(parse(text, file), file, _roots(Path(file).parent, import_path))


ImportPath = "str | Path | list[str | Path] | None"


def _roots(top: Path, import_path) -> list[Path]:
    extra = [] if import_path is None else [import_path] if isinstance(import_path, (str, Path)) else import_path
    roots = []
    for folder in [top, *map(Path, extra)]:
        try:
            resolved = folder.resolve()
            ok = resolved.is_dir()
        except OSError:
            ok = False
        if not ok:
            raise DslError(f"import path {folder} is not a folder")
        roots.append(resolved)
    return roots


def _load(module: A.Module, file: str, roots: list[Path]) -> Program:
    prog = Program(file)
    _add_module(prog, module, roots, seen={str(Path(file).resolve())})
    prog.own = [d.name for d in module.decls]
    return prog


def _add_module(prog: Program, module: A.Module, roots: list[Path], seen: set[str]) -> None:
    for imp in module.imports:
        target = resolve_import(imp, Path(module.file).parent, roots)
        if str(target) in seen:
            continue  # already loaded (or a cycle): its declarations are in the table
        seen.add(str(target))
        try:
            imported = parse_file(target)
        except DslError as e:
            if e.span is None:  # unreadable: say so at the import
                e.span = imp.span
            raise
        _add_module(prog, imported, roots, seen)
    for d in module.decls:
        if isinstance(d, A.OnnxModel):  # the file it names, read now: a bad one fails `dslc check` too
            from .onnx_decl import load_onnx_model
            target = resolve_import(A.Import(d.path, d.path_span or d.span), Path(module.file).parent, roots,
                                    suffix=".onnx")
            d = load_onnx_model(d, target, roots)
        if d.name in prog.decls and prog.decls[d.name] is not d:
            first = prog.decls[d.name]
            raise DslNameError(f"`{d.name}` is declared twice", d.name_span or d.span,
                               f"the first `{d.name}` is at {first.name_span or first.span}; rename one of them")
        prog.decls[d.name] = d


def resolve_import(imp: A.Import, here: Path, roots: list[Path], suffix: str = ".dsl") -> Path:
    """The file `import "PATH"` names, confined to the project roots: relative to the importing
    file (else to each --import-path folder), a `.dsl` regular file, inside a root once symlinks
    are followed. Every refusal is located at the import and never quotes the file it names."""
    def refuse(why: str, hint: str | None = None) -> DslError:
        return DslError(f"cannot import \"{imp.path}\": {why}", imp.span, hint)

    where = "the importing file" + (" (then to each --import-path folder)" if len(roots) > 1 else "")
    confined = (f"imports are relative to the importing file and stay inside the project root "
                f"({', '.join(map(str, roots))}); add a folder with --import-path")
    if not imp.path:
        raise refuse("the path is empty")
    if "\0" in imp.path:
        raise refuse("the path holds a NUL character")
    if PurePosixPath(imp.path).is_absolute() or PureWindowsPath(imp.path).is_absolute() or imp.path.startswith("~"):
        raise refuse("an absolute path", confined)
    if not imp.path.endswith(suffix):
        raise refuse(f"only {suffix} files can be imported" + ("" if suffix == ".dsl" else " by onnx()"))
    tried = []
    for base in [here, *roots[1:]]:
        candidate = base / imp.path
        tried.append(candidate)
        try:
            target = candidate.resolve()
            os.lstat(candidate)
            exists = True
        except FileNotFoundError:
            exists = False
        except OSError as e:  # a name over the OS limit, a loop of symlinks
            raise refuse(_reason(e)) from None
        if not any(target.is_relative_to(root) for root in roots):
            raise refuse("it is outside the project root", confined)
        if exists:
            break
    else:
        raise refuse("file not found", f"import paths are relative to {where}: looked for "
                     + ", ".join(map(str, tried)))
    try:
        check_regular(target, "imported file")
    except DslError as e:
        raise refuse(e.message.rsplit(": ", 1)[-1]) from None
    return target


def _reason(e: OSError) -> str:
    if e.errno == errno.ENAMETOOLONG:
        return "the file name is too long"
    return (e.strerror or str(e)).lower()
