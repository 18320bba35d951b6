"""Random numbers as a pure function of (seed, step, site, position), built from standard integer ops.

ONNX's RandomUniform / RandomNormal keep their state in the runtime session and every runtime draws
differently, so a graph using them can neither be resumed bit for bit nor compared across runtimes.
Here each random tensor is a hash of counters instead (a counter-based generator, as Philox and
JAX's threefry are):

    key  = mix(mix(seed * GOLDEN + site + C) ^ mix(step * GOLDEN2 + C))   per random op ("site")
    row  = mix(mix(r * GOLDEN + key) ^ key)                            per index r on the first axis
    col  = mix(c * GOLDEN2 + C)                                        per position c within a row
    bits = mix(row ^ col)                                              per element (uint32)

where `mix` is MurmurHash3's 32-bit finalizer (a bijection with full avalanche), `c` is the
row-major position within the dims after the first, `site` numbers the random ops of the graph in
source order, `seed` and `step` are i64 graph inputs (taken mod 2^32) and, inside a `repeat`, the
loop iteration is mixed into the key as well. Rows get the full two-round hash of (key, r); the
column hashes do not depend on the key (a constant where the shape is static), so an element costs
one XOR and one `mix` of the big tensor: half the passes of hashing every position twice, which
had been a fifth of the ACGAN discriminator step (bench/README.md). Uniforms take the top 24 bits
(`bits >> 8) * 2^-24` in [0, 1); normals come from two uniform streams by Box-Muller; dropout's
`uniform >= rate` is compared on the integer bits instead (keep_mask: the same mask, fewer ops).
Everything is uint32 Mul/Add/BitwiseXor/BitShift, which onnxruntime, onnx.reference and other
runtimes compute identically.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Value
from ..ir.builder import Builder
from ..ir.ops import DTYPE_CODE
from ..ir.patterns import shape_of

GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters over the whole range
GOLDEN2 = 0x85EBCA77
OFFSET = 0x165667B1


def _u32(b: Builder, x: int) -> Value:
    return b.const(np.uint32(x & 0xFFFFFFFF), "u32")


FMIX32 = ((16, 0x85EBCA6B), (13, 0xC2B2AE35))  # MurmurHash3's finalizer: (shift, multiply) rounds, then h ^= h >> 16


def _mix(b: Builder, h: Value) -> Value:
    """MurmurHash3 fmix32: h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16."""
    for shift, mult in FMIX32:
        h = b.op("BitwiseXor", [h, b.op("BitShift", [h, _u32(b, shift)], {"direction": "RIGHT"})])
        h = b.op("Mul", [h, _u32(b, mult)])
    return b.op("BitwiseXor", [h, b.op("BitShift", [h, _u32(b, 16)], {"direction": "RIGHT"})])


def _as_u32(b: Builder, v: Value) -> Value:
    return v if v.dtype == "u32" else b.op("Cast", [v], {"to": DTYPE_CODE["u32"]})


def site_key(b: Builder, seed: Value, step: Value | None, site: int, iteration: Value | None) -> Value:
    """The uint32 key of one random op: a function of the seed, the step, the site and the loop pass."""
    # (OFFSET: mix(0) is 0, so seed 0 at site 0 would otherwise get the all-zero key)
    h = _mix(b, b.op("Add", [b.op("Mul", [_as_u32(b, seed), _u32(b, GOLDEN)]), _u32(b, site + OFFSET)]))
    for counter in (step, iteration):
        if counter is not None:
            c = _mix(b, b.op("Add", [b.op("Mul", [_as_u32(b, counter), _u32(b, GOLDEN2)]), _u32(b, OFFSET)]))
            h = _mix(b, b.op("BitwiseXor", [h, c]))
    return h


def _bits(b: Builder, like: Value, key: Value) -> Value:
    """One uint32 hash per element of `like` (its values are not read, only its shape):
    mix(row_hash ^ column_hash), broadcast from one hash per row and one per column."""
    if like.rank == 0:
        return b.op("Reshape", [_bits(b, b.op("Reshape", [like, b.ints([1])]), key), b.ints([])])
    shape = shape_of(b, like)
    n_rows = b.op("Gather", [shape, b.const(np.int64(0), "i64")], {"axis": 0})
    rows = b.op("Range", [b.const(np.int64(0), "i64"), n_rows, b.const(np.int64(1), "i64")])
    rows = b.op("Add", [b.op("Mul", [_as_u32(b, rows), _u32(b, GOLDEN)]), key])
    rows = _mix(b, b.op("BitwiseXor", [_mix(b, rows), key]))
    rows = b.op("Reshape", [rows, b.ints([-1] + [1] * (like.rank - 1))])
    inner_dims = like.shape[1:]
    if all(isinstance(d, int) for d in inner_dims):
        columns = b.const(_column_hashes(np.arange(int(np.prod(inner_dims)))).reshape(inner_dims), "u32")
    else:
        inner_shape = b.op("Slice", [shape, b.ints([1]), b.ints([like.rank])])
        inner = b.op("ReduceProd", [inner_shape], {"keepdims": 0})
        columns = b.op("Range", [b.const(np.int64(0), "i64"), inner, b.const(np.int64(1), "i64")])
        columns = _mix(b, b.op("Add", [b.op("Mul", [_as_u32(b, columns), _u32(b, GOLDEN2)]), _u32(b, OFFSET)]))
        columns = b.op("Reshape", [columns, inner_shape])
    return _mix(b, b.op("BitwiseXor", [rows, columns]))


def _column_hashes(columns: np.ndarray) -> np.ndarray:
    """mix(column * GOLDEN2 + OFFSET) in numpy: the per-column hashes, a constant where the dims
    after the first are static (the same values as the graph computes otherwise)."""
    h = (columns.astype(np.uint64) * GOLDEN2 + OFFSET) % 2 ** 32  # (uint64 wraps mod 2^64: still exact mod 2^32)
    for shift, mult in FMIX32:
        h = (h ^ (h >> shift)) * mult % 2 ** 32
    return (h ^ (h >> 16)).astype(np.uint32)


def _unit(b: Builder, bits: Value, dtype: str, half: bool = False) -> Value:
    """bits -> [0, 1) in steps of 2^-24 (or (0, 1) with `half`: offset by half a step, for log)."""
    top = b.op("Cast", [b.op("BitShift", [bits, _u32(b, 8)], {"direction": "RIGHT"})], {"to": DTYPE_CODE[dtype]})
    if half:
        top = b.op("Add", [top, b.const(0.5, dtype)])
    return b.op("Mul", [top, b.const(2.0 ** -24, dtype)])


def uniform(b: Builder, like: Value, keys: list[Value], dtype: str) -> Value:
    return _unit(b, _bits(b, like, keys[0]), dtype)


def at_least_threshold(rate: float, dtype: str) -> int | None:
    """The integer T with  uniform >= rate  <=>  (bits >> 8) >= T, or None where there is none.

    In f32 and f64, uniform() is exactly top * 2^-24 with top = bits >> 8 < 2^24: the Cast is exact
    (top has at most 24 significant bits) and so is the scaling by a power of two. The graph compares
    it with r, the rate rounded to `dtype` (the constant's own rounding). So uniform >= r <=>
    top >= r * 2^24 <=> top >= ceil(r * 2^24) = T, top being an integer; r * 2^24 is exact in Python's
    float64 (r is an f32 or f64, scaled by a power of two), so T is exact; 0 <= T <= 2^24. In f16 the
    Cast of top rounds, so there is no such T."""
    if dtype not in ("f32", "f64"):
        return None
    r = float(np.asarray(rate, dtype=np.float32 if dtype == "f32" else np.float64))
    return int(np.ceil(r * 2.0 ** 24))


def keep_mask(b: Builder, like: Value, keys: list[Value], rate: float, dtype: str) -> Value:
    """uniform(like) >= rate as a bool tensor, bit for bit; in f32/f64 compared on the integer bits
    (at_least_threshold), which skips the uniform's Cast and Mul. (The comparison stays on the top
    24 bits, below 2^31, so that the int32 form of the hash in portable.py compares the same.)"""
    threshold = at_least_threshold(rate, dtype)
    bits = _bits(b, like, keys[0])
    if threshold is None:
        return b.op("GreaterOrEqual", [_unit(b, bits, dtype), b.const(rate, dtype)])
    top = b.op("BitShift", [bits, _u32(b, 8)], {"direction": "RIGHT"})
    return b.op("GreaterOrEqual", [top, _u32(b, threshold)])


def normal(b: Builder, like: Value, keys: list[Value], dtype: str) -> Value:
    """Box-Muller: sqrt(-2 log u1) * cos(2 pi u2), u1 in (0, 1) so the log is finite."""
    u1 = _unit(b, _bits(b, like, keys[0]), dtype, half=True)
    u2 = _unit(b, _bits(b, like, keys[1]), dtype)
    radius = b.op("Sqrt", [b.op("Mul", [b.op("Log", [u1]), b.const(-2.0, dtype)])])
    return b.op("Mul", [radius, b.op("Cos", [b.op("Mul", [u2, b.const(2 * np.pi, dtype)])])])


def shaped_like(b: Builder, shape: Value | list) -> Value:
    """A tensor of the given shape (a list of ints, or a 1-D i64 shape value) whose shape the
    generator reads; its contents are never used."""
    if isinstance(shape, Value):
        return b.op("ConstantOfShape", [shape], {"value": np.zeros(1, dtype=np.float32)})
    return b.op("ConstantOfShape", [b.ints(shape)], {"value": np.zeros(1, dtype=np.float32)})

