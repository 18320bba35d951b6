"""The built-in vocabulary: one table from name to a lowering function.

Each entry's Python signature is the language-level signature (`calls.bind_call` binds and checks
arguments); annotations say what a parameter takes: "T" a tensor, "int", "count" (a positive int),
"float", "bool", "word", "ints". Layers with weights name them after the binding they appear in
(`ConvNet.conv1.weight`).

Each family lives in a module of its own and ends with its table: layers.py (dense, the norms,
embedding, flatten, reshape, concat, dropout), conv.py (conv1d/2d/3d, conv2d_transpose), pools.py
(pools, upsample2d), with spatial.py the padding and window arguments of both, activations.py,
tensors.py (math, random draws, grad) and losses.py; common.py holds what they share. BUILTINS is
the union of their tables.
"""

import importlib
import inspect

from ..calls import Ctx, bind_call
from .activations import ACTIVATIONS, _activate  # noqa: F401
# (re-exported: creation.py, sequence.py and the tests import these from here)
from .common import _float_dtype, _float_tensor, _init, _layer_name, _record, _t, _unary, _weighted  # noqa: F401
from .conv import CONV
from .layers import LAYERS, _zero_row  # noqa: F401
from .losses import EPS, LOSSES  # noqa: F401
from .pools import POOLS
from .tensors import TENSORS


def call_builtin(lw, sc, name: str, e):
    fn = BUILTINS[name]
    ctx = Ctx(lw, sc, e.span, name, {})
    values = bind_call(ctx, fn, e)
    # A `*xs` parameter (concat) is bound by name above; pass it positionally.
    star = next((p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.VAR_POSITIONAL), None)
    return fn(ctx, *(values.pop(star) if star else ()), **values)


BUILTINS = {
    **LAYERS, **CONV, **POOLS,
    **{k: v for k, v in ACTIVATIONS.items() if k != "linear"},
    **TENSORS, **LOSSES,
}

# Built-ins in modules of their own add themselves to BUILTINS (issue 21): arange, zeros, ones, full,
# masked_fill (creation.py); lstm, gru, multi_head_attention, positional_embedding (sequence.py).
for _module in ("creation", "sequence"):  # (import_module: either may be the one being imported first)
    importlib.import_module(f"..{_module}", __package__)
