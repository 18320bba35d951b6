"""Reading a training checkpoint (checkpoint.npz: a JSON `meta` record and `state/NAME` arrays) and
checking its meta record's fields, for the trainer, `dslc generate`, `dslc export` and the tuner. A
file that is not one dslc wrote is one DslError saying so, never a traceback or numpy's advice to
unpickle it. Checking the state against the compiled steps is the trainer's (it has the steps)."""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from ..diagnostics import DslError
from ..fileio import check_regular

CHECKPOINT = "checkpoint.npz"


def read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, state) of a checkpoint file; a file that is not one (truncated, foreign, holding
    pickled objects) is a DslError that says so, never numpy's advice to unpickle it."""
    check_regular(path, "the checkpoint")
    if not zipfile.is_zipfile(path):
        raise damaged(path, "it is not an .npz archive (truncated, or another kind of file)", True)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise damaged(path, "it has no `meta` record")
            other = [k for k in z.files if k != "meta" and not k.startswith("state/")]
            if other:
                raise damaged(path, f"it holds `{other[0]}`, which dslc train does not write")
            raw = z["meta"]
            state = {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}
            # (np.load hands back a member that is not an .npy file as raw bytes)
            odd = [k for k, v in [("meta", raw), *state.items()] if not isinstance(v, np.ndarray)]
            if odd:
                raise damaged(path, f"its member `{odd[0]}` is not a numpy array", True)
    except DslError:
        raise
    except Exception as e:  # zipfile, zlib, numpy and memory errors: a damaged file, never a traceback
        why = "it holds Python objects, which dslc never unpickles" if "pickle" in str(e) else \
            f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise damaged(path, why, unreadable=True) from None
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise damaged(path, f"its `meta` record is {raw.dtype.name}{list(raw.shape)}, not JSON text")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise damaged(path, f"its `meta` record is not JSON ({e})") from None
    return meta, state


# meta key -> what it must be; sums may be absent (written before they were kept)
_META = {"global_step": "a count", "epoch": "a count", "batch_index": "a count", "settings": "an object",
         "graphs": "an object", "data": "a string"}


def check_meta(path: Path, meta) -> None:
    """Each field of a checkpoint's meta record has the type the trainer reads it as."""
    if not isinstance(meta, dict):
        raise damaged(path, f"its `meta` record is a JSON {type(meta).__name__}, not an object")
    unknown = sorted(meta.keys() - _META.keys() - {"sums", "per_step", "vocabulary", "tuning"})
    if unknown:
        raise damaged(path, f"its `meta` record holds `{unknown[0]}`, which dslc train does not write")
    kinds = {"a count": is_count, "an object": lambda v: isinstance(v, dict), "a string": lambda v: isinstance(v, str)}
    for key, kind in _META.items():
        if key not in meta:
            raise damaged(path, f"its `meta` record has no `{key}`")
        if not kinds[kind](meta[key]):
            raise damaged(path, f"`{key}` in its `meta` record is {json.dumps(meta[key])[:40]}, not {kind}")
    sums = meta.get("sums")
    if sums is not None and not (isinstance(sums, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in sums.values())):
        raise damaged(path, "`sums` in its `meta` record is not an object of finite numbers")
    if not isinstance(meta.get("vocabulary", ""), str):
        raise damaged(path, "`vocabulary` in its `meta` record is not a string")
    per_step = meta.get("per_step")
    if per_step is not None and not (isinstance(per_step, dict) and all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                        for x in v) for v in per_step.values())):
        raise damaged(path, "`per_step` in its `meta` record is not an object of lists of finite numbers")


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def damaged(path: Path, why: str, unreadable: bool = False, hint: str | None = None) -> DslError:
    return DslError(f"cannot {'read' if unreadable else 'resume from'} the checkpoint {path}: {why}",
                    hint=hint or "it is damaged or was not written by dslc train: start afresh without --resume")
