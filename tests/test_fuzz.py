"""Fuzzing the front end and lowering: no input may make dslc raise anything but a located DslError.

Small valid programs are mutated (tokens deleted, duplicated, swapped or replaced; random
characters and keywords inserted; the text cut short), and each result must either compile every
target or fail with a `DslError` that has a source location. Any other exception is a compiler bug.
"""
from __future__ import annotations

import inspect
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dslc
from dslc.lower.builtins import BUILTINS
from dslc.train.optimizers import OPTIMIZERS

CONVNET = """
model ConvNet(image: f32[N, 1, 12, 12]) -> logits {
    conv1  = conv2d(image, 4, kernel=3, padding=same) |> relu
    pool1  = max_pool2d(conv1, 2)
    conv2  = conv2d(pool1, 8, kernel=3, strides=1, padding=valid) |> leaky_relu(0.2)
    pool2  = avg_pool2d(conv2, 2)
    hidden = dense(flatten(pool2), 16) |> relu
    logits = dense(dropout(hidden, 0.25), 10)
}
step train(image: f32[N, 1, 12, 12], labels: i64[N]) updates ConvNet using sgd(lr=0.1, momentum=0.9) {
    minimize sparse_categorical_crossentropy(ConvNet(image), labels, from_logits=true)
}
"""

VAE = """
model Encoder(x: f32[N, 16]) -> (z_mean, z_log_var, z) {
    h         = dense(x, 8) |> relu
    z_mean    = dense(h, 2)
    z_log_var = dense(h, 2)
    z         = z_mean + exp(0.5 * z_log_var) * random_normal(like=z_mean)
}
model Decoder(z: f32[N, 2]) -> x_hat {
    x_hat = dense(z, 8) |> relu |> dense(16) |> sigmoid
}
fn vae_loss(x, x_hat, z_mean, z_log_var) {
    recon = 16 * mean((x - x_hat)^2)
    kl    = mean(-0.5 * sum(1 + z_log_var - z_mean^2 - exp(z_log_var), axis=1))
    return recon + kl
}
step train_vae(x: f32[N, 16]) updates Encoder, Decoder using adam(lr=0.001) {
    z_mean, z_log_var, z = Encoder(x)
    minimize vae_loss(x, Decoder(z), z_mean, z_log_var)
}
"""

LAYER = """
layer ConvBlock(x, filters: int, rate: float = 0.3) {
    y = conv2d(x, filters, kernel=3, padding=same) |> batch_norm |> leaky_relu(0.2)
    return dropout(y, rate)
}
model Tower(x: f32[N, 3, 8, 8], labels: i64[N]) -> (probs, loss) {
    b1    = ConvBlock(x, 4)
    b2    = ConvBlock(b1, 8, rate=0.1) |> upsample2d(2)
    g     = global_avg_pool2d(concat(b2, b2, axis=1))
    probs = softmax(dense(g, 5))
    loss  = categorical_crossentropy(probs, one_hot(labels, 5))
}
"""

INDEXING = """
model Net(image: f32[N, 1, 8, 8]) -> out {
    feat = conv2d(image, 4, kernel=3) |> relu
    out  = mean(feat, axis=[2, 3])
}
fn probe(image: f32[1, 1, 8, 8], k: i64) {
    act = Net(image).feat
    return mean(act[:, k]) + sum(act[..., 0:2], axis=1, keepdims=true)[0, 0, 0]
}
fn walk(x: f32[2, 6]) {
    y = x
    repeat 3 { y = clip(y * 0.5 + x[:, 0:1] - sqrt(abs(y)), -1, 1) }
    return where(y > 0, y, 0.0), argmax(y, axis=1), cast(y, i64)
}
"""

SEEDS = [CONVNET, VAE, LAYER, INDEXING]
TOKEN = re.compile(r"[A-Za-z_]\w*|\d+\.\d*(?:e-?\d+)?|\d+|\|>|->|\.\.\.|[=!<>]=|\s+|.")
IDENT = re.compile(r"[A-Za-z_]\w*")
KEYWORDS = ["model", "layer", "fn", "step", "import", "updates", "using", "return", "minimize", "repeat",
            "true", "false"]
# Names to swap in: the seeds' own, every built-in but grad (tested with the autodiff), option words.
NAMES = sorted(({t for s in SEEDS for t in IDENT.findall(s)} | (set(BUILTINS) - {"grad"}) | set(OPTIMIZERS)
                | {"glorot_normal", "he_uniform", "nearest", "valid", "f64", "bool", "int", "float", "training"})
               - set(KEYWORDS))
NUMBERS = ["0", "1", "2", "-1", "3", "7", "0.0", "0.5", "1.5", "-2.5", "1e-7", "64", "100", "99999999999",
           "1e400", "100000000000000000000000000000"]
PIECES = ["(", ")", "[", "]", "{", "}", ",", ":", "=", ".", "...", "|>", "->", "+", "-", "*", "/", "@", "^",
          "==", "!=", "<", ">=", "\n", " ", "#", '"', '"missing.dsl"', "$", ";", "'", "\t", "é", "\\"]


def mutate(text: str, pick) -> str:
    """Apply 1-3 random edits to a source; `pick(n)` chooses an int in [0, n). Most edits keep the
    syntax valid (names, numbers, whole lines), so that lowering is exercised as much as parsing."""
    for _ in range(1 + pick(3)):
        tokens = TOKEN.findall(text)
        lines = text.split("\n")
        if not tokens:
            break
        names = [k for k, t in enumerate(tokens) if IDENT.fullmatch(t)] or [0]
        numbers = [k for k, t in enumerate(tokens) if t[0].isdigit()]
        i, j = pick(len(tokens)), pick(len(tokens))
        kind = pick(16)
        if kind in (0, 1, 12, 13, 14):  # a name becomes another name
            tokens[names[i % len(names)]] = NAMES[pick(len(NAMES))]
        elif kind in (2, 15) and numbers:  # a number becomes another number
            tokens[numbers[i % len(numbers)]] = NUMBERS[pick(len(NUMBERS))]
        elif kind == 3:  # two names trade places
            a, b = names[i % len(names)], names[j % len(names)]
            tokens[a], tokens[b] = tokens[b], tokens[a]
        elif kind == 4:  # a name misspelt: one letter dropped or doubled
            k = names[i % len(names)]
            t, c = tokens[k], pick(len(tokens[k]))
            tokens[k] = t[:c] + t[c + 1:] if pick(2) and len(t) > 1 else t[:c] + t[c] + t[c:]
        elif kind == 5:  # a line deleted, duplicated or moved
            a, b = pick(len(lines)), pick(len(lines))
            line = lines.pop(a)
            if pick(3):
                lines.insert(b, line)
            if pick(2):
                lines.insert(a, line)
            tokens = ["\n".join(lines)]
        elif kind == 6:  # a token deleted or duplicated
            tokens[i] = tokens[i] * pick(3)
        elif kind == 7:  # any two tokens trade places
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == 8:  # a keyword inserted
            tokens.insert(i, f" {KEYWORDS[pick(len(KEYWORDS))]} ")
        elif kind in (9, 10):  # punctuation or a stray character inserted
            tokens.insert(i, PIECES[pick(len(PIECES))])
        else:  # cut short
            tokens = tokens[:i]
        text = "".join(tokens)
    return text


def check_compiles_or_located_error(text: str) -> None:
    """The property: every target compiles, or a DslError says where the problem is."""
    try:
        prog = dslc.loads(text, "fuzz.dsl")
        for target in prog.targets():
            dslc.lower(prog, target)
    except dslc.DslError as e:
        message = e.render()  # rendering (source line, caret) must not fail either
        assert e.span is not None and e.span.line >= 1, f"error without a location: {message}"


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_compile(seed: int):
    prog = dslc.loads(SEEDS[seed], "seed.dsl")
    assert prog.targets()
    for target in prog.targets():
        dslc.lower(prog, target)


def _pick(draw):
    return lambda n: draw(st.integers(0, max(n - 1, 0)))


@st.composite
def mutated_sources(draw) -> str:
    """One seed, edited."""
    return mutate(draw(st.sampled_from(SEEDS)), _pick(draw))


@st.composite
def spliced_sources(draw) -> str:
    """The start of one seed glued to the end of another, then edited: declarations cut in half,
    names from one program used in another."""
    a, b = draw(st.sampled_from(SEEDS)), draw(st.sampled_from(SEEDS))
    return mutate(a[:draw(st.integers(0, len(a)))] + b[draw(st.integers(0, len(b))):], _pick(draw))


# Arguments for generated built-in calls, by the annotation of the parameter they go to.
ARGS = {
    "T": ["a", "b", "c", "d", "e", "s", "g", "1", "0.5", "a[:, 0]", "c[0]", "-a", "a * 2", "cast(a, i64)",
          "c[..., 0:3]", "[1.0, 2.0]"],
    "int": ["0", "1", "-1", "2", "3", "-3", "7"], "count": ["1", "2", "3", "4", "0", "-2"],
    "float": ["0.0", "0.5", "1", "0.99", "-1.5"], "bool": ["true", "false"],
    "word": ["same", "valid", "f32", "i64", "bool", "glorot_normal", "zeros", "uniform", "foo"],
    "ints": ["1", "2", "3", "[1, 2]", "[2, 2]", "[0, 1]", "[1, 1, 1, 1]", "-1", "[3, 1]", "[-1]"],
    "any": ["[2, 3]", "[-1, 4]", "[1, 4]", "[2, 4, 1]", "a", "[4]", "[0, -1]", "[2, 3, 8, 8]", "same", "relu"],
}
CALL_HOST = ["fn f({params}) {{\n    return {call}\n}}\n", "model M({params}) -> y {{\n    y = {call}\n}}\n"]
CALL_PARAMS = "a: f32[N, 4], b: i64[N], c: f32[2, 3, 8, 8], d: bool[N, 4], e: f32[4], s: f32[], g: f32[2, 4]"


@st.composite
def builtin_calls(draw) -> str:
    """A call of a random built-in (but grad) with arguments mostly of the kind each parameter takes,
    in a fn or a model: the built-ins' own checks, on every rank and dtype."""
    name = draw(st.sampled_from(sorted(set(BUILTINS) - {"grad"})))
    args, kwargs = [], []
    for p in list(inspect.signature(BUILTINS[name]).parameters.values())[1:]:
        ann = p.annotation if isinstance(p.annotation, str) and p.annotation in ARGS else "any"
        pool = ARGS[ann] if draw(st.integers(0, 9)) else [v for vs in ARGS.values() for v in vs]
        if p.kind == p.VAR_POSITIONAL:
            args += draw(st.lists(st.sampled_from(ARGS["T"]), min_size=1, max_size=3))
        elif p.default is inspect.Parameter.empty or draw(st.booleans()):
            value = draw(st.sampled_from(pool))
            if p.kind == p.KEYWORD_ONLY or kwargs or draw(st.integers(0, 4)) == 0:
                kwargs.append(f"{p.name}={value}")
            else:
                args.append(value)
    call = f"{name}({', '.join(args + kwargs)})"
    return draw(st.sampled_from(CALL_HOST)).format(params=CALL_PARAMS, call=call)


FUZZ = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Three runs of 1,000 each (3,000 sources in all), so that each run stays short.
@FUZZ
@given(mutated_sources())
def test_fuzz_mutated_sources(text: str):
    check_compiles_or_located_error(text)


@FUZZ
@given(spliced_sources())
def test_fuzz_spliced_sources(text: str):
    check_compiles_or_located_error(text)


@FUZZ
@given(builtin_calls())
def test_fuzz_builtin_calls(text: str):
    check_compiles_or_located_error(text)
