"""Weight initializers, as Keras / TF.js do by default. Each returns `init(rng, shape) -> array`."""
from __future__ import annotations

import math

import numpy as np


def zeros(rng, shape):
    return np.zeros(shape, np.float32)


def ones(rng, shape):
    return np.ones(shape, np.float32)


def _truncated_normal(rng, shape, stddev):
    # Keras' truncated normal: redraw beyond two standard deviations; the 0.8796... keeps the
    # variance of the truncated distribution at stddev**2.
    std = stddev / 0.87962566103423978
    out = rng.normal(0.0, std, size=shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


def kernel(name: str, fan_in: int, fan_out: int):
    """The initializer called `name` for a kernel with these fans."""
    if name == "glorot_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return lambda rng, shape: rng.uniform(-limit, limit, size=shape)
    if name == "glorot_normal":
        return lambda rng, shape: _truncated_normal(rng, shape, np.sqrt(2.0 / (fan_in + fan_out)))
    if name == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        return lambda rng, shape: rng.uniform(-limit, limit, size=shape)
    if name == "he_normal":
        return lambda rng, shape: _truncated_normal(rng, shape, np.sqrt(2.0 / fan_in))
    if name == "lecun_normal":
        return lambda rng, shape: _truncated_normal(rng, shape, np.sqrt(1.0 / fan_in))
    if name == "uniform":  # Keras' embedding default
        return lambda rng, shape: rng.uniform(-0.05, 0.05, size=shape)
    if name == "normal":
        return lambda rng, shape: rng.normal(0.0, 0.05, size=shape)
    if name == "zeros":
        return zeros
    if name == "ones":
        return ones
    raise KeyError(name)


KERNEL_INITS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "uniform", "normal",
                "zeros", "ones")


CHUNK = 1 << 20  # numbers drawn at a time for a big weight


def generate(init, rng, shape: tuple, dtype, what: str = "weight", span=None) -> np.ndarray:
    """`init(rng, shape)` as an array of `dtype`, without a float64 copy of the whole weight beside
    it: a big weight is drawn CHUNK numbers at a time into its final array. Uniform and normal
    draws give the same numbers as one draw would; truncated normals redraw per chunk."""
    n = math.prod(shape)
    try:
        if n <= CHUNK:
            return np.asarray(init(rng, shape), dtype=dtype)
        out = np.empty(n, dtype)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            out[start:stop] = np.asarray(init(rng, (stop - start,)), dtype=dtype)
        return out.reshape(shape)
    except MemoryError:
        from ..diagnostics import DslError, format_bytes
        need = n * np.dtype(dtype).itemsize
        raise DslError(f"out of memory: {what} needs {format_bytes(need)} "
                       f"({np.dtype(dtype).name}[{', '.join(map(str, shape))}])", span) from None

