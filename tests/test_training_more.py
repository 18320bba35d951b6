"""Issue 20, the rest of a training run as users expect it: learning-rate warm-up (in the graph) and
reduce-on-plateau (a state input the host sets), a validation split given as a folder, a confusion
matrix PNG for classifications, and text generated from a prompt by a character-level language
model (`dslc generate`, and a sample after each epoch of a text run)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import dslc
from dslc.api import generate
from dslc.cli import main
from dslc.train.optimizers import LR_SCALE, scaled_learning_rate
from dslc.train.plan import Plateau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data_formats import COLOUR, spec, write_images  # noqa: E402
from test_train_cli import ROOT, checkpoint, npz, one_error, same_arrays, train, write_npz  # noqa: E402
from test_train_step import SMALL, B, W  # noqa: E402
from test_training_features import SEQUENCE, write, write_topics  # noqa: E402


def rows(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


def _apply(opt: str, scaled: bool = False):
    """The float64 apply graph of SMALL with optimizer `opt` (and the lr_scale input, when scaled)."""
    prog = dslc.loads(SMALL.format(opt=opt))
    if scaled:
        with scaled_learning_rate():
            model = dslc.compile(prog, "fit", emit="apply", float64=True)
    else:
        model = dslc.compile(prog, "fit", emit="apply", float64=True)
    from onnx import numpy_helper
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return model, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), init


def _run(sess, feeds):
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


# ------------------------------------------------------------------ warm-up: in the graph, from the step counter
def linear_warmup(lr, w, after):
    """Hugging Face's shape: (step + 1) / w of the rate during the first w updates, then `after`
    counted from the end of the warm-up."""
    return lambda s: lr * (s + 1) / w if s < w else after(s - w)


def cosine(lr, decay_steps, alpha=0.0):
    return lambda s: lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(s, decay_steps) / decay_steps)) + alpha)


WARMUPS = [
    ("warmup(0.1, steps=5)", linear_warmup(0.1, 5, lambda s: 0.1)),
    ("warmup(lr=0.02, steps=1)", linear_warmup(0.02, 1, lambda s: 0.02)),
    ("cosine_decay(0.1, decay_steps=100, warmup_steps=10)", linear_warmup(0.1, 10, cosine(0.1, 100))),
    ("step_decay(0.1, every=10, factor=0.5, warmup_steps=3)",
     linear_warmup(0.1, 3, lambda s: 0.1 * 0.5 ** math.floor(s / 10))),
    ("exponential_decay(0.1, decay_steps=10, decay_rate=0.5, warmup_steps=4)",
     linear_warmup(0.1, 4, lambda s: 0.1 * 0.5 ** (s / 10))),
    ("cosine_decay(0.1, decay_steps=100, warmup_steps=0)", cosine(0.1, 100)),
]


@pytest.mark.parametrize("schedule,formula", WARMUPS, ids=[s[0] for s in WARMUPS])
def test_warmup_schedules(schedule, formula):
    """sgd with the schedule: w' = w - lr(step) * g, at steps across the warm-up and after it."""
    model, sess, init = _apply(f"sgd(lr={schedule})")
    g = np.random.default_rng(1).standard_normal((3, 2))
    gb = np.random.default_rng(2).standard_normal(2)
    for s in [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 50, 109, 110, 111, 500]:
        out = _run(sess, {f"grad.{W}": g, f"grad.{B}": gb, "step": np.array(s, np.int64)})
        np.testing.assert_allclose(out[f"{W}.next"], init[W] - formula(s) * g, rtol=1e-12, atol=1e-15,
                                   err_msg=f"step {s}")


@pytest.mark.parametrize("opt, words", [
    ("sgd(lr=warmup(0.1))", ["warmup needs `steps`"]),
    ("sgd(lr=warmup(0.1, steps=0))", ["must be a positive integer"]),
    ("sgd(lr=cosine_decay(0.1, decay_steps=10, warmup_steps=-1))", ["warmup_steps", "an integer >= 0"]),
    ("sgd(lr=cosine_decay(0.1, decay_steps=10, warmup_steps=2.5))", ["warmup_steps", "an integer >= 0"]),
])
def test_bad_warmup_one_message(tmp_path, capsys, opt, words):
    path = tmp_path / "m.dsl"
    path.write_text(SMALL.format(opt=opt))
    assert main(["compile", str(path), "--target", "fit", "-o", str(tmp_path)]) == 1
    one_error(capsys.readouterr().err, *words)


# ------------------------------------------------------------------ the learning-rate scale the host sets
@pytest.mark.parametrize("opt", ["sgd(lr=0.1)", "adam(lr=0.01)", "sgd(lr=warmup(0.1, steps=4), momentum=0.9)"])
def test_lr_scale_input_scales_the_update(opt):
    """Compiled for reduce_lr_on_plateau, a step takes `lr_scale` (default 1: the plain update); fed
    0.25 it makes sgd's step a quarter as long. Without it, the graph has no such input."""
    plain, plain_sess, _ = _apply(opt)
    assert LR_SCALE not in [i.name for i in plain.graph.input]
    model, sess, init = _apply(opt, scaled=True)
    assert init[LR_SCALE].shape == () and init[LR_SCALE] == 1.0  # (float64 here: the graph is compiled so)
    g, gb = np.full((3, 2), 0.5), np.full(2, -0.25)
    feeds = {f"grad.{W}": g, f"grad.{B}": gb, "step": np.array(2, np.int64)}
    ref = _run(plain_sess, feeds)
    default = _run(sess, feeds)
    for k in ref:
        np.testing.assert_array_equal(default[k], ref[k])
    if opt == "sgd(lr=0.1)":
        quarter = _run(sess, {**feeds, LR_SCALE: np.array(0.25, init[LR_SCALE].dtype)})
        np.testing.assert_allclose(quarter[f"{W}.next"], init[W] - 0.025 * g, rtol=1e-12, atol=1e-15)


def test_plateau_scales_follow_keras():
    """Keras' ReduceLROnPlateau, cooldown 0, written out by hand for a val_loss history."""
    p = Plateau(patience=2, factor=0.5, min_scale=0.2)
    losses = [1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
    # wait: 0 0 1 2->cut(0.5),0 | 0.8 best: 0 | 1 2->cut(0.25) | 1 2->cut(0.2 floor) | 1 2->cut(0.2)
    assert p.scales(losses, lower_is_better=True) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2]
    # higher is better (accuracy); equal values do not improve; a missing value does not either
    assert Plateau(1).scales([0.5, 0.6, 0.6, None, 0.7], lower_is_better=False) == [1, 1, 0.1, 0.1 * 0.1, 0.1 * 0.1]


PLATEAU = "validation = 0.25\n    monitor = val_accuracy\n    reduce_lr_on_plateau = plateau(patience=1, factor=0.5)"


def test_reduce_on_plateau_end_to_end(tmp_path, capsys):
    # a rate too small to change a prediction: val_accuracy never improves after epoch 1
    data = write_npz(tmp_path / "small.npz")
    out = tmp_path / "out"
    code, stdout, err = train(capsys, write(tmp_path, PLATEAU, epochs=4, optimizer="sgd(lr=1e-12)"), data, out)
    assert code == 0, err
    assert [h["lr_scale"] for h in rows(out)] == [1.0, 0.5, 0.25, 0.125]
    assert "reduce_lr_on_plateau: val_accuracy has not improved for 1 epoch(s): learning rate x 0.5" in stdout
    state, _ = checkpoint(out)
    assert state[f"state/{LR_SCALE}"] == np.float32(0.125)
    assert LR_SCALE not in npz(out / "weights.npz")  # not a weight of a model


def test_reduce_on_plateau_resumes_bit_identical(tmp_path, capsys):
    """A run cut mid-epoch after a reduction, resumed, ends with the uninterrupted run's weights."""
    data = write_npz(tmp_path / "small.npz")
    dsl = write(tmp_path, PLATEAU, epochs=4, optimizer="adam(lr=0.003)")
    assert train(capsys, dsl, data, tmp_path / "ref")[0] == 0
    scales = [h["lr_scale"] for h in rows(tmp_path / "ref")]
    accuracies = [h["val_accuracy"] for h in rows(tmp_path / "ref")]
    expected, best, wait = [], -1.0, 0  # the rule by hand, on the run's own accuracies
    for a in accuracies:
        if a > best:
            best, wait = a, 0
        else:
            wait += 1
        if wait >= 1:
            wait = 0
            expected.append((expected[-1] if expected else 1.0) * 0.5)
        else:
            expected.append(expected[-1] if expected else 1.0)
    assert scales == expected
    assert train(capsys, dsl, data, tmp_path / "out", "--max-steps", 14)[0] == 0  # epoch 3, batch 2 of 6
    code, _, err = train(capsys, dsl, data, tmp_path / "out", "--resume")
    assert code == 0, err
    assert same_arrays(npz(tmp_path / "out" / "weights.npz"), npz(tmp_path / "ref" / "weights.npz"))
    assert same_arrays(checkpoint(tmp_path / "out")[0], checkpoint(tmp_path / "ref")[0])


@pytest.mark.parametrize("setting, words", [
    ("reduce_lr_on_plateau = 2", ["`reduce_lr_on_plateau` needs `monitor`"]),
    ("monitor = loss\n    reduce_lr_on_plateau = plateau(patience=0)", ["`patience` must be an integer >= 1"]),
    ("monitor = loss\n    reduce_lr_on_plateau = plateau(patience=2, factor=1.5)", ["`factor` must be"]),
    ("monitor = loss\n    reduce_lr_on_plateau = plateau(factor=0.5)", ["plateau needs `patience`"]),
    ("monitor = loss\n    reduce_lr_on_plateau = plateau(2, facter=0.5)", ["no option `facter`", "factor"]),
    ("monitor = loss\n    reduce_lr_on_plateau = true", ["a patience (epochs) or plateau("]),
])
def test_bad_plateau_one_message(tmp_path, capsys, setting, words):
    data = write_npz(tmp_path / "small.npz")
    code, _, err = train(capsys, write(tmp_path, setting, epochs=1), data, tmp_path / "out")
    assert code == 1
    one_error(err, *words)


# ------------------------------------------------------------------ a validation folder
def test_validation_folder_root_val_and_named(tmp_path, capsys):
    """root/val/<class>/ is the validation split where it exists; `validation = "PATH"` names another
    (relative to the data root); the training split is then whole."""
    data = write_images(tmp_path / "pics", splits=("train", "test", "val"))
    write_images(tmp_path / "pics", n=4, splits=("holdout",))
    dsl = spec(tmp_path, COLOUR)
    code, stdout, err = train(capsys, dsl, data, tmp_path / "a", "--epochs", 1)
    assert code == 0, err
    assert f"validation: {data / 'val'}" in stdout and "on 24 examples" in stdout
    assert {"val_accuracy", "test_accuracy"} <= rows(tmp_path / "a")[0].keys()
    named = spec(tmp_path, COLOUR.replace("epochs", 'validation = "holdout"\n    epochs'), "named.dsl")
    code, stdout, err = train(capsys, named, data, tmp_path / "b", "--epochs", 1)
    assert code == 0, err
    assert f"validation: {data / 'holdout'}" in stdout and "on 24 examples" in stdout
    # the accuracy over the 12 held-out images, by hand from the exported model
    from PIL import Image
    sess = ort.InferenceSession(str(tmp_path / "b" / "Net.onnx"), providers=["CPUExecutionProvider"])
    correct = 0
    for k, c in enumerate(("cat", "dog", "eel")):
        for f in sorted((data / "holdout" / c).iterdir()):
            x = np.asarray(Image.open(f).convert("RGB").resize((8, 8), Image.BILINEAR), np.float32)[1:7, 1:7] / 255
            correct += int(sess.run(None, {"image": x.transpose(2, 0, 1)[None]})[0].argmax() == k)
    assert rows(tmp_path / "b")[0]["val_accuracy"] == pytest.approx(correct / 12)


@pytest.mark.parametrize("case, words", [
    ("missing", ["the validation folder", "does not exist", "read from the data root"]),
    ("unknown_class", ["the class `fox` has no folder in"]),
    ("empty", ["holds no images"]),
    ("not_images", ["a validation folder is for image folders"]),
])
def test_bad_validation_folder_one_message(tmp_path, capsys, case, words):
    data = write_images(tmp_path / "pics")
    text = COLOUR.replace("epochs", 'validation = "val"\n    epochs')
    if case == "unknown_class":
        (data / "val" / "fox").mkdir(parents=True)
    elif case == "empty":
        (data / "val" / "cat").mkdir(parents=True)
    elif case == "not_images":
        text = text.replace("data     = images", "data     = npz")
    code, _, err = train(capsys, spec(tmp_path, text), data, tmp_path / "out")
    assert code == 1
    one_error(err, *words)


# ------------------------------------------------------------------ a confusion matrix
def test_confusion_matrix_png(tmp_path, capsys):
    """Written each epoch for a classification, of the test split; its counts match the model's."""
    from PIL import Image
    from dslc.runtime.plots import plot_confusion
    data = write_npz(tmp_path / "small.npz")
    out = tmp_path / "out"
    code, _, err = train(capsys, write(tmp_path, "", epochs=1), data, out)
    assert code == 0, err
    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    for k in (2, 10, 37, 128):  # any class count
        counts = np.random.default_rng(k).integers(0, 20, (k, k))
        with Image.open(plot_confusion(counts, tmp_path / f"c{k}.png", "t")) as im:
            im.load()
    with pytest.raises(dslc.DslError, match="square"):
        plot_confusion(np.zeros((3, 4)), tmp_path / "bad.png")


def test_confusion_counts_against_the_exported_model(tmp_path, capsys):
    from dslc.runtime import evaluate as E
    from dslc.runtime.trainer import Trainer, Options, P
    data = write_npz(tmp_path / "small.npz")
    out = tmp_path / "out"
    assert train(capsys, write(tmp_path, "", epochs=1), data, out)[0] == 0
    with np.load(data) as z:
        x, y = z["image_test"].reshape(-1, 784).astype(np.float32) / 255, z["label_test"]
    # Net = Head(Feat(x)); the exported Feat and the weights give the scores by hand
    w = npz(out / "weights.npz")
    h = np.maximum(x @ w["Feat.h.weight"] + w["Feat.h.bias"], 0)
    pred = (h @ w["Head.logits.weight"] + w["Head.logits.bias"]).argmax(-1)
    want = np.zeros((10, 10), np.int64)
    for t, p in zip(y, pred):
        want[t, p] += 1
    program = dslc.load(tmp_path / "tiny.dsl")
    plan = P.plan(program)
    trainer = Trainer(program, plan, Options(data=str(data), device="cpu", log=lambda *a, **k: None), out)
    trainer._compile()
    trainer.graphs = E.Graphs(program, "cpu", 0)
    trainer._load_data()
    acc, counts = E.accuracy_and_confusion(plan.evaluate, trainer.graphs, trainer.eval_fields["test"], w)
    np.testing.assert_array_equal(counts, want)
    assert acc == np.trace(want) / len(y)


# ------------------------------------------------------------------ text from a prompt
@pytest.fixture(scope="module")
def chars_run(tmp_path_factory):
    """specs/chars.dsl's CharMLP trained for 2 epochs on the first 60,000 characters of CPython's docs."""
    tmp = tmp_path_factory.mktemp("chars")
    topics = write_topics(tmp / "topics.txt", 60_000)
    code = main(["train", str(ROOT / "specs" / "chars.dsl"), "--target", "pydoc", "--data", str(topics),
                 "--out", str(tmp / "out"), "--device", "cpu", "--epochs", "2"])
    assert code == 0
    return tmp / "out", topics


def test_generate_from_a_prompt_with_the_char_mlp(chars_run, capsys):
    out, topics = chars_run
    vocabulary = json.loads((out / "vocabulary.json").read_text(encoding="utf-8"))
    text = generate(ROOT / "specs" / "chars.dsl", "def ", length=300, temperature=0.8, checkpoint=out)
    assert len(text) == 300 and set(text) <= set(vocabulary)
    assert text == generate(ROOT / "specs" / "chars.dsl", "def ", length=300, temperature=0.8,
                                 checkpoint=out)  # seeded
    # greedy decoding by hand: the exported CharMLP fed the last 32 characters (newlines before the prompt)
    sess = ort.InferenceSession(str(out / "CharMLP.onnx"), providers=["CPUExecutionProvider"])
    codes = [vocabulary.index("\n")] * 28 + [vocabulary.index(c) for c in "The "]
    want = ""
    for _ in range(40):
        c = int(sess.run(None, {"chars": np.array([codes[-32:]], np.int64)})[0][0, :len(vocabulary)].argmax())
        codes.append(c)
        want += vocabulary[c]
    greedy = generate(ROOT / "specs" / "chars.dsl", "The ", length=40, temperature=0,
                           checkpoint=out / "checkpoint.npz")
    assert greedy == want
    # the model has learnt something of English: sampled text has spaces and common letters
    words = text.split()
    assert len(words) > 20 and sum(text.count(c) for c in "etaoin ") > len(text) / 3, text
    # the command line prints the prompt and its continuation
    assert main(["generate", str(ROOT / "specs" / "chars.dsl"), "--prompt", "The ", "--length", "40",
                 "--temperature", "0", "--checkpoint", str(out)]) == 0
    assert capsys.readouterr().out == "The " + want + "\n"
    # a sample after each epoch
    sample = (out / "sample.txt").read_text(encoding="utf-8")
    assert sample.startswith("epoch 2\n--- prompt\n") and "--- generated\n" in sample


@pytest.mark.parametrize("case, words", [
    ("unknown_char", ["the prompt holds", "never had"]),
    ("no_checkpoint", ["no checkpoint at"]),
    ("not_text", ["generate continues text"]),
    ("temperature", ["--temperature must be a number >= 0"]),
])
def test_bad_generate_one_message(chars_run, tmp_path, capsys, case, words):
    out, _ = chars_run
    args = ["generate", str(ROOT / "specs" / "chars.dsl"), "--checkpoint", str(out), "--prompt", "def "]
    if case == "unknown_char":
        args[-1] = "def \u2603"
    elif case == "no_checkpoint":
        args[3] = str(tmp_path)
    elif case == "not_text":
        args[1] = str(ROOT / "specs" / "digits.dsl")
    elif case == "temperature":
        args += ["--temperature", "-1"]
    assert main(args) == 1
    one_error(capsys.readouterr().err, *words)


def test_generate_with_a_sequence_model(tmp_path, capsys):
    """Scores [N, T, V]: the last position's are the next character's."""
    topics = write_topics(tmp_path / "topics.txt", 20_000)
    dsl = tmp_path / "bigram.dsl"
    dsl.write_text(SEQUENCE.format(width=128))
    assert train(capsys, dsl, topics, tmp_path / "out", "--epochs", 1)[0] == 0
    vocabulary = json.loads((tmp_path / "out" / "vocabulary.json").read_text(encoding="utf-8"))
    greedy = generate(dsl, "the", length=20, temperature=0, checkpoint=tmp_path / "out")
    # a bigram model: each next character is the argmax of the embedding-dense of the last one alone
    w = npz(tmp_path / "out" / "weights.npz")
    emb = next(v for v in w.values() if v.shape == (128, 8))
    kernel = next(v for v in w.values() if v.shape == (8, 128))
    bias = next(v for v in w.values() if v.shape == (128,))
    c, want = vocabulary.index("e"), ""
    for _ in range(20):
        c = int((emb[c] @ kernel + bias)[:len(vocabulary)].argmax())
        want += vocabulary[c]
    assert greedy == want
    assert (tmp_path / "out" / "sample.txt").is_file()


# ------------------------------------------------------------------ batches made ahead
def test_prefetch_keeps_order_raises_in_place_and_stops():
    import threading
    from dslc.runtime.prefetch import Prefetch
    for depth in (0, 1, 3, 100):
        with Prefetch(range(50), lambda i: {"x": np.full(4, i)}, depth) as made:
            assert [(i, int(b["x"][0])) for i, b in made] == [(i, i) for i in range(50)]

    def bad(i):
        if i == 7:
            raise dslc.DslError("batch 7 is bad")
        return i
    got = []
    with pytest.raises(dslc.DslError, match="batch 7"):
        with Prefetch(range(20), bad, 4) as made:
            for i, _ in made:
                got.append(i)
    assert got == list(range(7))
    # leaving the loop early stops the thread; the budget limits how far ahead it goes
    made_so_far = []
    with Prefetch(range(1000), lambda i: made_so_far.append(i) or np.zeros(1000), 50, budget=3 * 8000) as made:
        for i, _ in made:
            if i == 2:
                break
    assert len(made_so_far) <= 2 + 3 + 1 and not any(t.name == "dslc-prefetch" for t in threading.enumerate())


def test_prefetch_gives_the_batches_of_the_loop(tmp_path, capsys):
    """Augmented batches made ahead by the thread train the same weights, bit for bit, as made in the
    loop (prefetch = 0), and a run cut and resumed gives them too."""
    from dslc.runtime import trainer as T
    data, dsl = write_images(tmp_path / "pics"), spec(tmp_path, COLOUR)
    for depth in (0, 8):
        T.train(dsl, data=str(data), out=str(tmp_path / f"d{depth}"), device="cpu", prefetch=depth,
                log=lambda *a, **k: None)
    assert same_arrays(npz(tmp_path / "d0" / "weights.npz"), npz(tmp_path / "d8" / "weights.npz"))


# ------------------------------------------------------------------ accuracy over sequence positions
def test_accuracy_of_a_sequence_model_counts_every_position(tmp_path, capsys):
    """Scores [N, T, V] against labels [N, T]: each position is an example (it was a broadcast crash)."""
    from dslc.runtime import evaluate as E
    from dslc.runtime.trainer import Options, P, Trainer
    topics = write_topics(tmp_path / "topics.txt", 20_000)
    dsl = tmp_path / "bigram.dsl"
    dsl.write_text(SEQUENCE.format(width=128).replace(
        "evaluate = bits_per_character(Bigram(chars), next)", "evaluate = accuracy(Bigram(chars), next)"))
    out = tmp_path / "out"
    assert train(capsys, dsl, topics, out, "--epochs", 1)[0] == 0
    w = npz(out / "weights.npz")
    program = dslc.load(dsl)
    plan = P.plan(program)
    trainer = Trainer(program, plan, Options(data=str(topics), device="cpu", log=lambda *a, **k: None), out)
    trainer._compile()
    trainer.graphs = E.Graphs(program, "cpu", 0)
    trainer._load_data()
    fields = trainer.eval_fields["val"]
    chars, nxt = fields.get("chars", np.arange(fields.n)), fields.get("next", np.arange(fields.n))
    emb = next(v for v in w.values() if v.shape == (128, 8))
    kernel = next(v for v in w.values() if v.shape == (8, 128))
    bias = next(v for v in w.values() if v.shape == (128,))
    pred = (emb[chars] @ kernel + bias).argmax(-1)  # [N, T] by hand
    acc, counts = E.accuracy_and_confusion(plan.evaluate, trainer.graphs, fields, w)
    assert acc == pytest.approx((pred == nxt).mean(), abs=1e-12)
    assert counts.sum() == nxt.size and np.trace(counts) == (pred == nxt).sum()
    assert rows(out)[-1]["val_accuracy"] == pytest.approx(acc, abs=1e-6)
