"""Reading what `dslc run` is given (.onnx models, .npy inputs, .npz weights) with errors for people:
a truncated, empty, foreign or oversized file is a DslError that says which and why, before any
memory is committed to it."""
from __future__ import annotations

import zipfile

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from dslc.diagnostics import DslError, format_bytes
from dslc.fileio import check_regular


def load_onnx(path) -> onnx.ModelProto:
    path = check_regular(path, "model file")
    size = path.stat().st_size
    if size == 0:
        raise DslError(f"model file {path} is empty (0 bytes)", hint="compile it again: dslc compile FILE.dsl")
    try:
        model = onnx.load(str(path))
    except MemoryError:
        raise DslError(f"out of memory reading model file {path} ({format_bytes(size)})") from None
    except (DecodeError, ValueError, OSError, RuntimeError, onnx.checker.ValidationError) as e:
        raise DslError(f"{path} is not an ONNX model (truncated or another kind of file): "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not model.opset_import or not model.graph.output:
        raise DslError(f"{path} is not an ONNX model: it has no graph outputs or no opset",
                       hint="a truncated or foreign file; compile it again")
    return model


def load_npy(path, what: str) -> np.ndarray:
    """One array from an .npy file, its header checked against the file's size first: a header that
    claims 100 GB is an error, not an attempt to allocate them."""
    path = check_regular(path, what)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise DslError(f"cannot read {what} from {path}: it is an .npz archive, not one .npy array")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"format version {version}")
            shape, fortran, dtype = read(f)
        except (ValueError, EOFError, SyntaxError, TypeError) as e:
            raise DslError(f"cannot read {what} from {path}: not an .npy file ({e})") from None
        if dtype.hasobject:
            raise DslError(f"cannot read {what} from {path}: it holds Python objects, which dslc never "
                           f"unpickles", hint="save a numeric array")
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        have = size - f.tell()
        if have < need:
            raise DslError(f"cannot read {what} from {path}: its header says {dtype}{list(shape)} "
                           f"({format_bytes(need)}) but the file holds {format_bytes(have)} (truncated?)")
    try:
        return np.load(path, allow_pickle=False)
    except MemoryError:
        raise DslError(f"out of memory: {what} needs {format_bytes(need)} ({dtype}{list(shape)})") from None
    except (ValueError, OSError, EOFError) as e:
        raise DslError(f"cannot read {what} from {path}: {e}") from None


def load_npz(path, what: str = "weights") -> dict[str, np.ndarray]:
    path = check_regular(path, f"{what} file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise DslError(f"cannot read {what} from {path}: it is one .npy array, not an .npz of named arrays",
                       hint="save them with np.savez(path, **{name: array})")
    if not magic.startswith(b"PK"):
        raise DslError(f"cannot read {what} from {path}: it is not an .npz archive"
                       + (" (the file is empty)" if not magic else ""),
                       hint="expected an .npz written by dslc (save_weights)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DslError(f"cannot read {what} from {path}: it is not an .npz archive ({e})",
                       hint="expected an .npz written by dslc (save_weights)") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DslError(f"cannot read {what} from {path}: it is one .npy array, not an .npz of named arrays",
                       hint="save them with np.savez(path, **{name: array})")
    try:
        with loaded as z:
            return {k: z[k] for k in z.files}
    except MemoryError as e:
        raise DslError(f"out of memory reading {what} from {path}: {e}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DslError(f"cannot read {what} from {path}: the archive is damaged or truncated ({e})") from None
