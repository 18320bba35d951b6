"""`dslc export-web FILE --out DIR`: a static folder that trains the file's first `train` declaration
in the browser with onnxruntime-web (WASM), offline (serve it with `python -m http.server`).

The folder:
  index.html, app.js        the page (copied from dslc/web/)
  train_step.onnx           the train declaration's first step, whole (forward + backward + update);
                            every weight, optimizer state, `step` and `seed` is a plain graph input
                            (onnxruntime-web accepts feeds only for inputs without an initializer)
  model.onnx                the `export` model's forward graph, its weights plain inputs too
  state.bin                 the initial values of those inputs (weights as dslc initializes them, zeros)
  data.bin                  a slice of the dataset: train images, train labels, test images, test
                            labels (uint8, in that order)
  manifest.json             names, shapes, offsets, the batch, the seed and each step input's
                            preprocessing (the `train` fields' pipes)
  ort/                      onnxruntime-web's WASM build, from npm (no CDN at run time)

The page trains on the slice in order (batch k = train images [kB, (k+1)B) modulo the slice), with
`step` = k and `seed` = crc32("SEED/STEP") as `dslc train` derives it, so a run compares exactly with
the same steps in onnxruntime (tests/test_web.py).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..diagnostics import DslError
from ..fileio import prepare_output_dir, read_regular, save_onnx, write_bytes
from .npm import ensure_package

HERE = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "app.js")
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.DOUBLE: "float64",
           onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool"}


def step_seed(seed: int, step: str) -> int:
    """The `seed` input `dslc train` feeds a step (runtime/trainer.py)."""
    return zlib.crc32(f"{seed}/{step}".encode()) & 0x7FFFFFFF


def lift_initializers(model: onnx.ModelProto, names=None) -> dict[str, np.ndarray]:
    """Remove the initializers named (default: those that are graph inputs) from the model, make sure
    each is a graph input, and return their values in graph-input order."""
    inputs = {i.name for i in model.graph.input}
    keep, lifted = [], {}
    for t in model.graph.initializer:
        if (t.name in inputs and names is None) or (names is not None and t.name in names):
            lifted[t.name] = numpy_helper.to_array(t)
            if t.name not in inputs:
                model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    order = [i.name for i in model.graph.input if i.name in lifted]
    return {n: lifted[n] for n in order}


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def export_web(path, out, *, target: str | None = None, ort_dist=None, npm_cache=None, train_images: int = 2000,
               test_images: int = 500, seed: int | None = None, data=None, log=print) -> Path:
    from ..lower.program import load_program
    from ..runtime.datasets import load_dataset
    from ..runtime.evaluate import compile_target
    from ..train.plan import plan as make_plan

    program = load_program(path)
    p = make_plan(program, target)
    if seed is not None:
        from dataclasses import replace
        p = replace(p, seed=seed)
    step = p.steps[0]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DslError(f"--out {out} is a file, not a folder", hint="name a folder for the page")

    # onnxruntime-web first: the step that may fail for reasons outside the spec (and before --out is made)
    dist = Path(ort_dist) if ort_dist else ensure_package("onnxruntime-web", npm_cache) / "dist"
    if (dist / "dist").is_dir() and not (dist / ORT_FILES[0]).is_file():
        dist = dist / "dist"  # the package folder given instead of its dist/
    missing = [f for f in ORT_FILES if not (dist / f).is_file()]
    if missing:
        raise DslError(f"{dist} lacks onnxruntime-web's {', '.join(missing)}",
                       hint="pass the onnxruntime-web package's dist/ folder with --ort-dist")
    files = {f"ort/{f}": read_regular(dist / f, "onnxruntime-web file") for f in ORT_FILES}  # name -> bytes

    train = compile_target(program, step.name, seed=p.seed)
    state = lift_initializers(train)
    counters = {k: state.pop(k) for k in ("step", "seed") if k in state}
    infer = compile_target(program, p.export, seed=p.seed)
    infer_weights = lift_initializers(infer, set(state))
    entries, offset, blobs = [], 0, []
    for name, value in state.items():
        a = np.ascontiguousarray(value)
        if a.dtype not in (np.float32, np.int64):
            raise DslError(f"state `{name}` is {a.dtype.name}: the page handles float32 and int64 state")
        blobs.append(a.tobytes())
        entries.append({"name": name, "dtype": a.dtype.name, "dims": list(a.shape), "offset": offset})
        offset += a.nbytes
    files["state.bin"] = b"".join(blobs)

    train_split, test_split = (load_dataset(p.dataset, split, data, p.label_column) for split in ("train", "test"))
    n_train, n_test = min(train_images, len(train_split["label"])), min(test_images, len(test_split["label"]))
    blocks = [("train_image", train_split["image"][:n_train]), ("train_label", train_split["label"][:n_train]),
              ("test_image", test_split["image"][:n_test]), ("test_label", test_split["label"][:n_test])]
    data, offset, blobs = [], 0, []
    for name, a in blocks:
        a = np.ascontiguousarray(a, dtype=np.uint8)
        blobs.append(a.tobytes())
        data.append({"name": name, "dims": list(a.shape), "offset": offset})
        offset += a.nbytes
    files["data.bin"] = b"".join(blobs)

    inputs = {i.name: i for i in train.graph.input}
    feeds = []
    for param, src in step.args:
        if not isinstance(src, str):
            raise DslError(f"step {step.name}: the page feeds dataset fields only, not `{param}` = a count", step.span)
        f = p.fields.get(src)
        source, pipes = (f.source, [[name, list(args)] for name, args in f.pipes]) if f else (src, [])
        if source not in ("image", "label"):
            raise DslError(f"step {step.name}: the page feeds `image` and `label` fields, not `{source}`", step.span)
        feeds.append({"input": param, "source": source, "pipes": pipes,
                      "dtype": _DTYPES[inputs[param].type.tensor_type.elem_type], "dims": _dims(inputs[param])})
    infer_inputs = [i for i in infer.graph.input if i.name not in infer_weights]
    if len(infer_inputs) != 1 or len(infer.graph.output) < 1:
        raise DslError(f"the page expects `{p.export}` to take one input (an image) and give class scores")
    image_field = next((fd for fd in feeds if fd["source"] == "image"), None)
    out_dims = _dims(infer.graph.output[0])
    if image_field is None or _dims(infer_inputs[0])[1:] != image_field["dims"][1:] or out_dims[1:] != [10]:
        raise DslError(f"the page trains and shows an image classifier: `{p.export}` should take the step's images "
                       f"and give 10 class scores, but it maps {infer_inputs[0].name} {_dims(infer_inputs[0])} to "
                       f"{infer.graph.output[0].name} {out_dims}", p.span,
                       "export-web supports train declarations like specs/convnet.dsl's `mnist`")
    manifest = {
        "file": Path(path).name, "train": p.name, "step": step.name, "export": p.export, "dataset": p.dataset,
        "batch": p.batch, "seed": p.seed, "step_seed": step_seed(p.seed, step.name),
        "counters": {k: int(np.asarray(v)) for k, v in counters.items()},
        "state": entries, "data": data, "feeds": feeds,
        "outputs": [o.name for o in train.graph.output],
        "model": {"input": infer_inputs[0].name, "dims": _dims(infer_inputs[0]), "output": infer.graph.output[0].name,
                  "weights": list(infer_weights), "pipes": image_field["pipes"] if image_field else []},
    }
    files["manifest.json"] = json.dumps(manifest, indent=1).encode()
    files.update({f: (HERE / f).read_bytes() for f in PAGE_FILES})

    # Written only now that all is known to work, each atomically (temp file and rename) as `dslc train`
    # writes: a link planted at one of these names is replaced, never written through.
    prepare_output_dir(out, "--out")
    if (out / "ort").is_symlink():
        (out / "ort").unlink()
    save_onnx(out / "train_step.onnx", train, durable=False)
    save_onnx(out / "model.onnx", infer, durable=False)
    for name, content in files.items():
        write_bytes(out / name, content, durable=False)
    log(f"wrote {out}: {step.name} ({sum(np.asarray(v).size for v in state.values()):,} state values), "
        f"{p.export}, {n_train:,} + {n_test:,} images; serve it with: python -m http.server -d {out}")
    return out
