"""Image grids as PNG, and the post-processing of filter visualizations.

Pillow is imported inside save_grid only, so `dslc compile` never loads it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dslc.diagnostics import DslError
from dslc.fileio import atomic_write


def deprocess(x: np.ndarray) -> np.ndarray:
    """Chollet's recipe: standardize over all elements, scale to std 0.1 around 0.5, clip to [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean()) / (x.std() + 1e-7) * 0.1 + 0.5
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def grid(images: np.ndarray, nrow: int | None = None, value_range=(0, 1), pad: int = 2) -> np.ndarray:
    """The uint8 [H', W'] mosaic save_grid writes: nrow images per row, `pad` black pixels between."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise DslError(f"save_grid expects images [k, H, W] or [k, 1, H, W], got shape {list(x.shape)}")
    k, h, w = x.shape
    if k == 0:
        raise DslError("save_grid got no images")
    nrow = nrow or math.ceil(math.sqrt(k))  # images per row, torchvision's convention
    rows = math.ceil(k / nrow)
    lo, hi = value_range
    pixels = np.clip((x - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    pixels = np.round(pixels * 255).astype(np.uint8)
    out = np.zeros((pad + rows * (h + pad), pad + nrow * (w + pad)), np.uint8)
    for i in range(k):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top:top + h, left:left + w] = pixels[i]
    return out


def save_grid(path, images: np.ndarray, nrow: int | None = None, value_range=(0, 1),
              pad: int = 2, scale: int = 1) -> Path:
    """Write grayscale `images` as one PNG grid; values in `value_range` map to black..white.
    `scale` enlarges every pixel to a scale x scale block (28x28 digits are small on screen)."""
    from PIL import Image  # lazy: only image-writing commands need Pillow

    path = Path(path)
    # A 2-D uint8 array becomes a mode-L (8-bit grayscale) image.
    mosaic = grid(images, nrow, value_range, pad)
    mosaic = mosaic.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_write(path) as f:  # a kill mid-write leaves the old PNG or the new one
        Image.fromarray(mosaic).save(f, format="PNG")
    return path
