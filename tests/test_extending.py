"""docs/extending.md's worked example, run exactly as written there: a user's own leaf module prunes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import compiler
from passes.ops import SPECS

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def example_code() -> str:
    """The first python block of docs/extending.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/extending.md has no python example"
    return blocks[0]


@pytest.fixture
def clean_specs():
    """Whatever the example registers is removed after the test."""
    before = dict(SPECS)
    yield
    SPECS.clear()
    SPECS.update(before)


def run_example(code: str) -> dict:
    ns: dict = {"__name__": "extending_example"}
    exec(compile(code, str(DOC), "exec"), ns)
    return ns


def test_the_documented_example_prunes_rewrites_verifies_and_costs(clean_specs, capsys):
    ns = run_example(example_code())
    r = ns["result"]
    scale = r.model.get_submodule("1")
    assert type(scale).__name__ == "ChannelScale"  # still the user's module, a leaf
    assert scale.channels == 8 and tuple(scale.scale.shape) == (8,)  # attribute rewritten, parameter sliced
    assert r.report.frozen_ops == []
    assert r.report.verification is not None and r.report.verification["max_abs_error"] <= 1e-5
    # the kept scales are the original scales of the kept channels
    conv = r.model.get_submodule("0")
    orig = ns["model"]
    kept = [i for i in range(16) if any(torch.equal(orig[0].weight[i], w) for w in conv.weight)]
    assert len(kept) == 8 and torch.equal(scale.scale.detach(), orig[1].scale.detach()[kept])
    # costed: the scale's multiplies are in the MACs, before and after (the example's batch of 2)
    conv_macs_before = 2 * (16 * 16 * 16 * 3 * 9 + 8 * 14 * 14 * 16 * 9)
    conv_macs_after = 2 * (8 * 16 * 16 * 3 * 9 + 8 * 14 * 14 * 8 * 9)
    assert r.report.macs_before == conv_macs_before + 2 * 16 * 16 * 16
    assert r.report.macs_after == conv_macs_after + 2 * 8 * 16 * 16
    x = torch.randn(3, 3, 16, 16)
    assert r.model(x).shape == (3, 8, 14, 14)
    assert "8 (8,)" in capsys.readouterr().out
    assert math.isfinite(r.report.verification["max_abs_error"])


def test_without_the_rewrite_handler_the_stale_attribute_is_caught(clean_specs):
    """The check has teeth: drop the example's rewriter and the pruned module still says 16 channels."""
    code = example_code()
    code = code.replace('@spec.rewriter("torch")\n', "")  # the handler is defined but not registered
    code = code.split("model = nn.Sequential")[0]
    ns = run_example(code)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), ns["ChannelScale"](16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3))
    with pytest.raises(compiler.InternalError):
        compiler.compile(model, (torch.randn(2, 3, 16, 16),), ratio=0.5, granularity=1)
