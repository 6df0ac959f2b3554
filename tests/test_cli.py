"""The ``prunec`` command line, run as a separate process (what a user sees: exit code, stdout, stderr)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def prunec(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run(
        [sys.executable, "-m", "compiler.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


PROGRESS = re.compile(r"^  \[\d\d:\d\d:\d\d\] ")  # the status lines `inspect` prints while it works


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2; besides progress lines, exactly one line on stderr: the error, naming the culprit."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert lines[0].startswith("prunec: error:"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_demo_runs():
    proc = prunec("demo", "--steps", "30")
    assert proc.returncode == 0, proc.stderr
    assert "verified     passed" in proc.stdout
    assert "MACs" in proc.stdout and "accuracy" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_inspect_writes_valid_json(tmp_path):
    out = tmp_path / "report.json"
    proc = prunec("inspect", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "groups" in proc.stdout and f"wrote {out}" in proc.stdout
    data = json.loads(out.read_text())
    assert data["model"] == "ResNet"
    assert 0 < data["macs_after"] < data["macs_before"] and data["params_after"] < data["params_before"]
    assert data["verification"]["passed"] is True
    assert data["macs_ratio"] == pytest.approx(data["macs_after"] / data["macs_before"])
    assert data["groups"] and all({"members", "channels_before", "channels_after", "frozen"} <= set(g) for g in data["groups"])
    assert data["settings"]["ratio"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary files left behind


BAD_INPUTS = {
    "unknown-model": (["inspect", "torchvision:no_such_model"], ["no_such_model"]),
    "bad-shape": (["inspect", "torchvision:resnet18", "--input-shape", "1,3,abc"], ["--input-shape", "1,3,abc"]),
    "zero-shape": (["inspect", "torchvision:resnet18", "--input-shape", "1,0,64,64"], ["--input-shape"]),
    "wrong-shape": (["inspect", "torchvision:resnet18", "--input-shape", "1,4,64,64"], ["example inputs", "conv1"]),
    "no-module": (["inspect", "no_such_package.models:build"], ["no_such_package"]),
    "bad-ratio": (["inspect", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--ratio", "1.5"], ["ratio"]),
    "untraceable": (["inspect", "test_errors:Untraceable", "--input-shape", "1,3,8,8"], ["body.2", "test_errors.py:"]),
}


def test_bad_input_exits_2_with_one_line_subprocess(tmp_path):
    args, words = BAD_INPUTS["untraceable"]
    out = tmp_path / "report.json"
    proc = prunec(*args, "--json", str(out))
    assert_one_line_error(proc, *words)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(tmp_path, capfd, case):
    """The same contract through ``main`` in this process (capfd sees everything written to fd 1 and 2)."""
    from compiler.cli import main

    args, words = BAD_INPUTS[case]
    out = tmp_path / "report.json"
    code = main([*args, "--json", str(out)])
    stdout, stderr = capfd.readouterr()
    assert_one_line_error(subprocess.CompletedProcess(args, code, stdout, stderr), *words)
    assert list(tmp_path.iterdir()) == []  # nothing written


def run_main(capfd, *args: str) -> subprocess.CompletedProcess:
    from compiler.cli import main

    code = main(list(args))
    stdout, stderr = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, stdout, stderr)


@pytest.mark.parametrize("where", ["missing-dir", "read-only-dir"])
def test_unwritable_json_exits_2_with_one_line_and_writes_nothing(tmp_path, capfd, where):
    if where == "missing-dir":
        target = tmp_path / "no" / "such" / "dir" / "report.json"
    else:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root can write into read-only directories")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "report.json"
    proc = run_main(capfd, "inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--json", str(target))
    assert_one_line_error(proc, str(target))
    assert not target.exists()
    if where == "missing-dir":
        assert list(tmp_path.iterdir()) == []


def test_json_path_that_is_a_directory(tmp_path, capfd):
    proc = run_main(capfd, "inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--json", str(tmp_path))
    assert_one_line_error(proc, str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert not any(p.name.startswith(".prunec-") for p in tmp_path.parent.iterdir())  # no temporary file left


@pytest.mark.parametrize("args", [["inspect"], ["no-such-command"], ["inspect", "torchvision:resnet18", "--ratio", "x"]])
def test_usage_errors_exit_2(capfd, args):
    from compiler.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    _, err = capfd.readouterr()
    assert info.value.code == 2 and "usage" in err and "Traceback" not in err


def test_main_in_process(capsys):
    from compiler.cli import main

    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--no-verify"]) == 0
    out = capsys.readouterr()
    assert "verified     no" in out.out
    assert main(["inspect", "torchvision:nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prunec: error:")


# -- the exit-code contract: 2 for the input's fault, 1 for prunec's own -----------------------------


def assert_internal_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1; besides progress lines, exactly one line on stderr, starting ``prunec: internal error:``."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert lines[0].startswith("prunec: internal error:"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def _fail_in_analysis(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make the channel analysis, deep inside ``compile``, raise ``exc``."""
    from passes.channel_analysis import ChannelAnalysis

    def fail(self, *args, **kwargs):
        raise exc

    monkeypatch.setattr(ChannelAnalysis, "call", fail)
    monkeypatch.delenv("PRUNEC_DEBUG", raising=False)


SMALL = ["inspect", "test_errors:small", "--input-shape", "1,3,8,8"]


def _internal_errors():
    from frontends.errors import InternalError, VerificationError

    return {
        "internal-error": InternalError("the pruned graph has 10 MACs, the plan said 12"),
        "verification-error": VerificationError("pruned model differs from the original by 0.5", max_abs_error=0.5),
    }


@pytest.mark.parametrize("case", ["internal-error", "verification-error"])
def test_internal_error_exits_1_with_one_line(tmp_path, capfd, monkeypatch, case):
    """prunec's own failure on an input it accepted (a failed check, a verification mismatch) is exit 1, never 2."""
    exc = _internal_errors()[case]
    _fail_in_analysis(monkeypatch, exc)
    out = tmp_path / "report.json"
    proc = run_main(capfd, *SMALL, "--json", str(out))
    assert_internal_error(proc, str(exc))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unexpected_exception_deep_inside_exits_1_with_one_line(tmp_path, capfd, monkeypatch):
    _fail_in_analysis(monkeypatch, RuntimeError("index 7 is out of bounds\nfor dimension 0 with size 4"))
    out = tmp_path / "report.json"
    proc = run_main(capfd, *SMALL, "--json", str(out))
    assert_internal_error(proc, "RuntimeError", "index 7 is out of bounds for dimension 0 with size 4", "PRUNEC_DEBUG")
    assert list(tmp_path.iterdir()) == []
    # PRUNEC_DEBUG=1: the traceback first, then the same line; still exit 1
    monkeypatch.setenv("PRUNEC_DEBUG", "1")
    proc = run_main(capfd, *SMALL)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "in fail" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("prunec: internal error: RuntimeError: index 7")


def broken_factory():
    raise RuntimeError("this model needs a config file")


def test_a_failing_model_factory_is_bad_input_exit_2(tmp_path, capfd, monkeypatch):
    """The user's factory or module raising is their code at fault: exit 2 naming the spec, not an internal error."""
    monkeypatch.delenv("PRUNEC_DEBUG", raising=False)
    proc = run_main(capfd, "inspect", "test_cli:broken_factory", "--input-shape", "1,3,8,8")
    assert_one_line_error(proc, "test_cli:broken_factory", "RuntimeError", "needs a config file")
    (tmp_path / "explodes_on_import.py").write_text("raise KeyError('MODEL_HOME')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = run_main(capfd, "inspect", "explodes_on_import:build", "--input-shape", "1,3,8,8")
    assert_one_line_error(proc, "explodes_on_import", "KeyError", "MODEL_HOME")


MYMODS = "import torch.nn as nn\n\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))\n"


def test_a_module_in_the_current_folder_is_importable(tmp_path, monkeypatch):
    """`prunec inspect mymods:build` from the folder holding mymods.py works, as `python -m` would import it.

    Run as the installed console script runs: a script elsewhere (its own folder is sys.path[0], not the cwd).
    """
    work, bindir = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    bindir.mkdir()
    (work / "mymods.py").write_text(MYMODS)
    entry = bindir / "prunec_entry.py"  # what pip writes for [project.scripts]
    entry.write_text("import sys\nfrom compiler.cli import main\nsys.exit(main())\n")
    monkeypatch.chdir(work)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(
        [sys.executable, str(entry), "inspect", "mymods:build", "--input-shape", "1,3,16,16"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "groups" in proc.stdout


def test_importing_a_model_spec_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    from compiler.cli import load_model_spec

    (tmp_path / "mymods_cwd_only.py").write_text(MYMODS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    try:
        model = load_model_spec("mymods_cwd_only:build")
    finally:
        sys.modules.pop("mymods_cwd_only", None)
    assert type(model).__name__ == "Sequential"
    assert sys.path == before
