"""The framework-neutral core stays neutral: passes/ imports neither torch nor onnx."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import passes
import passes.ops as passes_ops

ROOT = Path(__file__).resolve().parent.parent


def neutral_modules() -> list[str]:
    mods = [f"passes.{m.name}" for m in pkgutil.iter_modules(passes.__path__) if m.name != "ops"]
    mods += [f"passes.ops.{m.name}" for m in pkgutil.iter_modules(passes_ops.__path__)]
    return mods + ["frontends.graph", "frontends.adapter", "frontends.errors"]


def imported_frameworks(modules: list[str]) -> list[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(','.join(sorted(k for k in ('torch', 'onnx', 'onnxruntime') if k in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [x for x in out.stdout.strip().split(",") if x]


def test_passes_import_no_framework():
    mods = neutral_modules()
    assert "passes.ops.layers" in mods and "passes.channel_analysis" in mods
    assert imported_frameworks(mods) == []


def test_the_check_sees_a_framework_import():
    """The check has teeth: a module that imports torch is reported."""
    assert "torch" in imported_frameworks(["frontends.torch.trace"])
