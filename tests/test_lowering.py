"""Lowering: weights and their sharing, layer templates, modes, indexing, loops, imports, passes."""
import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

import dslc
from dslc.emit.onnx_emit import check
from dslc.runtime import run_model

SOURCE = """
layer ConvBlock(x, filters: int, rate: float = 0.3) {
    y = conv2d(x, filters, kernel=3, padding=same) |> leaky_relu(0.2)
    return dropout(y, rate)
}
model Net(image: f32[N, 1, 8, 8]) -> (out, feat) {
    b1   = ConvBlock(image, 4)
    b2   = ConvBlock(b1, 4)
    bn   = batch_norm(b2)
    feat = global_avg_pool2d(bn)
    out  = dense(feat, 3, activation=softmax)
}
model Twice(a: f32[N, 1, 8, 8], b: f32[N, 1, 8, 8]) -> s {
    s = Net(a).out + Net(b).out + Net(a).b1[:, 0:3, ..., -1][..., 0]
}
model Feature(a: f32[N, 1, 8, 8]) -> v {
    v = Net(a).b1[:, 0:3, ..., -1][..., 0]
}
fn slicer(x: f32[N, 6, 5], k: i64) {
    y = x[:, k, 1:4]
    z = x[..., 2]
    w = mean(x, axis=[1, 2], keepdims=true)
    return y, z, w
}
fn looped(x: f32[2, 3]) {
    y = x
    repeat 3 { y = y * 2 + 1 }
    return y
}
step train(image: f32[N, 1, 8, 8], label: i64[N]) updates Net using adam(lr=0.01, beta1=0.5) {
    probs, feat = Net(image)
    minimize sparse_categorical_crossentropy(probs, label) + 0.1 * mean(feat^2)
}
"""


@pytest.fixture(scope="module")
def prog():
    return dslc.loads(SOURCE, "feat.dsl")


def _init(model):
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_targets_and_checks(prog):
    assert prog.targets() == ["Net", "Twice", "Feature", "slicer", "looped", "train"]
    for t in prog.targets():
        check(dslc.compile(prog, t))


def test_weights_named_after_bindings_and_templates_get_fresh_weights(prog):
    names = set(_init(dslc.compile(prog, "Net")))
    assert {"Net.b1.y.weight", "Net.b2.y.weight", "Net.bn.gamma", "Net.bn.moving_mean", "Net.out.weight"} <= names
    assert len(names) == 10


def test_model_called_three_times_shares_its_weights(prog):
    net, twice = _init(dslc.compile(prog, "Net")), _init(dslc.compile(prog, "Twice"))
    assert set(net) == set(twice)
    x, y = np.random.default_rng(0).random((2, 2, 1, 8, 8), dtype=np.float32)
    out = run_model(dslc.compile(prog, "Twice"), {"a": x, "b": y}, device="cpu")["s"]
    na = run_model(dslc.compile(prog, "Net"), {"image": x}, device="cpu")["out"]
    nb = run_model(dslc.compile(prog, "Net"), {"image": y}, device="cpu")["out"]
    v = run_model(dslc.compile(prog, "Feature"), {"a": x}, device="cpu")["v"]
    assert out.shape == (2, 3) and np.allclose(out, na + nb + v, atol=1e-6)


def test_cse_merges_a_repeated_model_call(prog):
    ops = [n.op_type for n in dslc.compile(prog, "Twice").graph.node]
    assert ops.count("Conv") == 4  # Net(a) twice -> once; Net(b) once; two convs each


def test_weights_are_reproducible_from_the_seed(prog):
    a, b = _init(dslc.compile(prog, "Net", seed=1)), _init(dslc.compile(prog, "Net", seed=1))
    c = _init(dslc.compile(prog, "Net", seed=2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["Net.out.weight"], c["Net.out.weight"])
    assert not a["Net.out.bias"].any() and (a["Net.bn.moving_variance"] == 1).all()


def test_glorot_uniform_limits():
    prog = dslc.loads("model M(x: f32[N, 300]) -> y { y = dense(x, 200) }", "m.dsl")
    w = _init(dslc.compile(prog, "M"))["M.y.weight"]
    limit = np.sqrt(6 / 500)
    assert w.shape == (300, 200) and np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit


def test_dropout_and_batch_norm_modes(prog):
    infer = [n.op_type for n in dslc.compile(prog, "Net").graph.node]
    train = [n.op_type for n in dslc.compile(prog, "train").graph.node]
    assert "BitwiseXor" not in infer and "BitwiseXor" in train  # dropout's counter-based mask
    step = dslc.compile(prog, "train", emit="forward")
    assert [o.name for o in step.graph.output] == ["loss", "Net.bn.moving_mean.next", "Net.bn.moving_variance.next"]
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    out = run_model(step, {"image": x, "label": np.array([0, 1, 2, 0])}, device="cpu")
    # momentum 0.99 from zeros / ones: the new statistics move 1% towards the batch's
    assert np.abs(out["Net.bn.moving_mean.next"]).max() > 0
    assert (out["Net.bn.moving_variance.next"] >= 0.99).all()  # 0.99 * 1 + 0.01 * (a variance >= 0)


def test_indexing(prog):
    x = np.random.default_rng(2).random((2, 6, 5), dtype=np.float32)
    r = run_model(dslc.compile(prog, "slicer"), {"x": x, "k": np.array(3)}, device="cpu")
    assert np.array_equal(r["y"], x[:, 3, 1:4]) and np.array_equal(r["z"], x[..., 2])
    assert np.allclose(r["w"], x.mean(axis=(1, 2), keepdims=True))


def test_repeat_is_one_loop_and_agrees_with_the_reference(prog):
    model = dslc.compile(prog, "looped")
    assert [n.op_type for n in model.graph.node].count("Loop") == 1
    x = np.ones((2, 3), np.float32)
    assert (run_model(model, {"x": x}, device="cpu")["y"] == 15).all()
    assert (ReferenceEvaluator(model).run(None, {"x": x})[0] == 15).all()


def test_same_padding_matches_keras():
    src = """model D(x: f32[N, 1, 28, 28]) -> y { y = conv2d(x, 2, kernel=3, strides=2, padding=same) }
             model G(x: f32[N, 4, 7, 7]) -> y { y = conv2d_transpose(x, 2, kernel=5, strides=2, padding=same) }"""
    prog = dslc.loads(src, "pad.dsl")
    conv = next(n for n in dslc.compile(prog, "D").graph.node if n.op_type == "Conv")
    pads = next(a.ints for a in conv.attribute if a.name == "pads")
    assert list(pads) == [0, 0, 1, 1]  # TF puts the odd pixel at the end
    assert dslc.lower(prog, "D").graph.outputs[0].shape == ("N", 2, 14, 14)
    assert dslc.lower(prog, "G").graph.outputs[0].shape == ("N", 2, 14, 14)


def test_import_brings_in_definitions(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "enc.dsl").write_text("model Enc(x: f32[N, 4]) -> h { h = dense(x, 2) |> relu }")
    (tmp_path / "main.dsl").write_text('import "lib/enc.dsl"\nmodel Top(x: f32[N, 4]) -> y { y = Enc(x) * 2 }')
    prog = dslc.load(tmp_path / "main.dsl")
    assert prog.targets() == ["Top"]  # imported declarations are not compiled by default
    assert {t.name for t in dslc.compile(prog, "Top").graph.initializer} == {"Enc.h.weight", "Enc.h.bias"}


def test_nodes_point_back_to_the_source(prog):
    model = dslc.compile(prog, "Net")
    assert all(n.doc_string.startswith("feat.dsl:") for n in model.graph.node)
    assert all(n.domain == "" for n in model.graph.node)


def test_the_readme_example_compiles():
    """The language tour in README.md is real code."""
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in readme.split("```")[1::2] if "model Encoder" in b)
    prog = dslc.loads(block, "README.dsl")
    assert prog.targets() == ["Encoder", "Decoder", "train_vae"]
    for t in prog.targets():
        check(dslc.compile(prog, t))
