"""onnxruntime sessions on CPU or CUDA, checked feeds, and weight files.

onnxruntime-gpu lists CUDAExecutionProvider even where CUDA cannot load, then prints pages of
C++ warnings and falls back to CPU. So whether CUDA is usable is decided once, by creating a
tiny session with its output silenced, and every later session is created for a known device.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as _ortx

from dslc.diagnostics import DslError, format_bytes
from dslc.fileio import save_npz

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Short dtype names as dslc prints them (f32[N, 10]); other types fall back to numpy's name.
_SHORT = {TensorProto.FLOAT: "f32", TensorProto.DOUBLE: "f64", TensorProto.FLOAT16: "f16",
          TensorProto.INT64: "i64", TensorProto.INT32: "i32", TensorProto.INT8: "i8",
          TensorProto.UINT8: "u8", TensorProto.BOOL: "bool"}

_cuda_usable: bool | None = None


@contextlib.contextmanager
def _quiet():
    """Silence stdout and stderr, at the file-descriptor level too: onnxruntime's C++ logger
    writes to fd 2 directly, and preload_dlls() prints its "Failed to load" lines to stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _flush_c_stdio()  # what C code buffered must reach /dev/null, not the restored fds
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library handle (e.g. Windows)
        pass


# Session settings a training step chooses between by measurement (runner.py). onnxruntime's NCHWc
# layout transformer wraps convolutions and pools in reorders that cost more than they save in
# some backward graphs (PERF-NOTES), and denormals appear once a loss gets tiny.
TUNINGS = {"default": (), "no-nchwc": ("NchwcTransformer",)}


def _options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 4  # fatal only: its errors reach the user as DslErrors, once
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    # No memory pattern: onnxruntime then plans one block for all of a run's intermediates, which
    # held the ACGAN generator step at 880 MB peak RSS against 578 MB without, at the same speed
    # (bench/README.md); its arena still reuses freed buffers.
    opts.enable_mem_pattern = False
    return opts


def _tiny_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def cuda_available() -> bool:
    """True when a CUDA session really runs on CUDA here (decided once, quietly)."""
    global _cuda_usable
    if _cuda_usable is not None:
        return _cuda_usable
    usable = False
    if CUDA in ort.get_available_providers():
        with _quiet():
            try:
                # On GPU machines the CUDA/cuDNN libraries come from an installed torch wheel.
                if hasattr(ort, "preload_dlls"):
                    ort.preload_dlls()
            except Exception:
                pass
            try:
                sess = ort.InferenceSession(_tiny_model().SerializeToString(), _options(),
                                            providers=[CUDA, CPU])
                usable = sess.get_providers()[0] == CUDA
            except Exception:
                usable = False
    _cuda_usable = usable
    return usable


def _model_bytes(model) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (str, Path)):
        return str(model)
    raise TypeError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")


def make_session(model, device: str = "auto", tuning: str = "default", threads: int | None = None
                 ) -> ort.InferenceSession:
    """A session for `model` (ModelProto or path) on "cpu", "cuda" or "auto" (CUDA if usable), with
    one of the TUNINGS; `threads`: onnxruntime's intra-op threads (default: one per core)."""
    if device not in DEVICES:
        raise DslError(f"unknown device `{device}`", hint="use one of: " + ", ".join(DEVICES))
    if isinstance(model, (str, Path)) and not Path(model).is_file():
        raise DslError(f"model file not found: {model}")
    use_cuda = device != "cpu" and cuda_available()
    if device == "cuda" and not use_cuda:
        raise DslError("CUDA was requested but no usable CUDA device/runtime was found",
                       hint="use --device cpu or auto")
    providers = [CUDA, CPU] if use_cuda else [CPU]
    try:
        return ort.InferenceSession(_model_bytes(model), _options(threads), providers=providers,
                                    disabled_optimizers=list(TUNINGS[tuning]))
    except (_ortx.Fail, _ortx.InvalidGraph, _ortx.InvalidProtobuf, _ortx.NotImplemented,
            _ortx.InvalidArgument, _ortx.RuntimeException) as e:
        raise _ort_error("could not load the model", e) from None


def _ort_error(doing: str, e: Exception) -> DslError:
    text = str(e).strip()
    if "Failed to allocate" in text or "bad_alloc" in text or isinstance(e, MemoryError):
        # "... Failed to allocate memory for requested buffer of size 4000000000000"
        size = re.search(r"size (\d+)", text)
        need = f": it needed {format_bytes(int(size.group(1)))} for one tensor" if size else ""
        return DslError(f"out of memory in onnxruntime{need}", hint="use smaller inputs or a smaller model")
    first = text.splitlines()[0] if text else type(e).__name__
    missing = re.search(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'", text)
    if missing:  # a kernel onnxruntime lacks for these types (float64 Conv, say, in a file from elsewhere)
        op, version, node = missing.groups()
        return DslError(f"onnxruntime has no {op} kernel (opset {version}) for the types of node `{node}` on this "
                        f"device", hint="models that dslc compiles replace the float64 ops onnxruntime lacks; "
                        "recompile the .dsl with this dslc, run the model in float32, or use onnx.reference")
    return DslError(f"onnxruntime {doing}: {first[:500]}")


# ------------------------------------------------------------------ feeds and weights
def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Static dims as ints, symbolic ones as their name, unknown ones as None."""
    out = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or None)
    return out


def type_str(vi: onnx.ValueInfoProto) -> str:
    """`f32[N, 1, 28, 28]` for a graph input or output."""
    tt = vi.type.tensor_type
    name = _SHORT.get(tt.elem_type) or np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    if not tt.HasField("shape"):
        return name
    return name + "[" + ", ".join("?" if d is None else str(d) for d in _dims(vi)) + "]"


def _check_feeds(graph: onnx.GraphProto, feeds: dict) -> dict[str, np.ndarray]:
    inits = {t.name for t in graph.initializer}
    inputs = {vi.name: vi for vi in graph.input}
    unknown = sorted(set(feeds) - set(inputs))
    if unknown:
        expected = ", ".join(n for n in inputs if n not in inits) or "(none)"
        raise DslError(f"unknown input {', '.join(map(repr, unknown))}",
                       hint=f"the model's inputs are: {expected}")
    # Inputs that are also initializers have a default, so they may be left out.
    missing = [n for n in inputs if n not in inits and n not in feeds]
    if missing:
        listed = ", ".join(f"`{n}`: {type_str(inputs[n])}" for n in missing)
        raise DslError(f"missing input {listed}")
    out = {}
    bound: dict[str, tuple[int, str]] = {}  # symbol -> (size, input that fixed it)
    for name, value in feeds.items():
        vi, arr = inputs[name], np.asarray(value)
        want = f"input `{name}` expects {type_str(vi)}"
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        if arr.dtype != dtype:
            raise DslError(f"{want}, got dtype {arr.dtype} with shape {list(arr.shape)}",
                           hint=f"convert it with .astype(np.{dtype.name})")
        if vi.type.tensor_type.HasField("shape"):
            dims = _dims(vi)
            if arr.ndim != len(dims):
                raise DslError(f"{want}, got rank {arr.ndim} with shape {list(arr.shape)}")
            for axis, (d, n) in enumerate(zip(dims, arr.shape)):
                if isinstance(d, int) and d != n:
                    raise DslError(f"{want}, got shape {list(arr.shape)} (axis {axis} is {n}, not {d})")
                if isinstance(d, str):
                    # ONNX: one dim_param name means one size throughout the graph.
                    size, first = bound.setdefault(d, (n, name))
                    if size != n:
                        raise DslError(f"{want}, got shape {list(arr.shape)}: `{d}` is {n} here "
                                       f"but {size} in input `{first}`")
        out[name] = arr
    return out


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `weights` hold the given arrays."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    # A trained model's weights file holds every weight; a graph (an ascent on conv2, say) may use a
    # few. Extra names are fine; a file sharing none of the model's names is the wrong file.
    if weights and not set(weights) & set(inits):
        raise DslError(f"none of the weights ({', '.join(sorted(weights)[:4])}, ...) belongs to this model",
                       hint="the model's weights are: " + ", ".join(sorted(inits)))
    weights = {k: v for k, v in weights.items() if k in inits}
    problems = []
    for name, value in weights.items():
        old = inits[name]
        arr = np.asarray(value)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(old.data_type))
        if tuple(arr.shape) != tuple(old.dims):
            problems.append(f"`{name}` has shape {list(arr.shape)}, the model expects {list(old.dims)}")
        elif arr.dtype != dtype and not np.can_cast(arr.dtype, dtype, casting="same_kind"):
            problems.append(f"`{name}` has dtype {arr.dtype}, the model expects {dtype.name}")
        else:
            old.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=dtype), name))
    if problems:
        raise DslError("weights do not fit the model: " + "; ".join(problems))
    return model


def run_model(model, feeds: dict[str, np.ndarray], device: str = "auto",
              weights: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run `model` (ModelProto or path) once; returns its outputs by name."""
    if isinstance(model, (str, Path)):
        from .loading import load_onnx
        model = load_onnx(model)
    if weights:
        model = with_weights(model, weights)
    checked = _check_feeds(model.graph, feeds)
    sess = make_session(model, device)
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(names, checked)))
    except (_ortx.Fail, _ortx.InvalidArgument, _ortx.RuntimeException, _ortx.EPFail, MemoryError) as e:
        raise _ort_error("failed while running the model", e) from None


def load_weights(path) -> dict[str, np.ndarray]:
    """Weights saved by `save_weights` (an .npz of name -> array)."""
    from .loading import load_npz
    return load_npz(path, "weights")


def save_weights(path, weights: dict[str, np.ndarray]) -> None:
    """Write an .npz atomically: a crash leaves the old file or the new one, never half of one."""
    save_npz(path, weights)
