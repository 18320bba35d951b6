"""Training pictures: PNGs of the expected pixel size, written atomically, libraries loaded lazily."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dslc.diagnostics import DslError
from dslc.runtime.plots import image_grid, latent_grid_points, plot_curves, save_latent_grid

RNG = np.random.default_rng(0)


def png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes the whole file: a truncated PNG fails here
        return im.size, im.mode, np.asarray(im)


def only(folder, *names):
    """The folder holds exactly these files: no temp file was left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_plot_curves(tmp_path):
    history = [{"epoch": e, "loss": 1 / e, "test_accuracy": 0.9 + e / 100, "seconds": 2.0,
                "step_loss": [1 / e, 0.8 / e, 0.6 / e]} for e in (1, 2, 3)]
    path = plot_curves(history, tmp_path / "plots" / "curves.png", "convnet on MNIST")
    size, _, _ = png(path)
    assert size == (640, 60 + 220 * 2)  # loss (with step_loss drawn on it) and test_accuracy
    only(tmp_path / "plots", "curves.png")
    size, _, _ = png(plot_curves([{"loss": 0.5}, {"loss": 0.25}], tmp_path / "plots" / "one.png"))
    assert size == (640, 60 + 220)
    with pytest.raises(DslError, match="history is empty"):
        plot_curves([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_image_grid_size_and_pixels(tmp_path):
    images = np.zeros((5, 1, 28, 28), np.float32)
    images[0] = 1.0
    path = image_grid(images, 2, 3, tmp_path / "grid.png", scale=1)
    size, mode, px = png(path)
    assert mode == "L" and size == (2 + 3 * 30, 2 + 2 * 30)
    assert px[2, 2] == 255 and px[0, 0] == 0 and px[32, 2] == 0
    size, _, px = png(image_grid(images * 2 - 1, 3, 2, tmp_path / "pm1.png", value_range=(-1, 1),
                                 scale=2))
    assert size == (2 * (2 + 2 * 30), 2 * (2 + 3 * 30)) and px[4, 4] == 255 and px[4, 64] == 0
    with pytest.raises(DslError, match="5 images do not fit a grid of 2 x 2"):
        image_grid(images, 2, 2, tmp_path / "small.png")
    only(tmp_path, "grid.png", "pm1.png")


def test_image_grid_row_labels(tmp_path):
    images = RNG.random((20, 28, 28))
    plain, _, _ = png(image_grid(images, 10, 2, tmp_path / "plain.png"))
    size, _, px = png(image_grid(images, 10, 2, tmp_path / "labelled.png",
                                 labels=[f"class {i}" for i in range(10)]))
    assert size[1] == plain[1] and size[0] > plain[0] + 20  # a margin left of the mosaic
    assert px[:, : size[0] - plain[0]].max() == 255  # with text in it
    with pytest.raises(DslError, match="3 row labels for 10 rows"):
        image_grid(images, 10, 2, tmp_path / "x.png", labels=["a", "b", "c"])


def test_latent_grid_points():
    points = latent_grid_points(3, -1, 1)
    assert points.dtype == np.float32 and points.shape == (9, 2)
    assert points[:3].tolist() == [[-1, -1], [0, -1], [1, -1]]  # row-major: x varies fastest
    assert points[-1].tolist() == [1, 1]
    assert latent_grid_points().shape == (900, 2)
    assert latent_grid_points()[[0, -1]].tolist() == [[-4, -4], [4, 4]]


def test_save_latent_grid(tmp_path):
    decoded = RNG.random((16, 784)).astype(np.float32)
    size, _, px = png(save_latent_grid(decoded, tmp_path / "latent.png"))
    assert size == (4 * 28, 4 * 28)
    # Image 5 (row 1, column 1) lands at pixels [28:56, 28:56], edge to edge.
    np.testing.assert_array_equal(px[28:56, 28:56], np.round(decoded[5].reshape(28, 28) * 255))
    with pytest.raises(DslError, match="n\\*n square images"):
        save_latent_grid(decoded[:15], tmp_path / "bad.png")
    only(tmp_path, "latent.png")


def test_plotting_modules_load_lazily():
    code = ("import sys, dslc.runtime.plots, dslc.runtime.progress, dslc.runtime.datasets; "
            "print(sorted(m for m in ('matplotlib', 'PIL', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
