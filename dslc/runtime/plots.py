"""The pictures a training run leaves behind: learning curves, sample grids, a VAE's latent map.

matplotlib and Pillow are imported inside the functions that need them (`dslc compile` loads
neither). Every PNG is rendered in memory, then written atomically through dslc.fileio.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from dslc.diagnostics import DslError
from dslc.fileio import write_bytes

from .images import grid, write_png

# History keys that are bookkeeping, not curves worth a subplot.
NOT_PLOTTED = ("epoch", "seconds", "steps", "steps_per_second")


# ------------------------------------------------------------------ learning curves
def _curves(history: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """metric -> (x, y). Scalars sit at their epoch; a per-step list spreads across its epoch
    (step j of k at epoch - 1 + (j + 1) / k), so both kinds share one epoch axis."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for i, entry in enumerate(history):
        epoch = entry.get("epoch", i + 1)
        for key, value in entry.items():
            if key in NOT_PLOTTED or value is None or isinstance(value, (str, bool)):
                continue
            xs, ys = curves.setdefault(key, ([], []))
            if isinstance(value, (list, tuple, np.ndarray)):
                k = len(value)
                xs.extend(epoch - 1 + (j + 1) / k for j in range(k))
                ys.extend(float(v) for v in value)
            else:
                xs.append(epoch)
                ys.append(float(value))
    return curves


def plot_curves(history: list[dict], path, title: str = "") -> Path:
    """One subplot per metric of `history` (per-epoch dicts, e.g. {"epoch": 1, "loss": 0.3,
    "test_accuracy": 0.97}) against the epoch, as a PNG. A per-step list `step_<m>` is drawn
    faintly under metric `<m>`; other lists get their own subplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: only training plots
    from matplotlib.figure import Figure  # a bare Figure: no pyplot, no global backend state

    curves = _curves(history)
    if not curves:
        raise DslError("no metrics to plot: the training history is empty")
    overlays = {k: k[5:] for k in curves if k.startswith("step_") and k[5:] in curves}
    panels = [k for k in curves if k not in overlays]
    fig = Figure(figsize=(6.4, 0.6 + 2.2 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, metric in zip(axes, panels):
        for step_key, target in overlays.items():
            if target == metric:
                ax.plot(*curves[step_key], color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        xs, ys = curves[metric]
        ax.plot(xs, ys, marker="o" if len(xs) < 50 else None, color="tab:blue")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    write_bytes(path, buffer.getvalue())
    return path


# ------------------------------------------------------------------ a confusion matrix
def plot_confusion(counts: np.ndarray, path, title: str = "", names: list[str] | None = None) -> Path:
    """counts[true, predicted] as a PNG heat map (rows: the true class, columns: the prediction), each
    row shaded by its share of the row's examples, so a rare class reads as clearly as a common one;
    the counts are written in the cells up to 20 classes, the class names (or numbers) beside the rows
    and above the columns up to 40. Drawn with Pillow: milliseconds, so it can be redrawn every epoch."""
    from PIL import Image, ImageDraw, ImageFont

    counts = np.asarray(counts)
    k = len(counts)
    if counts.ndim != 2 or counts.shape != (k, k) or k == 0:
        raise DslError(f"a confusion matrix is square [classes, classes], got shape {list(counts.shape)}")
    names = [str(c) for c in (names or range(k))]
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    cell = int(np.clip(640 // k, 3, 40))
    font = ImageFont.load_default(size=max(9, min(14, cell // 2)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labelled = k <= 40
    margin = 8 + (max(math.ceil(measure.textlength(n, font=font)) for n in names) if labelled else 0)
    top = 28 + (margin if labelled else 0)
    size = k * cell
    canvas = Image.new("RGB", (margin + size + 8, top + size + 24), "white")
    # white (none of the row) to dark blue (all of it), as matplotlib's "Blues"
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])
    colours = (light + shares[..., None] * (dark - light)).round().astype(np.uint8)
    canvas.paste(Image.fromarray(colours.repeat(cell, 0).repeat(cell, 1)), (margin, top))
    draw = ImageDraw.Draw(canvas)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    draw.text((4, 4), f"{title}{': ' if title else ''}accuracy {accuracy:.4f} of {int(counts.sum()):,}",
              fill="black", font=font)
    draw.text((margin, top + size + 4), "rows: true class, columns: predicted", fill="black", font=font)
    for i, name in enumerate(names if labelled else ()):
        middle = top + i * cell + cell / 2
        draw.text((margin - 4, middle), name, fill="black", font=font, anchor="rm")
        column = Image.new("RGBA", (margin, cell), (255, 255, 255, 0))  # the column's name, upright
        ImageDraw.Draw(column).text((4, cell / 2), name, fill="black", font=font, anchor="lm")
        column = column.rotate(90, expand=True)
        canvas.paste(column, (margin + i * cell, top - margin), column)
    if k <= 20:
        for (t, q), c in np.ndenumerate(counts):
            draw.text((margin + q * cell + cell / 2, top + t * cell + cell / 2), str(int(c)), font=font,
                      fill="white" if shares[t, q] > 0.5 else "black", anchor="mm")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    path = Path(path)
    write_bytes(path, buffer.getvalue())
    return path


# ------------------------------------------------------------------ image grids
def image_grid(images: np.ndarray, rows: int, cols: int, path, value_range=(0, 1),
               labels: list[str] | None = None, scale: int = 2, pad: int = 2) -> Path:
    """`images` ([n, h, w] or [n, 1, h, w]) as a rows x cols mosaic PNG, row-major; values in
    `value_range` map to black..white. `labels` (one per row) are written left of the rows, e.g.
    the class of each row of an ACGAN's samples."""
    mosaic = grid(images, nrow=cols, value_range=value_range, pad=pad, rows=rows)
    mosaic = mosaic.repeat(scale, axis=0).repeat(scale, axis=1)
    if labels is None:
        return write_png(path, mosaic)
    if len(labels) != rows:
        raise DslError(f"image_grid got {len(labels)} row labels for {rows} rows")
    return write_png(path, _with_row_labels(mosaic, [str(s) for s in labels], rows, pad * scale))


def _with_row_labels(mosaic: np.ndarray, labels: list[str], rows: int, pad: int):
    from PIL import Image, ImageDraw, ImageFont

    height = (mosaic.shape[0] - pad) // rows  # one row of cells, with its padding
    font = ImageFont.load_default(size=max(10, (height - pad) // 2))
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 8 + max(math.ceil(draw.textlength(s, font=font)) for s in labels)
    canvas = Image.new("L", (margin + mosaic.shape[1], mosaic.shape[0]), 0)
    canvas.paste(Image.fromarray(mosaic), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        middle = pad + r * height + (height - pad) / 2
        draw.text((margin - 4, middle), text, fill=255, font=font, anchor="rm")
    return canvas


# ------------------------------------------------------------------ a 2-D latent space
def latent_grid_points(n: int = 30, lo: float = -4.0, hi: float = 4.0) -> np.ndarray:
    """f32 [n * n, 2]: an n x n grid of latent points, row-major, as the TF.js VAE client makes
    it (linspace(lo, hi, n) on each axis): point i * n + j is (x_j, y_i), row i fixes y."""
    axis = np.linspace(lo, hi, n, dtype=np.float32)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def save_latent_grid(decoded: np.ndarray, path, value_range=(0, 1), scale: int = 1) -> Path:
    """Tile the decodings of latent_grid_points (f32 [n * n, 784], or images [n * n, 28, 28])
    edge to edge into one n x n PNG, in the points' order."""
    decoded = np.asarray(decoded)
    count = len(decoded)
    n, side = math.isqrt(count), math.isqrt(int(np.prod(decoded.shape[1:])))
    if count == 0 or n * n != count or side * side != np.prod(decoded.shape[1:]):
        raise DslError(f"save_latent_grid expects n*n square images (e.g. [900, 784]), "
                       f"got shape {list(decoded.shape)}")
    return image_grid(decoded.reshape(count, side, side), n, n, path, value_range,
                      scale=scale, pad=0)
