"""Small weights updated together as one flat vector (dslc/train/optimizers.py `_groups`): the step
graph compiled with and without the grouping gives the same new weights and optimizer state, in
onnxruntime and onnx's reference evaluator, for every optimizer and the common options."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
from dslc.train import optimizers

SOURCE = """
model Small(x: f32[N, 6]) -> y {{
    h = dense(x, 5) |> relu
    g = dense(h, 4) |> tanh
    y = dense(g, 3)
}}
step train(x: f32[N, 6], label: i64[N]) updates Small using {opt} {{
    minimize sparse_categorical_crossentropy(Small(x), label, from_logits=true)
}}
"""

OPTIMIZERS = ["adam(lr=0.01)", "adamw(lr=0.01)", "sgd(lr=0.1, momentum=0.9, nesterov=true)",
              "rmsprop(lr=0.01, centered=true, momentum=0.5)", "adam(lr=0.01, weight_decay=0.1, clip_norm=0.5)"]


def _run(model, feeds):
    names = [o.name for o in model.graph.output]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)
    ref = ReferenceEvaluator(model).run(names, feeds)
    return [dict(zip(names, got)), dict(zip(names, ref))]


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_grouped_update_matches_one_by_one(tmp_path, monkeypatch, opt):
    path = tmp_path / "small.dsl"
    path.write_text(SOURCE.format(opt=opt))
    grouped = dslc.compile(str(path), "train")
    monkeypatch.setattr(optimizers, "SMALL", -1)  # every weight alone
    alone = dslc.compile(str(path), "train")
    ops = [[n.op_type for n in m.graph.node] for m in (grouped, alone)]
    assert "Split" in ops[0] and "Split" not in ops[1]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 6)).astype(np.float32), "label": rng.integers(0, 3, 4),
             # a nonzero optimizer state and step, so every slot's term counts
             **{t.name: rng.random(tuple(t.dims)).astype(np.float32)
                for t in grouped.graph.initializer if t.name.split(".")[0] in ("adam", "adamw", "sgd", "rmsprop")},
             "step": np.array(3, np.int64)}
    want, got = _run(alone, feeds), _run(grouped, feeds)
    assert len(want[0]) > 10
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-6, atol=1e-7, err_msg=name)
