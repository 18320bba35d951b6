"""What a measured pick depends on besides the graph: this machine's CPU, onnxruntime and threads."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo's `model name`), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key(threads: int | None = None) -> dict:
    """The key a pick holds for: the same graph on another CPU, onnxruntime or thread count is
    measured afresh. `threads` None is onnxruntime's default (one per core), keyed by the core count."""
    import onnxruntime as ort
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 0, "onnxruntime": ort.__version__,
            "threads": threads or "default"}
