"""Issue 20, data formats: `dslc train` on .npz files of any names, classes and targets, image folders
and CSV files, with a validation share; the specs tabular.dsl and digits.dsl on scikit-learn's
bundled data (written out here, no download); every malformed input one message and exit 1.

`python tests/test_data_formats.py DIR` writes the data the README's runs use: DIR/digits (an image
folder), DIR/wine and DIR/diabetes (train.csv, test.csv).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_cli import checkpoint, npz, one_error, same_arrays, train  # noqa: E402


# ------------------------------------------------------------------ scikit-learn's bundled data, written out
def _split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a fixed fifth of the examples is the test split."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n // 5:]), np.sort(order[:n // 5])


def write_digits(root: Path, limit: int | None = None) -> Path:
    """load_digits as root/{train,test}/<digit>/<i>.png: 8x8 grey, 0-16 mapped to 0-255."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)
    for split, idx in zip(("train", "test"), _split(len(images))):
        for i in idx[:limit]:
            folder = root / split / str(d.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    return root


def write_table(root: Path, name: str) -> Path:
    """load_wine / load_breast_cancer / load_diabetes as root/train.csv and root/test.csv (the
    feature columns, then `label`); returns the train file."""
    import sklearn.datasets as S

    d = getattr(S, f"load_{name}")()
    root.mkdir(parents=True, exist_ok=True)
    header = [c.replace(" ", "_") for c in d.feature_names] + ["label"]
    for split, idx in zip(("train", "test"), _split(len(d.target))):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in idx:
                w.writerow([repr(float(v)) for v in d.data[i]] + [int(d.target[i])])
    return root / "train.csv"


# ------------------------------------------------------------------ helpers
def run(capsys, dsl, data, out, *extra):
    return train(capsys, dsl, data, out, *extra)


def history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


def spec(tmp: Path, text: str, name: str = "m.dsl") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


@pytest.fixture(scope="module")
def sk(tmp_path_factory):
    """The scikit-learn data, written once: digits (a 300-image subset), wine, diabetes."""
    pytest.importorskip("sklearn")
    tmp = tmp_path_factory.mktemp("sk")
    return {"digits": write_digits(tmp / "digits", limit=240), "wine": write_table(tmp / "wine", "wine"),
            "diabetes": write_table(tmp / "diabetes", "diabetes")}


# ------------------------------------------------------------------ 1. the specs on real data (CI smoke runs)
def test_digits_spec_on_an_image_folder(sk, capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, ROOT / "specs" / "digits.dsl", sk["digits"], out, "--epochs", 2)
    assert code == 0, err
    assert f"data: {sk['digits']}" in stdout
    h = history(out)
    assert [r["epoch"] for r in h] == [1, 2] and h[-1]["loss"] < h[0]["loss"]
    assert {"val_accuracy", "test_accuracy"} <= h[-1].keys() and h[-1]["test_accuracy"] > 0.3, h
    assert (out / "DigitsNet.onnx").is_file() and (out / "kernels.png").is_file()


def test_digits_augmented_spec(sk, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, ROOT / "specs" / "digits.dsl", sk["digits"], out, "--target", "digits_augmented",
                       "--max-steps", 4)
    assert code == 0, err
    assert checkpoint(out)[1]["global_step"] == 4


def test_wine_spec_on_a_csv_file(sk, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, ROOT / "specs" / "tabular.dsl", sk["wine"], out, "--target", "wine", "--epochs", 3)
    assert code == 0, err
    h = history(out)
    assert h[-1]["test_accuracy"] > 0.6 and "val_accuracy" in h[-1], h


def test_diabetes_spec_regression(sk, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, ROOT / "specs" / "tabular.dsl", sk["diabetes"].parent, out, "--target", "diabetes",
                       "--epochs", 3)
    assert code == 0, err
    row = history(out)[-1]
    assert {"val_r2", "test_r2", "test_mse", "test_mae", "val_mse", "val_mae"} <= row.keys(), row
    assert 0 < row["test_r2"] < 1 and row["test_mse"] > 0 and row["test_mae"] > 0, row


# ------------------------------------------------------------------ 2. .npz: any names, class counts, targets
CLASSIFIER = """
model Net(x: f32[N, 6]) -> logits {{
    logits = dense(dense(x, 16) |> relu, {classes})
}}
step fit(x: f32[N, 6], y: i64[N]) updates Net using adam(lr=0.02) {{
    minimize sparse_categorical_crossentropy(Net(x), y, from_logits=true)
}}
train t {{
    data     = npz
    x        = readings |> float32 |> standardize
    y        = kind |> int64
    batch    = 32
    epochs   = {epochs}
    {extra}
    steps    = [fit(x, y)]
    evaluate = accuracy(Net(x), y)
}}
"""


def blobs(path: Path, classes: int, n: int = 400, n_test: int = 100, **override) -> Path:
    """Separable clusters, one per class, in 6 int16 features far from 0 (standardize matters)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 60, (classes, 6))

    def make(k):
        y = rng.integers(0, classes, k)
        return (centres[y] + rng.normal(0, 5, (k, 6)) + 1000).astype(np.int16), y.astype(np.uint8)
    (x, y), (xt, yt) = make(n), make(n_test)
    np.savez(path, **{"readings": x, "kind": y, "readings_test": xt, "kind_test": yt, **override})
    return path


TOP3 = "evaluate = [accuracy(Net(x), y), accuracy(Net(x), y, k=3)]"


def test_npz_with_its_own_names_and_15_classes(capsys, tmp_path):
    text = CLASSIFIER.format(classes=15, epochs=4, extra="validation = 0.2")
    dsl = spec(tmp_path, text.replace("evaluate = accuracy(Net(x), y)", TOP3))
    code, stdout, err = run(capsys, dsl, blobs(tmp_path / "b.npz", 15), tmp_path / "out")
    assert code == 0, err
    assert "on 320 examples" in stdout  # 400 less the 80 held out
    first, last = history(tmp_path / "out")[0], history(tmp_path / "out")[-1]
    assert last["test_accuracy"] > 0.8 and last["val_accuracy"] > 0.8, last
    assert all(r[f"{s}_top3_accuracy"] >= r[f"{s}_accuracy"] for r in (first, last) for s in ("val", "test"))
    assert first["test_top3_accuracy"] > first["test_accuracy"], first


@pytest.mark.parametrize("evaluate, words", [
    ("accuracy(Net(x), y, k=4)", ["accuracy with k=4: Net scores only 3 classes"]),
    ("accuracy(Net(x), y, k=0)", ["`k` counts the highest scores a label may be among: an integer >= 1"]),
    ("accuracy(Net(x), y, top=2)", ["accuracy has no option `top`"]),
    ("r2(Net(x), y, k=2)", ["r2 has no option `k`"]),
], ids=["k-above-classes", "k-0", "unknown-option", "k-of-r2"])
def test_bad_evaluation_options(capsys, tmp_path, evaluate, words):
    text = CLASSIFIER.format(classes=3, epochs=1, extra="").replace("accuracy(Net(x), y)", evaluate)
    code, _, err = run(capsys, spec(tmp_path, text), blobs(tmp_path / "b.npz", 3), tmp_path / "out")
    assert code == 1, err
    one_error(err, *words)


@pytest.mark.parametrize("split", ["train", "test"])
def test_npz_label_beyond_the_models_classes(capsys, tmp_path, split):
    dsl = spec(tmp_path, CLASSIFIER.format(classes=15, epochs=1, extra=""))
    key, n = ("kind", 400) if split == "train" else ("kind_test", 100)
    data = blobs(tmp_path / "b.npz", 15, **{key: np.full(n, 15, np.uint8)})
    code, _, err = run(capsys, dsl, data, tmp_path / "out")
    assert code == 1, err
    one_error(err, "holds the label 15, outside [0, 15)", "Net gives 15 class scores")


def _bad_npz(kind: str, tmp: Path) -> tuple[Path, list[str]]:
    path = tmp / "b.npz"
    if kind == "no_field":
        np.savez(path, readings=np.zeros((8, 6)), readings_test=np.zeros((8, 6)))
        return path, [f"the training split of {path} has no field `kind`", "its fields are: readings"]
    if kind == "no_test":
        np.savez(path, readings=np.zeros((8, 6)), kind=np.zeros(8, np.uint8))
        return path, [f"{path} has no test arrays", "x_test or test_x"]
    if kind == "text":
        blobs(path, 3, readings=np.full((400, 6), "a"))
        return path, [f"{path}: the array `readings` holds text (str32), not real numbers"]
    if kind == "a_folder":
        (tmp / "pics" / "train").mkdir(parents=True)
        return tmp / "pics", [str(tmp / "pics"), "is an image folder, but the train declaration says `data = npz`"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no_field", "no_test", "text", "a_folder"])
def test_bad_npz(capsys, tmp_path, kind):
    data, words = _bad_npz(kind, tmp_path)
    code, _, err = run(capsys, spec(tmp_path, CLASSIFIER.format(classes=3, epochs=1, extra="")), data, tmp_path / "out")
    assert code == 1, err
    one_error(err, *words)


REGRESSION = """
model Reg(x: f32[N, 3]) -> y {
    y = dense(x, 1)
}
step fit(x: f32[N, 3], t: f32[N, 1]) updates Reg using adam(lr=0.05) {
    minimize mse(Reg(x), t)
}
train r {
    data     = npz
    batch    = 32
    epochs   = 6
    steps    = [fit(x, t)]
    evaluate = [mse(Reg(x), t), mae(Reg(x), t), r2(Reg(x), t)]
}
"""


def test_npz_float_targets_regression(capsys, tmp_path):
    rng = np.random.default_rng(0)
    w = np.array([[1.5], [-2.0], [0.5]], np.float32)
    x, xt = rng.normal(size=(512, 3)).astype(np.float32), rng.normal(size=(128, 3)).astype(np.float32)
    t, tt = x @ w + 0.1 * rng.normal(size=(512, 1)), xt @ w + 0.1 * rng.normal(size=(128, 1))
    np.savez(tmp_path / "r.npz", x=x, t=t.astype(np.float32), x_test=xt, t_test=tt.astype(np.float32))
    code, _, err = run(capsys, spec(tmp_path, REGRESSION), tmp_path / "r.npz", tmp_path / "out")
    assert code == 0, err
    rows = history(tmp_path / "out")
    assert rows[-1]["test_r2"] > 0.9 and rows[-1]["test_mse"] < rows[0]["test_mse"], rows
    # the figures are those of the exported model's predictions
    import onnxruntime as ort
    pred = ort.InferenceSession(str(tmp_path / "out" / "Reg.onnx")).run(None, {"x": xt})[0]
    assert np.isclose(rows[-1]["test_mse"], np.mean((pred - tt) ** 2), rtol=1e-4)
    assert np.isclose(rows[-1]["test_mae"], np.mean(np.abs(pred - tt)), rtol=1e-4)
    assert np.isclose(rows[-1]["test_r2"], 1 - np.sum((pred - tt) ** 2) / np.sum((tt - tt.mean()) ** 2), rtol=1e-4)


def test_regression_targets_of_the_wrong_width(capsys, tmp_path):
    x = np.zeros((64, 3), np.float32)
    np.savez(tmp_path / "r.npz", x=x, t=np.zeros((64, 1), np.float32), x_test=x, t_test=np.zeros((64, 1), np.float32))
    dsl = spec(tmp_path, REGRESSION.replace("r2(Reg(x), t)", "r2(Reg(x), x)"))
    code, _, err = run(capsys, dsl, tmp_path / "r.npz", tmp_path / "out")
    assert code == 1, err
    one_error(err, "r2: Reg gives 1 value(s) per example, the field `x` 3")


# ------------------------------------------------------------------ 3. image folders
COLOUR = """
model Net(image: f32[N, 3, 6, 6]) -> logits {
    logits = dense(flatten(conv2d(image, 4, kernel=3) |> relu), 3)
}
step fit(image: f32[N, 3, 6, 6], label: i64[N]) updates Net using adam(lr=0.05) {
    minimize sparse_categorical_crossentropy(Net(image), label, from_logits=true)
}
train t {
    data     = images
    image    = image |> resize(8, 8) |> random_crop(6, 6) |> random_flip |> scale(0, 1) |> channels_first
    batch    = 8
    epochs   = 2
    steps    = [fit(image, label)]
    evaluate = accuracy(Net(image), label)
}
"""


def write_images(root: Path, classes=("cat", "dog", "eel"), n=8, sizes=((9, 7), (12, 12)), mode="RGB",
                 splits=("train", "test")) -> Path:
    """n images per class and split, alternating between `sizes`, colour (mode RGB) or grey (L)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in splits:
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                pixels = rng.integers(0, 60, shape) + 60 * k
                name = f"{i}.{'png' if i % 2 else 'jpg'}"
                Image.fromarray(pixels.astype(np.uint8), mode).save(root / split / c / name)
    return root


def test_colour_images_of_mixed_sizes_resized_cropped_flipped(capsys, tmp_path):
    data = write_images(tmp_path / "pics")
    (data / "train" / "cat" / "notes.txt").write_text("not an image: skipped")
    code, _, err = run(capsys, spec(tmp_path, COLOUR), data, tmp_path / "out", "--epochs", 6)
    assert code == 0, err
    assert history(tmp_path / "out")[-1]["test_accuracy"] > 0.5


def test_augmented_runs_resume_bit_identical(capsys, tmp_path):
    data, dsl = write_images(tmp_path / "pics"), spec(tmp_path, COLOUR)
    assert run(capsys, dsl, data, tmp_path / "ref", "--max-steps", 5)[0] == 0
    assert run(capsys, dsl, data, tmp_path / "out", "--max-steps", 2)[0] == 0
    code, _, err = run(capsys, dsl, data, tmp_path / "out", "--max-steps", 5, "--resume")
    assert code == 0, err
    assert same_arrays(npz(tmp_path / "out" / "weights.npz"), npz(tmp_path / "ref" / "weights.npz"))


GREY = COLOUR.replace("3, 6, 6", "1, 6, 6").replace("resize(8, 8) |> random_crop(6, 6) |> random_flip", "resize(6, 6)")


def _bad_images(kind: str, tmp: Path) -> tuple[Path, str, list[str]]:
    root = tmp / "pics"
    if kind == "no_train":
        root.mkdir()
        return root, GREY, [f"{root} is not an image folder", "root/train/<class>/*.png"]
    if kind == "no_classes":
        (root / "train").mkdir(parents=True)
        return root, GREY, [f"{root / 'train'} holds no class folders"]
    if kind == "no_images":
        write_images(root, mode="L", splits=("test",))
        (root / "train" / "cat").mkdir(parents=True)
        return root, GREY, [f"{root / 'train'} holds no images"]
    if kind == "corrupt":
        write_images(root, mode="L")
        (root / "train" / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        return root, GREY, ["cannot read the image", str(root / "train" / "dog" / "3.png")]
    if kind == "truncated":
        write_images(root, mode="L", sizes=((64, 64),))
        f = root / "train" / "eel" / "1.png"
        f.write_bytes(f.read_bytes()[:100])
        return root, GREY, ["cannot read the image", str(f)]
    if kind == "unknown_test_class":
        write_images(root, mode="L")
        write_images(root, classes=("fox",), mode="L", splits=("test",))
        return root, GREY, [f"{root / 'test' / 'fox'}: the class `fox` has no folder", "cat, dog, eel"]
    if kind == "no_test":
        write_images(root, mode="L", splits=("train",))
        return root, GREY, [f"{root} has no test/ folder"]
    if kind == "mixed_sizes":
        write_images(root, mode="L")
        return root, GREY.replace("resize(6, 6) |> ", ""), ["the `image` images differ in size (9x7, 12x12)",
                                                            "resize"]
    if kind == "crop_too_big":
        write_images(root)
        return root, COLOUR.replace("random_crop(6, 6)", "random_crop(9, 9)"), \
            ["random_crop(9, 9) is larger than the 8x8 images"]
    if kind == "not_images":
        (tmp / "t.csv").write_text("a,label\n1,0\n")
        return tmp / "t.csv", GREY, [str(tmp / "t.csv"),
                                     "is a CSV file, but the train declaration says `data = images`"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no_train", "no_classes", "no_images", "corrupt", "truncated", "unknown_test_class",
                                  "no_test", "mixed_sizes", "crop_too_big", "not_images"])
def test_bad_image_folders(capsys, tmp_path, kind):
    data, text, words = _bad_images(kind, tmp_path)
    code, _, err = run(capsys, spec(tmp_path, text), data, tmp_path / "out")
    assert code == 1, err
    one_error(err, *words)
    assert not (tmp_path / "out" / "checkpoint.npz").exists()


# ------------------------------------------------------------------ 4. CSV files
TABLE = """
model Net(x: f32[N, 2]) -> logits {
    logits = dense(x, 2)
}
step fit(x: f32[N, 2], label: i64[N]) updates Net using adam(lr=0.05) {
    minimize sparse_categorical_crossentropy(Net(x), label, from_logits=true)
}
train t {
    data     = csv
    x        = features |> standardize
    batch    = 8
    epochs   = 3
    steps    = [fit(x, label)]
    evaluate = accuracy(Net(x), label)
}
"""
GOOD = "height,weight,label\n" + "".join(f"{150 + i},{50 + (i % 7)},{int(i >= 20)}\n" for i in range(40))


def test_csv_single_file_with_a_validation_share(capsys, tmp_path):
    (tmp_path / "people.csv").write_text(GOOD)
    dsl = spec(tmp_path, TABLE.replace("steps ", "validation = 0.25\n    steps "))
    code, stdout, err = run(capsys, dsl, tmp_path / "people.csv", tmp_path / "out")
    assert code == 0, err
    assert "on 30 examples" in stdout  # 40 less the 10 held out
    row = history(tmp_path / "out")[-1]
    assert "val_accuracy" in row and "test_accuracy" not in row and row["val_accuracy"] > 0.6, row


@pytest.mark.parametrize("column, words", [
    ('"outcome"', None),
    ("outcom", ["has no `outcom` column (its columns: height, weight, outcome)", "did you mean `outcome`?"]),
], ids=["named", "misspelt"])
def test_csv_label_column(capsys, tmp_path, column, words):
    for name in ("d.csv", "d_test.csv"):
        (tmp_path / name).write_text(GOOD.replace("label", "outcome"))
    dsl = spec(tmp_path, TABLE.replace("steps ", f"label_column = {column}\n    steps "))
    code, _, err = run(capsys, dsl, tmp_path / "d.csv", tmp_path / "out")
    if words is None:
        assert code == 0, err
        assert "test_accuracy" in history(tmp_path / "out")[-1]
    else:
        assert code == 1, err
        one_error(err, *words)


def test_label_column_of_an_npz(capsys, tmp_path):
    dsl = spec(tmp_path, CLASSIFIER.format(classes=3, epochs=1, extra='label_column = "kind"'))
    code, _, err = run(capsys, dsl, blobs(tmp_path / "b.npz", 3), tmp_path / "out")
    assert code == 1, err
    one_error(err, "`label_column` names a column of a CSV file, and the data is not one: " + str(tmp_path / "b.npz"))


def test_standardize_is_fitted_on_the_training_split(tmp_path):
    from dslc.lower.program import load_program
    from dslc.runtime.fields import Fields
    from dslc.train.plan import plan
    p = plan(load_program(spec(tmp_path, TABLE)))
    train_x = np.array([[0, 10], [2, 10], [4, 10]], np.float32)
    fields = Fields(p, {"features": train_x, "label": np.zeros(3, np.int64)}, "train")
    test = Fields(p, {"features": np.array([[2, 11]], np.float32), "label": np.zeros(1, np.int64)}, "test",
                  fitted=fields)
    assert np.allclose(fields.get("x", np.arange(3))[:, 0], [-1.2247449, 0, 1.2247449])
    assert np.allclose(test.get("x", np.arange(1)), [[0, 1]])  # the constant feature: centred, not divided


def _bad_csv(kind: str, tmp: Path) -> tuple[Path, list[str], str]:
    f = tmp / "d.csv"
    lines = GOOD.splitlines()
    text = {
        "text_cell": "\n".join(lines[:5] + ["151,heavy,0"] + lines[5:]),
        "missing_cell": "\n".join(lines[:3] + ["151,,0"] + lines[3:]),
        "nan_cell": "\n".join(lines[:3] + ["151,nan,0"] + lines[3:]),
        "ragged": "\n".join(lines[:7] + ["151,50"] + lines[7:]),
        "no_header": "\n".join(lines[1:]),
        "no_label": GOOD.replace("label", "outcome"),
        "duplicate": GOOD.replace("weight", "height"),
        "empty": "",
        "not_utf8": None,
    }.get(kind, GOOD)
    if kind == "not_utf8":
        f.write_bytes(b"height,w\xe9ight,label\n1,2,0\n")
    else:
        f.write_text(text)
    spec_text = TABLE
    if kind in ("test_columns",):
        (tmp / "d_test.csv").write_text(GOOD.replace("weight", "mass"))
    if kind == "fractional_label":
        f.write_text(GOOD.replace(",1\n", ",0.5\n"))
    words = {
        "text_cell": [f"{f}, line 6, column `weight`: `heavy` is not a finite number", "numeric"],
        "missing_cell": [f"{f}, line 4, column `weight`: a missing value"],
        "nan_cell": [f"{f}, line 4, column `weight`: `nan` is not a finite number"],
        "ragged": [f"{f}, line 8: 2 values, but the header names 3 columns"],
        "no_header": [f"{f}: the first row holds numbers, not column names", "header"],
        "no_label": [f"{f} has no `label` column (its columns: height, weight, outcome)", "target"],
        "duplicate": [f"{f}: the column name `height` is used twice"],
        "empty": [f"{f} is empty"],
        "not_utf8": [f"cannot read {f}", "UTF-8"],
        "no_test": [f"{f} has no test split: {tmp / 'd_test.csv'} not found", "validation = 0.1"],
        "test_columns": [f"{tmp / 'd_test.csv'}: its columns (height, mass, label) are not those of {f}"],
        "fractional_label": ["input `label` expects i64[N], but the field `label` gives float32[N]", "int64"],
        "not_csv": [str(tmp / "d.npz"), "is an .npz file, but the train declaration says `data = csv`"],
        "no_data": ["`data = csv` reads your own files, and none were given", "--data"],
    }[kind]
    if kind == "not_csv":
        np.savez(tmp / "d.npz", x=np.zeros(3))
        return tmp / "d.npz", words, spec_text
    return f, words, spec_text


@pytest.mark.parametrize("kind", ["text_cell", "missing_cell", "nan_cell", "ragged", "no_header", "no_label",
                                  "duplicate", "empty", "not_utf8", "no_test", "test_columns", "fractional_label",
                                  "not_csv", "no_data"])
def test_bad_csv(capsys, tmp_path, monkeypatch, kind):
    monkeypatch.delenv("DSLC_DATA", raising=False)
    data, words, text = _bad_csv(kind, tmp_path)
    if kind != "test_columns" and kind != "no_test":
        (tmp_path / "d_test.csv").write_text(GOOD)
    dsl = spec(tmp_path, text)
    if kind == "no_data":
        code = main(["train", str(dsl), "--out", str(tmp_path / "out"), "--device", "cpu"])
        err = capsys.readouterr().err
    else:
        code, _, err = run(capsys, dsl, data, tmp_path / "out")
    assert code == 1, err
    one_error(err, *words)
    assert not (tmp_path / "out" / "checkpoint.npz").exists()


# ------------------------------------------------------------------ 5. the settings' own errors
@pytest.mark.parametrize("line, words", [
    ("validation = 1.5", ["`validation` is the share of the training split held out"]),
    ("validation = 0.001", ["validation = 0.001 of the 40 training examples", "is 0: none of them"]),
    ("data2 = features |> resize(0, 3)", ["resize takes a height and a width, positive integers"]),
], ids=["validation-above-1", "validation-rounds-to-none", "resize-0"])
def test_bad_settings(capsys, tmp_path, line, words):
    (tmp_path / "d.csv").write_text(GOOD)
    (tmp_path / "d_test.csv").write_text(GOOD)
    dsl = spec(tmp_path, TABLE.replace("steps ", line + "\n    steps "))
    code, _, err = run(capsys, dsl, tmp_path / "d.csv", tmp_path / "out")
    assert code == 1, err
    one_error(err, *words)


if __name__ == "__main__":  # write the README's data: python tests/test_data_formats.py DIR
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "sklearn-data")
    print(write_digits(out / "digits"), write_table(out / "wine", "wine"), write_table(out / "diabetes", "diabetes"),
          write_table(out / "breast_cancer", "breast_cancer"))
