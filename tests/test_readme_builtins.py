"""README's language reference lists every built-in: in the Built-ins table, and in the gradient
status list (each with its gradient status)."""
from __future__ import annotations

import re
from pathlib import Path

from dslc.lower.builtins import BUILTINS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(start: str, end: str) -> str:
    return README[README.index(start):README.index(end, README.index(start))]


def _named(text: str) -> set[str]:
    """Names in backticks, with `a/b/c` families (max_pool1d/2d/3d) and `a b c` runs split."""
    names = set()
    for code in re.findall(r"`([^`]+)`", text):
        for word in re.findall(r"[a-z_][a-z0-9_/]*", code):
            head, *tails = word.split("/")
            names.add(head)
            stem = re.sub(r"\d+d$", "", head)
            names.update(stem + t for t in tails)
    return names


def test_the_builtins_table_lists_every_builtin():
    table = _section("### Built-ins", "Weights are reachable by name")
    assert not set(BUILTINS) - _named(table)


def test_the_gradient_status_list_names_every_builtin():
    status = _section("Gradient status of every built-in", "**Float64.**")
    assert not set(BUILTINS) - _named(status)
