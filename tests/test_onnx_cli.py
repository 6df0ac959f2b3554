"""``prunec prune`` / ``prunec inspect`` on ONNX files, and the loader's refusals.

Bad input exits with code 2 and one line ``prunec: error: ...`` naming the file,
node or op; no output file is written and the input is never modified.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import compiler
from compiler import cli
from frontends.onnx import load_proto
from tests._onnx_helpers import build, consts, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXT = """
g (float[1,3,8,8] x) => (float[1,4] y) {
  [c1] a = Conv<pads=[1,1,1,1]>(x, w1, b1)
  [r1] h = Relu(a)
  [c2] b = Conv<pads=[1,1,1,1]>(h, w2, b2)
  [r2] k = Relu(b)
  [gap] p = GlobalAveragePool(k)
  [fl] f = Flatten(p)
  [fc] y = Gemm<transB=1>(f, w3, b3)
}
"""
INITS = {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 16, 3, 3), "b2": (16,), "w3": (4, 16), "b3": (4,)}


def _model(opset: int = 17) -> onnx.ModelProto:
    return build(TEXT, INITS, opset=opset)


def _save(m: onnx.ModelProto, path) -> str:
    onnx.save(m, str(path))
    return str(path)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _main(args, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("  [")]  # progress lines start with "  ["
    assert len(lines) == 1 and lines[0].startswith("prunec: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err


def test_prune_writes_a_smaller_verified_model(tmp_path, capsys):
    src = _save(_model(), tmp_path / "in.onnx")
    digest = _digest(src)
    out = tmp_path / "out.onnx"
    code, stdout, err = _main(["prune", src, "-o", out, "--ratio", "0.5", "--granularity", "4"], capsys)
    assert code == 0, err
    assert _digest(src) == digest  # the input is untouched
    assert "verified     passed" in stdout and "file size" in stdout and f"wrote {out}" in stdout
    assert "rewrite ..." in err and "verify ..." in err  # progress on stderr
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    c = consts(m)
    assert c["w1"].shape == (8, 3, 3, 3) and c["w2"].shape == (8, 8, 3, 3) and c["w3"].shape == (4, 8)
    assert os.path.getsize(out) < 0.6 * os.path.getsize(src)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert run(m, {"x": x})[0].shape == (1, 4)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".prunec-")] == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


def test_prune_options_and_json(tmp_path, capsys):
    src = _save(_model(), tmp_path / "in.onnx")
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    code, stdout, err = _main(
        ["prune", src, "-o", out, "--threshold", "0.9", "--importance", "l1", "--equalization", "max", "--json", js], capsys
    )
    assert code == 0, err
    import json

    rep = json.loads(open(js).read())
    assert rep["settings"]["importance"] == "l1" and rep["settings"]["threshold"] == 0.9
    assert rep["framework"] == "onnx" and rep["verification"]["passed"] is True


def test_inspect_an_onnx_file(tmp_path, capsys):
    src = _save(_model(), tmp_path / "in.onnx")
    code, stdout, err = _main(["inspect", src], capsys)
    assert code == 0, err
    assert "group" in stdout and "c1" in stdout and "MACs" in stdout
    assert os.listdir(tmp_path) == ["in.onnx"]


def test_unknown_op_is_not_an_error(tmp_path, capsys):
    text = TEXT.replace("[r1] h = Relu(a)", "[lrn] h = LRN<size=3>(a)")
    src = _save(build(text, INITS), tmp_path / "in.onnx")
    code, stdout, err = _main(["prune", src, "-o", tmp_path / "out.onnx"], capsys)
    assert code == 0, err
    assert "unknown ops  1" in stdout and "lrn [LRN]" in stdout


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "garbage", "truncated", "directory", "opset6", "text_model"],
)
def test_bad_input_files(case, tmp_path, capsys):
    src = tmp_path / "in.onnx"
    needle = str(src)
    if case == "empty":
        src.write_bytes(b"")
    elif case == "garbage":
        src.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif case == "truncated":
        data = _model().SerializeToString()
        src.write_bytes(data[: len(data) // 2])
    elif case == "directory":
        src.mkdir()
    elif case == "opset6":  # opsets 7-12 are upgraded on a private copy; below 7 is refused
        m = _model()
        m.opset_import[0].version = 6
        _save(m, src)
        needle = "opset 6"
    elif case == "text_model":
        src.write_text(TEXT)
    out = tmp_path / "out.onnx"
    code, _, err = _main(["prune", src, "-o", out], capsys)
    _assert_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("ratio", ["abc", "1.5", "-0.1", "nan"])
def test_bad_ratio(ratio, tmp_path, capsys):
    src = _save(_model(), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = _main(["prune", src, "-o", out, "--ratio", ratio], capsys)
    _assert_error(code, err, "ratio")
    assert not out.exists()


def test_bad_options(tmp_path, capsys):
    src = _save(_model(), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    for args, needle in [
        (["--granularity", "x"], "--granularity"),
        (["--granularity", "0"], "granularity"),
        (["--importance", "nope"], "importance"),
        (["--importance", "taylor"], "needs gradients"),  # a data criterion: refused, naming what it needs
        (["--equalization", "nope"], "equalization"),
        (["--ratio", "0.5", "--threshold", "0.2"], "only one"),
    ]:
        code, _, err = _main(["prune", src, "-o", out, *args], capsys)
        _assert_error(code, err, needle)
        assert not out.exists()
    code, _, err = _main(["prune", src], capsys)
    _assert_error(code, err, "-o")


def test_unwritable_output(tmp_path, capsys):
    src = _save(_model(), tmp_path / "in.onnx")
    digest = _digest(src)
    for out in [tmp_path / "no" / "such" / "dir" / "out.onnx", tmp_path / "in.onnx" / "out.onnx", tmp_path, src]:
        code, _, err = _main(["prune", src, "-o", out], capsys)
        _assert_error(code, err, str(out))
    assert _digest(src) == digest
    assert sorted(os.listdir(tmp_path)) == ["in.onnx"]


def test_failed_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = _save(_model(), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"

    def boom(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "replace", boom)
    code, _, err = _main(["prune", src, "-o", out], capsys)
    assert code == 1 and "No space left" in err
    assert sorted(os.listdir(tmp_path)) == ["in.onnx"]


def test_console_script_exit_code_and_one_line(tmp_path):
    missing = tmp_path / "nope.onnx"
    p = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "prune", str(missing), "-o", str(tmp_path / "o.onnx")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"prunec: error: {missing}: no such file"]


# -- external data ---------------------------------------------------------------------------


def _external(tmp_path) -> tuple[str, str]:
    d = tmp_path / "model"
    d.mkdir()
    path = str(d / "m.onnx")
    onnx.save_model(_model(), path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return path, str(d / "w.bin")


def test_external_data_inside_the_folder_works(tmp_path, capsys):
    path, data = _external(tmp_path)
    assert os.path.getsize(data) > os.path.getsize(path)
    out = tmp_path / "out.onnx"
    code, stdout, err = _main(["prune", path, "-o", out], capsys)
    assert code == 0, err
    m = onnx.load(str(out))
    assert consts(m)["w1"].shape == (8, 3, 3, 3)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def _relocate(path: str, location: str) -> None:
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, path)


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink", "missing", "short"])
def test_external_data_outside_the_folder_is_refused(where, tmp_path, capsys):
    path, data = _external(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(open(data, "rb").read())
    if where == "dotdot":
        _relocate(path, "../secret.bin")
        needle = "'..'"
    elif where == "absolute":
        _relocate(path, str(secret))
        needle = "absolute"
    elif where == "symlink":
        os.symlink(secret, os.path.join(os.path.dirname(path), "link.bin"))
        _relocate(path, "link.bin")
        needle = "leaves the model's folder"
    elif where == "missing":
        _relocate(path, "gone.bin")
        needle = "does not exist"
    else:
        with open(data, "r+b") as f:
            f.truncate(100)
        needle = "shorter than"
    out = tmp_path / "out.onnx"
    code, _, err = _main(["prune", path, "-o", out], capsys)
    _assert_error(code, err, path, needle)
    assert not out.exists()
    with pytest.raises(compiler.UnsupportedModelError, match="external data"):
        load_proto(path)


def test_model_proto_with_unloaded_external_data_is_refused(tmp_path):
    path, _ = _external(tmp_path)
    m = onnx.load(path, load_external_data=False)
    with pytest.raises(compiler.UnsupportedModelError, match="given in memory"):
        compiler.compile(m)
    # loaded by onnx itself, it is fine
    r = compiler.compile(onnx.load(path), ratio=0.5)
    assert r.report.verification["passed"]


def test_api_errors_are_typed(tmp_path):
    m = _model()
    with pytest.raises(compiler.UnsupportedModelError, match="opset 6"):
        m6 = _model()
        m6.opset_import[0].version = 6
        compiler.compile(m6)
    with pytest.raises(compiler.InvalidArgumentError, match="inputs"):
        compiler.compile(m, (np.zeros((1, 3, 8, 8), np.float32), np.zeros(1, np.float32)))
    with pytest.raises(compiler.InvalidArgumentError, match="shape"):
        compiler.compile(m, (np.zeros((1, 3, 9, 9), np.float32),))
    dyn = _model()
    dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(compiler.InvalidArgumentError, match="dynamic"):
        compiler.compile(dyn)
    bad = _model()
    bad.graph.node[1].input[0] = "nowhere"
    with pytest.raises(compiler.UnsupportedModelError, match="invalid ONNX model"):
        compiler.compile(bad)
    with pytest.raises(compiler.UnsupportedModelError, match="no such file"):
        compiler.compile(str(tmp_path / "x.onnx"))


def test_dynamic_batch_stays_dynamic(tmp_path):
    m = _model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    r = compiler.compile(m, (x,), ratio=0.5)
    assert r.report.verification["passed"]
    assert r.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x5 = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert r(x5).shape == (5, 4)
