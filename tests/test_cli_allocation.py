"""``prunec prune --allocation`` and ``--compensate``: the API's ``allocation=`` and ``compensate=`` on the command line.

A small untrained CNN exported to ONNX and random calibration samples: the flags must reach ``compile`` (the
same plan as the API's with the same options), and every combination the API refuses is refused before any
work in one line naming the flags, exit code 2, nothing written, the input untouched.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import compiler
from benchmarks.onnx_calibration import DigitsCNN, batches, export
from compiler import cli


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cli_allocation")
    src = export(DigitsCNN().eval(), str(folder / "cnn.onnx"))
    x = np.random.default_rng(0).standard_normal((128, 1, 8, 8)).astype(np.float32)
    np.savez(folder / "cal.npz", x=x)
    return SimpleNamespace(src=src, folder=folder, x=x, cal=str(folder / "cal.npz"))


def _main(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_help_documents_allocation_and_compensate():
    text = cli.build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    flat = " ".join(text.split())
    assert "--allocation {uniform,sensitivity,latency}" in flat
    assert "--compensate {auto,on,off,sequential}" in flat
    for words in ("damage each group does alone", "--target-macs: where it saves the most measured time", "torch models only"):
        assert words in flat, words


REFUSED = [
    (["--allocation", "sensitivity"], "--allocation sensitivity measures each group's damage on calibration data: give --calibration"),
    (["--allocation", "sensitivity", "CAL", "--threshold", "0.2"], "not --threshold"),
    (["--allocation", "sensitivity", "CAL", "--scope", "global"], "leave --scope local"),
    (["--allocation", "sensitivity", "CAL", "--depth", "0.25"], "does not combine with --depth"),
    (["--allocation", "latency", "--ratio", "0.5"], "--allocation latency spends a --target-macs budget"),
    (["--allocation", "greedy"], "--allocation 'greedy': choose from uniform, sensitivity, latency"),
    (["--compensate", "yes", "CAL"], "--compensate 'yes': choose from auto, on, off, sequential"),
    (["--compensate", "sequential", "CAL"], "--compensate sequential needs the torch adapter"),
    (["--compensate", "on"], "--compensate on re-fits the layers that read pruned channels on calibration data"),
]


@pytest.mark.parametrize("flags,needle", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_bad_combinations_one_line_exit_2_nothing_written(cnn, tmp_path, capsys, flags, needle):
    flags = [a for f in flags for a in (["--calibration", cnn.cal] if f == "CAL" else [f])]
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    before = _digest(cnn.src)
    code, stdout, err = _main(["prune", cnn.src, "-o", out, "--json", js, *flags], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("prunec: error: ") and needle in lines[0], lines[0]
    assert "usage:" not in err and not out.exists() and not js.exists() and not stdout
    assert _digest(cnn.src) == before


def test_checkpoint_folder_refuses_the_flags(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for flags in (["--allocation", "sensitivity"], ["--compensate", "off"]):
        code, _, err = _main(["prune", folder, "-o", tmp_path / "out", *flags], capsys)
        assert code == 2 and f"{flags[0]} does not apply to a checkpoint folder" in err, err
        assert not (tmp_path / "out").exists()


def _kept(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def test_allocation_sensitivity_reaches_compile(cnn, tmp_path, capsys):
    """The CLI's plan is the API's ``allocation='sensitivity'`` plan on the same batches; it differs from uniform."""
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = _main(
        ["prune", cnn.src, "-o", out, "--json", js, "--importance", "l2", "--calibration", cnn.cal,
         "--target-macs", "0.5", "--allocation", "sensitivity"], capsys,
    )  # fmt: skip
    assert code == 0, err
    rep = json.loads(js.read_text())
    assert rep["settings"]["allocation"] == "sensitivity" and rep["macs_ratio"] <= 0.5
    ratios = [g["ratio"] for g in rep["settings"]["sensitivity"]["groups"]]
    assert len(set(ratios)) > 1, ratios  # not one ratio everywhere
    api = compiler.compile(cnn.src, {"x": cnn.x[:8]}, target_macs=0.5, importance="l2", calibration=[{"x": b} for b in batches(cnn.x)],
                           allocation="sensitivity")  # fmt: skip
    uniform = compiler.compile(cnn.src, {"x": cnn.x[:8]}, target_macs=0.5, importance="l2")
    got = _kept(onnx.load(str(out)))
    assert got == _kept(api.model)
    assert got != _kept(uniform.model)


def test_compensate_on_and_off_reach_compile(cnn, tmp_path, capsys):
    """``--compensate on`` re-fits after l2 (which does not by default); ``--compensate off`` stops obs from doing it."""
    weights = {}
    for importance, comp in (("l2", "auto"), ("l2", "on"), ("obs", "auto"), ("obs", "off")):
        out, js = tmp_path / f"{importance}_{comp}.onnx", tmp_path / f"{importance}_{comp}.json"
        code, _, err = _main(["prune", cnn.src, "-o", out, "--json", js, "--importance", importance, "--calibration", cnn.cal,
                              "--ratio", "0.5", "--compensate", comp], capsys)  # fmt: skip
        assert code == 0, err
        settings = json.loads(js.read_text())["settings"]
        assert settings["compensate"] == cli.COMPENSATE[comp]
        weights[importance, comp] = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
        applied = settings.get("compensation", {}).get("applied", 0)
        assert (applied > 0) == ((importance, comp) in (("l2", "on"), ("obs", "auto"))), (importance, comp, settings)

    def differ(a, b):
        return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not np.array_equal(a[k], b[k]))

    assert differ(weights["l2", "on"], weights["l2", "auto"])  # the same plan, re-fitted weights
    assert differ(weights["obs", "auto"], weights["obs", "off"])


def test_allocation_latency_reaches_compile(cnn, tmp_path, capsys):
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = _main(["prune", cnn.src, "-o", out, "--json", js, "--input-shape", "1,1,8,8", "--target-macs", "0.5",
                          "--allocation", "latency"], capsys)  # fmt: skip
    assert code == 0, err
    rep = json.loads(js.read_text())
    assert rep["settings"]["allocation"] == "latency" and rep["macs_ratio"] <= 0.5
