"""Running compiled models: onnxruntime sessions, datasets, images.

The compiler never imports this package (it needs onnxruntime); `dslc run` and `dslc train` do.
"""
from .data import batches, data_dir, load_mnist, read_idx
from .images import deprocess, save_grid
from .loading import load_npy, load_onnx
from .session import cuda_available, load_weights, make_session, run_model, save_weights

__all__ = ["batches", "cuda_available", "data_dir", "deprocess", "load_mnist", "load_npy", "load_onnx", "load_weights",
           "make_session", "read_idx", "run_model", "save_grid", "save_weights"]
