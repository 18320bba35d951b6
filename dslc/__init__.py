"""dslc: a declarative language for neural-network models, compiled to standard ONNX."""
from .api import check_file, compile, compile_file, generate, load, load_model, loads, lower, run, summary, train, tune
from .diagnostics import DslError
from .emit.state import join_state, split_state

__version__ = "0.1.0"
__all__ = ["check_file", "compile", "compile_file", "load", "load_model", "loads", "lower", "run", "summary",
           "train", "tune", "generate", "join_state", "split_state", "DslError"]
