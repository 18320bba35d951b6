"""Random feeds for a compiled model's inputs, shared by the spec tests.

Every graph input without an initializer gets values of its declared type (symbolic dims = `n`):
integers (class labels) in [0, 10) (integer scalars, counts, in [1, 10)), `random.K` draws from the distribution their source asks for,
everything else in [0, 1).
"""
from pathlib import Path

import numpy as np
import onnx

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
       onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


def graphs(g: onnx.GraphProto):
    """A graph and its subgraphs (Loop bodies), recursively."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from graphs(a.g)
            for sub in a.graphs:
                yield from graphs(sub)


SPECS = Path(__file__).resolve().parents[1] / "specs"


def random_kind(model: onnx.ModelProto, name: str, root: Path = SPECS) -> str:
    """'normal' if the graph input `name` stands for a random_normal() draw, else 'uniform' (random_uniform,
    dropout's mask, randint): read from the source that the first consumer's doc_string points to
    (a file named relative to `root`, the compiled file's folder)."""
    for g in graphs(model.graph):
        for n in g.node:
            if name in n.input:
                file, line, col = n.doc_string.rsplit(":", 2)
                text = (root / file).read_text().splitlines()[int(line) - 1][int(col) - 1:]
                return "normal" if text.startswith("random_normal") else "uniform"
    raise AssertionError(f"input {name} has no consumer")


def random_feeds(model: onnx.ModelProto, rng: np.random.Generator, n: int = 2) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else n for d in tt.shape.dim]
        dtype = _NP[tt.elem_type]
        if np.issubdtype(dtype, np.integer):  # class labels; a scalar is a count (a batch size): >= 1
            feeds[vi.name] = rng.integers(0 if shape else 1, 10, size=shape).astype(dtype)
        elif vi.name.startswith("random.") and random_kind(model, vi.name) == "normal":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:  # images, one-hot-ish targets and uniform draws: values in [0, 1)
            feeds[vi.name] = rng.random(shape).astype(dtype)
    return feeds
