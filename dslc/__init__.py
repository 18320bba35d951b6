"""dslc: a declarative language for neural-network models, compiled to standard ONNX."""
from .api import check_file, compile, compile_file, load, loads, lower, run, summary, train
from .diagnostics import DslError

__version__ = "0.1.0"
__all__ = ["check_file", "compile", "compile_file", "load", "loads", "lower", "run", "summary", "train", "DslError"]
