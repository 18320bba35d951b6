"""What a dslc expression evaluates to at compile time, besides an IR `Value`.

Python ints/floats/bools stand for literals and hyperparameters, lists for list literals.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.core import Value


@dataclass(frozen=True)
class Symbol:
    """A bare word used as an option: `padding=same`, `cast(x, f32)`, `kernel_init=glorot_normal`."""
    name: str


@dataclass
class ModelResult:
    """A model call: its outputs, and every binding of its body (`ConvNet(x).conv2`)."""
    model: str
    outputs: tuple[Value, ...]
    bindings: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DeclRef:
    """A model, layer or fn named without being called (`ConvNet.conv1.weight` starts here)."""
    name: str
    path: str = ""


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    options: dict


def describe(v: object) -> str:
    """How a compile-time value reads in an error message."""
    if isinstance(v, Value):
        return str(v.type)
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Symbol):
        return f"the word `{v.name}`"
    if isinstance(v, ModelResult):
        return f"the {len(v.outputs)} outputs of {v.model}"
    if isinstance(v, DeclRef):
        return f"`{v.name}` (not called)"
    if isinstance(v, tuple):
        return f"{len(v)} values"
    return type(v).__name__


@dataclass
class LayerRecord:
    """One row of `dslc summary`."""
    name: str
    kind: str
    out: str
    params: int


def is_shape_list(items: list) -> bool:
    """`[N, 100]`: integers and at least one i64 scalar (a dim used as a value)."""
    def dim(x):
        return isinstance(x, Value) and x.dtype == "i64" and x.rank == 0
    return any(dim(x) for x in items) and all(dim(x) or isinstance(x, int) and not isinstance(x, bool)
                                               for x in items)
