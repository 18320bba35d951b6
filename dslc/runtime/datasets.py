"""Training data: MNIST / Fashion-MNIST from IDX files, a user's .npz, image folder or CSV file, or
the embedded subset. One reader per format (READERS); the trainer sees only {field: array} splits.

Where the data comes from (first that applies):
  1. `data` given: a directory of the original IDX files (the dataset folder itself, or a parent
     with mnist/ and fashion/ subfolders, as ../shared/data is laid out), an image folder
     (root/train/<class>/*.png, root/test/<class>/*.png), a folder holding train.csv (and
     test.csv), a .csv file (its test split: NAME_test.csv beside it), an .npz file, or a .txt file
     (plain text for a character-level language model: load_text, windows of `seq` characters);
  2. $DSLC_DATA, read the same way;
  3. for `mnist` / `fashion_mnist`, the embedded subset shipped in dslc/data/embedded.npz (see
     dslc/data/README.md). The format words (`npz`, `images`, `csv`) have no default: they name
     what the user's files must be.

An .npz holds named arrays whose names the user chooses (image/label, x/y, ...). The train split
is the plain names (`x`, or `x_train` / `train_x`); the test split is `x_test` or `test_x`.
Either way a split comes back keyed by the plain name.

IDX: a big-endian header (magic, then one uint32 per dimension) followed by the raw uint8 data.
Magic 2051 = 0x00000803: uint8, 3 dims (count, rows, cols); 2049 = 0x00000801: uint8, 1 dim.
"""
from __future__ import annotations

import csv
import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dslc.diagnostics import DslError, did_you_mean
from dslc.fileio import check_regular

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
ENV_VAR = "DSLC_DATA"
SPLITS = {"train": "train", "test": "t10k"}  # split -> IDX file name prefix
# Canonical dataset name -> (the names a user may write, its folder names, the name people know).
DATASETS = {
    "mnist": (("mnist",), ("mnist",), "MNIST"),
    "fashion": (("fashion", "fashion_mnist", "fashion-mnist"),
                ("fashion", "fashion_mnist", "fashion-mnist"), "Fashion-MNIST"),
}
IMAGE_SIZE = (28, 28)  # of the IDX files, whose header would take any size
# `data =` words that name a format rather than a dataset: the files come from --data / $DSLC_DATA.
FORMATS = {"npz": "an .npz file", "images": "an image folder", "csv": "a CSV file", "text": "a text file"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CSV_LABELS = ("label", "target")  # the column a CSV's `label` field is read from, the first found
EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "embedded.npz"


# ------------------------------------------------------------------ names and sources
def dataset_name(name: str) -> str:
    """The canonical name ("mnist" or "fashion") of a dataset as a user may write it, or a format word."""
    if name.lower() in FORMATS:
        return name.lower()
    for canonical, (aliases, _, _) in DATASETS.items():
        if name.lower() in aliases:
            return canonical
    known = sorted(a for aliases, _, _ in DATASETS.values() for a in aliases) + list(FORMATS)
    raise DslError(f"unknown dataset `{name}`", hint="use one of: " + ", ".join(known))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DslError(f"unknown split `{split}`", hint="use train or test")


@dataclass(frozen=True)
class Source:
    """Where one dataset's arrays come from: kind is a READERS key ("idx" a folder, "npz", "images",
    "csv" the training file, "embedded")."""
    kind: str
    dataset: str  # canonical name
    path: Path

    def describe(self) -> str:
        if self.kind == "embedded":
            counts = _embedded_counts(self.dataset)
            return (f"embedded {DATASETS[self.dataset][2]} subset "
                    f"({counts['train']:,} train / {counts['test']:,} test)")
        return str(self.path)


def resolve_source(name: str, data: str | os.PathLike | None = None) -> Source:
    """Where `load_dataset(name, ..., data)` reads from: `data`, else $DSLC_DATA, else embedded."""
    dataset = dataset_name(name)
    what = "data path"
    if data is None and os.environ.get(ENV_VAR):
        data, what = os.environ[ENV_VAR], f"${ENV_VAR}"
    if data is None:
        if dataset in FORMATS:
            raise DslError(f"`data = {dataset}` reads your own files, and none were given",
                           hint=f"pass --data PATH ({FORMATS[dataset]}) or set {ENV_VAR}")
        if not EMBEDDED.is_file():
            raise DslError(f"the embedded dataset is missing from this installation: {EMBEDDED}",
                           hint=f"pass a data directory or set {ENV_VAR}")
        return Source("embedded", dataset, EMBEDDED)
    path = Path(data).expanduser()
    if path.is_dir():
        source = _folder_source(path, dataset)
    elif path.is_file():  # by its suffix; another (data.txt) is what the declaration says, else an .npz
        suffix = path.suffix.lower()
        kind = "csv" if suffix in (".csv", ".tsv") or dataset == "csv" and suffix != ".npz" else \
            "text" if suffix == ".txt" or dataset == "text" and suffix != ".npz" else "npz"
        source = Source(kind, dataset, path)
    elif os.path.lexists(path):  # a FIFO, a device, a dangling link: say which, not "not found"
        check_regular(path, what)
    else:
        raise DslError(f"{what} not found: {path}",
                       hint="give a folder (IDX files, train/<class>/ images, train.csv), a .csv or an .npz file")
    if dataset in FORMATS and source.kind != dataset:
        raise DslError(f"{path} is {_KIND_NAMES[source.kind]}, but the train declaration says `data = {dataset}` "
                       f"({FORMATS[dataset]})", hint=f"give {FORMATS[dataset]}, or change `data`")
    return source


_KIND_NAMES = {"idx": "a folder of IDX files", **FORMATS}


def _folder_source(root: Path, dataset: str) -> Source:
    # The folder's contents say its format: train/ of class folders, train.csv, else IDX files.
    if (root / "train").is_dir():
        return Source("images", dataset, root)
    for name in ("train.csv", "train.tsv"):
        if (root / name).is_file():
            return Source("csv", dataset, root / name)
    if dataset in FORMATS:
        layout = {"images": "root/train/<class>/*.png", "csv": "root/train.csv",
                  "npz": "an .npz file, not a folder"}[dataset]
        raise DslError(f"{root} is not {FORMATS[dataset]}", hint=f"expected {layout}")
    return Source("idx", dataset, _idx_folder(root, dataset))


def describe_source(name: str, data: str | os.PathLike | None = None) -> str:
    """One line for the trainer: "embedded MNIST subset (5,000 train / 1,000 test)" or a path."""
    return resolve_source(name, data).describe()


def _idx_folder(root: Path, dataset: str) -> Path:
    # The shared layout is root/<dataset>/<file>; a folder holding the files directly works too.
    folders = [root / sub for sub in DATASETS[dataset][1]] + [root]
    for folder in folders:
        if any(folder.glob("*-images-idx3-ubyte*")):
            _check_not_other_dataset(folder, dataset)
            return folder
    raise DslError(f"{DATASETS[dataset][2]} IDX files not found under {root}",
                   hint=f"expected {root / dataset / 'train-images-idx3-ubyte.gz'} "
                        "(or the files directly in that folder)")


def _check_not_other_dataset(folder: Path, dataset: str) -> None:
    # Both datasets have the same file names: the folder's name is the only clue to a mix-up.
    for other, (_, folder_names, title) in DATASETS.items():
        if other != dataset and folder.name.lower() in folder_names:
            raise DslError(f"{folder} looks like the {title} folder, but this run asks for "
                           f"{DATASETS[dataset][2]}",
                           hint=f"point at its parent folder, or at the {DATASETS[dataset][2]} files")


# ------------------------------------------------------------------ loading
def load_dataset(name: str, split: str, data: str | os.PathLike | None = None,
                 label_column: str | None = None) -> dict[str, np.ndarray]:
    """One split of a dataset as {field: array}. From IDX files or the embedded subset:
    {"image": uint8 [n, 28, 28], "label": uint8 [n]}; from an .npz: its arrays as they are; from an
    image folder: {"image": uint8 [n, h, w] or [n, h, w, 3], "label": int64 [n]}; from a CSV:
    {"features": float32 [n, k], "label": int64 or float32 [n]} (`label` read from `label_column`).
    The arrays may be read-only (they view the file's bytes); preprocess() makes new ones."""
    _check_split(split)
    source = resolve_source(name, data)
    if label_column is not None and source.kind != "csv":
        raise DslError(f"`label_column` names a column of a CSV file, and the data is not one: {source.describe()}",
                       hint="remove it, or give a CSV file")
    if source.kind == "embedded":  # one file for both datasets: the name picks the arrays
        return _load_embedded(source.path, f"{source.dataset}_{split}")
    if source.kind == "csv":
        return _load_csv(source.path, split, label_column)
    if source.kind == "text":
        raise DslError(f"{source.path} is a text file: the train declaration must say `data = text`",
                       hint="data = text  seq = 64  (windows of 64 characters)")
    return READERS[source.kind](source.path, split)


def has_split(name: str, split: str, data: str | os.PathLike | None = None) -> bool:
    """Whether the data holds `split` (a CSV without NAME_test.csv has no test split); a split that
    exists but is broken is load_dataset's to report."""
    _check_split(split)
    source = resolve_source(name, data)
    if split == "train" or source.kind in ("idx", "embedded"):
        return True
    if source.kind == "text":  # (its validation share is its only evaluated split)
        return False
    if source.kind == "images":
        return (source.path / split).exists()
    if source.kind == "csv":
        return os.path.lexists(_csv_file(source.path, split))
    try:
        with np.load(source.path, allow_pickle=False) as z:
            return any(_split_field(k, split) is not None for k in z.files)
    except Exception:  # a damaged archive: load_dataset says how
        return True


def _load_embedded(path: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        prefix = f"{split}_"
        return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}


def _load_idx(folder: Path, split: str) -> dict[str, np.ndarray]:
    prefix = SPLITS[split]
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != IMAGE_SIZE:
        raise DslError(f"{folder}: {split} images are {images.shape[1]}x{images.shape[2]}, "
                       f"expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
    if len(images) != len(labels):
        raise DslError(f"{folder}: {len(images)} {split} images but {len(labels)} labels "
                       f"in {labels_path.name}")
    return {"image": images, "label": labels}


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    raise DslError(f"`{name}` (.gz or raw) not found under {folder}",
                   hint=f"expected {folder / (name + '.gz')}")


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # Decide by content, not by name: a user may have unpacked without renaming.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DslError(f"cannot read {path}: {e or type(e).__name__}",
                       hint="the file may be truncated or corrupt; download it again") from None


def read_idx(path, magic: int) -> np.ndarray:
    """The uint8 array in IDX file `path` (.gz or raw), checking its magic number and size."""
    path = Path(path)
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DslError(f"{path} is not an IDX file: only {len(data)} bytes")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DslError(f"{path} is not an IDX file of the expected kind: magic {got}, "
                       f"expected {magic}", hint="images have magic 2051, labels 2049")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = math.prod(dims)  # Python integers: 2^31 x 2^31 x 4 must not wrap around to 0
    if len(data) - header != size:
        raise DslError(f"{path} is truncated or corrupt: header says {dims} "
                       f"({size} bytes), the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def _split_field(key: str, split: str) -> str | None:
    """The plain field name `key` stands for in `split`, or None when it belongs to the other."""
    for marker in ("test", "train"):
        if key.endswith("_" + marker) or key.startswith(marker + "_"):
            plain = key[:-len(marker) - 1] if key.endswith("_" + marker) else key[len(marker) + 1:]
            return plain if marker == split else None
    return key if split == "train" else None


def _load_npz(path: Path, split: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DslError(f"{path} is not an .npz file (not a zip archive)",
                       hint="write it with numpy.savez(path, image=..., label=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {}
            for key in z.files:
                field = _split_field(key, split)
                if field is None:
                    continue
                arrays[field] = z[key]
                # np.load hands back a member that is not an .npy file as raw bytes.
                if not isinstance(arrays[field], np.ndarray):
                    raise DslError(f"cannot read {path}: member `{key}` is not a numpy array")
                _check_npz_array(path, key, arrays[field])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DslError(f"cannot read {path}: {e}") from None
    if not arrays:
        example = "x_test or test_x" if split == "test" else "x (or x_train / train_x)"
        raise DslError(f"{path} has no {split} arrays (its arrays: {', '.join(z.files) or 'none'})",
                       hint=f"name the {split} arrays like {example}")
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"`{k}` {n}" for k, n in counts.items())
        raise DslError(f"{path}: the {split} arrays hold different numbers of examples ({listed})")
    return arrays


def _check_npz_array(path: Path, name: str, a: np.ndarray) -> None:
    """An array of examples: one entry per example along its first axis, of real numbers (a complex
    array would lose its imaginary part, a string array cannot be computed with)."""
    if a.ndim == 0:
        raise DslError(f"{path}: the array `{name}` is a single value, not one entry per example",
                       hint="save an array whose first axis counts the examples")
    if a.dtype.kind not in "biuf":
        kind = {"c": "complex numbers", "U": "text", "S": "bytes", "V": "records", "M": "dates",
                "m": "time spans", "O": "Python objects"}.get(a.dtype.kind, a.dtype.name)
        raise DslError(f"{path}: the array `{name}` holds {kind} ({a.dtype.name}), not real numbers",
                       hint="save pixels and labels as integer or float arrays")


# ------------------------------------------------------------------ image folders
def _load_images(root: Path, split: str, folder: Path | None = None) -> dict[str, np.ndarray]:
    """root/SPLIT/<class>/*.png|jpg (or `folder`/<class>/...): the class folders of train/, sorted by
    name, are labels 0, 1, ... Grey images stay [h, w]; if any is in colour, all become RGB [h, w, 3].
    Images of different sizes come back as an object array (one array each) that a `resize(h, w)` pipe
    makes one block."""
    classes = _image_classes(root / "train")
    folder = folder or root / split
    if not folder.is_dir():
        raise DslError(f"{root} has no {split}/ folder" if not os.path.lexists(folder) else f"{folder} is not a folder",
                       hint=f"expected {folder / '<class>' / '*.png'}")
    unknown = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in classes)
    if unknown:
        raise DslError(f"{folder / unknown[0]}: the class `{unknown[0]}` has no folder in {root / 'train'}",
                       hint=f"the training classes are {', '.join(classes)}")
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()) if (folder / name).is_dir() else ():
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                images.append(_read_image(f))
                labels.append(label)
    if not images:
        raise DslError(f"{folder} holds no images", hint=f"expected {folder / '<class>' / '*.png'} (or .jpg)")
    if any(a.ndim == 3 for a in images):  # one colour image makes the whole split RGB
        images = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in images]
    if len({a.shape for a in images}) == 1:
        stacked = np.stack(images)
    else:
        stacked = np.empty(len(images), object)
        stacked[:] = images
    return {"image": stacked, "label": np.asarray(labels, np.int64)}


def _image_classes(train: Path) -> list[str]:
    if not train.is_dir():
        raise DslError(f"{train} is not a folder", hint=f"expected {train / '<class>' / '*.png'}")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DslError(f"{train} holds no class folders", hint=f"expected {train / '<class>' / '*.png'}, "
                                                               "one folder per class")
    return classes


def _read_image(path: Path) -> np.ndarray:
    """uint8 [h, w] (grey) or [h, w, 3] (colour: an alpha channel or palette is dropped)."""
    from PIL import Image  # lazy: only image folders need Pillow

    check_regular(path, "the image")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            return np.asarray(im, np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
        raise DslError(f"cannot read the image {path}: {str(e).split(chr(10))[0] or type(e).__name__}",
                       hint="the file is truncated or not a PNG/JPEG image; replace or remove it") from None


# ------------------------------------------------------------------ CSV files
def _csv_file(train: Path, split: str) -> Path:
    """The file of a split: train.csv -> test.csv, wine.csv -> wine_test.csv."""
    if split == "train":
        return train
    stem = "test" if train.stem == "train" else f"{train.stem}_test"
    return train.with_name(stem + train.suffix)


def _load_csv(train: Path, split: str, label_column: str | None = None) -> dict[str, np.ndarray]:
    """A header row naming the columns, then numbers: the label column (`label_column`, else the first
    of CSV_LABELS) is `label` (int64 when every value is a whole number, else float32), every other
    column a feature of `features`."""
    path = _csv_file(train, split)
    if not os.path.lexists(path):
        raise DslError(f"{train} has no {split} split: {path} not found",
                       hint=f"write the {split} examples to {path.name}, or hold some out with `validation = 0.1`")
    check_regular(path, f"the {split} file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(r, n) for n, r in enumerate(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv"
                                                             else ","), 1) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DslError(f"cannot read {path}: {e}", hint="a CSV file is UTF-8 text") from None
    if not rows:
        raise DslError(f"{path} is empty", hint="the first row names the columns, the others hold numbers")
    header = [c.strip() for c in rows[0][0]]
    if all(_number(c) is not None for c in header):
        raise DslError(f"{path}: the first row holds numbers, not column names",
                       hint=f"add a header row naming the columns, one of them {' or '.join(CSV_LABELS)}")
    if len(set(header)) != len(header) or "" in header:
        bad = next(c for c in header if header.count(c) > 1 or not c)
        raise DslError(f"{path}: the column name `{bad}` is " + ("empty" if not bad else "used twice"))
    label = next((c for c in ((label_column,) if label_column else CSV_LABELS) if c in header), None)
    if label is None:
        raise DslError(f"{path} has no `{label_column or 'label'}` column (its columns: {', '.join(header)})",
                       hint=did_you_mean(label_column, header) if label_column else
                       "name the column to predict `label` (or `target`), or say which it is: label_column = \"NAME\"")
    values = np.empty((len(rows) - 1, len(header)), np.float64)
    for i, (row, line) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DslError(f"{path}, line {line}: {len(row)} values, but the header names {len(header)} columns")
        for j, cell in enumerate(row):
            v = _number(cell)
            if v is None:
                raise DslError(f"{path}, line {line}, column `{header[j]}`: "
                               + (f"`{cell.strip()}` is not a finite number" if cell.strip() else "a missing value"),
                               hint="every column must be numeric: encode categories as numbers, fill in gaps")
            values[i, j] = v
    if split != "train":  # the model was built for the training file's columns, in its order
        want = _csv_header(train)
        if want is not None and want != header:
            raise DslError(f"{path}: its columns ({', '.join(header)}) are not those of {train} "
                           f"({', '.join(want)})", hint="write both files with the same header")
    y = values[:, header.index(label)]
    features = np.delete(values, header.index(label), axis=1).astype(np.float32)
    y = y.astype(np.int64) if np.all(y == np.round(y)) and np.all(np.abs(y) < 2**53) else y.astype(np.float32)
    return {"features": features, "label": y}


def _csv_header(path: Path) -> list[str] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","):
                if any(c.strip() for c in row):
                    return [c.strip() for c in row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def validation_folder(name: str, data, folder: str | None) -> Path | None:
    """The folder of an image folder's validation split: `validation = "path"` (relative to the data
    root), else root/val/ where it exists; None for other data or without one."""
    source = resolve_source(name, data)
    if source.kind != "images":
        return None
    if folder is None:
        return source.path / "val" if (source.path / "val").is_dir() else None
    path = Path(folder).expanduser()
    path = path if path.is_absolute() else source.path / path
    if not path.is_dir():
        raise DslError(f"the validation folder {path} " + ("is not a folder" if os.path.lexists(path)
                                                           else "does not exist"),
                       hint=f"give a folder of class folders, e.g. {source.path / 'val'} (a relative path is "
                            f"read from the data root {source.path})")
    return path


def load_validation(name: str, data, folder: Path) -> dict[str, np.ndarray]:
    """An image folder's validation split from `folder`/<class>/*.png (the classes of root/train/)."""
    return _load_images(resolve_source(name, data).path, "val", folder)


# Format -> reader(path, split) -> {field: array}; resolve_source picks the format.
READERS = {"idx": _load_idx, "npz": _load_npz, "images": _load_images, "csv": _load_csv}


# ------------------------------------------------------------------ plain text
def load_text(path: Path, seq: int, stride: int, validation: float) -> tuple[dict, dict | None, str]:
    """A character-level language model's data: (train, held out or None, vocabulary).

    The vocabulary is every distinct character of the whole file, sorted: character i is class i.
    The file's last `validation` share (contiguous, so no window of it overlaps the training text)
    is held out. Each part gives windows of `seq` characters starting every `stride` characters:
    `chars` [N, seq] (class numbers), `next` [N, seq] (each one's successor) and `next_char` [N] (the
    character after the window); unsigned integers as small as the vocabulary allows."""
    check_regular(path, "the text file")
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DslError(f"{path} is not UTF-8 text: byte {e.start:,} (line {line}) is {raw[e.start:e.start + 1]!r}",
                       hint="save it as UTF-8") from None
    vocabulary = "".join(sorted(set(text)))
    dtype = np.uint8 if len(vocabulary) <= 256 else np.uint32
    codes = np.searchsorted(np.frombuffer(vocabulary.encode("utf-32-le"), np.uint32),
                            np.frombuffer(text.encode("utf-32-le"), np.uint32)).astype(dtype)
    cut = len(codes) - int(round(len(codes) * validation)) if validation else len(codes)
    parts = [_windows(codes[:cut], seq, stride)] + ([_windows(codes[cut:], seq, stride)] if validation else [])
    for part, name in zip(parts, ("training", "validation")):
        if not len(part["chars"]):
            size = cut if name == "training" else len(codes) - cut
            raise DslError(f"the {name} text of {path} has {size:,} characters: no window of seq = {seq} "
                           f"characters and the one after it fits", hint="a longer file, or a smaller seq")
    return parts[0], (parts[1] if validation else None), vocabulary


def _windows(codes: np.ndarray, seq: int, stride: int) -> dict[str, np.ndarray]:
    if len(codes) < seq + 1:
        empty = np.zeros((0, seq), codes.dtype)
        return {"chars": empty, "next": empty, "next_char": np.zeros(0, codes.dtype)}
    # (views of the text: N windows of seq + 1 characters cost no memory until a batch is taken)
    w = np.lib.stride_tricks.sliding_window_view(codes, seq + 1)[::stride]
    return {"chars": w[:, :-1], "next": w[:, 1:], "next_char": w[:, -1]}


def require_fields(arrays: dict[str, np.ndarray], fields, where: str) -> None:
    """A clear error when a split lacks a field the model feeds from (e.g. an .npz without `y`)."""
    for field in fields:
        if field not in arrays:
            hint = did_you_mean(field, arrays) or "its fields are: " + ", ".join(sorted(arrays))
            raise DslError(f"{where} has no field `{field}`", hint=hint)


def _embedded_counts(dataset: str) -> dict[str, int]:
    with np.load(EMBEDDED, allow_pickle=False) as z:
        return {split: len(z[f"{dataset}_{split}_label"]) for split in SPLITS}


# ------------------------------------------------------------------ batching
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch): reruns shuffle alike."""
    if int(seed) < 0 or int(epoch) < 0:
        raise DslError(f"seed and epoch must be non-negative integers, got seed {seed}, epoch {epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batches(n_examples: int, batch_size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Index arrays of `batch_size` taken from `order` (default range(n)); the last may be short."""
    if batch_size <= 0:
        raise DslError(f"batch size must be positive, got {batch_size}")
    order = np.arange(n_examples) if order is None else np.asarray(order)[:n_examples]
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


# ------------------------------------------------------------------ preprocessing
def _one_hot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DslError(f"one_hot expects labels 0..{classes - 1}, got {labels.min()}..{labels.max()}")
    return np.eye(classes, dtype=np.float32)[labels.astype(np.int64)]


def _channels_first(images: np.ndarray) -> np.ndarray:
    if images.ndim != 3:
        raise DslError(f"channels_first expects images [n, h, w], got shape {list(images.shape)}")
    return images[:, None]


# Name -> function; `preprocess` applies them in the order given.
PREPROCESS = {
    "scale01": lambda a: np.asarray(a, np.float32) / np.float32(255),
    "scale11": lambda a: (np.asarray(a, np.float32) - np.float32(127.5)) / np.float32(127.5),
    "flatten": lambda a: np.reshape(a, (len(a), -1)),
    "channels_first": _channels_first,
    "one_hot": _one_hot,
    "int64": lambda a: np.asarray(a, np.int64),
}


def preprocess(array: np.ndarray, ops) -> np.ndarray:
    """`array` passed through the named PREPROCESS steps in order, e.g. ["scale01", "flatten"]."""
    for op in [ops] if isinstance(ops, str) else ops:
        if op not in PREPROCESS:
            known = "known steps: " + ", ".join(PREPROCESS)
            close = did_you_mean(op, PREPROCESS)
            raise DslError(f"unknown preprocessing step `{op}`",
                           hint=f"{close} ({known})" if close else known)
        array = PREPROCESS[op](array)
    return array
