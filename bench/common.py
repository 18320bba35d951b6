"""What the benchmarks share: silencing the contenders alike while they are timed."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings


@contextlib.contextmanager
def quiet():
    """Silence everything written to fd 1 and 2 (onnxruntime and torch print warnings)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
