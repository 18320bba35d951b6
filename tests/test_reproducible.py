"""The same source, seed and options compile to the same bytes in any folder and however the file is
spelled; no output holds a path of the compiling machine (issue 19). Sources are named relative to
the main file's folder in doc strings, imports included."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
import pytest

from dslc.cli import main

from test_train_cli import train, write_dsl, write_npz

SPECS = Path(__file__).resolve().parents[1] / "specs"


def _copy_specs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("convnet.dsl", "visualize_filters.dsl"):  # visualize_filters imports convnet
        shutil.copy(SPECS / name, folder / name)
    return folder


def _doc_strings(model: onnx.ModelProto) -> set[str]:
    docs = {model.graph.doc_string}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            docs.add(n.doc_string)
            stack += [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return docs


def test_two_folders_and_two_spellings_give_identical_bytes(tmp_path, monkeypatch, capsys):
    a, b = _copy_specs(tmp_path / "a" / "deep"), _copy_specs(tmp_path / "b")
    monkeypatch.chdir(tmp_path / "a")
    assert main(["compile", "deep/visualize_filters.dsl", "-o", str(tmp_path / "out_a")]) == 0  # relative
    assert main(["compile", str(b / "visualize_filters.dsl"), "-o", str(tmp_path / "out_b")]) == 0  # absolute
    capsys.readouterr()
    names = sorted(p.name for p in (tmp_path / "out_a").glob("*.onnx"))
    assert names and names == sorted(p.name for p in (tmp_path / "out_b").glob("*.onnx"))
    for name in names:
        bytes_a, bytes_b = (tmp_path / "out_a" / name).read_bytes(), (tmp_path / "out_b" / name).read_bytes()
        assert bytes_a == bytes_b, name
        assert str(tmp_path).encode() not in bytes_a and os.sep.encode() + b"tmp" not in bytes_a
    docs = _doc_strings(onnx.load(tmp_path / "out_a" / "visualize.onnx"))
    assert any(d.startswith("visualize_filters.dsl:") for d in docs)
    assert any(d.startswith("convnet.dsl:") for d in docs)  # the imported file, by its relative name


def test_resume_however_the_file_is_spelled(tmp_path, monkeypatch, capsys):
    dsl, data, out = write_dsl(tmp_path / "tiny.dsl"), write_npz(tmp_path / "small.npz"), tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert train(capsys, Path("tiny.dsl"), data, out, "--max-steps", "3")[0] == 0
    code, _, err = train(capsys, dsl.resolve(), data, out, "--max-steps", "6", "--resume")
    assert code == 0, err
