"""Text from a trained character-level language model: `dslc generate FILE --prompt "def "`.

The model is the one a `data = text` run measures (its `bits_per_character` evaluation, else the
first `export` model), with the weights and the vocabulary (character i is class i) of the run's
checkpoint. Each new character is drawn from the scores of the model fed the text so far:

  - a model whose input has a static width W (specs/chars.dsl's CharMLP: chars [N, 32]) reads the
    last W characters; a prompt shorter than W is padded on the left with newlines (the character
    most like "nothing before"; a space, else the vocabulary's first, where the text has none);
    a model whose width is symbolic reads the whole text so far;
  - scores [N, V] are the next character's; scores [N, T, V] (a sequence model) give each
    position's successor, and the last position's is the next character;
  - temperature T > 0 samples from softmax(scores / T) (seeded: the same seed, the same text);
    T = 0 takes the highest score. Scores beyond the vocabulary (a model wider than the text's
    characters) are never drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..diagnostics import DslError
from ..lower.program import load_program
from ..train import plan as P
from . import evaluate as E
from .checkpoint import CHECKPOINT, check_meta, read_checkpoint


def generate_text(path, prompt: str, length: int = 200, temperature: float = 1.0, checkpoint=None,
                  target: str | None = None, seed: int = 0, import_path=None) -> str:
    """`length` characters that follow `prompt` (the prompt not included)."""
    if length < 0:
        raise DslError(f"--length must be >= 0, got {length}")
    if not temperature >= 0 or not np.isfinite(temperature):
        raise DslError(f"--temperature must be a number >= 0, got {temperature}", hint="0 takes the likeliest")
    program = load_program(path, import_path)
    plan = P.plan(program, target)
    if plan.dataset != "text":
        raise DslError(f"train `{plan.name}` reads `data = {plan.dataset}`: generate continues text, for a "
                       "character-level language model (`data = text`)", plan.span)
    ckpt = Path(checkpoint) if checkpoint else Path("runs") / plan.name
    ckpt = ckpt / CHECKPOINT if ckpt.is_dir() else ckpt
    if not ckpt.exists():
        raise DslError(f"no checkpoint at {ckpt}", hint="train first (dslc train), or name one with --checkpoint")
    meta, state = read_checkpoint(ckpt)
    check_meta(ckpt, meta)
    if meta["settings"].get("train") != plan.name or not meta.get("vocabulary"):
        raise DslError(f"the checkpoint {ckpt} was not written by train `{plan.name}` on a text",
                       hint="choose the train declaration with --target, the run with --checkpoint")
    graphs = E.Graphs(program, "cpu", plan.seed)
    return Generator(graphs, model_of(plan), state, meta["vocabulary"]).continue_text(prompt, length, temperature, seed)


def model_of(plan: P.Plan) -> str:
    """The language model of a text run: the one its bits_per_character measures, else its export."""
    return next((m.call.name for m in plan.evaluations if m.kind == "bits_per_character"), plan.export)


class Generator:
    """A model's session, its weights and the vocabulary: text a character at a time."""

    def __init__(self, graphs: E.Graphs, model: str, weights: dict, vocabulary: str):
        self.session, self.weights, self.vocabulary = graphs.session(model), weights, vocabulary
        self.model = model
        first = self.session.get_inputs()[0]
        self.input = first.name
        if len(first.shape) != 2 or "int" not in first.type:
            raise DslError(f"{model} takes {first.type}{first.shape}: generate feeds character classes [N, T]")
        others = [i.name for i in self.session.get_inputs()[1:] if i.name not in weights]
        if others:
            raise DslError(f"{model} takes `{others[0]}` beside its characters: generate feeds only characters")
        self.width = first.shape[1] if isinstance(first.shape[1], int) else None
        self.codes = {c: i for i, c in enumerate(vocabulary)}
        self.pad = next((self.codes[c] for c in "\n " if c in self.codes), 0)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.codes})
        if unknown:
            raise DslError(f"the prompt holds {', '.join(repr(c) for c in unknown[:5])}, which the training text "
                           f"never had", hint=f"the model knows {len(self.vocabulary)} characters: "
                                              f"{''.join(self.vocabulary)[:80]!r}")
        return [self.codes[c] for c in text]

    def next_scores(self, codes: list[int]) -> np.ndarray:
        """The scores of the character after `codes` (the last W of them, padded on the left)."""
        window = codes[-self.width:] if self.width else codes or [self.pad]
        if self.width and len(window) < self.width:
            window = [self.pad] * (self.width - len(window)) + window
        scores = np.asarray(E.run(self.session, {self.input: np.array([window], np.int64)}, self.weights)[0])
        if scores.ndim == 3:  # [1, T, V]: each position's successor; the last one's is next
            scores = scores[:, -1]
        if scores.ndim != 2 or scores.shape[-1] < len(self.vocabulary):
            raise DslError(f"{self.model} gives scores {list(scores.shape)}: generate reads character scores "
                           f"[N, V] or [N, T, V] with V >= the {len(self.vocabulary)} characters of the text")
        return np.asarray(scores[0, :len(self.vocabulary)], np.float64)

    def continue_text(self, prompt: str, length: int, temperature: float, seed: int = 0) -> str:
        codes = self.encode(prompt)
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(length):
            scores = self.next_scores(codes)
            if temperature == 0:
                c = int(scores.argmax())
            else:
                z = scores / temperature
                p = np.exp(z - z.max())
                c = int(rng.choice(len(p), p=p / p.sum()))
            codes.append(c)
            out.append(self.vocabulary[c])
        return "".join(out)
