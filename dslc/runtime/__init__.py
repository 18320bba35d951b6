"""Running compiled models: onnxruntime sessions, datasets, images.

The compiler never imports this package (it needs onnxruntime); `dslc run` and `dslc train` do.
"""
from .data import batches, data_dir, load_mnist, read_idx
from .datasets import describe_source, epoch_order, load_dataset, preprocess
from .images import deprocess, save_grid
from .loading import load_npy, load_onnx
from .plots import image_grid, latent_grid_points, plot_curves, save_latent_grid
from .progress import EpochProgress, epoch_line, write_history
from .session import cuda_available, load_weights, make_session, run_model, save_weights

__all__ = ["EpochProgress", "batches", "cuda_available", "data_dir", "deprocess", "describe_source",
           "epoch_line", "epoch_order", "image_grid", "latent_grid_points", "load_dataset",
           "load_mnist", "load_npy", "load_onnx", "load_weights", "make_session", "plot_curves", "preprocess",
           "read_idx", "run_model", "save_grid", "save_latent_grid", "save_weights", "write_history"]
