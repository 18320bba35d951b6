"""The checkpoint fuzzer: `dslc train --resume` on damaged copies of a real run folder.

    python bench/fuzz_checkpoints.py --count 3000 [--seed 0]      # from the repository root

A tiny training (a 784-4-10 MLP, 64 examples, batch 32) stops after 3 steps, mid-epoch, leaving
checkpoint.npz and history.json. Each case damages one of them: truncation, bit flips, overwritten
bytes, or a field edit (a meta field deleted, retyped or set out of range; a state array removed,
added, reshaped, retyped, made NaN or 0-d; the meta record stored as another dtype or as a pickled
object; history rows without an epoch). Then `dslc train --resume` runs in-process, to step 3 (no
step: the checkpoint is read, validated and the model exported) or, one case in ten, to step 4 (one
step on the restored state). A case passes when the run exits 0 (harmless damage, such as a flipped
bit in a weight) or exits 1 with one `error:` line, no traceback, and every file of the folder as it
was. tests/test_damaged_inputs.py runs a fixed-seed sample of this on every test run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dslc.cli import main  # noqa: E402

SPEC = """
model Net(x: f32[N, 784]) -> logits {
    logits = dense(dense(x, 4) |> relu, 10)
}
step train_net(image: f32[N, 784], label: i64[N]) updates Net using adam(lr=0.01) {
    minimize sparse_categorical_crossentropy(Net(image), label, from_logits=true)
}
train tiny {
    data     = mnist
    image    = image |> scale(0, 1) |> flatten
    label    = label |> int64
    batch    = 32
    epochs   = 2
    steps    = [train_net(image, label)]
    evaluate = accuracy(Net(image), label)
    export   = Net
}
"""
STEPS = 3  # where the original checkpoint is: epoch 2 (index 1), batch 1
VALUES = [None, True, False, -1, 0, 1, 2, 3, 7, 10**9, 2**63, 10**30, -(2**63), 1.5, -0.0, 1e308, float("nan"),
          float("inf"), "", "abc", "3", [], [1, 2], {}, {"a": 1}, {"loss": "x"}]


class Folder:
    """A run folder to damage: the files of the original run, and the command that resumes it."""

    def __init__(self, work: Path):
        self.work = work
        self.spec, self.data, self.out = work / "tiny.dsl", work / "d.npz", work / "out"
        self.spec.write_text(SPEC)
        rng = np.random.default_rng(0)
        label, label_test = rng.integers(0, 10, 64).astype(np.uint8), rng.integers(0, 10, 16).astype(np.uint8)
        np.savez(self.data, image=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), label=label,
                 image_test=rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), label_test=label_test)
        # The first epoch ends (history.json gets a row), the second stops after its first batch.
        code, err = self.resume(STEPS, resume=False)
        assert code == 0, err
        self.files = {p.name: p.read_bytes() for p in self.out.iterdir() if p.is_file()}
        with np.load(self.out / "checkpoint.npz") as z:
            self.arrays = {k: z[k] for k in z.files}
        self.meta = json.loads(bytes(self.arrays["meta"]).decode())
        self.history = json.loads(self.files["history.json"])

    def resume(self, max_steps: int, resume: bool = True) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(["train", str(self.spec), "--data", str(self.data), "--out", str(self.out),
                             "--device", "cpu", "--max-steps", str(max_steps), *(["--resume"] if resume else [])])
            except SystemExit as e:
                code = e.code
        return code, err.getvalue()

    def restore(self, damaged: dict[str, bytes]) -> None:
        for p in self.out.iterdir():
            if p.is_file() and p.name not in self.files:
                p.unlink()
        for name, data in {**self.files, **damaged}.items():
            (self.out / name).write_bytes(data)

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ damage
def npz_bytes(arrays: dict[str, object]) -> bytes:
    """An .npz of these members: arrays (pickled where they hold objects) or raw bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, value in arrays.items():
            if isinstance(value, bytes):
                zf.writestr(name + ".npy", value)
                continue
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=True)
    return buf.getvalue()


def meta_array(meta) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


def edit_meta(rng: random.Random, meta: dict):
    meta = json.loads(json.dumps(meta))
    paths = [(k,) for k in meta] + [(k, sub) for k in ("settings", "graphs", "sums") if isinstance(meta.get(k), dict)
                                    for sub in meta[k]] + [("extra",), ("sums", "bogus"), ("graphs", "other")]
    path = rng.choice(paths)
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.25:
        parent.pop(path[-1], None)
        return f"meta {'.'.join(path)} deleted", meta
    value = rng.choice(VALUES)
    parent[path[-1]] = value
    return f"meta {'.'.join(path)} = {value!r}", meta


def damage(rng: random.Random, f: Folder) -> tuple[str, dict[str, bytes]]:
    """One damaged file of the folder: (what was done, {file name: new bytes})."""
    ck, arrays = f.files["checkpoint.npz"], f.arrays
    kind = rng.choice(["truncate", "bits", "bytes", "meta", "meta", "meta", "meta_top", "meta_raw",
                       "state", "state", "state", "history"])
    if kind == "truncate":
        n = rng.randrange(len(ck))
        return f"truncated to {n} bytes", {"checkpoint.npz": ck[:n]}
    if kind == "bits":
        data, k = bytearray(ck), rng.choice([1, 1, 2, 8, 64])
        for _ in range(k):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return f"{k} bit(s) flipped", {"checkpoint.npz": bytes(data)}
    if kind == "bytes":
        data = bytearray(ck)
        i, n = rng.randrange(len(data)), rng.choice([1, 4, 16, 256])
        data[i:i + n] = bytes(rng.randrange(256) for _ in range(min(n, len(data) - i)))
        return f"{n} byte(s) overwritten at {i}", {"checkpoint.npz": bytes(data)}
    if kind == "meta":
        what, meta = edit_meta(rng, f.meta)
        return what, {"checkpoint.npz": npz_bytes({**arrays, "meta": meta_array(meta)})}
    if kind == "meta_top":
        value = rng.choice(VALUES)
        return f"meta = {value!r}", {"checkpoint.npz": npz_bytes({**arrays, "meta": meta_array(value)})}
    if kind == "meta_raw":
        raw = bytes(arrays["meta"])
        choices = {
            "not UTF-8": raw[:10] + b"\xff\xfe" + raw[10:],
            "not JSON": raw[: len(raw) // 2],
            "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
            "as int64": np.frombuffer(raw, np.uint8).astype(np.int64),
            "as 2-d": np.frombuffer(raw, np.uint8)[: len(raw) // 2 * 2].reshape(2, -1),
            "0-d": np.array(5, np.uint8),
            "a pickled object": np.array([f.meta, 1], dtype=object),
            "text": np.array(raw.decode()),
            "missing": None,
        }
        name = rng.choice(sorted(choices))
        members = {k: v for k, v in arrays.items() if k != "meta"}
        value = choices[name]
        if value is not None:
            members["meta"] = value if isinstance(value, np.ndarray) else np.frombuffer(value, np.uint8)
        return f"meta record {name}", {"checkpoint.npz": npz_bytes(members)}
    if kind == "state":
        members = dict(arrays)
        key = rng.choice([k for k in members if k.startswith("state/")])
        a = members[key]
        edits = {
            "removed": lambda: members.pop(key),
            "added twin": lambda: members.__setitem__(key.replace("Net.", "Net.evil."), a),
            "added junk": lambda: members.__setitem__("junk", np.zeros(3)),
            "float64": lambda: members.__setitem__(key, a.astype(np.float64)),
            "int32": lambda: members.__setitem__(key, a.astype(np.int32)),
            "reshaped": lambda: members.__setitem__(key, a.reshape(-1)[:, None] if a.size else a),
            "one more row": lambda: members.__setitem__(key, np.concatenate([a.reshape(1, -1)] * 2) if a.ndim else a),
            "0-d": lambda: members.__setitem__(key, np.float32(1)),
            "empty": lambda: members.__setitem__(key, np.zeros((0,), a.dtype)),
            "NaN": lambda: members.__setitem__(key, np.full_like(a, np.nan) if a.dtype.kind == "f" else a),
            "inf": lambda: members.__setitem__(key, np.full_like(a, np.inf) if a.dtype.kind == "f" else a),
            "huge": lambda: members.__setitem__(key, np.full_like(a, 1e30) if a.dtype.kind == "f" else a),
            "objects": lambda: members.__setitem__(key, np.array([1, "x"], dtype=object)),
            "text": lambda: members.__setitem__(key, np.array(["abc"])),
            "complex": lambda: members.__setitem__(key, a.astype(np.complex64)),
            "not an .npy": lambda: members.__setitem__(key, b"not an array"),
            "renamed": lambda: members.__setitem__(key + "x", members.pop(key)),
        }
        name = rng.choice(sorted(edits))
        edits[name]()
        return f"{key} {name}", {"checkpoint.npz": npz_bytes(members)}
    rows = json.loads(json.dumps(f.history))
    choices = {
        "row without epoch": lambda: [{k: v for k, v in r.items() if k != "epoch"} for r in rows],
        "epoch a string": lambda: [{**r, "epoch": "1"} for r in rows],
        "epoch null": lambda: [{**r, "epoch": None} for r in rows],
        "epoch 0": lambda: [{**r, "epoch": 0} for r in rows],
        "epoch 1.5": lambda: [{**r, "epoch": 1.5} for r in rows],
        "a later row": lambda: rows + [{**rows[0], "epoch": 99}],
        "rows not objects": lambda: [1, 2],
        "an object": lambda: {"epoch": 1},
        "empty": lambda: [],
    }
    name = rng.choice(sorted(choices))
    text = json.dumps(choices[name]()).encode()
    if rng.random() < 0.2:
        name, text = "history.json truncated", text[: rng.randrange(len(text))]
    return f"history {name}", {"history.json": text}


# ------------------------------------------------------------------ one case
def check(f: Folder, case: int, seed: int = 0) -> tuple[str, int | None, str | None]:
    """Case `case`: (what was damaged, the exit code, None if it passed else why not)."""
    rng = random.Random(f"{seed}/{case}")
    what, damaged = damage(rng, f)
    f.restore(damaged)
    before = f.snapshot()
    try:
        code, err = f.resume(STEPS + (case % 10 == 0))
    except BaseException as e:  # noqa: BLE001 - anything escaping main() is a crash
        return what, None, f"raised {type(e).__name__}: {e}"
    if "Traceback" in err or "internal error" in err:
        return what, code, f"exit {code}:\n{err}"
    if code == 0:
        return what, code, None
    if code != 1:
        return what, code, f"exit {code}: {err}"
    if err.count("error:") != 1:
        return what, code, f"{err.count('error:')} errors: {err}"
    if f.snapshot() != before:
        return what, code, f"files changed on an error: {err}"
    return what, code, None


def fuzz(count: int, seed: int = 0, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="dslc-fuzz-ckpt-") as tmp:
        f = Folder(Path(tmp))
        start, failures, refused = time.perf_counter(), [], 0
        for case in range(count):
            what, code, why = check(f, case, seed)
            refused += code == 1
            if why is not None:
                failures.append((case, what, why))
                log(f"case {case} ({what}): {why}")
        return {"cases": count, "refused": refused, "failures": failures, "seconds": time.perf_counter() - start}


def main_() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = fuzz(args.count, args.seed)
    n = len(result["failures"])
    print(f"{result['cases']:,} damaged run folders in {result['seconds']:.0f} s: {result['refused']:,} refused with "
          f"one error (exit 1), the others harmless (exit 0); {n} failure{'s' * (n != 1)} (a traceback, another "
          f"exit code, several errors, or a file changed on an error)")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main_())
