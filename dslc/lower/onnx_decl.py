"""`model NAME = onnx("file.onnx", ...)`: the file found (with `import`'s confinement), read, and
turned into the model's signature: its graph inputs become typed parameters, its outputs the
model's outputs, its float initializers named weights. The nodes are lowered at each call
(onnx_import.py)."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..diagnostics import DslTypeError, did_you_mean
from ..frontend import ast as A
from ..frontend.onnx_file import OnnxFile, read_onnx

OPTIONS = {"frozen": "true or false: no weight of the file is trained",
           "freeze": "a list of weight names (or their prefixes, such as \"encoder\") not to train"}


@dataclass
class Imported:
    """What a model declared with onnx() carries: the file and its names in the language."""
    file: OnnxFile
    inputs: dict[str, str]  # graph input -> parameter name
    outputs: dict[str, str]  # graph output -> output name
    # float initializer -> weight name (without the model's prefix); scalars (one number: an
    # exporter's constants, such as a scaling factor) and Resize's scales stay constants
    weights: dict[str, str]
    frozen: set[str] = field(default_factory=set)  # weight names not trained


def load_onnx_model(d: A.OnnxModel, target: Path, roots: list[Path]) -> A.OnnxModel:
    """The declaration with the file `target` (the path it names, resolved and confined) read."""
    frozen_all, freeze = _options(d)
    f = read_onnx(target, d.path, roots, d.path_span or d.span)
    span = d.path_span or d.span
    taken: set[str] = set()
    inputs = {name: _unique(_identifier(name), taken) for name, _, _ in f.inputs}
    params = tuple(A.Param(inputs[name], A.TypeExpr(dtype, dims, span), None, span) for name, dtype, dims in f.inputs)
    outputs = {name: _unique(_identifier(name), taken) for name in f.outputs}
    weight_names: set[str] = set()
    weights = {name: _unique(weight_name(name), weight_names) for name, a in f.initializers.items()
               if a.dtype.kind == "f" and a.size > 1 and name not in _settings(f)}
    frozen = set(weights.values()) if frozen_all else set()
    for node in f.nodes:  # batch-norm statistics: weights of the model, never trained (as in torch)
        if node.op_type == "BatchNormalization":
            frozen |= {weights[i] for i in node.input[3:5] if i in weights}
    for prefix, at in freeze:
        hit = {w for w in weights.values() if w == prefix or w.startswith(prefix + ".")}
        if not hit:
            raise DslTypeError(f"freeze: {d.path} has no weight `{prefix}`", at,
                               did_you_mean(prefix, weights.values()) or
                               f"its weights: {', '.join(list(weights.values())[:8])}"
                               + (", ..." if len(weights) > 8 else ""))
        frozen |= hit
    return dataclasses.replace(d, params=params, outputs=tuple(outputs.values()),
                               output_spans=tuple(span for _ in outputs),
                               source=Imported(f, inputs, outputs, weights, frozen))


def _settings(f: OnnxFile) -> set[str]:
    """Float initializers that are settings, not weights: what Resize reads its scales from."""
    return {i for n in f.nodes if n.op_type in ("Resize", "Upsample") for i in n.input[1:]}


def _options(d: A.OnnxModel) -> tuple[bool, list]:
    frozen, freeze = False, []
    for k in d.options:
        if k.name not in OPTIONS:
            raise DslTypeError(f"onnx() has no option `{k.name}`", k.span,
                               did_you_mean(k.name, OPTIONS) or
                               "options: " + "; ".join(f"{n}: {w}" for n, w in OPTIONS.items()))
        if k.name == "frozen":
            if not isinstance(k.value, A.Bool):
                raise DslTypeError("`frozen=` takes true or false", k.value.span)
            frozen = k.value.value
        else:
            items = k.value.items if isinstance(k.value, A.ListExpr) else (k.value,)
            if not all(isinstance(x, A.String) for x in items):
                raise DslTypeError("`freeze=` takes a list of weight names as strings, e.g. freeze=[\"encoder\"]",
                                   k.value.span)
            freeze += [(x.value, x.span) for x in items]
    return frozen, freeze


def _identifier(name: str) -> str:
    name = re.sub(r"\W", "_", name).strip("_") or "value"
    return name if not name[0].isdigit() else f"v_{name}"


def weight_name(name: str) -> str:
    """An initializer's name as a path the language can write after `Model.`: each dot-separated part
    an identifier; a part that starts with a digit joins the one before (`layer.0.weight` is
    `layer_0.weight`), other characters become `_` (`onnx::MatMul_12` is `onnx__MatMul_12`)."""
    parts: list[str] = []
    for seg in name.split("."):
        seg = re.sub(r"\W", "_", seg)
        if not seg:
            continue
        if seg[0].isdigit():
            if parts:
                parts[-1] += f"_{seg}"
                continue
            seg = f"w_{seg}"
        parts.append(seg)
    return ".".join(parts) or "weight"


def _unique(name: str, taken: set) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out
