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
