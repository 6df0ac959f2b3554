"""Hostile and broken ONNX input (tests/hostile_onnx_cases.py): every case is refused with a typed
error, through ``compile`` and through ``prunec prune`` (exit 2, one line, nothing written), and a
file outside the model's folder is never opened, whatever the external-data location says
(absolute, ``..``, ``sub/../../x``, backslashes, symlinked files and folders). Unknown custom-domain
ops freeze their groups and the rest is pruned. The written model never carries external-data
locations from the input.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest

import compiler
from compiler.cli import main
from tests._onnx_helpers import consts
from tests.hostile_onnx_cases import ACCEPTED, CASES, EXTERNAL_CASES, make_case, with_external

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:  # records every file Python opens while a check is active
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class _Watch:
    def __enter__(self) -> list[str]:
        global _OPENED
        _OPENED = []
        return _OPENED

    def __exit__(self, *exc: object) -> None:
        global _OPENED
        _OPENED = None


def _never_read_secret(opened: list[str], root: str) -> None:
    secret = os.path.realpath(os.path.join(root, "secret.bin"))
    assert not [p for p in opened if os.path.exists(p) and os.path.realpath(p) == secret], "read a file outside the model's folder"
    assert "/etc/passwd" not in opened


REFUSED = sorted(set(CASES) - ACCEPTED)


@pytest.mark.parametrize("name", REFUSED)
def test_refused_by_compile(name, tmp_path):
    path = make_case(name, str(tmp_path))
    before = open(path, "rb").read() if os.path.isfile(path) else None
    with _Watch() as opened:
        with pytest.raises(compiler.UnsupportedModelError) as info:
            compiler.compile(path, None, ratio=0.5)
    _never_read_secret(opened, str(tmp_path))
    assert os.path.basename(path) in str(info.value) or "model" in str(info.value)
    if before is not None:
        assert open(path, "rb").read() == before


@pytest.mark.parametrize("name", REFUSED)
def test_refused_by_the_cli(name, tmp_path, capsys):
    path = make_case(name, str(tmp_path))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.onnx"
    with _Watch() as opened:
        assert main(["prune", path, "-o", str(out)]) == 2
    _never_read_secret(opened, str(tmp_path))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("  [")]  # progress lines start with "  ["
    assert len(lines) == 1 and lines[0].startswith("prunec: error: ") and "Traceback" not in err, err
    assert os.listdir(out_dir) == [], "wrote something for a refused input"


def test_every_listed_external_data_escape_is_a_case():
    """Absolute paths, '..' directly and after a subfolder, and symlinks (file, folder, the model itself)."""
    names = set(EXTERNAL_CASES)
    for want in ("external_absolute", "external_dotdot", "external_nested_dotdot", "external_symlink_file", "external_symlink_dir"):
        assert want in names
    assert len(CASES) >= 25


def test_symlink_inside_the_folder_is_refused_too(tmp_path):
    """The onnx loader refuses any symlinked data file (CVE-2024-27318); prunec says so with a typed error."""
    from tests.hostile_onnx_cases import base_model

    folder = tmp_path / "model"
    folder.mkdir()
    w1 = next(t for t in base_model().graph.initializer if t.name == "w1")
    (folder / "real.bin").write_bytes(w1.raw_data)
    os.symlink(folder / "real.bin", folder / "link.bin")
    (folder / "model.onnx").write_bytes(with_external("link.bin").SerializeToString())
    with pytest.raises(compiler.UnsupportedModelError, match="external data"):
        compiler.compile(str(folder / "model.onnx"), None, ratio=0.5)
    (folder / "model.onnx").write_bytes(with_external("real.bin").SerializeToString())  # the file itself is fine
    r = compiler.compile(str(folder / "model.onnx"), None, ratio=0.5, granularity=1)
    assert r.report.verification["passed"] and consts(r.model)["w1"].shape[0] == 8


def test_unknown_custom_domain_op_freezes_its_group_and_the_rest_is_pruned(tmp_path):
    path = make_case("custom_domain_op", str(tmp_path))
    r = compiler.compile(path, None, ratio=0.5, granularity=1, verify=False)  # ONNX Runtime cannot run com.example ops
    c = consts(r.model)
    assert c["w1"].shape[0] == 16, "the channels through the unknown op were pruned"
    assert c["w2"].shape[0] == 8 and c["w3"].shape[1] == 8, "the group after the unknown op was not pruned"
    assert [o.target for o in r.report.frozen_ops] == ["Mystery"]
    onnx.checker.check_model(r.model, full_check=True)
    # with verification on, a model ONNX Runtime cannot run is refused (typed, the input's fault), never written unchecked
    with pytest.raises(compiler.UnsupportedModelError, match="ONNX Runtime cannot run the model"):
        compiler.compile(path, None, ratio=0.5, granularity=1)
    out = tmp_path / "out.onnx"
    assert main(["prune", path, "-o", str(out)]) == 2 and not out.exists()
    assert main(["prune", path, "-o", str(out), "--no-verify", "--granularity", "1"]) == 0
    assert consts(onnx.load(str(out)))["w2"].shape[0] == 8


def test_written_model_has_no_external_data_locations_from_the_input(tmp_path):
    """Input with external data inside its folder: the output is self-contained; no input-named file is referenced or written."""
    from tests.hostile_onnx_cases import base_model

    folder = tmp_path / "in"
    folder.mkdir()
    w1 = next(t for t in base_model().graph.initializer if t.name == "w1")
    (folder / "evil_name.bin").write_bytes(w1.raw_data)
    (folder / "model.onnx").write_bytes(with_external("evil_name.bin").SerializeToString())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.onnx"
    assert main(["prune", str(folder / "model.onnx"), "-o", str(out), "--granularity", "1"]) == 0
    assert os.listdir(out_dir) == ["pruned.onnx"]
    m = onnx.load(str(out), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in m.graph.initializer)
    assert b"evil_name" not in out.read_bytes()
    assert np.asarray(consts(m)["w1"]).shape[0] == 8


def test_external_data_output_is_named_by_prunec_inside_the_output_folder(tmp_path, monkeypatch):
    """--external-data: one data file, named OUT.<hash>.data beside OUT; no name from the input; the pair is
    replaced atomically (the old data file goes once the new model is in place); a failed write keeps the old pair."""
    from compiler import onnx_io
    from tests._onnx_helpers import run
    from tests.hostile_onnx_cases import base_model

    folder = tmp_path / "in"
    folder.mkdir()
    w1 = next(t for t in base_model().graph.initializer if t.name == "w1")
    (folder / "evil_name.bin").write_bytes(w1.raw_data)
    src = folder / "model.onnx"
    src.write_bytes(with_external("evil_name.bin").SerializeToString())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.onnx"
    pat = onnx_io.data_file_pattern(str(out))
    monkeypatch.setattr(onnx_io, "MIN_BYTES", 64)  # the test model's weights are small

    def pair() -> tuple[list[str], onnx.ModelProto]:
        names = sorted(os.listdir(out_dir))
        assert len(names) == 2 and names[0] == "pruned.onnx" and pat.fullmatch(names[1]), names
        m = onnx.load(str(out), load_external_data=False)
        locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        assert locs == {names[1]}
        assert b"evil_name" not in out.read_bytes()
        return names, m

    assert main(["prune", str(src), "-o", str(out), "--granularity", "1", "--ratio", "0.5", "--external-data"]) == 0
    first, _ = pair()
    m = onnx.load(str(out))  # with its data
    assert consts(m)["w1"].shape[0] == 8
    r = compiler.compile(str(src), None, ratio=0.5, granularity=1)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(m, feeds)[0], run(r.model, feeds)[0])
    # a second run with another ratio replaces the pair and removes the old data file
    assert main(["prune", str(src), "-o", str(out), "--granularity", "1", "--ratio", "0.25", "--external-data"]) == 0
    second, _ = pair()
    assert second != first
    # a write that fails half-way keeps the previous pair, complete, and leaves no temporary file
    before = {n: (out_dir / n).read_bytes() for n in second}
    monkeypatch.setattr(onnx_io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert main(["prune", str(src), "-o", str(out), "--granularity", "1", "--ratio", "0.75", "--external-data"]) == 1
    assert {n: (out_dir / n).read_bytes() for n in sorted(os.listdir(out_dir))} == before


def test_the_atheris_target_sorts_inputs_without_crashing(tmp_path):
    """benchmarks/fuzz_onnx_atheris.py imports without atheris; its per-input check on seeds and garbage."""
    from benchmarks import fuzz_onnx_atheris as fz

    work = fz._workdir(str(tmp_path))
    seeds = fz.seeds()
    kinds = [fz.check_bytes(s, work) for s in seeds] + [fz.check_bytes(b"\x08\x07garbage", work)]
    assert kinds == ["accepted", "accepted", "refused", "refused", "refused"]
    assert fz.STATE["crashes"] == 0
