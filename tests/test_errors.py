"""Golden error messages: each `tests/errors/NAME.dsl` is a small bad program, `NAME.expected` the
exact error dslc prints for it (`FILE:LINE:COL: error: ...`, the source line, a caret, a hint).

A case is checked with `dslc.check_file` (every target), or, when its first line reads
`# target: NAME`, by lowering that one target. Paths in the output are made relative to
`tests/errors/`, so the files read the same on every machine.

After changing a message on purpose, check the new text by eye, then rewrite the golden files:
    python -m tests.test_errors            # every case (from the repository root)
    python -m tests.test_errors NAME ...   # some
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import dslc
from dslc.diagnostics import DslError

ERRORS = Path(__file__).resolve().parent / "errors"
CASES = sorted(ERRORS.glob("*.dsl"))


def render(path: Path) -> str:
    """The error `path` gives, as dslc prints it, with paths relative to tests/errors/."""
    target = re.match(r"# target: (\w+)", path.read_text())
    try:
        if target:
            dslc.lower(str(path), target.group(1))
        else:
            dslc.check_file(str(path))
    except DslError as e:
        assert e.span is not None and e.span.line >= 1, f"{path.name}: error without a location: {e}"
        return e.render().replace(str(ERRORS) + "/", "") + "\n"
    raise AssertionError(f"{path.name} compiled without an error")


def test_enough_cases():
    assert len(CASES) >= 30
    missing = [p.name for p in CASES if not p.with_suffix(".expected").is_file()]
    assert not missing, f"no .expected file for {missing}"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_error_message(path: Path):
    assert render(path) == path.with_suffix(".expected").read_text()


if __name__ == "__main__":
    names = set(sys.argv[1:])
    for p in CASES:
        if not names or p.stem in names:
            p.with_suffix(".expected").write_text(render(p))
            print(f"wrote {p.with_suffix('.expected').name}")
