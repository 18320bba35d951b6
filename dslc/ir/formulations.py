"""The places where the compiler picks one of several exact formulations of the same result, in one
table, and the passes that may be switched off.

Each choice point has a static shape rule (kept where the point is decided) that picks an option
by default. `forcing(...)` makes a point take a named option wherever that option applies, so that
tests check every formulation on every shape it can handle, not only the shapes its rule picks it
for (tests/test_opinfo.py); `recording()` collects the options a compile actually took.

A point is decided once per layer: the place is the binding the layer's nodes are named after
(`D.h` for `h = conv2d(...)` in model D; its backward nodes are `grad/D.h/...`), set by the lowerer
and the autodiff driver with `at(place)`. A forcing key is a point (everywhere) or `point@place`
(that layer only, before the point's own key): what `dslc tune` varies one at a time.

    dslc.compile(prog, "train", formulations={"conv_weight_grad": "channels_last"}, passes_off=["cse"])
    dslc compile FILE --target train --formulation conv_weight_grad@D.h=channels_last --no-pass cse
"""
from __future__ import annotations

import contextlib
import contextvars

from ..diagnostics import DslError

# point -> its options; what each means is in the docstring of the function that decides it
CHOICES: dict[str, tuple[str, ...]] = {
    # dW of a convolution: a MatMul per sample and a ReduceSum, or one MatMul over channels-last patches
    # of the whole batch (patterns.conv_weight_grad; group 1 only), or the per-sample MatMul with the
    # patches first (patterns.weight_grad_per_sample)
    "conv_weight_grad": ("per_sample", "channels_last", "patches_first"),
    # dx of a 2-D convolution: ONNX ConvTranspose, or GEMMs and constant col2im matrices
    # (patterns.conv_transpose2d_matmuls; group 1, static sizes), or a Conv with the kernels flipped
    # (patterns.conv_input_grad_flipped; stride 1)
    "conv_input_grad": ("conv_transpose", "matmuls", "flipped_conv"),
    # the forward conv2d_transpose layer: ONNX ConvTranspose, or the same GEMMs
    "conv_transpose": ("native", "matmuls"),
    # dx of a max pool: windows that tile the input (kernel = stride, no padding, no dilation) as one
    # reshape, or one slice per kernel offset (any window)
    "max_pool_grad": ("tiles", "windows"),
    # the optimizer's update: small weights of a dtype concatenated and updated as one, or each alone
    "optimizer_update": ("grouped", "per_weight"),
    # dW of a MatMul of rows [..., T, K] by a matrix: a MatMul per leading index summed by the driver,
    # or the leading axes folded into one GEMM (patterns.matmul_weight_grad)
    "matmul_weight_grad": ("batched", "flattened"),
    # multi_head_attention's mask: Where on the scores, or a 0 / -inf bias added (sequence._masked_scores)
    "attention_mask": ("where", "additive"),
    # layer_norm: ReduceMean / Sub / Mul ops, or ONNX LayerNormalization with its own rule
    # (layers._layer_norm_form; last axis, float32 or float64)
    "layer_norm": ("ops", "onnx"),
}

# passes that change the graph but not its numbers, each of which can be turned off
PASSES = ("fold", "simplify", "cse", "dce", "pool_before_relu")

_forced: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("forced", default={})
_off: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("passes_off", default=frozenset())
_used: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("used", default=None)
_place: contextvars.ContextVar[str] = contextvars.ContextVar("place", default="")


def split_key(key: str) -> tuple[str, str]:
    """`point@place` -> (point, place); a plain point -> (point, "")."""
    point, _, place = key.partition("@")
    return point, place


def key(point: str, place: str = "") -> str:
    return f"{point}@{place}" if place else point


def check(forced: dict[str, str] | None = None, passes_off=()) -> None:
    """An error (no location: these come from the command line or the API) for an unknown point, option or pass (they come from the command line)."""
    for point, option in (forced or {}).items():
        point = split_key(point)[0]
        if point not in CHOICES:
            raise DslError(f"unknown formulation point `{point}`: use one of {', '.join(CHOICES)}")
        if option not in CHOICES[point]:
            raise DslError(f"`{point}` has no formulation `{option}`: use one of {', '.join(CHOICES[point])}")
    for name in passes_off:
        if name not in PASSES:
            raise DslError(f"unknown pass `{name}`: use one of {', '.join(PASSES)}")


@contextlib.contextmanager
def forcing(forced: dict[str, str] | None = None, passes_off=()):
    """Within the block, each point in `forced` takes its option wherever it applies, and the named
    passes do not run (on top of what an enclosing block forces)."""
    check(forced, passes_off)
    tokens = _forced.set({**_forced.get(), **(forced or {})}), _off.set(_off.get() | frozenset(passes_off))
    try:
        yield
    finally:
        _off.reset(tokens[1])
        _forced.reset(tokens[0])


@contextlib.contextmanager
def recording(places: bool = False):
    """Collect the (point, option) pairs taken inside the block, or with `places` the (point, place,
    option, options that applied there) of each decision; yields the set."""
    taken: set = set()
    token = _used.set((taken, places))
    try:
        yield taken
    finally:
        _used.reset(token)


@contextlib.contextmanager
def at(place: str):
    """Within the block, points are decided for the layer named `place`."""
    token = _place.set(place)
    try:
        yield
    finally:
        _place.reset(token)


def choose(point: str, by_rule: str, applicable=None) -> str:
    """The option a point takes: the one forced on this place or else on the point, where it is among
    `applicable` (default: all of the point's options), else the shape rule's."""
    applicable = tuple(applicable or CHOICES[point])
    want = forced(point)
    option = want if want is not None and want in applicable else by_rule
    used = _used.get()
    if used is not None:
        taken, places = used
        taken.add((point, _place.get(), option, applicable) if places else (point, option))
    return option


def forced(point: str) -> str | None:
    """The option forced on a point at the current place, if any."""
    table = _forced.get()
    return table.get(key(point, _place.get()), table.get(point))


def pass_on(name: str) -> bool:
    return name not in _off.get()
