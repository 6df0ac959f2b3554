"""compiler.atomic: staged outputs are renamed into place together, in order, or not at all."""

import os
import re

import pytest

import compiler.atomic as atomic
from compiler.atomic import Staging, check_writable, write_atomic
from frontends.errors import InvalidArgumentError


def _temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(".prunec-")]


def test_text_and_bytes_with_the_usual_permissions(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.bin"
    write_atomic({str(a): "héllo", str(b): b"\0\1"})
    assert a.read_text(encoding="utf-8") == "héllo" and b.read_bytes() == b"\0\1"
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(a).st_mode & 0o777 == 0o666 & ~umask
    assert _temps(tmp_path) == []


def test_renamed_in_the_order_opened(tmp_path, monkeypatch):
    order = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (order.append(os.path.basename(d)), real(s, d)))
    with Staging() as s:
        s.open(tmp_path / "z.data", "wb").write(b"x" * 10)
        s.open(tmp_path / "a.onnx", "wb").write(b"y")
    assert order == ["z.data", "a.onnx"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt(), RuntimeError("boom")])
def test_a_failure_leaves_every_destination_and_no_temporary_file(tmp_path, monkeypatch, exc):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")

    def boom(fd):
        raise exc

    monkeypatch.setattr(atomic.os, "fsync", boom)
    expected = InvalidArgumentError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected):
        write_atomic({str(a): "new a", str(b): "new b"})
    assert a.read_text() == "old a" and not b.exists() and _temps(tmp_path) == []


def test_an_exception_inside_the_block_discards(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(ValueError), Staging() as s:
        s.open(out, "wb").write(b"half")
        raise ValueError("serializing failed")
    assert os.listdir(tmp_path) == []


def test_oserror_wrapped_names_the_path_or_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{out}: cannot write (I/O error)")):
        write_atomic({str(out): "{}"})
    with pytest.raises(OSError, match="I/O error"):
        write_atomic({str(out): "{}"}, wrap_oserror=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["missing-dir", "is-a-directory", "read-only"])
def test_unwritable_paths(tmp_path, monkeypatch, where):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = {"missing-dir": tmp_path / "no" / "x.txt", "is-a-directory": folder, "read-only": folder / "x.txt"}[where]
    if where == "read-only":  # also under root, which may write to a 0500 folder
        monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    for call in (lambda: check_writable(path), lambda: write_atomic({str(path): "x"})):
        with pytest.raises(InvalidArgumentError, match=re.escape(str(path))):
            call()
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["ro"]


def test_html_report_still_exports_the_helpers():
    from compiler import html_report

    assert html_report.write_atomic is write_atomic and html_report.check_writable is check_writable


def test_explicit_discard_inside_the_block(tmp_path):
    with Staging() as s:
        s.open(tmp_path / "a.txt").write("never")
        s.discard()
    assert os.listdir(tmp_path) == []
