"""Vector-Jacobian products: one entry per IR op.

`VJP[op](b, node, dys) -> grads`. `dys` holds one cotangent per node output (None where no gradient
reaches it); the result holds one gradient per node input (None: no gradient; trailing Nones may be
left out). A gradient may have the broadcast output shape: the driver sums it down to the input's.
Backward graphs use only ops that have an entry here or are in NON_DIFFERENTIABLE, so they can be
differentiated again (second derivatives, Hessian-vector products).

Each family lives in a module of its own and ends with its table: elementwise.py (and MatMul),
conv_pool.py (with conv_pool_nd.py for 1-D / 3-D and conv_pool_symbolic.py for run-time spatial
dims), shape.py, indexing.py, reductions.py, norms.py; common.py holds the small builders they share. VJP is
the union of their tables.
"""
from __future__ import annotations

# (re-exported: tests build mutant rules from these)
from .common import Rule, _c, _input, _ints, _mask, _op  # noqa: F401
from .conv_pool import CONV_POOL
from .elementwise import DERIVATIVES, ELEMENTWISE, _elementwise  # noqa: F401
from .indexing import INDEXING, slice_grad, slice_grad_at_run_time  # noqa: F401
from .norms import NORMS
from .reductions import REDUCTIONS
from .shape import SHAPE

# Outputs carry no gradient: integer/bool results, random draws, constants, and piecewise-constant
# functions (zero derivative almost everywhere).
NON_DIFFERENTIABLE = {
    "Shape", "Size", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "ArgMax", "ArgMin",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Constant",
    "ConstantOfShape", "OneHot", "Not", "And", "Or", "Sign", "Floor", "Ceil", "StopGradient",
    "BitwiseXor", "BitwiseAnd", "BitwiseOr", "BitShift", "Range",
    "Round",
}


# Ops whose rule lives in a module of its own (it needs more than the node: which values are live).
OWN_RULE = {"Loop"}  # loops.py


VJP: dict[str, Rule] = {**ELEMENTWISE, **CONV_POOL, **SHAPE, **INDEXING, **REDUCTIONS, **NORMS}
