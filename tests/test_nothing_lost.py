"""Nothing lost: outputs go to a temporary file renamed into place; an existing output is replaced only by
a complete, verified model; the input is never modified; a failed or interrupted run (an exception or
Ctrl-C while serializing or writing) leaves no partial or temporary file; checkpoints are read only with
``weights_only=True``."""

from __future__ import annotations

import hashlib
import os
import re

import onnx
import pytest

from compiler import cli
from compiler.cli import main
from tests.hostile_onnx_cases import base_model, make_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = b"an older output that must survive a failed run"


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(base_model().SerializeToString())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.onnx"
    out.write_bytes(OLD)
    return src, out


def _untouched(src, out, digest: str, mtime: float) -> None:
    assert _digest(src) == digest and os.stat(src).st_mtime == mtime, "the input was modified"
    assert out.read_bytes() == OLD, "the existing output was replaced"
    assert sorted(os.listdir(out.parent)) == [out.name], "a temporary or partial file was left behind"
    assert sorted(os.listdir(src.parent)) == [src.name]


def test_success_replaces_the_output_and_leaves_the_input(files):
    src, out = files
    digest, mtime = _digest(src), os.stat(src).st_mtime
    assert main(["prune", str(src), "-o", str(out), "--granularity", "1"]) == 0
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert _digest(src) == digest and os.stat(src).st_mtime == mtime
    assert sorted(os.listdir(out.parent)) == [out.name]


@pytest.mark.parametrize("case", ["truncated", "external_nested_dotdot", "cycle", "custom_domain_op"])
def test_a_refused_input_leaves_the_existing_output(case, tmp_path, capsys):
    src = make_case(case, str(tmp_path))  # custom_domain_op: ONNX Runtime cannot verify it -> refused
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    out.write_bytes(OLD)
    digest, mtime = _digest(src), os.stat(src).st_mtime
    assert main(["prune", src, "-o", str(out)]) == 2
    assert _digest(src) == digest and os.stat(src).st_mtime == mtime
    assert out.read_bytes() == OLD and os.listdir(out.parent) == ["pruned.onnx"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_leaves_nothing(files, monkeypatch, exc, capsys):
    """The data is half written when the disk fills up or the user presses Ctrl-C."""
    src, out = files
    digest, mtime = _digest(src), os.stat(src).st_mtime

    def boom(fd: int) -> None:
        raise exc

    monkeypatch.setattr(cli.os, "fsync", boom)
    code = main(["prune", str(src), "-o", str(out), "--granularity", "1"])
    assert code == (130 if isinstance(exc, KeyboardInterrupt) else 1)
    _untouched(src, out, digest, mtime)


@pytest.mark.parametrize("exc", [ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB"), KeyboardInterrupt(), RuntimeError("boom")])
def test_failure_while_serializing_leaves_nothing(files, monkeypatch, exc, capsys):
    src, out = files
    digest, mtime = _digest(src), os.stat(src).st_mtime
    real_compile = __import__("compiler").compile

    class Unserializable:
        def __init__(self, model):
            self.model = model

        def SerializeToString(self):  # noqa: N802 - protobuf's name
            raise exc

    def compile_then_fail(*a, **kw):
        r = real_compile(*a, **kw)
        r.model = Unserializable(r.model)
        return r

    monkeypatch.setattr("compiler.compile", compile_then_fail)
    code = main(["prune", str(src), "-o", str(out), "--granularity", "1"])
    assert code in (1, 2, 130)
    _untouched(src, out, digest, mtime)


def test_failed_json_report_leaves_no_partial_file(files, monkeypatch, capsys):
    src, out = files
    report = out.parent / "report.json"
    real = cli._write_atomic

    def fail_on_json(path, data):
        if str(path).endswith(".json"):
            monkeypatch.setattr(cli.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
        return real(path, data)

    monkeypatch.setattr(cli, "_write_atomic", fail_on_json)
    assert main(["prune", str(src), "-o", str(out), "--granularity", "1", "--json", str(report)]) == 1
    assert sorted(os.listdir(out.parent)) == [out.name]  # the model was complete and verified; no partial report
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def unsafe_torch_loads(text: str) -> list[str]:
    """The ``torch.load(...)`` calls in ``text`` that do not pass ``weights_only=True``."""
    bad = []
    for m in re.finditer(r"torch\.load\(", text):
        depth, end = 0, m.end() - 1
        for end in range(m.end() - 1, len(text)):  # to the matching parenthesis
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        call = text[m.start() : end + 1]
        if "weights_only=True" not in call:
            bad.append(call)
    return bad


def test_checkpoints_are_read_with_weights_only():
    """prunec itself loads no checkpoint (models come in as objects or ONNX files); this guards the code base:
    every torch.load in it, tests and benchmarks included, passes weights_only=True (no pickle code execution)."""
    bad = []
    for folder in ("compiler", "passes", "frontends", "benchmarks", "tests"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if name.endswith(".py") and name != os.path.basename(__file__):  # this file holds bad examples
                    text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                    bad += [f"{name}: {call}" for call in unsafe_torch_loads(text)]
    assert not bad, bad


def test_the_weights_only_scan_finds_an_unsafe_load():
    """The scan has teeth: a load without weights_only=True, across lines and nested calls, is reported."""
    text = 'a = torch.load(open(p, "rb"))\nb = torch.load(\n    f, map_location=dev(1), weights_only=True)\n'
    assert unsafe_torch_loads(text) == ['torch.load(open(p, "rb"))']
    assert unsafe_torch_loads("torch.load(f, weights_only=False)") == ["torch.load(f, weights_only=False)"]
