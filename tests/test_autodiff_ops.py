"""Every VJP rule against finite differences (first and second order), and table completeness."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from dslc.autodiff.rules import OWN_RULE, NON_DIFFERENTIABLE, VJP
from dslc.ir.ops import DTYPE_CODE, OPS
from gradcheck import Fn, Spec, dot_check, op_fn

S = Spec


@dataclass
class Case:
    name: str
    op: str
    fn: Fn
    specs: list
    eps: float = 1e-5
    rtol: float = 1e-6


def case(op, specs, consts=None, attrs=None, name=None, **tol) -> Case:
    return Case(name or op, op, op_fn(op, len(specs), consts, attrs), specs, **tol)


def ints(values):
    return lambda b: b.ints(values)


def f64(value):
    return lambda b: b.const(np.asarray(value), "f64")


def custom(name, op, fn, specs, **tol) -> Case:
    return Case(name, op, fn, specs, **tol)


def _layer_normalization_f32(b, xs):
    x, g, bias = [b.op("Cast", [v], {"to": DTYPE_CODE["f32"]}) for v in xs]
    outs = b.op("LayerNormalization", [x, g, bias], {"axis": -1, "epsilon": 1e-3}, n_out=3)
    return [b.op("Cast", [v], {"to": DTYPE_CODE["f64"]}) for v in outs]


def cast_round_trip(dtype):
    def fn(b, xs):
        y = b.op("Cast", [xs[0]], {"to": DTYPE_CODE[dtype]})
        return [b.op("Mul", [b.op("Cast", [y], {"to": DTYPE_CODE["f64"]}), xs[0]])]
    return fn


def conv(x, w, bias=None, name="Conv", op="Conv", **attrs) -> Case:
    specs = [S(x), S(w)] + ([S(bias)] if bias else [])
    return case(op, specs, attrs=attrs, name=name)


def pool(op, name, x=(2, 2, 5, 5), **attrs) -> Case:
    return case(op, [S(x, "distinct")], attrs=attrs, name=name)


def permuted(rows, cols):
    """Scatter indices without duplicates (reduction 'none' leaves duplicates undefined)."""
    return np.stack([np.random.default_rng(r).permutation(cols)[:2] for r in range(rows)])


def clip_bound(value):
    return lambda rng, shape: np.full(shape, value) + rng.uniform(-0.05, 0.05, shape)


UNARY = {"Neg": "normal", "Exp": "normal", "Log": "positive", "Sqrt": "positive", "Abs": "away",
         "Relu": "away", "Sigmoid": "normal", "Tanh": "normal", "Softplus": "normal",
         "Reciprocal": "away", "Sin": "normal", "Cos": "normal", "Identity": "normal"}
# onnx.reference computes Erf in float32: a larger step and a looser tolerance where Erf is used
F32_ERF = {"eps": 1e-3, "rtol": 1e-3}

CASES = [case(op, [S((2, 3), kind)]) for op, kind in UNARY.items()] + [
    case("LeakyRelu", [S((2, 3), "away")], attrs={"alpha": 0.2}),
    case("Elu", [S((2, 3), "away")], attrs={"alpha": 0.7}),
    case("Erf", [S((2, 3))], **F32_ERF),
    case("Gelu", [S((2, 3))], **F32_ERF),
    case("Gelu", [S((2, 3))], attrs={"approximate": "tanh"}, name="Gelu-tanh"),
    case("Softmax", [S((2, 3, 4))], attrs={"axis": 1}),
    case("Softmax", [S((2, 5))], name="Softmax-last-axis"),
    case("LogSoftmax", [S((3, 4))], attrs={"axis": 0}),
    case("Add", [S((3, 1, 4)), S((2, 4))]),
    case("Sub", [S((2, 3)), S((3,))]),
    case("Mul", [S((2, 3)), S((2, 1))]),
    case("Div", [S((2, 3)), S((3,), "positive")]),
    case("Pow", [S((2, 3), "positive"), S((2, 3))]),
    case("Pow", [S((2, 3))], consts={1: f64(3.0)}, name="Pow-constant-exponent"),
    case("Pow", [S((2, 3))], consts={1: lambda b: b.ints(2)}, name="Pow-integer-exponent"),
    case("Max", [S((2, 3)), S((3,))]),
    case("Min", [S((2, 3)), S((2, 3))]),
    case("Where", [S((2, 3)), S((3,))],
         consts={0: lambda b: b.const(np.array([[True, False, True], [False, False, True]]), "bool")}),
    case("Clip", [S((3, 4)), S((), clip_bound(-0.5)), S((), clip_bound(0.5))]),
    case("Clip", [S((3, 4))], consts={1: f64(-0.3)}, name="Clip-min-only"),
    custom("Cast-f32", "Cast", cast_round_trip("f32"), [S((2, 3))], eps=1e-2, rtol=1e-4),
    custom("Cast-i64", "Cast", cast_round_trip("i64"), [S((2, 3), "away")]),
    case("MatMul", [S((2, 3, 4)), S((4, 5))]),
    case("MatMul", [S((3, 4)), S((2, 4, 5))], name="MatMul-broadcast-left"),
    case("MatMul", [S((2, 1, 3, 4)), S((3, 4, 2))], name="MatMul-batch-broadcast"),
    conv((2, 3, 5, 5), (4, 3, 3, 3), (4,), strides=[2, 2], pads=[1, 1, 1, 1], name="Conv-stride-pad-bias"),
    conv((1, 4, 6, 5), (6, 2, 2, 3), group=2, dilations=[2, 1], strides=[1, 2], pads=[1, 0, 0, 1],
         name="Conv-groups-dilation"),
    conv((1, 3, 4, 4), (3, 1, 3, 3), group=3, strides=[2, 2], pads=[1, 1, 1, 1], name="Conv-depthwise"),
    conv((2, 4, 3, 3), (4, 3, 3, 3), (3,), op="ConvTranspose", strides=[2, 2], pads=[1, 1, 1, 1],
         output_padding=[1, 1], name="ConvTranspose-stride-bias"),
    conv((1, 4, 3, 2), (4, 2, 2, 3), op="ConvTranspose", group=2, dilations=[2, 1], strides=[1, 2],
         pads=[0, 1, 1, 0], name="ConvTranspose-groups-dilation"),
    pool("MaxPool", "MaxPool-tiles", kernel_shape=[2, 2], strides=[2, 2]),
    pool("MaxPool", "MaxPool-tiles-exact", x=(1, 2, 4, 6), kernel_shape=[2, 3], strides=[2, 3]),
    pool("MaxPool", "MaxPool-overlapping", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    pool("MaxPool", "MaxPool-dilated", x=(1, 2, 5, 4), kernel_shape=[2, 2], dilations=[2, 1]),
    pool("AveragePool", "AveragePool-tiles", kernel_shape=[2, 2], strides=[2, 2]),
    pool("AveragePool", "AveragePool-pads", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1]),
    pool("AveragePool", "AveragePool-pads-counted", kernel_shape=[3, 2], strides=[1, 2], pads=[1, 1, 0, 1],
         count_include_pad=1),
    case("GlobalAveragePool", [S((2, 3, 4, 5))]),
    conv((2, 2, 4, 3, 4), (3, 2, 2, 2, 3), (3,), name="Conv-3d", pads=[1, 0, 1, 0, 1, 1], strides=[1, 2, 1]),
    conv((1, 4, 5, 3, 3), (4, 2, 3, 1, 2), name="Conv-3d-groups-dilation", group=2, dilations=[2, 1, 1],
         strides=[2, 1, 1], pads=[0, 0, 1, 0, 0, 0]),
    # 1 and 3 spatial axes (max_pool1d/3d, avg_pool3d): the per-offset rules
    pool("MaxPool", "MaxPool-3d-tiles", x=(1, 2, 4, 4, 5), kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
    pool("MaxPool", "MaxPool-3d-overlapping", x=(1, 2, 4, 5, 4), kernel_shape=[3, 2, 3], strides=[2, 1, 2],
         pads=[1, 0, 1, 1, 1, 0]),
    pool("MaxPool", "MaxPool-1d", x=(2, 2, 7), kernel_shape=[3], strides=[2], pads=[1, 1]),
    pool("MaxPool", "MaxPool-3d-dilated", x=(1, 2, 5, 4, 4), kernel_shape=[2, 2, 1], dilations=[2, 1, 1],
         strides=[1, 2, 1]),
    pool("MaxPool", "MaxPool-3d-gaps", x=(1, 2, 5, 5, 4), kernel_shape=[1, 2, 2], strides=[2, 3, 3]),
    pool("AveragePool", "AveragePool-3d-dilated", x=(1, 2, 5, 4, 4), kernel_shape=[2, 2, 1],
         dilations=[2, 1, 1], strides=[1, 2, 1]),
    pool("AveragePool", "AveragePool-3d-tiles", x=(1, 2, 4, 4, 5), kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
    pool("AveragePool", "AveragePool-3d-pads", x=(1, 2, 4, 5, 4), kernel_shape=[3, 2, 3], strides=[2, 1, 2],
         pads=[1, 0, 1, 1, 1, 0]),
    pool("AveragePool", "AveragePool-3d-pads-counted", x=(1, 2, 3, 4, 4), kernel_shape=[2, 3, 2],
         strides=[1, 2, 2], pads=[1, 1, 0, 0, 1, 1], count_include_pad=1),
    case("GlobalAveragePool", [S((2, 3, 2, 3, 4))], name="GlobalAveragePool-3d"),
    case("Reshape", [S((2, 3, 4))], consts={1: ints([4, -1])}),
    case("Flatten", [S((2, 3, 4))], attrs={"axis": 2}),
    case("Squeeze", [S((2, 1, 3))], consts={1: ints([1])}),
    case("Unsqueeze", [S((2, 3))], consts={1: ints([0, 3])}),
    case("Transpose", [S((2, 3, 4))], attrs={"perm": [2, 0, 1]}),
    case("Concat", [S((2, 1)), S((2, 2)), S((2, 3))], attrs={"axis": 1}),
    case("Split", [S((2, 5))], consts={1: ints([2, 3])}, attrs={"axis": 1}),
    case("Slice", [S((4, 5))], consts={1: ints([1, -4]), 2: ints([3, 5])}, name="Slice-negative-start"),
    case("Slice", [S((5, 6))], consts={1: ints([0, 1]), 2: ints([5, 6]), 3: ints([0, 1]), 4: ints([2, 3])},
         name="Slice-steps"),
    case("Slice", [S((5, 4))], consts={1: ints([-1]), 2: ints([-2**63]), 3: ints([0]), 4: ints([-1])},
         name="Slice-reverse"),
    case("Slice", [S((3, 7))], consts={1: ints([5]), 2: ints([0]), 3: ints([1]), 4: ints([-2])},
         name="Slice-negative-step"),
    case("Pad", [S((2, 3)), S(())], consts={1: ints([1, 0, 0, 2])}),
    # negative (cropping) pads: onnx.reference cannot run them, and the rule is pad_or_crop either way
    case("Pad", [S((3, 4))], consts={1: ints([1, 0, 2, 3])}, name="Pad-no-value"),
    case("Expand", [S((3, 1))], consts={1: ints([2, 3, 4])}),
    case("ReduceSum", [S((2, 3, 4))], consts={1: ints([1])}, attrs={"keepdims": 0}),
    case("ReduceSum", [S((2, 3))], name="ReduceSum-all"),
    case("ReduceMean", [S((2, 3, 4))], consts={1: ints([0, -1])}),
    case("ReduceMax", [S((2, 3, 4), "distinct")], consts={1: ints([1])}, attrs={"keepdims": 0}),
    case("ReduceMin", [S((3, 4), "distinct")], attrs={"keepdims": 0}),
    case("ReduceProd", [S((2, 3), "away")], consts={1: ints([1])}),
    case("Gather", [S((4, 3))], consts={1: ints([2, 0, 2])}, name="Gather-repeated"),
    case("Gather", [S((2, 4, 3))], consts={1: ints([[1, 3], [-1, 0]])}, attrs={"axis": 1},
         name="Gather-axis1-negative"),
    case("Gather", [S((2, 4))], consts={1: ints(1)}, attrs={"axis": 1}, name="Gather-scalar-index"),
    case("GatherElements", [S((3, 4))], consts={1: ints([[0, 3, 3], [1, 1, 0], [2, 0, 1]])},
         attrs={"axis": 1}),
    case("GatherND", [S((3, 4, 2))], consts={1: ints([[0, 1], [2, 3], [0, 1]])}),
    case("ScatterElements", [S((3, 4)), S((3, 2))], consts={1: ints(permuted(3, 4))}, attrs={"axis": 1}),
    case("ScatterElements", [S((3, 4)), S((3, 2))], consts={1: ints([[0, 0], [3, 1], [2, 2]])},
         attrs={"axis": 1, "reduction": "add"}, name="ScatterElements-add"),
    case("ScatterND", [S((4, 3)), S((2, 3))], consts={1: ints([[3], [1]])}),
    case("ScatterND", [S((4, 3)), S((3,))], consts={1: ints([[1, 2], [1, 2], [0, 0]])},
         attrs={"reduction": "add"}, name="ScatterND-add"),
    # all three outputs (the Mean and InvStdDev cotangents too), in float32 (ONNX keeps the statistics
    # in float32; dslc's float64 graphs write the op out in float64 ops): float32 steps and tolerance
    custom("LayerNormalization", "LayerNormalization", _layer_normalization_f32, [S((2, 3, 4)), S((4,)), S((4,))],
           eps=1e-3, rtol=3e-4),
    case("Tan", [S((2, 3), lambda rng, shape: rng.uniform(-1.2, 1.2, shape))]),  # away from pi/2
    case("Atan", [S((2, 3))]),
    case("Pow", [S((2, 3), "away")], consts={1: f64(0.0)}, name="Pow-zero-exponent"),
    case("Resize", [S((2, 2, 3, 4))], consts={1: lambda b: b.const(np.zeros(0), "f32"),
                                              2: lambda b: b.const([1.0, 1.0, 2.0, 3.0], "f32")},
         attrs={"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, name="Resize-bilinear"),
]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_vjp_matches_finite_differences(c: Case, order: int):
    result = dot_check(c.fn, c.specs, order=order, eps=c.eps)
    assert result.close(rtol=c.rtol), (result.fd, result.analytic)


def test_every_op_has_a_rule_or_is_non_differentiable():
    missing = set(OPS) - set(VJP) - NON_DIFFERENTIABLE - OWN_RULE
    assert not missing, f"ops with neither a VJP rule nor a place in NON_DIFFERENTIABLE: {sorted(missing)}"
    assert not set(VJP) & NON_DIFFERENTIABLE


def test_every_rule_has_a_finite_difference_case():
    missing = set(VJP) - {c.op for c in CASES}
    assert not missing, f"VJP rules without a finite-difference case: {sorted(missing)}"
