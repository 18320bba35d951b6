"""A `train` declaration's fields over one split's arrays: each a dataset array piped through the
plan's preprocessing steps (train/plan.py PIPES), computed a batch at a time.

Two kinds of pipe need more than the batch at hand:
  - `standardize` subtracts the mean and divides by the standard deviation of the *training* split
    (per feature, fitted once over the whole split): every split's Fields reads them from the
    training split's, so validation and test data are scaled as the model was trained;
  - `random_crop(h, w)` and `random_flip` augment training batches only, drawing from
    (seed, global step, field): a resumed run draws the same. Evaluation gets their plain forms (the
    centre crop, no flip), so shapes agree.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..diagnostics import DslError
from ..train import plan as P
from .datasets import PREPROCESS, require_fields


class Fields:
    """One split's arrays and the plan's fields over them, preprocessed a batch at a time."""

    def __init__(self, plan: P.Plan, arrays: dict[str, np.ndarray], where: str, fitted: "Fields | None" = None):
        self.plan, self.arrays, self.where = plan, arrays, where
        # Dataset arrays read: each field's root (`label = label |> int64` reads the array `label`) and
        # the step arguments that name an array directly.
        sources = {self._root(f) for f in plan.fields.values()}
        used = {src for s in plan.steps for _, src in s.args if isinstance(src, str) and src not in plan.fields}
        require_fields(arrays, sorted(used) + sorted(sources - used), where)
        lengths = {len(a) for a in arrays.values()}
        self.n = min(lengths) if lengths else 0
        self.fitted = fitted or self  # whose statistics `standardize` uses: the training split's
        self.rng_key = None  # (seed, global step) while a training batch is made; None: no augmentation
        self._stats: dict = {}

    def _root(self, f: P.Field) -> str:
        while f.source in self.plan.fields and self.plan.fields[f.source] is not f:
            f = self.plan.fields[f.source]
        return f.source

    def get(self, name: str, idx: np.ndarray, upto: int | None = None, key=...) -> np.ndarray:
        """The field for examples `idx` (its first `upto` pipes only, when given). `key`: the (seed,
        global step) augmentation draws from, None for none; by default `rng_key`. (Given, it leaves
        this object untouched: the prefetching thread makes batches while evaluation reads it.)"""
        key = self.rng_key if key is ... else key
        f = self.plan.fields.get(name)
        if f is None:
            if self.arrays[name].dtype == object:  # a step fed the images of mixed sizes as they are
                raise self._mixed_sizes(name)
            return self.arrays[name][idx]
        base = self.arrays[f.source][idx] if f.source == name or f.source not in self.plan.fields \
            else self.get(f.source, idx, key=key)
        for i, (pipe, args) in enumerate(f.pipes[:upto]):
            if base.dtype == object and pipe != "resize":
                raise self._mixed_sizes(self._root(f))
            if pipe == "standardize":
                mean, std = self.fitted._statistics(name, i)
                base = ((np.asarray(base, np.float32) - mean) / std).astype(np.float32)
            elif pipe in ("random_crop", "random_flip"):
                rng = None if key is None else np.random.default_rng([*key, zlib.crc32(name.encode()), i])
                base = _PIPE[pipe](base, *args, rng=rng)
            else:
                base = _PIPE[pipe](base, *args)
        return base

    def _statistics(self, name: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation of the field before its pipe i, over this split."""
        if (name, i) not in self._stats:  # fitted on the data, not on one batch's augmentation
            x = np.asarray(self.get(name, np.arange(self.n), upto=i, key=None), np.float64)
            if not len(x):
                raise DslError(f"standardize: {self.where} holds no examples to fit on")
            std = x.std(0)
            std = np.where(std > 0, std, 1.0)  # a constant feature is centred, not divided by 0
            self._stats[(name, i)] = (x.mean(0).astype(np.float32), std.astype(np.float32))
        return self._stats[(name, i)]

    def _mixed_sizes(self, root: str) -> DslError:
        sizes = sorted({tuple(a.shape[:2]) for a in self.arrays[root]})
        shown = ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + (", ..." if len(sizes) > 3 else "")
        return DslError(f"{self.where}: the `{root}` images differ in size ({shown})",
                        hint=f"resize them first: {root} = {root} |> resize(32, 32) |> scale(0, 1)")

    def value_range(self, name: str) -> tuple[float, float]:
        return self.plan.value_range(name)


# ------------------------------------------------------------------ the pipes
def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.asarray(a, np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)).astype(np.float32)


def _one_hot(a: np.ndarray, classes: int) -> np.ndarray:
    if a.size and (a.min() < 0 or a.max() >= classes):
        bad = int(a.max() if a.max() >= classes else a.min())
        raise DslError(f"a label is {bad}, outside the {classes} classes one_hot({classes}) makes",
                       hint=f"labels must be integers in [0, {classes})")
    return PREPROCESS["one_hot"](a, classes)


def _images(a: np.ndarray, pipe: str) -> None:
    """resize, random_crop and random_flip work on images as read: [n, h, w] or [n, h, w, channels]."""
    if a.ndim not in (3, 4) and a.dtype != object:
        raise DslError(f"{pipe} expects images [n, h, w] or [n, h, w, channels], got shape {list(a.shape)}",
                       hint=f"put {pipe} before flatten and channels_first")


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Each image to h x w (bilinear, Pillow's resampling); pixels stay uint8 0-255."""
    from PIL import Image  # lazy: only image pipes need Pillow

    _images(a, "resize")
    if a.dtype != object and a.dtype != np.uint8:
        raise DslError(f"resize expects images as read (uint8 pixels), got {a.dtype.name}",
                       hint="put resize first: image = image |> resize(32, 32) |> scale(0, 1)")
    out = [np.asarray(Image.fromarray(np.asarray(x, np.uint8)).resize((w, h), Image.BILINEAR)) for x in a]
    return np.stack(out) if out else np.zeros((0, h, w) + tuple(a.shape[3:]), np.uint8)


def _random_crop(a: np.ndarray, h: int, w: int, rng=None) -> np.ndarray:
    """An h x w window of each image, at a random place in training (rng), else the centre."""
    _images(a, "random_crop")
    H, W = a.shape[1:3]
    if h > H or w > W:
        raise DslError(f"random_crop({h}, {w}) is larger than the {H}x{W} images",
                       hint="crop to at most the image size, or resize first")
    if rng is None:
        tops, lefts = np.full(len(a), (H - h) // 2), np.full(len(a), (W - w) // 2)
    else:
        tops, lefts = rng.integers(0, H - h + 1, len(a)), rng.integers(0, W - w + 1, len(a))
    return np.stack([x[t:t + h, l:l + w] for x, t, l in zip(a, tops, lefts)]) if len(a) else a[:, :h, :w]


def _random_flip(a: np.ndarray, rng=None) -> np.ndarray:
    """Half the images mirrored left to right, in training (rng); evaluation sees them as they are."""
    _images(a, "random_flip")
    if rng is None:
        return a
    flip = rng.random(len(a)) < 0.5
    return np.where(flip.reshape((-1,) + (1,) * (a.ndim - 1)), a[:, :, ::-1], a)


def _channels_first(a: np.ndarray) -> np.ndarray:
    # grey [n, h, w] -> [n, 1, h, w]; colour [n, h, w, c] -> [n, c, h, w]
    return np.ascontiguousarray(np.moveaxis(a, 3, 1)) if a.ndim == 4 else PREPROCESS["channels_first"](a)


_PIPE = {"scale": _scale, "flatten": PREPROCESS["flatten"], "channels_first": _channels_first,
         "one_hot": _one_hot, "int64": PREPROCESS["int64"], "float32": lambda a: np.asarray(a, np.float32),
         "resize": _resize, "random_crop": _random_crop, "random_flip": _random_flip}
