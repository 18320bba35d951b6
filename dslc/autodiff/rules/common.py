"""What the families of rules share: the Rule type and the small builders (an op, a constant in a
value's dtype, a bool as 0/1, an input's constant ints, an optional input)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...ir.builder import Builder
from ...ir.core import Node, Value
from ...ir.ops import DTYPE_CODE

Rule = Callable[[Builder, Node, list], list]


def _op(b: Builder, name: str, *inputs, **attrs) -> Value:
    return b.op(name, list(inputs), attrs)


def _c(b: Builder, value, like: Value) -> Value:
    """A constant in like's dtype (scalar unless value is an array)."""
    return b.const(np.asarray(value), like.dtype)


def _mask(b: Builder, cond: Value, like: Value) -> Value:
    """A bool condition as 0/1 in like's dtype (Cast of a comparison: no gradient, no Where)."""
    return _op(b, "Cast", cond, to=DTYPE_CODE[like.dtype])


def _ints(v: Value | None) -> list[int] | None:
    return None if v is None else [int(i) for i in np.asarray(v.const).reshape(-1)]


def _input(node: Node, i: int) -> Value | None:
    return node.inputs[i] if len(node.inputs) > i else None
