"""Issue 20, item 3: what a training run does around its steps. Progress lines without a terminal,
the models exported after every epoch (every model of `export`) and `dslc export` of a checkpoint,
per-step curves, validation each epoch, the best epoch by `monitor` and early stopping, gradient
accumulation, TensorBoard event files, and `dslc train --help`. Tiny model, tiny data (the ones of
test_train_cli.py); every failure one message and exit 1."""
from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dslc.cli import main
from dslc.runtime import tensorboard as TB
from dslc.runtime import trainer as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_cli import ROOT, checkpoint, npz, one_error, same_arrays, train, write_npz  # noqa: E402

DSL = """
model Feat(x: f32[N, 784]) -> h {{
    h = dense(x, 16) |> relu
}}
model Head(h: f32[N, 16]) -> logits {{
    logits = dense(h, 10)
}}
model Net(x: f32[N, 784]) -> logits {{
    logits = Head(Feat(x))
}}
step train_net(image: f32[N, 784], label: i64[N]) updates Feat, Head using {optimizer} {{
    minimize sparse_categorical_crossentropy(Net(image), label, from_logits=true)
}}
train tiny {{
    data     = npz
    image    = image |> scale(0, 1) |> flatten
    batch    = 32
    epochs   = {epochs}
    steps    = [train_net(image, label)]
    evaluate = [accuracy(Net(image), label), loss(train_net(image, label))]
    {settings}
}}
"""


def write(tmp_path: Path, settings: str = "", epochs: int = 2, optimizer: str = "adam(lr=0.01)") -> Path:
    path = tmp_path / "tiny.dsl"
    path.write_text(DSL.format(settings=settings, epochs=epochs, optimizer=optimizer))
    return path


@pytest.fixture
def data(tmp_path):
    return write_npz(tmp_path / "small.npz")  # 256 training examples: 8 steps an epoch


def rows(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


# ------------------------------------------------------------------ progress lines
def test_progress_lines_every_n_steps_without_a_terminal(tmp_path, data, capsys):
    code, stdout, err = train(capsys, write(tmp_path, "log_every = 3"), data, tmp_path / "out")
    assert code == 0, err
    lines = [s for s in stdout.splitlines() if s.startswith("step ")]
    assert [s.split()[1] for s in lines] == ["3/16", "6/16", "9/16", "12/16", "15/16"], stdout
    assert "epoch 2/2" in lines[-1] and "loss " in lines[0] and lines[0].endswith("steps/s)"), lines


def test_progress_lines_every_so_many_seconds(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setattr(T, "PROGRESS_SECONDS", 0.0)  # (30 s by default): a line after every step
    code, stdout, err = train(capsys, write(tmp_path), data, tmp_path / "out", "--epochs", 1)
    assert code == 0, err
    assert sum(s.startswith("step ") for s in stdout.splitlines()) == 8, stdout


def test_progress_lines_reach_a_pipe_while_the_run_goes_on(tmp_path, data):
    # print() into a pipe is block-buffered: each line must be flushed, or a log file stays empty for
    # hours. The run stops for a minute in its second step: by then the first step's line must be out.
    code = ("import sys, time; import dslc.runtime.trainer as t; one = t.Trainer._one_batch\n"
            "def slow(self, idx, state, step, seeds):\n"
            "    time.sleep(60 if step == 1 else 0); return one(self, idx, state, step, seeds)\n"
            "t.Trainer._one_batch = slow; from dslc.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "train", str(write(tmp_path, "log_every = 1")), "--data",
                             str(data), "--out", str(tmp_path / "out"), "--device", "cpu"], stdout=subprocess.PIPE,
                            env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                                 "PYTHONPATH": str(ROOT)}, cwd=str(tmp_path))
    try:
        lines = b""
        while b"step 1/16" not in lines:
            assert select.select([proc.stdout], [], [], 30)[0], f"no progress line came: {lines!r}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"the run ended without a progress line: {lines!r}"
            lines += chunk
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


# ------------------------------------------------------------------ export: each epoch, every model, any checkpoint
def test_every_model_exported_each_epoch_and_dslc_export_of_a_checkpoint(tmp_path, data, capsys, monkeypatch):
    dsl, out = write(tmp_path, "export = [Net, Feat]"), tmp_path / "out"
    written = []
    save = T.save_onnx
    monkeypatch.setattr(T, "save_onnx", lambda path, model: (written.append(Path(path).name), save(path, model)))
    code, stdout, err = train(capsys, dsl, data, out)
    assert code == 0, err
    assert written == ["Net.onnx", "Feat.onnx"] * 2  # after each of the 2 epochs
    assert f"wrote {out / 'Net.onnx'} and {out / 'Feat.onnx'} and {out / 'weights.npz'}" in stdout
    assert [i.name for i in onnx.load(out / "Feat.onnx").graph.input] == ["x"]

    # `dslc export` of the run's checkpoint writes the same files, byte for byte
    code = main(["export", str(dsl), "--out", str(tmp_path / "x"), "--checkpoint", str(out / T.CHECKPOINT)])
    stdout = capsys.readouterr().out
    assert code == 0 and f"wrote {tmp_path / 'x' / 'Feat.onnx'}" in stdout
    for name in ("Net.onnx", "Feat.onnx"):
        assert (tmp_path / "x" / name).read_bytes() == (out / name).read_bytes(), name
    assert same_arrays(npz(tmp_path / "x" / "weights.npz"), npz(out / "weights.npz"))

    # an interrupted run has the last epoch's model; `dslc export` gives the checkpoint's (step 10)
    capsys.readouterr()
    code, _, err = train(capsys, dsl, data, tmp_path / "cut", "--max-steps", 10)
    assert code == 0, err
    assert main(["export", str(dsl), "--out", str(tmp_path / "y"), "--checkpoint",
                 str(tmp_path / "cut" / T.CHECKPOINT)]) == 0
    state, meta = checkpoint(tmp_path / "cut")
    assert meta["global_step"] == 10
    assert same_arrays(npz(tmp_path / "y" / "weights.npz"),
                       {k[len("state/"):]: v for k, v in state.items() if k.startswith(("state/Feat.", "state/Head."))})


@pytest.mark.parametrize("case, words", [
    ("missing", ["no checkpoint at", "--checkpoint"]),
    ("damaged", ["cannot read the checkpoint", "not an .npz"]),
    ("other_dsl", ["the .dsl's steps expect", "Feat."]),
])
def test_export_refuses_a_checkpoint_it_cannot_use(tmp_path, data, capsys, case, words):
    dsl, out = write(tmp_path), tmp_path / "out"
    assert train(capsys, dsl, data, out, "--max-steps", 2)[0] == 0
    ckpt = out / T.CHECKPOINT
    if case == "missing":
        ckpt = out / "nothing.npz"
    elif case == "damaged":
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    else:  # the .dsl changed: a wider hidden layer
        dsl.write_text(dsl.read_text().replace("dense(x, 16)", "dense(x, 24)").replace("f32[N, 16]", "f32[N, 24]"))
    code = main(["export", str(dsl), "--out", str(tmp_path / "x"), "--checkpoint", str(ckpt)])
    assert code == 1
    one_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "x" / "Net.onnx").exists()


# ------------------------------------------------------------------ per-step curves, validation each epoch
def test_per_step_losses_and_validation_each_epoch(tmp_path, data, capsys):
    out = tmp_path / "out"
    code, stdout, err = train(capsys, write(tmp_path, "validation = 0.25", epochs=3), data, out)
    assert code == 0, err
    history = rows(out)
    assert len(history) == 3
    for h in history:  # 192 training examples after the validation share: 6 steps an epoch
        assert len(h["step_loss"]) == 6 and np.isclose(np.mean(h["step_loss"]), h["loss"], rtol=0.05)
        assert {"val_accuracy", "val_loss", "test_accuracy", "test_loss"} <= h.keys()
    assert history[-1]["step_loss"][-1] < history[0]["step_loss"][0]
    assert not [s for s in stdout.splitlines() if s.startswith("epoch") and "step_loss" in s]  # scalars only


def test_resume_mid_epoch_keeps_the_per_step_losses(tmp_path, data, capsys):
    dsl = write(tmp_path)
    assert train(capsys, dsl, data, tmp_path / "ref")[0] == 0
    assert train(capsys, dsl, data, tmp_path / "out", "--max-steps", 11)[0] == 0
    assert train(capsys, dsl, data, tmp_path / "out", "--resume")[0] == 0
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(rows(tmp_path / "out")) == strip(rows(tmp_path / "ref"))


# ------------------------------------------------------------------ the best epoch, early stopping
def test_best_model_kept_by_monitor(tmp_path, data, capsys):
    out = tmp_path / "out"
    code, _, err = train(capsys, write(tmp_path, "validation = 0.25\n    monitor = val_loss", epochs=3), data, out)
    assert code == 0, err
    history = rows(out)
    best = int(np.argmin([h["val_loss"] for h in history]))
    assert (out / "Feat.best.onnx").is_file() and (out / "weights.best.npz").is_file()  # Feat: the default export
    if best == len(history) - 1:
        assert (out / "Feat.best.onnx").read_bytes() == (out / "Feat.onnx").read_bytes()
        assert same_arrays(npz(out / "weights.best.npz"), npz(out / "weights.npz"))


def test_early_stopping_when_the_monitor_stalls(tmp_path, data, capsys):
    # a learning rate too small to change any prediction: val_accuracy never improves on epoch 1
    dsl = write(tmp_path, "validation = 0.25\n    monitor = val_accuracy\n    early_stopping = 2",
                epochs=10, optimizer="sgd(lr=1e-12)")
    code, stdout, err = train(capsys, dsl, data, tmp_path / "out")
    assert code == 0, err
    assert [h["epoch"] for h in rows(tmp_path / "out")] == [1, 2, 3]
    assert "early stopping: val_accuracy has not improved for 2 epoch(s)" in stdout
    assert "(best" in stdout and "after epoch 1)" in stdout
    # --resume of a run that stopped early trains nothing more
    code, stdout, err = train(capsys, dsl, data, tmp_path / "out", "--resume")
    assert code == 0 and "early stopping: val_accuracy has not improved" in stdout, err
    assert [h["epoch"] for h in rows(tmp_path / "out")] == [1, 2, 3] and checkpoint(tmp_path / "out")[1]["epoch"] == 3


@pytest.mark.parametrize("settings, words", [
    ("monitor = test_acuracy", ["monitor = test_acuracy", "no such number", "test_accuracy"]),
    ("early_stopping = 2", ["`early_stopping` needs `monitor`"]),
    ("early_stopping = 0\n    monitor = loss", ["`early_stopping` must be an integer >= 1"]),
    ("accumulate = 2.5", ["`accumulate` must be an integer >= 1"]),
    ("tensorboard = 1", ["`tensorboard` is true or false"]),
    ("export = [Net, Net]", ["each model once"]),
    ("validation = 0.25\n    log_every = 0", ["`log_every` must be an integer >= 1"]),
])
def test_bad_settings_one_message(tmp_path, data, capsys, settings, words):
    code, _, err = train(capsys, write(tmp_path, settings, epochs=1), data, tmp_path / "out")
    assert code == 1
    one_error(err, *words)


# ------------------------------------------------------------------ gradient accumulation
def test_accumulate_matches_the_whole_batch(tmp_path, data, capsys):
    # no dropout, noise or batch norm: 4 micro-batches of 8 average to the batch of 32's gradient
    plain, micro = tmp_path / "a", tmp_path / "b"
    (plain / "x").mkdir(parents=True)
    (micro / "x").mkdir(parents=True)
    assert train(capsys, write(plain, epochs=1), data, plain / "out")[0] == 0
    code, _, err = train(capsys, write(micro, "accumulate = 4", epochs=1), data, micro / "out")
    assert code == 0, err
    a, b = npz(plain / "out" / "weights.npz"), npz(micro / "out" / "weights.npz")
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)
    ra, rb = rows(plain / "out")[0], rows(micro / "out")[0]
    assert np.allclose(ra["step_loss"], rb["step_loss"], rtol=1e-5)
    # the setting is part of what a checkpoint must agree on
    _, meta = checkpoint(micro / "out")
    assert meta["settings"]["accumulate"] == 4


def test_accumulate_with_batch_norm_and_dropout(tmp_path, data, capsys):
    # the moving statistics are the micro-batches' mean; dropout draws per micro-batch
    dsl = write(tmp_path, "accumulate = 3", epochs=1)
    dsl.write_text(dsl.read_text().replace("h = dense(x, 16) |> relu",
                                           "h = dense(x, 16) |> batch_norm |> relu |> dropout(0.2)"))
    code, _, err = train(capsys, dsl, data, tmp_path / "out", "--max-steps", 4)
    assert code == 0, err
    state, _ = checkpoint(tmp_path / "out")
    means = [v for k, v in state.items() if k.endswith("moving_mean")]
    assert means and all(np.all(np.isfinite(m)) and np.any(m != 0) for m in means)


# ------------------------------------------------------------------ TensorBoard
def read_events(path: Path) -> list[tuple[int, dict]]:
    """(step, {tag: value}) of each event, every record's CRCs checked."""
    data, at, events = path.read_bytes(), 0, []
    while at < len(data):
        header = data[at:at + 8]
        n = struct.unpack("<Q", header)[0]
        assert data[at + 8:at + 12] == TB._masked(header)
        body = data[at + 12:at + 12 + n]
        assert data[at + 12 + n:at + 16 + n] == TB._masked(body)
        events.append(_event(body))
        at += 16 + n
    return events


def _fields(buf: bytes) -> list[tuple[int, object]]:
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _varint(buf, i)
        elif kind == 1:
            value, i = buf[i:i + 8], i + 8
        elif kind == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        out.append((number, value))
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _event(body: bytes) -> tuple[int, dict]:
    step, scalars = 0, {}
    for number, value in _fields(body):
        if number == 2:
            step = value
        elif number == 3:
            scalars["file_version"] = value.decode()
        elif number == 5:
            for _, v in _fields(value):
                f = dict(_fields(v))
                scalars[f[1].decode()] = struct.unpack("<f", f[2])[0]
    return step, scalars


def test_tensorboard_event_files(tmp_path, data, capsys):
    assert TB.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    out = tmp_path / "out"
    code, _, err = train(capsys, write(tmp_path, "tensorboard = true"), data, out)
    assert code == 0, err
    files = list(out.glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = read_events(files[0])
    assert events[0] == (0, {"file_version": "brain.Event:2"})
    steps = [(s, e["step/loss"]) for s, e in events if "step/loss" in e]
    history = rows(out)
    assert [s for s, _ in steps] == list(range(1, 17))
    assert np.allclose([v for _, v in steps], history[0]["step_loss"] + history[1]["step_loss"])
    epochs = [(s, e) for s, e in events if "test_accuracy" in e]
    assert [s for s, _ in epochs] == [8, 16]
    assert np.isclose(epochs[-1][1]["test_accuracy"], history[-1]["test_accuracy"])


# ------------------------------------------------------------------ --help
def test_train_help_lists_the_settings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for setting in T.P.SETTINGS:
        assert f"\n  {setting} " in text, setting


# ------------------------------------------------------------------ plain text: a character-level language model
CHARS = """
model CharNet(chars: i64[N, 8]) -> logits {{
    logits = embedding(chars, {width}, 8) |> flatten |> dense({width})
}}
step train_chars(chars: i64[N, 8], next_char: i64[N]) updates CharNet using adam(lr=0.01) {{
    minimize sparse_categorical_crossentropy(CharNet(chars), next_char, from_logits=true)
}}
train lm {{
    data       = text
    seq        = 8
    {settings}
    batch      = 64
    epochs     = 2
    steps      = [train_chars(chars, next_char)]
    evaluate   = bits_per_character(CharNet(chars), next_char)
}}
"""


def write_topics(path: Path, limit: int | None = None) -> Path:
    """CPython's own documentation (pydoc_data.topics: ~465,000 characters of English), as UTF-8 text."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    path.write_text(text[:limit], encoding="utf-8")
    return path


def write_chars(tmp_path: Path, settings: str = "validation = 0.1\n    stride = 2", width: int = 128) -> Path:
    path = tmp_path / "lm.dsl"
    path.write_text(CHARS.format(settings=settings, width=width))
    return path


@pytest.fixture
def topics(tmp_path):
    return write_topics(tmp_path / "topics.txt", 20_000)


def test_text_trains_a_character_model_with_bits_per_character(tmp_path, topics, capsys):
    out = tmp_path / "out"
    code, stdout, err = train(capsys, write_chars(tmp_path), topics, out)
    assert code == 0, err
    vocabulary = json.loads((out / "vocabulary.json").read_text(encoding="utf-8"))
    text = topics.read_text(encoding="utf-8")
    assert vocabulary == sorted(set(text)) and f"vocabulary: {len(vocabulary)} characters" in stdout
    history = rows(out)  # 18,000 training characters in windows of 8 every 2: 8,996 windows, 141 steps
    assert history[-1]["steps"] == 2 * 141
    bits = [h["val_bits_per_character"] for h in history]
    assert bits[1] < bits[0] < np.log2(len(vocabulary)), bits  # better than guessing among the characters
    _, meta = checkpoint(out)
    assert meta["vocabulary"] == "".join(vocabulary)
    # the exported model, fed a window of the text, scores its next character
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "CharNet.onnx"), providers=["CPUExecutionProvider"])
    window = np.array([[vocabulary.index(c) for c in text[100:108]]], np.int64)
    assert sess.run(None, {"chars": window})[0].shape == (1, 128)


def test_resume_refuses_a_text_with_other_characters(tmp_path, topics, capsys):
    dsl, out = write_chars(tmp_path), tmp_path / "out"
    assert train(capsys, dsl, topics, out, "--max-steps", 5)[0] == 0
    topics.write_text(topics.read_text(encoding="utf-8") + "\u00e9", encoding="utf-8")
    code, _, err = train(capsys, dsl, topics, out, "--resume")
    assert code == 1
    one_error(err, "cannot resume", "the text's characters changed")


@pytest.mark.parametrize("case, words", [
    ("latin1", ["is not UTF-8 text", "byte 3 (line 1)"]),
    ("short", ["no window of seq = 8", "a smaller seq"]),
    ("narrow", ["`next_char` holds the label", "outside [0, 16)", "CharNet gives 16 class scores"]),
    ("no_seq", ["`data = text` needs `seq`"]),
    ("seq_elsewhere", ["`seq` sets the windows of a text"]),
    ("npz_declared", ["is a text file", "says `data = npz`"]),
])
def test_bad_text_one_message(tmp_path, topics, capsys, case, words):
    dsl, data = write_chars(tmp_path), topics
    if case == "latin1":
        data.write_bytes(b"abc\xe9" * 100)
    elif case == "short":
        data.write_text("a short text", encoding="utf-8")
    elif case == "narrow":
        dsl = write_chars(tmp_path, width=16)
    elif case == "no_seq":
        dsl.write_text(dsl.read_text().replace("seq        = 8", ""))
    elif case in ("seq_elsewhere", "npz_declared"):
        dsl.write_text(dsl.read_text().replace("data       = text", "data       = npz")
                       .replace("seq        = 8", "" if case == "npz_declared" else "seq = 8")
                       .replace("stride = 2", ""))
    code, _, err = train(capsys, dsl, data, tmp_path / "out")
    assert code == 1
    one_error(err, *words)
    assert not (tmp_path / "out" / T.CHECKPOINT).exists()


SEQUENCE = """
model Bigram(chars: i64[N, 16]) -> logits {{
    logits = embedding(chars, {width}, 8) |> dense({width})
}}
step train_bigram(chars: i64[N, 16], next: i64[N, 16]) updates Bigram using adam(lr=0.05) {{
    minimize sparse_categorical_crossentropy(Bigram(chars), next, from_logits=true)
}}
train bigram {{
    data = text
    seq = 16
    validation = 0.1
    batch = 32
    epochs = 3
    steps = [train_bigram(chars, next)]
    evaluate = bits_per_character(Bigram(chars), next)
}}
"""


@pytest.mark.parametrize("width", [128, 16])
def test_text_sequence_model_scores_every_position(tmp_path, topics, capsys, width):
    # scores [N, seq, V] against `next` [N, seq]: each character's successor
    dsl = tmp_path / "bigram.dsl"
    dsl.write_text(SEQUENCE.format(width=width))
    code, _, err = train(capsys, dsl, topics, tmp_path / "out")
    if width == 16:
        assert code == 1
        one_error(err, "the text has", "distinct characters, and Bigram scores 16", "give the model")
        return
    assert code == 0, err
    assert 0 < rows(tmp_path / "out")[0]["val_bits_per_character"] < 5


@pytest.mark.parametrize("spec, target", [("chars.dsl", "pydoc"), ("lstm.dsl", "pydoc_lstm")])
def test_spec_chars_smoke(tmp_path, topics, capsys, spec, target):
    """specs/chars.dsl (scores [N, V]) and specs/lstm.dsl (scores [N, 32, V]) on the start of CPython's
    documentation: a few steps, an evaluation, a sample, then text from a prompt."""
    from dslc.api import generate
    dsl = ROOT / "specs" / spec
    code, stdout, err = train(capsys, dsl, topics, tmp_path / "out", "--target", target, "--epochs", 1)
    assert code == 0, err
    assert (tmp_path / "out" / "vocabulary.json").is_file() and "wrote" in stdout and "sample: " in stdout
    assert 0 < rows(tmp_path / "out")[0]["val_bits_per_character"] < 7
    text = generate(dsl, "def ", length=50, checkpoint=tmp_path / "out", target=target)
    assert len(text) == 50 and set(text) <= set(topics.read_text(encoding="utf-8"))


if __name__ == "__main__":  # python tests/test_training_features.py DIR: DIR/topics.txt, for specs/chars.dsl
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_topics(folder / 'topics.txt')}")
